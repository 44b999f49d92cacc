// The HTTP/1.1 engine's response framing against Node's own parser (llhttp), on the same bytes. Responses are
// generated from a grammar of what upstreams get right and wrong (status lines; field lines in any letter
// case and with any OWS; Content-Length repeated, listed and misspelled; Transfer-Encoding in every spelling;
// chunked bodies with extensions, upper- and lower-case hex, leading zeros, overflowing sizes and trailers;
// obs-fold, bare LFs and CRs, NUL and other control bytes; interim 1xx answers; bodies shorter or longer than
// announced; bytes and whole responses after the response) and each is served byte for byte once to the
// engine and once to node:http, GET and HEAD alike. Where llhttp refuses a response or its framing, the engine
// must fail the request; where both take it, they agree on the status, the body and the trailers, so that no
// byte one reads as this response's is something else to the other; where only one refuses, the reason must be
// one listed below (STRICTER, LAXER), each a documented choice that frames no byte differently. After a
// response the engine took, the next request on its pool gets its own answer, never bytes of the first.
import http from 'node:http'
import type { Socket } from 'node:net'
import fc from 'fast-check'
import t from 'tap'
import { H1Pool } from '../../src/proxy/h1-pool.ts'
import { eventually } from '../helpers/eventually.ts'
import { scriptedUpstream } from '../helpers/net.ts'
import { PROPERTY_SEED } from '../helpers/property.ts'

/** how many responses a run generates: a few hundred keep it within seconds on a loaded machine */
const CASES = 500

// ---- the grammar ----------------------------------------------------------------------------------------

const weighted = <T>(...choices: [T, number][]) =>
  fc.oneof(...choices.map(([value, weight]) => ({ arbitrary: fc.constant(value), weight })))

/** a line ending: CRLF mostly, else a bare LF, a bare CR or an extra CR */
const eol = weighted(['\r\n', 120], ['\n', 1], ['\r', 1], ['\r\r\n', 1])
/** the optional whitespace around a field value */
const ows = weighted(['', 6], [' ', 6], ['  ', 1], ['\t', 1])
const flips = fc.array(fc.boolean(), { minLength: 1, maxLength: 5 })
const spell = (name: string, flip: boolean[]) =>
  [...name].map((c, i) => (flip[i % flip.length] ? c.toUpperCase() : c.toLowerCase())).join('')

/** body bytes: text, the bytes of framing itself, a response of its own, latin1 and NUL */
const payload = fc
  .array(
    fc.oneof(
      { arbitrary: fc.string({ unit: fc.constantFrom(...'abcxyz0129 '), maxLength: 8 }), weight: 8 },
      {
        arbitrary: fc.constantFrom(
          '\r\n',
          '0\r\n\r\n',
          '\r\n\r\n',
          'HTTP/1.1 200 OK\r\n',
          '\u00e9',
          '\u0000',
        ),
        weight: 1,
      },
    ),
    { maxLength: 4 },
  )
  .map((parts) => parts.join(''))

/** a Content-Length value, as it relates to the length of the body written after it ({n}) */
const lengthValue = weighted(
  ['{n}', 24],
  ['{n-1}', 2],
  ['{n+1}', 2],
  ['0', 2],
  ['00{n}', 1],
  ['{n}, {n}', 1],
  ['{n},{n}', 1],
  ['{n}, {n+1}', 1],
  ['+{n}', 1],
  ['-1', 1],
  ['{n}.0', 1],
  ['0x{n}', 1],
  ['{n} {n}', 1],
  ['18446744073709551617', 1],
  ['', 1],
)

const codingValue = weighted(
  ['chunked', 20],
  ['Chunked', 2],
  ['CHUNKED', 1],
  ['gzip, chunked', 2],
  ['chunked, gzip', 2],
  ['identity', 2],
  ['gzip', 2],
  ['chunked, chunked', 1],
  ['chunked,', 1],
  [',chunked', 1],
  ['chunked\t', 1],
  ['chunked ;q=1', 1],
  ['gzip,chunked', 1],
  ['gzip chunked', 1],
  ['chunkedx', 1],
  ['"chunked"', 1],
)

