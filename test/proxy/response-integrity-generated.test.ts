// Response integrity end to end, on generated responses: every answer an HTTP/1.1 upstream (node:http) or an
// h2c upstream (node:http2, DATA in random sizes, trailers-only answers among them) gives reaches the client through the built proxy intact: its status, each end-to-end field with its values, its
// body bytes and its trailers, to HTTP/1.1 clients (GET and HEAD, keep-alive) and to h2c clients. Each
// response is drawn from a grammar: a status (with no body for 204 and 304), up to six end-to-end fields
// (repeated names, `set-cookie` twice), maybe a field the upstream names in `Connection` (its own hop's, never
// passed on), a body of every size class written in random pieces, framed by Content-Length or chunked,
// maybe trailers announced in `Trailer`, maybe a `103 Early Hints` first. The upstream finds the response a
// request asks for by its `x-case` header. What the proxy promises about response trailers
// (docs/reference.md, "HTTP/2 and gRPC"): they are passed on, on HTTP/2 and on HTTP/1.1 when the client sent
// `TE: trailers`, minus hop-by-hop fields, those the head's `Connection` lists, and `Content-Length`.
//
// Not asserted: whether a `103` reaches the client (the HTTP/1.1 engine skips interim answers, see
// "Deviations"), the proxy's own response fields (not in the alphabet below), the framing fields.
import { createHash } from 'node:crypto'
import { once } from 'node:events'
import { Agent, createServer, request as h1request, type IncomingHttpHeaders } from 'node:http'
import {
  createServer as createH2Server,
  type IncomingHttpHeaders as H2Headers,
  connect as h2connect,
  type OutgoingHttpHeaders,
} from 'node:http2'
import fc from 'fast-check'
import t, { type Test } from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { inParallel } from '../helpers/limit.ts'
import { listenUntilTeardown } from '../helpers/net.ts'
import { PROPERTY_SEED } from '../helpers/property.ts'
import { rng } from '../helpers/rng.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

/** responses per property: a few seconds each on a loaded machine */
const CASES = 150
/** requests in flight at once, per client */
const CONCURRENCY = 6

// ---- the grammar ------------------------------------------------------------------------------------------

const weighted = <T>(...choices: [T, number][]) =>
  fc.oneof(...choices.map(([value, weight]) => ({ arbitrary: fc.constant(value), weight })))

/** names that may repeat (Node joins their values with ", ", set-cookie into a list) */
const REPEATABLE = ['x-a', 'x-b', 'set-cookie', 'link']
/** names Node keeps one value of: never repeated */
const SINGLE = ['etag', 'content-type', 'content-language']
/** every name compared: what the upstream sent under it must be what the client got, absent included */
const COMPARED = [...REPEATABLE, ...SINGLE, 'x-hop', 'x-trailer-only']
const VALUE_CHARS = [...'abcdefghijXYZ0123456789-_.:;/=+*()[]{}?!@#$%&~'] // visible ASCII, no comma, no quote

const value = fc.string({ unit: fc.constantFrom(...VALUE_CHARS), minLength: 1, maxLength: 16 })
const field = fc.oneof(
  {
    arbitrary: fc.tuple(fc.constantFrom(...REPEATABLE), fc.array(value, { minLength: 1, maxLength: 3 })),
    weight: 3,
  },
  {
    arbitrary: fc.tuple(
      fc.constantFrom(...SINGLE),
      value.map((v) => [v]),
    ),
    weight: 1,
  },
)

const BODY_SIZES = fc.oneof(
  { arbitrary: fc.constant(0), weight: 2 },
  { arbitrary: fc.integer({ min: 1, max: 200 }), weight: 3 },
  { arbitrary: fc.integer({ min: 15 * 1024, max: 17 * 1024 }), weight: 2 },
  { arbitrary: fc.integer({ min: 64 * 1024, max: 76 * 1024 }), weight: 2 },
  { arbitrary: fc.integer({ min: 76 * 1024, max: 300 * 1024 }), weight: 1 },
)

