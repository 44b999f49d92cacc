// "Nothing lost", generated: every exchange the proxy starts is recorded exactly once, one audit line and one
// count in nhi_requests_total, with the outcome that happened, whatever the client and the upstream do. The built
// proxy (one process, then `workers: 2`) gets a seeded mix of a few hundred exchanges over HTTP/1.1 (one per
// connection, or pipelined) and h2c (one stream per session, or several at once), each with a fault of its
// client (it leaves or ends its side mid-body, leaves after the head, mid-answer or mid-pipeline; sends bytes that
// do not parse behind a request or in its body; an h2 client resets its stream or sends GOAWAY; it asks for a
// 100 Continue and never sends the body) and a behaviour of the upstream, chosen per request by a header
// (answers, slowly or never, resets before its head or mid-body, announces more than it sends, cuts a chunked
// body, closes without answering). The test keeps a ledger of what it sent and what happened, and then reads the
// audit file: one line per exchange (matched by its path, which names the case), none twice, none missing, each
// with the status, upstream_error and bytes docs/reference.md gives for what happened ("Audit events"); and the
// pod's nhi_requests_total adds up to the audit lines, per status, as nhi_upstream_errors_total does per reason.
import { readFileSync } from 'node:fs'
import { request as httpRequest, type OutgoingHttpHeaders } from 'node:http'
import { constants as h2, connect as h2connect } from 'node:http2'
import { join } from 'node:path'
import fc from 'fast-check'
import t, { type Test } from 'tap'
import {
  answerBody,
  type BehavingUpstream,
  behavingUpstream,
  FIRST_PART,
} from '../helpers/behaving-upstream.ts'
import { eventually } from '../helpers/eventually.ts'
import { FLAG, FRAME, frame, headerBlock, PREFACE } from '../helpers/h2-frames.ts'
import { metricValue, type Sample, scrapeUntil } from '../helpers/metrics.ts'
import { rawClient } from '../helpers/net.ts'
import { PROPERTY_SEED } from '../helpers/property.ts'
import { scratchDir } from '../helpers/scratch.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

/** cases per protocol: with pipelines and concurrent streams, about 300 exchanges a run */
const CASES = 100
/** cases under way at once */
const CONCURRENCY = 12
/**
 * timeouts.upstream and timeouts.request of the proxy: the answer a `hang` upstream never gives and the body a
 * 100-continue client never sends end there (504, 408); far above what any other exchange takes
 */
const DEADLINE = '4s'

// ---- the mix ------------------------------------------------------------------------------------------------

/** what the upstream does with a request once its body is in (header x-behave) */
const BEHAVIOURS = [
  'normal',
  'slow',
  /** never answers: the proxy's timeouts.upstream ends it */
  'hang',
  /** never answers: the client leaves first */
  'hold',
  /** the head and the first part of a longer body, then waits: the client leaves mid-answer */
  'stream',
  'reset-before-head',
  'close-without-answer',
  /** the head and the first part, then a reset once the client has the head */
  'reset-mid-body',
  /** Content-Length larger than the body it sends before it closes */
  'short-length',
  /** a chunked body that ends with the connection, without its last chunk */
  'cut-chunked',
] as const
type Behaviour = (typeof BEHAVIOURS)[number]
/** behaviours that cut an answer after its head went out */
const CUTTING = new Set<Behaviour>(['reset-mid-body', 'short-length', 'cut-chunked'])
/** behaviours that need an answer with content (not HEAD) */
const WITH_CONTENT = new Set<Behaviour>(['stream', ...CUTTING])

/** what the client does */
const H1_FAULTS = [
  'none',
  'abort-mid-body',
  /** the client ends its side (FIN) half-way through the body, and reads on */
  'end-mid-body',
  'abort-after-head',
  /** requests pipelined behind one the upstream holds, all forwarded, then the client leaves */
  'leave-mid-pipeline',
  /**
   * behind a request the upstream answers after a while, bytes that do not parse: the request has its own
   * answer, then the listener's 400, which answers no request
   */
  'garbage-behind',
  /** a chunked body cut half-way by a chunk that does not parse: the listener's 400 is the request's answer */
  'garbage-in-body',
  'abort-mid-response',
  'continue-then-silent',
  'continue-then-leave',
] as const
const H2_FAULTS = [
  'none',
  'abort-mid-body',
  /** the client ends its stream (END_STREAM) half-way through the body its content-length announced */
  'end-mid-body',
  'reset-before-answer',
  'reset-mid-response',
  'goaway-before-answer',
  'goaway-mid-response',
  'goaway-graceful',
  'continue-then-silent',
  'continue-then-leave',
] as const
type H1Fault = (typeof H1_FAULTS)[number]
type H2Fault = (typeof H2_FAULTS)[number]
type Fault = H1Fault | H2Fault