/** one field line of a head */
const field = fc.oneof(
  {
    arbitrary: fc.record({
      kind: fc.constant('length' as const),
      value: lengthValue,
      flip: flips,
      ows,
      after: ows,
    }),
    weight: 2,
  },
  {
    arbitrary: fc.record({
      kind: fc.constant('coding' as const),
      value: codingValue,
      flip: flips,
      ows,
      after: ows,
    }),
    weight: 2,
  },
  {
    arbitrary: fc.record({
      kind: fc.constant('plain' as const),
      line: fc.constantFrom(
        'Connection: close',
        'Connection: keep-alive',
        'Connection: Keep-Alive, close',
        'connection: upgrade',
        'Upgrade: h2c',
        'Keep-Alive: timeout=5',
        'Keep-Alive: timeout=1',
        'Trailer: x-sum',
        'Content-Type: text/plain',
        'X-Latin1: caf\u00e9',
        'X-Tab: a\tb',
        'X-Empty:',
        'Set-Cookie: a=b',
      ),
    }),
    weight: 12,
  },
  {
    arbitrary: fc.record({
      kind: fc.constant('odd' as const),
      line: fc.constantFrom(
        ' folded',
        '\tfolded',
        'X-Space : b',
        'X Space: b',
        'NoColon',
        ': empty name',
        'X-Nul: a\u0000b',
        'X-Ctl: a\u0001b',
        'X-Del: a\u007fb',
        'X-Cr: a\rb',
        'X\u0000N: b',
        'X-Vt: a\u000b',
        'Content-Length : 3',
        'Transfer-Encoding : chunked',
      ),
    }),
    weight: 1,
  },
)
type Field = typeof field extends fc.Arbitrary<infer V> ? V : never

const version = weighted(
  ['HTTP/1.1', 80],
  ['HTTP/1.0', 20],
  ['HTTP/1.2', 1],
  ['HTTP/2.0', 1],
  ['http/1.1', 1],
  ['HTTP/01.1', 1],
  ['HTTP/1.1 ', 1],
)

const statusLine = fc.record({
  version,
  code: weighted(
    ['200', 60],
    ['201', 2],
    ['204', 6],
    ['304', 6],
    ['404', 2],
    ['299', 1],
    ['999', 1],
    ['199', 1],
    ['099', 1],
    ['2000', 1],
    ['20', 1],
    ['20x', 1],
  ),
  reason: weighted(
    [' OK', 60],
    ['', 4],
    [' ', 2],
    [' No Content', 2],
    [' odd\treason', 1],
    [' caf\u00e9', 1],
    [' a\u0000b', 1],
    [' a\u007f', 1],
    [' a\rb', 1],
  ),
})

interface Interim {
  version: string
  code: string
  fields: Field[]
}

/** an interim answer before the final one */
const interim: fc.Arbitrary<Interim> = fc.record({
  version: weighted(['HTTP/1.1', 8], ['HTTP/1.0', 1]),
  code: weighted(['100', 6], ['103', 6], ['102', 1], ['150', 1], ['101', 1]),
  fields: fc.array(field, { maxLength: 2 }),
})

/** a chunk of a chunked body: its size line spelled all ways, its data, what ends it */
const chunk = fc.record({
  data: payload.filter((p) => p.length > 0),
  upper: fc.boolean(),
  zeros: weighted([0, 30], [1, 1], [12, 1]),
  off: weighted([0, 60], [-1, 1], [1, 1]),
  ext: weighted(
    ['', 60],
    [';a=b', 4],
    [';a', 1],
    [';a=b;c', 1],
    [';a="q"', 1],
    [' ;a', 1],
    ['\t;a', 1],
    [' ', 1],
    [';a\u0000', 1],
    [';a=\u00e9', 1],
    [' x', 1],
  ),
  sizeEol: eol,
  dataEnd: weighted(['\r\n', 90], ['', 1], ['\n', 1], ['x\r\n', 1]),
})

const chunkedBody = fc.record({
  chunks: fc.array(chunk, { maxLength: 3 }),
  last: weighted(['0', 60], ['000', 2], ['0;e=1', 2], ['00000000000000000000', 1], ['0 ', 1]),
  lastEol: eol,
  overflow: weighted(['', 90], ['ffffffffffffffffff', 1], ['10000000000000001', 1]),
  trailers: fc.array(
    weighted(
      ['X-Sum: 42', 12],
      ['x-sum:42', 2],
      ['X-Sum:  a\tb  ', 1],
      ['Content-Length: 5', 1],
      ['bad trailer', 1],
      [' folded', 1],
      ['X-Nul: a\u0000', 1],
    ),
    { maxLength: 2 },
  ),
  trailerEol: eol,
  end: weighted(['\r\n', 90], ['', 2], ['\n', 1]),
})

