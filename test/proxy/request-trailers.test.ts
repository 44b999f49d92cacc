// HTTP/1.1 request trailers to an HTTP/1.1 upstream: requests that announce trailers (a `Trailer` header on a
// chunked body) take the node:http path, which can send a trailer section; every other request stays on undici.
// End to end through the built sidecar against real node:http(s) upstreams: a 20 MB streamed upload with
// backpressure, https with a client certificate, unix sockets, timeouts, client aborts, and trailer fields a
// client must not be able to smuggle past the proxy.
import { createHash, randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { mkdtemp } from 'node:fs/promises'
import {
  createServer,
  type IncomingHttpHeaders,
  type IncomingMessage,
  request,
  type Server,
  type ServerResponse,
} from 'node:http'
import { createServer as createH2cServer } from 'node:http2'
import { createServer as createHttpsServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { TLSSocket } from 'node:tls'
import t, { type Test } from 'tap'
import { announcedTrailers, upstreamTrailers } from '../../src/proxy/headers.ts'
import { announcesTrailers } from '../../src/proxy/node-http-forwarder.ts'
import { eventually, stillTrueFor } from '../helpers/eventually.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { freePort } from '../helpers/net.ts'
import { createCA, createServerPki, issueCert } from '../helpers/pki.ts'
import { startTestSidecar, type TestSidecar } from '../helpers/sidecar.ts'

const MB = 1024 * 1024

// sixteen sidecar starts and some 200 MB through loopback: above the default file timeout on a loaded machine
t.setTimeout(180_000)

interface Seen {
  headers: IncomingHttpHeaders
  trailers: Record<string, string>
  rawTrailers: string[]
  bytes: number
  sha256: string
  cn: string | null
  complete: boolean
}

/**
 * An upstream that hashes the request body and answers with the digest, a streamed body of `replyBytes` and a
 * response trailer. `hold` keeps the request body unread until `release()`; `silent` never answers.
 */
function upstreamHandler(
  opts: { hold?: boolean; silent?: boolean; replyBytes?: number; stallReply?: boolean } = {},
) {
  const seen: Seen[] = []
  const aborted: Seen[] = []
  let release: () => void = () => {}
  /** the response body the upstream has written so far, and whether it waits for the proxy to read */
  const reply = { written: 0, blocked: false }
  /** request body bytes read so far, over all requests */
  const received = { bytes: 0 }
  const released = new Promise<void>((resolve) => {
    release = resolve
  })
  const handler = (req: IncomingMessage, res: ServerResponse) => {
    const hash = createHash('sha256')
    let bytes = 0
    const socket = req.socket as TLSSocket
    const peer = typeof socket.getPeerCertificate === 'function' ? socket.getPeerCertificate() : undefined
    const record = (complete: boolean): Seen => ({
      headers: req.headers,
      // from the raw pairs: node:http2 adds a symbol-keyed field to its trailers object
      trailers: Object.fromEntries(
        req.rawTrailers.flatMap((v, i, a) => (i % 2 ? [] : [[v.toLowerCase(), a[i + 1] ?? '']])),
      ),
      rawTrailers: [...req.rawTrailers],
      bytes,
      sha256: hash.copy().digest('hex'),
      cn: (peer?.subject?.CN as string | undefined) ?? null,
      complete,
    })
    req.on('data', (c: Buffer) => {
      bytes += c.length
      received.bytes += c.length
      hash.update(c)
    })
    req.on('close', () => {
      if (!req.complete) aborted.push(record(false))
    })
    if (opts.hold) {
      req.pause()
      void released.then(() => req.resume())
    }
    req.on('end', () => {
      const s = record(true)
      seen.push(s)
      if (opts.silent) return
      if (opts.stallReply) {
        // headers and a first chunk, then silence
        res.writeHead(200, { 'content-type': 'text/plain' })
        res.write('first chunk')
        return
      }
      res.writeHead(200, { 'content-type': 'application/octet-stream', trailer: 'x-upstream-digest' })
      let left = opts.replyBytes ?? 0
      const chunk = Buffer.alloc(64 * 1024, 0x62)
      const pump = () => {
        while (left > 0) {
          const n = Math.min(left, chunk.length)
          left -= n
          reply.written += n
          if (!res.write(chunk.subarray(0, n))) {
            reply.blocked = true
            res.once('drain', () => {
              reply.blocked = false
              pump()
            })
            return
          }
        }
        res.addTrailers({ 'x-upstream-digest': s.sha256 })
        res.end()
      }
      pump()
    })
  }
  return { handler, seen, aborted, reply, received, release: () => release() }
}

async function listenTcp(server: Server | ReturnType<typeof createH2cServer>): Promise<number> {
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return (server.address() as AddressInfo).port
}

interface Upload {
  status: number
  headers: IncomingHttpHeaders
  trailers: Record<string, string | undefined>
  body: string
  replyBytes: number
  sentSha256: string
  sent: number
}

interface UploadOptions {
  /** request body size; written in 64 KiB chunks of random bytes, waiting for drain */
  bytes: number
  trailers?: Record<string, string>
  /** the Trailer header; default: the names of `trailers` */
  announce?: string | false
  /** progress: the client is blocked on backpressure with this many bytes accepted */
  onStall?: (sent: number) => void
  /** stop writing after this many bytes and destroy the connection */
  abortAfter?: number
  /** stop writing after this many bytes until `resumeWhen` resolves */
  pauseAfter?: number
  resumeWhen?: Promise<void>
  method?: string
  /** the response body is not read until this resolves */
  readResponseAfter?: Promise<void>
}

/** A chunked upload through node:http's client, which can send request trailers. */
function upload(port: number, path: string, o: UploadOptions): Promise<Upload> & { stalled: () => number } {
  let stalledAt = -1
  const promise = new Promise<Upload>((resolve, reject) => {
    const announce = o.announce ?? Object.keys(o.trailers ?? {}).join(', ')
    const req = request({
      host: '127.0.0.1',
      port,
      path,
      method: o.method ?? 'POST',
      agent: false,
      headers: {
        'transfer-encoding': 'chunked',
        'content-type': 'application/octet-stream',
        ...(announce ? { trailer: announce } : {}),
      },
    })
    const hash = createHash('sha256')
    const block = randomBytes(MB)
    let sent = 0
    req.on('error', reject)
    req.on('response', (res) => {
      if (o.readResponseAfter) {
        res.pause()
        void o.readResponseAfter.then(() => res.resume())
      }
      const chunks: Buffer[] = []
      let replyBytes = 0
      res.on('data', (c: Buffer) => {
        replyBytes += c.length
        if (chunks.length < 16) chunks.push(c)
      })
      res.on('error', reject)
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          trailers: { ...res.trailers },
          body: Buffer.concat(chunks).toString('latin1').slice(0, 4096),
          replyBytes,
          sentSha256: hash.digest('hex'),
          sent,
        }),
      )
    })
    const write = () => {
      while (sent < o.bytes) {
        if (o.pauseAfter !== undefined && sent >= o.pauseAfter && o.resumeWhen) {
          const resumeWhen = o.resumeWhen
          o.resumeWhen = undefined
          void resumeWhen.then(write)
          return
        }
        if (o.abortAfter !== undefined && sent >= o.abortAfter) {
          req.destroy()
          resolve({
            status: 0,
            headers: {},
            trailers: {},
            body: '',
            replyBytes: 0,
            sentSha256: '',
            sent,
          })
          return
        }
        const n = Math.min(64 * 1024, o.bytes - sent)
        const offset = sent % MB
        const chunk = block.subarray(offset, Math.min(MB, offset + n))
        sent += chunk.length
        hash.update(chunk)
        if (!req.write(chunk)) {
          stalledAt = sent
          o.onStall?.(sent)
          req.once('drain', () => {
            stalledAt = -1
            write()
          })
          return
        }
      }
      if (o.trailers) req.addTrailers(o.trailers)
      req.end()
    }
    write()
  })
  return Object.assign(promise, { stalled: () => stalledAt })
}

