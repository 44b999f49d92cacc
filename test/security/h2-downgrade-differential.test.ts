// HTTP/2 → HTTP/1.1 downgrade desync (H2.CL, H2.TE, header injection) from the attacker's side, on generated
// requests, with nginx as the reference front proxy. Each case is one prior-knowledge h2c connection carrying
// one to three streams, written frame by frame with HPACK literals (node:http2's client refuses most of what
// matters here): pseudo-header fields missing, repeated, unknown, out of place or with odd values; one regular
// field that must not cross into HTTP/1.1 (connection-specific fields, control bytes, names no token); a
// content-length that disagrees with the DATA sent; trailers with framing fields or pseudo-headers; DATA behind
// a stream's end. Every body is a whole HTTP/1.1 request of its own (the smuggling payload). The same frames go
// on fresh connections to the built nhi-proxy and to nginx (`listen … http2`, `proxy_pass` to a keep-alive
// upstream over HTTP/1.1), each in front of its own recording upstream: node:http with its strict parser, which
// keeps every request it parsed and every byte stream it could not parse.
// Held of nhi-proxy whatever nginx does: the upstream parses everything the proxy sends, each stream as at most
// one request, never the payload as a request; a forwarded stream reaches it with the method and target the
// proxy audited and exactly the DATA bytes as its body; no connection-specific field of the client's, no
// framing, routing or pseudo-header field in trailers, and no CR, LF or NUL, reaches it; a request RFC 9113
// §8.1.1 / §8.2.2 calls malformed is never forwarded whole, and a field nghttp2 drops instead (a name or value
// §8.2.1 forbids) leaves nothing of itself; every stream is answered, reset, or named by a GOAWAY, and the
// connection closes after a GOAWAY; each stream the proxy answered or forwarded has one audit line. Against
// nginx: where both forward, the upstream gets the same method, target and body from both; where nhi-proxy
// refuses what nginx forwards, the reason is one of DOCUMENTED_DIFFERENCES; the rest is counted and reported.
// Below the generated cases, hand-written ones for each disagreement that was a bug.
import { once } from 'node:events'
import { readFile } from 'node:fs/promises'
import { connect } from 'node:net'
import { connect as tlsConnect } from 'node:tls'
import fc from 'fast-check'
import t from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { FLAG, FRAME, frame, headerBlock, PREFACE, responseStatus } from '../helpers/h2-frames.ts'
import { mapLimit } from '../helpers/limit.ts'
import { FrontComparison, skipWithoutNginx, startFronts } from '../helpers/nginx.ts'
import { createServerPki, mtlsListen } from '../helpers/pki.ts'
import { PROPERTY_SEED } from '../helpers/property.ts'
import { type Arrival, recordingUpstream } from '../helpers/recording-upstream.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

/** generated cases (connections), each sent to both fronts */
const CASES = 120
const CONCURRENCY = 4
/** each front's own deadline for a request and an idle connection */
const DEADLINE_S = 2
/** a connection whose streams are not all answered (or the connection ended) within this long is a failure */
const CONNECTION_MS = 4 * DEADLINE_S * 1000

// ---- what RFC 9113 lets a server do with each feature -----------------------------------------------------
//
// valid: a server reads it as written; lenient: a server may refuse it or read it (and if it reads it, the
// body is the DATA sent); malformed: RFC 9113 §8.1.1 has the server treat it as malformed (a stream error), so
// forwarding it whole is a fault.
type Verdict = 'valid' | 'lenient' | 'malformed'
const WORSE: Record<Verdict, number> = { valid: 0, lenient: 1, malformed: 2 }

// Where nhi-proxy refuses what nginx forwards, on purpose; each case that shows one is counted under it.
const DOCUMENTED_DIFFERENCES = {
  trailerFraming:
    'content-length, transfer-encoding or host in a trailer section: 400 (docs "HTTP/2 and gRPC"; RFC 9110 §6.5.1)',
  authorityMissing:
    'neither :authority nor host: 400 as on HTTP/1.1 (RFC 9113 §8.3.1: a request with no authority has none to route by)',
  streamErrorAsConnectionError:
    'DATA on a stream its peer ended: nghttp2 ends the connection with GOAWAY STREAM_CLOSED where RFC 9113 §5.1 asks for a stream error (§5.4.1 lets an endpoint treat one as a connection error); on Node 22.23 node:http2 also ends it (GOAWAY or RST_STREAM INTERNAL_ERROR) for DATA that disagrees with a content-length. The streams behind it go unprocessed, nginx resets the one stream',
  pathFragment:
    'a # in :path: 400 (RFC 9113 §8.3.1: :path is the path and query of the target URI, a fragment is no part of it); nginx cuts it',
} as const
type Difference = keyof typeof DOCUMENTED_DIFFERENCES

interface Feature {
  name: string
  verdict: Verdict
  difference?: Difference
}

const weighted = <T>(...choices: [T, number][]) =>
  fc.oneof(...choices.map(([value, weight]) => ({ arbitrary: fc.constant(value), weight })))

type Field = readonly [string, string]

/** the payload: a whole HTTP/1.1 request, what an upstream reading past the body's end would parse next */
const payload = (id: number) => `GET /smuggled/${id} HTTP/1.1\r\nHost: app.example\r\nX-Pad: zzzz\r\n\r\n`

const pathOf = (id: number, stream: number) => `/c/${id}/s${stream}`

// ---- the grammar: pseudo-header fields ----------------------------------------------------------------------

