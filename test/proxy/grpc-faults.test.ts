// gRPC calls at the edges, end to end through the built sidecar with node:http2 on both sides (an upstream that
// misbehaves on purpose, a client that sends exactly the frames it is told): deadlines and upstream faults.
import { once } from 'node:events'
import {
  type ClientHttp2Stream,
  createServer,
  connect as h2connect,
  type IncomingHttpHeaders,
  type ServerHttp2Stream,
} from 'node:http2'
import type { AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import { startBin } from '../helpers/bin.ts'
import { metricValue, type Sample, scrapeUntil } from '../helpers/metrics.ts'

t.setTimeout(120_000)

/** one empty gRPC message (uncompressed, length 0) */
const EMPTY_MESSAGE = Buffer.alloc(5)

/** an h2c upstream that hands every stream to `onCall` once its request has ended */
async function h2cUpstream(
  t: Test,
  onCall: (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => void,
) {
  const seen: IncomingHttpHeaders[] = []
  const server = createServer()
  server.on('stream', (stream, headers) => {
    seen.push(headers)
    stream.on('error', () => {})
    stream.resume()
    stream.on('end', () => onCall(stream, headers))
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => server.close())
  return { url: `h2c://127.0.0.1:${(server.address() as AddressInfo).port}`, seen }
}

interface CallResult {
  headers: IncomingHttpHeaders
  trailers: IncomingHttpHeaders | undefined
  body: Buffer
}

/** a unary gRPC call as node:http2 sends it; resolves when the stream closes */
async function grpcCall(t: Test, proxyUrl: string, path: string, extra: Record<string, string> = {}) {
  const session = h2connect(proxyUrl)
  session.on('error', () => {})
  t.teardown(() => session.destroy())
  const stream: ClientHttp2Stream = session.request({
    ':method': 'POST',
    ':path': path,
    'content-type': 'application/grpc',
    te: 'trailers',
    ...extra,
  })
  stream.on('error', () => {})
  stream.end(EMPTY_MESSAGE)
  const result: CallResult = { headers: {}, trailers: undefined, body: Buffer.alloc(0) }
  stream.on('response', (h) => {
    result.headers = h
  })
  stream.on('trailers', (h) => {
    result.trailers = h
  })
  stream.on('data', (c: Buffer) => {
    result.body = Buffer.concat([result.body, c])
  })
  await once(stream, 'close')
  return result
}

const grpcStatus = (r: CallResult) => r.trailers?.['grpc-status'] ?? r.headers['grpc-status']

t.test('a call whose deadline is weeks away is served, not cut at once', async (t) => {
  const up = await h2cUpstream(t, (stream) => {
    // answered a little later, so a deadline the proxy got wrong has time to fire
    setTimeout(() => {
      if (stream.destroyed) return
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true })
      stream.once('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }))
      stream.end(EMPTY_MESSAGE)
    }, 100)
  })
  const sidecar = await startBin(t, { upstream: up.url })
  // what gRPC clients send for a 30-day deadline, and the longest grpc-timeout there is: both are more
  // milliseconds than a Node timer holds (about 24.8 days)
  for (const timeout of ['2592000S', '99999999H']) {
    const r = await grpcCall(t, sidecar.proxyUrl, '/demo.v1.Echo/Unary', { 'grpc-timeout': timeout })
    t.equal(grpcStatus(r), '0', `grpc-timeout ${timeout}: the upstream's OK, not DEADLINE_EXCEEDED`)
    // what is left of it by the forward, rounded down in the same unit: the count fits no finer one
    t.equal(
      up.seen.at(-1)?.['grpc-timeout'],
      timeout === '2592000S' ? '2591999S' : '99999998H',
      'the call reached the upstream with what is left of its deadline',
    )
  }
  const ok = (s: Sample[]) => metricValue(s, 'nhi_grpc_requests_total', { grpc_status: '0' })
  const samples = await scrapeUntil(sidecar.adminUrl, (s) => ok(s) >= 2, 'both calls counted')
  t.equal(ok(samples), 2, 'both calls counted OK')
  t.equal(
    metricValue(samples, 'nhi_grpc_requests_total', { grpc_status: '4' }),
    0,
    'none as DEADLINE_EXCEEDED',
  )
})

t.test('the proxy ends a call at its grpc-timeout when the upstream does not', async (t) => {
  // an upstream that ignores grpc-timeout and never answers: only the proxy's own timer can end the call
  let upstreamClosed = 0
  const up = await h2cUpstream(t, (stream) => {
    stream.on('close', () => upstreamClosed++)
  })
  const sidecar = await startBin(t, { upstream: up.url })
  const started = performance.now()
  const r = await grpcCall(t, sidecar.proxyUrl, '/demo.v1.Echo/Unary', { 'grpc-timeout': '300m' })
  const elapsed = performance.now() - started
  t.equal(grpcStatus(r), '4', 'DEADLINE_EXCEEDED from the proxy')
  t.ok(elapsed >= 250, `not before the deadline (${Math.round(elapsed)} ms)`)
  t.ok(
    elapsed < 5000,
    `at the deadline, not at timeouts.upstream (30 s by default): ${Math.round(elapsed)} ms`,
  )
  const forwarded = up.seen.at(-1)?.['grpc-timeout']
  const m = /^(\d{1,8})([nu])$/.exec(String(forwarded))
  const left = m ? Number(m[1]) / (m[2] === 'n' ? 1e6 : 1e3) : Number.NaN
  t.ok(left > 0 && left < 300, `the upstream was told the deadline too, what is left of it (${forwarded})`)
  const samples = await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_grpc_requests_total', { grpc_status: '4' }) >= 1,
    'the call counted',
  )
  t.equal(
    metricValue(samples, 'nhi_grpc_requests_total', { grpc_status: '4' }),
    1,
    'counted DEADLINE_EXCEEDED',
  )
  t.equal(upstreamClosed, 1, 'the upstream stream was closed at the deadline')
})

t.test('an upstream connection lost mid-call ends the call UNAVAILABLE and counts as a reset', async (t) => {
  const up = await h2cUpstream(t, (stream) => {
    stream.respond({ ':status': 200, 'content-type': 'application/grpc' })
    stream.write(EMPTY_MESSAGE)
    // the upstream process goes away with the call half answered
    setTimeout(() => stream.session?.destroy(), 50)
  })
  const sidecar = await startBin(t, { upstream: up.url })
  const r = await grpcCall(t, sidecar.proxyUrl, '/demo.v1.Echo/Stream')
  t.equal(r.headers[':status'], 200)
  t.equal(grpcStatus(r), '14', 'UNAVAILABLE, not a call ended without a status')

  // a plain HTTP/2 request cut the same way is not passed on as complete either
  const session = h2connect(sidecar.proxyUrl)
  session.on('error', () => {})
  t.teardown(() => session.destroy())
  const plain = session.request({ ':path': '/download' })
  plain.on('error', () => {})
  plain.resume()
  await new Promise((resolve) => plain.once('close', resolve))
  t.not(plain.rstCode, 0, 'the plain stream is reset with an error code')

  const samples = await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_upstream_errors_total', { reason: 'reset' }) >= 2,
    'both resets counted',
  )
  t.equal(metricValue(samples, 'nhi_upstream_errors_total', { reason: 'reset' }), 2)
  t.equal(metricValue(samples, 'nhi_grpc_requests_total', { grpc_status: '14' }), 1, 'recorded UNAVAILABLE')
})

