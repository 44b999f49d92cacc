// Requests node:http parses but the HTTP/1.1 listener refuses itself, as bytes it cannot read: a request line
// in another version than HTTP/1.x (505), an HTTP/1.0 request with Transfer-Encoding (400, RFC 9112 §6.1).
// Each is answered after the requests ahead of it, the connection closed, and nothing of it or behind it
// reaches the upstream: node:http with its strict parser, which keeps every request it parsed.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import t, { type Test } from 'tap'
import { listenUntilTeardown, rawExchange } from '../helpers/net.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

/** the payload: a whole request, padded to a fixed length whose hex has letters (0x5c) */
const PAYLOAD_LENGTH = 0x5c
function payload(id: number): string {
  const head = `GET /smuggled/${id} HTTP/1.1\r\nHost: app.example\r\nX-Pad: `
  return `${head}${'z'.repeat(PAYLOAD_LENGTH - head.length - 4)}\r\n\r\n`
}

const hex = (n: number) => n.toString(16)

// ---- the recording upstream -------------------------------------------------------------------------------

/** one request node:http parsed at an upstream */
interface Arrival {
  conn: number
  method: string
  url: string
  headers: [string, string][]
  body: string
  /** its body arrived to its end */
  complete: boolean
}

interface RecordingUpstream {
  port: number
  arrivals: Arrival[]
  /** byte streams from a front that node:http could not parse: the front sent what it did not mean */
  unparsed: { conn: number; code: string; bytes: string }[]
  /** requests begun whose body is still arriving */
  open: () => number
}

const pairs = (raw: string[]) => raw.flatMap((v, i, a): [string, string][] => (i % 2 ? [] : [[v, a[i + 1]!]]))

async function recordingUpstream(t: Test): Promise<RecordingUpstream> {
  const arrivals: Arrival[] = []
  const unparsed: RecordingUpstream['unparsed'] = []
  const received = new WeakMap<Socket, { conn: number; bytes: string }>()
  let connections = 0
  let open = 0
  const onRequest = (req: IncomingMessage, res: ServerResponse) => {
    const arrival: Arrival = {
      conn: received.get(req.socket)?.conn ?? 0,
      method: req.method ?? '',
      url: req.url ?? '',
      headers: pairs(req.rawHeaders),
      body: '',
      complete: false,
    }
    arrivals.push(arrival)
    open++
    req.setEncoding('latin1')
    req.on('data', (c: string) => {
      arrival.body += c
    })
    req.on('close', () => {
      if (!arrival.complete) open--
    })
    req.on('end', () => {
      arrival.complete = true
      open--
      res.writeHead(200, { 'content-type': 'text/plain' })
      res.end(`ok ${arrival.url}`)
    })
  }
  // strict: llhttp as node:http runs it by default, insecureHTTPParser off
  const server = createServer({ insecureHTTPParser: false, keepAliveTimeout: 30_000 }, onRequest)
  // an Expect the front passed on is the request's, not the upstream's to refuse
  server.on('checkExpectation', onRequest)
  server.on('connection', (socket: Socket) => {
    const record = { conn: ++connections, bytes: '' }
    received.set(socket, record)
    socket.on('data', (c: Buffer) => {
      // for the report of what could not be parsed: the first bytes are enough
      if (record.bytes.length < 4096) record.bytes += c.toString('latin1')
    })
  })
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
    // a front that closes its pooled connection: not a parse failure
    if (err.code !== 'ECONNRESET' && err.code !== 'HPE_INVALID_EOF_STATE') {
      const record = received.get(socket)
      unparsed.push({ conn: record?.conn ?? 0, code: err.code ?? String(err), bytes: record?.bytes ?? '' })
    }
    socket.destroy()
  })
  const port = await listenUntilTeardown(t, server)
  return { port, arrivals, unparsed, open: () => open }
}

// ---- the cases -----------------------------------

const versionRefusal = 'HTTP/1.1 505 HTTP Version Not Supported\r\nConnection: close\r\n\r\n'

t.test('a request line in HTTP/2.0 or HTTP/0.9: 505, and nothing of it or behind it forwarded', async (t) => {
  const upstream = await recordingUpstream(t)
  const sidecar = await startTestSidecar(t, { upstream: `http://127.0.0.1:${upstream.port}` })
  const port = sidecar.proxyAddress.port
  const after = (path: string) => `GET ${path} HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n`
  // llhttp takes both versions; node:http gave the request on with httpVersionMajor 2, which the proxy reads as
  // an HTTP/2 stream's: no Host needed, no check of an absolute-form target's authority against Host
  t.equal(
    await rawExchange(
      port,
      `GET http://other.example/v1 HTTP/2.0\r\nHost: app.example\r\n\r\n${after('/v1-after')}`,
    ),
    versionRefusal,
    'HTTP/2.0 with an absolute-form target of another authority than Host: 505, the connection closed',
  )
  t.equal(
    await rawExchange(port, `POST /v2 HTTP/2.0\r\nContent-Length: 3\r\n\r\nabc${after('/v2-after')}`),
    versionRefusal,
    'HTTP/2.0 without a Host: 505',
  )
  const pipelined = await rawExchange(
    port,
    `GET /v3-first HTTP/1.1\r\nHost: app.example\r\n\r\nGET /v3 HTTP/0.9\r\nHost: app.example\r\n\r\n${after('/v3-after')}`,
  )
  t.match(
    pipelined,
    /^HTTP\/1\.1 200 OK\r\n[\s\S]*ok \/v3-first/,
    'the request ahead of it has its answer first',
  )
  t.ok(
    pipelined.endsWith(versionRefusal) &&
      pipelined.indexOf(versionRefusal) > pipelined.indexOf('ok /v3-first'),
    'then the 505, then the close',
  )
  t.same(
    upstream.arrivals.map((a) => a.url),
    ['/v3-first'],
    'the upstream got the request ahead of it, nothing of the refused ones or of those behind them',
  )
})

t.test(
  'an HTTP/1.0 request with Transfer-Encoding: 400, and nothing of it or behind it forwarded',
  async (t) => {
    const upstream = await recordingUpstream(t)
    const sidecar = await startTestSidecar(t, { upstream: `http://127.0.0.1:${upstream.port}` })
    const port = sidecar.proxyAddress.port
    // RFC 9112 §6.1: its framing is faulty, whatever an HTTP/1.0 hop in front made of the body; llhttp decodes it
    const chunkedBody = `${hex(PAYLOAD_LENGTH)}\r\n${payload(0)}\r\n0\r\n\r\n`
    const after = 'GET /t-after HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n'
    for (const [name, fields] of [
      ['keep-alive', 'Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n'],
      ['with a Content-Length', `Content-Length: ${chunkedBody.length}\r\nTransfer-Encoding: chunked\r\n`],
    ]) {
      t.equal(
        await rawExchange(
          port,
          `POST /t HTTP/1.0\r\nHost: app.example\r\n${fields}\r\n${chunkedBody}${after}`,
        ),
        'HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n',
        `${name}: 400, the connection closed`,
      )
    }
    t.same(upstream.arrivals, [], 'the upstream got nothing')
  },
)
