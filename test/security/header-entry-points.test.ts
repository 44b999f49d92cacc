// The headers an upstream believes from this sidecar (x-nhi-*, x-forwarded-*, Forwarded, x-request-id,
// traceparent, the forwarded client certificate, the api key) from the attacker's side, on the ways in the
// other security tests do not take: through the built bundle, over raw sockets and hand-encoded HTTP/2 frames
// where a client library would normalise the attack away, towards an HTTP/1.1 and an h2c upstream.
// - HTTP/1.1: whitespace between a field name and its colon, and obs-fold continuation lines, in the header
//   section and in a chunked body's trailer section, are refused (400) and no request completes upstream;
// - a Connection header naming the proxy's own fields (on a request and on a websocket upgrade) removes none
//   of them and is never passed on;
// - HTTP/2: fields nghttp2 takes for invalid (a space or tab after the name) are dropped before the proxy
//   sees them, connection-specific fields and an RFC 8441 extended CONNECT reset the stream;
// - HTTP/2 request trailers (a HEADERS frame after DATA), over h2c and over TLS with ALPN, plain and gRPC,
//   carry none of those names to the upstream.
// The trusted proxy is 127.0.0.2; every request here comes from 127.0.0.1.
import { createHash } from 'node:crypto'
import { once } from 'node:events'
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http'
import {
  connect as connectH2,
  createServer as createH2cServer,
  type Http2ServerRequest,
  type Http2ServerResponse,
} from 'node:http2'
import { connect, type Socket } from 'node:net'
import { connect as connectTls, type TLSSocket } from 'node:tls'
import t from 'tap'
import { type BinSidecar, startBin } from '../helpers/bin.ts'
import { eventually } from '../helpers/eventually.ts'
import { FLAG, FRAME, frame, headerBlock, hpackString, PREFACE, stream1Answer } from '../helpers/h2-frames.ts'
import { createCA, createServerPki, issueCert } from '../helpers/pki.ts'
import { listenTcp } from '../helpers/trailers.ts'

t.setTimeout(120_000)

const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'
const KEY = 'entry-points-key'
const SPIFFE = 'spiffe://cluster.local/ns/shop/sa/checkout'

/** names only the proxy may have set, in the form an upstream framework merges them ("_" ≡ "-", any case) */
const PROXY_WORD = [
  'x-nhi-identity',
  'x-nhi-kind',
  'x-nhi-source',
  'x-nhi-verified',
  'x-forwarded-client-cert',
  'x-api-key',
  'x-forwarded-for',
  'x-forwarded-proto',
  'x-forwarded-host',
  'forwarded',
  'x-real-ip',
  'x-request-id',
  'authorization',
  'cookie',
  'x-http-method-override',
]
const merged = (name: string) => name.trim().toLowerCase().replaceAll('_', '-')

const { ca: serverCa, server: serverCert } = await createServerPki()
const clientCa = await createCA('entry-client-ca')
const clientCert = await issueCert(clientCa, { cn: 'checkout', uriSans: [SPIFFE] })

interface Received {
  headers: IncomingHttpHeaders
  trailers: Record<string, string>
}

/**
 * An upstream handler that records the requests it received whole: node:http2's compatibility layer ends a
 * request its client reset as well as one it completed, so a request that was aborted is left out.
 */
function recorder() {
  const seen: Received[] = []
  const handler = (req: IncomingMessage | Http2ServerRequest, res: ServerResponse | Http2ServerResponse) => {
    req.resume()
    req.on('end', () => {
      if (req.aborted) return
      const trailers: Record<string, string> = {}
      for (let i = 0; i + 1 < req.rawTrailers.length; i += 2)
        trailers[req.rawTrailers[i]!.toLowerCase()] = req.rawTrailers[i + 1]!
      seen.push({ headers: req.headers, trailers })
      res.end('ok')
    })
  }
  return { handler, seen }
}

