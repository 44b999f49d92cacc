// HTTP/2 downstream: h2c with prior knowledge next to HTTP/1.1 on the plain port, ALPN h2 on the TLS port,
// client certificates on h2, per-stream records, and the HTTP/2 hardening limits.
import { execFile } from 'node:child_process'
import { once } from 'node:events'
import { createServer as createHttpServer } from 'node:http'
import { type ClientHttp2Session, connect, constants } from 'node:http2'
import { connect as tcpConnect } from 'node:net'
import type { TLSSocket } from 'node:tls'
import { promisify } from 'node:util'
import t from 'tap'
import { request } from 'undici'
import { defaultConfig } from '../../src/config/schema.ts'
import type { CertEvidence } from '../../src/types.ts'
import { eventually } from '../helpers/eventually.ts'
import { FLAG, FRAME, frame, goawayCode, headerBlock, PREFACE, stream1Answer } from '../helpers/h2-frames.ts'
import { h2SessionAfterOneRequest } from '../helpers/h2-session.ts'
import { metricValue, scrape, scrapeUntil } from '../helpers/metrics.ts'
import { listenUntilTeardown, rawClient, scriptedUpstream } from '../helpers/net.ts'
import { createCA, createServerPki, issueCert } from '../helpers/pki.ts'
import { startMtlsProxy, startProxy } from '../helpers/proxy-fixture.ts'
import { rapidReset } from '../helpers/rapid-reset.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const run = promisify(execFile)

const { ca: serverCa, server } = await createServerPki()
const clientCa = await createCA('client-ca')
const client = await issueCert(clientCa, {
  cn: 'nightly',
  uriSans: ['spiffe://cluster.local/ns/ci/sa/nightly'],
})

/** One h2 request on a session; resolves with status, headers and body text. */
async function h2get(session: ClientHttp2Session, path: string, headers: Record<string, string> = {}) {
  const stream = session.request({ ':path': path, ...headers })
  const [resHeaders] = (await once(stream, 'response')) as [Record<string, string | number>]
  let body = ''
  stream.setEncoding('utf8')
  for await (const chunk of stream) body += chunk
  return { status: Number(resHeaders[':status']), headers: resHeaders, body }
}

/** curl's `HTTP-version status-code` for one request to `url` */
async function curlVersionAndStatus(url: string, flags: string[]): Promise<string> {
  const { stdout } = await run('curl', [
    '-sS',
    ...flags,
    '-o',
    '/dev/null',
    '-w',
    '%{http_version} %{http_code}',
    url,
  ])
  return stdout
}

async function curlHasHttp2(): Promise<string | undefined> {
  try {
    const { stdout } = await run('curl', ['-V'])
    return /\bHTTP2\b/.test(stdout) ? undefined : 'curl was built without HTTP/2'
  } catch {
    return 'curl is not installed'
  }
}

t.test(
  'h2c with prior knowledge and HTTP/1.1 share the plain port; every stream is one record',
  async (t) => {
    const up = await startUpstream()
    t.teardown(() => up.close())
    const { url, pipeline } = await startProxy(t, { upstream: up.url })
    const session = connect(url)
    t.teardown(() => session.close())
    const answers = await Promise.all([
      h2get(session, '/echo?a=1'),
      h2get(session, '/echo?a=2'),
      h2get(session, '/status/404'),
    ])
    t.same(
      answers.map((a) => a.status),
      [200, 200, 404],
    )
    const echoed = JSON.parse(answers[0]!.body) as { url: string; headers: Record<string, string> }
    t.equal(echoed.url, '/echo?a=1')
    t.equal(echoed.headers['x-nhi-identity'], 'payments/api', 'the identity header reaches the upstream')
    t.match(echoed.headers.host, /^127\.0\.0\.1:\d+$/, ':authority becomes the upstream Host')
    t.notOk(
      Object.keys(echoed.headers).some((h) => h.startsWith(':')),
      'no pseudo-header is forwarded',
    )
    const events = await pipeline.waitForEvents(3)
    t.same(events.map((e) => e.status).sort(), [200, 200, 404])
    t.equal(
      new Set(pipeline.seen.map((s) => s.conn)).size,
      1,
      'one ConnectionInfo for all streams of a connection',
    )
    const h1 = await request(`${url}/echo`)
    t.equal(h1.statusCode, 200, 'HTTP/1.1 still works on the same port')
    await h1.body.dump()
  },
)