const weighted = <T>(...choices: [T, number][]) =>
  fc.oneof(...choices.map(([value, weight]) => ({ arbitrary: fc.constant(value), weight })))

const drawnExchange = fc.record({
  method: weighted(['GET', 4], ['POST', 4], ['PUT', 1], ['DELETE', 1], ['HEAD', 1]),
  length: fc.oneof(
    { arbitrary: fc.constant(0), weight: 2 },
    { arbitrary: fc.integer({ min: 2, max: 300 }), weight: 4 },
    { arbitrary: fc.integer({ min: 1000, max: 70_000 }), weight: 1 },
  ),
  /** HTTP/1.1: chunked rather than Content-Length; HTTP/2: content-length or END_STREAM alone */
  chunked: fc.boolean(),
  behaviour: weighted<Behaviour>(
    ['normal', 12],
    ['slow', 4],
    ['hang', 1],
    ['reset-before-head', 2],
    ['close-without-answer', 2],
    ['reset-mid-body', 2],
    ['short-length', 2],
    ['cut-chunked', 2],
  ),
  status: weighted([200, 8], [201, 1], [404, 1], [500, 1], [503, 1]),
  delayMs: fc.integer({ min: 1, max: 200 }),
})
type Drawn = typeof drawnExchange extends fc.Arbitrary<infer V> ? V : never

const drawnCase = <F extends Fault>(faults: fc.Arbitrary<F>) =>
  fc.record({
    fault: faults,
    exchanges: fc.array(drawnExchange, { minLength: 1, maxLength: 4 }),
    /** an HTTP/1.1 client that leaves resets its connection (RST) rather than closing it (FIN) */
    rst: fc.boolean(),
  })

const h1Cases = drawnCase(
  weighted<H1Fault>(
    ['none', 12],
    ['abort-mid-body', 2],
    ['end-mid-body', 1],
    ['abort-after-head', 2],
    ['leave-mid-pipeline', 2],
    ['garbage-behind', 1],
    ['garbage-in-body', 1],
    ['abort-mid-response', 2],
    ['continue-then-silent', 1],
    ['continue-then-leave', 1],
  ),
)
const h2Cases = drawnCase(
  weighted<H2Fault>(
    ['none', 12],
    ['abort-mid-body', 2],
    ['end-mid-body', 1],
    ['reset-before-answer', 2],
    ['reset-mid-response', 2],
    ['goaway-before-answer', 1],
    ['goaway-mid-response', 1],
    ['goaway-graceful', 1],
    ['continue-then-silent', 1],
    ['continue-then-leave', 1],
  ),
)

/** one exchange as planned: what is sent, what the upstream does, and the record it must leave */
interface Planned {
  path: string
  method: string
  length: number
  chunked: boolean
  behaviour: Behaviour
  status: number
  delayMs: number
  expected: Outcome
}

/** an exchange's record: status, upstream_error, and the bytes where they are known */
interface Outcome {
  status: number
  upstreamError?: 'reset' | 'timeout'
  bytesIn?: number
  bytesOut?: number
}

interface Case {
  protocol: 'h1' | 'h2'
  fault: Fault
  rst: boolean
  exchanges: Planned[]
}

/** the bytes of a client that leaves mid-body: before it leaves, the upstream has them */
const half = (length: number) => Math.floor(length / 2)