t.test('selection: only an HTTP/1.x chunked request that announces trailers leaves undici', async (t) => {
  const req = (headers: IncomingHttpHeaders, httpVersionMajor = 1) =>
    ({ headers, httpVersionMajor }) as IncomingMessage
  t.ok(announcesTrailers(req({ 'transfer-encoding': 'chunked', trailer: 'x-digest' })))
  t.ok(announcesTrailers(req({ 'transfer-encoding': 'gzip, Chunked', trailer: 'x-digest' })))
  t.notOk(announcesTrailers(req({ 'transfer-encoding': 'chunked' })), 'no Trailer header')
  t.notOk(
    announcesTrailers(req({ 'content-length': '5', trailer: 'x-digest' })),
    'a sized body has no trailers',
  )
  t.notOk(announcesTrailers(req({ trailer: 'x-digest' })), 'no body')
  t.notOk(
    announcesTrailers(req({ 'transfer-encoding': 'chunked', trailer: 'x-digest' }, 2)),
    'HTTP/2 clients are not framed by chunks',
  )
})

t.test('trailer fields are filtered by the header rule plus what a trailer may not carry', async (t) => {
  const headers: IncomingHttpHeaders = {
    host: 'app',
    connection: 'x-listed',
    'x-api-key': 'from-the-header',
    trailer: 'x-digest, authorization, x-nhi-identity, X_NHI_Kind, x-listed, x-other',
  }
  const raw = [
    'X-Digest',
    'sha-256=abc',
    'Authorization',
    'Bearer smuggled',
    'x-nhi-identity',
    'admin',
    'X_NHI_Kind',
    'human',
    'Host',
    'evil',
    'Content-Length',
    '0',
    'Transfer-Encoding',
    'chunked',
    'x-forwarded-for',
    '10.0.0.1',
    'x_forwarded_for',
    '10.0.0.1',
    'x-request-id',
    'mine',
    'cookie',
    'session=1',
    'X_API_KEY',
    'other-key',
    'x-forwarded-client-cert',
    'By=spiffe://x',
    'te',
    'trailers',
    'x-listed',
    'v',
    'x-other',
    'kept',
  ]
  t.same(upstreamTrailers(raw, headers), [
    ['X-Digest', 'sha-256=abc'],
    ['x-other', 'kept'],
  ])
  t.equal(announcedTrailers(headers), 'x-digest, x-other')
  t.equal(announcedTrailers({ trailer: 'authorization, x-nhi-identity' }), undefined)
})