t.test('h2c request bodies stream through and are counted', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const { url, pipeline } = await startProxy(t, { upstream: up.url })
  const session = connect(url)
  t.teardown(() => session.close())
  const stream = session.request({ ':path': '/echo', ':method': 'POST' })
  stream.write(Buffer.alloc(70_000, 1))
  stream.end(Buffer.alloc(30_000, 2))
  const [headers] = (await once(stream, 'response')) as [Record<string, string | number>]
  let body = ''
  for await (const c of stream) body += c
  t.equal(headers[':status'], 200)
  t.equal((JSON.parse(body) as { bodyBytes: number }).bodyBytes, 100_000)
  const [event] = await pipeline.waitForEvents(1)
  t.equal(event!.bytesIn, 100_000)
  t.equal(event!.method, 'POST')
})

const curlSkip = (await curlHasHttp2()) ?? false

t.test('curl --http2-prior-knowledge', { skip: curlSkip }, async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const { url, pipeline } = await startProxy(t, { upstream: up.url })
  t.equal(await curlVersionAndStatus(`${url}/echo`, ['--http2-prior-knowledge']), '2 200')
  const [event] = await pipeline.waitForEvents(1)
  t.equal(event!.path, '/echo')
})

t.test(
  'TLS: ALPN h2 with a client certificate parsed once per connection; curl --http2 over TLS',
  async (t) => {
    const { https, pipeline, parser } = await startMtlsProxy(t, { server, clientCa }, 'optional')
    const origin = `https://localhost:${https!.port}`
    const session = connect(origin, {
      ca: serverCa.certPem,
      cert: client.certPem,
      key: client.keyPem,
      host: '127.0.0.1',
      servername: 'localhost',
    })
    t.teardown(() => session.close())
    const answers = await Promise.all([
      h2get(session, '/echo'),
      h2get(session, '/echo'),
      h2get(session, '/echo'),
    ])
    t.same(
      answers.map((a) => a.status),
      [200, 200, 200],
    )
    t.equal((session.socket as TLSSocket).alpnProtocol, 'h2')
    t.same(parser.calls, ['nightly'], 'the certificate is parsed once for three streams')
    await pipeline.waitForEvents(3)
    for (const { conn } of pipeline.seen) {
      t.equal(conn.tls, true)
      t.equal((conn.peerCert as CertEvidence).cn, 'nightly')
      t.equal((conn.peerCert as CertEvidence).verified, true)
    }
    const echoed = JSON.parse(answers[0]!.body) as { headers: Record<string, string> }
    t.equal(echoed.headers['x-forwarded-proto'], 'https')

    const skip = await curlHasHttp2()
    if (skip) {
      t.comment(`skipped: ${skip}`)
      return
    }
    const h2 = await curlVersionAndStatus(`${origin}/echo`, [
      '--http2',
      '--cacert',
      serverCa.certFile,
      '--cert',
      client.certFile,
      '--key',
      client.keyFile,
      '--resolve',
      `localhost:${https!.port}:127.0.0.1`,
    ])
    t.equal(h2, '2 200')
    const h1 = await curlVersionAndStatus(`${origin}/echo`, [
      '--http1.1',
      '--cacert',
      serverCa.certFile,
      '--resolve',
      `localhost:${https!.port}:127.0.0.1`,
    ])
    t.equal(h1, '1.1 200', 'HTTP/1.1 over TLS still works on the same port')
  },
)

t.test('HTTP/2 limits: concurrent streams advertised, rapid reset closes the connection', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const limits = { ...defaultConfig().limits, http2MaxConcurrentStreams: 7, http2MaxResetsPerSecond: 20 }
  const { url, pipeline } = await startProxy(t, { upstream: up.url, limits })
  const session = connect(url)
  t.teardown(() => session.destroy())
  await once(session, 'remoteSettings')
  t.equal(session.remoteSettings.maxConcurrentStreams, 7)
  const code = await rapidReset(session)
  t.equal(code, constants.NGHTTP2_ENHANCE_YOUR_CALM, 'the abusive connection got GOAWAY ENHANCE_YOUR_CALM')
  await eventually(() => (session.destroyed ? true : undefined))
  t.ok(pipeline.events.length <= 200)
  // a well-behaved client is still served
  t.equal((await h2SessionAfterOneRequest(t, url)).status, 200)
})

