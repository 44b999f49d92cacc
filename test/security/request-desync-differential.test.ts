// Request smuggling and desync from the attacker's side, on generated requests, with nginx as the reference
// front proxy. Each case is one request whose bytes are ambiguous somewhere (its framing: Content-Length and
// Transfer-Encoding together, two lengths, codings in odd spellings, chunk lines no two parsers read alike;
// its request line, its Host, field lines with folds, whitespace before the colon or control bytes; Expect),
// whose body is a whole request of its own (the smuggling payload), and behind it, pipelined on the same
// connection, one plain request. The same bytes go on fresh connections to the built nhi-proxy and to nginx
// (`proxy_pass` to a keep-alive upstream over HTTP/1.1), each in front of its own recording upstream:
// node:http with its strict parser, which keeps every request it parsed (method, target, body) and every byte
// stream it could not parse.
// Held of nhi-proxy whatever nginx does: the upstream never reads a request the proxy did not read as one
// (the payload never arrives as a request, nothing the proxy sends fails to parse, a forwarded body is the
// body the client framed); a request the grammar says a server must refuse (RFC 9112) is never forwarded; a
// refusal is a 4xx answer (501, 505 for a coding or a version) and nothing of the request reaches the upstream
// whole; the connection closes after it unless every parser reads its framing alike (then the request behind
// it may be served); every request the upstream got has its answer; and each request the proxy answered or
// forwarded has one audit line (one read behind an answer that closed the connection is recorded as 499).
// Against nginx: where both forward, the upstream gets the same method, target and body from both; where
// nhi-proxy refuses a request nginx forwards, the reason is one of DOCUMENTED_DIFFERENCES; where nginx
// refuses one nhi-proxy forwards, the request must be one the RFC lets a server take (and the invariants
// above held), and the count is reported. Below the generated cases, hand-written ones for each disagreement
// that was a bug.
import { once } from 'node:events'
import { STATUS_CODES } from 'node:http'
import { connect as h2connect } from 'node:http2'
import { connect } from 'node:net'
import fc from 'fast-check'
import t from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { mapLimit } from '../helpers/limit.ts'
import { rawExchange } from '../helpers/net.ts'
import { FrontComparison, skipWithoutNginx, startFronts } from '../helpers/nginx.ts'
import { PROPERTY_SEED } from '../helpers/property.ts'
import { type Arrival, recordingUpstream } from '../helpers/recording-upstream.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

/** generated cases, each sent to both fronts: a few seconds, some more where fronts wait out DEADLINE_S */
const CASES = 150
const CONCURRENCY = 4
/**
 * Each front's own deadline for a request's head and body, and for an idle connection: a front that reads a
 * longer body than was sent (one reading of an ambiguous framing) waits this long for it and closes, the
 * client never ending its side (a FIN would be read as the client leaving, and the answers lost with it)
 */
const DEADLINE_S = 2
/** a connection neither front closes within this long is a failure */
const CONNECTION_MS = 4 * DEADLINE_S * 1000

// ---- what the RFC lets a server do with each feature ------------------------------------------------------
//
// valid: a server reads it as written (the body is the payload); lenient: RFC 9112 lets it refuse or read it
// (and if it reads it, the body is the payload); invalid: it must be refused (or its framing is unknown, so
// that forwarding anything of it would be a guess at where the next request begins).
type Verdict = 'valid' | 'lenient' | 'invalid'
const WORSE: Record<Verdict, number> = { valid: 0, lenient: 1, invalid: 2 }

// Where nhi-proxy refuses what nginx forwards, on purpose; each case that shows one is counted under it.
const DOCUMENTED_DIFFERENCES = {
  // node:http's parser (llhttp, insecureHTTPParser off) is stricter than nginx's on these; each is a request
  // RFC 9112 lets a server refuse, and llhttp answers 400
  requestLineSpace:
    'more than one space, or a tab, in the request line (RFC 9112 §3 lets a server refuse it)',
  chunkLine:
    'a chunk line that is not chunk-size [chunk-ext] CRLF: a space after the size, a bare LF (RFC 9112 §7.1, §2.2)',
  badName:
    'a byte outside token in a field name (RFC 9110 §5.1); nginx drops the field line and forwards the rest',
  trailerLine:
    'a trailer line that is no field line (a request behind a last chunk with no blank line); nginx reads the request as trailer fields',
  // the proxy's own refusals (docs/reference.md)
  trailerFraming: 'Content-Length, Transfer-Encoding or Host in a trailer section: 400 ("HTTP/2 and gRPC")',
  targetAuthority: 'an absolute-form target naming another authority than Host: 400 ("Host")',
  unknownExpect:
    'an Expect other than 100-continue: 417 (RFC 9110 §10.1.1 lets a server answer it so); nginx ignores it',
} as const
type Difference = keyof typeof DOCUMENTED_DIFFERENCES

