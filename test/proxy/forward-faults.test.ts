// Upstream answers and client requests that are valid HTTP and must be forwarded faithfully, end to end through
// the built sidecar with real sockets: a 304 with its Content-Length, an early answer to an upload (HTTP/1.1
// and HTTP/2), a repeated single-value header to an HTTP/2 client, a body the listener cuts as too slow (408),
// a body its client ends short (no answer, 499) or the parser refuses (400), each recorded as its client was
// answered, and a transfer coding other than chunked (501).
import { once } from 'node:events'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import {
  type ClientHttp2Stream,
  constants,
  createServer as createH2cServer,
  connect as h2connect,
  type ServerHttp2Stream,
} from 'node:http2'
import type { AddressInfo } from 'node:net'
import { setTimeout as delay } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { startBin } from '../helpers/bin.ts'
import { eventually } from '../helpers/eventually.ts'
import { metricValue, scrape, scrapeUntil } from '../helpers/metrics.ts'
import { listenUntilTeardown, rawClient, scriptedUpstream } from '../helpers/net.ts'

t.setTimeout(120_000)

async function httpUpstream(t: Test, handler: (req: IncomingMessage, res: ServerResponse) => void) {
  const server = createServer(handler)
  return `http://127.0.0.1:${await listenUntilTeardown(t, server)}`
}

const count = (text: string, what: RegExp) => (text.match(what) ?? []).length

/** the response to an HTTP/2 client stream as it arrives: its status, and its body so far (latin1) */
function readResponse(stream: ClientHttp2Stream): { status: number; body: string } {
  const response = { status: 0, body: '' }
  stream.on('error', () => {})
  stream.on('response', (h) => {
    response.status = Number(h[':status'])
  })
  stream.setEncoding('latin1')
  stream.on('data', (d: string) => {
    response.body += d
  })
  return response
}

/** an HTTP/2 upload that never ends on its own: `chunk` again and again until the stream is gone */
function uploadForever(stream: ClientHttp2Stream, chunk: Buffer): void {
  const pump = () => {
    while (!stream.destroyed && stream.write(chunk)) {}
    if (!stream.destroyed) stream.once('drain', pump)
  }
  pump()
}

/** an h2c upstream answering each stream with `onStream`, the sidecar in front of it, and an HTTP/2 client session to the sidecar */
async function behindH2cUpstream(t: Test, service: string, onStream: (stream: ServerHttp2Stream) => void) {
  const server = createH2cServer()
  server.on('stream', onStream)
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => server.close())
  const sidecar = await startBin(t, {
    service,
    upstream: `h2c://127.0.0.1:${(server.address() as AddressInfo).port}`,
  })
  const session = h2connect(sidecar.proxyUrl)
  session.on('error', () => {})
  t.teardown(() => session.destroy())
  return { sidecar, session }
}

t.test(
  'a 304 that carries the representation Content-Length (RFC 9110 §8.6) reaches the client',
  async (t) => {
    const up = await scriptedUpstream(
      t,
      () =>
        'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 1234\r\nCache-Control: max-age=60\r\n\r\n',
    )
    const sidecar = await startBin(t, { service: 'cache', upstream: up.url })
    const port = Number(new URL(sidecar.proxyUrl).port)
    const client = await rawClient(port)
    client.socket.write('GET /asset.js HTTP/1.1\r\nHost: app\r\nIf-None-Match: "v1"\r\n\r\n')
    // a revalidating browser gets its 304 (and keeps the connection); it got nothing and a closed connection
    await eventually(() => /^HTTP\/1\.1 304 /.test(client.text()) || client.closed(), {
      timeoutMs: 5000,
      what: 'an answer',
    })
    t.match(client.text(), /^HTTP\/1\.1 304 Not Modified\r\n/, 'the 304 reached the client')
    t.match(client.text(), /ETag: "v1"/i)
    client.socket.write('GET /asset.js HTTP/1.1\r\nHost: app\r\nIf-None-Match: "v1"\r\n\r\n')
    await eventually(() => count(client.text(), /HTTP\/1\.1 304 /g) === 2 || client.closed(), {
      timeoutMs: 5000,
      what: 'the second answer',
    })
    t.equal(count(client.text(), /HTTP\/1\.1 304 /g), 2, 'the keep-alive connection serves the next request')
    client.socket.destroy()
    const samples = await scrapeUntil(
      sidecar.adminUrl,
      (s) => metricValue(s, 'nhi_requests_total', { code: '304' }) >= 2,
      'both 304s to be recorded',
    )
    t.equal(metricValue(samples, 'nhi_upstream_errors_total'), 0, 'no upstream error counted')
    t.equal(metricValue(samples, 'nhi_requests_total', { code: '304' }), 2)
  },
)

