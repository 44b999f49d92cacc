// CidrSet answers addresses from its own sorted ranges instead of BlockList's per-call SocketAddress: every
// answer must be BlockList's, for any set of entries (IPv4 subnets and addresses, overlapping or adjacent,
// IPv6 and v4-mapped IPv6 prefixes of any length, in any spelling) and any address text (IPv4, v4-mapped,
// IPv6 in any spelling, with a zone, not an address).
import { BlockList, isIPv4, isIPv6 } from 'node:net'
import fc from 'fast-check'
import t, { type Test } from 'tap'
import { CidrSet, canonicalAddress, ipv4Number, ipv6Groups, normaliseAddress } from '../../src/util/cidr.ts'
import { checkProperty } from '../helpers/property.ts'

/** the set as BlockList alone answers it */
function reference(cidrs: readonly string[]): (address: string) => boolean {
  const list = new BlockList()
  for (const c of cidrs) {
    const [ip, bits] = c.split('/') as [string, string | undefined]
    const type = isIPv4(ip) ? 'ipv4' : 'ipv6'
    if (bits === undefined) list.addAddress(ip, type)
    else list.addSubnet(ip, Number(bits), type)
  }
  return (address) => {
    const a = normaliseAddress(address)
    if (isIPv4(a)) return list.check(a, 'ipv4')
    if (isIPv6(a)) return list.check(a, 'ipv6')
    return false
  }
}

// addresses close to one another, so that sets and addresses meet
const octet = fc.oneof(fc.constantFrom(0, 1, 10, 127, 128, 192, 255), fc.integer({ min: 0, max: 255 }))
const v4 = fc.tuple(octet, octet, octet, octet).map((o) => o.join('.'))
const v4Cidr = fc.oneof(
  v4,
  fc.tuple(v4, fc.integer({ min: 0, max: 32 })).map(([ip, bits]) => `${ip}/${bits}`),
)
// prefixes of any length at, around and far from ::ffff:0:0/96, the IPv6 block that holds IPv4 addresses
const v6Net = fc.constantFrom(
  '::',
  '::ffff:0:0',
  '::fffe:0:0',
  '::ffff:ffff:ffff',
  '0:0:0:0:0:ffff:a00:0',
  '0:0:0:0:0:FFFF:10.0.0.0',
  '::1:ffff:0:0',
  'fe80::1%eth0',
  '2001:4860:4801:10::',
)
// lengths that end inside a group where the prefixes above differ from ::ffff:0:0 (the first, the sixth)
const v6Bits = fc.oneof(
  fc.integer({ min: 0, max: 128 }),
  fc.integer({ min: 0, max: 16 }),
  fc.integer({ min: 80, max: 96 }),
)
const v6Cidr = fc.oneof(
  fc.tuple(v4, fc.integer({ min: 96, max: 128 })).map(([ip, bits]) => `::ffff:${ip}/${bits}`),
  fc.tuple(v4, v6Bits).map(([ip, bits]) => `::ffff:${ip}/${bits}`),
  fc.tuple(v6Net, v6Bits).map(([ip, bits]) => `${ip}/${bits}`),
  v4.map((ip) => `::ffff:${ip}`),
  fc.constantFrom('::1', 'fd00::/8', '2001:db8::/32', '::/0'),
)
const cidrs = fc.array(fc.oneof({ weight: 4, arbitrary: v4Cidr }, { weight: 1, arbitrary: v6Cidr }), {
  maxLength: 8,
})
const address = fc.oneof(
  { weight: 6, arbitrary: v4 },
  { weight: 1, arbitrary: v4.map((a) => `::ffff:${a}`) },
  { weight: 1, arbitrary: fc.constantFrom('::1', 'fd00::1', '2001:db8::7', '::') },
  {
    weight: 1,
    arbitrary: fc.constantFrom('', '1.2.3', '1.2.3.4.5', '01.2.3.4', '1.2.3.256', '1..2.3', ' 1.2.3.4', 'x'),
  },
  { weight: 1, arbitrary: fc.string({ maxLength: 16 }) },
)

