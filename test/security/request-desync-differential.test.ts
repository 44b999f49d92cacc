// Requests node:http parses that the proxy answers itself: a request line in another version than HTTP/1.x
// (505) and an HTTP/1.0 request with Transfer-Encoding (400, RFC 9112 §6.1), refused by the listener as bytes
// it cannot read: each answered after the requests ahead of it, the connection closed, nothing of it or behind
// it forwarded; an HTTP/1.1 request without Host (400) and an Expect other than 100-continue (417), answered
// and recorded by the proxy, which reads on. The upstream is node:http with its strict parser, which keeps
// every request it parsed.
import { createServer, type IncomingMessage, type ServerResponse, STATUS_CODES } from 'node:http'
import type { Socket } from 'node:net'
import t, { type Test } from 'tap'
import { eventually } from '../helpers/eventually.ts'
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

// ---- the client's side ----------------------------------------------------------------------------------

interface Answer {
  status: number
  /** node:http's own answer to what its parser refused (the listener's, not the proxy's) */
  listener: boolean
}

/** the final answers a client read, in order (1xx left out) */
function answersIn(text: string): Answer[] {
  const answers: Answer[] = []
  for (const m of text.matchAll(/HTTP\/1\.[01] (\d{3}) [^\r\n]*\r\n/g)) {
    const status = Number(m[1])
    if (status < 200) continue
    // the listener's answers are these bytes exactly (listeners.ts); the proxy's carry fields of their own
    const listener = text.startsWith(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nConnection: close\r\n\r\n`,
      m.index,
    )
    answers.push({ status, listener })
  }
  return answers
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
  'no Host, or an Expect other than 100-continue: the proxy answers, records it, and reads on',
  async (t) => {
    const upstream = await recordingUpstream(t)
    const sidecar = await startTestSidecar(t, {
      upstream: `http://127.0.0.1:${upstream.port}`,
      audit: { output: 'off', ringSize: 100 },
    })
    const port = sidecar.proxyAddress.port
    const after = (path: string) => `GET ${path} HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n`
    const statuses = (text: string) => answersIn(text).map((a) => a.status)
    // node:http answered 400 itself and closed, but read on: the request behind it reached the upstream, and its
    // client never had an answer
    const noHost = await rawExchange(
      port,
      `POST /h1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc${after('/h1-after')}`,
    )
    t.same(statuses(noHost), [400, 200], 'no Host: 400, then the request behind it answered')
    // node:http answered 417 itself: a request no one recorded
    const expect = await rawExchange(
      port,
      `POST /e1 HTTP/1.1\r\nHost: app.example\r\nExpect: x-unknown\r\nContent-Length: 3\r\n\r\nabc${after('/e1-after')}`,
    )
    t.same(statuses(expect), [417, 200], 'Expect: x-unknown: 417, then the request behind it answered')
    t.same(
      upstream.arrivals.map((a) => a.url),
      ['/h1-after', '/e1-after'],
      'the upstream got the requests behind them, each answered',
    )
    const ring = await eventually(
      async () => {
        const { events } = (await (await fetch(`${sidecar.adminUrl}/audit?limit=100`)).json()) as {
          events: { path: string; status: number }[]
        }
        return events.length >= 4 ? events : undefined
      },
      { what: 'four audit lines' },
    )
    t.same(
      ring.map((e) => `${e.path} ${e.status}`).sort(),
      ['/e1 417', '/e1-after 200', '/h1 400', '/h1-after 200'],
      'each request answered has its audit line',
    )
  },
)

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