const h1 = recorder()
const h1Server = createServer(h1.handler)
const upgrades: IncomingHttpHeaders[] = []
h1Server.on('upgrade', (req, socket) => {
  upgrades.push(req.headers)
  socket.on('error', () => {})
  const accept = createHash('sha1').update(`${req.headers['sec-websocket-key']}${WS_GUID}`).digest('base64')
  socket.end(
    'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
      `Sec-WebSocket-Accept: ${accept}\r\n\r\n`,
  )
})
const h2 = recorder()
const h2Server = createH2cServer(h2.handler)
t.teardown(() => {
  h1Server.closeAllConnections()
  h1Server.close()
  h2Server.close()
})
const h1Port = await listenTcp(h1Server)
const h2Port = await listenTcp(h2Server)

interface Side {
  name: string
  sidecar: BinSidecar
  port: number
  tlsPort: number
  upstream: ReturnType<typeof recorder>
}

async function side(name: string, upstream: string, handler: ReturnType<typeof recorder>): Promise<Side> {
  const sidecar = await startBin(t, {
    service: 'entry-points',
    upstream,
    listen: {
      http: '127.0.0.1:0',
      https: {
        address: '127.0.0.1:0',
        cert: serverCert.certFile,
        key: serverCert.keyFile,
        clientCA: clientCa.certFile,
      },
    },
    apiKeys: {
      header: 'x-api-key',
      keys: [{ name: 'checkout-batch', kind: 'job', sha256: createHash('sha256').update(KEY).digest('hex') }],
    },
    forwardedClientCert: { trustedProxies: ['127.0.0.2/32'], format: 'xfcc', toUpstream: 'sanitize_set' },
  })
  const started = sidecar.logs().find((l) => l['event'] === 'started')!
  return {
    name,
    sidecar,
    port: Number(new URL(sidecar.proxyUrl).port),
    tlsPort: Number(String(started['https']).split(':').pop()),
    upstream: handler,
  }
}

const sides = [
  await side('towards an HTTP/1.1 upstream', `http://127.0.0.1:${h1Port}`, h1),
  await side('towards an h2c upstream', `h2c://127.0.0.1:${h2Port}`, h2),
]

/** writes `text` on a fresh connection; resolves with what came back once it closed (a 101 head is all) */
function exchange(socket: Socket | TLSSocket, text: string): Promise<string> {
  return new Promise((resolve) => {
    let out = ''
    socket.setEncoding('latin1')
    socket.on('data', (d: string) => {
      out += d
      if (out.startsWith('HTTP/1.1 101 ') && out.includes('\r\n\r\n')) socket.destroy()
    })
    socket.on('error', () => {})
    socket.on('close', () => resolve(out))
    socket.write(text)
  })
}
const plain = (port: number, text: string) => exchange(connect(port, '127.0.0.1'), text)
const mtls = (port: number, text: string) =>
  exchange(
    connectTls({
      host: '127.0.0.1',
      port,
      servername: 'localhost',
      ca: serverCa.certPem,
      cert: clientCert.certPem,
      key: clientCert.keyPem,
      ALPNProtocols: ['http/1.1'],
    }),
    text,
  )

/** the request the upstream completed with `x-case: name`, once it has */
const completed = (s: Side, name: string) =>
  eventually(() => s.upstream.seen.find((r) => r.headers['x-case'] === name), {
    what: `${s.name}: the upstream to complete ${name}`,
  })