interface PseudoVariant extends Feature {
  /** the pseudo-header fields (and host) before the regular ones, given the method and path */
  fields: (method: string, path: string) => Field[]
  /** pseudo-header fields placed after the regular ones */
  after?: (method: string, path: string) => Field[]
  /** the target the upstream must get, if it is not the path */
  target?: (path: string) => string
  /** the method the upstream must get, if it is not the one drawn */
  method?: (method: string) => string
  /** a CONNECT: never a request with a target and body to forward */
  connect?: true
}
const basic = (m: string, p: string, authority = 'app.example'): Field[] => [
  [':method', m],
  [':scheme', 'http'],
  [':authority', authority],
  [':path', p],
]
const PSEUDO: [PseudoVariant, number][] = [
  [{ name: 'pseudo', verdict: 'valid', fields: (m, p) => basic(m, p) }, 50],
  [
    { name: 'scheme-https', verdict: 'valid', fields: (m, p) => basic(m, p).with(1, [':scheme', 'https']) },
    2,
  ],
  [
    {
      name: 'scheme-other',
      verdict: 'lenient',
      fields: (m, p) => basic(m, p).with(1, [':scheme', 'foo']),
    },
    1,
  ],
  [
    {
      name: 'host-only',
      verdict: 'valid',
      fields: (m, p) => [
        [':method', m],
        [':scheme', 'http'],
        [':path', p],
        ['host', 'app.example'],
      ],
    },
    2,
  ],
  // RFC 9113 §8.3.1: a server SHOULD treat a host naming another authority than :authority as malformed
  [
    {
      name: 'host-differs',
      verdict: 'lenient',
      fields: (m, p) => [...basic(m, p), ['host', 'other.example']],
    },
    2,
  ],
  [{ name: 'host-same', verdict: 'valid', fields: (m, p) => [...basic(m, p), ['host', 'app.example']] }, 1],
  [
    {
      name: 'authority-missing',
      verdict: 'lenient',
      difference: 'authorityMissing',
      fields: (m, p) => [
        [':method', m],
        [':scheme', 'http'],
        [':path', p],
      ],
    },
    1,
  ],
  [{ name: 'path-missing', verdict: 'malformed', fields: (m) => basic(m, '').slice(0, 3) }, 1],
  [{ name: 'method-missing', verdict: 'malformed', fields: (m, p) => basic(m, p).slice(1) }, 1],
  [
    {
      name: 'scheme-missing',
      verdict: 'malformed',
      fields: (m, p) => basic(m, p).filter(([n]) => n !== ':scheme'),
    },
    1,
  ],
  [
    {
      name: 'path-twice',
      verdict: 'malformed',
      fields: (m, p) => [...basic(m, p), [':path', `${p}/other`]],
    },
    1,
  ],
  [{ name: 'method-twice', verdict: 'malformed', fields: (m, p) => [[':method', 'GET'], ...basic(m, p)] }, 1],
  [
    {
      name: 'pseudo-after-regular',
      verdict: 'malformed',
      fields: (m, p) => basic(m, p).slice(0, 3),
      after: (_m, p) => [[':path', p]],
    },
    1,
  ],
  [{ name: 'pseudo-unknown', verdict: 'malformed', fields: (m, p) => [...basic(m, p), [':foo', 'bar']] }, 1],
  [{ name: 'path-empty', verdict: 'malformed', fields: (m) => basic(m, '') }, 1],
  [{ name: 'path-star', verdict: 'malformed', fields: (m) => basic(m, '*') }, 1],
  [
    {
      name: 'path-absolute',
      verdict: 'lenient',
      fields: (m, p) => basic(m, `http://app.example${p}`),
    },
    1,
  ],
  [{ name: 'path-space', verdict: 'malformed', fields: (m, p) => basic(m, `${p} HTTP/1.1`) }, 1],
  [{ name: 'path-crlf', verdict: 'malformed', fields: (m, p) => basic(m, `${p}\r\nx-injected: 1`) }, 1],
  [
    {
      name: 'path-hash',
      verdict: 'lenient',
      difference: 'pathFragment',
      fields: (m, p) => basic(m, `${p}#frag`),
    },
    1,
  ],
  [
    {
      name: 'path-query-only',
      verdict: 'valid',
      fields: (m, p) => basic(m, `${p}?`),
      target: (p) => `${p}?`,
    },
    1,
  ],
  [{ name: 'path-non-ascii', verdict: 'lenient', fields: (m, p) => basic(m, `${p}/caf\xe9`) }, 1],
  [{ name: 'method-space', verdict: 'malformed', fields: (m, p) => basic(`${m} /x`, p) }, 1],
  [
    {
      name: 'method-lower',
      verdict: 'lenient',
      fields: (m, p) => basic(m.toLowerCase(), p),
      method: (m) => m.toLowerCase(),
    },
    1,
  ],
  [
    {
      name: 'connect',
      verdict: 'lenient',
      connect: true,
      fields: () => [
        [':method', 'CONNECT'],
        [':authority', 'app.example:80'],
      ],
    },
    1,
  ],
  // RFC 8441 §4: :protocol from a client the server did not offer SETTINGS_ENABLE_CONNECT_PROTOCOL to
  [
    {
      name: 'connect-protocol',
      verdict: 'malformed',
      connect: true,
      fields: (_m, p) => [...basic('CONNECT', p), [':protocol', 'websocket']],
    },
    1,
  ],
]

// ---- the grammar: one regular field -------------------------------------------------------------------------

