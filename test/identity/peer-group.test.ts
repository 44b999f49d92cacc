// The key a waiting JWT verification is queued under (src/identity/jwt/peer-group.ts): an IPv6 address's
// /64 however the address is written, an IPv4 address as it is, a v4-mapped address as its IPv4 address.
import t from 'tap'
import { peerGroup } from '../../src/identity/jwt/peer-group.ts'

t.test('IPv6 addresses of one /64 share a group, whatever their spelling', async (t) => {
  const group = '2001:db8:0:1::/64'
  for (const address of [
    '2001:db8:0:1::1',
    '2001:db8:0:1::',
    '2001:db8:0:1:ffff:ffff:ffff:ffff',
    '2001:0DB8:0000:0001:0000:0000:0000:0005',
    '2001:DB8:0:1::ABCD',
    '2001:db8::1:0:0:0:7',
    '2001:db8:0:1::1%eth0',
    '2001:db8:0:1:0:0:1.2.3.4',
  ]) {
    t.equal(peerGroup(address), group, address)
  }
  t.not(peerGroup('2001:db8:0:2::1'), group, 'the next /64 is another group')
  t.not(peerGroup('2001:db8:1:1::1'), group, 'so is one of another /48')
  t.equal(peerGroup('::1'), peerGroup('::'), 'compressed to nothing: the zero /64')
  t.equal(peerGroup('fe80::1%eth0'), peerGroup('FE80::2%lo'), 'link-local, zone ids dropped')
  t.equal(peerGroup('1:2:3:4:5:6:7:8'), '1:2:3:4::/64')
})

t.test('IPv4 addresses, also v4-mapped, stay one group each', async (t) => {
  t.equal(peerGroup('10.1.2.3'), '10.1.2.3')
  t.equal(peerGroup('::ffff:10.1.2.3'), '10.1.2.3')
  t.equal(peerGroup('::FFFF:10.1.2.3'), '10.1.2.3', 'uppercase')
  t.equal(peerGroup('0:0:0:0:0:ffff:a01:203'), '10.1.2.3', 'the mapped address in hex')
  t.equal(peerGroup('::ffff:10.1.2.3%eth0'), '10.1.2.3', 'with a zone id')
  t.not(peerGroup('::ffff:10.1.2.4'), peerGroup('::ffff:10.1.2.3'), 'the next IPv4 address is its own')
  t.not(peerGroup('::ffff:0:10.1.2.3'), '10.1.2.3', 'IPv4-translated (::ffff:0:a.b.c.d) is not v4-mapped')
})

t.test('anything that is not an address is its own group, unchanged', async (t) => {
  for (const peer of ['', 'unix-socket', 'warm-up', '::ffff:10.1.2', '1:2:3:4:5:6:7:8:9', 'a::b::c', '[::1]'])
    t.equal(peerGroup(peer), peer, JSON.stringify(peer))
})