interface Feature {
  /** what a report names it by */
  name: string
  verdict: Verdict
  /** a request line or framing not valid as it is, but read alike by every parser (chunked last, say) */
  sure?: true
  /** the documented difference it can show, if nhi-proxy refuses it */
  difference?: Difference
}

// ---- the grammar ------------------------------------------------------------------------------------------

const weighted = <T>(...choices: [T, number][]) =>
  fc.oneof(...choices.map(([value, weight]) => ({ arbitrary: fc.constant(value), weight })))

/** the payload: a whole request, padded to a fixed length whose hex has letters (0x5c) */
const PAYLOAD_LENGTH = 0x5c
function payload(id: number): string {
  const head = `GET /smuggled/${id} HTTP/1.1\r\nHost: app.example\r\nX-Pad: `
  return `${head}${'z'.repeat(PAYLOAD_LENGTH - head.length - 4)}\r\n\r\n`
}

interface LineVariant extends Feature {
  line: (method: string, path: string) => string
  /** HTTP/1.0: no Host needed, and a Transfer-Encoding makes the framing faulty (RFC 9112 §6.1) */
  http10?: true
}
const LINES: [LineVariant, number][] = [
  [{ name: 'line', verdict: 'valid', line: (m, p) => `${m} ${p} HTTP/1.1` }, 60],
  [
    {
      name: 'line-double-space',
      verdict: 'lenient',
      sure: true,
      difference: 'requestLineSpace',
      line: (m, p) => `${m}  ${p} HTTP/1.1`,
    },
    1,
  ],
  [
    {
      name: 'line-tab',
      verdict: 'lenient',
      sure: true,
      difference: 'requestLineSpace',
      line: (m, p) => `${m}\t${p} HTTP/1.1`,
    },
    1,
  ],
  [
    {
      name: 'line-lower-method',
      verdict: 'lenient',
      line: (m, p) => `${m.toLowerCase()} ${p} HTTP/1.1`,
    },
    1,
  ],
  [{ name: 'line-absolute', verdict: 'valid', line: (m, p) => `${m} http://app.example${p} HTTP/1.1` }, 1],
  [
    // RFC 9112 §3.2.2: the target's authority wins over Host
    {
      name: 'line-absolute-other-host',
      verdict: 'lenient',
      sure: true,
      difference: 'targetAuthority',
      line: (m, p) => `${m} http://other.example${p} HTTP/1.1`,
    },
    1,
  ],
  [{ name: 'line-http10', verdict: 'valid', http10: true, line: (m, p) => `${m} ${p} HTTP/1.0` }, 2],
  // HTTP-name is case-sensitive (RFC 9112 §2.3)
  [{ name: 'line-http-lower', verdict: 'invalid', line: (m, p) => `${m} ${p} http/1.1` }, 1],
  // RFC 9112 §2.3: a version the server does not speak: 505 (HTTP/2 has no request line)
  [{ name: 'line-http20', verdict: 'invalid', line: (m, p) => `${m} ${p} HTTP/2.0` }, 1],
  [{ name: 'line-http09', verdict: 'invalid', line: (m, p) => `${m} ${p} HTTP/0.9` }, 1],
  [{ name: 'line-trailing-space', verdict: 'invalid', line: (m, p) => `${m} ${p} HTTP/1.1 ` }, 1],
]

interface HostVariant extends Feature {
  lines: string[]
}
const HOSTS: [HostVariant, number][] = [
  [{ name: 'host', verdict: 'valid', lines: ['Host: app.example'] }, 60],
  [{ name: 'host-port', verdict: 'valid', lines: ['Host: app.example:80'] }, 1],
  [{ name: 'host-ows', verdict: 'valid', lines: ['Host: \t app.example \t'] }, 1],
  // RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request with no Host, two, or an invalid one
  [{ name: 'host-missing', verdict: 'invalid', lines: [] }, 2],
  [{ name: 'host-twice', verdict: 'invalid', lines: ['Host: app.example', 'Host: app.example'] }, 1],
  [{ name: 'host-two', verdict: 'invalid', lines: ['Host: app.example', 'Host: other.example'] }, 1],
  [{ name: 'host-userinfo', verdict: 'invalid', lines: ['Host: user@app.example'] }, 1],
  [{ name: 'host-empty', verdict: 'lenient', lines: ['Host:'] }, 1],
]

