// Upstream protocols chosen by the upstream URL: h2c://, h2:// (TLS with a CA bundle and a client certificate),
// https:// with the same TLS options, unix: sockets, and HTTP/1.1 trailers forwarded both ways of the hop.
import { once } from 'node:events'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import {
  connect,
  createServer as createH2cServer,
  createSecureServer,
  type Http2ServerRequest,
  type Http2ServerResponse,
} from 'node:http2'
import { createServer as createHttpsServer } from 'node:https'
import { type AddressInfo, connect as connectTcp } from 'node:net'
import { join } from 'node:path'
import type { TLSSocket } from 'node:tls'
import t from 'tap'
import { request } from 'undici'
import { parseUpstream } from '../../src/proxy/upstream-url.ts'
import { createCA, createServerPki, issueCert } from '../helpers/pki.ts'
import { startProxy } from '../helpers/proxy-fixture.ts'
import { scratchDir } from '../helpers/scratch.ts'

const { ca: serverCa, server } = await createServerPki()
const clientCa = await createCA('upstream-client-ca')
const proxyClient = await issueCert(clientCa, { cn: 'nhi-proxy' })

/** the same handler for node:http, node:https and node:http2's compatibility API */
type H2Handler = (req: Http2ServerRequest, res: Http2ServerResponse) => void

/** answers with the protocol version, the client certificate's CN and the request body length, plus a trailer */
function handler(req: IncomingMessage, res: ServerResponse) {
  let bytes = 0
  req.on('data', (c: Buffer) => {
    bytes += c.length
  })
  req.on('end', () => {
    const socket = req.socket as TLSSocket
    const peer = typeof socket.getPeerCertificate === 'function' ? socket.getPeerCertificate() : undefined
    res.writeHead(200, { 'content-type': 'application/json', trailer: 'x-checksum' })
    res.write(
      JSON.stringify({
        version: req.httpVersion,
        cn: peer?.subject?.CN ?? null,
        bytes,
        te: req.headers.te ?? null,
      }),
    )
    res.addTrailers({ 'x-checksum': 'abc123' })
    res.end()
  })
}

async function listen(s: { listen: (port: number, host: string) => unknown; address: () => unknown }) {
  s.listen(0, '127.0.0.1')
  await once(s as unknown as NodeJS.EventEmitter, 'listening')
  return (s.address() as AddressInfo).port
}

t.test('URL schemes choose the protocol', async (t) => {
  t.match(parseUpstream('h2c://app:50051'), { protocol: 'h2', tls: false, host: 'app', port: 50051 })
  t.match(parseUpstream('h2://app'), { protocol: 'h2', tls: true, port: 443 })
  t.match(parseUpstream('https://app/base/'), { protocol: 'http1', tls: true, basePath: '/base' })
  t.match(parseUpstream('unix:/run/app.sock'), { protocol: 'http1', socketPath: '/run/app.sock' })
  t.throws(() => parseUpstream('ftp://app'), /only http:, https:, h2c:, h2: and unix:/)
})

t.test('h2c upstream: HTTP/1.1 and h2 clients both reach it over HTTP/2, with trailers', async (t) => {
  const up = createH2cServer(handler as unknown as H2Handler)
  t.teardown(() => up.close())
  const port = await listen(up)
  const { url, pipeline } = await startProxy(t, { upstream: `h2c://127.0.0.1:${port}` })
  const res = await request(`${url}/x`, { method: 'POST', body: 'hello', headers: { te: 'trailers' } })
  t.equal(res.statusCode, 200)
  // TE: trailers, the one connection-specific field HTTP/2 carries, which gRPC servers require of a call
  t.match(await res.body.json(), { version: '2.0', bytes: 5, te: 'trailers' })
  t.same(res.trailers, { 'x-checksum': 'abc123' }, 'the upstream trailer reached the HTTP/1.1 client')
  const session = connect(url)
  t.teardown(() => session.close())
  const stream = session.request({ ':path': '/y', te: 'trailers' })
  stream.end()
  const trailers = once(stream, 'trailers')
  let body = ''
  for await (const c of stream) body += c
  t.match(JSON.parse(body), { version: '2.0', bytes: 0, te: 'trailers' })
  t.match((await trailers)[0], { 'x-checksum': 'abc123' }, 'and reached the h2 client as trailers')
  const events = await pipeline.waitForEvents(2)
  t.same(
    events.map((e) => e.status),
    [200, 200],
  )
})