interface FieldVariant extends Feature {
  field: Field
  /** the field line is dropped by a front that takes the request: nothing of it may reach the upstream */
  dropped?: true
}
const FIELDS: [FieldVariant, number][] = [
  [{ name: 'field', verdict: 'valid', field: ['x-note', 'plain'] }, 50],
  [{ name: 'te-trailers', verdict: 'valid', field: ['te', 'trailers'] }, 2],
  [{ name: 'value-obs-text', verdict: 'valid', field: ['x-note', 'caf\xe9'] }, 1],
  // RFC 9113 §8.2.2: connection-specific fields make a request malformed
  [{ name: 'transfer-encoding', verdict: 'malformed', field: ['transfer-encoding', 'chunked'] }, 3],
  [{ name: 'transfer-encoding-gzip', verdict: 'malformed', field: ['transfer-encoding', 'gzip'] }, 1],
  [{ name: 'connection', verdict: 'malformed', field: ['connection', 'keep-alive'] }, 1],
  [{ name: 'connection-close', verdict: 'malformed', field: ['connection', 'close, x-note'] }, 1],
  [{ name: 'keep-alive', verdict: 'malformed', field: ['keep-alive', 'timeout=5'] }, 1],
  [{ name: 'proxy-connection', verdict: 'malformed', field: ['proxy-connection', 'keep-alive'] }, 1],
  [{ name: 'upgrade', verdict: 'malformed', field: ['upgrade', 'websocket'] }, 1],
  [{ name: 'te-gzip', verdict: 'malformed', field: ['te', 'gzip'] }, 1],
  // RFC 9113 §8.2.1 calls these malformed; nghttp2 drops the field line and takes the rest of the request (its
  // choice, against the letter), which is safe as long as nothing of the field reaches the upstream
  [{ name: 'value-cr', verdict: 'lenient', dropped: true, field: ['x-note', 'a\rb'] }, 1],
  [{ name: 'value-lf', verdict: 'lenient', dropped: true, field: ['x-note', 'a\nx-injected: 1'] }, 1],
  [
    {
      name: 'value-crlf-request',
      verdict: 'lenient',
      dropped: true,
      field: ['x-note', 'a\r\n\r\nGET /smuggled/0 HTTP/1.1\r\nHost: app.example\r\n\r\n'],
    },
    1,
  ],
  [{ name: 'value-nul', verdict: 'lenient', dropped: true, field: ['x-note', 'a\0b'] }, 1],
  // malformed by the letter of §8.2.1, harmless once trimmed: a server may take it (nghttp2 does)
  [{ name: 'value-leading-space', verdict: 'lenient', field: ['x-note', ' a'] }, 1],
  [{ name: 'value-trailing-tab', verdict: 'lenient', field: ['x-note', 'a\t'] }, 1],
  [{ name: 'name-upper', verdict: 'lenient', dropped: true, field: ['X-Note', 'a'] }, 1],
  [{ name: 'name-space', verdict: 'lenient', dropped: true, field: ['x note', 'a'] }, 1],
  [{ name: 'name-colon', verdict: 'lenient', dropped: true, field: ['x:note', 'a'] }, 1],
  [{ name: 'name-quote', verdict: 'lenient', dropped: true, field: ['x"note', 'a'] }, 1],
  [{ name: 'name-ctl', verdict: 'lenient', dropped: true, field: ['x\x01note', 'a'] }, 1],
  [{ name: 'name-crlf', verdict: 'lenient', dropped: true, field: ['x-note\r\nx-injected', 'a'] }, 1],
  [{ name: 'name-empty', verdict: 'lenient', dropped: true, field: ['', 'a'] }, 1],
]

// ---- the grammar: the body's framing ----------------------------------------------------------------------

interface FramingVariant extends Feature {
  /** content-length fields given the payload's length */
  lengths: (n: number) => Field[]
  /** the DATA frames' payloads, given the payload; [] ends the stream on HEADERS */
  data: (p: string) => string[]
  /** DATA sent on the stream after it ended (a stream error, never part of the body) */
  dataAfterEnd?: true
}
const DATA_AFTER_END: FramingVariant = {
  name: 'data-after-end',
  verdict: 'lenient',
  lengths: () => [],
  data: () => [],
  dataAfterEnd: true,
}
/**
 * A connection that may end on one stream's error: nghttp2 ends it for DATA after a stream's end, Node 22.23's
 * node:http2 for DATA that disagrees with a stream's content-length (RFC 9113 §8.1.1, a stream error on the
 * other versions). Its other streams may then go with a GOAWAY or a reset INTERNAL_ERROR.
 */
const endsConnection = (w: Wire) =>
  w.streams.some((x) =>
    x.features.some((f) => f === DATA_AFTER_END || (f.verdict === 'malformed' && f.name.startsWith('cl-'))),
  )
/**
 * how a stream went with its connection (endsConnection): named by the GOAWAY, reset INTERNAL_ERROR, or with the
 * connection closed before either was written (over TLS, node:http2 may close it with its last frames unsent)
 */
const wentWithConnection = (outcome: StreamOutcome) =>
  outcome.startsWith('goaway') || outcome === 'reset 2' || outcome === 'none'