/** the record docs/reference.md gives for what the client and the upstream do */
function outcome(protocol: 'h1' | 'h2', fault: Fault, x: Omit<Planned, 'expected'>): Outcome {
  const bytesIn = x.length
  switch (fault) {
    // the client left before an answer, closing (FIN) or resetting (RST) its connection or resetting its stream:
    // 499, nginx's "client closed request"; so did one that ends its side short of the body it announced over
    // HTTP/1.1 (a FIN)
    case 'abort-mid-body':
      return { status: 499, bytesIn: half(x.length), bytesOut: 0 }
    // an h2 END_STREAM short of its content-length is a malformed request, which the HTTP/2 layer resets: 400,
    // as a body that does not parse is on HTTP/1.1
    case 'end-mid-body':
      return { status: protocol === 'h2' ? 400 : 499, bytesIn: half(x.length), bytesOut: 0 }
    case 'continue-then-leave':
      return { status: 499, bytesIn: 0, bytesOut: 0 }
    case 'abort-after-head':
    case 'leave-mid-pipeline':
    case 'reset-before-answer':
    case 'goaway-before-answer':
      return { status: 499, bytesIn, bytesOut: 0 }
    case 'abort-mid-response':
    case 'reset-mid-response':
    case 'goaway-mid-response':
      // the answer had started: the status it was being answered with, and the bytes that went out
      return { status: 200, bytesIn, bytesOut: FIRST_PART.length }
    case 'continue-then-silent':
      // the body never came: timeouts.request
      return { status: 408, bytesIn: 0, bytesOut: 0 }
    case 'garbage-in-body':
      // what the client reads as its answer: the listener's, which passes on no response body bytes
      return { status: 400, bytesIn: half(x.length), bytesOut: 0 }
    default:
      break
  }
  switch (x.behaviour) {
    case 'normal':
    case 'slow':
      return { status: x.status, bytesIn, bytesOut: x.method === 'HEAD' ? 0 : answerBody(x.path).length }
    // the proxy's own answer counts no response body bytes
    case 'hang':
      return { status: 504, upstreamError: 'timeout', bytesIn, bytesOut: 0 }
    case 'reset-before-head':
    case 'close-without-answer':
      return { status: 502, upstreamError: 'reset', bytesIn, bytesOut: 0 }
    case 'reset-mid-body':
    case 'short-length':
    case 'cut-chunked':
      // cut after the head went out: the status the client was answered, the upstream failure beside it
      return { status: 200, upstreamError: 'reset', bytesIn, bytesOut: FIRST_PART.length }
    default:
      throw new Error(`no outcome for ${fault} with ${x.behaviour}`)
  }
}

/** the drawn exchanges made into what a case of this fault can send, each with its place in the mix */
function plan(
  protocol: 'h1' | 'h2',
  n: number,
  drawn: { fault: Fault; exchanges: Drawn[]; rst: boolean },
): Case {
  const { fault } = drawn
  // a fault is one exchange's; several exchanges are a pipeline (HTTP/1.1) or concurrent streams (h2)
  const several = fault === 'none' || fault === 'leave-mid-pipeline'
  const exchanges = several ? drawn.exchanges : drawn.exchanges.slice(0, 1)
  const pipelined = protocol === 'h1' && exchanges.length > 1
  /** an answer cut before this one in the pipeline: its connection closes after that answer */
  let behindCut = false
  return {
    protocol,
    fault,
    rst: drawn.rst,
    exchanges: exchanges.map((d, i) => {
      let { method, length, behaviour } = d
      if (fault.endsWith('-mid-body') || fault.startsWith('continue-') || fault === 'garbage-in-body') {
        method = 'POST'
        length = Math.max(length, 2)
      }
      if (fault === 'abort-after-head' || fault === 'garbage-in-body' || fault.endsWith('-before-answer'))
        behaviour = 'hold'
      // an answer of its own, whether it comes before the bytes behind it or after
      if (fault === 'garbage-behind') behaviour = 'slow'
      if (fault.endsWith('-mid-response')) behaviour = 'stream'
      if (fault === 'goaway-graceful' && behaviour !== 'normal') behaviour = 'slow'
      // the client leaves while the first answer is still to come, every request forwarded: none is answered
      if (fault === 'leave-mid-pipeline')
        behaviour = i === 0 ? 'hold' : behaviour === 'slow' ? 'slow' : 'normal'
      // a pipeline waits behind each answer: no `hang`, and no reset mid-body, which waits for the client to have
      // the head. What comes behind a cut answer is never answered: it may fail upstream or not, as it happens
      if (pipelined && (behaviour === 'hang' || behaviour === 'reset-mid-body' || behindCut))
        behaviour = 'normal'
      if (method === 'HEAD' && WITH_CONTENT.has(behaviour)) method = 'GET'
      if (method !== 'POST' && method !== 'PUT') length = 0
      const status = WITH_CONTENT.has(behaviour) ? 200 : d.status
      const path = `/${protocol}/${n}.${i}/${fault}/${behaviour}`
      const x = { path, method, length, chunked: d.chunked, behaviour, status, delayMs: d.delayMs }
      // none of an answer waiting behind another reaches a client that leaves, or a connection closed after a
      // cut answer: 499, whatever the upstream answered
      const unanswered = behindCut || (fault === 'leave-mid-pipeline' && i > 0)
      if (pipelined && CUTTING.has(behaviour)) behindCut = true
      return {
        ...x,
        expected: unanswered ? { status: 499, bytesOut: 0 } : outcome(protocol, fault, x),
      }
    }),
  }
}