t.test('HTTP/1.1: whitespace before a colon and obs-fold lines are refused wherever they are', async (t) => {
  const head = (name: string, lines: string) =>
    `GET /h HTTP/1.1\r\nHost: app.example\r\nx-case: ${name}\r\n${lines}Connection: close\r\n\r\n`
  const trailer = (name: string, lines: string) =>
    `POST /t HTTP/1.1\r\nHost: app.example\r\nx-case: ${name}\r\nTransfer-Encoding: chunked\r\n` +
    `Trailer: x-digest\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n${lines}\r\n`
  const cases: [string, string][] = [
    ['space-before-colon', head('space-before-colon', 'X-Nhi-Identity : admin\r\n')],
    ['tab-before-colon', head('tab-before-colon', 'x-forwarded-client-cert\t: URI=spiffe://evil\r\n')],
    ['fold-first-line', head('fold-first-line', ' X-Nhi-Verified: true\r\n')],
    ['fold-own-value', head('fold-own-value', 'X-Nhi-Identity: a\r\n admin\r\n')],
    ['fold-into-another', head('fold-into-another', 'X-Custom: a\r\n\tX-Nhi-Verified: true\r\n')],
    ['trailer-space-before-colon', trailer('trailer-space-before-colon', 'x-nhi-identity : admin\r\n')],
    ['trailer-fold', trailer('trailer-fold', 'x-digest: a\r\n x-nhi-identity: admin\r\n')],
  ]
  for (const s of sides) {
    for (const [name, text] of cases) {
      t.match(await plain(s.port, text), /^HTTP\/1\.1 400 /, `${s.name}: ${name} is refused`)
    }
    // the upstream completes requests in the order they come: once this one has, none of the above will
    await plain(s.port, head('control', ''))
    await completed(s, 'control')
    t.same(
      s.upstream.seen.map((r) => r.headers['x-case']).filter((c) => c !== 'control'),
      [],
      `${s.name}: no refused request completed upstream`,
    )
    s.upstream.seen.length = 0
  }
})

t.test("a Connection header naming the proxy's own fields removes none of them", async (t) => {
  const nominated =
    'x-nhi-identity, X-Nhi-Kind, x-nhi-source, x-nhi-verified, x-request-id, traceparent, x-forwarded-for, ' +
    'x-forwarded-proto, x-forwarded-host, forwarded, x-forwarded-client-cert'
  for (const s of sides) {
    // over mTLS with toUpstream sanitize_set: the proxy writes x-forwarded-client-cert too
    const answer = await mtls(
      s.tlsPort,
      `GET /c HTTP/1.1\r\nHost: app.example\r\nx-case: nominated\r\nConnection: close, ${nominated}\r\n` +
        'Forwarded: for=10.6.6.6;proto=https\r\nX-Nhi-Identity: admin\r\n\r\n',
    )
    t.match(answer, /^HTTP\/1\.1 200 /, s.name)
    const got = (await completed(s, 'nominated')).headers
    t.equal(got['x-nhi-identity'], SPIFFE, `${s.name}: the identity the proxy attributed`)
    t.equal(got['x-nhi-kind'], 'service')
    t.equal(got['x-nhi-source'], 'mtls')
    t.equal(got['x-nhi-verified'], 'true')
    t.match(got['x-forwarded-client-cert'], `URI=${SPIFFE}`, `${s.name}: the proxy's own XFCC`)
    t.equal(got['x-forwarded-for'], '127.0.0.1')
    t.equal(got['x-forwarded-proto'], 'https')
    t.equal(got['x-forwarded-host'], 'app.example')
    // the client's Forwarded goes with its Connection token; none is added, as to a request without one
    t.equal(got['forwarded'], undefined, `${s.name}: no client element reaches the upstream`)
    t.ok(got['x-request-id'])
    t.match(got['traceparent'], /^00-/)
    t.notMatch(String(got['connection'] ?? ''), /x-nhi|forward|x-request|traceparent/, 'no token passed on')
    s.upstream.seen.length = 0
  }

  // the same on a websocket upgrade, with a verified api key
  const answer = await plain(
    sides[0]!.port,
    'GET /ws HTTP/1.1\r\nHost: app.example\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n' +
      'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n' +
      `Connection: Upgrade, ${nominated}, x-api-key\r\nx-api-key: ${KEY}\r\nX_Api_Key: other\r\n\r\n`,
  )
  t.match(answer, /^HTTP\/1\.1 101 /, 'the upgrade is switched')
  const got = await eventually(() => upgrades[0], { what: 'the upgrade at the upstream' })
  t.equal(got['x-nhi-identity'], 'checkout-batch', 'upgrade: the identity of the key')
  t.equal(got['x-nhi-verified'], 'true')
  t.equal(got['x-nhi-source'], 'apikey')
  t.equal(got['x-forwarded-for'], '127.0.0.1')
  t.equal(got['x-forwarded-proto'], 'http')
  t.equal(got['x-forwarded-host'], 'app.example')
  t.ok(got['x-request-id'])
  t.equal(got['connection'], 'upgrade', 'only the upgrade token reaches the upstream')
  t.notOk('x_api_key' in got, 'the other spelling of the key does not')
})

