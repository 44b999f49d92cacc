// Headers naming the client's address (X-Real-IP, True-Client-IP, CF-Connecting-IP, X-Client-IP,
// Fastly-Client-IP, X-Cluster-Client-IP, Client-IP): an upstream behind this sidecar reads them as its proxy's word
// (Express/Rails/Django middleware, nginx realip). From a peer that is not a trusted proxy they are the
// client's own claim and must not reach the upstream, over HTTP/1.1, HTTP/2 (h2c and TLS), towards an h2c
// upstream and on a websocket upgrade; from a trusted proxy they pass. The trusted proxy is 127.0.0.2.
// The headers by which a proxy states the scheme, port, path prefix or rewritten URL of the request
// (X-Forwarded-Port, -Ssl, -Scheme, -Prefix, X-Url-Scheme, Front-End-Https, X-Original-URL, X-Rewrite-URL,
// X-Original-URI) are the same kind of word and are tested alongside: a client's own would let it say it
// arrived over TLS, or name another path than the one the policy decided on.
import { createHash } from 'node:crypto'
import { once } from 'node:events'
import type { IncomingHttpHeaders } from 'node:http'
import { connect as connectH2, createServer as createH2cServer } from 'node:http2'
import { type AddressInfo, connect } from 'node:net'
import { connect as connectTls } from 'node:tls'
import t, { type Test } from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { createServerPki } from '../helpers/pki.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { TRUSTED_ONLY_HEADERS } from '../helpers/trusted-only-headers.ts'
import { startUpstream } from '../helpers/upstream.ts'

const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'
const TRUSTED = '127.0.0.2'
const CLIENT_ADDRESS_HEADERS = TRUSTED_ONLY_HEADERS

/** `x-real-ip` → `X-REAL-ip`-like odd spellings: every other letter upper-cased, and the whole name so */
function oddCases(name: string): string[] {
  const alternating = [...name].map((c, i) => (i % 2 ? c.toUpperCase() : c)).join('')
  return [alternating, name.toUpperCase()]
}

/** every client-address header, twice, in odd letter case; and the CGI spelling of each (X_Real_Ip) */
const FORGED_LINES = CLIENT_ADDRESS_HEADERS.flatMap((name) => {
  const [a, b] = oddCases(name)
  const underscored = name.replaceAll('-', '_').toUpperCase()
  return [`${a}: 10.6.6.6\r\n`, `${b}: 10.6.6.7\r\n`, `${underscored}: 10.6.6.8\r\n`]
}).join('')

/** the client-address headers an upstream received, in any spelling it would read as one */
function clientAddressHeaders(headers: IncomingHttpHeaders): string[] {
  return Object.keys(headers).filter((name) =>
    CLIENT_ADDRESS_HEADERS.includes(name.toLowerCase().replaceAll('_', '-')),
  )
}

const { ca: serverCa, server: serverCert } = await createServerPki()

/** an h2c upstream that records the headers of every request */
async function startH2cUpstream(t: Test) {
  const received: IncomingHttpHeaders[] = []
  const server = createH2cServer((req, res) => {
    received.push(req.headers)
    req.resume()
    req.on('end', () => res.end('ok'))
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())))
  return { port: (server.address() as AddressInfo).port, received }
}

/** an HTTP/1.1 exchange on a fresh connection from `localAddress`; resolves with the answer's text */
function rawExchange(port: number, text: string, localAddress = '127.0.0.1'): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host: '127.0.0.1', localAddress }, () => socket.write(text))
    let out = ''
    socket.setEncoding('latin1')
    socket.on('data', (d: string) => {
      out += d
      // a switched connection stays open: its 101 head is the whole answer
      if (out.startsWith('HTTP/1.1 101 ') && out.includes('\r\n\r\n')) socket.destroy()
    })
    socket.on('close', () => resolve(out))
    socket.on('error', reject)
  })
}

/**
 * One HTTP/2 GET with every client-address header twice, over h2c from `from.localAddress` or over TLS
 * (from 127.0.0.1) trusting `from.ca`; resolves with the status.
 */
async function h2Get(url: string, from: { localAddress: string } | { ca: string }): Promise<number> {
  const port = Number(new URL(url).port)
  const session = connectH2(url, {
    createConnection: () =>
      'ca' in from
        ? connectTls({ host: '127.0.0.1', port, ca: from.ca, servername: 'localhost', ALPNProtocols: ['h2'] })
        : connect({ host: '127.0.0.1', port, localAddress: from.localAddress }),
  })
  session.on('error', () => {})
  try {
    const headers: Record<string, string | string[]> = { ':path': '/echo' }
    for (const name of CLIENT_ADDRESS_HEADERS) headers[name] = ['10.6.6.6', '10.6.6.7']
    const stream = session.request(headers)
    const [response] = (await once(stream, 'response')) as [Record<string, string | number>]
    stream.resume()
    await once(stream, 'end')
    return Number(response[':status'])
  } finally {
    session.close()
  }
}

const wsRequest = (lines: string) =>
  'GET /ws HTTP/1.1\r\nHost: app.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n' +
  `Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n${lines}\r\n`