interface ChunkVariant extends Feature {
  body: (payload: string) => string
  /** the bytes after it are not read as the next request: a server that takes the body cannot go on */
  endsConnection?: true
}
const hex = (n: number) => n.toString(16)
const chunked = (size: string, p: string, eol = '\r\n', last = `0${eol}${eol}`) =>
  `${size}${eol}${p}${eol}${last}`
const CHUNKS: [ChunkVariant, number][] = [
  [{ name: 'chunks', verdict: 'valid', body: (p) => chunked(hex(p.length), p) }, 30],
  [{ name: 'chunks-upper', verdict: 'valid', body: (p) => chunked(hex(p.length).toUpperCase(), p) }, 2],
  [{ name: 'chunks-zeros', verdict: 'valid', body: (p) => chunked(`000${hex(p.length)}`, p) }, 2],
  [
    {
      name: 'chunks-zeros-long',
      verdict: 'lenient',
      sure: true,
      body: (p) => chunked(`${'0'.repeat(20)}${hex(p.length)}`, p),
    },
    1,
  ],
  [
    {
      name: 'chunks-split',
      verdict: 'valid',
      body: (p) => `a\r\n${p.slice(0, 10)}\r\n${hex(p.length - 10)}\r\n${p.slice(10)}\r\n0\r\n\r\n`,
    },
    2,
  ],
  [{ name: 'chunks-0x', verdict: 'invalid', body: (p) => chunked(`0x${hex(p.length)}`, p) }, 1],
  [{ name: 'chunks-ext-quoted', verdict: 'valid', body: (p) => chunked(`${hex(p.length)};a="b;c d"`, p) }, 1],
  [
    {
      name: 'chunks-ext-quoted-pair',
      verdict: 'valid',
      body: (p) => chunked(`${hex(p.length)};a="b\\"c"`, p),
    },
    1,
  ],
  [
    {
      name: 'chunks-size-space',
      verdict: 'lenient',
      difference: 'chunkLine',
      body: (p) => chunked(`${hex(p.length)} `, p),
    },
    1,
  ],
  [
    {
      name: 'chunks-bare-lf',
      verdict: 'lenient',
      difference: 'chunkLine',
      body: (p) => chunked(hex(p.length), p, '\n'),
    },
    1,
  ],
  [
    {
      name: 'chunks-bare-lf-after-data',
      verdict: 'lenient',
      difference: 'chunkLine',
      body: (p) => `${hex(p.length)}\r\n${p}\n0\r\n\r\n`,
    },
    1,
  ],
  // RFC 9112 §2.2: a bare CR is invalid
  [
    { name: 'chunks-bare-cr', verdict: 'invalid', body: (p) => chunked(hex(p.length), p, '\r', '0\r\n\r\n') },
    1,
  ],
  [
    // the next request's line is read as a trailer field line, which it is not
    {
      name: 'chunks-no-final-crlf',
      verdict: 'lenient',
      difference: 'trailerLine',
      endsConnection: true,
      body: (p) => `${hex(p.length)}\r\n${p}\r\n0\r\n`,
    },
    1,
  ],
  [
    // a size shorter than the data: what follows the size's bytes is no CRLF
    { name: 'chunks-overrun', verdict: 'invalid', body: (p) => chunked(hex(p.length - 8), p) },
    1,
  ],
  [
    {
      name: 'chunks-trailer-length',
      verdict: 'lenient',
      sure: true,
      difference: 'trailerFraming',
      body: (p) => chunked(hex(p.length), p, '\r\n', '0\r\nContent-Length: 3\r\n\r\n'),
    },
    1,
  ],
  [
    {
      name: 'chunks-trailer-coding',
      verdict: 'lenient',
      sure: true,
      difference: 'trailerFraming',
      body: (p) => chunked(hex(p.length), p, '\r\n', '0\r\nTransfer-Encoding: chunked\r\n\r\n'),
    },
    1,
  ],
  [
    {
      name: 'chunks-trailer-host',
      verdict: 'lenient',
      sure: true,
      difference: 'trailerFraming',
      body: (p) => chunked(hex(p.length), p, '\r\n', '0\r\nHost: other.example\r\n\r\n'),
    },
    1,
  ],
]