const responseCase = fc.record({
  method: weighted(['GET', 4], ['HEAD', 1]),
  interims: fc.oneof(
    { arbitrary: fc.constant<Interim[]>([]), weight: 3 },
    { arbitrary: fc.array(interim, { minLength: 1, maxLength: 2 }), weight: 1 },
  ),
  status: statusLine,
  statusEol: eol,
  fields: fc.array(field, { maxLength: 4 }),
  /** the framing the body is written in; its field (Content-Length, or chunked) goes in at `framingAt` */
  framing: weighted(['length', 5], ['chunked', 5], ['none', 2]),
  framingAt: fc.nat(5),
  fieldEol: eol,
  headEnd: weighted(['\r\n', 120], ['\n', 1], ['', 1]),
  payload,
  chunked: chunkedBody,
  after: weighted(
    ['', 40],
    ['junk', 3],
    ['\r\n', 2],
    ['HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled', 4],
    ['HTTP/1.1 204 No Content\r\n\r\n', 1],
    ['0\r\n\r\n', 1],
  ),
  /** where the bytes are cut into two writes, as a fraction of their length (0: one write) */
  cut: fc.oneof(
    { arbitrary: fc.constant(0), weight: 3 },
    { arbitrary: fc.double({ min: 0, max: 1, noNaN: true }), weight: 1 },
  ),
})
type ResponseCase = typeof responseCase extends fc.Arbitrary<infer V> ? V : never

const lengthText = (value: string, n: number) =>
  value
    .replaceAll('{n-1}', `${Math.max(0, n - 1)}`)
    .replaceAll('{n+1}', `${n + 1}`)
    .replaceAll('{n}', `${n}`)

function fieldLine(f: Field, bodyLength: number): string {
  switch (f.kind) {
    case 'length':
      return `${spell('content-length', f.flip)}:${f.ows}${lengthText(f.value, bodyLength)}${f.after}`
    case 'coding':
      return `${spell('transfer-encoding', f.flip)}:${f.ows}${f.value}${f.after}`
    default:
      return f.line
  }
}

/** the final head's fields, the one of its framing among them */
function finalFields(c: ResponseCase): Field[] {
  const fields = [...c.fields]
  if (c.framing === 'length')
    fields.splice(c.framingAt, 0, { kind: 'length', value: '{n}', flip: [false], ows: ' ', after: '' })
  else if (c.framing === 'chunked')
    fields.splice(c.framingAt, 0, { kind: 'coding', value: 'chunked', flip: [false], ows: ' ', after: '' })
  return fields
}

function chunkedText(c: ResponseCase['chunked']): string {
  let text = ''
  for (const k of c.chunks) {
    const size = Math.max(0, k.data.length + k.off).toString(16)
    text += `${'0'.repeat(k.zeros)}${k.upper ? size.toUpperCase() : size}${k.ext}${k.sizeEol}${k.data}${k.dataEnd}`
  }
  if (c.overflow !== '') text += `${c.overflow}\r\nabc\r\n`
  text += `${c.last}${c.lastEol}`
  for (const trailer of c.trailers) text += `${trailer}${c.trailerEol}`
  return `${text}${c.end}`
}

/** the bytes the upstream writes for the case's request (latin1) */
function responseBytes(c: ResponseCase): Buffer {
  let text = ''
  for (const i of c.interims)
    text += `${i.version} ${i.code} Interim\r\n${i.fields.map((f) => `${fieldLine(f, 0)}\r\n`).join('')}\r\n`
  text += `${c.status.version} ${c.status.code}${c.status.reason}${c.statusEol}`
  for (const f of finalFields(c)) text += `${fieldLine(f, c.payload.length)}${c.fieldEol}`
  const body = c.framing === 'chunked' ? chunkedText(c.chunked) : c.payload
  return Buffer.from(`${text}${c.headEnd}${body}${c.after}`, 'latin1')
}

// ---- where the two may differ -----------------------------------------------------------------------------