t.test('client-address headers from an untrusted peer never reach the upstream', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const upgrades: IncomingHttpHeaders[] = []
  upstream.server.on('upgrade', (req, socket) => {
    upgrades.push(req.headers)
    socket.on('error', () => {})
    const accept = createHash('sha1').update(`${req.headers['sec-websocket-key']}${WS_GUID}`).digest('base64')
    socket.end(
      'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
        `Sec-WebSocket-Accept: ${accept}\r\n\r\n`,
    )
  })
  const h2cUpstream = await startH2cUpstream(t)
  const trust = { trustedProxies: [`${TRUSTED}/32`], format: 'xfcc' }
  const sidecar = await startTestSidecar(t, {
    listen: {
      http: '127.0.0.1:0',
      https: { address: '127.0.0.1:0', cert: serverCert.certFile, key: serverCert.keyFile },
    },
    upstream: upstream.url,
    forwardedClientCert: trust,
  })
  const towardsH2c = await startTestSidecar(t, {
    upstream: `h2c://127.0.0.1:${h2cUpstream.port}`,
    forwardedClientCert: trust,
  })
  const port = sidecar.proxyAddress.port
  const lastReceived = () => upstream.received[upstream.received.length - 1]!.headers

  await t.test('HTTP/1.1, each name in odd case, repeated, and in its CGI spelling', async (t) => {
    const answer = await rawExchange(
      port,
      `GET /echo HTTP/1.1\r\nHost: app.example\r\n${FORGED_LINES}Connection: close\r\n\r\n`,
    )
    t.match(answer, /^HTTP\/1\.1 200 /)
    t.same(clientAddressHeaders(lastReceived()), [], 'none reached the upstream')
    t.equal(lastReceived()['x-forwarded-for'], '127.0.0.1', 'the peer is still named in x-forwarded-for')
  })

  await t.test('HTTP/2 over h2c and over TLS, each name repeated', async (t) => {
    t.equal(await h2Get(sidecar.proxyUrl, { localAddress: '127.0.0.1' }), 200)
    t.same(clientAddressHeaders(lastReceived()), [], 'h2c: none reached the upstream')
    const tlsUrl = `https://localhost:${sidecar.httpsAddress!.port}`
    t.equal(await h2Get(tlsUrl, { ca: serverCa.certPem }), 200)
    t.same(clientAddressHeaders(lastReceived()), [], 'TLS: none reached the upstream')
  })

  await t.test('towards an h2c upstream', async (t) => {
    const h1 = await rawExchange(
      towardsH2c.proxyAddress.port,
      `GET /echo HTTP/1.1\r\nHost: app.example\r\n${FORGED_LINES}Connection: close\r\n\r\n`,
    )
    t.match(h1, /^HTTP\/1\.1 200 /)
    t.same(clientAddressHeaders(h2cUpstream.received.at(-1)!), [], 'from an HTTP/1.1 client')
    t.equal(await h2Get(towardsH2c.proxyUrl, { localAddress: '127.0.0.1' }), 200)
    t.same(clientAddressHeaders(h2cUpstream.received.at(-1)!), [], 'from an HTTP/2 client')
  })

  await t.test('a websocket upgrade', async (t) => {
    const answer = await rawExchange(port, wsRequest(FORGED_LINES))
    t.match(answer, /^HTTP\/1\.1 101 /)
    await eventually(() => upgrades.length === 1, { what: 'the upgrade at the upstream' })
    t.same(clientAddressHeaders(upgrades[0]!), [], 'none reached the upstream')
  })

  await t.test('from the trusted proxy they pass, as that proxy wrote them', async (t) => {
    const lines = CLIENT_ADDRESS_HEADERS.map((name) => `${oddCases(name)[0]}: 192.0.2.7\r\n`).join('')
    const answer = await rawExchange(
      port,
      `GET /echo HTTP/1.1\r\nHost: app.example\r\n${lines}Connection: close\r\n\r\n`,
      TRUSTED,
    )
    t.match(answer, /^HTTP\/1\.1 200 /)
    for (const name of CLIENT_ADDRESS_HEADERS) t.equal(lastReceived()[name], '192.0.2.7', `HTTP/1.1: ${name}`)

    t.equal(await h2Get(sidecar.proxyUrl, { localAddress: TRUSTED }), 200)
    t.equal(lastReceived()['x-forwarded-for'], TRUSTED, 'the request came from the trusted proxy')
    for (const name of CLIENT_ADDRESS_HEADERS) {
      t.equal(lastReceived()[name], '10.6.6.6, 10.6.6.7', `h2c: ${name}, both values`)
    }
    t.equal(await h2Get(towardsH2c.proxyUrl, { localAddress: TRUSTED }), 200)
    for (const name of CLIENT_ADDRESS_HEADERS) {
      t.ok(h2cUpstream.received.at(-1)![name] !== undefined, `towards an h2c upstream: ${name}`)
    }

    const upgraded = await rawExchange(port, wsRequest(lines), TRUSTED)
    t.match(upgraded, /^HTTP\/1\.1 101 /)
    await eventually(() => upgrades.length === 2, { what: 'the second upgrade at the upstream' })
    for (const name of CLIENT_ADDRESS_HEADERS) t.equal(upgrades[1]![name], '192.0.2.7', `upgrade: ${name}`)
  })
})