t.test('an upload the upstream answers before reading it does not stall the client connection', async (t) => {
  // what Node (and nginx) do when an app refuses an upload early: the answer, the rest of the body discarded
  const url = await httpUpstream(t, (req, res) => {
    if (req.url === '/upload') {
      res.writeHead(413, { 'content-type': 'text/plain', 'content-length': '9' })
      res.end('too large')
      return
    }
    req.resume()
    req.on('end', () => res.end(`next ${req.url}`))
  })
  const sidecar = await startBin(t, { service: 'uploads', upstream: url })
  const port = Number(new URL(sidecar.proxyUrl).port)

  // HTTP/1.1: a client that writes its whole body, then its next request on the same connection
  const client = await rawClient(port)
  const total = 32 * 1024 * 1024
  client.socket.write(`PUT /upload HTTP/1.1\r\nHost: app\r\nContent-Length: ${total}\r\n\r\n`)
  const chunk = Buffer.alloc(1024 * 1024, 0x61)
  let written = 0
  const pump = () => {
    while (written < total && !client.closed()) {
      written += chunk.length
      if (!client.socket.write(chunk)) {
        client.socket.once('drain', pump)
        return
      }
    }
    if (!client.closed()) client.socket.write('GET /next HTTP/1.1\r\nHost: app\r\n\r\n')
  }
  pump()
  await eventually(() => /next \/next$/.test(client.text()) || client.closed(), {
    timeoutMs: 8000,
    what: `the upload to be taken and the next request answered (${written >> 20} MiB written)`,
  }).catch((err: Error) => t.fail(err.message))
  t.match(client.text(), /^HTTP\/1\.1 413 /, 'the early answer reached the client')
  t.equal(written, total, 'the whole body was taken off the connection')
  t.match(client.text(), /next \/next$/, 'the next request on the connection was answered')
  client.socket.destroy()

  // HTTP/2: the stream must end (RFC 9113 §8.1: the server may reset the unread request with NO_ERROR)
  const session = h2connect(sidecar.proxyUrl)
  session.on('error', () => {})
  t.teardown(() => session.destroy())
  const stream = session.request({ ':method': 'PUT', ':path': '/upload' })
  const response = readResponse(stream)
  uploadForever(stream, chunk)
  await eventually(() => stream.closed, { timeoutMs: 5000, what: 'the HTTP/2 stream to close' }).catch(
    (err: Error) => t.fail(err.message),
  )
  t.equal(response.status, 413)
  t.equal(response.body, 'too large')
  await eventually(
    async () =>
      metricValue(await scrape(sidecar.adminUrl), 'nhi_requests_total', {
        service: 'uploads',
        code: '413',
      }) === 2,
    { timeoutMs: 5000, what: 'both early answers to be recorded' },
  ).catch((err: Error) => t.fail(err.message))
})