const FRAMINGS: [FramingVariant, number][] = [
  [{ name: 'data', verdict: 'valid', lengths: () => [], data: (p) => [p] }, 20],
  [{ name: 'data-split', verdict: 'valid', lengths: () => [], data: (p) => [p.slice(0, 9), p.slice(9)] }, 5],
  [{ name: 'cl', verdict: 'valid', lengths: (n) => [['content-length', `${n}`]], data: (p) => [p] }, 20],
  [
    {
      name: 'cl-split',
      verdict: 'valid',
      lengths: (n) => [['content-length', `${n}`]],
      data: (p) => [p.slice(0, 20), p.slice(20)],
    },
    3,
  ],
  [
    { name: 'cl-zeros', verdict: 'valid', lengths: (n) => [['content-length', `00${n}`]], data: (p) => [p] },
    2,
  ],
  [
    {
      name: 'cl-more',
      verdict: 'malformed',
      lengths: (n) => [['content-length', `${n + 30}`]],
      data: (p) => [p],
    },
    3,
  ],
  [
    {
      name: 'cl-less',
      verdict: 'malformed',
      lengths: (n) => [['content-length', `${n - 30}`]],
      data: (p) => [p],
    },
    3,
  ],
  [{ name: 'cl-zero', verdict: 'malformed', lengths: () => [['content-length', '0']], data: (p) => [p] }, 3],
  [
    {
      name: 'cl-no-data',
      verdict: 'malformed',
      lengths: (n) => [['content-length', `${n}`]],
      data: () => [],
    },
    2,
  ],
  [
    {
      name: 'cl-two-same',
      verdict: 'lenient',
      lengths: (n) => [
        ['content-length', `${n}`],
        ['content-length', `${n}`],
      ],
      data: (p) => [p],
    },
    1,
  ],
  [
    {
      name: 'cl-two-differ',
      verdict: 'malformed',
      lengths: (n) => [
        ['content-length', '0'],
        ['content-length', `${n}`],
      ],
      data: (p) => [p],
    },
    1,
  ],
  [
    {
      name: 'cl-list',
      verdict: 'lenient',
      lengths: (n) => [['content-length', `${n}, ${n}`]],
      data: (p) => [p],
    },
    1,
  ],
  [
    {
      name: 'cl-plus',
      verdict: 'malformed',
      lengths: (n) => [['content-length', `+${n}`]],
      data: (p) => [p],
    },
    1,
  ],
  [
    { name: 'cl-space', verdict: 'lenient', lengths: (n) => [['content-length', ` ${n}`]], data: (p) => [p] },
    1,
  ],
  [DATA_AFTER_END, 3],
]

// ---- the grammar: trailers ------------------------------------------------------------------------------

interface TrailerVariant extends Feature {
  fields: Field[]
}
const TRAILERS: [TrailerVariant, number][] = [
  [{ name: 'no-trailers', verdict: 'valid', fields: [] }, 30],
  [{ name: 'trailers', verdict: 'valid', fields: [['x-trailer', 'a']] }, 3],
  [
    {
      name: 'trailer-length',
      verdict: 'lenient',
      difference: 'trailerFraming',
      fields: [['content-length', '0']],
    },
    1,
  ],
  [{ name: 'trailer-coding', verdict: 'malformed', fields: [['transfer-encoding', 'chunked']] }, 1],
  [
    {
      name: 'trailer-host',
      verdict: 'lenient',
      difference: 'trailerFraming',
      fields: [['host', 'other.example']],
    },
    1,
  ],
  // RFC 9113 §8.1: pseudo-header fields MUST NOT appear in a trailer section
  [{ name: 'trailer-pseudo', verdict: 'malformed', fields: [[':path', '/smuggled/trailer']] }, 1],
]

const streamSpec = fc.record({
  method: weighted(['POST', 4], ['PUT', 1], ['GET', 1]),
  pseudo: weighted(...PSEUDO),
  field: weighted(...FIELDS),
  framing: weighted(...FRAMINGS),
  trailers: weighted(...TRAILERS),
})
type StreamSpec = typeof streamSpec extends fc.Arbitrary<infer V> ? V : never
const connectionCase = fc.array(streamSpec, { minLength: 1, maxLength: 3 })

/** one stream as sent, and what a front that forwards it must give the upstream */
interface WireStream {
  id: number
  features: Feature[]
  verdict: Verdict
  method: string
  target: string
  body: string
  connect: boolean
  /** a field line a front that takes the request must drop */
  dropped: Field | undefined
}

interface Wire {
  frames: Buffer[]
  streams: WireStream[]
}

const CONTINUATION = 9
const HEADERS_MAX = 48

/** a header block as HEADERS and, past HEADERS_MAX bytes, CONTINUATION frames */
function headerFrames(streamId: number, fields: readonly Field[], endStream: boolean): Buffer[] {
  const block = headerBlock(fields)
  const frames: Buffer[] = []
  for (let at = 0; at === 0 || at < block.length; at += HEADERS_MAX) {
    const last = at + HEADERS_MAX >= block.length
    const flags = (last ? FLAG.END_HEADERS : 0) | (at === 0 && endStream ? FLAG.END_STREAM : 0)
    frames.push(
      frame(at === 0 ? FRAME.HEADERS : CONTINUATION, flags, streamId, block.subarray(at, at + HEADERS_MAX)),
    )
  }
  return frames
}

const latin1 = (s: string) => Buffer.from(s, 'latin1')

function wireOf(specs: StreamSpec[], id: number): Wire {
  const frames: Buffer[] = [PREFACE, frame(FRAME.SETTINGS, 0, 0, Buffer.alloc(0))]
  const streams: WireStream[] = []
  for (const [i, s] of specs.entries()) {
    const streamId = 1 + 2 * i
    const path = pathOf(id, streamId)
    const p = payload(id)
    const features: Feature[] = [s.pseudo, s.field, s.framing, s.trailers]
    const verdict = features.reduce<Verdict>(
      (worst, f) => (WORSE[f.verdict] > WORSE[worst] ? f.verdict : worst),
      'valid',
    )
    const data = s.framing.data(p)
    const endOnHeaders = data.length === 0 && s.trailers.fields.length === 0
    const fields: Field[] = [
      ...s.pseudo.fields(s.method, path),
      s.field.field,
      ...s.framing.lengths(p.length),
      ...(s.pseudo.after?.(s.method, path) ?? []),
    ]
    frames.push(...headerFrames(streamId, fields, endOnHeaders))
    for (const [k, chunk] of data.entries()) {
      const last = k === data.length - 1 && s.trailers.fields.length === 0
      frames.push(frame(FRAME.DATA, last ? FLAG.END_STREAM : 0, streamId, latin1(chunk)))
    }
    if (s.trailers.fields.length > 0) frames.push(...headerFrames(streamId, s.trailers.fields, true))
    if (s.framing.dataAfterEnd === true) frames.push(frame(FRAME.DATA, FLAG.END_STREAM, streamId, latin1(p)))
    streams.push({
      id: streamId,
      features,
      verdict,
      method: s.pseudo.method?.(s.method) ?? s.method,
      target: s.pseudo.target?.(path) ?? path,
      body: data.join(''),
      connect: s.pseudo.connect === true,
      dropped: s.field.dropped === true ? s.field.field : undefined,
    })
  }
  return { frames, streams }
}