interface FramingVariant extends Feature {
  /** the field lines, given the payload's length */
  lines: (length: number) => string[]
  /** chunked: the body by a chunk variant; else the payload as it is */
  chunked: boolean
  /** RFC 9112 §6.3: a server that reads it by Transfer-Encoding must close the connection after it */
  closes?: true
}
const cl = (value: string, name = 'Content-Length') => [`${name}: ${value}`]
const te = (value: string, name = 'Transfer-Encoding') => [`${name}: ${value}`]
const FRAMINGS: [FramingVariant, number][] = [
  [{ name: 'cl', verdict: 'valid', chunked: false, lines: (n) => cl(`${n}`) }, 25],
  [{ name: 'cl-zeros', verdict: 'valid', chunked: false, lines: (n) => cl(`000${n}`) }, 1],
  [{ name: 'cl-ows', verdict: 'valid', chunked: false, lines: (n) => cl(` \t${n}\t `) }, 1],
  [{ name: 'cl-plus', verdict: 'invalid', chunked: false, lines: (n) => cl(`+${n}`) }, 1],
  [{ name: 'cl-hex', verdict: 'invalid', chunked: false, lines: (n) => cl(`0x${hex(n)}`) }, 1],
  [{ name: 'cl-space-inside', verdict: 'invalid', chunked: false, lines: (n) => cl(`${n} 0`) }, 1],
  [
    {
      name: 'cl-list-same',
      verdict: 'lenient',
      chunked: false,
      lines: (n) => cl(`${n}, ${n}`),
    },
    1,
  ],
  [{ name: 'cl-list-differ', verdict: 'invalid', chunked: false, lines: (n) => cl(`${n}, 0`) }, 1],
  [
    {
      name: 'cl-two-same',
      verdict: 'lenient',
      chunked: false,
      lines: (n) => [...cl(`${n}`), ...cl(`${n}`)],
    },
    1,
  ],
  [
    { name: 'cl-two-differ', verdict: 'invalid', chunked: false, lines: (n) => [...cl('0'), ...cl(`${n}`)] },
    1,
  ],
  // RFC 9112 §5.1: no whitespace between a field name and the colon; a server MUST refuse it
  [
    {
      name: 'cl-space-colon',
      verdict: 'invalid',
      chunked: false,
      lines: (n) => cl(`${n}`, 'Content-Length '),
    },
    1,
  ],
  [{ name: 'te', verdict: 'valid', chunked: true, lines: () => te('chunked') }, 25],
  [{ name: 'te-case', verdict: 'valid', chunked: true, lines: () => te('Chunked', 'transfer-ENCODING') }, 1],
  [{ name: 'te-upper', verdict: 'valid', chunked: true, lines: () => te('CHUNKED') }, 1],
  [{ name: 'te-ows', verdict: 'valid', chunked: true, lines: () => te('\tchunked \t') }, 1],
  [
    // RFC 9110 §5.6.1: empty list elements are ignored, but few parsers do
    {
      name: 'te-empty-element',
      verdict: 'lenient',
      sure: true,
      chunked: true,
      lines: () => te(',chunked'),
    },
    1,
  ],
  // RFC 9112 §6.3: chunked not last: 400; a coding the server does not know: 501
  [
    { name: 'te-chunked-identity', verdict: 'invalid', chunked: true, lines: () => te('chunked, identity') },
    1,
  ],
  [
    {
      name: 'te-identity-chunked',
      verdict: 'invalid',
      sure: true,
      chunked: true,
      lines: () => te('identity, chunked'),
    },
    1,
  ],
  [
    {
      name: 'te-gzip-chunked',
      verdict: 'invalid',
      sure: true,
      chunked: true,
      lines: () => te('gzip, chunked'),
    },
    1,
  ],
  [{ name: 'te-xchunked', verdict: 'invalid', chunked: true, lines: () => te('xchunked') }, 1],
  [{ name: 'te-chunkedx', verdict: 'invalid', chunked: true, lines: () => te('chunkedx') }, 1],
  [{ name: 'te-quoted', verdict: 'invalid', chunked: true, lines: () => te('"chunked"') }, 1],
  [
    {
      name: 'te-two-lines',
      verdict: 'invalid',
      sure: true,
      chunked: true,
      lines: () => [...te('gzip'), ...te('chunked')],
    },
    1,
  ],
  // RFC 9112 §6.1: chunked applied twice
  [
    {
      name: 'te-twice',
      verdict: 'invalid',
      chunked: true,
      lines: () => [...te('chunked'), ...te('chunked')],
    },
    1,
  ],
  [
    {
      name: 'te-space-colon',
      verdict: 'invalid',
      chunked: true,
      lines: () => te('chunked', 'Transfer-Encoding '),
    },
    1,
  ],
  [
    {
      name: 'te-obs-fold',
      verdict: 'lenient',
      chunked: true,
      lines: () => te('\r\n chunked'),
    },
    1,
  ],
  [
    {
      name: 'cl-te',
      verdict: 'lenient',
      chunked: true,
      closes: true,
      lines: () => [...cl('4'), ...te('chunked')],
    },
    2,
  ],
  [
    {
      name: 'te-cl',
      verdict: 'lenient',
      chunked: true,
      closes: true,
      lines: (n) => [...te('chunked'), ...cl(`${n + 20}`)],
    },
    1,
  ],
]

