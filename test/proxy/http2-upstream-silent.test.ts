// An h2c:// or h2:// upstream that accepts the connection (TCP, or TLS with ALPN h2) but never sends its SETTINGS
// frame, the server half of the HTTP/2 connection preface: a hung process, a port taken by something that is
// not HTTP/2. The session never came up, so its requests are connect failures (502, gRPC UNAVAILABLE) at the
// connect deadline, and the session is not kept: the next request opens a new one, and once the upstream is
// back it is served at once instead of waiting timeouts.upstream on the dead session.
import { once } from 'node:events'
import {
  createServer as createH2cServer,
  createSecureServer,
  type Http2SecureServer,
  type Http2Server,
  connect as h2connect,
  type ServerHttp2Session,
} from 'node:http2'
import { createServer as createNetServer, type Server, type Socket } from 'node:net'
import { createServer as createTlsServer, Server as TlsServer } from 'node:tls'
import t, { type Test } from 'tap'
import { defaultConfig } from '../../src/config/schema.ts'
import type { UpstreamFailed } from '../../src/proxy/forwarder.ts'
import { eventually, stillTrueFor } from '../helpers/eventually.ts'
import { listenUntilTeardown } from '../helpers/net.ts'
import { createServerPki } from '../helpers/pki.ts'
import { startProxy } from '../helpers/proxy-fixture.ts'

/** the connect deadline is timeouts.upstream up to 10 s: the silent session is given up on after this */
const timeouts = { ...defaultConfig().timeouts, upstream: 1000 }

/** accepts and reads every connection (a TLS one once its handshake is done), and never writes a byte */
function silentServer(server: Server): Server {
  server.on(server instanceof TlsServer ? 'secureConnection' : 'connection', (socket: Socket) => {
    socket.on('error', () => {})
    socket.resume()
  })
  return server
}

/** a gRPC call over h2c to the proxy: the grpc-status it ends with */
async function grpcStatusOf(t: Test, url: string): Promise<string | undefined> {
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
  let status: string | undefined
  const take = (h: Record<string, unknown>) => {
    if (typeof h['grpc-status'] === 'string') status = h['grpc-status']
  }
  stream.on('response', take)
  stream.on('trailers', take)
  stream.resume()
  stream.end(Buffer.alloc(5))
  await once(stream, 'close')
  return status
}

/**
 * The sessions `server` has open, and how many it has opened: the tests count the sessions the proxy keeps to
 * an upstream. Those still open are destroyed at the end of the test, which a server's close waits for.
 */
function trackSessions(t: Test, server: Http2Server | Http2SecureServer) {
  const sessions = new Set<ServerHttp2Session>()
  let opened = 0
  server.on('session', (s) => {
    opened++
    sessions.add(s)
    s.once('close', () => sessions.delete(s))
  })
  t.teardown(() => {
    for (const s of sessions) s.destroy()
  })
  return { sessions, opened: () => opened }
}

/** answers every request on `port` of 127.0.0.1 with 200 `served` */
async function answerOn(t: Test, port: number, secure?: { key: string; cert: string }) {
  const server = secure ? createSecureServer({ ...secure, allowHTTP1: false }) : createH2cServer()
  server.on('stream', (stream) => {
    stream.on('error', () => {})
    stream.respond({ ':status': 200 })
    stream.end('served')
  })
  server.listen(port, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => server.close())
  return trackSessions(t, server)
}