const CONTROL = /[\x00-\x08\x0a-\x1f\x7f]/
const chunkedBodyWritten = (c: ResponseCase) => c.framing === 'chunked' && c.method !== 'HEAD'
const codings = (c: ResponseCase) => finalFields(c).filter((f) => f.kind === 'coding')
/** the fields of every head of the case, interim ones first */
const heads = (c: ResponseCase) => [...c.interims.map((i) => i.fields), finalFields(c)]
const lineOf = (f: Field) => (f.kind === 'plain' || f.kind === 'odd' ? f.line : '')

/**
 * The engine refuses, llhttp takes: refusals the engine documents (docs/reference.md, "Deviations", the HTTP/1.1
 * engine), of a response whose framing or meaning is in doubt. Each is judged on the case as generated, and
 * the engine's error must name it.
 */
const STRICTER: { why: string; error: RegExp; holds: (c: ResponseCase) => boolean }[] = [
  {
    why: 'a 101 to a request that asked for no upgrade (node:http takes it for the response, or for an upgrade)',
    error: /101 without an upgrade/,
    holds: (c) => c.interims.some((i) => i.code === '101'),
  },
  {
    why: 'a repeated Transfer-Encoding field (llhttp frames the body by the last line)',
    error: /transfer-encoding repeated/,
    holds: (c) => codings(c).length > 1,
  },
  {
    why: 'a status line with a control byte in its reason, or of an HTTP version other than 1.0 and 1.1',
    error: /status line/,
    holds: (c) => CONTROL.test(c.status.reason) || !/^HTTP\/1\.[01]$/.test(c.status.version),
  },
  { why: 'a status below 100', error: /status below 100/, holds: (c) => c.status.code === '099' },
  {
    why: 'a chunk size of more than 12 hex digits, leading zeros included',
    error: /chunk size/,
    holds: (c) =>
      chunkedBodyWritten(c) &&
      (c.chunked.overflow !== '' ||
        c.chunked.last.length > 12 ||
        c.chunked.chunks.some((k) => k.zeros >= 12)),
  },
  {
    why: 'chunked as the last coding, spelled so that parsers disagree on whether the body is chunked (an empty list element, a parameter or an HTAB after it: llhttp reads the body to the close, RFC 9110 list rules make it chunked)',
    error: /ambiguous transfer-encoding/,
    holds: (c) =>
      heads(c).some((fields) =>
        fields.some(
          (f) =>
            f.kind === 'coding' &&
            (['chunked,', 'chunked\t', 'chunked ;q=1'].includes(f.value) ||
              (/(?:^|,) *chunked$/i.test(f.value) && f.after === '\t')),
        ),
      ),
  },
  {
    why: 'an HTTP/1.0 interim answer asking for keep-alive and close at once: close wins, as on any head (llhttp lets keep-alive win on HTTP/1.0)',
    error: /interim response closing the connection/,
    holds: (c) =>
      c.interims.some(
        (i) =>
          i.version === 'HTTP/1.0' &&
          i.fields.some((f) => /^connection:.*close/i.test(lineOf(f))) &&
          i.fields.some((f) => /^connection:.*keep-alive/i.test(lineOf(f))),
      ),
  },
]

/**
 * llhttp refuses, the engine takes: what the engine accepts on purpose (documented there too), none of it
 * framing a byte differently from a parser that takes it.
 */
const LAXER: { why: string; holds: (c: ResponseCase) => boolean }[] = [
  {
    why: 'Content-Length repeated with the same value, in two fields or a list (RFC 9110 §8.6 lets a recipient take it as one; the engine passes it on as one)',
    holds: (c) =>
      heads(c).some(
        (fields) =>
          fields
            .filter((f) => f.kind === 'length')
            .reduce((n, f) => n + (f.kind === 'length' ? f.value.split(',').length : 0), 0) > 1,
      ),
  },
  {
    why: 'HTAB after a Content-Length value (OWS, RFC 9110 §5.5): llhttp takes SP there, not HTAB; the length is read alike',
    holds: (c) => heads(c).some((fields) => fields.some((f) => f.kind === 'length' && f.after === '\t')),
  },
  {
    why: 'SP or HTAB after a chunk size (before an extension, RFC 9112 §7.1.1 BWS): the size is read alike',
    holds: (c) =>
      chunkedBodyWritten(c) &&
      (c.chunked.last === '0 ' || c.chunked.chunks.some((k) => /^[ \t]/.test(k.ext))),
  },
  {
    why: 'a chunk extension the engine skips to the end of its line (RFC 9112 §7.1.1: a recipient ignores extensions it does not know), refusing only control bytes; llhttp refuses a value outside its token grammar',
    holds: (c) => chunkedBodyWritten(c) && c.chunked.chunks.some((k) => k.ext === ';a=\u00e9'),
  },
  {
    why: 'a Content-Length trailer: framing is no trailer\u2019s; the engine hands it up and the proxy drops it (docs/reference.md, response trailers)',
    holds: (c) => chunkedBodyWritten(c) && c.chunked.trailers.includes('Content-Length: 5'),
  },
]