t.test("h2c upstream: an HTTP/1.1 client's chunked request trailers reach the upstream", async (t) => {
  const seen: { body: string; trailers: Record<string, string> }[] = []
  const up = createH2cServer((req, res) => {
    let body = ''
    req.setEncoding('utf8')
    req.on('data', (c: string) => {
      body += c
    })
    req.on('end', () => {
      seen.push({ body, trailers: { ...req.trailers } as Record<string, string> })
      res.end('ok')
    })
  })
  t.teardown(() => up.close())
  const port = await listen(up)
  const { port: proxyPort } = await startProxy(t, { upstream: `h2c://127.0.0.1:${port}` })
  // a raw socket: no HTTP client library here sends request trailers
  const socket = connectTcp(proxyPort, '127.0.0.1')
  t.teardown(() => socket.destroy())
  await once(socket, 'connect')
  socket.write(
    'POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nTrailer: x-digest\r\n' +
      'Connection: close\r\n\r\n5\r\nhello\r\n0\r\nx-digest: sha-256=abc\r\nTE: trailers\r\n\r\n',
  )
  let answer = ''
  socket.setEncoding('utf8')
  for await (const c of socket) answer += c
  t.match(answer, /^HTTP\/1\.1 200/)
  t.equal(seen.length, 1)
  t.equal(seen[0]?.body, 'hello')
  t.equal(seen[0]?.trailers['x-digest'], 'sha-256=abc', 'the trailer field reached the upstream')
  t.notOk('te' in (seen[0]?.trailers ?? {}), 'a hop-by-hop field is not forwarded as a trailer')
})

t.test('h2 and https upstreams with a CA bundle and a client certificate', async (t) => {
  const tlsOptions = {
    cert: server.certPem,
    key: server.keyPem,
    ca: clientCa.certPem,
    requestCert: true,
    rejectUnauthorized: true,
  }
  const h2 = createSecureServer(tlsOptions, handler as unknown as H2Handler)
  t.teardown(() => h2.close())
  const h2port = await listen(h2)
  const h1 = createHttpsServer(tlsOptions, handler)
  t.teardown(() => h1.close())
  const h1port = await listen(h1)
  const upstreamTls = {
    ca: serverCa.certPem,
    cert: proxyClient.certPem,
    key: proxyClient.keyPem,
    servername: 'localhost',
  }
  for (const [upstream, version] of [
    [`h2://127.0.0.1:${h2port}`, '2.0'],
    [`https://127.0.0.1:${h1port}`, '1.1'],
  ] as const) {
    const { url } = await startProxy(t, { upstream, upstreamTls })
    const res = await request(`${url}/z`)
    t.equal(res.statusCode, 200, upstream)
    t.same(await res.body.json(), { version, cn: 'nhi-proxy', bytes: 0, te: null })
  }
  // without the CA bundle the upstream certificate is not trusted
  const { url } = await startProxy(t, { upstream: `h2://127.0.0.1:${h2port}` })
  const res = await request(`${url}/z`)
  t.equal(res.statusCode, 502)
  await res.body.dump()
})

t.test('unix: socket upstream', async (t) => {
  const dir = await scratchDir('uds')
  const path = join(dir, 'app.sock')
  const up = createServer(handler)
  up.listen(path)
  await once(up, 'listening')
  t.teardown(() => up.close())
  const { url, proxy } = await startProxy(t, { upstream: `unix:${path}` })
  const res = await request(`${url}/u`, { method: 'POST', body: 'abc' })
  t.equal(res.statusCode, 200)
  t.match(await res.body.json(), { version: '1.1', bytes: 3 })
  t.equal(await proxy.upstreamReachable(), true, 'readiness probes the socket')
})
