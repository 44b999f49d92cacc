// Streams an HTTP/2 upstream refuses without processing them (RFC 9113 §8.7), end to end through the built
// sidecar: a GOAWAY whose last stream id is below streams the proxy had opened, and the first streams of a new
// session past the upstream's SETTINGS_MAX_CONCURRENT_STREAMS (opened before its SETTINGS arrived, reset with
// REFUSED_STREAM). Both happen on every rolling restart of an upstream app; such a stream is sent once more,
// its body with it, and the client gets the answer. A stream reset after its response head is not sent again.
import { once } from 'node:events'
import {
  constants,
  createServer,
  type Http2Server,
  type IncomingHttpHeaders,
  type ServerHttp2Session,
  type ServerHttp2Stream,
  type Settings,
} from 'node:http2'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import * as grpc from '@grpc/grpc-js'
import * as protoLoader from '@grpc/proto-loader'
import t, { type Test } from 'tap'
import { startBin } from '../helpers/bin.ts'
import { metricValue, scrapeUntil } from '../helpers/metrics.ts'
import { ROOT } from '../helpers/sidecar.ts'

t.setTimeout(120_000)

interface Call {
  session: ServerHttp2Session
  stream: ServerHttp2Stream
  headers: IncomingHttpHeaders
  body: Buffer
}

/**
 * An h2c upstream that hands every stream to `onCall` once its request body has ended. `sessions` lists the
 * sessions in the order they were opened; `streams` counts the streams the upstream saw (a stream nghttp2
 * refuses itself, over the concurrency limit, is not one of them).
 */
async function h2cUpstream(t: Test, onCall: (call: Call) => void, settings?: Settings) {
  const sessions: ServerHttp2Session[] = []
  const server: Http2Server = createServer(settings ? { settings } : {})
  let streams = 0
  server.on('session', (session) => sessions.push(session))
  server.on('stream', (stream, headers) => {
    streams++
    stream.on('error', () => {})
    const chunks: Buffer[] = []
    stream.on('data', (c: Buffer) => chunks.push(c))
    stream.on('end', () =>
      onCall({ session: stream.session as ServerHttp2Session, stream, headers, body: Buffer.concat(chunks) }),
    )
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => {
    for (const s of sessions) s.destroy()
    server.close()
  })
  return {
    url: `h2c://127.0.0.1:${(server.address() as AddressInfo).port}`,
    sessions,
    streams: () => streams,
  }
}

/** answers with the request's method and body */
function echo(call: Call): void {
  if (call.stream.destroyed) return
  call.stream.respond({ ':status': 200 })
  call.stream.end(`${call.headers[':method']} ${call.body.toString()}`)
}

/**
 * The first session's streams are held until `n` have arrived; then the upstream sends GOAWAY naming the
 * lowest of them as the last it takes (the others are refused) and answers that one. Every later session
 * answers at once: the replacement instance of a rolling restart.
 */
function goawayAfter(n: number) {
  const held: Call[] = []
  let first: ServerHttp2Session | undefined
  return (call: Call) => {
    first ??= call.session
    if (call.session !== first) {
      echo(call)
      return
    }
    held.push(call)
    if (held.length < n) return
    const lowest = held.reduce((a, b) => (a.stream.id! < b.stream.id! ? a : b))
    call.session.goaway(constants.NGHTTP2_NO_ERROR, lowest.stream.id!)
    echo(lowest)
  }
}

t.test('streams above the last stream id of a GOAWAY are sent again on a new session', async (t) => {
  const up = await h2cUpstream(t, goawayAfter(3))
  const sidecar = await startBin(t, { upstream: up.url })
  // a GET, and two non-idempotent requests with a body: none was processed, so each may go again
  const sent = [
    fetch(`${sidecar.proxyUrl}/a`),
    fetch(`${sidecar.proxyUrl}/b`, { method: 'POST', body: 'one' }),
    fetch(`${sidecar.proxyUrl}/c`, { method: 'POST', body: 'two' }),
  ]
  const answers = await Promise.all(
    sent.map(async (r) => ({ status: (await r).status, body: await (await r).text() })),
  )
  t.same(
    answers,
    [
      { status: 200, body: 'GET ' },
      { status: 200, body: 'POST one' },
      { status: 200, body: 'POST two' },
    ],
    'every request answered by the upstream, with its body, none 502',
  )
  t.equal(up.sessions.length, 2, 'the refused streams went to a new session')
  const samples = await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_requests_total') >= 3,
    'the three requests recorded',
  )
  t.equal(metricValue(samples, 'nhi_requests_total'), 3, 'each request recorded once')
  t.equal(metricValue(samples, 'nhi_requests_total', { code: '200' }), 3, 'with its final status')
  t.equal(metricValue(samples, 'nhi_upstream_errors_total'), 0, 'no upstream error recorded')
})

