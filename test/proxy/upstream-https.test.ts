// https:// upstreams on the HTTP/1.1 engine (h1-pool.ts): the request goes out only after the TLS handshake,
// over one kept-alive connection, later connections resume the TLS session, the server name is the
// configured one or the URL host (never an IP literal, never the client's Host), a client certificate is
// presented when configured, a certificate the proxy does not trust fails the request as a 502 before any
// request byte is sent, and a reload of upstreamTls applies to the next request. Each upstream is a raw TLS
// server answering with scripted bytes, so interim answers (100 Continue) can be sent unasked.
import { createHash } from 'node:crypto'
import { once } from 'node:events'
import { createSecureServer } from 'node:http2'
import { createServer as createHttpsServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import { createServer, type TLSSocket, type TlsOptions } from 'node:tls'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { eventually } from '../helpers/eventually.ts'
import { listenUntilTeardown, rawClient } from '../helpers/net.ts'
import { type CA, createCA, issueCert, type KeyPair } from '../helpers/pki.ts'
import { startProxy } from '../helpers/proxy-fixture.ts'

let serverCa: CA
let otherCa: CA
let server: KeyPair
let clientCa: CA
let proxyClient: KeyPair
t.before(async () => {
  serverCa = await createCA('https-upstream-ca')
  otherCa = await createCA('https-upstream-other-ca')
  // valid for the name localhost and for the address 127.0.0.1
  server = await issueCert(serverCa, {
    cn: 'localhost',
    dnsSans: ['localhost'],
    ipSans: ['127.0.0.1'],
    server: true,
  })
  clientCa = await createCA('https-upstream-client-ca')
  proxyClient = await issueCert(clientCa, { cn: 'nhi-proxy-client' })
})

interface Conn {
  /** the SNI the client sent, false without one */
  servername: string | false | null
  reused: boolean
  /** CN of the client certificate, null without one */
  cn: string | string[] | null
  /** request bytes received on the connection */
  bytes: number
}

/**
 * A TLS upstream answering each request head (requests without bodies) with `script(path)`.
 * `tlsClientErrors` counts handshakes that failed.
 */
async function tlsUpstream(t: Test, script: (path: string) => string, extra: TlsOptions = {}) {
  const conns: Conn[] = []
  const heads: string[] = []
  let tlsClientErrors = 0
  const s = createServer({ cert: server.certPem, key: server.keyPem, ...extra }, (socket) => {
    const peer = socket.getPeerCertificate()
    const conn: Conn = {
      servername: socket.servername,
      reused: socket.isSessionReused(),
      cn: peer?.subject?.CN ?? null,
      bytes: 0,
    }
    conns.push(conn)
    socket.on('error', () => {})
    let pending = ''
    socket.on('data', (c: Buffer) => {
      conn.bytes += c.length
      pending += c.toString('latin1')
      for (;;) {
        const end = pending.indexOf('\r\n\r\n')
        if (end === -1) return
        const head = pending.slice(0, end)
        pending = pending.slice(end + 4)
        heads.push(head)
        socket.write(script(/^[A-Z]+ (\S+)/.exec(head)?.[1] ?? '/'), 'latin1')
      }
    })
  })
  s.on('tlsClientError', () => {
    tlsClientErrors++
  })
  return {
    port: await listenUntilTeardown(t, s),
    conns,
    heads,
    tlsClientErrors: () => tlsClientErrors,
  }
}

const ok = (body: string, extra = '') =>
  `HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n${extra}\r\n${body}`

async function get(url: string, headers: Record<string, string> = {}) {
  const res = await request(url, { headers })
  return { status: res.statusCode, body: await res.body.text() }
}

t.test(
  'an unsolicited 100 Continue from a TLS upstream is skipped: the 200 after it is forwarded',
  async (t) => {
    const up = await tlsUpstream(t, (path) =>
      path === '/continue'
        ? `HTTP/1.1 100 Continue\r\n\r\n${ok('after continue')}`
        : `HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n${ok('after hints')}`,
    )
    const { url, pipeline } = await startProxy(t, {
      upstream: `https://127.0.0.1:${up.port}`,
      upstreamTls: { ca: serverCa.certPem },
    })
    t.same(await get(`${url}/continue`), { status: 200, body: 'after continue' }, '100 Continue skipped')
    t.same(await get(`${url}/hints`), { status: 200, body: 'after hints' }, '103 Early Hints skipped')
    const events = await pipeline.waitForEvents(2)
    t.same(
      events.map((e) => [e.status, e.upstreamError]),
      [
        [200, undefined],
        [200, undefined],
      ],
    )
  },
)

t.test(
  'keep-alive over TLS: one handshake for sequential requests; a new connection resumes the session',
  async (t) => {
    const up = await tlsUpstream(t, (path) =>
      path === '/last' ? ok(`fine ${path}`, 'Connection: close\r\n') : ok(`fine ${path}`),
    )
    const { url } = await startProxy(t, {
      upstream: `https://127.0.0.1:${up.port}`,
      upstreamTls: { ca: serverCa.certPem },
    })
    t.same(await get(`${url}/one`), { status: 200, body: 'fine /one' })
    t.same(await get(`${url}/two`), { status: 200, body: 'fine /two' })
    t.same(await get(`${url}/last`), { status: 200, body: 'fine /last' })
    t.equal(up.conns.length, 1, 'three requests, one TLS connection')
    // the upstream closed it: the next request needs a new connection, which resumes the session
    t.same(await get(`${url}/again`), { status: 200, body: 'fine /again' })
    t.equal(up.conns.length, 2, 'a second connection')
    t.same(
      up.conns.map((c) => c.reused),
      [false, true],
      'the second connection resumed the TLS session of the first',
    )
  },
)

/**
 * The server names every path is checked with, for `scheme://…:port`: the URL host; none for an address (RFC
 * 6066 §3: the certificate is checked against it); a configured name; an address as the configured name
 * (the certificate checked against it, and it not sent). Each with the proxy's settings and a label.
 */
function serverNameCases(scheme: string, port: number) {
  return (
    [
      [`${scheme}://localhost:${port}`, undefined, 'localhost'],
      [`${scheme}://127.0.0.1:${port}`, undefined, false],
      [`${scheme}://127.0.0.1:${port}`, 'localhost', 'localhost'],
      [`${scheme}://localhost:${port}`, '127.0.0.1', false],
    ] as const
  ).map(([upstream, servername, sni]) => ({
    settings: { upstream, upstreamTls: { ca: serverCa.certPem, ...(servername ? { servername } : {}) } },
    sni,
    what: `${upstream}${servername ? `, servername ${servername}` : ''}`,
  }))
}

t.test('the server name: the configured one, else the URL host unless it is an address', async (t) => {
  const up = await tlsUpstream(t, (path) => ok(`fine ${path}`))
  const warnings: string[] = []
  const warned = (w: Error & { code?: string }) => warnings.push(w.code ?? w.message)
  process.on('warning', warned)
  t.teardown(() => process.off('warning', warned))
  for (const c of serverNameCases('https', up.port)) {
    const before = up.conns.length
    const { url } = await startProxy(t, c.settings)
    // the Host the client addressed is the upstream's to read, not the name its certificate is checked for
    const res = await get(`${url}/name`, { host: 'client.example' })
    t.same(res, { status: 200, body: 'fine /name' }, `${c.what}: answered`)
    t.equal(up.conns[before]?.servername, c.sni, `${c.what}: SNI ${c.sni}`)
  }
  t.match(up.heads.at(-1) ?? '', /\r\nhost: client\.example\r\n/, "the client's Host reached the upstream")
  t.notOk(warnings.includes('DEP0123'), 'no warning of an address sent as the server name')
})

t.test('requests that announce trailers (node:http) use the same server name', async (t) => {
  const seen: { servername: string | false | null; trailer: string | undefined }[] = []
  const up = createHttpsServer({ cert: server.certPem, key: server.keyPem }, (req, res) => {
    req.resume()
    req.on('end', () => {
      seen.push({ servername: (req.socket as TLSSocket).servername, trailer: req.trailers['x-digest'] })
      res.end('stored')
    })
  })
  up.listen(0, '127.0.0.1')
  await once(up, 'listening')
  t.teardown(() => {
    up.closeAllConnections()
    up.close()
  })
  const upPort = (up.address() as AddressInfo).port
  for (const { settings, sni, what } of serverNameCases('https', upPort)) {
    const { port } = await startProxy(t, settings)
    // a raw socket: no HTTP client library here sends request trailers
    const client = await rawClient(port)
    t.teardown(() => client.socket.destroy())
    client.socket.write(
      'POST /upload HTTP/1.1\r\nHost: client.example\r\nTransfer-Encoding: chunked\r\nTrailer: x-digest\r\n' +
        'Connection: close\r\n\r\n5\r\nhello\r\n0\r\nx-digest: sha-256=abc\r\n\r\n',
    )
    await eventually(() => client.closed(), { what: 'the answer, then the close' })
    const answer = client.text()
    t.match(answer, /^HTTP\/1\.1 200/, `${what}: answered`)
    t.same(seen.at(-1), { servername: sni, trailer: 'sha-256=abc' }, `${what}: SNI ${sni}, trailer passed on`)
  }
})

t.test('h2:// upstreams (node:http2) use the same server name and check', async (t) => {
  const seen: (string | false | null)[] = []
  const up = createSecureServer({ cert: server.certPem, key: server.keyPem }, (req, res) => {
    seen.push((req.socket as TLSSocket).servername)
    res.end('h2 fine')
  })
  const upPort = await listenUntilTeardown(t, up)
  for (const { settings, sni, what } of serverNameCases('h2', upPort)) {
    const { url } = await startProxy(t, settings)
    t.same(
      await get(`${url}/h2`, { host: 'client.example' }),
      { status: 200, body: 'h2 fine' },
      `${what}: answered`,
    )
    t.equal(seen.at(-1), sni, `${what}: SNI ${sni}`)
  }
  // the certificate names 127.0.0.1, where the proxy connects, but not the configured address
  const { url } = await startProxy(t, {
    upstream: `h2://127.0.0.1:${upPort}`,
    upstreamTls: { ca: serverCa.certPem, servername: '127.0.0.2' },
  })
  const res = await get(`${url}/h2`)
  t.equal(res.status, 502, 'servername 127.0.0.2: the certificate is checked against it, 502')
})

t.test(
  'a certificate the proxy does not trust, or for another name: 502, no request byte sent',
  async (t) => {
    const up = await tlsUpstream(t, (path) => ok(`fine ${path}`))
    const cases = [
      { what: 'no CA bundle: the public roots do not include the test CA', upstreamTls: undefined },
      { what: 'another CA', upstreamTls: { ca: otherCa.certPem } },
      { what: 'another name', upstreamTls: { ca: serverCa.certPem, servername: 'other.example' } },
      // the certificate names 127.0.0.1, the address the proxy connects to, but not the configured one
      { what: 'another address', upstreamTls: { ca: serverCa.certPem, servername: '127.0.0.2' } },
    ]
    for (const c of cases) {
      const { url, pipeline } = await startProxy(t, {
        upstream: `https://127.0.0.1:${up.port}`,
        ...(c.upstreamTls ? { upstreamTls: c.upstreamTls } : {}),
      })
      const res = await request(`${url}/secret`)
      t.equal(res.statusCode, 502, `${c.what}: 502`)
      t.match(await res.body.json(), { error: 'bad_gateway' }, `${c.what}: bad_gateway`)
      const [event] = await pipeline.waitForEvents(1)
      t.equal(event?.status, 502, `${c.what}: recorded as 502`)
      t.equal(event?.upstreamError, 'connect', `${c.what}: a connect failure`)
    }
    t.equal(up.heads.length, 0, 'no request head reached the upstream')
    t.equal(
      up.conns.reduce((n, c) => n + c.bytes, 0),
      0,
      'no request byte reached the upstream',
    )
    t.equal(up.conns.length, 0, 'no handshake completed')
    await eventually(() => up.tlsClientErrors() === cases.length, {
      what: 'the upstream to see each handshake broken off',
    })
  },
)

t.test('mTLS: the upstream requires a client certificate and sees the configured one', async (t) => {
  const up = await tlsUpstream(t, (path) => ok(`fine ${path}`), {
    ca: clientCa.certPem,
    requestCert: true,
    rejectUnauthorized: true,
  })
  const { url } = await startProxy(t, {
    upstream: `https://127.0.0.1:${up.port}`,
    upstreamTls: { ca: serverCa.certPem, cert: proxyClient.certPem, key: proxyClient.keyPem },
  })
  t.same(await get(`${url}/m`), { status: 200, body: 'fine /m' })
  t.equal(up.conns[0]?.cn, 'nhi-proxy-client', 'the upstream saw the configured client certificate')

  // without a client certificate the upstream refuses the connection
  const { url: bare, pipeline } = await startProxy(t, {
    upstream: `https://127.0.0.1:${up.port}`,
    upstreamTls: { ca: serverCa.certPem },
  })
  const res = await request(`${bare}/m`)
  t.equal(res.statusCode, 502, 'no client certificate: 502')
  await res.body.dump()
  const [event] = await pipeline.waitForEvents(1)
  t.ok(event?.upstreamError, `recorded as an upstream failure (${event?.upstreamError})`)
  t.equal(up.heads.length, 1, 'only the request with the certificate reached the upstream')
})

t.test('a reload of upstreamTls applies to the next request, not to the connections before it', async (t) => {
  const up = await tlsUpstream(t, (path) => ok(`fine ${path}`))
  const { url, proxy, pipeline } = await startProxy(t, {
    upstream: `https://127.0.0.1:${up.port}`,
    upstreamTls: { ca: serverCa.certPem },
  })
  t.same(await get(`${url}/before`), { status: 200, body: 'fine /before' }, 'trusted')
  // a CA bundle that does not hold the upstream's issuer: the kept-alive connection and the TLS session made
  // under the old one must not carry the next request
  proxy.setUpstreamTls({ ca: otherCa.certPem })
  const refused = await request(`${url}/after-rotation`)
  t.equal(refused.statusCode, 502, 'the next request is verified against the new CA bundle')
  await refused.body.dump()
  t.notOk(
    up.heads.some((h) => h.includes('/after-rotation')),
    'and never reached the upstream',
  )
  proxy.setUpstreamTls({ ca: serverCa.certPem })
  t.same(await get(`${url}/back`), { status: 200, body: 'fine /back' }, 'trusted again')
  const events = await pipeline.waitForEvents(3)
  t.same(
    events.map((e) => [e.status, e.upstreamError]),
    [
      [200, undefined],
      [502, 'connect'],
      [200, undefined],
    ],
  )
  t.equal(up.conns.length, 2, 'two completed handshakes: before the reloads and after them')
  t.equal(up.conns[1]?.reused, false, 'the connection after the reload made a full handshake')
})

t.test('a websocket upgrade (undici) to a TLS upstream uses the same server name', async (t) => {
  const seen: (string | false | null)[] = []
  const up = createHttpsServer({ cert: server.certPem, key: server.keyPem }, (_req, res) => res.end())
  up.on('upgrade', (req, socket) => {
    seen.push((req.socket as TLSSocket).servername)
    const accept = createHash('sha1')
      .update(`${req.headers['sec-websocket-key']}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`)
      .digest('base64')
    socket.end(
      `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`,
    )
  })
  up.listen(0, '127.0.0.1')
  await once(up, 'listening')
  t.teardown(() => {
    up.closeAllConnections()
    up.close()
  })
  const upPort = (up.address() as AddressInfo).port
  for (const { settings, sni, what } of serverNameCases('https', upPort)) {
    const { port } = await startProxy(t, settings)
    const client = await rawClient(port)
    t.teardown(() => client.socket.destroy())
    client.socket.write(
      'GET /ws HTTP/1.1\r\nHost: client.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n',
    )
    await eventually(() => client.text().includes('\r\n\r\n'), { what: 'the answer head' })
    const answer = client.text()
    t.match(answer, /^HTTP\/1\.1 101/, `${what}: switched`)
    t.equal(seen.at(-1), sni, `${what}: SNI ${sni}, not the client's Host`)
  }
})
