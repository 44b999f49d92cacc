// The client address is worked out once per request: the first stage that asks keeps it in the request (the
// proxy's exchange) and the others, the pipeline's record included, take it from there instead of reading
// X-Forwarded-For again. A request object without the field (a CLI case, an embedder's) keeps nothing.
import t from 'tap'
import { configSchema } from '../../src/config/schema.ts'
import { requestClient } from '../../src/identity/client-address.ts'
import { AttributionPipeline } from '../../src/pipeline/index.ts'
import { Exchange } from '../../src/proxy/exchange.ts'
import type { ConnectionInfo, RequestInfo } from '../../src/types.ts'
import { CidrSet } from '../../src/util/cidr.ts'

const TRUSTED = '127.0.0.2'
const GOOGLEBOT = 'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)'
const GOOGLE_ADDRESS = '66.249.66.1'
const trusted = new CidrSet([`${TRUSTED}/32`])
const conn = (remoteAddress: string): ConnectionInfo => ({ remoteAddress, remotePort: 1, tls: false })

t.test(
  'requestClient keeps the address in a request that has the field, and reads the header once',
  async (t) => {
    const req = { headers: { 'x-forwarded-for': `10.9.9.9, ${GOOGLE_ADDRESS}` }, client: undefined }
    t.equal(requestClient(req, TRUSTED, trusted), GOOGLE_ADDRESS)
    t.equal(req.client, GOOGLE_ADDRESS, 'kept')
    req.headers['x-forwarded-for'] = '203.0.113.9'
    t.equal(
      requestClient(req, TRUSTED, trusted),
      GOOGLE_ADDRESS,
      'the next stage takes it: the header is not read again',
    )

    const direct = { headers: { 'x-forwarded-for': GOOGLE_ADDRESS }, client: undefined }
    t.equal(
      requestClient(direct, '203.0.113.7', trusted),
      '203.0.113.7',
      'an untrusted peer is its own client',
    )
    t.equal(direct.client, '203.0.113.7', 'kept as well')
    const bare = { headers: {}, client: undefined }
    t.equal(requestClient(bare, TRUSTED, trusted), TRUSTED, 'no header: the trusted proxy itself')

    const plain: RequestInfo = {
      method: 'GET',
      path: '/',
      url: '/',
      headers: { 'x-forwarded-for': GOOGLE_ADDRESS },
    }
    t.equal(requestClient(plain, TRUSTED, trusted), GOOGLE_ADDRESS)
    t.notOk('client' in plain, 'a request object without the field is given none')
    plain.headers['x-forwarded-for'] = '203.0.113.9'
    t.equal(requestClient(plain, TRUSTED, trusted), '203.0.113.9', 'and is worked out again on each call')
  },
)

t.test('the pipeline: the stages and the record take the address the first stage worked out', async (t) => {
  const engine = new AttributionPipeline(
    configSchema.parse({ forwardedClientCert: { trustedProxies: [`${TRUSTED}/32`] } }),
  )
  t.teardown(() => engine.close())
  const headers = { 'user-agent': GOOGLEBOT, 'x-forwarded-for': `10.9.9.9, ${GOOGLE_ADDRESS}` }
  const ex = new Exchange(conn(TRUSTED), 'GET', '/', headers)
  t.equal(ex.client, undefined, 'nothing worked out before a stage asks')
  ex.pipeline = engine
  const attributed = await engine.attribute(ex, ex.conn)
  t.equal(attributed.identity.name, 'googlebot', "the crawler check took the forwarded client: Google's")
  t.equal(attributed.identity.verified, true)
  t.equal(ex.client, GOOGLE_ADDRESS, 'kept in the exchange')
  // what the record reads from here on is the kept address, not the header
  headers['x-forwarded-for'] = '203.0.113.9'
  t.equal(engine.clientAddress(ex, TRUSTED), GOOGLE_ADDRESS)
  const event = ex.event()
  t.equal(event.clientAddress, GOOGLE_ADDRESS, 'the event names the forwarded client')
  t.equal(event.peerAddress, TRUSTED, 'and the trusted proxy as the peer')
  t.equal(JSON.parse(JSON.stringify(event)).peerAddress, TRUSTED)

  // an untrusted peer is the client, whatever it says; no peer address is recorded
  const direct = new Exchange(conn('203.0.113.7'), 'GET', '/', {
    'user-agent': GOOGLEBOT,
    'x-forwarded-for': GOOGLE_ADDRESS,
  })
  direct.pipeline = engine
  const claimed = await engine.attribute(direct, direct.conn)
  t.equal(claimed.identity.verified, false, "the claim is checked against the peer's own address")
  t.same(claimed.evidence.anomalies, ['unverified_claim'])
  const directEvent = direct.event()
  t.equal(directEvent.clientAddress, '203.0.113.7')
  t.equal(directEvent.peerAddress, undefined)
  t.notOk('peerAddress' in JSON.parse(JSON.stringify(directEvent)))

  // a request no stage worked the address out for (no crawler claim, no token): the record does
  const quiet = new Exchange(conn(TRUSTED), 'GET', '/', { 'x-forwarded-for': '203.0.113.8' })
  quiet.pipeline = engine
  await engine.attribute(quiet, quiet.conn)
  t.equal(quiet.client, undefined, 'no stage asked')
  const quietEvent = quiet.event()
  t.equal(quietEvent.clientAddress, '203.0.113.8')
  t.equal(quietEvent.peerAddress, TRUSTED)

  // the CLI's plain request objects keep nothing and get the same answers
  const plain: RequestInfo = {
    method: 'GET',
    path: '/',
    url: '/',
    headers: { ...headers, 'x-forwarded-for': GOOGLE_ADDRESS },
  }
  const evaluated = await engine.evaluate(plain, conn(TRUSTED))
  t.equal(evaluated.identity.verified, true)
  t.notOk('client' in plain)
  t.equal(engine.clientAddress(plain, TRUSTED), GOOGLE_ADDRESS)
})