// ---- the upstream -------------------------------------------------------------------------------------------

// ---- the clients --------------------------------------------------------------------------------------------

/** what the clients share with the upstream and the ledger */
interface Run {
  port: number
  url: string
  upstream: BehavingUpstream
  headSeen: Set<string>
}

/** a wait inside a case: bounded, named after the case */
const until = (what: string, probe: () => boolean) => eventually(probe, { intervalMs: 5, what })

const upstreamHas = (run: Run, p: Planned, bytes: number) => () =>
  (run.upstream.bodyBytes.get(p.path) ?? 0) >= bytes

/** One HTTP/1.1 exchange on its own connection (node:http); resolves with what the client saw amiss, if anything. */
async function h1Single(run: Run, c: Case): Promise<string | undefined> {
  const p = c.exchanges[0]!
  const fault = c.fault as H1Fault
  const expects = fault.startsWith('continue-')
  const headers: OutgoingHttpHeaders = { 'x-behave': p.behaviour, 'x-status': p.status, 'x-delay': p.delayMs }
  if (p.length > 0) {
    if (p.chunked) headers['transfer-encoding'] = 'chunked'
    else headers['content-length'] = p.length
  }
  if (expects) headers['expect'] = '100-continue'
  const body = Buffer.alloc(p.length, 0x62)
  const seen = { status: 0, complete: false, continued: false, closed: false, data: 0 }
  const req = httpRequest({
    host: '127.0.0.1',
    port: run.port,
    method: p.method,
    path: p.path,
    headers,
    agent: false,
  })
  req.on('error', () => {})
  req.on('socket', (socket) =>
    socket.once('close', () => {
      seen.closed = true
    }),
  )
  req.on('continue', () => {
    seen.continued = true
  })
  req.on('response', (res) => {
    seen.status = res.statusCode ?? 0
    run.headSeen.add(p.path)
    res.on('data', (chunk: Buffer) => {
      seen.data += chunk.length
    })
    res.on('error', () => {})
    res.on('end', () => {
      seen.complete = true
    })
  })
  const leave = () => {
    if (c.rst) req.socket?.resetAndDestroy()
    else req.destroy()
  }
  const what = (step: string) => `${p.path}: ${step}`
  switch (fault) {
    case 'none':
      req.end(body)
      break
    case 'abort-mid-body':
    case 'end-mid-body':
      req.write(body.subarray(0, half(p.length)))
      await until(what('the upstream to have half the body'), upstreamHas(run, p, half(p.length)))
      if (fault === 'end-mid-body') req.socket?.end()
      else leave()
      break
    case 'abort-after-head':
      req.end(body)
      await until(what('the upstream to have the request'), () => run.upstream.whole.has(p.path))
      leave()
      break
    case 'abort-mid-response':
      req.end(body)
      await until(what('the first bytes of the answer'), () => seen.data > 0)
      leave()
      break
    case 'continue-then-silent':
      req.flushHeaders()
      break
    case 'continue-then-leave':
      req.flushHeaders()
      await until(what('the 100 Continue'), () => seen.continued)
      leave()
      break
  }
  await until(what('the connection to close'), () => seen.closed)
  if (fault === 'none') {
    const cut = CUTTING.has(p.behaviour)
    if (seen.status !== p.expected.status || seen.complete === cut)
      return what(`answered ${seen.status} (${seen.complete ? 'whole' : 'cut'}), not ${p.expected.status}`)
  }
  if (fault === 'continue-then-silent' && (seen.status !== 408 || !seen.continued))
    return what(
      `answered ${seen.status} (100 ${seen.continued ? 'sent' : 'never sent'}), not 408 after a 100`,
    )
  if (fault === 'end-mid-body' && seen.status !== 0)
    return what(`answered ${seen.status}, not left unanswered`)
  return undefined
}