interface NoiseVariant extends Feature {
  line: string
}
const NOISE: [NoiseVariant, number][] = [
  [{ name: 'no-noise', verdict: 'valid', line: 'X-Note: plain' }, 48],
  [{ name: 'noise-obs-text', verdict: 'valid', line: 'X-Note: caf\xe9' }, 1],
  [{ name: 'noise-underscore', verdict: 'valid', line: 'X_Note: a' }, 1],
  [{ name: 'noise-obs-fold', verdict: 'lenient', line: 'X-Note: a\r\n b' }, 1],
  [{ name: 'noise-space-colon', verdict: 'invalid', line: 'X-Note : a' }, 1],
  [{ name: 'noise-tab-colon', verdict: 'invalid', line: 'X-Note\t: a' }, 1],
  [{ name: 'noise-nul-value', verdict: 'lenient', line: 'X-Note: a\0b' }, 1],
  [{ name: 'noise-ctl-value', verdict: 'lenient', line: 'X-Note: a\x01b' }, 1],
  [{ name: 'noise-del-value', verdict: 'lenient', line: 'X-Note: a\x7fb' }, 1],
  [{ name: 'noise-nul-name', verdict: 'lenient', difference: 'badName', line: 'X-No\0te: a' }, 1],
  [{ name: 'noise-ctl-name', verdict: 'lenient', difference: 'badName', line: 'X-No\x01te: a' }, 1],
  [{ name: 'noise-del-name', verdict: 'lenient', difference: 'badName', line: 'X-No\x7fte: a' }, 1],
  [{ name: 'noise-high-name', verdict: 'lenient', difference: 'badName', line: 'X-N\xe9te: a' }, 1],
]

interface ExpectVariant extends Feature {
  lines: string[]
}
const EXPECTS: [ExpectVariant, number][] = [
  [{ name: 'no-expect', verdict: 'valid', lines: [] }, 30],
  [{ name: 'expect', verdict: 'valid', lines: ['Expect: 100-continue'] }, 1],
  [{ name: 'expect-case', verdict: 'valid', lines: ['Expect: 100-Continue'] }, 1],
  [
    { name: 'expect-unknown', verdict: 'lenient', difference: 'unknownExpect', lines: ['Expect: x-unknown'] },
    1,
  ],
]

const desyncCase = fc.record({
  method: weighted(['POST', 4], ['PUT', 1], ['GET', 1]),
  line: weighted(...LINES),
  host: weighted(...HOSTS),
  framing: weighted(...FRAMINGS),
  chunks: weighted(...CHUNKS),
  noise: weighted(...NOISE),
  expect: weighted(...EXPECTS),
  /** the order of the field lines */
  shuffle: fc.array(fc.nat(), { minLength: 4, maxLength: 4 }),
})
type DesyncCase = typeof desyncCase extends fc.Arbitrary<infer V> ? V : never

interface Wire {
  bytes: Buffer
  /** what the case's parts are: its worst feature decides */
  features: Feature[]
  verdict: Verdict
  /** RFC 9112 §6.3 / HTTP/1.0: the connection closes after the request, the pipelined one is never read */
  closes: boolean
  /**
   * its request line and framing are read alike by every parser: a server that refuses it for another reason
   * (its Host, a field line) knows where the next request begins, and may read on
   */
  framingSure: boolean
  method: string
  /** the payload: the body every server that takes the request must read */
  body: string
}

/** the audit status of a request whose client had no answer */
const CLIENT_CLOSED = 499

const pathOf = (id: number, which: string) => `/c/${id}/${which}`

