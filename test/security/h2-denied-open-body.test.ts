// A request the proxy answers on its own (403 deny, 401 invalid token, 400) while the client's HTTP/2 request
// body is still open. The proxy's complete answer must close the exchange: the denial is recorded (metrics,
// audit) and nothing of the connection outlives the client. Left half-open, the stream would keep the deny
// unrecorded, and once the client had gone the h2c connection (handed over from the HTTP/1.1 server, whose
// sockets are allowHalfOpen) would never close: the exchange in flight forever, every SIGTERM waiting out
// timeouts.drain, and a descriptor per such client.
import { once } from 'node:events'
import { connect } from 'node:http2'
import t from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const POLICY = {
  mode: 'enforce',
  rules: [{ name: 'admin', route: '/admin/**', allow: [{ identity: 'nobody' }] }],
}

async function deniedWithOpenBody(url: string, extra: Record<string, string> = {}) {
  const session = connect(url)
  session.on('error', () => {})
  // a streaming upload: the HEADERS frame does not end the stream and the body is never finished
  const stream = session.request(
    { ':method': 'POST', ':path': '/admin/upload', ...extra },
    { endStream: false },
  )
  stream.on('error', () => {})
  stream.write('first chunk of a body that never ends')
  const [headers] = (await once(stream, 'response')) as [Record<string, string | number>]
  stream.resume()
  return { session, stream, status: Number(headers[':status']), headers }
}

const denied = async (adminUrl: string) =>
  metricValue(await scrape(adminUrl), 'nhi_policy_decisions_total', { decision: 'deny', rule: 'admin' })

t.test('a denied HTTP/2 request with an unfinished body is recorded while the client stays', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const sidecar = await startTestSidecar(t, { upstream: up.url, policy: POLICY })
  const { session, status } = await deniedWithOpenBody(sidecar.proxyUrl)
  t.teardown(() => session.destroy())
  t.equal(status, 403, 'denied')
  await eventually(async () => (await denied(sidecar.adminUrl)) === 1, {
    timeoutMs: 5_000,
    what: 'the 403 counted in nhi_policy_decisions_total',
  })
  t.pass('the denial was recorded')
  t.same(up.received, [], 'nothing reached the upstream')
})

t.test('a denied gRPC call whose client keeps streaming is recorded while the client stays', async (t) => {
  // a client-streaming or bidirectional call: the proxy's answer is one HEADERS frame ending its side
  // (Trailers-Only), which node:http2 sends without the trailers step the other answers end with
  const up = await startUpstream()
  t.teardown(() => up.close())
  const sidecar = await startTestSidecar(t, { upstream: up.url, policy: POLICY })
  const { session, stream, status, headers } = await deniedWithOpenBody(sidecar.proxyUrl, {
    'content-type': 'application/grpc',
    te: 'trailers',
  })
  t.teardown(() => session.destroy())
  t.equal(status, 200)
  t.equal(headers['grpc-status'], '7', 'PERMISSION_DENIED')
  await eventually(async () => (await denied(sidecar.adminUrl)) === 1, {
    timeoutMs: 5_000,
    what: 'the denied call counted in nhi_policy_decisions_total',
  })
  t.pass('the denial was recorded')
  await eventually(() => stream.closed || undefined, { what: 'the stream closed by the proxy' })
  t.equal(stream.rstCode, 0, 'asked to stop sending with NO_ERROR')
  t.same(up.received, [], 'nothing reached the upstream')
})

t.test('a client that leaves after such a denial leaves nothing behind', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const sidecar = await startTestSidecar(t, { upstream: up.url, policy: POLICY })
  const { session, status } = await deniedWithOpenBody(sidecar.proxyUrl)
  t.equal(status, 403)
  // the client goes away without ending its request (a crash, a cut network, an attacker repeating this)
  session.destroy()
  await eventually(async () => (await denied(sidecar.adminUrl)) === 1, {
    timeoutMs: 5_000,
    what: 'the exchange recorded once the client left',
  })
  t.pass('the denial was recorded once the client left')
  // nothing in flight: SIGTERM exits at once, not after timeouts.drain (15 s)
  const started = Date.now()
  const code = await sidecar.close()
  t.equal(code, 0)
  t.ok(Date.now() - started < 5_000, `exited ${Date.now() - started} ms after SIGTERM`)
})

t.test('an h2c client that leaves mid-upload releases its connection and the upstream one', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const sidecar = await startTestSidecar(t, { upstream: up.url })
  const session = connect(sidecar.proxyUrl)
  session.on('error', () => {})
  const stream = session.request({ ':method': 'POST', ':path': '/echo' }, { endStream: false })
  stream.on('error', () => {})
  stream.write('part of an upload')
  const upstreamConnections = () =>
    new Promise<number>((resolve) => up.server.getConnections((_e, n) => resolve(n)))
  await eventually(async () => (await upstreamConnections()) === 1, { what: 'the upload forwarded' })
  session.destroy()
  await eventually(async () => (await upstreamConnections()) === 0, {
    timeoutMs: 5_000,
    what: 'the upstream connection closed after the client left',
  })
  await eventually(async () => metricValue(await scrape(sidecar.adminUrl), 'nhi_requests_total') === 1, {
    timeoutMs: 5_000,
    what: 'the exchange recorded',
  })
  const started = Date.now()
  t.equal(await sidecar.close(), 0)
  t.ok(Date.now() - started < 5_000, `exited ${Date.now() - started} ms after SIGTERM`)
})