t.test('CidrSet.has answers as BlockList does', async (t) => {
  checkProperty(
    t,
    'same membership for every set and address',
    fc.property(cidrs, fc.array(address, { minLength: 1, maxLength: 16 }), (entries, addresses) => {
      const set = new CidrSet(entries)
      const ref = reference(entries)
      for (const a of addresses) if (set.has(a) !== ref(a)) return false
      return true
    }),
    2000,
  )
})

// IPv6 sets and addresses drawn around a few base addresses, so that entries and addresses meet: prefixes at
// the edges (/0, /1, /64, /127, /128) and any other, adjacent and overlapping ranges, addresses a group
// away from a base or v4-mapped, in every spelling (compressed anywhere, upper case, zero-padded, an IPv4
// tail, a zone), and near-addresses an edit away from one
const baseGroup = fc.oneof(
  fc.constantFrom(0, 1, 0xffff, 0x8000, 0x7fff, 0x2001, 0xdb8, 0xfe80),
  fc.integer({ min: 0, max: 0xffff }),
)
const bases = fc.array(fc.array(baseGroup, { minLength: 8, maxLength: 8 }), { minLength: 1, maxLength: 3 })
const nudge = fc.record({
  group: fc.integer({ min: 0, max: 7 }),
  how: fc.constantFrom('same', 'plus', 'minus', 'set', 'mapped', 'compatible'),
  value: fc.integer({ min: 0, max: 0xffff }),
})
const spelling = fc.record({
  style: fc.constantFrom('full', 'compressed', 'v4tail', 'padded', 'firstRun'),
  upper: fc.boolean(),
  zone: fc.oneof({ weight: 6, arbitrary: fc.constant('') }, fc.constantFrom('%eth0', '%1', '%lo.0')),
})
const edgeBits = fc.oneof(
  fc.constantFrom(0, 1, 63, 64, 65, 95, 96, 97, 127, 128),
  fc.integer({ min: 0, max: 128 }),
)
const v6Entry = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      kind: fc.constant('v6'),
      base: fc.nat(),
      nudge,
      bits: fc.option(edgeBits),
      spelling,
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('v4'),
      base: fc.nat(),
      nudge,
      bits: fc.option(fc.integer({ min: 0, max: 32 })),
      spelling,
    }),
  },
  {
    weight: 1,
    arbitrary: fc.constantFrom('::/0', '::1', '::', '::/128', '::ffff:0:0/96', '8000::/1', '::/1'),
  },
)
const edit = fc.record({
  at: fc.nat(),
  op: fc.constantFrom('insert', 'delete', 'replace'),
  text: fc.constantFrom(':', '::', '.', '0', 'f', 'F', 'g', '%', ' ', '00000', '1.2.3.4'),
})
const v6Address = fc.oneof(
  { weight: 8, arbitrary: fc.record({ kind: fc.constant('v6'), base: fc.nat(), nudge, spelling }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('v4'), base: fc.nat(), nudge }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('edited'), base: fc.nat(), nudge, spelling, edit }) },
  {
    weight: 1,
    arbitrary: fc.constantFrom('::', '::1', '::ffff:0.0.0.0', '::FFFF:255.255.255.255', '1::', 'x'),
  },
)

function throws(f: () => unknown): boolean {
  try {
    f()
    return false
  } catch {
    return true
  }
}

function nudged(base: readonly number[], n: { group: number; how: string; value: number }): number[] {
  const groups = [...base]
  if (n.how === 'plus') groups[n.group] = (groups[n.group]! + 1) & 0xffff
  else if (n.how === 'minus') groups[n.group] = (groups[n.group]! + 0xffff) & 0xffff
  else if (n.how === 'set') groups[n.group] = n.value
  else if (n.how === 'mapped' || n.how === 'compatible') {
    groups.fill(0, 0, 5)
    groups[5] = n.how === 'mapped' ? 0xffff : 0
  }
  return groups
}