function wireOf(c: DesyncCase, id: number): Wire {
  const p = payload(id)
  const features: Feature[] = [c.line, c.host, c.framing, c.noise, c.expect]
  if (c.framing.chunked) features.push(c.chunks)
  const http10 = c.line.http10 === true
  // RFC 9112 §6.1: an HTTP/1.0 message with a Transfer-Encoding has faulty framing
  if (http10 && c.framing.chunked) features.push({ name: 'te-http10', verdict: 'invalid' })
  // an HTTP/1.0 request needs no Host
  if (http10 && c.host.name === 'host-missing')
    features[1] = { name: 'host-missing-http10', verdict: 'valid' }
  const verdict = features.reduce<Verdict>(
    (worst, f) => (WORSE[f.verdict] > WORSE[worst] ? f.verdict : worst),
    'valid',
  )
  const fields = [...c.host.lines, ...c.framing.lines(p.length), c.noise.line, ...c.expect.lines]
  for (const [i, j] of c.shuffle.entries()) {
    const a = i % fields.length
    const b = j % fields.length
    ;[fields[a], fields[b]] = [fields[b]!, fields[a]!]
  }
  const body = c.framing.chunked ? c.chunks.body(p) : p
  const head = `${c.line.line(c.method, pathOf(id, 'first'))}\r\n${fields.map((f) => `${f}\r\n`).join('')}\r\n`
  const after = `GET ${pathOf(id, 'after')} HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n`
  return {
    bytes: Buffer.from(head + body + after, 'latin1'),
    features,
    verdict,
    closes: http10 || c.framing.closes === true || (c.framing.chunked && c.chunks.endsConnection === true),
    framingSure:
      (c.line.verdict === 'valid' || c.line.sure === true) &&
      (c.framing.verdict === 'valid' || c.framing.sure === true) &&
      (!c.framing.chunked || ((c.chunks.verdict === 'valid' || c.chunks.sure === true) && !http10)),
    method: c.line.name === 'line-lower-method' ? c.method.toLowerCase() : c.method,
    body: p,
  }
}

// ---- one exchange -----------------------------------------------------------------------------------------

interface Answer {
  status: number
  /** node:http's own answer to what its parser refused (the listener's, not the proxy's) */
  listener: boolean
}

interface Outcome {
  answers: Answer[]
  /** the front closed the connection (within CONNECTION_MS) */
  closed: boolean
  text: string
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

/** writes `bytes` on a new connection and reads until the front closes it (after `Connection: close`) */
async function exchange(port: number, bytes: Buffer): Promise<Outcome> {
  const socket = connect({ port, host: '127.0.0.1' })
  let text = ''
  socket.on('data', (c: Buffer) => {
    text += c.toString('latin1')
  })
  socket.on('error', () => {})
  await once(socket, 'connect')
  const closed = new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), CONNECTION_MS)
    socket.on('close', () => {
      clearTimeout(timer)
      resolve(true)
    })
  })
  socket.write(bytes)
  const done = await closed
  socket.destroy()
  return { answers: answersIn(text), closed: done, text }
}

// ---- judging ----------------------------------------------------------------------------------------------

/**
 * What a front did with the first request of a case. Refused: answered 4xx/5xx, and the upstream got none of
 * it, or (a fault found in a body already streaming: a trailer field, a chunk line) a request it never saw
 * end, its connection closed under it.
 */
type Handling = 'forwarded' | 'refused' | 'dropped' | 'other'

interface Seen {
  handling: Handling
  first: Arrival | undefined
  after: Arrival | undefined
  smuggled: Arrival[]
  outcome: Outcome
}

function seenBy(arrivals: Arrival[], id: number, outcome: Outcome): Seen {
  const mine = arrivals.filter((a) => a.url.includes(`/c/${id}/`) || a.url.includes(`/smuggled/${id}`))
  const first = mine.find((a) => a.url.includes(pathOf(id, 'first')))
  const after = mine.find((a) => a.url.includes(pathOf(id, 'after')))
  const smuggled = mine.filter((a) => a.url.includes('/smuggled/'))
  const status = outcome.answers[0]?.status
  const handling: Handling =
    first?.complete === true
      ? 'forwarded'
      : status !== undefined && status >= 400
        ? 'refused'
        : first === undefined && status === undefined
          ? 'dropped'
          : 'other'
  return { handling, first, after, smuggled, outcome }
}

