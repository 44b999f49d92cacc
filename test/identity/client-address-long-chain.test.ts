// A client behind a trusted ingress chooses everything left of the entry the ingress appends to
// X-Forwarded-For, its length included. Padding the header must not make the ingress itself the client: that
// would merge every padded client into one (token_shared evaded, one verification queue for all of them) and
// leave the real address out of the audit record.
import t from 'tap'
import { clientAddress } from '../../src/identity/client-address.ts'
import { CidrSet } from '../../src/util/cidr.ts'

const trusted = new CidrSet(['127.0.0.2/32', '10.0.0.0/8'])

t.test('an overlong X-Forwarded-For is read from its right end', async (t) => {
  const padding = `${'198.51.100.1, '.repeat(400)}198.51.100.1`
  t.ok(padding.length > 4096, 'several KiB of padding')
  t.equal(
    clientAddress({ 'x-forwarded-for': `${padding}, 203.0.113.9` }, '127.0.0.2', trusted),
    '203.0.113.9',
  )
  // one long garbage entry in front of the appended one changes nothing either
  t.equal(
    clientAddress({ 'x-forwarded-for': `${'x'.repeat(10_000)}, 203.0.113.9` }, '127.0.0.2', trusted),
    '203.0.113.9',
  )
  // walking left past further trusted proxies still works at the right end of a long header
  t.equal(
    clientAddress({ 'x-forwarded-for': `${padding}, 203.0.113.9, 10.1.2.3` }, '127.0.0.2', trusted),
    '203.0.113.9',
  )
  // an untrusted peer's header is still not read, however long
  t.equal(clientAddress({ 'x-forwarded-for': `${padding}, 203.0.113.9` }, '127.0.0.1', trusted), '127.0.0.1')
})