// ---- one exchange -----------------------------------------------------------------------------------------

/** what answered one stream: `status N` (`status ?` for one not in the static table), `reset N`, `goaway N`, `none` */
type StreamOutcome = string

/**
 * Writes a case's frames on a new connection and reads until every stream is answered (response HEADERS or
 * RST_STREAM), a GOAWAY names it unprocessed, or the front closes the connection. SETTINGS are acknowledged.
 */
async function exchange(port: number, wire: Wire, tls?: { ca: string }): Promise<Map<number, StreamOutcome>> {
  const socket =
    tls === undefined
      ? connect({ port, host: '127.0.0.1' })
      : tlsConnect({ port, host: '127.0.0.1', servername: 'localhost', ca: tls.ca, ALPNProtocols: ['h2'] })
  socket.on('error', () => {})
  await once(socket, tls === undefined ? 'connect' : 'secureConnect')
  let buf = Buffer.alloc(0)
  let closed = false
  socket.on('data', (c: Buffer) => {
    buf = Buffer.concat([buf, c])
  })
  socket.on('close', () => {
    closed = true
  })
  socket.write(Buffer.concat(wire.frames))
  const outcomes = new Map<number, StreamOutcome>()
  let goaway: { last: number; code: number } | undefined
  let at = 0
  const ids = wire.streams.map((s) => s.id)
  const read = () => {
    while (at + 9 <= buf.length) {
      const length = buf.readUIntBE(at, 3)
      if (at + 9 + length > buf.length) break
      const type = buf[at + 3]
      const flags = buf[at + 4]!
      const id = buf.readUInt32BE(at + 5) & 0x7fffffff
      const body = buf.subarray(at + 9, at + 9 + length)
      if (type === FRAME.SETTINGS && (flags & FLAG.ACK) === 0 && !socket.destroyed)
        socket.write(frame(FRAME.SETTINGS, FLAG.ACK, 0, Buffer.alloc(0)))
      if (type === FRAME.GOAWAY)
        goaway = { last: body.readUInt32BE(0) & 0x7fffffff, code: body.readUInt32BE(4) }
      if (!outcomes.has(id) && ids.includes(id)) {
        if (type === FRAME.RST_STREAM) outcomes.set(id, `reset ${body.readUInt32BE(0)}`)
        if (type === FRAME.HEADERS) {
          // a PADDED (8) or PRIORITY (0x20) flag moves the block
          let from = flags & 8 ? 1 : 0
          if (flags & 0x20) from += 5
          const status = responseStatus(body.subarray(from))
          outcomes.set(id, `status ${status ?? '?'}`)
        }
      }
      at += 9 + length
    }
    if (goaway !== undefined)
      for (const id of ids)
        if (!outcomes.has(id) && id > goaway.last) outcomes.set(id, `goaway ${goaway.code}`)
    if (closed)
      for (const id of ids) if (!outcomes.has(id)) outcomes.set(id, goaway ? `goaway ${goaway.code}` : 'none')
    return outcomes.size === ids.length ? outcomes : undefined
  }
  try {
    return await eventually(read, {
      timeoutMs: CONNECTION_MS,
      what: `the answers on streams ${ids.join(', ')}`,
    })
  } catch {
    for (const id of ids) if (!outcomes.has(id)) outcomes.set(id, 'timeout')
    return outcomes
  } finally {
    socket.destroy()
  }
}

// ---- judging ----------------------------------------------------------------------------------------------

/** what a front did with one stream */
type Handling = 'forwarded' | 'refused' | 'cut' | 'dropped'

interface Seen {
  handling: Handling
  arrivals: Arrival[]
  smuggled: Arrival[]
  outcome: StreamOutcome
}

function seenBy(arrivals: Arrival[], caseId: number, s: WireStream, outcome: StreamOutcome): Seen {
  const mine = arrivals.filter(
    (a) => a.url.includes(pathOf(caseId, s.id)) || (s.connect && a.method === 'CONNECT'),
  )
  const smuggled = arrivals.filter((a) => a.url.includes(`/smuggled/${caseId}`))
  const handling: Handling = mine.some((a) => a.complete)
    ? 'forwarded'
    : mine.length > 0
      ? 'cut'
      : outcome.startsWith('status') || outcome.startsWith('reset')
        ? 'refused'
        : 'dropped'
  return { handling, arrivals: mine, smuggled, outcome }
}

/** connection-specific fields of the client's that must not reach an HTTP/1.1 upstream (RFC 9113 §8.2.2) */
const CONNECTION_SPECIFIC = new Set(['keep-alive', 'proxy-connection', 'upgrade'])

function headerFault(headers: [string, string][]): string | undefined {
  for (const [name, value] of headers) {
    const lower = name.toLowerCase()
    if (CONNECTION_SPECIFIC.has(lower)) return `${name}: ${value}`
    if (lower === 'te' && value !== 'trailers') return `${name}: ${value}`
    // the front's own framing of a body it streams is chunked, nothing else
    if (lower === 'transfer-encoding' && value.toLowerCase() !== 'chunked') return `${name}: ${value}`
    // the front's own: te, a field the front may pass on (RFC 9110 §10.1.4), is listed as it must be
    if (lower === 'connection' && !/^(keep-alive|close)(, te)?$/i.test(value)) return `${name}: ${value}`
    if (lower === 'x-injected' || /[\r\n\0]/.test(name + value))
      return `${JSON.stringify(name)}: ${JSON.stringify(value)}`
  }
  return undefined
}