t.test('a connection closed for rapid reset is counted in nhi_http2_connections_closed_total', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const sidecar = await startTestSidecar(t, {
    upstream: up.url,
    limits: { http2MaxResetsPerSecond: 20 },
  })
  const admin = sidecar.adminUrl
  const closed = (samples: Awaited<ReturnType<typeof scrape>>) =>
    metricValue(samples, 'nhi_http2_connections_closed_total', { reason: 'rapid_reset' })
  const before = await scrape(admin)
  t.ok(
    before.some(
      (s) => s.name === 'nhi_http2_connections_closed_total' && s.labels['reason'] === 'rapid_reset',
    ),
    'exported at 0 before any abuse',
  )
  t.equal(closed(before), 0)
  const session = connect(sidecar.proxyUrl)
  t.teardown(() => session.destroy())
  t.equal(await rapidReset(session), constants.NGHTTP2_ENHANCE_YOUR_CALM)
  await eventually(async () => (closed(await scrape(admin)) === 1 ? true : undefined))
  // a well-behaved h2 client is neither cut nor counted
  t.equal((await h2SessionAfterOneRequest(t, sidecar.proxyUrl)).status, 200)
  t.equal(closed(await scrape(admin)), 1, 'only the abusive connection was counted')
})

t.test("streams the proxy resets itself are not counted as the client's rapid reset", async (t) => {
  // an upstream that fails every response after its first bytes: the proxy cuts each client stream
  const failing = await scriptedUpstream(t, ({ socket }) => {
    setTimeout(() => socket.destroy(), 20)
    return 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n'
  })
  const sidecar = await startTestSidecar(t, {
    upstream: failing.url,
    limits: { http2MaxResetsPerSecond: 5 },
  })
  const session = connect(sidecar.proxyUrl)
  session.on('error', () => {})
  t.teardown(() => session.destroy())
  let goaway: number | undefined
  session.on('goaway', (code: number) => {
    goaway = code
  })
  // a client that never resets a stream, with 20 requests in flight on its one connection
  const codes = await Promise.all(
    Array.from(
      { length: 20 },
      (_, i) =>
        new Promise<number>((resolve) => {
          const stream = session.request({ ':path': `/cut/${i}` })
          stream.on('error', () => {})
          stream.resume()
          stream.on('close', () => resolve(stream.rstCode))
        }),
    ),
  )
  t.same(new Set(codes), new Set([constants.NGHTTP2_INTERNAL_ERROR]), 'each response was cut by the proxy')
  t.equal(goaway, undefined, 'the connection was not sent GOAWAY')
  t.notOk(session.destroyed, 'the connection is still open')
  const samples = await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_upstream_errors_total', { reason: 'reset' }) >= 20,
    'the 20 upstream resets counted',
  )
  t.equal(
    metricValue(samples, 'nhi_http2_connections_closed_total', { reason: 'rapid_reset' }),
    0,
    'no rapid reset counted',
  )
})

/**
 * A client that writes the h2c preface and then PING or SETTINGS frames in bursts while never reading, so
 * the server's acknowledgements pile up. Stops sending once `stop()` says so (or after a bounded amount);
 * resolves with everything the server sent, read after the flood, and whether the connection was closed.
 */
async function flood(port: number, kind: 'ping' | 'settings', stop: () => Promise<boolean>) {
  const socket = tcpConnect(port, '127.0.0.1')
  await once(socket, 'connect')
  socket.pause()
  socket.on('error', () => {})
  socket.write(PREFACE)
  socket.write(frame(FRAME.SETTINGS, 0, 0, Buffer.alloc(0)))
  const one =
    kind === 'ping'
      ? frame(FRAME.PING, 0, 0, Buffer.alloc(8))
      : frame(FRAME.SETTINGS, 0, 0, Buffer.from([0, 3, 0, 0, 0, 100])) // SETTINGS_MAX_CONCURRENT_STREAMS = 100
  const burst = Buffer.concat(Array.from({ length: 2000 }, () => one))
  let stopped = false
  for (let i = 0; i < 40 && !stopped && !socket.destroyed; i++) {
    if (!socket.write(burst)) await Promise.race([once(socket, 'drain'), once(socket, 'close')])
    stopped = await stop()
  }
  const chunks: Buffer[] = []
  socket.on('data', (chunk: Buffer) => chunks.push(chunk))
  const closed = once(socket, 'close').then(() => true)
  socket.resume()
  const wasClosed = await Promise.race([
    closed,
    eventually(() => socket.destroyed || undefined, { what: 'the flooding connection closed' }),
  ])
  return { stopped, closed: wasClosed === true, received: Buffer.concat(chunks) }
}