t.test('an HTTP/2 client gets a response whose single-value header the upstream repeated', async (t) => {
  // repeated by an app and its middleware alike (nosniff, CORS, Content-Type): HTTP/1.1 clients get it as sent
  const up = await scriptedUpstream(
    t,
    () =>
      'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Content-Type-Options: nosniff\r\nX-Content-Type-Options: nosniff\r\nContent-Length: 2\r\n\r\nok',
  )
  const sidecar = await startBin(t, { service: 'h2', upstream: up.url })

  const h1 = await rawClient(Number(new URL(sidecar.proxyUrl).port))
  h1.socket.write('GET /h1 HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n')
  await eventually(() => h1.closed(), { timeoutMs: 5000, what: 'the HTTP/1.1 answer' })
  t.match(h1.text(), /^HTTP\/1\.1 200 [\s\S]*\r\n\r\nok$/, 'HTTP/1.1 client: 200 ok')

  const session = h2connect(sidecar.proxyUrl)
  session.on('error', () => {})
  t.teardown(() => session.destroy())
  const stream = session.request({ ':path': '/h2' })
  stream.end()
  const response = readResponse(stream)
  // the stream stayed open forever: never answered, never recorded, in flight until shutdown
  await eventually(() => stream.closed, { timeoutMs: 5000, what: 'the HTTP/2 stream to end' }).catch(
    (err: Error) => t.fail(err.message),
  )
  t.equal(response.status, 200)
  t.equal(response.body, 'ok')
  await eventually(
    async () => metricValue(await scrape(sidecar.adminUrl), 'nhi_requests_total', { service: 'h2' }) === 2,
    { timeoutMs: 5000, what: 'both exchanges to be recorded' },
  ).catch((err: Error) => t.fail(err.message))
})

t.test('an HTTP/2 upload an h2c upstream answers early ends, and is recorded', async (t) => {
  const { sidecar, session } = await behindH2cUpstream(t, 'h2c', (upstream) => {
    upstream.on('error', () => {})
    upstream.respond({ ':status': 413, 'content-type': 'text/plain', 'content-length': '9' })
    upstream.end('too large')
  })
  const stream = session.request({ ':method': 'PUT', ':path': '/upload' })
  const response = readResponse(stream)
  uploadForever(stream, Buffer.alloc(1024 * 1024, 0x61))
  await eventually(() => stream.closed, { timeoutMs: 5000, what: 'the HTTP/2 stream to close' }).catch(
    (err: Error) => t.fail(err.message),
  )
  t.equal(response.body, 'too large')
  await eventually(
    async () =>
      metricValue(await scrape(sidecar.adminUrl), 'nhi_requests_total', { service: 'h2c', code: '413' }) ===
      1,
    { timeoutMs: 5000, what: 'the early answer to be recorded' },
  ).catch((err: Error) => t.fail(err.message))
})

t.test('a client that pauses its upload longer than timeouts.upstream is not answered 504', async (t) => {
  // the upstream cannot answer before the body it waits for: the pause is the client's, which
  // timeouts.request bounds, not the upstream's response deadline
  let received = 0
  const url = await httpUpstream(t, (req, res) => {
    req.on('data', (c: Buffer) => {
      received += c.length
    })
    req.on('end', () => res.end(`got ${received}`))
  })
  const sidecar = await startBin(t, {
    service: 'paused-upload',
    upstream: url,
    timeouts: { upstream: '500ms', request: '20s' },
  })
  const client = await rawClient(Number(new URL(sidecar.proxyUrl).port))
  client.socket.write('POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 20\r\n\r\n0123456789')
  await eventually(() => received === 10, { timeoutMs: 5000, what: 'the first half to reach the upstream' })
  // the pause itself: three response deadlines long
  await delay(1500)
  t.equal(client.text(), '', 'nothing answered while the client was still sending')
  client.socket.write('abcdefghij')
  await eventually(() => /\r\n\r\ngot 20$/.test(client.text()), { timeoutMs: 5000, what: 'the answer' })
  t.match(client.text(), /^HTTP\/1\.1 200 /, "the upstream's answer, once it had the whole body")
  const samples = await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_requests_total', { service: 'paused-upload' }) === 1,
    'the exchange to be recorded',
  )
  t.equal(
    metricValue(samples, 'nhi_requests_total', { service: 'paused-upload', code: '200' }),
    1,
    'recorded as 200',
  )
  t.equal(
    metricValue(samples, 'nhi_upstream_errors_total', { service: 'paused-upload' }),
    0,
    'no upstream error',
  )
})