/** what is wrong with nhi-proxy's handling of a stream, whatever nginx did; or undefined */
function judgeProxy(wire: Wire, w: WireStream, s: Seen): string | undefined {
  if (s.outcome === 'timeout') return `no answer within ${CONNECTION_MS} ms`
  if (s.smuggled.length > 0) return `the payload reached the upstream as a request: ${s.smuggled[0]!.url}`
  if (s.arrivals.length > 1) return `${s.arrivals.length} requests at the upstream`
  for (const a of s.arrivals) {
    const fault = headerFault(a.headers)
    if (fault !== undefined) return `the upstream got ${fault}`
    // RFC 9110 §6.5.1: no framing, routing or pseudo-header field in a trailer section
    const trailer = a.trailers.find(([n]) => /^(content-length|transfer-encoding|host|:.*)$/i.test(n))
    if (trailer !== undefined) return `the upstream got a trailer ${JSON.stringify(trailer)}`
    if (w.dropped !== undefined) {
      const names = new Set(['x-note', w.dropped[0].toLowerCase()])
      const kept = a.headers.find(([n]) => names.has(n.toLowerCase()))
      if (kept !== undefined)
        return `the upstream got ${JSON.stringify(kept)} for ${JSON.stringify(w.dropped)}`
    }
  }
  if (s.handling === 'forwarded') {
    if (w.connect) return 'a CONNECT forwarded as a request'
    if (w.verdict === 'malformed')
      return `forwarded a malformed request (${w.features.filter((f) => f.verdict === 'malformed').map((f) => f.name)})`
    const a = s.arrivals[0]!
    if (a.method !== w.method) return `method ${a.method}, not ${w.method}`
    if (a.url !== w.target) return `target ${JSON.stringify(a.url)}, not ${w.target}`
    if (a.body !== w.body) return `a body of ${JSON.stringify(a.body)}, not the DATA sent`
    // a connection error of another stream's (a GOAWAY) may take the answer with it
    if (
      !s.outcome.startsWith('status') &&
      !s.outcome.startsWith('goaway') &&
      !(endsConnection(wire) && wentWithConnection(s.outcome))
    )
      return `forwarded, then answered ${s.outcome}`
  }
  if (s.handling === 'refused' && s.outcome.startsWith('status')) {
    const status = Number(s.outcome.slice(7))
    if (status >= 500 && !(w.connect && status === 501)) return `refused with ${status}`
  }
  return undefined
}

const describe = (w: WireStream) =>
  w.features
    .filter((f) => !/^(pseudo|field|data|cl|no-trailers)$/.test(f.name))
    .map((f) => f.name)
    .join(' ') || 'plain'

const shown = (w: Wire) => JSON.stringify(Buffer.concat(w.frames.slice(2)).toString('latin1'))

/**
 * A stream whose client had no answer but that the proxy may have read and recorded: one whose connection
 * went before its answer reached the client (a GOAWAY for another stream's connection error: recorded with
 * the status it was answered), or one the HTTP/2 layer reset as malformed (PROTOCOL_ERROR: DATA past its
 * content-length) after its request had been read (recorded as 400, docs "Audit").
 */
const mayBeRecorded = (s: Seen) =>
  s.handling !== 'forwarded' && (wentWithConnection(s.outcome) || s.outcome === 'reset 1')

/**
 * What is wrong with the audit of the streams nhi-proxy answered with a status or forwarded (`answered`, by
 * path): one line each; beside them, `unanswered` streams (mayBeRecorded) may have a line.
 */
async function auditFaults(adminUrl: string, answered: Map<string, number>, unanswered: number) {
  const expected = [...answered.values()].reduce((a, b) => a + b, 0)
  const ring = await eventually(
    async () => {
      const { events } = (await (await fetch(`${adminUrl}/audit?limit=${4 * CASES}`)).json()) as {
        events: { path: string; status: number }[]
      }
      return events.length >= expected ? events : undefined
    },
    { what: 'an audit line for each stream answered' },
  )
  const audited = new Map<string, number>()
  for (const e of ring) {
    const m = /^\/c\/\d+\/s\d+/.exec(e.path)
    if (m) audited.set(m[0], (audited.get(m[0]) ?? 0) + 1)
  }
  // a :path the proxy refused as no path (a fragment in it, a CONNECT's) is recorded as ''
  const unrecordedPaths = ring.filter((e) => e.path === '').length
  const faults = [...audited].filter(([, n]) => n > 1).map(([path, n]) => `${path}: ${n} audit lines`)
  const lines = [...audited.values()].reduce((a, b) => a + b, 0) + unrecordedPaths
  if (lines < expected || lines - expected > unanswered)
    faults.push(
      `${expected} streams answered, ${lines} audit lines, ${unanswered} streams read and not answered`,
    )
  return faults
}

// ---- the test ---------------------------------------------------------------------------------------------

