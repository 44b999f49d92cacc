import { BlockList, isIPv4, isIPv6 } from 'node:net'

/** Normalises "::ffff:10.1.2.3" to "10.1.2.3" so v4-mapped peers match v4 CIDRs. */
export function normaliseAddress(addr: string): string {
  return addr.startsWith('::ffff:') && isIPv4(addr.slice(7)) ? addr.slice(7) : addr
}

/** Returns an error message, or undefined when `cidr` is a valid v4/v6 CIDR or bare address. */
export function cidrError(cidr: string): string | undefined {
  const [ip, bits, extra] = cidr.split('/')
  if (extra !== undefined || !ip) return `invalid CIDR "${cidr}"`
  const v4 = isIPv4(ip)
  if (!v4 && !isIPv6(ip)) return `invalid CIDR "${cidr}": "${ip}" is not an IP address`
  if (bits === undefined) return undefined
  const max = v4 ? 32 : 128
  if (!/^\d{1,3}$/.test(bits) || Number(bits) > max) return `invalid CIDR "${cidr}": prefix must be 0-${max}`
  return undefined
}

/**
 * An IPv4 address in the dotted form isIPv4 accepts (four decimal parts of 0-255, no leading zeros) as a
 * number, or -1 for anything else.
 */
export function ipv4Number(a: string): number {
  let n = 0
  let part = 0
  let digits = 0
  let dots = 0
  for (let i = 0; i < a.length; i++) {
    const c = a.charCodeAt(i)
    if (c === 46) {
      if (digits === 0 || dots === 3) return -1
      n = n * 256 + part
      part = 0
      digits = 0
      dots++
    } else {
      if (c < 48 || c > 57 || (digits > 0 && part === 0)) return -1
      part = part * 10 + (c - 48)
      if (part > 255) return -1
      digits++
    }
  }
  return digits === 0 || dots !== 3 ? -1 : n * 256 + part
}

/**
 * A compiled set of CIDRs. An IPv4 address is looked up in the set's IPv4 ranges, sorted and merged, by
 * binary search: BlockList.check makes a SocketAddress of its string on every call, ≈ 4 µs, and the peer of
 * every request is checked against trustedProxies several times. BlockList answers the rest: IPv6, and an
 * IPv4 address not in those ranges when the set also has IPv6 entries (a v4-mapped prefix may hold it).
 */
export class CidrSet {
  private readonly list = new BlockList()
  readonly size: number
  /** first and last address of each IPv4 range, ascending, none overlapping */
  private readonly v4: Float64Array
  private readonly anyV6: boolean

  constructor(cidrs: readonly string[]) {
    const ranges: [number, number][] = []
    let anyV6 = false
    for (const c of cidrs) {
      const err = cidrError(c)
      if (err) throw new Error(err)
      const [ip, bits] = c.split('/') as [string, string | undefined]
      const type = isIPv4(ip) ? 'ipv4' : 'ipv6'
      if (bits === undefined) this.list.addAddress(ip, type)
      else this.list.addSubnet(ip, Number(bits), type)
      if (type === 'ipv6') anyV6 = true
      else {
        const span = 2 ** (32 - (bits === undefined ? 32 : Number(bits)))
        const first = Math.floor(ipv4Number(ip) / span) * span
        ranges.push([first, first + span - 1])
      }
    }
    ranges.sort((a, b) => a[0] - b[0])
    const merged: [number, number][] = []
    for (const r of ranges) {
      const last = merged.at(-1)
      if (last !== undefined && r[0] <= last[1] + 1) last[1] = Math.max(last[1], r[1])
      else merged.push([r[0], r[1]])
    }
    this.v4 = Float64Array.from(merged.flat())
    this.anyV6 = anyV6
    this.size = cidrs.length
  }

  has(address: string | undefined): boolean {
    if (!address || this.size === 0) return false
    const a = normaliseAddress(address)
    const n = ipv4Number(a)
    if (n >= 0) return this.hasV4(n) || (this.anyV6 && this.list.check(a, 'ipv4'))
    if (isIPv6(a)) return this.list.check(a, 'ipv6')
    return false
  }

  private hasV4(n: number): boolean {
    const v4 = this.v4
    // the last range whose first address is ≤ n
    let lo = 0
    let hi = v4.length / 2 - 1
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1
      if (v4[mid * 2]! <= n) lo = mid + 1
      else hi = mid - 1
    }
    return hi >= 0 && n <= v4[hi * 2 + 1]!
  }
}