/** The sidecar in front of an upstream, and its admin URL. */
async function sidecarFor(t: Test, upstream: string, extra: Record<string, unknown> = {}) {
  const sidecar: TestSidecar = await startTestSidecar(t, { service: 'uploads', upstream, ...extra })
  return { sidecar, port: sidecar.proxyAddress.port, admin: `http://127.0.0.1:${sidecar.adminAddress.port}` }
}

t.test(
  'a 20 MB chunked upload with trailers reaches an HTTP/1.1 upstream intact, with backpressure',
  async (t) => {
    const up = upstreamHandler({ hold: true, replyBytes: 4 * MB })
    const server = createServer(up.handler)
    t.teardown(() => server.close())
    const upstreamPort = await listenTcp(server)
    const { port, admin } = await sidecarFor(t, `http://127.0.0.1:${upstreamPort}`)

    const total = 20 * MB
    const sending = upload(port, '/upload?x=1', {
      bytes: total,
      trailers: { 'x-digest': 'sha-256=client', 'x-upload-id': 'u-1' },
    })
    // the upstream reads nothing yet: the client must come to a stop well before the whole body is accepted
    await eventually(() => sending.stalled() > 0, { what: 'the client to be held back' })
    t.ok(
      await stillTrueFor(() => sending.stalled() > 0, 300),
      'the client stays blocked while the upstream does not read',
    )
    t.ok(
      sending.stalled() < total,
      `stalled after ${sending.stalled()} of ${total} bytes: not buffered whole`,
    )
    up.release()
    const res = await sending
    t.equal(res.status, 200)
    t.equal(up.seen.length, 1)
    const seen = up.seen[0]!
    t.equal(seen.bytes, total, 'every byte arrived')
    t.equal(seen.sha256, res.sentSha256, 'byte-exact')
    t.same(seen.trailers, { 'x-digest': 'sha-256=client', 'x-upload-id': 'u-1' }, 'the trailers arrived')
    t.equal(seen.headers.trailer, 'x-digest, x-upload-id', 'and were announced')
    t.equal(seen.headers['transfer-encoding'], 'chunked')
    t.equal(seen.headers['x-nhi-identity'], 'anonymous', 'the same identity headers as on the undici path')
    t.ok(seen.headers['x-request-id'])
    t.match(seen.headers['x-forwarded-for'], /127\.0\.0\.1/)
    t.equal(seen.headers.host, `127.0.0.1:${port}`, 'the client Host is kept')
    t.equal(res.replyBytes, 4 * MB, 'the response body streamed back')
    t.same(res.trailers, { 'x-upstream-digest': seen.sha256 }, 'the response trailer came back')
    await eventually(
      async () =>
        metricValue(await scrape(admin), 'nhi_requests_total', { service: 'uploads', code: '200' }) === 1,
      { what: 'the request to be counted' },
    )
  },
)