t.test(
  'HTTP/2 requests downgraded to HTTP/1.1: nhi-proxy never forwards a framing or field the upstream reads otherwise, against nginx',
  { skip: skipWithoutNginx },
  async (t) => {
    const started = Date.now()
    const { sidecar, nginx, behindProxy, behindNginx, requestsEnded } = await startFronts(t, {
      http2: true,
      deadlineS: DEADLINE_S,
      auditRing: 4 * CASES,
    })
    const proxyPort = sidecar.proxyAddress.port

    const cases = fc.sample(connectionCase, { numRuns: CASES, seed: PROPERTY_SEED })
    const wires = cases.map((c, id) => wireOf(c, id))
    const outcomes = await mapLimit(wires, CONCURRENCY, (w) =>
      Promise.all([exchange(proxyPort, w), exchange(nginx.port, w)]),
    )
    await requestsEnded()

    t.same(behindProxy.unparsed, [], 'the upstream parsed every byte nhi-proxy sent')

    const failures: string[] = []
    const compared = new FrontComparison<Difference>('malformed')
    /** per case, the streams the proxy answered with a status or forwarded */
    const answeredByProxy = new Map<string, number>()
    let unanswered = 0
    for (const [id, w] of wires.entries()) {
      const [proxyOutcomes, nginxOutcomes] = outcomes[id]!
      for (const s of w.streams) {
        const proxy = seenBy(behindProxy.arrivals, id, s, proxyOutcomes.get(s.id)!)
        const ref = seenBy(behindNginx.arrivals, id, s, nginxOutcomes.get(s.id)!)
        if (mayBeRecorded(proxy)) unanswered++
        if (proxy.outcome.startsWith('status') || proxy.handling === 'forwarded')
          answeredByProxy.set(pathOf(id, s.id), (answeredByProxy.get(pathOf(id, s.id)) ?? 0) + 1)
        const wrong = judgeProxy(w, s, proxy)
        if (wrong !== undefined)
          failures.push(
            `case ${id} stream ${s.id} [${describe(s)}]: ${wrong} (${proxy.outcome}); sent ${shown(w)}`,
          )
        compared.add({
          label: `case ${id} stream ${s.id} [${describe(s)}]`,
          sent: shown(w),
          features: s.features,
          verdict: s.verdict,
          proxyAnswered: proxy.outcome,
          forwardedByProxy: proxy.handling === 'forwarded' ? proxy.arrivals[0] : undefined,
          forwardedByNginx: ref.handling === 'forwarded' ? ref.arrivals[0] : undefined,
          alsoDocumented:
            wentWithConnection(proxy.outcome) && endsConnection(w)
              ? [
                  {
                    name: 'a stream error on the connection',
                    verdict: 'lenient',
                    difference: 'streamErrorAsConnectionError',
                  },
                ]
              : [],
        })
      }
    }
    if (process.env['DESYNC_REPORT'])
      for (const f of [...failures, ...compared.differ, ...compared.undocumented]) t.comment(f.slice(0, 1500))
    t.same(failures.slice(0, 5), [], `nhi-proxy kept every invariant (${failures.length} streams did not)`)
    compared.assertAgreement(t)

    // one audit line per stream nhi-proxy answered with a status or forwarded
    const unaudited = await auditFaults(sidecar.adminUrl, answeredByProxy, unanswered)
    if (process.env['DESYNC_REPORT']) for (const u of unaudited) t.comment(u)
    t.same(unaudited.slice(0, 5), [], 'one audit line per stream nhi-proxy answered or forwarded')

    const { requests: streams, forwardedBoth, mustRefuse: malformed } = compared.counts
    t.ok(forwardedBoth > streams / 6, `both fronts forwarded ${forwardedBoth} streams`)
    t.ok(malformed > streams / 10, `${malformed} malformed streams`)
    const report = compared.report()
    t.comment(
      `${CASES} connections, ${streams} streams (seed ${PROPERTY_SEED}) in ${Date.now() - started} ms: ${report.handled}`,
    )
    t.comment(`nhi-proxy refused, nginx forwarded: ${report.documented}`)
    t.comment(`nginx forwarded what RFC 9113 calls malformed, nhi-proxy did not: ${report.nginxLenient}`)
    t.comment(`nginx refused, nhi-proxy forwarded: ${report.nginxStricter}`)
  },
)

t.test('the same over h2 with TLS (ALPN): nhi-proxy keeps every invariant', async (t) => {
  const upstream = await recordingUpstream(t)
  const { ca, server } = await createServerPki()
  const sidecar = await startTestSidecar(t, {
    listen: mtlsListen(server, ca),
    upstream: `http://127.0.0.1:${upstream.port}`,
    timeouts: { headers: `${DEADLINE_S}s`, request: `${DEADLINE_S}s`, idle: `${DEADLINE_S}s` },
    audit: { output: 'off', ringSize: 4 * CASES },
  })
  const tls = { ca: await readFile(ca.certFile, 'utf8') }
  // every fourth case: the TLS listener hands its h2 connections to the same HTTP/2 front as h2c
  const wires = fc
    .sample(connectionCase, { numRuns: CASES, seed: PROPERTY_SEED })
    .map((c, id) => wireOf(c, id))
    .filter((_, id) => id % 4 === 0)
  const outcomes = await mapLimit(wires, CONCURRENCY, (w) => exchange(sidecar.httpsAddress!.port, w, tls))
  await eventually(() => upstream.open() === 0, { what: 'every upstream request to end' })
  t.same(upstream.unparsed, [], 'the upstream parsed every byte nhi-proxy sent')
  const failures: string[] = []
  const answered = new Map<string, number>()
  let unanswered = 0
  for (const [i, w] of wires.entries()) {
    const id = i * 4
    for (const s of w.streams) {
      const seen = seenBy(upstream.arrivals, id, s, outcomes[i]!.get(s.id)!)
      if (mayBeRecorded(seen)) unanswered++
      if (seen.outcome.startsWith('status') || seen.handling === 'forwarded')
        answered.set(pathOf(id, s.id), (answered.get(pathOf(id, s.id)) ?? 0) + 1)
      const wrong = judgeProxy(w, s, seen)
      if (wrong !== undefined)
        failures.push(`case ${id} stream ${s.id} [${describe(s)}]: ${wrong} (${seen.outcome})`)
    }
  }
  t.same(failures.slice(0, 5), [], `nhi-proxy kept every invariant (${failures.length} streams did not)`)
  t.same(
    (await auditFaults(sidecar.adminUrl, answered, unanswered)).slice(0, 5),
    [],
    'one audit line per stream nhi-proxy answered or forwarded',
  )
  t.ok(answered.size > wires.length / 3, `${answered.size} streams answered over TLS`)
})