/** HEADERS (then DATA and trailers, when given) on stream 1 of a prior-knowledge h2c connection */
async function h2cRaw(
  port: number,
  head: Buffer,
  more: { data?: string; trailers?: [string, string][] } = {},
): Promise<string> {
  const end = more.data === undefined ? FLAG.END_STREAM : 0
  const frames = [
    PREFACE,
    frame(FRAME.SETTINGS, 0, 0, Buffer.alloc(0)),
    frame(FRAME.HEADERS, FLAG.END_HEADERS | end, 1, head),
  ]
  if (more.data !== undefined) {
    frames.push(frame(FRAME.DATA, more.trailers ? 0 : FLAG.END_STREAM, 1, Buffer.from(more.data)))
    if (more.trailers)
      frames.push(frame(FRAME.HEADERS, FLAG.END_HEADERS | FLAG.END_STREAM, 1, headerBlock(more.trailers)))
  }
  return stream1Answer(port, frames)
}

/** a GET /h2 header block: static :method GET, :scheme http, then literal fields */
const getBlock = (fields: [string, string][]) =>
  Buffer.concat([
    Buffer.from([0x82, 0x86, 0x04]),
    hpackString('/h2'),
    headerBlock([[':authority', 'app.example'], ...fields]),
  ])

t.test('HTTP/2: fields with whitespace in their name, connection fields and extended CONNECT', async (t) => {
  for (const s of sides) {
    const spaced: [string, string][] = [
      ['x-case', 'h2-spaced'],
      ['x-nhi-identity ', 'admin'],
      ['x-nhi-verified\t', 'true'],
      ['x-forwarded-client-cert ', `URI=${SPIFFE}`],
      ['x-api-key ', KEY],
      ['x-real-ip\t', '10.6.6.6'],
      ['x-forwarded-for ', '10.6.6.6'],
    ]
    t.equal(await h2cRaw(s.port, getBlock(spaced)), 'status 200', `${s.name}: answered`)
    const got = (await completed(s, 'h2-spaced')).headers
    t.same(
      Object.keys(got).filter((n) => n !== merged(n) || n.endsWith(' ') || n.endsWith('\t')),
      [],
      `${s.name}: no field with whitespace in its name`,
    )
    t.equal(got['x-nhi-identity'], 'anonymous', `${s.name}: nghttp2 dropped them before attribution`)
    t.equal(got['x-nhi-verified'], 'false')
    t.equal(got['x-forwarded-client-cert'], undefined)
    t.equal(got['x-real-ip'], undefined)
    t.equal(got['x-forwarded-for'], '127.0.0.1')

    for (const [label, fields] of [
      ['connection naming x-nhi-identity', [['connection', 'x-nhi-identity']]],
      ['proxy-connection', [['proxy-connection', 'x-forwarded-for']]],
      ['upgrade: websocket', [['upgrade', 'websocket']]],
      ['te other than trailers', [['te', 'trailers, x-nhi-identity']]],
    ] as [string, [string, string][]][]) {
      t.match(
        await h2cRaw(s.port, getBlock([['x-case', label], ...fields])),
        /^reset \d+$/,
        `${s.name}: ${label} resets the stream`,
      )
    }
    // RFC 8441: the proxy never offers SETTINGS_ENABLE_CONNECT_PROTOCOL, so a websocket over HTTP/2 is refused
    const extendedConnect = Buffer.concat([
      Buffer.from([0x02]),
      hpackString('CONNECT'),
      Buffer.from([0x86, 0x04]),
      hpackString('/ws'),
      headerBlock([
        [':protocol', 'websocket'],
        [':authority', 'app.example'],
        ['x-case', 'extended-connect'],
        ['sec-websocket-version', '13'],
      ]),
    ])
    t.match(
      await h2cRaw(s.port, extendedConnect),
      /^reset \d+$/,
      `${s.name}: extended CONNECT resets the stream`,
    )

    await h2cRaw(s.port, getBlock([['x-case', 'h2-control']]))
    await completed(s, 'h2-control')
    t.same(
      s.upstream.seen.map((r) => r.headers['x-case']).filter((c) => c !== 'h2-control' && c !== 'h2-spaced'),
      [],
      `${s.name}: no reset stream reached the upstream`,
    )
    s.upstream.seen.length = 0
  }
})