t.test('a request body the listener refuses as too slow is recorded as the 408 the client got', async (t) => {
  const url = await httpUpstream(t, (req, res) => {
    req.resume()
    req.on('end', () => res.end('ok'))
  })
  const sidecar = await startBin(t, {
    service: 'slow',
    upstream: url,
    timeouts: { request: '1s', headers: '1s' },
  })
  const client = await rawClient(Number(new URL(sidecar.proxyUrl).port))
  client.socket.write('POST /slow HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\n')
  const trickle = setInterval(() => client.socket.write('a'), 100)
  t.teardown(() => clearInterval(trickle))
  await eventually(() => client.closed(), { timeoutMs: 8000, what: 'the listener to cut the request' })
  clearInterval(trickle)
  t.match(client.text(), /^HTTP\/1\.1 408 /, 'the client was answered 408')
  const samples = await eventually(
    async () => {
      const s = await scrape(sidecar.adminUrl)
      return metricValue(s, 'nhi_requests_total', { service: 'slow' }) === 1 && s
    },
    { timeoutMs: 5000, what: 'the exchange to be recorded' },
  )
  t.equal(metricValue(samples, 'nhi_requests_total', { service: 'slow', code: '408' }), 1, 'recorded as 408')
  t.equal(metricValue(samples, 'nhi_requests_total', { service: 'slow', code: '499' }), 0, 'not as 499')
})

t.test(
  'a client that ends its side short of its request body is answered nothing and recorded 499',
  async (t) => {
    let received = 0
    const url = await httpUpstream(t, (req, res) => {
      req.on('data', (c: Buffer) => {
        received += c.length
      })
      req.on('end', () => res.end('ok'))
    })
    const sidecar = await startBin(t, { service: 'short', upstream: url })
    const client = await rawClient(Number(new URL(sidecar.proxyUrl).port))
    client.socket.write('POST /short HTTP/1.1\r\nHost: app\r\nContent-Length: 20\r\n\r\n0123456789')
    await eventually(() => received === 10, { what: 'the first half to reach the upstream' })
    // the client's side ends (FIN) ten bytes short of its Content-Length: it cancelled the request; it still reads
    client.socket.end()
    await eventually(() => client.closed(), { what: 'the proxy to close the connection' })
    t.equal(client.text(), '', 'no answer, as to a client that resets the connection')
    const samples = await scrapeUntil(
      sidecar.adminUrl,
      (s) => metricValue(s, 'nhi_requests_total', { service: 'short' }) === 1,
      'the exchange to be recorded',
    )
    t.equal(
      metricValue(samples, 'nhi_requests_total', { service: 'short', code: '499' }),
      1,
      'recorded as 499',
    )
  },
)

t.test(
  "a client that ends its side short of a pipelined request's body gets the answers ahead of it, then the close",
  async (t) => {
    let ahead: ServerResponse | undefined
    let received = 0
    const url = await httpUpstream(t, (req, res) => {
      if (req.url === '/ahead') {
        ahead = res
        return
      }
      req.on('data', (c: Buffer) => {
        received += c.length
      })
      req.on('end', () => res.end('ok'))
    })
    const sidecar = await startBin(t, { service: 'short-behind', upstream: url })
    const client = await rawClient(Number(new URL(sidecar.proxyUrl).port))
    client.socket.write(
      'GET /ahead HTTP/1.1\r\nHost: app\r\n\r\n' +
        'POST /short HTTP/1.1\r\nHost: app\r\nContent-Length: 20\r\n\r\n0123456789',
    )
    await eventually(() => ahead !== undefined && received === 10, {
      what: 'the first request and half the second body to reach the upstream',
    })
    client.socket.end()
    ahead!.end('ahead')
    await eventually(() => client.closed(), { what: 'the proxy to close the connection' })
    t.match(
      client.text(),
      /^HTTP\/1\.1 200 OK\r\n[\s\S]*\r\n\r\nahead$/,
      'the answer ahead of it, whole, and no other',
    )
    const samples = await scrapeUntil(
      sidecar.adminUrl,
      (s) => metricValue(s, 'nhi_requests_total', { service: 'short-behind' }) === 2,
      'both exchanges to be recorded',
    )
    t.equal(
      metricValue(samples, 'nhi_requests_total', { code: '200' }),
      1,
      'the one ahead recorded as answered',
    )
    t.equal(metricValue(samples, 'nhi_requests_total', { code: '499' }), 1, 'the one cut short as 499')
  },
)

