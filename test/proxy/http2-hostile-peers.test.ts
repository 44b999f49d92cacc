// HTTP/2 peers that send what node:http2 will not pass on, end to end through the built sidecar: a client
// that resets a bodiless gRPC call with NO_ERROR while the upstream answers it, one that resets streams
// expecting 100-continue at once, and an h2 upstream whose answer carries a status or fields an HTTP/2
// response cannot have. Each used to throw inside an event
// handler of the proxy and end the process for every caller; now each is one answered or cancelled exchange.
import { once } from 'node:events'
import {
  constants,
  createServer as createH2Server,
  connect as h2connect,
  type IncomingHttpHeaders,
} from 'node:http2'
import { type AddressInfo, createServer as createNetServer, connect as tcpConnect } from 'node:net'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { type BinSidecar, startBin } from '../helpers/bin.ts'
import { FLAG, FRAME, frame, headerBlock, PREFACE, serveClientFrames } from '../helpers/h2-frames.ts'
import { metricValue, scrapeUntil } from '../helpers/metrics.ts'
import { rapidReset } from '../helpers/rapid-reset.ts'
import { startUpstream } from '../helpers/upstream.ts'

t.setTimeout(120_000)

interface RawAnswer {
  headers: readonly (readonly [string, string])[]
  body?: string
  trailers?: readonly (readonly [string, string])[]
}

/**
 * An h2c upstream written frame by frame, so that it can send what node:http2 refuses to send: every stream
 * is answered with `answer` (a header block, then a body and trailers unless told otherwise).
 */
async function rawH2cUpstream(t: Test, answer: RawAnswer) {
  let streams = 0
  const server = createNetServer((socket) =>
    serveClientFrames(socket, ({ type, streamId }) => {
      if (type !== FRAME.HEADERS) return
      streams++
      const last = answer.body === undefined && answer.trailers === undefined
      socket.write(
        frame(
          FRAME.HEADERS,
          FLAG.END_HEADERS | (last ? FLAG.END_STREAM : 0),
          streamId,
          headerBlock(answer.headers),
        ),
      )
      if (last) return
      const bodyEnds = answer.trailers === undefined
      socket.write(
        frame(FRAME.DATA, bodyEnds ? FLAG.END_STREAM : 0, streamId, Buffer.from(answer.body ?? '')),
      )
      if (answer.trailers)
        socket.write(
          frame(FRAME.HEADERS, FLAG.END_HEADERS | FLAG.END_STREAM, streamId, headerBlock(answer.trailers)),
        )
    }),
  )
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => server.close())
  return { url: `h2c://127.0.0.1:${(server.address() as AddressInfo).port}`, streams: () => streams }
}

interface H2Result {
  status: number
  headers: IncomingHttpHeaders
  trailers: IncomingHttpHeaders | undefined
  body: string
}

/** one request over a fresh h2c session to the sidecar */
async function h2Request(t: Test, proxyUrl: string, headers: Record<string, string>): Promise<H2Result> {
  const session = h2connect(proxyUrl)
  session.on('error', () => {})
  t.teardown(() => session.destroy())
  const stream = session.request(headers, { endStream: true })
  stream.on('error', () => {})
  const result: H2Result = { status: 0, headers: {}, trailers: undefined, body: '' }
  stream.on('response', (h) => {
    result.headers = h
    result.status = Number(h[':status'])
  })
  stream.on('trailers', (h) => {
    result.trailers = h
  })
  stream.setEncoding('utf8')
  stream.on('data', (c: string) => {
    result.body += c
  })
  await once(stream, 'close')
  session.close()
  return result
}

function assertAlive(t: Test, sidecar: BinSidecar): void {
  t.equal(sidecar.child.exitCode, null, 'the sidecar is still running')
  t.equal(sidecar.child.signalCode, null)
  t.notMatch(sidecar.stderr(), /ERR_HTTP2|Uncaught|uncaughtException/, 'no node:http2 error escaped')
}