for (const secure of [false, true]) {
  const scheme = secure ? 'h2' : 'h2c'
  t.test(
    `${scheme}: an upstream that never sends its SETTINGS is a connect failure, and not reused`,
    async (t) => {
      const pki = secure ? await createServerPki() : undefined
      const tlsFiles = pki ? { key: pki.server.keyPem, cert: pki.server.certPem } : undefined
      const silent = silentServer(
        tlsFiles ? createTlsServer({ ...tlsFiles, ALPNProtocols: ['h2'] }) : createNetServer(),
      )
      const port = await listenUntilTeardown(t, silent)
      const failures: string[] = []
      const failed: UpstreamFailed = (reason, err) => {
        failures.push(`${reason} ${String((err as { code?: unknown }).code)}`)
      }
      const p = await startProxy(t, {
        upstream: `${scheme}://127.0.0.1:${port}`,
        timeouts,
        onUpstreamFailed: failed,
        ...(pki ? { upstreamTls: { ca: pki.ca.certPem, servername: 'localhost' } } : {}),
      })

      // both on the one session that never comes up
      const started = performance.now()
      const [plain, grpc] = await Promise.all([
        fetch(`${p.url}/first`).then(async (r) => ({ status: r.status, body: await r.text() })),
        grpcStatusOf(t, p.url),
      ])
      const waited = performance.now() - started
      t.equal(plain.status, 502, 'a plain request is answered 502, as for an upstream that cannot be reached')
      t.match(plain.body, /upstream unreachable/)
      t.equal(grpc, '14', 'a gRPC call ends UNAVAILABLE')
      t.ok(waited >= 900, `at the connect deadline (${Math.round(waited)} ms)`)

      // the upstream is back on the same port; the silent connection is still open
      silent.close()
      const up = await answerOn(t, port, tlsFiles)
      const again = performance.now()
      const next = await fetch(`${p.url}/second`)
      t.equal(next.status, 200, 'the next request is served, on a new session')
      t.equal(await next.text(), 'served')
      const took = performance.now() - again
      t.ok(took < 900, `without waiting on the silent session (${Math.round(took)} ms)`)
      // a session that came up is kept past the connect deadline, and takes the requests after it
      t.ok(
        await stillTrueFor(() => up.sessions.size === 1, 1500),
        'the new session is still open after the connect deadline',
      )
      t.equal(await (await fetch(`${p.url}/third`)).text(), 'served')
      t.equal(up.opened(), 1, 'on the same session')

      const events = await p.pipeline.waitForEvents(4)
      t.same(
        events.map((e) => [e.path, e.status, e.upstreamError]).sort(),
        [
          ['/demo.v1.Echo/Unary', 200, 'connect'],
          ['/first', 502, 'connect'],
          ['/second', 200, undefined],
          ['/third', 200, undefined],
        ],
        'recorded as connect failures, not timeouts',
      )
      t.same(
        failures,
        ['connect ETIMEDOUT', 'connect ETIMEDOUT'],
        "in the operator's log as connect timeouts",
      )
    },
  )
}

// A request the upstream leaves unanswered until timeouts.upstream has its session checked with a PING (nghttp2
// 1.61 can stop a session without node:http2 knowing, see Http2Forwarder.check): a session that answers it is
// not given up on, and the response it is still streaming arrives whole.
t.test('h2c: a session that answers its PING after a headers timeout keeps its streams', async (t) => {
  const server = createH2cServer()
  const { sessions, opened } = trackSessions(t, server)
  let release: (() => void) | undefined
  server.on('stream', (stream, headers) => {
    stream.on('error', () => {})
    if (headers[':path'] === '/stall') return
    stream.respond({ ':status': 200 })
    if (headers[':path'] !== '/hold') {
      stream.end('served')
      return
    }
    stream.write('part ')
    release = () => stream.end('rest')
  })
  const port = await listenUntilTeardown(t, server)
  const p = await startProxy(t, { upstream: `h2c://127.0.0.1:${port}`, timeouts })

  const held = await fetch(`${p.url}/hold`)
  t.equal(held.status, 200, 'the held response has started')
  const stalled = await fetch(`${p.url}/stall`)
  t.equal(stalled.status, 504, 'the unanswered request gets 504 at timeouts.upstream')
  await stalled.text()
  release?.()
  t.equal(await held.text(), 'part rest', 'the response on the checked session arrives whole')
  t.equal(await (await fetch(`${p.url}/after`)).text(), 'served', 'the next request is served')
  // the checked session was used again, or closed once its streams were done if a new one took its place
  await eventually(() => sessions.size === 1, { what: 'one session left to the upstream' })
  t.ok(opened() <= 2, `no session opened but for the one that may have replaced it (${opened()})`)
})

// timeouts.upstream: 0 is no deadline (as on the HTTP/1.1 engine, upstream-framing.test.ts), for the connect
// deadline it also sets and the PING check it bounds: not one that has passed before the upstream's SETTINGS
t.test('h2c: timeouts.upstream 0 is no deadline, not an immediate one', async (t) => {
  const server = createH2cServer()
  server.on('stream', (stream) => {
    stream.on('error', () => {})
    // the head after a pause, longer than a timer of 0 takes
    setTimeout(() => {
      if (stream.closed) return
      stream.respond({ ':status': 200 })
      stream.end('slow')
    }, 300)
  })
  const port = await listenUntilTeardown(t, server)
  const p = await startProxy(t, {
    upstream: `h2c://127.0.0.1:${port}`,
    timeouts: { ...timeouts, upstream: 0 },
  })
  const r = await fetch(`${p.url}/slow`)
  t.equal(r.status, 200, 'a slow answer still arrives')
  t.equal(await r.text(), 'slow')
  const [event] = await p.pipeline.waitForEvents(1)
  t.equal(event?.upstreamError, undefined, 'recorded without an upstream error')
})