// ---- the two readers ------------------------------------------------------------------------------------

interface Reading {
  /** the final status (0: no final head) */
  status: number
  /** the body bytes delivered (latin1), up to the end or the failure */
  body: string
  trailers: string[] | null
  /** why the request failed; undefined when the response completed */
  error: string | undefined
}

const SECOND_BODY = 'the second answer'
const SECOND = `HTTP/1.1 200 OK\r\nContent-Length: ${SECOND_BODY.length}\r\n\r\n${SECOND_BODY}`

function throughEngine(
  pool: H1Pool,
  method: string,
  path: string,
): { done: Promise<Reading>; settled: () => boolean } {
  let settled = false
  const done = new Promise<Reading>((resolve) => {
    let status = 0
    let body = ''
    pool.dispatch(
      { method, path, headers: {}, body: null },
      {
        onConnect() {},
        onHeaders(s) {
          status = s
          return true
        },
        onData(chunk) {
          body += chunk.toString('latin1')
          return true
        },
        onComplete(trailers) {
          settled = true
          resolve({ status, body, trailers, error: undefined })
        },
        onError(err) {
          settled = true
          resolve({ status, body, trailers: null, error: err.message })
        },
      },
    )
  })
  return { done, settled: () => settled }
}

const NEVER_ENDED = 'node:http never ended the exchange'

function throughNode(port: number, method: string, path: string): Promise<Reading> {
  return new Promise((resolve) => {
    let status = 0
    let body = ''
    let response: http.IncomingMessage | undefined
    let settled = false
    const settle = (error: string | undefined, trailers: string[] | null = null) => {
      if (settled) return
      settled = true
      resolve({ status, body, trailers, error })
    }
    const req = http.request({
      host: '127.0.0.1',
      port,
      method,
      path,
      agent: false,
      insecureHTTPParser: false,
    })
    req.on('error', (err) => {
      // what comes after a complete response (another response, junk) fails the socket, not that response
      if (response?.complete) return
      // body bytes parsed in the read that failed are still in the response's buffer: count them as read
      while (response?.read() != null) {}
      settle((err as { code?: string }).code ?? err.message)
    })
    // a 101 with the upgrade fields hands the connection over: no 'response', and without an 'upgrade'
    // listener node:http closes it
    req.on('close', () => {
      if (response === undefined) settle('closed without a response')
    })
    // a safety net only: every exchange ends well before it, at the upstream's close
    req.setTimeout(10_000, () => {
      settle(NEVER_ENDED)
      req.destroy()
    })
    req.on('response', (res) => {
      response = res
      status = res.statusCode ?? 0
      res.on('data', (c: Buffer) => {
        body += c.toString('latin1')
      })
      res.on('end', () => settle(undefined, res.rawTrailers.length > 0 ? res.rawTrailers : null))
      res.on('error', (err) => settle((err as { code?: string }).code ?? err.message))
      res.on('close', () => {
        if (!res.complete) settle('closed before the end')
      })
    })
    req.end()
  })
}

// ---- the run ----------------------------------------------------------------------------------------------

interface Disagreement {
  what: string
  method: string
  bytes: string
  node: Reading
  engine: Reading
  next?: Reading
}