t.test('a bodiless gRPC call reset with NO_ERROR while the upstream answers it Trailers-Only', async (t) => {
  // what grpc-go answers a call that is not a POST: at once, a HEADERS frame that ends the stream
  let answered = 0
  const upstream = createH2Server()
  upstream.on('stream', (stream, headers) => {
    stream.on('error', () => {})
    if (headers[':method'] !== 'POST') {
      answered++
      stream.respond(
        { ':status': 405, 'content-type': 'application/grpc', 'grpc-status': '13' },
        { endStream: true },
      )
      return
    }
    stream.resume()
    stream.on('end', () =>
      stream.respond(
        { ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '0' },
        { endStream: true },
      ),
    )
  })
  upstream.listen(0, '127.0.0.1')
  await once(upstream, 'listening')
  t.teardown(() => upstream.close())
  const sidecar = await startBin(t, {
    upstream: `h2c://127.0.0.1:${(upstream.address() as AddressInfo).port}`,
  })
  const proxy = new URL(sidecar.proxyUrl)

  // HEADERS without END_STREAM (the stream stays open for a body) and RST_STREAM(NO_ERROR) in one write:
  // node:http2 closes the stream without an 'aborted', so the call is forwarded and its answer comes back to
  // a stream that can no longer take one
  const attacks = 3
  for (let i = 0; i < attacks; i++) {
    const socket = tcpConnect(Number(proxy.port), proxy.hostname)
    socket.on('error', () => {})
    socket.on('data', () => {})
    await once(socket, 'connect')
    const head = frame(
      FRAME.HEADERS,
      FLAG.END_HEADERS,
      1,
      headerBlock([
        [':method', 'HEAD'],
        [':scheme', 'http'],
        [':authority', 'orders'],
        [':path', '/demo.v1.Echo/Get'],
        ['content-type', 'application/grpc'],
      ]),
    )
    socket.write(
      Buffer.concat([
        PREFACE,
        frame(FRAME.SETTINGS, 0, 0, Buffer.alloc(0)),
        head,
        frame(FRAME.RST_STREAM, 0, 1, Buffer.alloc(4)),
      ]),
    )
    t.teardown(() => socket.destroy())
  }
  // each reset call is one record once the proxy has taken the upstream's answer
  const samples = await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_requests_total', { method: 'HEAD' }) >= attacks,
    'the reset calls recorded',
  )
  t.equal(answered, attacks, 'the upstream answered every call')
  t.equal(
    metricValue(samples, 'nhi_requests_total', { method: 'HEAD' }),
    attacks,
    'each reset call recorded once',
  )
  assertAlive(t, sidecar)

  const call = await h2Request(t, sidecar.proxyUrl, {
    ':method': 'POST',
    ':path': '/demo.v1.Echo/Get',
    'content-type': 'application/grpc',
  })
  t.equal(call.headers['grpc-status'], '0', 'a well-behaved call is served after them')
})

t.test('an h2 upstream answering a :status HTTP/2 cannot carry', async (t) => {
  const up = await rawH2cUpstream(t, { headers: [[':status', '600']], body: 'six hundred\n' })
  const sidecar = await startBin(t, { upstream: up.url })

  const h2 = await h2Request(t, sidecar.proxyUrl, { ':path': '/odd' })
  t.equal(h2.status, 502, 'an HTTP/2 client is answered 502')
  t.match(h2.body, /upstream/, 'with the proxy body of an upstream failure')
  const grpc = await h2Request(t, sidecar.proxyUrl, {
    ':method': 'POST',
    ':path': '/demo.v1.Echo/Get',
    'content-type': 'application/grpc',
  })
  t.equal(grpc.headers['grpc-status'] ?? grpc.trailers?.['grpc-status'], '14', 'a gRPC call ends UNAVAILABLE')
  const h1 = await request(`${sidecar.proxyUrl}/odd`)
  t.equal(h1.statusCode, 600, 'an HTTP/1.1 client gets the status as sent (HTTP/1.1 carries 100–999)')
  await h1.body.dump()
  const samples = await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_upstream_errors_total') >= 2,
    'the refused answers counted as upstream errors',
  )
  t.equal(metricValue(samples, 'nhi_upstream_errors_total', { reason: 'reset' }), 2, 'counted as resets')
  assertAlive(t, sidecar)
})