const responseCase = fc
  .record({
    status: fc.constantFrom(200, 201, 204, 206, 301, 304, 400, 404, 500, 503),
    fields: fc.uniqueArray(field, { maxLength: 6, selector: ([name]) => name }),
    /** a field the upstream names in `Connection`: its own hop's */
    hop: weighted([false, 4], [true, 1]),
    length: BODY_SIZES,
    seed: fc.integer({ min: 1, max: 0x7fffffff }),
    contentLength: fc.boolean(),
    /** trailers, announced in `Trailer` (chunked only) */
    trailers: fc.option(
      fc.uniqueArray(fc.tuple(fc.constantFrom('x-checksum', 'x-trailer-only'), value), {
        minLength: 1,
        maxLength: 2,
        selector: ([name]) => name,
      }),
      { freq: 3 },
    ),
    earlyHints: weighted([false, 5], [true, 1]),
    method: weighted(['GET', 4], ['HEAD', 1]),
    /** an HTTP/1.1 client asking for trailers (`TE: trailers`) */
    te: weighted([true, 3], [false, 1]),
  })
  .map((c) => {
    const bodiless = c.status === 204 || c.status === 304
    return {
      ...c,
      length: bodiless ? 0 : c.length,
      // node:http sends trailers with a chunked body only, and refuses a `Trailer` field without one
      trailers: bodiless || c.contentLength || c.method === 'HEAD' ? null : c.trailers,
    }
  })
type ResponseCase = typeof responseCase extends fc.Arbitrary<infer T> ? T : never

function bodyBytes(length: number, seed: number): Buffer {
  const next = rng(seed)
  const body = Buffer.allocUnsafe(length)
  for (let i = 0; i < length; i++) body[i] = (next() * 256) | 0
  return body
}

/** the body in random pieces, some of one byte, some of many KiB */
function pieces(body: Buffer, seed: number): Buffer[] {
  const next = rng(seed ^ 0x5a5a5a5a)
  const out: Buffer[] = []
  for (let at = 0; at < body.length; ) {
    const size = next() < 0.2 ? 1 + ((next() * 8) | 0) : 1 + ((next() * 40 * 1024) | 0)
    out.push(body.subarray(at, at + size))
    at += size
  }
  return out
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex')

// ---- the upstream ------------------------------------------------------------------------------------------

interface Prepared {
  c: ResponseCase
  body: Buffer
  sha256: string
}

async function caseUpstream(t: Test, cases: Prepared[]): Promise<string> {
  const server = createServer((req, res) => {
    const p = cases[Number(req.headers['x-case'])]
    if (p === undefined) {
      res.writeHead(599).end()
      return
    }
    const { c, body } = p
    if (c.earlyHints) res.writeEarlyHints({ link: '</style.css>; rel=preload; as=style' })
    for (const [name, values] of c.fields) res.setHeader(name, values.length === 1 ? values[0]! : values)
    if (c.hop) {
      res.setHeader('connection', 'keep-alive, x-hop')
      res.setHeader('x-hop', 'this hop only')
    }
    if (c.trailers) res.setHeader('trailer', c.trailers.map(([name]) => name).join(', '))
    if (c.contentLength && c.status !== 204) res.setHeader('content-length', body.length)
    res.writeHead(c.status)
    if (req.method === 'HEAD') {
      res.end()
      return
    }
    const parts = pieces(body, c.seed)
    let i = 0
    const write = () => {
      while (i < parts.length) if (!res.write(parts[i++]!)) return void res.once('drain', write)
      if (c.trailers) res.addTrailers(Object.fromEntries(c.trailers))
      res.end()
    }
    write()
  })
  const port = await listenUntilTeardown(t, server)
  return `http://127.0.0.1:${port}`
}

/**
 * The same responses from a node:http2 server, over h2c: DATA in the same random pieces, trailers sent when
 * the body ends, and an answer without body or trailers as one HEADERS frame ending the stream (the
 * trailers-only form). HTTP/2 has no field of a hop's own, so no case names one in `Connection` here.
 */
async function h2cCaseUpstream(t: Test, cases: Prepared[]): Promise<string> {
  const server = createH2Server()
  server.on('stream', (stream, headers) => {
    stream.on('error', () => {})
    const p = cases[Number(headers['x-case'])]
    if (p === undefined) {
      stream.respond({ ':status': 599 }, { endStream: true })
      return
    }
    const { c, body } = p
    if (c.earlyHints)
      stream.additionalHeaders({ ':status': 103, link: '</style.css>; rel=preload; as=style' })
    const head: OutgoingHttpHeaders = { ':status': c.status }
    for (const [name, values] of c.fields) head[name] = values.length === 1 ? values[0]! : values
    if (c.contentLength && c.status !== 204) head['content-length'] = body.length
    const bodiless = headers[':method'] === 'HEAD' || body.length === 0
    if (bodiless && !c.trailers) {
      stream.respond(head, { endStream: true })
      return
    }
    stream.respond(head, { waitForTrailers: c.trailers !== null })
    if (c.trailers) {
      const trailers = Object.fromEntries(c.trailers)
      stream.once('wantTrailers', () => stream.sendTrailers(trailers))
    }
    const parts = pieces(body, c.seed)
    let i = 0
    const write = () => {
      while (i < parts.length) if (!stream.write(parts[i++]!)) return void stream.once('drain', write)
      stream.end()
    }
    write()
  })
  const port = await listenUntilTeardown(t, server)
  return `h2c://127.0.0.1:${port}`
}

// ---- what the client must get ------------------------------------------------------------------------------

interface Got {
  status: number
  headers: IncomingHttpHeaders | H2Headers
  body: Buffer
  trailers: Record<string, string | string[] | undefined> | undefined
}

/** the compared fields as Node's headers object reads them: repeated values joined by ", ", set-cookie a list */
function expectedFields(c: ResponseCase): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {}
  for (const [name, values] of c.fields) out[name] = name === 'set-cookie' ? values : values.join(', ')
  return out
}