t.test('PING and SETTINGS floods close the connection and are counted by kind', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const sidecar = await startTestSidecar(t, { upstream: up.url })
  const admin = sidecar.adminUrl
  const closed = async (reason: string) =>
    metricValue(await scrape(admin), 'nhi_http2_connections_closed_total', { reason })
  t.equal(await closed('ping_flood'), 0, 'ping_flood exported at 0 before any abuse')
  t.equal(await closed('settings_flood'), 0, 'settings_flood exported at 0 before any abuse')

  const pings = await flood(sidecar.proxyAddress.port, 'ping', async () => (await closed('ping_flood')) === 1)
  t.ok(pings.stopped, 'the PING flood was counted while it ran')
  t.ok(pings.closed, 'the PING-flooding connection was closed')
  // Node ends a session nghttp2 reports as flooded with GOAWAY INTERNAL_ERROR; the ACKs are never sent
  t.equal(goawayCode(pings.received), constants.NGHTTP2_INTERNAL_ERROR, 'with a GOAWAY')
  t.equal(await closed('settings_flood'), 0, 'a PING flood is not counted as a SETTINGS flood')

  const settings = await flood(
    sidecar.proxyAddress.port,
    'settings',
    async () => (await closed('settings_flood')) === 1,
  )
  t.ok(settings.stopped, 'the SETTINGS flood was counted while it ran')
  t.ok(settings.closed, 'the SETTINGS-flooding connection was closed')
  t.equal(goawayCode(settings.received), constants.NGHTTP2_INTERNAL_ERROR, 'with a GOAWAY')
  t.equal(await closed('ping_flood'), 1, 'a SETTINGS flood is not counted as a PING flood')

  // a well-behaved client that pings and reads its acknowledgements is served and not counted
  const session = connect(sidecar.proxyUrl)
  t.teardown(() => session.close())
  await once(session, 'connect')
  for (let i = 0; i < 50; i++) {
    await new Promise<void>((resolve, reject) => {
      session.ping((err) => (err ? reject(err) : resolve()))
    })
  }
  t.equal((await h2get(session, '/echo')).status, 200, 'a well-behaved client is served')
  t.equal(await closed('ping_flood'), 1, 'pings that are read are not a flood')
  t.equal(await closed('rapid_reset'), 0, 'floods are not counted as rapid reset')
})

t.test('HTTP/2 header list over limits.maxHeaderBytes is refused and never forwarded', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const limits = { ...defaultConfig().limits, maxHeaderBytes: 4096 }
  const { url } = await startProxy(t, { upstream: up.url, limits })
  const session = connect(url)
  t.teardown(() => session.destroy())
  session.on('error', () => {})
  await once(session, 'remoteSettings')
  t.equal(session.remoteSettings.maxHeaderListSize, 4096, 'the limit is advertised')
  const stream = session.request({ ':path': '/echo', 'x-big': 'a'.repeat(8000) })
  const outcome = await new Promise<string>((resolve) => {
    stream.on('response', (h) => resolve(`status ${h[':status']}`))
    stream.on('error', () => resolve(`reset ${stream.rstCode}`))
    stream.on('close', () => resolve(`reset ${stream.rstCode}`))
  })
  // the client acknowledged the SETTINGS before it sent the request: node:http2 resets the stream itself
  t.equal(
    outcome,
    `reset ${constants.NGHTTP2_ENHANCE_YOUR_CALM}`,
    'reset with ENHANCE_YOUR_CALM, as documented',
  )
  t.equal(up.received.length, 0, 'the oversized request never reached the upstream')
})