function spelt(groups: readonly number[], s: { style: string; upper: boolean; zone: string }): string {
  let text: string
  if (s.style === 'padded') text = groups.map((g) => g.toString(16).padStart(4, '0')).join(':')
  else if (s.style === 'firstRun') {
    // the first run of zero groups as "::", however short, as RFC 4291 lets it be
    const first = groups.indexOf(0)
    let end = first
    while (end >= 0 && end < 8 && groups[end] === 0) end++
    const hex = groups.map((g) => g.toString(16))
    text = first < 0 ? hex.join(':') : `${hex.slice(0, first).join(':')}::${hex.slice(end).join(':')}`
  } else text = spell(groups, s.style as 'full' | 'compressed' | 'v4tail', false)
  return (s.upper ? text.toUpperCase() : text) + s.zone
}

function dotted(groups: readonly number[]): string {
  const [a, b] = [groups[6]!, groups[7]!]
  return `${a >> 8}.${a & 255}.${b >> 8}.${b & 255}`
}

t.test('CidrSet.has answers IPv6 addresses as BlockList does', async (t) => {
  checkProperty(
    t,
    'same membership for every IPv6 set and address, in any spelling',
    fc.property(
      bases,
      fc.array(v6Entry, { maxLength: 8 }),
      fc.array(v6Address, { minLength: 1, maxLength: 16 }),
      (baseList, entryDraws, addressDraws) => {
        const baseOf = (i: number) => baseList[i % baseList.length]!
        const entries = entryDraws.map((e) => {
          if (typeof e === 'string') return e
          const groups = nudged(baseOf(e.base), e.nudge)
          if (e.kind === 'v4') return e.bits === null ? dotted(groups) : `${dotted(groups)}/${e.bits}`
          const text = spelt(groups, e.spelling)
          return e.bits === null ? text : `${text}/${e.bits}`
        })
        let ref: (address: string) => boolean
        try {
          ref = reference(entries)
        } catch {
          // a zone after an IPv4 tail of 40 characters or more: libuv reads the text cut, and BlockList
          // refuses what is left; the set refuses the entry with it
          return throws(() => new CidrSet(entries))
        }
        const set = new CidrSet(entries)
        for (const a of addressDraws) {
          let address: string
          if (typeof a === 'string') address = a
          else if (a.kind === 'v4') address = dotted(nudged(baseOf(a.base), a.nudge))
          else {
            address = spelt(nudged(baseOf(a.base), a.nudge), a.spelling)
            if (a.kind === 'edited') {
              const { at, op, text } = a.edit
              const i = at % (address.length + 1)
              const cut = op === 'insert' ? 0 : text.length
              address =
                address.slice(0, i) +
                (op === 'delete' ? '' : text) +
                address.slice(i + (op === 'delete' ? 1 : cut))
            }
          }
          if (set.has(address) !== ref(address)) return false
        }
        return true
      },
    ),
    3000,
  )
})

t.test('ipv4Number reads exactly what isIPv4 accepts', async (t) => {
  checkProperty(
    t,
    'a number for an IPv4 address, -1 for anything else',
    fc.property(address, (a) => ipv4Number(a) >= 0 === isIPv4(a)),
    5000,
  )
  t.equal(ipv4Number('0.0.0.0'), 0)
  t.equal(ipv4Number('255.255.255.255'), 2 ** 32 - 1)
  t.equal(ipv4Number('10.1.2.3'), 10 * 2 ** 24 + 1 * 2 ** 16 + 2 * 2 ** 8 + 3)
})

