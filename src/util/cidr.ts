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
 * The eight 16-bit groups of an IPv6 address isIPv6 accepted (a zone is dropped, as BlockList drops it), or
 * undefined for a spelling read here differently than there may be (an embedded IPv4 part with leading
 * zeros): the set then leaves such an entry to BlockList alone.
 */
export function ipv6Groups(address: string): number[] | undefined {
  const zone = address.indexOf('%')
  const a = zone === -1 ? address : address.slice(0, zone)
  const gap = a.indexOf('::')
  const head = groupsOf(gap === -1 ? a : a.slice(0, gap))
  const tail = gap === -1 ? [] : groupsOf(a.slice(gap + 2))
  if (head === undefined || tail === undefined) return undefined
  if (gap === -1) return head.length === 8 ? head : undefined
  const zeros = 8 - head.length - tail.length
  return zeros < 1 ? undefined : [...head, ...new Array<number>(zeros).fill(0), ...tail]
}

function groupsOf(s: string): number[] | undefined {
  if (s === '') return []
  const out: number[] = []
  const parts = s.split(':')
  for (let i = 0; i < parts.length; i++) {
    const p = parts[i]!
    if (i === parts.length - 1 && p.includes('.')) {
      const n = ipv4Number(p)
      if (n < 0) return undefined
      out.push(Math.floor(n / 65536), n % 65536)
    } else if (/^[0-9A-Fa-f]{1,4}$/.test(p)) out.push(Number.parseInt(p, 16))
    else return undefined
  }
  return out
}

/** the first 96 bits of a v4-mapped IPv6 address, ::ffff:0:0/96, in groups */
const V4_MAPPED = [0, 0, 0, 0, 0, 0xffff]

/**
 * The IPv4 addresses an IPv6 entry holds for BlockList: an IPv4 address is checked against an IPv6 subnet
 * as its v4-mapped form (::ffff:a.b.c.d). As [first, last], or undefined when it holds none.
 */
function v4MappedRange(groups: readonly number[], bits: number): [number, number] | undefined {
  const common = Math.min(bits, 96)
  for (let g = 0; g * 16 < common; g++) {
    const width = Math.min(16, common - g * 16)
    if (groups[g]! >> (16 - width) !== V4_MAPPED[g]! >> (16 - width)) return undefined
  }
  if (bits <= 96) return [0, 2 ** 32 - 1]
  const span = 2 ** (128 - bits)
  const first = Math.floor((groups[6]! * 65536 + groups[7]!) / span) * span
  return [first, first + span - 1]
}

/**
 * A compiled set of CIDRs. An IPv4 address is looked up in the set's IPv4 ranges, sorted and merged, by
 * binary search: BlockList.check makes a SocketAddress of its string on every call, ≈ 4 µs, and the peer of
 * every request is checked against trustedProxies several times. The IPv4 addresses an IPv6 entry holds
 * (the v4-mapped ones) are among those ranges too, so that a set with IPv6 entries (every crawler
 * operator's published ranges) answers an IPv4 address outside them without BlockList as well. BlockList
 * answers IPv6 addresses, and an IPv4 address not in those ranges when an IPv6 entry could not be read here.
 */
export class CidrSet {
  private readonly list = new BlockList()
  readonly size: number
  /** first and last address of each IPv4 range, ascending, none overlapping */
  private readonly v4: Float64Array
  /** an IPv6 entry whose v4-mapped part is not among the ranges */
  private readonly v4ViaList: boolean

  constructor(cidrs: readonly string[]) {
    const ranges: [number, number][] = []
    let v4ViaList = false
    for (const c of cidrs) {
      const err = cidrError(c)
      if (err) throw new Error(err)
      const [ip, bits] = c.split('/') as [string, string | undefined]
      const type = isIPv4(ip) ? 'ipv4' : 'ipv6'
      if (bits === undefined) this.list.addAddress(ip, type)
      else this.list.addSubnet(ip, Number(bits), type)
      if (type === 'ipv6') {
        const groups = ipv6Groups(ip)
        if (groups === undefined) v4ViaList = true
        else {
          const mapped = v4MappedRange(groups, bits === undefined ? 128 : Number(bits))
          if (mapped !== undefined) ranges.push(mapped)
        }
      } else {
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
    this.v4ViaList = v4ViaList
    this.size = cidrs.length
  }

  has(address: string | undefined): boolean {
    if (!address || this.size === 0) return false
    const a = normaliseAddress(address)
    const n = ipv4Number(a)
    if (n >= 0) return this.hasV4(n) || (this.v4ViaList && this.list.check(a, 'ipv4'))
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