// node:http2 holds a stream to the maxHeaderListSize it announces only once the client has acknowledged the
// SETTINGS frame carrying it: the first requests of a connection, and every request of a client that never
// acknowledges, were forwarded whatever their size (a 17 KiB :path reached the upstream, over HTTP/1.1 a 431)
t.test('HTTP/2 headers over limits.maxHeaderBytes before SETTINGS are acknowledged: 431', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const limits = { ...defaultConfig().limits, maxHeaderBytes: 4096 }
  const { url, port } = await startProxy(t, { upstream: up.url, limits })

  // node's client sends its first request with the preface, before it has heard the proxy's SETTINGS
  const firstRequestStatus = async (headers: Record<string, string>) => {
    const session = connect(url)
    t.teardown(() => session.destroy())
    session.on('error', () => {})
    const stream = session.request(headers, { endStream: true })
    stream.on('error', () => {})
    const [response] = (await once(stream, 'response')) as [Record<string, unknown>]
    stream.resume()
    return response[':status']
  }
  t.equal(await firstRequestStatus({ ':path': `/${'p'.repeat(6000)}` }), 431, 'a long :path: 431')
  t.equal(await firstRequestStatus({ ':path': '/echo', 'x-big': 'a'.repeat(6000) }), 431, 'a long field: 431')

  // a client that never acknowledges: its HEADERS, then a body it keeps open
  const block = headerBlock([
    [':method', 'POST'],
    [':scheme', 'http'],
    [':path', '/echo'],
    [':authority', 'x'],
    ['x-big', 'a'.repeat(6000)],
  ])
  const answer = await stream1Answer(port, [
    PREFACE,
    frame(FRAME.SETTINGS, 0, 0, Buffer.alloc(0)),
    frame(FRAME.HEADERS, FLAG.END_HEADERS, 1, block),
    frame(FRAME.DATA, 0, 1, Buffer.from('body')),
  ])
  t.not(answer, 'status 200', `never acknowledging: not served (${answer})`)
  t.equal(up.received.length, 0, 'none of them reached the upstream')
  t.equal(
    await firstRequestStatus({ ':path': '/echo', 'x-small': 'a'.repeat(3000) }),
    200,
    'within it: served',
  )
  t.equal(up.received.length, 1, 'only that one reached the upstream')
})

t.test('an idle HTTP/2 connection is closed after timeouts.idle', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  // the idle timer starts when the proxy has sent the response, the clock below when this process has read
  // it: on a loaded machine the two are hundreds of milliseconds apart, so the idle time is long enough to
  // keep "closed at once" apart from "closed after the idle time" with half of it as the margin
  const timeouts = { ...defaultConfig().timeouts, idle: 1000 }
  const { url } = await startProxy(t, { upstream: up.url, timeouts })
  const session = connect(url)
  t.teardown(() => session.destroy())
  session.on('error', () => {})
  const closed = once(session, 'close')
  t.equal((await h2get(session, '/echo')).status, 200)
  const started = Date.now()
  await closed
  t.ok(Date.now() - started >= 500, 'closed after the idle time, not at once')
})

t.test('an identity rule on the host matches the :authority of an HTTP/2 request', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const sidecar = await startTestSidecar(t, {
    upstream: up.url,
    identities: [{ rule: 'vhost', match: { header: { host: 'public.example' } }, name: 'public-vhost' }],
  })
  const h1 = await request(`${sidecar.proxyUrl}/echo`, { headers: { host: 'public.example' } })
  const overH1 = (await h1.body.json()) as { headers: Record<string, string> }
  const session = connect(sidecar.proxyUrl)
  t.teardown(() => session.close())
  const overH2 = JSON.parse((await h2get(session, '/echo', { ':authority': 'public.example' })).body) as {
    headers: Record<string, string>
  }
  t.equal(overH1.headers['x-nhi-identity'], 'ua:public-vhost', 'HTTP/1.1: the rule matched')
  t.equal(overH2.headers.host, 'public.example', 'HTTP/2: the upstream got the :authority as its Host')
  t.equal(overH2.headers['x-nhi-identity'], 'ua:public-vhost', 'HTTP/2: the rule matched the same host')
})

