// HTTP/1.1 request trailers to an HTTP/1.1 upstream: requests that announce trailers (a `Trailer` header on a
// chunked body) take the node:http path, which can send a trailer section; every other request stays on undici.
// End to end through the built sidecar against real node:http(s) upstreams: a 20 MB streamed upload with
// backpressure, https with a client certificate, a reload to another upstream. Unix sockets, timeouts, client
// aborts and trailer fields a client must not smuggle past the proxy are in request-trailers-faults.test.ts.
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import t from 'tap'
import { announcedTrailers, upstreamTrailers } from '../../src/proxy/headers.ts'
import { announcesTrailers } from '../../src/proxy/node-http-forwarder.ts'
import { eventually, stillTrueFor } from '../helpers/eventually.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { createCA, createServerPki, issueCert } from '../helpers/pki.ts'
import { listenTcp, MB, sidecarFor, upload, upstreamHandler } from '../helpers/trailers.ts'

// sidecar starts and some 100 MB through loopback: above the default file timeout on a loaded machine
t.setTimeout(180_000)

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
    'X-Real-IP',
    '10.0.0.1',
    'true_client_ip',
    '10.0.0.1',
    // the proxy appends its own element to a Forwarded header, and the policy reads the method overrides, in
    // the header section only
    'Forwarded',
    'for=8.8.8.8;proto=https',
    'X-HTTP-Method-Override',
    'DELETE',
    'x_http_method',
    'DELETE',
    'X-Method-Override',
    'PUT',
    'cookie',
    'session=1',
    'X_API_KEY',
    'other-key',
    'x-forwarded-client-cert',
    'By=spiffe://x',
    // every ALB name is a forwarded certificate header, the five the proxy reads and the others ALB sends
    'X-Amzn-Mtls-Clientcert-Issuer',
    'CN=Trusted Corp CA',
    'x-amzn-mtls-clientcert-validity',
    'NotBefore=2026-01-01T00:00:00Z;NotAfter=2099-01-01T00:00:00Z',
    'X_Amzn_Mtls_Clientcert_Foo',
    'bar',
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