t.test(
  'the response streams back with backpressure: a client that does not read holds the upstream',
  async (t) => {
    const up = upstreamHandler({ replyBytes: 64 * MB })
    const server = createServer(up.handler)
    t.teardown(() => server.close())
    const { port } = await sidecarFor(t, `http://127.0.0.1:${await listenTcp(server)}`)
    let read: () => void = () => {}
    const reading = new Promise<void>((resolve) => {
      read = resolve
    })
    const sending = upload(port, '/download', {
      bytes: 1024,
      trailers: { 'x-digest': 'd' },
      readResponseAfter: reading,
    })
    await eventually(() => up.reply.blocked, { what: 'the upstream to be held back' })
    t.ok(
      await stillTrueFor(() => up.reply.blocked, 300),
      'the upstream stays blocked while the client does not read',
    )
    t.ok(up.reply.written < 64 * MB, `blocked after ${up.reply.written} bytes: not buffered whole`)
    read()
    const res = await sending
    t.equal(res.status, 200)
    t.equal(res.replyBytes, 64 * MB, 'every byte arrived once the client read')
    t.same(res.trailers, { 'x-upstream-digest': up.seen[0]!.sha256 })
    t.same(up.seen[0]!.trailers, { 'x-digest': 'd' }, 'on the trailer path')
  },
)

t.test('without a Trailer header the request stays on undici, which drops the trailers', async (t) => {
  const up = upstreamHandler()
  const server = createServer(up.handler)
  t.teardown(() => server.close())
  const { port } = await sidecarFor(t, `http://127.0.0.1:${await listenTcp(server)}`)
  const res = await upload(port, '/plain', {
    bytes: 256 * 1024,
    trailers: { 'x-digest': 'sha-256=client' },
    announce: false,
  })
  t.equal(res.status, 200)
  const seen = up.seen[0]!
  t.equal(seen.sha256, res.sentSha256, 'the body arrived')
  t.same(seen.trailers, {}, 'unannounced trailers are not forwarded')
  t.equal(seen.headers.trailer, undefined)
  // the same request announcing its trailer is carried with it
  const announced = await upload(port, '/announced', {
    bytes: 256 * 1024,
    trailers: { 'x-digest': 'sha-256=client' },
  })
  t.equal(announced.status, 200)
  t.same(up.seen[1]!.trailers, { 'x-digest': 'sha-256=client' })
})

t.test('https upstream with a CA bundle and a client certificate, trailers included', async (t) => {
  const { ca: serverCa, server: serverCert } = await createServerPki()
  const clientCa = await createCA('upstream-client-ca')
  const proxyClient = await issueCert(clientCa, { cn: 'nhi-proxy' })
  const up = upstreamHandler({ replyBytes: 1024 })
  const server = createHttpsServer(
    {
      cert: serverCert.certPem,
      key: serverCert.keyPem,
      ca: clientCa.certPem,
      requestCert: true,
      rejectUnauthorized: true,
    },
    up.handler,
  )
  t.teardown(() => server.close())
  const upstreamPort = await listenTcp(server as unknown as Server)
  const { port } = await sidecarFor(t, `https://127.0.0.1:${upstreamPort}`, {
    upstreamTls: {
      ca: serverCa.certFile,
      cert: proxyClient.certFile,
      key: proxyClient.keyFile,
      servername: 'localhost',
    },
  })
  for (let i = 0; i < 2; i++) {
    const res = await upload(port, `/tls/${i}`, { bytes: 2 * MB, trailers: { 'x-digest': `d${i}` } })
    t.equal(res.status, 200, `upload ${i}`)
    t.same(res.trailers, { 'x-upstream-digest': res.sentSha256 })
  }
  t.same(
    up.seen.map((s) => [s.cn, s.trailers['x-digest']]),
    [
      ['nhi-proxy', 'd0'],
      ['nhi-proxy', 'd1'],
    ],
    'the upstream saw the proxy client certificate and the trailers',
  )

  // without the CA bundle the upstream certificate is not trusted: 502, as on the undici path
  const untrusting = await sidecarFor(t, `https://127.0.0.1:${upstreamPort}`)
  const refused = await upload(untrusting.port, '/tls', { bytes: 1024, trailers: { 'x-digest': 'd' } })
  t.equal(refused.status, 502)
  t.match(refused.body, /bad_gateway/)
})