t.test('edges of ranges', async (t) => {
  const set = new CidrSet(['10.0.0.0/8', '11.0.0.0/8', '192.168.1.7', '0.0.0.0/32'])
  t.ok(set.has('10.0.0.0') && set.has('11.255.255.255'), 'adjacent ranges, merged')
  t.notOk(set.has('9.255.255.255') || set.has('12.0.0.0'), 'outside them')
  t.ok(set.has('::ffff:192.168.1.7') && set.has('0.0.0.0'), 'a single address, v4-mapped too')
  t.notOk(set.has('192.168.1.8') || set.has(undefined) || set.has(''), 'not another one')
  t.ok(new CidrSet(['0.0.0.0/0']).has('255.255.255.255'), '/0 holds every address')
  t.ok(new CidrSet(['::ffff:10.0.0.0/104']).has('10.9.9.9'), 'an IPv4 address in a v4-mapped IPv6 prefix')
})

/** counts the lookups that go to BlockList, by family of the address text, until the test ends */
function countBlockListChecks(t: Test): { ipv4: number; ipv6: number } {
  const counts = { ipv4: 0, ipv6: 0 }
  const check = BlockList.prototype.check
  BlockList.prototype.check = function (this: BlockList, ...args: unknown[]) {
    counts[isIPv4(String(args[0])) ? 'ipv4' : 'ipv6']++
    return (check as (...a: unknown[]) => boolean).apply(this, args)
  } as BlockList['check']
  t.teardown(() => {
    BlockList.prototype.check = check
  })
  return counts
}

t.test('an IPv4 address is never handed to BlockList', async (t) => {
  // what Google publishes for Googlebot: IPv4 and IPv6 ranges in one file. An IPv4 address outside them (a
  // false crawler claim) was checked by BlockList too, in case an IPv6 entry held it, ≈ 4 µs a lookup
  const set = new CidrSet(['66.249.64.0/27', '2001:4860:4801:10::/64', '2001:4860:4801:11::/64'])
  const checks = countBlockListChecks(t)
  t.ok(set.has('66.249.64.7'), 'inside the IPv4 ranges')
  t.notOk(set.has('198.51.100.7') || set.has('::ffff:198.51.100.7'), 'outside them')
  t.equal(checks.ipv4, 0, 'no IPv4 lookup went to BlockList')
  t.ok(
    new CidrSet(['::ffff:0:0/95']).has('1.2.3.4'),
    'an IPv6 prefix shorter than /96 holds every IPv4 address',
  )
  t.notOk(new CidrSet(['::1:ffff:0:0/96']).has('1.2.3.4'), 'one beside ::ffff:0:0/96 holds none')
  t.equal(checks.ipv4, 0)
})

t.test('an IPv6 address the set can read is never handed to BlockList', async (t) => {
  // a mesh on IPv6: every request's peer is checked against trustedProxies, ≈ 4 µs a BlockList lookup
  const set = new CidrSet(['66.249.64.0/27', '2001:4860:4801:10::/64', '2001:4860:4801:11::/64', 'fd00::1'])
  const checks = countBlockListChecks(t)
  t.ok(set.has('2001:4860:4801:10::1') && set.has('2001:4860:4801:11:ffff:ffff:ffff:ffff'), 'inside')
  t.ok(set.has('2001:4860:4801:10:0:0:0:0') && set.has('2001:4860:4801:10::'), 'the first address of a range')
  t.notOk(set.has('2001:4860:4801:f::ffff') || set.has('2001:4860:4801:12::'), 'just outside, both sides')
  t.ok(set.has('FD00::1') && set.has('fd00:0000:0000:0000:0000:0000:0000:0001'), 'any spelling')
  t.notOk(set.has('fd00::2') || set.has('fd00::'), 'a single address holds no neighbour')
  t.ok(set.has('::ffff:42f9:4007') && set.has('0:0:0:0:0:FFFF:66.249.64.7'), 'v4-mapped, hex or dotted')
  t.notOk(set.has('::42f9:4007') || set.has('::66.249.64.7'), 'IPv4-compatible is not v4-mapped')
  t.equal(checks.ipv6, 0, 'no lookup went to BlockList')
  t.ok(set.has('fd00::1%eth0'), 'an address with a zone: BlockList drops the zone')
  t.notOk(set.has('fd00::1%'), 'not an address: an empty zone')
  t.equal(checks.ipv6, 1, 'the zone went to BlockList, the empty one nowhere')
})