t.test('a burst past SETTINGS_MAX_CONCURRENT_STREAMS on a new session is all answered', async (t) => {
  const up = await h2cUpstream(
    t,
    // answered a little later, so the streams of the burst overlap at the upstream
    (call) => setTimeout(() => echo(call), 10),
    { maxConcurrentStreams: 1 },
  )
  const sidecar = await startBin(t, { upstream: up.url })
  const burst = Array.from({ length: 8 }, (_, i) =>
    fetch(`${sidecar.proxyUrl}/${i}`, i % 2 === 0 ? {} : { method: 'POST', body: `body ${i}` }),
  )
  const answers = await Promise.all(
    burst.map(async (r) => ({ status: (await r).status, body: await (await r).text() })),
  )
  t.same(
    answers,
    Array.from({ length: 8 }, (_, i) => ({ status: 200, body: i % 2 === 0 ? 'GET ' : `POST body ${i}` })),
    'all 200, each with its own body',
  )
  t.equal(up.streams(), 8, 'each request processed once by the upstream')
  t.equal(up.sessions.length, 1, 'on the one session (the upstream did not go away)')
})

t.test('a stream refused after its response head is not sent again', async (t) => {
  const up = await h2cUpstream(t, (call) => {
    // the head and a first byte, then RST_STREAM REFUSED_STREAM: the stream was processed after all
    call.stream.respond({ ':status': 200 }, { waitForTrailers: true })
    call.stream.write('x')
    setTimeout(() => call.stream.close(constants.NGHTTP2_REFUSED_STREAM), 20)
  })
  const sidecar = await startBin(t, { upstream: up.url })
  const res = await fetch(`${sidecar.proxyUrl}/once`)
  t.equal(res.status, 200, 'the head was passed on')
  await t.rejects(res.text(), 'the response is cut, not completed by a second stream')
  t.equal(up.streams(), 1, 'the upstream saw the request once')
  const samples = await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_upstream_errors_total') >= 1,
    'the reset recorded',
  )
  t.equal(metricValue(samples, 'nhi_upstream_errors_total', { reason: 'reset' }), 1, 'recorded as a reset')
})

/**
 * On the first session, a request with a body is not taken: GOAWAY names the stream before it as the last
 * processed once its body has arrived. Everything else, and every later session, is answered.
 */
function refusePostOnce() {
  let first: ServerHttp2Session | undefined
  return (call: Call) => {
    first ??= call.session
    if (call.session === first && call.headers[':method'] === 'POST')
      call.session.goaway(constants.NGHTTP2_NO_ERROR, call.stream.id! - 2)
    else echo(call)
  }
}

t.test('a refused stream whose body outgrew what is kept (64 KiB) is not sent again', async (t) => {
  for (const [size, status, streams] of [
    [64 * 1024, 200, 3],
    [100 * 1024, 502, 2],
  ] as const) {
    const up = await h2cUpstream(t, refusePostOnce())
    const sidecar = await startBin(t, { upstream: up.url })
    t.equal((await fetch(`${sidecar.proxyUrl}/warm`)).status, 200, 'the session is open')
    const body = 'x'.repeat(size)
    const res = await fetch(`${sidecar.proxyUrl}/post`, { method: 'POST', body })
    const text = await res.text()
    t.equal(res.status, status, `a body of ${size} bytes: ${status}`)
    if (status === 200) t.equal(text, `POST ${body}`, 'the whole body was sent again')
    t.equal(up.streams(), streams, `the upstream saw ${streams} streams`)
  }
})

const definition = protoLoader.loadSync(join(ROOT, 'test/fixtures/echo.proto'), { keepCase: true })
const proto = grpc.loadPackageDefinition(definition) as unknown as {
  demo: { v1: { Echo: grpc.ServiceClientConstructor } }
}

t.test('a gRPC unary call refused by a GOAWAY is sent again and succeeds', async (t) => {
  // the upstream speaks gRPC's framing: the reply is the request message, with grpc-status 0 in trailers
  const held: Call[] = []
  let first: ServerHttp2Session | undefined
  const answer = (call: Call) => {
    if (call.stream.destroyed) return
    call.stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true })
    call.stream.once('wantTrailers', () => call.stream.sendTrailers({ 'grpc-status': '0' }))
    call.stream.end(call.body)
  }
  const up = await h2cUpstream(t, (call) => {
    first ??= call.session
    if (call.session !== first) {
      answer(call)
      return
    }
    held.push(call)
    if (held.length < 2) return
    const lowest = held.reduce((a, b) => (a.stream.id! < b.stream.id! ? a : b))
    call.session.goaway(constants.NGHTTP2_NO_ERROR, lowest.stream.id!)
    answer(lowest)
  })
  const sidecar = await startBin(t, { upstream: up.url })
  const client = new proto.demo.v1.Echo(
    sidecar.proxyUrl.replace(/^http:\/\//, ''),
    grpc.credentials.createInsecure(),
  )
  t.teardown(() => client.close())
  const unary = (text: string) =>
    new Promise<{ text: string }>((resolve, reject) =>
      client['Unary']!({ text }, (err: grpc.ServiceError | null, reply: { text: string }) =>
        err ? reject(err) : resolve(reply),
      ),
    )
  const replies = await Promise.all([unary('first'), unary('second')])
  t.same(
    replies.map((r) => r.text),
    ['first', 'second'],
    'both calls OK with their own message',
  )
  t.equal(up.sessions.length, 2, 'the refused call went to a new session')
  const samples = await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_grpc_requests_total') >= 2,
    'both calls recorded',
  )
  t.equal(metricValue(samples, 'nhi_grpc_requests_total', { grpc_status: '0' }), 2, 'each once, OK')
})