/**
 * HTTP/1.1 requests pipelined on one connection in one write, the last asking to close it; or, once the upstream
 * has them all, the client leaves, or sends bytes that do not parse; or a chunked body cut half-way by a chunk
 * that does not parse
 */
async function h1Pipeline(run: Run, c: Case): Promise<string | undefined> {
  const client = await rawClient(run.port)
  const cutBody = c.fault === 'garbage-in-body'
  const wire = c.exchanges.map((p, i) => {
    const last = i === c.exchanges.length - 1 && c.fault === 'none'
    const framing = cutBody
      ? 'transfer-encoding: chunked\r\n'
      : p.length > 0
        ? `content-length: ${p.length}\r\n`
        : ''
    const head =
      `${p.method} ${p.path} HTTP/1.1\r\nHost: app.example\r\nx-behave: ${p.behaviour}\r\nx-status: ${p.status}\r\n` +
      `x-delay: ${p.delayMs}\r\n${framing}${last ? 'connection: close\r\n' : ''}\r\n`
    // a cut body: its first half in one chunk, the rest never sent
    const body = cutBody
      ? Buffer.concat([
          Buffer.from(`${half(p.length).toString(16)}\r\n`, 'latin1'),
          Buffer.alloc(half(p.length), 0x62),
          Buffer.from('\r\n', 'latin1'),
        ])
      : Buffer.alloc(p.length, 0x62)
    return Buffer.concat([Buffer.from(head, 'latin1'), body])
  })
  const first = c.exchanges[0]!.path
  try {
    client.socket.write(Buffer.concat(wire))
    if (c.fault === 'leave-mid-pipeline') {
      await until(`${first}: the upstream to have the pipeline`, () =>
        c.exchanges.every((p) => run.upstream.whole.has(p.path)),
      )
      if (c.rst) client.socket.resetAndDestroy()
      else client.socket.destroy()
      return undefined
    }
    if (c.fault === 'garbage-behind') {
      await until(`${first}: the upstream to have the request`, () => run.upstream.whole.has(first))
      // a header line without a colon
      client.socket.write('GET /next HTTP/1.1\r\nHost: app.example\r\nno colon here\r\n\r\n')
    }
    if (cutBody) {
      const p = c.exchanges[0]!
      await until(`${first}: the upstream to have half the body`, upstreamHas(run, p, half(p.length)))
      // a chunk size that is no hex number
      client.socket.write('zz\r\n\r\n')
    }
    await until(`${first}: the pipeline's connection to close`, client.closed)
  } finally {
    client.socket.destroy()
  }
  // no body here holds the text of a status line; nothing is answered after a cut answer
  const statuses = [...client.text().matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => Number(m[1]))
  const cutAt = c.exchanges.findIndex((p) => CUTTING.has(p.behaviour))
  const want = c.exchanges.slice(0, cutAt === -1 ? undefined : cutAt + 1).map((p) => p.expected.status)
  // after the answers to the requests ahead of the bytes it refuses, the listener's own
  if (c.fault === 'garbage-behind') want.push(400)
  return statuses.join(' ') === want.join(' ')
    ? undefined
    : `${first}: the pipeline ${c.exchanges.map((p) => `${p.method} ${p.length} ${p.behaviour}`).join(', ')} was answered ${statuses.join(' ')}, not ${want.join(' ')}`
}