/** what is wrong with nhi-proxy's handling of a case, whatever nginx did; or undefined */
function judgeProxy(w: Wire, s: Seen, id: number): string | undefined {
  if (!s.outcome.closed) return `the connection was still open after ${CONNECTION_MS} ms`
  if (s.smuggled.length > 0)
    return `the payload in the body reached the upstream as a request: ${s.smuggled[0]!.url}`
  if (s.handling === 'other')
    return `neither forwarded whole nor refused: answers ${JSON.stringify(s.outcome.answers)}, upstream got ${JSON.stringify(s.first)}`
  if (s.handling === 'forwarded') {
    if (w.verdict === 'invalid')
      return `forwarded a request a server must refuse (${w.features.filter((f) => f.verdict === 'invalid').map((f) => f.name)})`
    const first = s.first!
    if (first.method !== w.method) return `method ${first.method}, not ${w.method}`
    if (first.url !== pathOf(id, 'first')) return `target ${JSON.stringify(first.url)}`
    if (first.body !== w.body) return `a body of ${JSON.stringify(first.body)}, not the payload`
    if (w.closes && s.after !== undefined)
      return 'forwarded the request behind one after which the connection closes'
  }
  if (s.handling === 'refused') {
    const status = s.outcome.answers[0]!.status
    if (status >= 500 && status !== 501 && status !== 505) return `refused with ${status}`
    // where the request ends is sure: the one behind it may be read (node:http reads on after the proxy's
    // own refusals, of a Host or a coding it does not forward)
    if (!w.framingSure) {
      if (s.outcome.answers.length !== 1)
        return `more answers after the refusal: ${JSON.stringify(s.outcome.answers)}`
      if (s.after !== undefined) return 'forwarded the request behind a refused one'
    }
  }
  // a request the upstream carried out whose client never had its answer
  const reached = [s.first, s.after].filter((a) => a !== undefined).length
  if (reached > s.outcome.answers.length)
    return `${reached} requests reached the upstream for ${s.outcome.answers.length} answers: ${JSON.stringify(s.outcome.answers)}`
  if (s.handling === 'dropped' && (s.after !== undefined || s.first !== undefined))
    return 'forwarded what it never answered'
  return undefined
}

/** a case's features but the plain ones, for a report */
const describe = (w: Wire) =>
  w.features
    .filter((f) => f.verdict !== 'valid' || !/^(line|host|cl|te|chunks|no-noise|no-expect)$/.test(f.name))
    .map((f) => f.name)
    .join(' ') || 'plain'

// ---- the test ---------------------------------------------------------------------------------------------