t.test('edges of IPv6 ranges', async (t) => {
  t.ok(new CidrSet(['::/0']).has('ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff'), '/0 holds every address')
  t.ok(
    new CidrSet(['::/0']).has('::') && new CidrSet(['::/0']).has('10.0.0.1'),
    'IPv4 ones too, as v4-mapped',
  )
  const half = new CidrSet(['8000::/1'])
  t.ok(half.has('8000::') && half.has('ffff::1'), '/1: the upper half')
  t.notOk(half.has('7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff') || half.has('::1'), 'not the lower')
  const pair = new CidrSet(['2001:db8::/127'])
  t.ok(pair.has('2001:db8::') && pair.has('2001:db8::1'), '/127: two addresses')
  t.notOk(pair.has('2001:db8::2') || pair.has('2001:db7:ffff:ffff:ffff:ffff:ffff:ffff'), 'and no more')
  const one = new CidrSet(['2001:db8::1/128', '::1', '::'])
  t.ok(one.has('2001:db8::1') && one.has('::1') && one.has('::'), '/128 and bare addresses, :: among them')
  t.notOk(one.has('2001:db8::') || one.has('::2'), 'their neighbours are not')
  // a /64 whose last word carries into the next: 2001:db8:0:ffff::/64 ends before 2001:db8:1::
  const adjacent = new CidrSet([
    '2001:db8:0:ffff::/64',
    '2001:db8:1::/64',
    '2001:db8:1::/48',
    '2001:db8:1:5::/64',
  ])
  t.ok(
    adjacent.has('2001:db8:0:ffff:ffff:ffff:ffff:ffff') && adjacent.has('2001:db8:1::'),
    'adjacent, merged',
  )
  t.ok(adjacent.has('2001:db8:1:ffff:ffff:ffff:ffff:ffff'), 'the /48 over the /64s inside it')
  t.notOk(adjacent.has('2001:db8:0:fffe:ffff:ffff:ffff:ffff') || adjacent.has('2001:db8:2::'), 'outside')
  t.ok(new CidrSet(['10.0.0.0/8']).has('::ffff:a00:1'), 'an IPv4 entry holds the v4-mapped address, in hex')
  t.notOk(new CidrSet(['10.0.0.0/8']).has('::a00:1'), 'not the IPv4-compatible one')
  t.notOk(new CidrSet(['0.0.0.0/0']).has('2001:db8::1'), 'IPv4 /0 holds no other IPv6 address')
  t.ok(new CidrSet(['::ffff:0:0/96']).has('::ffff:255.255.255.255'), '::ffff:0:0/96, its last address')
  t.notOk(new CidrSet(['::ffff:0:0/96']).has('::1:0:0:0'), 'and not the next one')
})

t.test('an entry with a zone after 40 characters is read as BlockList reads it: cut', async (t) => {
  // uv_ip6_addr keeps the first 39 characters before a zone: this entry is ::ffff:10.1.22.3 to BlockList
  const set = new CidrSet(['0000:0000:0000:0000:0000:ffff:10.1.22.34%eth0'])
  t.notOk(set.has('10.1.22.34') || set.has('::ffff:10.1.22.34'), 'not the address as written')
  t.ok(set.has('10.1.22.3') && set.has('::ffff:a01:1603'), 'the address BlockList read')
  t.same(
    ipv6Groups('0:0:0:0:0:ffff:10.1.22.34%eth0'),
    [0, 0, 0, 0, 0, 0xffff, 0x0a01, 0x1622],
    'a shorter one',
  )
})