/** One h2c session: one stream per exchange, all at once; the fault (of a single stream) as the case says. */
async function h2Session(run: Run, c: Case): Promise<string | undefined> {
  const fault = c.fault as H2Fault
  const session = h2connect(run.url)
  session.on('error', () => {})
  let connected = false
  let sessionClosed = false
  session.once('connect', () => {
    connected = true
  })
  session.once('close', () => {
    sessionClosed = true
  })
  const problems: string[] = []
  try {
    await until(`${c.exchanges[0]!.path}: the session`, () => connected || sessionClosed)
    await Promise.all(
      c.exchanges.map(async (p) => {
        const what = (step: string) => `${p.path}: ${step}`
        const expects = fault.startsWith('continue-')
        const headers: OutgoingHttpHeaders = {
          ':method': p.method,
          ':path': p.path,
          'x-behave': p.behaviour,
          'x-status': p.status,
          'x-delay': p.delayMs,
        }
        if (p.length > 0 && (!p.chunked || fault === 'end-mid-body')) headers['content-length'] = p.length
        if (expects) headers['expect'] = '100-continue'
        const body = Buffer.alloc(p.length, 0x62)
        const seen = { status: 0, continued: false, closed: false, data: 0, rstCode: 0 }
        const stream = session.request(headers, { endStream: p.length === 0 && !expects })
        stream.on('error', () => {})
        stream.on('response', (h) => {
          seen.status = Number(h[':status'])
          run.headSeen.add(p.path)
        })
        stream.on('continue', () => {
          seen.continued = true
        })
        stream.on('data', (chunk: Buffer) => {
          seen.data += chunk.length
        })
        stream.once('close', () => {
          seen.closed = true
          seen.rstCode = stream.rstCode ?? 0
        })
        const end = () => {
          if (p.length > 0) stream.end(body)
        }
        switch (fault) {
          case 'none':
            end()
            break
          case 'end-mid-body':
            stream.write(body.subarray(0, half(p.length)))
            await until(what('the upstream to have half the body'), upstreamHas(run, p, half(p.length)))
            stream.end()
            break
          case 'reset-before-answer':
          case 'goaway-before-answer':
          case 'goaway-graceful':
            end()
            await until(what('the upstream to have the request'), () => run.upstream.whole.has(p.path))
            if (fault === 'reset-before-answer') stream.close(h2.NGHTTP2_CANCEL)
            else session.goaway(fault === 'goaway-graceful' ? h2.NGHTTP2_NO_ERROR : h2.NGHTTP2_PROTOCOL_ERROR)
            break
          case 'reset-mid-response':
          case 'goaway-mid-response':
            end()
            await until(what('the first bytes of the answer'), () => seen.data > 0)
            if (fault === 'reset-mid-response') stream.close(h2.NGHTTP2_CANCEL)
            else session.goaway(h2.NGHTTP2_PROTOCOL_ERROR)
            break
          default:
            break
        }
        await until(what('the stream to close'), () => seen.closed)
        if (fault === 'none' || fault === 'goaway-graceful') {
          const cut = CUTTING.has(p.behaviour)
          const reset = seen.rstCode !== h2.NGHTTP2_NO_ERROR
          if (seen.status !== p.expected.status || reset !== cut)
            problems.push(
              what(`answered ${seen.status} (stream closed with ${seen.rstCode}), not ${p.expected.status}`),
            )
        }
        if (fault === 'continue-then-silent' && (seen.status !== 408 || !seen.continued))
          problems.push(
            what(`answered ${seen.status} (100 ${seen.continued ? 'sent' : 'never sent'}), not 408`),
          )
      }),
    )
  } finally {
    session.close()
    await until(`${c.exchanges[0]!.path}: the session to close`, () => sessionClosed).catch(() =>
      session.destroy(),
    )
  }
  return problems[0]
}

/** whether the frames received hold a HEADERS frame on stream 1: before its body, only a 100 Continue */
function headersOnStream1(received: Buffer): boolean {
  for (let at = 0; at + 9 <= received.length; at += 9 + received.readUIntBE(at, 3)) {
    if (received[at + 3] === FRAME.HEADERS && (received.readUInt32BE(at + 5) & 0x7fffffff) === 1) return true
  }
  return false
}

/** the DATA frames of `body` on stream 1, none over the 16 KiB frame size every peer takes, none ending it */
function dataFrames(body: Buffer): Buffer[] {
  const frames: Buffer[] = []
  for (let at = 0; at < body.length; at += 16_384)
    frames.push(frame(FRAME.DATA, 0, 1, body.subarray(at, at + 16_384)))
  return frames
}

/**
 * An h2c request whose client resets its stream (RST_STREAM, CANCEL) before it ends it: mid-body, or after the
 * 100 Continue without a byte of it. Written frame by frame: node:http2's `stream.close(code)` first ends the
 * request (END_STREAM), so the proxy would rightly forward a whole request, cut where the client stopped.
 */