// ---- hand-written cases, each once a disagreement of the generated ones -----------------------------------

t.test(
  'DATA on a stream its HEADERS ended: the connection nghttp2 ended with GOAWAY is closed, its answered streams recorded',
  async (t) => {
    const upstream = await recordingUpstream(t)
    const sidecar = await startTestSidecar(t, {
      upstream: `http://127.0.0.1:${upstream.port}`,
      timeouts: { idle: '1s' },
      audit: { output: 'off', ringSize: 10 },
    })
    const body = latin1(payload(0))
    const socket = connect({ port: sidecar.proxyAddress.port, host: '127.0.0.1' })
    socket.on('error', () => {})
    t.teardown(() => socket.destroy())
    await once(socket, 'connect')
    let closed = false
    socket.on('close', () => {
      closed = true
    })
    socket.resume()
    // stream 1 a whole POST, stream 3 a GET ended on its HEADERS and then sent DATA: a connection error
    // (STREAM_CLOSED, RFC 9113 §5.1) nghttp2 answers with GOAWAY, without a word to node:http2
    socket.write(
      Buffer.concat([
        PREFACE,
        frame(FRAME.SETTINGS, 0, 0, Buffer.alloc(0)),
        ...headerFrames(1, basic('POST', '/after-end/s1'), false),
        frame(FRAME.DATA, FLAG.END_STREAM, 1, body),
        ...headerFrames(3, basic('GET', '/after-end/s3'), true),
        frame(FRAME.DATA, FLAG.END_STREAM, 3, body),
      ]),
    )
    // the client keeps its side open: a session waiting for its streams to close waited for ever, and held
    // the shutdown up past its drain
    await eventually(() => closed, { what: 'the proxy to close the connection', timeoutMs: 10_000 })
    t.notOk(
      upstream.arrivals.some((a) => a.url.includes('/smuggled/')),
      'the payload never reached the upstream as a request',
    )
    t.ok(
      upstream.arrivals.every((a) => a.body === '' || a.body === body.toString('latin1')),
      'each body the upstream got is the DATA of its own stream',
    )
    const events = await eventually(
      async () => {
        const { events } = (await (await fetch(`${sidecar.adminUrl}/audit?limit=10`)).json()) as {
          events: { path: string; status: number }[]
        }
        return events.length >= upstream.arrivals.length ? events : undefined
      },
      { what: 'an audit line for each stream the upstream got' },
    )
    // a stream read before the connection ended has its line whether or not its forward reached the upstream
    // (Node 22, 24 and 26 end the connection before nghttp2's GOAWAY goes out: the forward is cut short)
    const audited = events.map((e) => e.path)
    t.ok(
      upstream.arrivals.every((a) => audited.filter((p) => p === a.url).length === 1),
      'one audit line for each request forwarded',
    )
    t.ok(
      audited.every((p) => p === '/after-end/s1' || p === '/after-end/s3') &&
        new Set(audited).size === audited.length,
      'no other line, and none twice',
    )
  },
)

t.test(
  'DATA past the content-length after the request was read: the upstream never gets the request whole',
  async (t) => {
    const upstream = await recordingUpstream(t)
    const sidecar = await startTestSidecar(t, { upstream: `http://127.0.0.1:${upstream.port}` })
    const body = latin1(payload(0))
    for (const [name, length, first] of [
      ['content-length: 0', 0, Buffer.alloc(0)],
      ['content-length: N, N bytes of DATA', body.length, body],
    ] as const) {
      const path = `/past-length/${length}`
      const socket = connect({ port: sidecar.proxyAddress.port, host: '127.0.0.1' })
      socket.on('error', () => {})
      t.teardown(() => socket.destroy())
      await once(socket, 'connect')
      let received = Buffer.alloc(0)
      socket.on('data', (c: Buffer) => {
        received = Buffer.concat([received, c])
      })
      const before = upstream.connections()
      // the request, its stream left open: read, and on its way to the upstream
      const fields: Field[] = [...basic('POST', path), ['content-length', `${length}`]]
      socket.write(
        Buffer.concat([
          PREFACE,
          frame(FRAME.SETTINGS, 0, 0, Buffer.alloc(0)),
          ...headerFrames(1, fields, false),
          ...(first.length > 0 ? [frame(FRAME.DATA, 0, 1, first)] : []),
        ]),
      )
      await eventually(() => upstream.connections().accepted > before.accepted, {
        what: `${name}: the proxy to connect to the upstream`,
      })
      // then DATA past its length: RFC 9113 §8.1.1, a malformed request the HTTP/2 layer resets
      socket.write(frame(FRAME.DATA, FLAG.END_STREAM, 1, body))
      await eventually(
        () => {
          for (let at = 0; at + 9 <= received.length; at += 9 + received.readUIntBE(at, 3))
            if (received[at + 3] === FRAME.RST_STREAM) return received.readUInt32BE(at + 9)
          return undefined
        },
        { what: `${name}: the stream reset` },
      )
      // its upstream request failed with it: the connection it had is closed
      await eventually(() => upstream.connections().closed > before.closed, {
        what: `${name}: the upstream connection to close`,
      })
      t.same(
        upstream.arrivals.filter((a) => a.url === path && a.complete),
        [],
        `${name}: the upstream never got the request whole`,
      )
      socket.destroy()
    }
  },
)