t.test('an h2 upstream sending hop-by-hop fields in its answer and its trailers', async (t) => {
  const up = await rawH2cUpstream(t, {
    headers: [
      [':status', '200'],
      ['content-type', 'text/plain'],
      ['http2-settings', 'AAMAAABkAAQAoAAAAAIAAAAA'],
      ['proxy-authenticate', 'Basic realm="upstream"'],
      ['x-kept', 'yes'],
    ],
    body: 'hello\n',
    trailers: [
      ['http2-settings', 'AAMAAABkAAQAoAAAAAIAAAAA'],
      ['x-trailer', 'kept'],
    ],
  })
  const sidecar = await startBin(t, { upstream: up.url })

  const h2 = await h2Request(t, sidecar.proxyUrl, { ':path': '/hop', te: 'trailers' })
  t.equal(h2.status, 200, 'an HTTP/2 client gets the answer')
  t.equal(h2.body, 'hello\n')
  t.equal(h2.headers['x-kept'], 'yes')
  t.equal(h2.headers['http2-settings'], undefined, 'without http2-settings')
  t.equal(h2.headers['proxy-authenticate'], undefined, 'without proxy-authenticate')
  t.equal(h2.trailers?.['x-trailer'], 'kept', 'the trailers arrive')
  t.equal(h2.trailers?.['http2-settings'], undefined, 'without the hop-by-hop one')

  const h1 = await request(`${sidecar.proxyUrl}/hop`, { headers: { te: 'trailers' } })
  t.equal(h1.statusCode, 200)
  t.equal(await h1.body.text(), 'hello\n')
  t.equal(h1.headers['http2-settings'], undefined, 'an HTTP/1.1 client gets no http2-settings')
  t.equal(h1.headers['proxy-authenticate'], undefined, 'nor proxy-authenticate')
  t.equal(h1.trailers['x-trailer'], 'kept')
  t.equal(h1.trailers['http2-settings'], undefined)
  t.equal(up.streams(), 2, 'both requests reached the upstream')
  assertAlive(t, sidecar)
})

t.test('a websocket upgrade towards an h2c upstream is refused, not a proxy error', async (t) => {
  const up = await rawH2cUpstream(t, { headers: [[':status', '200']], body: 'no websockets here\n' })
  const sidecar = await startBin(t, { upstream: up.url })
  const proxy = new URL(sidecar.proxyUrl)
  const socket = tcpConnect(Number(proxy.port), proxy.hostname)
  t.teardown(() => socket.destroy())
  await once(socket, 'connect')
  socket.write(
    'GET /ws HTTP/1.1\r\nHost: orders\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n' +
      'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
  )
  let answer = ''
  socket.setEncoding('utf8')
  for await (const chunk of socket) {
    answer += chunk
    if (answer.includes('\r\n\r\n') && answer.includes('}')) break
  }
  t.match(answer, /^HTTP\/1\.1 501 /, '501 Not Implemented')
  t.match(answer, /websocket upgrades need an http:\/\/ or https:\/\/ upstream/, 'saying why')
  t.equal(up.streams(), 0, 'nothing was sent to the upstream')
  const samples = await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_requests_total', { code: '501' }) >= 1,
    'the refused upgrade recorded',
  )
  t.equal(metricValue(samples, 'nhi_requests_total', { code: '501' }), 1)
  assertAlive(t, sidecar)
})