async function h2ResetMidRequest(run: Run, c: Case): Promise<string | undefined> {
  const p = c.exchanges[0]!
  const fields: [string, string][] = [
    [':method', p.method],
    [':scheme', 'http'],
    [':authority', 'app.example'],
    [':path', p.path],
    ['x-behave', p.behaviour],
    ['x-status', String(p.status)],
    ['x-delay', String(p.delayMs)],
  ]
  if (!p.chunked) fields.push(['content-length', String(p.length)])
  const midBody = c.fault === 'abort-mid-body'
  if (!midBody) fields.push(['expect', '100-continue'])
  const client = await rawClient(run.port)
  try {
    client.socket.write(
      Buffer.concat([
        PREFACE,
        frame(FRAME.SETTINGS, 0, 0, Buffer.alloc(0)),
        frame(FRAME.HEADERS, FLAG.END_HEADERS, 1, headerBlock(fields)),
        ...(midBody ? dataFrames(Buffer.alloc(half(p.length), 0x62)) : []),
      ]),
    )
    if (midBody)
      await until(`${p.path}: the upstream to have half the body`, upstreamHas(run, p, half(p.length)))
    else
      await until(`${p.path}: the 100 Continue`, () => headersOnStream1(Buffer.from(client.text(), 'latin1')))
    const cancel = Buffer.alloc(4)
    cancel.writeUInt32BE(h2.NGHTTP2_CANCEL)
    client.socket.end(frame(FRAME.RST_STREAM, 0, 1, cancel))
    await until(`${p.path}: the connection to close`, client.closed)
  } finally {
    client.socket.destroy()
  }
  return undefined
}

function runCase(run: Run, c: Case): Promise<string | undefined> {
  if (c.protocol === 'h2')
    return c.fault === 'abort-mid-body' || c.fault === 'continue-then-leave'
      ? h2ResetMidRequest(run, c)
      : h2Session(run, c)
  const raw =
    c.fault === 'leave-mid-pipeline' || c.fault === 'garbage-behind' || c.fault === 'garbage-in-body'
  return c.exchanges.length > 1 || raw ? h1Pipeline(run, c) : h1Single(run, c)
}

// ---- the ledger against the record --------------------------------------------------------------------------

interface AuditLine {
  path: string
  status: number
  upstream_error?: string
  bytes_in: number
  bytes_out: number
}

function readAudit(file: string): AuditLine[] {
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => JSON.parse(line) as AuditLine)
}

/** an outcome in one key order, whichever order it was written in */
const shownOutcome = (o: Outcome) =>
  JSON.stringify({
    status: o.status,
    upstreamError: o.upstreamError,
    bytesIn: o.bytesIn,
    bytesOut: o.bytesOut,
  })

/** what the audit lines say that the ledger does not: missing, doubled, unknown, or another outcome */
function judgeAudit(lines: AuditLine[], ledger: Planned[]): string[] {
  const byPath = new Map<string, AuditLine[]>()
  for (const line of lines) byPath.set(line.path, [...(byPath.get(line.path) ?? []), line])
  const wrong: string[] = []
  for (const p of ledger) {
    const found = byPath.get(p.path) ?? []
    byPath.delete(p.path)
    if (found.length !== 1) {
      wrong.push(`${p.path}: ${found.length} audit lines`)
      continue
    }
    const line = found[0]!
    const got: Outcome = { status: line.status }
    if (line.upstream_error !== undefined) got.upstreamError = line.upstream_error as Outcome['upstreamError']
    if (p.expected.bytesIn !== undefined) got.bytesIn = line.bytes_in
    if (p.expected.bytesOut !== undefined) got.bytesOut = line.bytes_out
    if (shownOutcome(got) !== shownOutcome(p.expected))
      wrong.push(`${p.path}: recorded ${shownOutcome(got)}, not ${shownOutcome(p.expected)}`)
  }
  for (const [path, found] of byPath) wrong.push(`${path}: ${found.length} audit lines for no exchange sent`)
  return wrong
}

const countBy = <T>(items: T[], key: (item: T) => string | undefined) => {
  const counts: Record<string, number> = {}
  for (const item of items) {
    const k = key(item)
    if (k !== undefined) counts[k] = (counts[k] ?? 0) + 1
  }
  return counts
}

const seriesBy = (samples: Sample[], name: string, label: string) => {
  const counts: Record<string, number> = {}
  for (const s of samples) {
    const value = s.labels[label]
    if (s.name === name && value !== undefined && s.value > 0) counts[value] = (counts[value] ?? 0) + s.value
  }
  return counts
}