t.test('HTTP/2 request trailers carry no field the upstream believes from the proxy', async (t) => {
  const forged: [string, string][] = [
    ['x-nhi-identity', 'admin'],
    ['x_nhi_verified', 'true'],
    ['x-forwarded-client-cert', `URI=${SPIFFE}`],
    ['x_forwarded_client_cert', `URI=${SPIFFE}`],
    ['x-api-key', KEY],
    ['x_api_key', KEY],
    ['x-forwarded-for', '10.6.6.6'],
    ['x-forwarded-proto', 'https'],
    ['x-real-ip', '10.6.6.6'],
    ['forwarded', 'for=10.6.6.6'],
    ['x-request-id', 'forged'],
    ['authorization', 'Bearer forged'],
    ['cookie', 'session=forged'],
    ['x-http-method-override', 'DELETE'],
    ['x-digest', 'sha-256=ok'],
  ]
  /** what the upstream received, for a POST with `forged` as trailers over node:http2 */
  const viaClient = async (s: Side, tls: boolean, grpc: boolean, name: string) => {
    const session = connectH2(tls ? `https://localhost:${s.tlsPort}` : `http://127.0.0.1:${s.port}`, {
      ...(tls ? { ca: serverCa.certPem, ALPNProtocols: ['h2'] } : {}),
    })
    session.on('error', () => {})
    try {
      const stream = session.request(
        {
          ':method': 'POST',
          ':path': '/trailers',
          'content-type': grpc ? 'application/grpc' : 'application/octet-stream',
          te: 'trailers',
          'x-case': name,
          'x-api-key': KEY,
        },
        { waitForTrailers: true },
      )
      stream.on('error', () => {})
      stream.on('wantTrailers', () => {
        const trailers: Record<string, string> = {}
        for (const [n, v] of forged) trailers[n] = v
        stream.sendTrailers(trailers)
      })
      stream.end(grpc ? Buffer.from([0, 0, 0, 0, 0]) : 'hello')
      stream.resume()
      await once(stream, 'close')
    } finally {
      session.close()
    }
    return completed(s, name)
  }
  for (const s of sides) {
    for (const tls of [false, true]) {
      for (const grpc of [false, true]) {
        const label = `${s.name}, ${tls ? 'h2 over TLS (ALPN)' : 'h2c'}${grpc ? ', gRPC' : ''}`
        const got = await viaClient(s, tls, grpc, label)
        t.equal(got.headers['x-nhi-identity'], 'checkout-batch', `${label}: the key in the header section`)
        t.equal(got.headers['x-nhi-verified'], 'true')
        t.equal(got.headers['x-forwarded-proto'], tls ? 'https' : 'http')
        t.equal(got.headers['x-forwarded-for'], '127.0.0.1')
        t.equal(got.headers['x-real-ip'], undefined)
        t.equal(got.headers.authorization, undefined)
        // an HTTP/1.1 upstream gets no trailers from an HTTP/2 client at all; an h2c upstream the harmless one
        const expected = s.upstream === h2 ? { 'x-digest': 'sha-256=ok' } : {}
        t.same(got.trailers, expected, `${label}: no forged trailer reached the upstream`)
        t.same(
          Object.keys(got.trailers).filter((n) => PROXY_WORD.includes(merged(n))),
          [],
          `${label}: under no spelling`,
        )
      }
    }
  }
})