t.test('the engine frames every response as llhttp does, or refuses it', async (t) => {
  const started = Date.now()
  const cases = fc.sample(responseCase, { numRuns: CASES, seed: PROPERTY_SEED })
  const bytes = cases.map(responseBytes)
  /** the upstream end of the connection that carries each case's request from the engine */
  const held = new Map<number, Socket>()
  const up = await scriptedUpstream(t, ({ path, socket }) => {
    const [, n, reader] = path.split('/')
    const i = Number(n)
    if (reader === 'next') return SECOND
    if (reader === 'node') {
      socket.end(bytes[i]!)
      return undefined
    }
    // to the engine: the connection stays open until the engine has read everything (see below)
    held.set(i, socket)
    const b = bytes[i]!
    const at = Math.floor(cases[i]!.cut * b.length)
    return at > 0 && at < b.length ? [b.subarray(0, at), b.subarray(at)] : [b]
  })

  const disagreements: Disagreement[] = []
  const tally = { refusedByBoth: 0, takenByBoth: 0, stricter: 0, laxer: 0, reused: 0 }
  for (const [i, c] of cases.entries()) {
    const node = await throughNode(up.port, c.method, `/${i}/node`)
    const pool = new H1Pool({
      host: '127.0.0.1',
      port: up.port,
      hostHeader: 'app',
      connectTimeout: 5000,
      headersTimeout: 5000,
      bodyTimeout: 5000,
      keepAliveTimeout: 5000,
    })
    const first = throughEngine(pool, c.method, `/${i}/engine`)
    // the engine's side of its connection (private): what it has read of the scripted bytes
    const [conn] = (pool as unknown as { all: Set<{ socket: Socket }> }).all
    const socket = conn!.socket
    let read = 0
    socket.on('data', (b: Buffer) => {
      read += b.length
    })
    const length = bytes[i]!.length
    const allRead = () => read >= length || socket.destroyed
    await eventually(() => first.settled() || allRead(), {
      intervalMs: 1,
      what: `case ${i}: the engine to read`,
    })
    // everything read and the response not ended: only the end of the connection can end it now
    if (!first.settled()) held.get(i)!.end()
    const engine = await first.done
    held.delete(i)
    let next: Reading | undefined
    if (engine.error === undefined) {
      // whatever came after the response has reached the engine before the next request goes out
      await eventually(allRead, { intervalMs: 1, what: `case ${i}: the rest of the bytes` })
      const reusable = !socket.destroyed
      next = await throughEngine(pool, 'GET', `/${i}/next`).done
      if (reusable) tally.reused++
    }
    await pool.destroy()

    const what = judge(c, node, engine, next, tally)
    if (what !== undefined)
      disagreements.push({ what, method: c.method, bytes: bytes[i]!.toString('latin1'), node, engine, next })
  }
  t.same(disagreements.slice(0, 10), [], `no disagreement (of ${disagreements.length})`)
  t.comment(
    `${CASES} responses (seed ${PROPERTY_SEED}) in ${Date.now() - started} ms: ${tally.takenByBoth} taken by both, ` +
      `${tally.refusedByBoth} refused by both, ${tally.stricter} refused by the engine only (documented), ` +
      `${tally.laxer} by llhttp only (documented); ${tally.reused} connections reused after a response`,
  )
  t.ok(tally.takenByBoth > CASES / 4 && tally.refusedByBoth > CASES / 10, 'the grammar reaches both outcomes')
})

function judge(
  c: ResponseCase,
  node: Reading,
  engine: Reading,
  next: Reading | undefined,
  tally: { refusedByBoth: number; takenByBoth: number; stricter: number; laxer: number },
): string | undefined {
  if (next !== undefined && (next.error !== undefined || next.status !== 200 || next.body !== SECOND_BODY))
    return 'the next request on the pool did not get its own answer'
  if (node.error === NEVER_ENDED) return NEVER_ENDED
  const laxer = LAXER.some((l) => l.holds(c))
  // bytes the engine passed on before failing are bytes llhttp passed on too
  if (engine.error !== undefined && !node.body.startsWith(engine.body) && !laxer)
    return 'the engine delivered body bytes llhttp did not before failing'
  if (node.error !== undefined) {
    if (engine.error !== undefined) {
      tally.refusedByBoth++
      return undefined
    }
    if (!laxer) return 'llhttp refused, the engine delivered'
    tally.laxer++
    return undefined
  }
  if (engine.error !== undefined) {
    if (!STRICTER.some((s) => s.error.test(engine.error!) && s.holds(c)))
      return `the engine refused (${engine.error}), llhttp delivered`
    tally.stricter++
    return undefined
  }
  tally.takenByBoth++
  if (engine.status !== node.status) return 'a different status'
  if (engine.body !== node.body) return 'a different body'
  if (JSON.stringify(engine.trailers) !== JSON.stringify(node.trailers)) return 'different trailers'
  return undefined
}
