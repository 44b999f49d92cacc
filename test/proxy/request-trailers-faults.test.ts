// HTTP/1.1 request trailers on the node:http path (see request-trailers.test.ts), end to end through the built
// sidecar: a unix socket upstream, upstream failures and deadlines, client aborts, and trailer fields a client
// must not be able to smuggle past the proxy.
import { once } from 'node:events'
import { createServer } from 'node:http'
import { createServer as createH2cServer } from 'node:http2'
import { connect, createServer as createNetServer } from 'node:net'
import { join } from 'node:path'
import t from 'tap'
import { eventually, stillTrueFor } from '../helpers/eventually.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { refusedPort } from '../helpers/net.ts'
import { scratchDir } from '../helpers/scratch.ts'
import { listenTcp, MB, sidecarFor, upload, upstreamHandler } from '../helpers/trailers.ts'

// sidecar starts and some 100 MB through loopback: above the default file timeout on a loaded machine
t.setTimeout(180_000)
// the tests share nothing (each its own upstream and sidecars) and spend much of their time waiting on
// deadlines and sidecar starts: run side by side
t.jobs = 3

t.test('unix: socket upstream', async (t) => {
  const dir = await scratchDir('uds')
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

  const closed = await sidecarFor(t, `http://127.0.0.1:${await refusedPort()}`)
  const refused = await upload(closed.port, '/nowhere', { bytes: 1024, trailers: { 'x-digest': 'd' } })
  t.equal(refused.status, 502)
  t.match(refused.body, /upstream unreachable/)
  await eventually(
    async () =>
      metricValue(await scrape(closed.admin), 'nhi_upstream_errors_total', { reason: 'connect' }) === 1,
    { what: 'the connect failure to be counted' },
  )
})

// timeouts.upstream 0 is no deadline, as on undici's path; this path armed 0 ms timers and answered at once
t.test('timeouts.upstream 0: no deadline on this path either', async (t) => {
  const up = upstreamHandler({})
  const server = createServer(up.handler)
  t.teardown(() => {
    server.closeAllConnections()
    server.close()
  })
  const { port } = await sidecarFor(t, `http://127.0.0.1:${await listenTcp(server)}`, {
    timeouts: { upstream: 0 },
  })
  const res = await upload(port, '/no-deadline', { bytes: 256 * 1024, trailers: { 'x-digest': 'none' } })
  t.equal(res.status, 200)
  t.same(up.seen[0]?.trailers, { 'x-digest': 'none' }, 'the request went through the trailer path')
  t.equal(up.seen[0]?.sha256, res.sentSha256, 'the whole body arrived')
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

t.test('an upstream that answers before the body ends leaves the client connection serving', async (t) => {
  // answers at once without reading the upload (as an upstream refusing it by its headers does); node:http
  // reads and discards the rest itself and keeps the connection
  let requests = 0
  const server = createServer((req, res) => {
    requests++
    res.writeHead(req.url === '/upload' ? 413 : 200, { 'content-length': 2 })
    res.end('no')
  })
  t.teardown(() => {
    server.closeAllConnections()
    server.close()
  })
  const { port } = await sidecarFor(t, `http://127.0.0.1:${await listenTcp(server)}`)

  const socket = connect(port, '127.0.0.1')
  t.teardown(() => socket.destroy())
  socket.on('error', () => {})
  let text = ''
  socket.on('data', (c: Buffer) => {
    text += c.toString('latin1')
  })
  await once(socket, 'connect')
  const chunk = Buffer.concat([Buffer.from('10000\r\n'), Buffer.alloc(64 * 1024, 0x61), Buffer.from('\r\n')])
  socket.write(
    'POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nTrailer: x-digest\r\n\r\n',
  )
  socket.write(chunk)
  await eventually(() => text.includes('\r\n\r\nno'), { what: 'the early 413' })
  t.match(text, /^HTTP\/1\.1 413 /, 'the upstream refused the upload before reading it')
  // the client goes on with its body, as HTTP/1.1 lets it, then a second request on the same connection
  for (let i = 0; i < 32; i++) socket.write(chunk)
  socket.write('0\r\nx-digest: d\r\n\r\nGET /after HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n')
  await eventually(() => /\r\n\r\nnoHTTP\/1\.1 200 [\s\S]*\r\n\r\nno$/.test(text), {
    timeoutMs: 10_000,
    what: 'the answer to the request sent after the body',
  })
  t.pass('the rest of the body was taken off the connection and the next request answered')
  t.equal(requests, 2, 'the upstream got the upload and the next request, nothing else')
})

t.test(
  'a hostile upstream on this path: an impossible status, an unasked-for 101, a 204 with a body',
  async (t) => {
    // each answer written raw as soon as the request head arrives, the connection left open
    const answers = new Map<string, string>([
      ['/status-99', 'HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n'],
      ['/status-0', 'HTTP/1.1 000 Zero\r\nContent-Length: 0\r\n\r\n'],
      ['/switch', 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n'],
      ['/no-content', 'HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello'],
    ])
    const server = createNetServer((socket) => {
      let head = ''
      socket.on('error', () => {})
      socket.on('data', (c: Buffer) => {
        if (head.includes('\r\n\r\n')) return
        head += c.toString('latin1')
        const path = /^\S+ (\S+)/.exec(head)?.[1] ?? ''
        if (head.includes('\r\n\r\n')) socket.write(answers.get(path) ?? 'HTTP/1.1 500 X\r\n\r\n')
      })
    })
    t.teardown(() => server.close())
    const { port, admin } = await sidecarFor(t, `http://127.0.0.1:${await listenTcp(server)}`, {
      timeouts: { upstream: '20s' },
    })
    for (const path of ['/status-99', '/status-0']) {
      const res = await upload(port, path, { bytes: 1024, trailers: { 'x-digest': 'd' } })
      t.equal(res.status, 502, `${path}: 502, and the proxy lives on`)
    }
    const started = Date.now()
    const switched = await upload(port, '/switch', { bytes: 1024, trailers: { 'x-digest': 'd' } })
    t.equal(switched.status, 502, 'an unasked-for 101: 502')
    t.ok(Date.now() - started < 10_000, 'at once, not after the upstream deadline')
    const noContent = await upload(port, '/no-content', { bytes: 1024, trailers: { 'x-digest': 'd' } })
    t.equal(noContent.status, 204, 'a 204 with a body: the 204, without the body')
    t.equal(noContent.replyBytes, 0)
    await eventually(
      async () => {
        const text = await scrape(admin)
        return (
          metricValue(text, 'nhi_upstream_errors_total', { reason: 'reset' }) === 3 &&
          metricValue(text, 'nhi_upstream_errors_total', { reason: 'timeout' }) === 0
        )
      },
      { what: 'three upstream resets and no timeout counted' },
    )
  },
)
