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
  return ipv4NumberIn(a, 0, a.length)
}

/** ipv4Number of a[from, to): an IPv6 address's IPv4 tail is read where it stands, not cut out */
function ipv4NumberIn(a: string, from: number, to: number): number {
  let n = 0
  let part = 0
  let digits = 0
  let dots = 0
  for (let i = from; i < to; i++) {
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
 * zeros; a zone after 40 characters or more, of which libuv reads the first 39 only): the set then leaves
 * such an entry to BlockList alone.
 */
export function ipv6Groups(address: string): number[] | undefined {
  const zone = address.indexOf('%')
  if (zone >= MAX_ZONED_ADDRESS) return undefined
  const groups = new Uint16Array(8)
  return readIpv6(address, zone === -1 ? address.length : zone, groups) ? Array.from(groups) : undefined
}

/**
 * An address as a socket names its peer: IPv4 as it is, an IPv6 address in the RFC 5952 form (lower-case hex,
 * no leading zeros, the longest run of two or more zero groups as "::") and a v4-mapped one as its IPv4
 * address, however each is spelt. For an address read from text (X-Forwarded-For), so that one client
 * written two ways is one client; a spelling ipv6Groups leaves to BlockList is kept as it is.
 */
export function canonicalAddress(address: string): string {
  if (!address.includes(':')) return address
  const g = ipv6Groups(address)
  if (g === undefined) return address
  const v4 = v4MappedText(g)
  if (v4 !== undefined) return v4
  // the first longest run of zero groups, if two or more long
  let zeroAt = -1
  let zeroLength = 1
  for (let i = 0; i < 8; ) {
    let j = i
    while (j < 8 && g[j] === 0) j++
    if (j - i > zeroLength) {
      zeroAt = i
      zeroLength = j - i
    }
    i = j === i ? i + 1 : j
  }
  const hex = (from: number, to: number) =>
    g
      .slice(from, to)
      .map((x) => x.toString(16))
      .join(':')
  if (zeroAt === -1) return hex(0, 8)
  return `${hex(0, zeroAt)}::${hex(zeroAt + zeroLength, 8)}`
}

/** the IPv4 address a v4-mapped address's groups (::ffff:a.b.c.d) stand for, dotted; undefined for any other */
export function v4MappedText(g: readonly number[]): string | undefined {
  if (g[0] !== 0 || g[1] !== 0 || g[2] !== 0 || g[3] !== 0 || g[4] !== 0 || g[5] !== 0xffff) return undefined
  return `${g[6]! >> 8}.${g[6]! & 255}.${g[7]! >> 8}.${g[7]! & 255}`
}

/** uv_ip6_addr copies the text before a zone into 40 bytes, its terminating NUL included */
const MAX_ZONED_ADDRESS = 40

/**
 * Reads a[0, end) as an IPv6 address into its eight groups, without allocating: false for anything isIPv6
 * would not accept, and for what it would that is not read here (a zone, an IPv4 tail with leading zeros).
 * Hex groups of one to four digits, at most one "::" standing for one or more zero groups, and a dotted
 * IPv4 tail in place of the last two.
 */
function readIpv6(a: string, end: number, groups: Uint16Array): boolean {
  let count = 0
  /** where "::" stands, in groups; -1 without one */
  let gap = -1
  let i = 0
  if (a.charCodeAt(0) === 58) {
    if (a.charCodeAt(1) !== 58) return false
    gap = 0
    i = 2
  }
  while (i < end) {
    let value = 0
    let j = i
    for (; j < end && j - i < 5; j++) {
      const digit = hexDigit(a.charCodeAt(j))
      if (digit < 0) break
      value = value * 16 + digit
    }
    if (j === i || j - i > 4) return false
    if (j < end && a.charCodeAt(j) === 46) {
      const v4 = count > 6 ? -1 : ipv4NumberIn(a, i, end)
      if (v4 < 0) return false
      groups[count++] = Math.floor(v4 / 65536)
      groups[count++] = v4 % 65536
      break
    }
    if (count === 8) return false
    groups[count++] = value
    if (j === end) break
    if (a.charCodeAt(j) !== 58) return false
    j++
    if (j < end && a.charCodeAt(j) === 58) {
      if (gap !== -1) return false
      gap = count
      j++
    } else if (j === end) return false
    i = j
  }
  if (gap === -1) return count === 8
  if (count > 7) return false
  const zeros = 8 - count
  for (let k = count - 1; k >= gap; k--) groups[k + zeros] = groups[k]!
  groups.fill(0, gap, gap + zeros)
  return true
}

function hexDigit(c: number): number {
  if (c >= 48 && c <= 57) return c - 48
  const lower = c | 32
  return lower >= 97 && lower <= 102 ? lower - 87 : -1
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
 * The prefix length, as an IPv4 CIDR, of the IPv4 addresses an IPv6 CIDR holds (its part in ::ffff:0:0/96,
 * however the entry is spelt: ::/80 holds every IPv4 address), or undefined when it holds none or is not read
 * here.
 */
export function v4MappedPrefix(ip: string, bits: number): number | undefined {
  const groups = ipv6Groups(ip)
  if (groups === undefined || v4MappedRange(groups, bits) === undefined) return undefined
  return Math.max(0, bits - 96)
}

/** an IPv6 address's groups, as has() reads it: one lookup at a time, so one array for all */
const ADDRESS_GROUPS = new Uint16Array(8)

/** an IPv6 address's groups as one number, at construction only */
function addressBits(groups: readonly number[]): bigint {
  let bits = 0n
  for (const g of groups) bits = (bits << 16n) | BigInt(g)
  return bits
}

/** ranges that overlap or touch, joined: sorted by first address, none overlapping or adjacent */
function mergeRanges<T extends number | bigint>(ranges: [T, T][], next: (last: T) => T): [T, T][] {
  ranges.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
  const merged: [T, T][] = []
  for (const r of ranges) {
    const last = merged.at(-1)
    if (last === undefined || r[0] > next(last[1])) merged.push([r[0], r[1]])
    // Math.max takes no bigint
    else if (r[1] > last[1]) last[1] = r[1]
  }
  return merged
}

/** words[at, at + 4), a 128-bit address as four 32-bit words, against w0…w3: negative, zero or positive */
function compareWords(
  words: Uint32Array,
  at: number,
  w0: number,
  w1: number,
  w2: number,
  w3: number,
): number {
  return words[at]! - w0 || words[at + 1]! - w1 || words[at + 2]! - w2 || words[at + 3]! - w3
}

/**
 * A compiled set of CIDRs. An address is looked up by binary search in the set's own ranges, sorted and
 * merged: BlockList.check makes a SocketAddress of its string on every call (≈ 4 µs, and it then tries its
 * rules one by one), and the peer of every request is checked against trustedProxies, a crawler's claimed
 * address against its operator's hundreds of prefixes. IPv4 ranges hold the IPv4 entries and the IPv4
 * addresses an IPv6 entry holds (BlockList checks an IPv4 address against an IPv6 subnet as ::ffff:a.b.c.d);
 * IPv6 ranges hold the IPv6 entries. An IPv6 address in ::ffff:0:0/96, however it is spelt, is its IPv4
 * address (BlockList checks it against IPv4 entries the same way). BlockList answers only what is not read
 * here: an address with a zone or an IPv4 tail with leading zeros, and any address outside the ranges when
 * an IPv6 entry could not be read.
 */
export class CidrSet {
  private readonly list = new BlockList()
  readonly size: number
  /** first and last address of each IPv4 range, ascending, none overlapping */
  private readonly v4: Float64Array
  /** first and last address of each IPv6 range as four 32-bit words each (8 a range), ascending, none overlapping */
  private readonly v6: Uint32Array
  /** an IPv6 entry that is not among the ranges: BlockList answers what they do not hold */
  private readonly viaList: boolean

  constructor(cidrs: readonly string[]) {
    const ranges: [number, number][] = []
    const ranges6: [bigint, bigint][] = []
    let viaList = false
    for (const c of cidrs) {
      const err = cidrError(c)
      if (err) throw new Error(err)
      const [ip, bits] = c.split('/') as [string, string | undefined]
      const type = isIPv4(ip) ? 'ipv4' : 'ipv6'
      if (bits === undefined) this.list.addAddress(ip, type)
      else this.list.addSubnet(ip, Number(bits), type)
      if (type === 'ipv6') {
        const groups = ipv6Groups(ip)
        const prefix = bits === undefined ? 128 : Number(bits)
        if (groups === undefined) viaList = true
        else {
          const span = 1n << BigInt(128 - prefix)
          const first = (addressBits(groups) / span) * span
          ranges6.push([first, first + span - 1n])
          const mapped = v4MappedRange(groups, prefix)
          if (mapped !== undefined) ranges.push(mapped)
        }
      } else {
        const span = 2 ** (32 - (bits === undefined ? 32 : Number(bits)))
        const first = Math.floor(ipv4Number(ip) / span) * span
        ranges.push([first, first + span - 1])
      }
    }
    this.v4 = Float64Array.from(mergeRanges(ranges, (last) => last + 1).flat())
    const merged6 = mergeRanges(ranges6, (last) => last + 1n)
    this.v6 = new Uint32Array(merged6.length * 8)
    merged6.forEach((range, r) => {
      for (let w = 0; w < 8; w++) {
        const bound = range[w < 4 ? 0 : 1]
        this.v6[r * 8 + w] = Number((bound >> BigInt(96 - (w % 4) * 32)) & 0xffffffffn)
      }
    })
    this.viaList = viaList
    this.size = cidrs.length
  }

  has(address: string | undefined): boolean {
    if (!address || this.size === 0) return false
    const n = ipv4Number(address)
    if (n >= 0) return this.hasV4(n) || (this.viaList && this.list.check(address, 'ipv4'))
    const g = ADDRESS_GROUPS
    if (!readIpv6(address, address.length, g)) return isIPv6(address) && this.list.check(address, 'ipv6')
    const high = g[0]! * 65536 + g[1]!
    const second = g[2]! * 65536 + g[3]!
    const third = g[4]! * 65536 + g[5]!
    const low = g[6]! * 65536 + g[7]!
    const inRanges =
      high === 0 && second === 0 && third === 0xffff ? this.hasV4(low) : this.hasV6(high, second, third, low)
    return inRanges || (this.viaList && this.list.check(address, 'ipv6'))
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

  private hasV6(w0: number, w1: number, w2: number, w3: number): boolean {
    const v6 = this.v6
    // the last range whose first address is ≤ the address
    let lo = 0
    let hi = v6.length / 8 - 1
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1
      if (compareWords(v6, mid * 8, w0, w1, w2, w3) <= 0) lo = mid + 1
      else hi = mid - 1
    }
    return hi >= 0 && compareWords(v6, hi * 8 + 4, w0, w1, w2, w3) >= 0
  }
}