t.test('a reload to another upstream moves the trailer path with it', async (t) => {
  const a = upstreamHandler()
  const b = upstreamHandler()
  const serverA = createServer(a.handler)
  const serverB = createServer(b.handler)
  t.teardown(() => {
    serverA.close()
    serverB.close()
  })
  const urlB = `http://127.0.0.1:${await listenTcp(serverB)}`
  const { sidecar, port } = await sidecarFor(t, `http://127.0.0.1:${await listenTcp(serverA)}`)
  t.equal((await upload(port, '/one', { bytes: 1024, trailers: { 'x-digest': 'a' } })).status, 200)
  t.ok(await sidecar.reload({ service: 'uploads', upstream: urlB }), 'reloaded')
  t.equal((await upload(port, '/two', { bytes: 1024, trailers: { 'x-digest': 'b' } })).status, 200)
  t.same(
    [a.seen.map((s) => s.trailers['x-digest']), b.seen.map((s) => s.trailers['x-digest'])],
    [['a'], ['b']],
    'each upstream got its own request, trailers included',
  )
})

t.test('unix: socket upstream', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'nhi-uds-'))
  const socketPath = join(dir, 'app.sock')
  const up = upstreamHandler()
  const server = createServer(up.handler)
  t.teardown(() => server.close())
  server.listen(socketPath)
  await once(server, 'listening')
  const { port } = await sidecarFor(t, `unix:${socketPath}`)
  const res = await upload(port, '/uds', { bytes: MB, trailers: { 'x-digest': 'uds' } })
  t.equal(res.status, 200)
  t.same(up.seen[0]?.trailers, { 'x-digest': 'uds' })
  t.equal(up.seen[0]?.sha256, res.sentSha256)
})

t.test('upstream failures on this path: 504 on a silent upstream, 502 when unreachable', async (t) => {
  const up = upstreamHandler({ silent: true })
  const server = createServer(up.handler)
  t.teardown(() => {
    server.closeAllConnections()
    server.close()
  })
  const { port, admin } = await sidecarFor(t, `http://127.0.0.1:${await listenTcp(server)}`, {
    timeouts: { upstream: '1s' },
  })
  const started = Date.now()
  const res = await upload(port, '/silent', { bytes: 512 * 1024, trailers: { 'x-digest': 'late' } })
  const elapsed = Date.now() - started
  t.equal(res.status, 504)
  t.match(res.body, /gateway_timeout/)
  t.ok(elapsed >= 900 && elapsed < 5_000, `answered after the 1 s deadline (${elapsed} ms)`)
  t.same(up.seen[0]?.trailers, { 'x-digest': 'late' }, 'the request went through the trailer path')
  await eventually(
    async () => metricValue(await scrape(admin), 'nhi_upstream_errors_total', { reason: 'timeout' }) === 1,
    { what: 'the timeout to be counted' },
  )

  const closed = await sidecarFor(t, `http://127.0.0.1:${await freePort()}`)
  const refused = await upload(closed.port, '/nowhere', { bytes: 1024, trailers: { 'x-digest': 'd' } })
  t.equal(refused.status, 502)
  t.match(refused.body, /upstream unreachable/)
  await eventually(
    async () =>
      metricValue(await scrape(closed.admin), 'nhi_upstream_errors_total', { reason: 'connect' }) === 1,
    { what: 'the connect failure to be counted' },
  )
})

t.test(
  'the headers deadline: an upstream that stops reading the body trips it, a pausing client does not',
  async (t) => {
    const held = upstreamHandler({ hold: true })
    const heldServer = createServer(held.handler)
    t.teardown(() => {
      heldServer.closeAllConnections()
      heldServer.close()
    })
    const stuck = await sidecarFor(t, `http://127.0.0.1:${await listenTcp(heldServer)}`, {
      timeouts: { upstream: '1s' },
    })
    const res = await upload(stuck.port, '/held', { bytes: 64 * MB, trailers: { 'x-digest': 'd' } })
    t.equal(res.status, 504, 'an upstream that reads nothing for the deadline is a timeout')
    t.equal(held.received.bytes, 0, 'the upstream read nothing')

    const up = upstreamHandler()
    const server = createServer(up.handler)
    t.teardown(() => server.close())
    const { port } = await sidecarFor(t, `http://127.0.0.1:${await listenTcp(server)}`, {
      timeouts: { upstream: '1s' },
    })
    let resume: () => void = () => {}
    const resumed = new Promise<void>((resolve) => {
      resume = resolve
    })
    const sending = upload(port, '/paced', {
      bytes: 2 * MB,
      pauseAfter: MB,
      resumeWhen: resumed,
      trailers: { 'x-digest': 'paced' },
    })
    let answered = false
    void sending.then(() => {
      answered = true
    })
    await eventually(() => up.received.bytes >= MB, { what: 'the first half to reach the upstream' })
    t.ok(
      await stillTrueFor(() => !answered, 1_500),
      'no 504 while the client itself pauses past the deadline',
    )
    resume()
    const done = await sending
    t.equal(done.status, 200)
    t.equal(up.seen[0]?.sha256, done.sentSha256)
    t.same(up.seen[0]?.trailers, { 'x-digest': 'paced' })
  },
)

