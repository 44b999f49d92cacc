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

/** A compiled set of CIDRs; membership checks are allocation-free apart from v4-mapped normalisation. */
export class CidrSet {
  private readonly list = new BlockList()
  readonly size: number

  constructor(cidrs: readonly string[]) {
    for (const c of cidrs) {
      const err = cidrError(c)
      if (err) throw new Error(err)
      const [ip, bits] = c.split('/') as [string, string | undefined]
      const type = isIPv4(ip) ? 'ipv4' : 'ipv6'
      if (bits === undefined) this.list.addAddress(ip, type)
      else this.list.addSubnet(ip, Number(bits), type)
    }
    this.size = cidrs.length
  }

  has(address: string | undefined): boolean {
    if (!address || this.size === 0) return false
    const a = normaliseAddress(address)
    if (isIPv4(a)) return this.list.check(a, 'ipv4')
    if (isIPv6(a)) return this.list.check(a, 'ipv6')
    return false
  }
}
