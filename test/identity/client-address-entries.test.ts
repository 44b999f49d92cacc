// How one X-Forwarded-For element is read behind a trusted proxy, where nginx's realip module reads it alike
// (test/security/client-address-realip-differential.test.ts compares the two on generated headers): an empty
// element (a trailing comma, `a, , b`, an empty header line Node joins in) is skipped as HTTP says, the space
// and tab around an element are dropped and no other character is (NBSP is obs-text), and an address with a
// zone or a port outside 1-65535 is not an address, so the walk stops at the trusted hop before it. An
// address is named as a socket names it, whatever the spelling, so one client written two ways is one client.
// The trusted proxies are 127.0.0.2 and 10.0.0.0/8.
import t from 'tap'
import { clientAddress } from '../../src/identity/client-address.ts'
import { CidrSet } from '../../src/util/cidr.ts'

const trusted = new CidrSet(['127.0.0.2/32', '10.0.0.0/8'])
const client = (xff: string) => clientAddress({ 'x-forwarded-for': xff }, '127.0.0.2', trusted)

t.test('empty elements are skipped', async (t) => {
  t.equal(client('203.0.113.9, , 10.0.0.1'), '203.0.113.9')
  t.equal(client('203.0.113.9,'), '203.0.113.9', 'a trailing comma')
  t.equal(client('203.0.113.9, 10.0.0.1, '), '203.0.113.9')
  // two lines, the second empty, as Node joins them
  t.equal(client('203.0.113.9, '), '203.0.113.9')
  t.equal(client('203.0.113.9,\t,  ,10.0.0.1'), '203.0.113.9', 'elements of whitespace only')
  t.equal(client(', ,'), '127.0.0.2', 'nothing but empty elements: the peer')
})

t.test('only SP and HTAB around an element are whitespace', async (t) => {
  t.equal(client('203.0.113.9,\t10.0.0.1 \t'), '203.0.113.9')
  t.equal(client('203.0.113.9,\xa010.0.0.1'), '127.0.0.2', 'NBSP before the address')
  t.equal(client('203.0.113.9\u2028'), '127.0.0.2', 'a line separator after it')
})

t.test('an address with a zone, or a port outside 1-65535, is not read', async (t) => {
  t.equal(client('203.0.113.9, fe80::1%eth0'), '127.0.0.2')
  t.equal(client('203.0.113.9, fe80::1%1'), '127.0.0.2')
  t.equal(client('203.0.113.9, 10.0.0.1:0'), '127.0.0.2')
  t.equal(client('203.0.113.9, 10.0.0.1:65536'), '127.0.0.2')
  t.equal(client('203.0.113.9, [::ffff:10.0.0.1]:99999'), '127.0.0.2')
  // the ports at either end are read
  t.equal(client('203.0.113.9:1, 10.0.0.1:65535'), '203.0.113.9')
  t.equal(client('[2001:db8::1]:65535, [::ffff:10.0.0.1]:1'), '2001:db8::1')
})

t.test('an address is named one way however it is spelt', async (t) => {
  t.equal(client('2001:DB8:0:0:0:0:0:B'), '2001:db8::b')
  t.equal(client('[2001:db8:0::b]:443'), '2001:db8::b')
  t.equal(client('::FFFF:203.0.113.9'), '203.0.113.9')
  t.equal(client('::ffff:cb00:7109, 0:0:0:0:0:ffff:10.0.0.1'), '203.0.113.9', 'and is trusted as itself')
})