t.test('an upstream that goes silent mid-response is cut after the body deadline', async (t) => {
  const up = upstreamHandler({ stallReply: true })
  const server = createServer(up.handler)
  t.teardown(() => {
    server.closeAllConnections()
    server.close()
  })
  const { port, admin } = await sidecarFor(t, `http://127.0.0.1:${await listenTcp(server)}`, {
    timeouts: { idle: '1s' },
  })
  await t.rejects(
    upload(port, '/stall', { bytes: 1024, trailers: { 'x-digest': 'd' } }),
    'the client sees the response cut, not a complete one',
  )
  t.same(up.seen[0]?.trailers, { 'x-digest': 'd' }, 'on the trailer path')
  await eventually(
    async () => metricValue(await scrape(admin), 'nhi_upstream_errors_total', { reason: 'timeout' }) === 1,
    { what: 'the body timeout to be counted' },
  )
})

t.test('a client that aborts mid-upload cancels the upstream request and is recorded as 499', async (t) => {
  const up = upstreamHandler()
  const server = createServer(up.handler)
  t.teardown(() => server.close())
  const { port, admin } = await sidecarFor(t, `http://127.0.0.1:${await listenTcp(server)}`)
  await upload(port, '/abort', { bytes: 8 * MB, abortAfter: 2 * MB, trailers: { 'x-digest': 'never' } })
  await eventually(() => up.aborted.length === 1, { what: 'the upstream request to be cut' })
  t.equal(up.seen.length, 0, 'the upstream never saw a complete request')
  t.same(up.aborted[0]!.trailers, {})
  await eventually(
    async () =>
      metricValue(await scrape(admin), 'nhi_requests_total', { service: 'uploads', code: '499' }) === 1,
    { what: 'the aborted exchange to be recorded' },
  )
  // the proxy is fine afterwards, on the same path
  const res = await upload(port, '/after', { bytes: 1024, trailers: { 'x-digest': 'after' } })
  t.equal(res.status, 200)
  t.same(up.seen[0]?.trailers, { 'x-digest': 'after' })
})

t.test('trailers cannot smuggle identity, credential, framing or hop-by-hop fields', async (t) => {
  const smuggled = {
    'x-digest': 'sha-256=ok',
    authorization: 'Bearer smuggled',
    'x-nhi-identity': 'admin',
    X_NHI_Kind: 'human',
    'x-nhi-verified': 'true',
    host: 'evil.example',
    'x-forwarded-for': '10.9.9.9',
    'x-request-id': 'forged',
    cookie: 'session=stolen',
    'x-api-key': 'k',
    'x-forwarded-client-cert': 'By=spiffe://evil',
    connection: 'close',
  }
  const h1 = upstreamHandler()
  const h1Server = createServer(h1.handler)
  t.teardown(() => h1Server.close())
  const h2 = upstreamHandler()
  const h2Server = createH2cServer(h2.handler as never)
  t.teardown(() => h2Server.close())
  for (const [upstream, seen] of [
    [`http://127.0.0.1:${await listenTcp(h1Server)}`, h1.seen],
    [`h2c://127.0.0.1:${await listenTcp(h2Server)}`, h2.seen],
  ] as const) {
    const { port } = await sidecarFor(t, upstream)
    const res = await upload(port, '/smuggle', { bytes: 4096, trailers: smuggled })
    t.equal(res.status, 200, upstream)
    const s = seen[0]!
    t.same(s.trailers, { 'x-digest': 'sha-256=ok' }, `${upstream}: only the harmless trailer arrived`)
    t.equal(s.headers['x-nhi-identity'], 'anonymous', 'the identity is the one the proxy attributed')
    t.equal(s.headers['x-nhi-verified'], 'false')
    t.equal(s.headers.authorization, undefined)
    t.equal(s.sha256, res.sentSha256, 'the body is intact')
    if (upstream.startsWith('http:'))
      t.equal(s.headers.trailer, 'x-digest', 'only the harmless field is announced')
  }
})