t.test('a request whose body the parser refuses is recorded with the 400 its client reads', async (t) => {
  let received = 0
  // reads the body as it comes and never answers: the listener's answer is the only one
  const url = await httpUpstream(t, (req) => {
    req.on('data', (c: Buffer) => {
      received += c.length
    })
  })
  const sidecar = await startBin(t, { service: 'garbled', upstream: url })
  const client = await rawClient(Number(new URL(sidecar.proxyUrl).port))
  client.socket.write(
    'POST /garbled HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n',
  )
  await eventually(() => received === 5, { what: 'the first chunk at the upstream' })
  // a chunk size that is no hex number: node:http refuses it, and its 400 is this request's answer
  client.socket.write('zz\r\nhello\r\n0\r\n\r\n')
  await eventually(() => client.closed(), { what: 'the listener to answer and close' })
  t.match(client.text(), /^HTTP\/1\.1 400 /, "the client read a 400 as its request's answer")
  t.equal(count(client.text(), /HTTP\/1\.1 /g), 1, 'and no other')
  const samples = await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_requests_total', { service: 'garbled' }) === 1,
    'the exchange to be recorded',
  )
  t.equal(
    metricValue(samples, 'nhi_requests_total', { service: 'garbled', code: '400' }),
    1,
    'recorded as 400',
  )
})

t.test(
  'a body in a transfer coding the proxy cannot pass on never reaches the upstream as identity',
  async (t) => {
    const { gzipSync } = await import('node:zlib')
    const seen: { headers: Record<string, unknown>; body: Buffer }[] = []
    const url = await httpUpstream(t, (req, res) => {
      const parts: Buffer[] = []
      req.on('data', (c: Buffer) => parts.push(c))
      req.on('end', () => {
        seen.push({ headers: req.headers, body: Buffer.concat(parts) })
        res.end('ok')
      })
    })
    const sidecar = await startBin(t, { service: 'te', upstream: url })
    const client = await rawClient(Number(new URL(sidecar.proxyUrl).port))
    const gz = gzipSync(Buffer.from('{"amount":100}'))
    client.socket.write(
      `POST /pay HTTP/1.1\r\nHost: app\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n`,
    )
    client.socket.write(
      Buffer.concat([Buffer.from(`${gz.length.toString(16)}\r\n`), gz, Buffer.from('\r\n0\r\n\r\n')]),
    )
    await eventually(() => client.closed(), { timeoutMs: 5000, what: 'the answer' })
    // RFC 9112 §6.1: a transfer coding the server does not understand → 501; the upstream got the gzip bytes as
    // the JSON body, with no header left to say they are gzip
    for (const s of seen) {
      const coded = String(s.headers['transfer-encoding'] ?? '') + String(s.headers['content-encoding'] ?? '')
      t.ok(
        /gzip/.test(coded) || s.body.toString() === '{"amount":100}',
        `the upstream can read the body it got (${JSON.stringify(s.headers['content-type'])}, ${s.body.length} bytes, coding "${coded}")`,
      )
    }
    t.match(client.text(), seen.length === 0 ? /^HTTP\/1\.1 (501|400) / : /^HTTP\/1\.1 /)
  },
)

