// proxy.close() ends promptly once nothing is in flight: a sidecar stopped on SIGTERM must not wait for
// connections that carry no request (Kubernetes counts its drain window). Each case leaves behind what a
// real client would (an idle or half-open connection, a session it abused) and bounds the close.
import { once } from 'node:events'
import { constants, connect as h2connect } from 'node:http2'
import { connect } from 'node:net'
import t from 'tap'
import { Agent, Client, request } from 'undici'
import { defaultConfig } from '../../src/config/schema.ts'
import { eventually } from '../helpers/eventually.ts'
import { h2SessionAfterOneRequest } from '../helpers/h2-session.ts'
import { createServerPki } from '../helpers/pki.ts'
import { startProxy, TestPipeline } from '../helpers/proxy-fixture.ts'
import { rapidReset } from '../helpers/rapid-reset.ts'
import { startUpstream } from '../helpers/upstream.ts'

// generous for a loaded machine, far below the timeouts (headers 10 s, idle 60 s, drain 15 s) a leftover
// connection would otherwise sit out
const PROMPT_MS = 3000

async function timedClose(close: () => Promise<void>): Promise<number> {
  const start = performance.now()
  await close()
  return performance.now() - start
}

t.test('close(0) after a client went away mid-request', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const { url, proxy } = await startProxy(t, { upstream: up.url })
  const agent = new Agent()
  t.teardown(() => agent.destroy())
  const controller = new AbortController()
  const pending = request(`${url}/slow/5000`, { dispatcher: agent, signal: controller.signal })
  await eventually(() => up.received.some((r) => r.url === '/slow/5000'), { what: 'the upstream request' })
  controller.abort()
  await t.rejects(pending)
  await eventually(() => proxy.inFlight() === 0, { what: 'nothing in flight' })
  const ms = await timedClose(() => proxy.close(0))
  t.ok(ms < PROMPT_MS, `closed in ${Math.round(ms)} ms`)
})

t.test('close() does not wait for connections that never sent a byte', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const limits = { ...defaultConfig().limits, maxConnections: 2 }
  const { port, proxy } = await startProxy(t, { upstream: up.url, limits })
  const held = [connect(port, '127.0.0.1'), connect(port, '127.0.0.1')]
  t.teardown(() => {
    for (const s of held) s.destroy()
  })
  for (const s of held) s.on('error', () => {})
  await Promise.all(held.map((s) => once(s, 'connect')))
  const closed = held.map((s) => new Promise((resolve) => s.once('close', resolve)))
  const ms = await timedClose(() => proxy.close(defaultConfig().timeouts.drain))
  t.ok(ms < PROMPT_MS, `closed in ${Math.round(ms)} ms`)
  await Promise.all(closed)
  t.pass('the silent connections were closed by the proxy')
})

t.test('close() after an HTTP/2 connection was closed for rapid reset, with another one idle', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const limits = { ...defaultConfig().limits, http2MaxResetsPerSecond: 20 }
  const { url, proxy } = await startProxy(t, { upstream: up.url, limits })
  const abusive = h2connect(url)
  t.teardown(() => abusive.destroy())
  const code = await rapidReset(abusive)
  t.equal(code, constants.NGHTTP2_ENHANCE_YOUR_CALM)
  const idle = await h2SessionAfterOneRequest(t, url)
  t.equal(idle.status, 200, 'another HTTP/2 client is served')
  await eventually(() => proxy.inFlight() === 0, { what: 'nothing in flight' })
  const ms = await timedClose(() => proxy.close(defaultConfig().timeouts.drain))
  t.ok(ms < PROMPT_MS, `closed in ${Math.round(ms)} ms`)
})

t.test('close() after a gRPC call over h2c was rejected on the proxy', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const pipeline = new TestPipeline(() => ({
    reject: { status: 401, body: JSON.stringify({ error: 'unauthenticated' }) },
  }))
  const { url, proxy } = await startProxy(t, { upstream: up.url, pipeline })
  const session = h2connect(url)
  session.on('error', () => {})
  t.teardown(() => session.destroy())
  const stream = session.request({
    ':method': 'POST',
    ':path': '/demo.v1.Echo/Unary',
    'content-type': 'application/grpc',
    te: 'trailers',
  })
  stream.on('error', () => {})
  // one length-prefixed message, then END_STREAM, as a unary call sends it
  stream.end(Buffer.from([0, 0, 0, 0, 2, 10, 0]))
  const [headers] = (await once(stream, 'response')) as [Record<string, string | number>]
  t.equal(headers[':status'], 200)
  stream.resume()
  await eventually(() => proxy.inFlight() === 0, { what: 'nothing in flight' })
  const ms = await timedClose(() => proxy.close(defaultConfig().timeouts.drain))
  t.ok(ms < PROMPT_MS, `closed in ${Math.round(ms)} ms`)
})

t.test('close() still lets a request in flight on the TLS listener finish', async (t) => {
  const { ca, server } = await createServerPki()
  const up = await startUpstream()
  t.teardown(() => up.close())
  const { proxy, https } = await startProxy(t, {
    upstream: up.url,
    https: { host: '127.0.0.1', port: 0, cert: server.certPem, key: server.keyPem, clientCert: 'optional' },
  })
  const client = new Client(`https://127.0.0.1:${https!.port}`, {
    connect: { ca: ca.certPem, servername: 'localhost' },
  })
  t.teardown(() => client.destroy())
  const pending = client.request({ path: '/slow/500', method: 'GET' })
  await eventually(() => up.received.some((r) => r.url === '/slow/500'), { what: 'the upstream request' })
  const closed = proxy.close(defaultConfig().timeouts.drain)
  const res = await pending
  t.equal(res.statusCode, 200)
  await res.body.dump()
  await closed
})