t.test('HEAD streams reset at once count against the rapid-reset budget', async (t) => {
  // node:http2 emits no 'aborted' for a reset HEAD stream: the proxy's own budget never saw them, and only
  // nghttp2's much larger one (about a thousand streams) ended such a connection
  const up = await startUpstream()
  t.teardown(() => up.close())
  const sidecar = await startBin(t, { upstream: up.url, limits: { http2MaxResetsPerSecond: 20 } })
  const session = h2connect(sidecar.proxyUrl)
  t.teardown(() => session.destroy())
  t.equal(await rapidReset(session, 'HEAD'), constants.NGHTTP2_ENHANCE_YOUR_CALM, 'GOAWAY ENHANCE_YOUR_CALM')
  const samples = await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_http2_connections_closed_total', { reason: 'rapid_reset' }) >= 1,
    'the connection counted as closed for rapid reset',
  )
  t.equal(metricValue(samples, 'nhi_http2_connections_closed_total', { reason: 'rapid_reset' }), 1)
  const served = await h2Request(t, sidecar.proxyUrl, { ':method': 'HEAD', ':path': '/echo' })
  t.equal(served.status, 200, 'a HEAD that is not reset is served, and not counted')
  assertAlive(t, sidecar)
})

t.test('streams that expect 100-continue, half of them reset at once', async (t) => {
  // node:http2 answers `expect: 100-continue` itself unless a checkContinue listener is there, and writing
  // that 100 on a stream the client had already reset threw inside node:http2, ending the process
  const up = await startUpstream()
  t.teardown(() => up.close())
  const sidecar = await startBin(t, { upstream: up.url, limits: { http2MaxResetsPerSecond: 10_000 } })
  const proxy = new URL(sidecar.proxyUrl)
  const request = (id: number): Buffer =>
    frame(
      FRAME.HEADERS,
      FLAG.END_HEADERS,
      id,
      headerBlock([
        [':method', 'POST'],
        [':scheme', 'http'],
        [':authority', 'orders'],
        [':path', '/echo'],
        ['expect', '100-continue'],
        ['content-length', '2'],
      ]),
    )

  // the reset in the same write as the request: nghttp2 closes the stream before node:http2 emits it
  const socket = tcpConnect(Number(proxy.port), proxy.hostname)
  socket.on('error', () => {})
  socket.on('data', () => {})
  t.teardown(() => socket.destroy())
  await once(socket, 'connect')
  const frames = [PREFACE, frame(FRAME.SETTINGS, 0, 0, Buffer.alloc(0))]
  for (let id = 1; id < 80; id += 2)
    frames.push(request(id), frame(FRAME.RST_STREAM, 0, id, Buffer.from([0, 0, 0, constants.NGHTTP2_CANCEL])))
  socket.write(Buffer.concat(frames))

  // node:http2's own client: every other stream cancelled as soon as it is opened, the others send their body
  // once the 100 came
  const session = h2connect(sidecar.proxyUrl)
  session.on('error', () => {})
  t.teardown(() => session.destroy())
  const kept: Promise<H2Result>[] = []
  for (let i = 0; i < 40; i++) {
    const stream = session.request({ ':method': 'POST', ':path': `/echo?n=${i}`, expect: '100-continue' })
    stream.on('error', () => {})
    if (i % 2 === 0) {
      stream.close(constants.NGHTTP2_CANCEL)
      continue
    }
    stream.once('continue', () => stream.end('hi'))
    const result: H2Result = { status: 0, headers: {}, trailers: undefined, body: '' }
    stream.on('response', (h) => {
      result.status = Number(h[':status'])
    })
    stream.setEncoding('utf8')
    stream.on('data', (c: string) => {
      result.body += c
    })
    // settled by 'close' whatever happened: a proxy that went away shows as a stream without an answer
    kept.push(new Promise((resolve) => stream.once('close', () => resolve(result))))
  }
  const answers = await Promise.all(kept)
  t.same(
    answers.map((a) => a.status),
    answers.map(() => 200),
    'every stream not reset got its answer',
  )
  t.ok(
    answers.every((a) => a.status === 200 && (JSON.parse(a.body) as { bodyBytes: number }).bodyBytes === 2),
    'each sent its body after the 100',
  )
  session.close()
  assertAlive(t, sidecar)
  t.notOk(
    sidecar.logs().some((l) => l['event'] === 'internal_error'),
    'no internal error logged',
  )
  const after = await h2Request(t, sidecar.proxyUrl, { ':method': 'GET', ':path': '/echo' })
  t.equal(after.status, 200, 'a request after them is served')
  assertAlive(t, sidecar)
})