function compared(headers: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const name of COMPARED) if (headers[name] !== undefined) out[name] = headers[name]
  return out
}

/** undefined when the client got what the upstream sent, else what differs */
function judge(p: Prepared, got: Got, trailersPromised: boolean): string | undefined {
  const { c } = p
  if (got.status !== c.status) return `status ${got.status}, sent ${c.status}`
  const fields = JSON.stringify(compared(got.headers as Record<string, unknown>))
  const sent = JSON.stringify(compared(expectedFields(c)))
  if (fields !== sent) return `fields ${fields}, sent ${sent}`
  const bodyExpected = c.method === 'HEAD' ? Buffer.alloc(0) : p.body
  if (got.body.length !== bodyExpected.length || sha256(got.body) !== sha256(bodyExpected))
    return `body of ${got.body.length} bytes (sha256 ${sha256(got.body)}), sent ${bodyExpected.length} (${sha256(bodyExpected)})`
  if (trailersPromised && c.trailers && c.method !== 'HEAD') {
    const want = JSON.stringify(Object.fromEntries(c.trailers))
    const gotTrailers = JSON.stringify(
      got.trailers === undefined
        ? null
        : Object.fromEntries(
            c.trailers.map(([name]) => [name, got.trailers![name]]).filter(([, v]) => v !== undefined),
          ),
    )
    if (gotTrailers !== want) return `trailers ${gotTrailers}, sent ${want}`
  }
  return undefined
}

function h1Get(port: number, agent: Agent, id: number, c: ResponseCase): Promise<Got> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { 'x-case': String(id) }
    if (c.te) headers['te'] = 'trailers'
    const req = h1request(
      { host: '127.0.0.1', port, method: c.method, path: `/r/${id}`, agent, headers },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (b: Buffer) => chunks.push(b))
        res.on('end', () =>
          resolve({
            status: res.statusCode!,
            headers: res.headers,
            body: Buffer.concat(chunks),
            trailers: res.trailers,
          }),
        )
        res.on('error', reject)
      },
    )
    req.on('error', reject)
    req.end()
  })
}

function prepare(upstream: Upstream): Prepared[] {
  return fc.sample(responseCase, { numRuns: CASES, seed: PROPERTY_SEED }).map((generated) => {
    const c = upstream.name === 'h2c' ? { ...generated, hop: false } : generated
    const body = bodyBytes(c.length, c.seed)
    return { c, body, sha256: sha256(body) }
  })
}