t.test(
  'a stream whose DATA ends short of its content-length is malformed: reset, recorded 400, the upstream request aborted',
  async (t) => {
    /** the requests the upstream read, by path: body bytes, whether the body ended, whether the request closed */
    const uploads = new Map<string, { bytes: number; ended: boolean; closed: boolean }>()
    const upstream = createHttpServer((req, res) => {
      const seen = { bytes: 0, ended: false, closed: false }
      uploads.set(req.url ?? '', seen)
      req.on('data', (chunk: Buffer) => {
        seen.bytes += chunk.length
      })
      req.on('end', () => {
        seen.ended = true
        res.end('whole')
      })
      req.on('close', () => {
        seen.closed = true
      })
    })
    const port = await listenUntilTeardown(t, upstream)
    const { port: proxyPort, pipeline } = await startProxy(t, { upstream: `http://127.0.0.1:${port}` })
    const client = await rawClient(proxyPort)
    t.teardown(() => client.socket.destroy())
    const post = (stream: number, path: string, contentLength: number) =>
      frame(
        FRAME.HEADERS,
        FLAG.END_HEADERS,
        stream,
        headerBlock([
          [':method', 'POST'],
          [':scheme', 'http'],
          [':authority', 'app.example'],
          [':path', path],
          ['content-length', String(contentLength)],
        ]),
      )
    client.socket.write(
      Buffer.concat([
        PREFACE,
        frame(FRAME.SETTINGS, 0, 0, Buffer.alloc(0)),
        post(1, '/short', 10),
        frame(FRAME.DATA, 0, 1, Buffer.from('abcd')),
      ]),
    )
    await eventually(() => uploads.get('/short')?.bytes === 4, {
      what: 'the upstream to have the first bytes',
    })
    // END_STREAM with 4 of the 10 bytes announced
    client.socket.write(frame(FRAME.DATA, FLAG.END_STREAM, 1, Buffer.alloc(0)))
    const received = () => Buffer.from(client.text(), 'latin1')
    const resetCode = await eventually(() => rstStreamCode(received(), 1), { what: 'stream 1 reset' })
    t.equal(resetCode, constants.NGHTTP2_PROTOCOL_ERROR, 'reset with PROTOCOL_ERROR (RFC 9113 §8.1.1)')
    await eventually(() => uploads.get('/short')?.closed, { what: 'the upstream request to close' })
    t.notOk(uploads.get('/short')?.ended, 'the upstream never saw the body end: its request was aborted')
    const [event] = await pipeline.waitForEvents(1)
    t.equal(event!.status, 400, 'recorded as the malformed request it was, not as a client that left')
    t.equal(event!.bytesIn, 4, 'with the bytes it sent')
    t.equal(event!.upstreamError, undefined, 'not an upstream error')
    // the connection goes on: a stream error, not a connection error
    client.socket.write(
      Buffer.concat([post(3, '/whole', 2), frame(FRAME.DATA, FLAG.END_STREAM, 3, Buffer.from('ok'))]),
    )
    await eventually(() => uploads.get('/whole')?.ended, { what: 'the next stream on the connection' })
    t.equal(goawayCode(received()), undefined, 'no GOAWAY')
    // a client that resets its own stream so mid-body: node:http2 does not tell it from the reset above
    client.socket.write(
      Buffer.concat([post(5, '/reset-by-client', 10), frame(FRAME.DATA, 0, 5, Buffer.from('ab'))]),
    )
    await eventually(() => uploads.get('/reset-by-client')?.bytes === 2, {
      what: 'the upstream to have its bytes',
    })
    const protocolError = Buffer.alloc(4)
    protocolError.writeUInt32BE(constants.NGHTTP2_PROTOCOL_ERROR)
    client.socket.write(frame(FRAME.RST_STREAM, 0, 5, protocolError))
    await eventually(() => uploads.get('/reset-by-client')?.closed, { what: 'its upstream request to close' })
    const events = await pipeline.waitForEvents(3)
    t.same(
      events.map((e) => [e.path, e.status]),
      [
        ['/short', 400],
        ['/whole', 200],
        ['/reset-by-client', 400],
      ],
      'a client that resets its stream with PROTOCOL_ERROR is recorded 400 too',
    )
  },
)

/** the error code of the first RST_STREAM frame on `stream` in what the server sent, if any */
function rstStreamCode(received: Buffer, stream: number): number | undefined {
  for (let at = 0; at + 9 <= received.length; at += 9 + received.readUIntBE(at, 3)) {
    if (
      received[at + 3] === FRAME.RST_STREAM &&
      (received.readUInt32BE(at + 5) & 0x7fffffff) === stream &&
      at + 13 <= received.length
    )
      return received.readUInt32BE(at + 9)
  }
  return undefined
}
