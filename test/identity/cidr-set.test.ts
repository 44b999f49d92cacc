// CidrSet answers IPv4 addresses from its own sorted ranges instead of BlockList's per-call SocketAddress:
// every answer must be BlockList's, for any set of entries (IPv4 subnets and addresses, overlapping or
// adjacent, IPv6 and v4-mapped IPv6 prefixes) and any address text (IPv4, v4-mapped, IPv6, not an address).
import { BlockList, isIPv4, isIPv6 } from 'node:net'
import fc from 'fast-check'
import t from 'tap'
import { CidrSet, ipv4Number, normaliseAddress } from '../../src/util/cidr.ts'
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
const v6Cidr = fc.oneof(
  fc.tuple(v4, fc.integer({ min: 96, max: 128 })).map(([ip, bits]) => `::ffff:${ip}/${bits}`),
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