function tallyOf(cases: Prepared[]): string {
  const n = (f: (c: ResponseCase) => boolean) => cases.filter((p) => f(p.c)).length
  return (
    `${n((c) => c.method === 'HEAD')} HEAD; ${n((c) => c.contentLength)} with content-length; ` +
    `${n((c) => c.trailers !== null)} with trailers; ${n((c) => c.length > 64 * 1024)} over 64 KiB; ` +
    `${n((c) => c.earlyHints)} with 103; ${n((c) => c.hop)} with a Connection-named field`
  )
}

interface Upstream {
  name: 'http' | 'h2c'
  label: string
  start: (t: Test, cases: Prepared[]) => Promise<string>
}
const UPSTREAMS: Upstream[] = [
  { name: 'http', label: 'HTTP/1.1 upstream', start: caseUpstream },
  { name: 'h2c', label: 'h2c upstream', start: h2cCaseUpstream },
]

for (const upstream of UPSTREAMS) {
  t.test(`HTTP/1.1 clients get every ${upstream.label} response whole`, async (t) => {
    const started = Date.now()
    const cases = prepare(upstream)
    const sidecar = await startTestSidecar(t, { upstream: await upstream.start(t, cases) })
    const port = sidecar.proxyAddress.port
    const agent = new Agent({ keepAlive: true, maxSockets: CONCURRENCY })
    t.teardown(() => agent.destroy())
    const disagreements: { case: number; what: string; c: ResponseCase }[] = []
    await inParallel(cases.length, CONCURRENCY, async (i) => {
      const p = cases[i]!
      const what = await h1Get(port, agent, i, p.c).then(
        (got) => judge(p, got, p.c.te),
        (err: Error) => `request failed: ${err.message}`,
      )
      if (what !== undefined) disagreements.push({ case: i, what, c: p.c })
    })
    t.same(disagreements.slice(0, 5), [], `no disagreement (of ${disagreements.length})`)
    t.comment(`${CASES} responses (seed ${PROPERTY_SEED}) in ${Date.now() - started} ms: ${tallyOf(cases)}`)
  })

  t.test(`h2c clients get every ${upstream.label} response whole, trailers as HTTP/2 trailers`, async (t) => {
    const started = Date.now()
    const cases = prepare(upstream)
    const sidecar = await startTestSidecar(t, { upstream: await upstream.start(t, cases) })
    const session = h2connect(sidecar.proxyUrl)
    session.on('error', () => {})
    t.teardown(() => session.destroy())
    await once(session, 'connect')
    const disagreements: { case: number; what: string; c: ResponseCase }[] = []
    await inParallel(cases.length, CONCURRENCY, async (i) => {
      const p = cases[i]!
      const got = await new Promise<Got>((resolve, reject) => {
        const stream = session.request({ ':method': p.c.method, ':path': `/r/${i}`, 'x-case': String(i) })
        const chunks: Buffer[] = []
        let headers: H2Headers | undefined
        let trailers: H2Headers | undefined
        stream.on('response', (h) => {
          headers = h
        })
        stream.on('trailers', (h) => {
          trailers = h
        })
        stream.on('data', (b: Buffer) => chunks.push(b))
        stream.on('end', () =>
          headers === undefined
            ? reject(new Error('no response head'))
            : resolve({ status: Number(headers[':status']), headers, body: Buffer.concat(chunks), trailers }),
        )
        stream.on('error', reject)
        stream.end()
      }).catch((err: Error) => `request failed: ${err.message}`)
      const what = typeof got === 'string' ? got : judge(p, got, true)
      if (what !== undefined) disagreements.push({ case: i, what, c: p.c })
    })
    t.same(disagreements.slice(0, 5), [], `no disagreement (of ${disagreements.length})`)
    session.close()
    await eventually(() => session.destroyed, { what: 'the session to close' })
    t.comment(`${CASES} responses (seed ${PROPERTY_SEED}) in ${Date.now() - started} ms: ${tallyOf(cases)}`)
  })
}