const sorted = (counts: Record<string, number>) =>
  Object.fromEntries(Object.entries(counts).sort(([a], [b]) => a.localeCompare(b)))

// ---- the runs -----------------------------------------------------------------------------------------------

const cases: Case[] = [
  ...fc.sample(h1Cases, { numRuns: CASES, seed: PROPERTY_SEED }).map((d, n) => plan('h1', n, d)),
  ...fc.sample(h2Cases, { numRuns: CASES, seed: PROPERTY_SEED }).map((d, n) => plan('h2', n, d)),
]
const ledger = cases.flatMap((c) => c.exchanges)

async function mixAgainst(t: Test, workers: number): Promise<void> {
  const started = Date.now()
  const headSeen = new Set<string>()
  const upstream = await behavingUpstream(t, headSeen)
  const auditFile = join(await scratchDir('accounting'), 'audit.log')
  const sidecar = await startTestSidecar(t, {
    upstream: upstream.url,
    workers,
    audit: { output: auditFile },
    timeouts: { upstream: DEADLINE, request: DEADLINE },
  })
  const run: Run = { port: sidecar.proxyAddress.port, url: sidecar.proxyUrl, upstream, headSeen }

  // the cases that wait for a deadline start first, so that their wait overlaps the others
  const waits = (c: Case) =>
    c.fault === 'continue-then-silent' || c.exchanges.some((p) => p.behaviour === 'hang')
  const queue = [...cases.filter(waits), ...cases.filter((c) => !waits(c))]
  const clientSaw: string[] = []
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      for (let c = queue.shift(); c !== undefined; c = queue.shift()) {
        const amiss = await runCase(run, c).catch((err: Error) => err.message)
        if (amiss !== undefined) clientSaw.push(amiss)
      }
    }),
  )
  t.same(clientSaw.slice(0, 10), [], `the clients saw what they expected (${clientSaw.length} did not)`)

  const lines = await eventually(
    () => {
      const read = readAudit(auditFile)
      return read.length >= ledger.length ? read : undefined
    },
    { timeoutMs: 15_000, what: `${ledger.length} audit lines` },
  ).catch(() => readAudit(auditFile))
  const wrong = judgeAudit(lines, ledger)
  t.same(wrong.slice(0, 10), [], `one audit line per exchange, with what happened (${wrong.length} disagree)`)

  const samples = await scrapeUntil(
    sidecar.adminUrl,
    (m) => metricValue(m, 'nhi_requests_total') >= lines.length,
    `${lines.length} requests counted`,
  )
  t.equal(metricValue(samples, 'nhi_requests_total'), lines.length, 'sum(nhi_requests_total) === audit lines')
  t.same(
    sorted(seriesBy(samples, 'nhi_requests_total', 'code')),
    sorted(countBy(lines, (l) => String(l.status))),
    'nhi_requests_total per code === audit lines per status',
  )
  t.same(
    sorted(seriesBy(samples, 'nhi_upstream_errors_total', 'reason')),
    sorted(countBy(lines, (l) => l.upstream_error)),
    'nhi_upstream_errors_total per reason === audit lines per upstream_error',
  )
  if (workers > 1) {
    const perWorker = samples.filter((s) => s.name === 'nhi_worker_requests_total').map((s) => s.value)
    t.ok(perWorker.length === workers && perWorker.every((n) => n > 0), `every worker served (${perWorker})`)
    t.equal(
      perWorker.reduce((a, b) => a + b, 0),
      lines.length,
      "the workers' requests add up to the audit lines",
    )
  }
  const faults = countBy(cases, (c) => `${c.protocol} ${c.fault}${c.exchanges.length > 1 ? ' ×n' : ''}`)
  t.comment(
    `${cases.length} cases (seed ${PROPERTY_SEED}), ${ledger.length} exchanges in ${Date.now() - started} ms: ` +
      `${JSON.stringify(sorted(faults))}; upstream ${JSON.stringify(sorted(countBy(ledger, (p) => p.behaviour)))}; ` +
      `recorded ${JSON.stringify(sorted(countBy(lines, (l) => `${l.status}${l.upstream_error ? ` ${l.upstream_error}` : ''}`)))}`,
  )
}

t.test('one process: every exchange recorded once, with what happened', (t) => mixAgainst(t, 1))

t.test('workers: 2: every exchange recorded once, by the pod, with what happened', (t) => mixAgainst(t, 2))