t.test(
  'a call the upstream answers without a gRPC status is recorded with the status its client reads',
  async (t) => {
    const up = await h2cUpstream(t, (stream, headers) => {
      const path = String(headers[':path'])
      // a server that is not gRPC, a load balancer with no backend, a gRPC server that never sent its trailers
      if (path.endsWith('/NotGrpc')) stream.respond({ ':status': 404, 'content-type': 'text/plain' })
      else if (path.endsWith('/NoBackend')) stream.respond({ ':status': 503 })
      else stream.respond({ ':status': 200, 'content-type': 'application/grpc' })
      stream.end(path.endsWith('/NoTrailers') ? EMPTY_MESSAGE : undefined)
    })
    const sidecar = await startBin(t, {
      upstream: up.url,
      metrics: { routes: ['/demo.v1.Echo/NotGrpc', '/demo.v1.Echo/NoBackend', '/demo.v1.Echo/NoTrailers'] },
    })
    for (const method of ['NotGrpc', 'NoBackend', 'NoTrailers']) {
      const r = await grpcCall(t, sidecar.proxyUrl, `/demo.v1.Echo/${method}`)
      t.equal(grpcStatus(r), undefined, `${method}: the client got no grpc-status from the upstream`)
    }
    // gRPC's HTTP-to-status mapping, which clients apply: 404 → UNIMPLEMENTED, 503 → UNAVAILABLE; a 200 that
    // ends without a status → INTERNAL
    const expected: Record<string, string> = { NotGrpc: '12', NoBackend: '14', NoTrailers: '13' }
    const counted = (samples: Sample[], method: string) =>
      metricValue(samples, 'nhi_grpc_requests_total', {
        route: `/demo.v1.Echo/${method}`,
        grpc_status: expected[method]!,
      })
    const samples = await scrapeUntil(
      sidecar.adminUrl,
      (all) => Object.keys(expected).every((m) => counted(all, m) >= 1),
      'each call counted with its status',
    )
    for (const method of Object.keys(expected)) {
      t.equal(counted(samples, method), 1, `${method}: counted as grpc_status ${expected[method]}`)
    }
  },
)

t.test(
  'metadata sent in several lines reaches the client in those lines, an empty last one included',
  async (t) => {
    // gRPC metadata with a repeated key is one field line per value. node:http2 reads the lines as one value
    // joined with ", ": passed on so, an empty last value left `b, ` (and `AQ==, `), whose trailing space makes
    // the field malformed (RFC 9113 §8.2.1), and the client's HTTP/2 layer dropped the whole key
    const up = await h2cUpstream(t, (stream) => {
      stream.respond(
        { ':status': 200, 'content-type': 'application/grpc', 'x-reply': ['', 'b', ''] },
        { waitForTrailers: true },
      )
      stream.once('wantTrailers', () =>
        stream.sendTrailers({ 'grpc-status': '0', 'x-trace-bin': ['AQ==', ''], 'x-tag': ['one', 'two'] }),
      )
      stream.end(EMPTY_MESSAGE)
    })
    const sidecar = await startBin(t, { upstream: up.url })
    const r = await grpcCall(t, sidecar.proxyUrl, '/demo.v1.Echo/Unary')
    t.equal(grpcStatus(r), '0')
    t.equal(r.headers['x-reply'], ', b, ', 'the response metadata, its three lines as the client joins them')
    t.equal(r.trailers?.['x-trace-bin'], 'AQ==, ', 'the trailing metadata with its empty last value')
    t.equal(r.trailers?.['x-tag'], 'one, two', 'and without one')
  },
)