/** groups spelled as an IPv6 address: in full, with the longest run of zero groups as ::, or with an IPv4 tail */
function spell(groups: readonly number[], style: 'full' | 'compressed' | 'v4tail', upper: boolean): string {
  const hex = groups.map((g) => g.toString(16))
  let text: string
  if (style === 'v4tail') {
    const [a, b] = [groups[6]!, groups[7]!]
    text = `${hex.slice(0, 6).join(':')}:${a >> 8}.${a & 255}.${b >> 8}.${b & 255}`
  } else if (style === 'full') text = hex.join(':')
  else {
    let best = -1
    let bestLen = 0
    for (let i = 0; i < 8; ) {
      let j = i
      while (j < 8 && groups[j] === 0) j++
      if (j - i > bestLen) {
        best = i
        bestLen = j - i
      }
      i = j === i ? i + 1 : j
    }
    text =
      bestLen < 2 ? hex.join(':') : `${hex.slice(0, best).join(':')}::${hex.slice(best + bestLen).join(':')}`
  }
  return upper ? text.toUpperCase() : text
}

t.test('ipv6Groups reads every spelling of an address', async (t) => {
  const group = fc.oneof(fc.constant(0), fc.constant(0xffff), fc.integer({ min: 0, max: 0xffff }))
  checkProperty(
    t,
    'the groups the address was spelt from',
    fc.property(
      fc.array(group, { minLength: 8, maxLength: 8 }),
      fc.constantFrom('full', 'compressed', 'v4tail'),
      fc.boolean(),
      (groups, style, upper) => {
        const text = spell(groups, style as 'full' | 'compressed' | 'v4tail', upper)
        const read = ipv6Groups(text)
        return isIPv6(text) && read !== undefined && read.join() === groups.join()
      },
    ),
    3000,
  )
  t.same(ipv6Groups('::'), [0, 0, 0, 0, 0, 0, 0, 0])
  t.same(ipv6Groups('fe80::1%eth0'), [0xfe80, 0, 0, 0, 0, 0, 0, 1], 'a zone is dropped')
  t.same(ipv6Groups('::ffff:10.1.2.3'), [0, 0, 0, 0, 0, 0xffff, 0x0a01, 0x0203])
  t.equal(ipv6Groups('1:2:3:4:5:6:7::8'), undefined, ':: stands for at least one group')
})

t.test('canonicalAddress names an address as a socket does, however it was spelt', async (t) => {
  const group = fc.oneof(fc.constant(0), fc.constant(0xffff), fc.integer({ min: 0, max: 0xffff }))
  checkProperty(
    t,
    'the WHATWG URL host of the address, or its IPv4 address when v4-mapped',
    fc.property(
      fc.array(group, { minLength: 8, maxLength: 8 }),
      fc.constantFrom('full', 'compressed', 'v4tail'),
      fc.boolean(),
      fc.boolean(),
      (groups, style, upper, mapped) => {
        if (mapped) groups.splice(0, 6, 0, 0, 0, 0, 0, 0xffff)
        const text = spell(groups, style as 'full' | 'compressed' | 'v4tail', upper)
        const v4 = [groups[6]! >> 8, groups[6]! & 255, groups[7]! >> 8, groups[7]! & 255].join('.')
        const isMapped = groups.slice(0, 6).join() === '0,0,0,0,0,65535'
        const expected = isMapped ? v4 : new URL(`http://[${text}]/`).hostname.slice(1, -1)
        return canonicalAddress(text) === expected
      },
    ),
    3000,
  )
  t.equal(canonicalAddress('2001:DB8:0:0:0:0:0:B'), '2001:db8::b')
  t.equal(canonicalAddress('1:0:0:2:0:0:3:4'), '1::2:0:0:3:4', 'the first of two longest runs')
  t.equal(canonicalAddress('2001:db8:0:1:1:1:1:1'), '2001:db8:0:1:1:1:1:1', 'one zero group is not a run')
  t.equal(canonicalAddress('::FFFF:A00:1'), '10.0.0.1')
  t.equal(canonicalAddress('10.0.0.1'), '10.0.0.1')
})