t.test(
  'an early answer keeps its trailers: the gRPC status of a call the upstream ends while the client streams',
  async (t) => {
    const { session } = await behindH2cUpstream(t, 'grpc-early', (stream) => {
      stream.on('error', () => {})
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true })
      stream.on('wantTrailers', () =>
        stream.sendTrailers({ 'grpc-status': '7', 'grpc-message': 'denied early' }),
      )
      stream.end(Buffer.from([0, 0, 0, 0, 0]))
    })
    for (let call = 0; call < 5; call++) {
      const stream = session.request({
        ':method': 'POST',
        ':path': '/pkg.Svc/Stream',
        'content-type': 'application/grpc',
        te: 'trailers',
      })
      stream.on('error', () => {})
      let trailers: Record<string, unknown> | undefined
      stream.on('trailers', (h: Record<string, unknown>) => {
        trailers = h
      })
      stream.resume()
      // a client stream that never ends on its own
      uploadForever(stream, Buffer.from([0, 0, 0, 0, 3, 1, 2, 3]))
      await eventually(() => stream.closed, { timeoutMs: 5000, what: `call ${call}: the stream to close` })
      t.match(
        trailers,
        { 'grpc-status': '7', 'grpc-message': 'denied early' },
        `call ${call}: the status arrived`,
      )
    }
  },
)

/** a GET on `session`: the body read and the code the stream closed with (0: a clean end, or NO_ERROR) */
async function h2Read(session: ReturnType<typeof h2connect>, path: string) {
  const stream = session.request({ ':path': path })
  const response = readResponse(stream)
  // not once(): it rejects on the 'error' a reset with an error code emits first
  await new Promise((resolve) => stream.once('close', resolve))
  return { ...response, rstCode: stream.rstCode }
}

t.test('an HTTP/2 client can tell a response the upstream cut short from a complete one', async (t) => {
  // HTTP/1.1 upstream: a chunked body, then the connection drops before the last chunk
  const cutter = await scriptedUpstream(t, ({ socket }) => {
    setTimeout(() => socket.destroy(), 50)
    return 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n'
  })
  const sidecar = await startBin(t, { service: 'cut', upstream: cutter.url })
  const session = h2connect(sidecar.proxyUrl)
  session.on('error', () => {})
  t.teardown(() => session.destroy())
  const h1 = await h2Read(session, '/h1-upstream')
  t.equal(h1.status, 200)
  t.equal(h1.body, 'hello')
  // RST_STREAM(NO_ERROR) reads as the end of a complete response: node:http2 ends the stream, curl exits 0
  t.not(h1.rstCode, constants.NGHTTP2_NO_ERROR, 'HTTP/1.1 upstream: the stream is reset with an error code')

  // h2c upstream: the upstream resets its stream mid-body
  const h2 = await behindH2cUpstream(t, 'cut-h2', (stream) => {
    stream.on('error', () => {})
    stream.respond({ ':status': 200, 'content-type': 'text/plain' })
    stream.write('hello')
    setTimeout(() => stream.destroy(new Error('upstream fault')), 50)
  })
  const cut = await h2Read(h2.session, '/h2-upstream')
  t.equal(cut.status, 200)
  t.equal(cut.body, 'hello')
  t.not(cut.rstCode, constants.NGHTTP2_NO_ERROR, 'h2c upstream: the stream is reset with an error code')

  // both are recorded as the upstream's fault, and the proxy goes on serving the connection
  for (const [url, service] of [
    [sidecar.adminUrl, 'cut'],
    [h2.sidecar.adminUrl, 'cut-h2'],
  ] as const) {
    const samples = await scrapeUntil(
      url,
      (s) => metricValue(s, 'nhi_upstream_errors_total', { service, reason: 'reset' }) >= 1,
      `${service}: the reset counted`,
    )
    t.equal(metricValue(samples, 'nhi_upstream_errors_total', { service, reason: 'reset' }), 1)
  }
  t.equal((await h2Read(session, '/again')).body, 'hello', 'the client connection still serves')
})