t.test(
  'ambiguous requests: nhi-proxy never forwards a framing it did not read as the upstream does, against nginx',
  { skip: skipWithoutNginx },
  async (t) => {
    const started = Date.now()
    const { sidecar, nginx, behindProxy, behindNginx, requestsEnded } = await startFronts(t, {
      http2: false,
      deadlineS: DEADLINE_S,
      auditRing: 4 * CASES,
    })
    const proxyPort = sidecar.proxyAddress.port

    const cases = fc.sample(desyncCase, { numRuns: CASES, seed: PROPERTY_SEED })
    const wires = cases.map((c, id) => wireOf(c, id))
    const outcomes = await mapLimit(wires, CONCURRENCY, (w) =>
      Promise.all([exchange(proxyPort, w.bytes), exchange(nginx.port, w.bytes)]),
    )
    // a body cut by the close is over once its upstream request closes
    await requestsEnded()

    t.same(behindProxy.unparsed, [], 'the upstream parsed every byte nhi-proxy sent')

    const failures: string[] = []
    const compared = new FrontComparison<Difference>('invalid')
    const answeredByProxy = new Map<number, Answer[]>()
    for (const [id, w] of wires.entries()) {
      const [proxyOutcome, nginxOutcome] = outcomes[id]!
      const proxy = seenBy(behindProxy.arrivals, id, proxyOutcome)
      const ref = seenBy(behindNginx.arrivals, id, nginxOutcome)
      answeredByProxy.set(id, proxyOutcome.answers)
      const sent = JSON.stringify(w.bytes.toString('latin1'))
      const wrong = judgeProxy(w, proxy, id)
      if (wrong !== undefined) failures.push(`case ${id} [${describe(w)}]: ${wrong}; sent ${sent}`)
      compared.add({
        label: `case ${id} [${describe(w)}]`,
        sent,
        features: w.features,
        verdict: w.verdict,
        proxyAnswered: `answered ${JSON.stringify(proxyOutcome.answers)}`,
        forwardedByProxy: proxy.handling === 'forwarded' ? proxy.first : undefined,
        forwardedByNginx: ref.handling === 'forwarded' ? ref.first : undefined,
      })
    }
    t.same(failures.slice(0, 5), [], `nhi-proxy kept every invariant (${failures.length} cases did not)`)
    compared.assertAgreement(t)

    // one audit line per request nhi-proxy answered or forwarded; the listener's own answer to bytes it could
    // not parse has no request to record, unless it took the place of one whose head was read
    const ring = (await (await fetch(`${sidecar.adminUrl}/audit?limit=${4 * CASES}`)).json()) as {
      events: { path: string; status: number }[]
    }
    const audited = new Map<number, number[]>()
    for (const e of ring.events) {
      const m = /^\/c\/(\d+)\//.exec(e.path)
      if (m) audited.set(Number(m[1]), [...(audited.get(Number(m[1])) ?? []), e.status])
    }
    const unaudited: string[] = []
    for (const [id, answers] of answeredByProxy) {
      const want = answers.filter((a) => !a.listener).map((a) => a.status)
      const got = [...(audited.get(id) ?? [])]
      for (const status of want) {
        const at = got.indexOf(status)
        if (at === -1)
          unaudited.push(
            `case ${id} [${describe(wires[id]!)}]: an answer ${status} with no audit line (lines: ${audited.get(id)}); sent ${JSON.stringify(wires[id]!.bytes.toString('latin1'))}`,
          )
        else got.splice(at, 1)
      }
      // what is left: at most one request the listener's answer cut, and requests read behind an answer that
      // closed the connection (499: never answered, never forwarded; judgeProxy holds the upstream to it)
      const listenerAnswers = answers.filter((a) => a.listener).map((a) => a.status)
      const cut = got.filter((status) => status !== CLIENT_CLOSED)
      if (cut.length > 1 || (cut.length === 1 && !listenerAnswers.includes(cut[0]!)))
        unaudited.push(
          `case ${id} [${describe(wires[id]!)}]: audit lines ${audited.get(id)} for answers ${JSON.stringify(answers)}; sent ${JSON.stringify(wires[id]!.bytes.toString('latin1'))}`,
        )
    }
    if (process.env['DESYNC_REPORT'])
      for (const f of [...failures, ...compared.undocumented, ...unaudited]) t.comment(f.slice(0, 1500))
    t.same(unaudited.slice(0, 5), [], 'one audit line per request nhi-proxy answered or forwarded')

    const { forwardedBoth, mustRefuse: invalid } = compared.counts
    t.ok(forwardedBoth > CASES / 5, `both fronts forwarded ${forwardedBoth} cases`)
    t.ok(invalid > CASES / 10, `${invalid} cases a server must refuse`)
    const report = compared.report()
    t.comment(`${CASES} cases (seed ${PROPERTY_SEED}) in ${Date.now() - started} ms: ${report.handled}`)
    t.comment(`nhi-proxy refused, nginx forwarded: ${report.documented}`)
    t.comment(
      `nginx forwarded what RFC 9112 has a server refuse, nhi-proxy refused it: ${report.nginxLenient}`,
    )
    t.comment(
      `nginx refused, nhi-proxy forwarded (RFC 9112 lets a server take them): ${report.nginxStricter}`,
    )
  },
)

// ---- hand-written cases, each once a disagreement of the generated ones -----------------------------------

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
  // an upgrade request and a CONNECT are handed over with the socket: the same
  const upgrade =
    'Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n'
  t.equal(
    await rawExchange(port, `GET /v4 HTTP/2.0\r\n${upgrade}\r\n`),
    versionRefusal,
    'a websocket upgrade in HTTP/2.0 without a Host: 505',
  )
  t.equal(
    await rawExchange(port, `GET http://other.example/v5 HTTP/2.0\r\nHost: app.example\r\n${upgrade}\r\n`),
    versionRefusal,
    'a websocket upgrade in HTTP/2.0 whose target names another authority than Host: 505',
  )
  t.equal(
    await rawExchange(port, 'CONNECT other.example:443 HTTP/2.0\r\nHost: other.example:443\r\n\r\n'),
    versionRefusal,
    'a CONNECT in HTTP/2.0: 505',
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
    // the same over HTTP/2: node:http2's compatibility layer answered 417 itself
    const session = h2connect(sidecar.proxyUrl)
    t.teardown(() => session.close())
    const stream = session.request({ ':method': 'POST', ':path': '/e2', expect: 'x-unknown' })
    stream.end('abc')
    const [head] = (await once(stream, 'response')) as [Record<string, unknown>]
    stream.resume()
    t.equal(head[':status'], 417, 'HTTP/2, Expect: x-unknown: 417')
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
        return events.length >= 5 ? events : undefined
      },
      { what: 'five audit lines' },
    )
    t.same(
      ring.map((e) => `${e.path} ${e.status}`).sort(),
      ['/e1 417', '/e1-after 200', '/e2 417', '/h1 400', '/h1-after 200'],
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
