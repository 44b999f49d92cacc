// Request header fields end to end, on generated requests: what the built proxy passes on of a request's header
// section is what a small reference, written here from RFC 9110 §5.3 and §7.6.1, RFC 9113 §8.2.1-§8.2.3 and
// docs/reference.md ("Headers", "HTTP/2 and gRPC"), says it must be, on all four crossings: HTTP/1.1 and h2c
// clients, each to an HTTP/1.1 (`http://`) and an h2c (`h2c://`) upstream. Requests carry end-to-end fields
// of many shapes (repeated names in any case, cookies in several lines or HTTP/2 crumbs, empty values,
// values with spaces and tabs inside, obs-text bytes on HTTP/1.1, values of some KiB, names of every tchar),
// hop-by-hop fields (Connection and the names it lists, Keep-Alive, Proxy-Connection, TE, Transfer-Encoding,
// Upgrade without an upgrade), and the fields the proxy sets or judges itself, as a client sends them to
// forge them: x-nhi-* (any case, `_` for `-`), x-forwarded-*, Forwarded, the client-address and
// forwarded-certificate headers, x-request-id, traceparent. Some come from 127.0.0.2, a trusted proxy. HTTP/1.1
// requests are raw bytes, h2c ones hand-encoded HEADERS frames (node:http2 would refuse to send some).
// The recording upstream keeps each request's field lines as they arrived; they are compared with the
// reference by name (lower case), the lines of one name combined in order as RFC 9110 §5.3 lets any
// recipient combine them (Cookie with "; ", RFC 9113 §8.2.3), so that order within a name counts and
// splitting or joining lines does not. The proxy's own fields are checked against what the docs promise.
//
// What the proxy does on purpose, and is expected so here (each with its reason where the reference says it):
// it drops more than RFC 9110's hop-by-hop fields (ALSO_DROPPED), other spellings of the fields it sets or
// reads, client-address headers from anyone but a trusted proxy, and forwarded certificates; it passes on the
// first line of a repeated field that is no list (FIRST_LINE_ONLY); it reads the fields it sets itself from
// what the client sent this hop even when Connection names them; and it sends `TE: trailers` of its own.
// The hand-written cases below are the disagreements the generated requests found, each fixed.
import fc from 'fast-check'
import t, { type Test } from 'tap'
import { FLAG, FRAME, frame, headerBlock, PREFACE, streamAnswers } from '../helpers/h2-frames.ts'
import { type Pairs, type RecordingUpstream, recordingUpstreams } from '../helpers/header-spellings.ts'
import { mapLimit } from '../helpers/limit.ts'
import { rawExchange } from '../helpers/net.ts'
import { checkBothSides, PROPERTY_SEED } from '../helpers/property.ts'
import { rng } from '../helpers/rng.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { TRUSTED_ONLY_HEADERS } from '../helpers/trusted-only-headers.ts'

/** requests per crossing: a few seconds each on a loaded machine */
const REQUESTS = 250
/** connections in flight at once, per client */
const CONCURRENCY = 6
/** the loopback address of the proxy in front the sidecar trusts (forwardedClientCert.trustedProxies) */
const TRUSTED = '127.0.0.2'
const HOST = 'app.example'

// ---- the reference ----------------------------------------------------------------------------------------
//
// Hop-by-hop fields (RFC 9110 §7.6.1), and the fields docs/reference.md ("Headers") adds to them: never passed
// on, nor their spellings with "_" for "-" (CGI/WSGI/Rack read those as the same header).
const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-connection', 'te', 'transfer-encoding', 'upgrade']
/** never passed on though RFC 9110 does not call them hop-by-hop, each with the reason it is deliberate */
const ALSO_DROPPED: [name: string, why: string][] = [
  [
    'trailer',
    'describes the body framing of this hop; the proxy writes its own for the trailers it passes on',
  ],
  ['proxy-authorization', "this hop's credentials (RFC 9110 §11.7.2), and the proxy demands none"],
  ['proxy-authenticate', 'a response field of this hop'],
  ['http2-settings', 'only meaningful with an h2c upgrade (RFC 9113 §3.2.1), which the proxy never performs'],
  ['proxy', 'HTTP_PROXY to a CGI-style app ("httpoxy"); names nothing a client has to send'],
]
/** the fields the proxy sets itself from what the client sent (docs "Headers") */
const SET_BY_PROXY = [
  'x-request-id',
  'traceparent',
  'tracestate',
  'x-forwarded-for',
  'x-forwarded-proto',
  'x-forwarded-host',
]
/** how a proxy names the client's address, and the request before it: a trusted proxy's only (docs "Headers") */
const TRUSTED_ONLY = TRUSTED_ONLY_HEADERS
/** forwarded client certificates: from anyone but a trusted proxy of their format, stripped (docs) */
const CERT_HEADERS = [
  'x-forwarded-client-cert',
  'client-cert',
  'client-cert-chain',
  'x-amzn-mtls-clientcert',
  'x-amzn-mtls-clientcert-leaf',
  'x-amzn-mtls-clientcert-subject',
  'x-ssl-client-cert',
]
/**
 * Fields that are not lists (RFC 9110 §5.3: a sender must not repeat them) which Node's HTTP/1.1 and HTTP/2
 * servers both read the first line of when a client repeats one anyway: the proxy reads, attributes by and
 * passes on that first value, never a second the upstream might read instead (deliberate; docs "Headers").
 */
const FIRST_LINE_ONLY = [
  'user-agent',
  'authorization',
  'content-type',
  'referer',
  'from',
  'max-forwards',
  'if-modified-since',
  'if-unmodified-since',
]
/** list fields (RFC 9110 §5.6.1) a client may send in several lines; node:http2 keeps one line of the first four */
const LISTS = ['if-match', 'if-none-match', 'content-language', 'content-encoding', 'accept', 'cache-control']

// Left out of the grammar, each for its reason:
//  - a repeated field that is not a list and not in FIRST_LINE_ONLY (Range, Date, DNT, …): an invalid message
//    with no meaning the sender could have had; the proxy joins its lines from either client, as Node's
//    HTTP/1.1 server does (one hand-written case below)
//  - Host and :authority (test/security/host-header.test.ts), Content-Length, and Expect (answered by the
//    proxy): test/proxy/request-framing-generated.test.ts checks framing fields and trailers
//  - `Upgrade: websocket` with `Connection: upgrade`: a tunnel (test/proxy/websocket.test.ts); any other
//    upgrade with a body: answered 400 (docs "Deviations"; test/security/upgrade.test.ts)
//  - forwarded-certificate headers from the trusted proxy: believed and rewritten by their format
//    (forwardedClientCert.toUpstream; test/identity)
//  - a TE element `trailers` with parameters, which RFC 9110 §10.1.4 does not give `trailers`

const lower = (s: string) => s.toLowerCase()
const trimmed = (v: string) => v.replace(/^[ \t]+|[ \t]+$/g, '')
/** a name as an upstream framework merges it (any case, "_" for "-") */
const merged = (name: string) => lower(name).replaceAll('_', '-')
/** the elements of a list field's combined value (RFC 9110 §5.6.1: empty elements do not count) */
const elements = (value: string | undefined) =>
  value === undefined
    ? []
    : value
        .split(',')
        .map((e) => e.trim())
        .filter((e) => e !== '')

/**
 * The lines of one name combined as RFC 9110 §5.3 allows a recipient to, in order (Cookie as RFC 9113 §8.2.3),
 * without whitespace at either end, which is no part of a field value (RFC 9110 §5.5): an empty last line
 * leaves none.
 */
function combine(name: string, values: string[]): string {
  return trimmed(values.join(name === 'cookie' ? '; ' : ', '))
}

/**
 * The attribution the proxy sets for each user agent a request carries first (none, blank, two programs, a
 * browser), no other credential being configured: docs/reference.md ("Identity model": no usable
 * credential is `anonymous`, `human` for a browser, else `unknown`; `name/version` programs are bots named
 * `ua:<product>`; a user agent alone is never verified).
 */
const ATTRIBUTION: Record<string, [identity: string, kind: string, source: string]> = {
  '': ['anonymous', 'unknown', 'anonymous'],
  'curl/8.5.0': ['ua:curl', 'bot', 'useragent'],
  'python-requests/2.31.0': ['ua:python-requests', 'bot', 'useragent'],
  'Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0': [
    'anonymous',
    'human',
    'useragent',
  ],
}
const USER_AGENTS = Object.keys(ATTRIBUTION)

/** what one upstream field must hold: undefined when it does, else what is wrong */
type Check = (got: string) => string | undefined

const exactly =
  (want: string): Check =>
  (got) =>
    got === want ? undefined : `${JSON.stringify(got)}, not ${JSON.stringify(want)}`
const listOf =
  (want: string[]): Check =>
  (got) =>
    JSON.stringify(elements(got)) === JSON.stringify(want)
      ? undefined
      : `elements ${JSON.stringify(elements(got))}, not ${JSON.stringify(want)}`

const REQUEST_ID = /^[\x21-\x7e]{1,128}$/
const CREATED_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/
const SENT_TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-0[0-3]$/

/** W3C Trace Context §3.2 (and the 512-character bound docs/reference.md gives): the parts of a valid one */
function validTraceparent(value: string | undefined) {
  if (value === undefined || value.length > 512) return undefined
  const m = TRACEPARENT.exec(value)
  if (m === null) return undefined
  const [, version, traceId, parentId, flags, rest] = m
  if (version === 'ff' || (version === '00' && rest !== undefined)) return undefined
  if (/^0+$/.test(traceId!) || /^0+$/.test(parentId!)) return undefined
  return { traceId: traceId!, parentId: parentId!, flags: Number.parseInt(flags!, 16) & 3 }
}

/** one request as a client sends it: its field lines (name as sent, value without OWS) in order */
interface Sent {
  client: 'h1' | 'h2'
  lines: Pairs
  /** from the trusted proxy's address */
  trusted: boolean
  /** HTTP/1.1: a chunked body (a POST), with an announced trailer section when the lines name one */
  chunked: boolean
}

/** an HTTP/2 request with a connection-specific field: malformed (RFC 9113 §8.2.2) */
const malformed = (sent: Sent) =>
  sent.client === 'h2' &&
  sent.lines.some(([name, value]) => HOP_BY_HOP.includes(name) && (name !== 'te' || value !== 'trailers'))

/**
 * What the upstream must get: lower-case name → what its combined value must be; or `reset` for an HTTP/2
 * request RFC 9113 §8.2.2 makes malformed (a connection-specific field), which never reaches the upstream.
 */
function expectedAt(sent: Sent, id: string, upstream: Upstream): Map<string, Check> | 'reset' {
  if (malformed(sent)) return 'reset'
  const byName = new Map<string, string[]>()
  const values = (name: string) => byName.get(name)
  for (const [name, value] of sent.lines) byName.set(lower(name), [...(byName.get(lower(name)) ?? []), value])
  const peer = sent.trusted ? TRUSTED : '127.0.0.1'
  /** what Connection lists: fields of this hop alone (RFC 9110 §7.6.1) */
  const listed = new Set(elements(values('connection')?.join(', ')).map(lower))
  const out = new Map<string, Check>([['x-case', exactly(id)]])
  for (const [n, vs] of byName) {
    const m = merged(n)
    if (HOP_BY_HOP.includes(m) || ALSO_DROPPED.some(([name]) => name === m)) continue
    if (listed.has(n) || listed.has(m)) continue
    // the framing of the body, which the proxy frames itself on each hop ("_": docs "Headers")
    if (m === 'content-length') continue
    if (m.startsWith('x-nhi-')) continue
    if (CERT_HEADERS.includes(m)) continue
    if (SET_BY_PROXY.includes(m) || m === 'forwarded') continue
    if (TRUSTED_ONLY.includes(m) && !sent.trusted) continue
    // another spelling of a header the proxy reads: the upstream gets the value it attributed by (docs)
    if (m === 'user-agent' && n !== 'user-agent') continue
    out.set(n, exactly(FIRST_LINE_ONLY.includes(n) ? vs[0]! : combine(n, vs)))
  }
  // the proxy's own, from what the client sent this hop, whether or not its Connection names them
  const [identity, kind, source] = ATTRIBUTION[values('user-agent')?.[0] ?? '']!
  out.set('x-nhi-identity', exactly(identity))
  out.set('x-nhi-kind', exactly(kind))
  out.set('x-nhi-source', exactly(source))
  out.set('x-nhi-verified', exactly('false'))
  const requestId = values('x-request-id')?.join(', ')
  out.set(
    'x-request-id',
    requestId !== undefined && REQUEST_ID.test(requestId)
      ? exactly(requestId)
      : (got) => (CREATED_ID.test(got) ? undefined : `${JSON.stringify(got)} is not a created id`),
  )
  const parent = validTraceparent(values('traceparent')?.join(', '))
  out.set('traceparent', (got) => {
    const m = SENT_TRACEPARENT.exec(got)
    if (m === null) return `${JSON.stringify(got)} is not a version 00 traceparent with known flags`
    if (parent === undefined) return got.endsWith('-01') ? undefined : `a new trace not sampled: ${got}`
    const want = `00-${parent.traceId}-${m[2]}-0${parent.flags}`
    if (got !== want || m[2] === parent.parentId) return `${got} does not continue ${values('traceparent')}`
    return undefined
  })
  const tracestate = values('tracestate') && combine('tracestate', values('tracestate')!)
  if (parent !== undefined && tracestate !== undefined && tracestate !== '')
    out.set('tracestate', exactly(tracestate))
  const chain = (name: string, own: string) => [
    ...(sent.trusted ? elements(values(name)?.join(', ')) : []),
    own,
  ]
  out.set('x-forwarded-for', listOf([...elements(values('x-forwarded-for')?.join(', ')), peer]))
  out.set('x-forwarded-proto', listOf(chain('x-forwarded-proto', 'http')))
  out.set('x-forwarded-host', listOf(chain('x-forwarded-host', HOST)))
  // RFC 7239: this hop's element, after a trusted proxy's; only where the client sent one for the next hop
  if (values('forwarded') !== undefined && !listed.has('forwarded'))
    out.set('forwarded', listOf(chain('forwarded', `for=${peer};proto=http;host=${HOST}`)))
  // RFC 9110 §10.1.4: the proxy takes trailers, and says so to an upstream only for a client that does
  if (elements(values('te')?.join(', ')).some((e) => lower(e) === 'trailers'))
    out.set('te', exactly('trailers'))
  // an HTTP/1.1 upstream is told the trailer fields passed on (docs "HTTP/2 and gRPC"); an h2c one reads
  // HTTP/2 trailers
  const announced = values('trailer')
  if (sent.chunked && announced !== undefined && upstream === 'http') {
    const passed = elements(announced.join(', ')).filter((name) => !listed.has(lower(name)))
    if (passed.length > 0) out.set('trailer', exactly(passed.join(', ')))
  }
  return out
}

/** framing and connection fields the upstream hop carries, the proxy's own for that hop, checked apart */
const HOP_OWN = new Set(['content-length', 'transfer-encoding', 'connection', 'host'])

/** what is wrong with the lines the upstream received, or undefined */
function judge(received: Pairs, expected: Map<string, Check>, upstream: Upstream): string | undefined {
  const byName = new Map<string, string[]>()
  const hop: Pairs = []
  for (const [name, value] of received) {
    const n = lower(name)
    if (n.startsWith(':') || HOP_OWN.has(n)) {
      hop.push([n, value])
      continue
    }
    byName.set(n, [...(byName.get(n) ?? []), value])
  }
  const missing = [...expected.keys()].filter((n) => !byName.has(n))
  if (missing.length > 0) return `missing ${JSON.stringify(missing)}`
  const extra = [...byName.keys()].filter((n) => !expected.has(n))
  if (extra.length > 0)
    return `not to be passed on: ${JSON.stringify(extra.map((n) => [n, combine(n, byName.get(n)!)]))}`
  for (const [n, check] of expected) {
    const wrong = check(combine(n, byName.get(n)!))
    if (wrong !== undefined) return `${n}: ${wrong}`
  }
  // the attribution the proxy set is the only one, in any spelling an upstream merges (docs "Headers")
  const identities = received.filter(([name]) => merged(name) === 'x-nhi-identity')
  if (identities.length !== 1)
    return `x-nhi-identity in ${identities.length} lines: ${JSON.stringify(identities)}`
  const of = (name: string) => hop.filter(([n]) => n === name).map(([, v]) => v)
  if (upstream === 'http') {
    // one Cookie line to an HTTP/1.1 upstream (RFC 9113 §8.2.3 for crumbs, RFC 6265 §5.4)
    const cookies = received.filter(([name]) => lower(name) === 'cookie')
    if (cookies.length > 1) return `cookie in ${cookies.length} lines to an HTTP/1.1 upstream`
    if (JSON.stringify(of('host')) !== JSON.stringify([HOST]))
      return `host lines ${JSON.stringify(of('host'))}`
    // the engine's own: keep-alive or close, and the TE option with a TE field (RFC 9110 §10.1.4)
    const connection = of('connection').flatMap((line) => elements(line).map(lower))
    const want = expected.has('te') ? ['te'] : []
    if (
      !['keep-alive', 'close'].includes(connection[0]!) ||
      JSON.stringify(connection.slice(1)) !== JSON.stringify(want)
    )
      return `connection lines ${JSON.stringify(of('connection'))}: not the engine's own${want.length > 0 ? ' with te' : ''}`
    if (of('content-length').length + of('transfer-encoding').length > 1)
      return `framed twice: ${JSON.stringify(hop)}`
  } else {
    if (JSON.stringify(of(':authority')) !== JSON.stringify([HOST]))
      return `:authority ${JSON.stringify(of(':authority'))}`
    const fields = hop.filter(([n]) => !n.startsWith(':') && n !== 'content-length')
    if (fields.length > 0) return `fields of an HTTP/1.1 hop to an HTTP/2 upstream: ${JSON.stringify(fields)}`
  }
  return undefined
}

// ---- the grammar ------------------------------------------------------------------------------------------

const weighted = <T>(...choices: [T, number][]) =>
  fc.oneof(...choices.map(([value, weight]) => ({ arbitrary: fc.constant(value), weight })))

const VISIBLE = [...Array(0x7e - 0x21 + 1)].map((_, i) => String.fromCharCode(0x21 + i))
const OBS_TEXT = [...Array(0x80)].map((_, i) => String.fromCharCode(0x80 + i))
const TCHARS = [..."abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~"]

/** A field value: visible bytes with spaces and tabs inside, obs-text on HTTP/1.1, empty, or some KiB long. */
function fieldValue(client: 'h1' | 'h2'): fc.Arbitrary<string> {
  const unit = fc.oneof(
    { arbitrary: fc.constantFrom(...VISIBLE), weight: 16 },
    { arbitrary: fc.constantFrom(' ', '\t', '  '), weight: 3 },
    { arbitrary: fc.constantFrom(...OBS_TEXT), weight: client === 'h1' ? 1 : 0 },
  )
  const long = fc
    .record({ length: fc.integer({ min: 300, max: 3000 }), seed: fc.integer() })
    .map(({ length, seed }) => {
      const next = rng(seed)
      const chars = client === 'h1' ? [...VISIBLE, ' ', '\t', ...OBS_TEXT.slice(0, 8)] : [...VISIBLE, ' ']
      let v = ''
      for (let i = 0; i < length; i++) v += chars[Math.floor(next() * chars.length)]
      return trimmed(v)
    })
  return fc.oneof(
    { arbitrary: fc.string({ unit, maxLength: 24 }).map(trimmed), weight: 14 },
    { arbitrary: fc.constant(''), weight: 2 },
    { arbitrary: long, weight: 1 },
  )
}

/**
 * `name` as a client spells it: any letter case on HTTP/1.1 (lower case on HTTP/2, RFC 9113 §8.2.1), and,
 * when `underscores`, "_" for some of its "-" (a spelling CGI/WSGI/Rack apps merge with the name)
 */
function spelling(name: string, client: 'h1' | 'h2', underscores: boolean): fc.Arbitrary<string> {
  return fc
    .record({
      flip: fc.array(fc.boolean(), { minLength: 1, maxLength: 4 }),
      under: fc.array(underscores ? fc.boolean() : fc.constant(false), { minLength: 1, maxLength: 3 }),
      cased: client === 'h1' ? weighted([false, 2], [true, 1]) : fc.constant(false),
    })
    .map(({ flip, under, cased }) => {
      let dash = 0
      return [...name]
        .map((c, i) => {
          const d = c === '-' && under[dash++ % under.length] ? '_' : c
          return cased && flip[i % flip.length] ? d.toUpperCase() : d
        })
        .join('')
    })
}

/** lines of one name, each in its own spelling */
const linesOf = (
  name: string,
  client: 'h1' | 'h2',
  value: fc.Arbitrary<string>,
  { max = 3, underscores = false } = {},
): fc.Arbitrary<Pairs> =>
  fc.array(fc.tuple(spelling(name, client, underscores), value), { minLength: 1, maxLength: max })

/** every name a group below sends, as merged: a name drawn at random is none of them */
const KNOWN = new Set(
  [
    ...HOP_BY_HOP,
    ...ALSO_DROPPED.map(([name]) => name),
    ...SET_BY_PROXY,
    ...TRUSTED_ONLY,
    ...CERT_HEADERS,
    ...FIRST_LINE_ONLY,
    ...LISTS,
    'forwarded',
    'x-forwarded-server',
    'cookie',
    'host',
    'content-length',
    'expect',
    'x-case',
    'x-t',
  ].map(merged),
)

const TE_VALUES = [
  'trailers',
  'gzip',
  'trailers, deflate;q=0.5',
  'deflate',
  'x-trailers',
  'trailersx',
  'gzip, TRAILERS',
  '',
]
const FORWARDED_VALUES = [
  'for=192.0.2.60;proto=https;by=203.0.113.43',
  'for="[2001:db8::1]"',
  'host=evil.example',
  '',
]
const TRACEPARENTS = [
  '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
  '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-ff',
  '01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-02-future',
  '00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01',
  '00-00000000000000000000000000000000-b7ad6b7169203331-01',
  '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra',
  'ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
  'garbage',
]

/** the groups of field lines a request is made of, each with its weight */
function groups(client: 'h1' | 'h2'): { arbitrary: fc.Arbitrary<Pairs>; weight: number }[] {
  const value = fieldValue(client)
  const tokenName = (prefix: string) =>
    fc.string({ unit: fc.constantFrom(...TCHARS), minLength: 1, maxLength: 10 }).map((s) => `${prefix}${s}`)
  const oneOf = (
    names: string[],
    values: fc.Arbitrary<string>,
    opts?: { max?: number; underscores?: boolean },
  ) => fc.constantFrom(...names).chain((name) => linesOf(name, client, values, opts))
  const h1 = client === 'h1'
  const hopByHop: [fc.Arbitrary<Pairs>, number][] = h1
    ? [
        [
          linesOf('keep-alive', client, fc.constantFrom('timeout=5', 'timeout=5, max=100'), {
            max: 1,
            underscores: true,
          }),
          1,
        ],
        [linesOf('proxy-connection', client, fc.constant('keep-alive'), { max: 1, underscores: true }), 1],
        [linesOf('upgrade', client, fc.constantFrom('h2c', 'foo/1', 'websocket'), { max: 1 }), 1],
      ]
    : // connection-specific: the request is malformed (RFC 9113 §8.2.2)
      [
        [
          oneOf(
            ['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade'],
            fc.constant('x'),
            { max: 1 },
          ),
          1,
        ],
      ]
  const all: [fc.Arbitrary<Pairs>, number][] = [
    // end-to-end fields of names of their own, repeated in any case
    [tokenName('x-e-').chain((name) => linesOf(name, client, value)), 8],
    // a name of any tchars, not one of the names the reference knows
    [
      tokenName('')
        .filter((name) => !KNOWN.has(merged(name)) && !/^x-(nhi|amzn)-/.test(merged(name)))
        .chain((name) => linesOf(name, client, value, { max: 1 })),
      3,
    ],
    // cookies: several lines on HTTP/1.1, crumbs on HTTP/2
    [linesOf('cookie', client, fc.constantFrom('a=1', 'b=2; c=3', 'sid=x y', '')), 3],
    [
      fc
        .constantFrom(...FIRST_LINE_ONLY)
        .chain((name) =>
          linesOf(name, client, name === 'user-agent' ? fc.constantFrom(...USER_AGENTS) : value, { max: 2 }),
        ),
      3,
    ],
    [oneOf(LISTS, fc.constantFrom('"a"', 'W/"b", "c"', 'en', 'gzip', '*')), 2],
    // the identity headers, as a client forges them
    [
      oneOf(
        ['x-nhi-identity', 'x-nhi-kind', 'x-nhi-source', 'x-nhi-verified', 'x-nhi-team'],
        fc.constantFrom('admin', 'true', 'spiffe://evil/x', ''),
        { underscores: true },
      ),
      3,
    ],
    // what a proxy in front says of the client and the request before it
    [
      oneOf(
        ['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-forwarded-server', ...TRUSTED_ONLY],
        fc.constantFrom('192.0.2.1', 'https', 'evil.example', '10.0.0.1, 10.0.0.2', ''),
        { underscores: true },
      ),
      4,
    ],
    [linesOf('forwarded', client, fc.constantFrom(...FORWARDED_VALUES), { max: 2 }), 2],
    [oneOf(CERT_HEADERS, fc.constantFrom('Hash=1;By=x', ':YQ==:'), { underscores: true, max: 1 }), 2],
    [
      linesOf('x-request-id', client, fc.oneof(fc.constantFrom('req-1', 'a b', 'x'.repeat(129), ''), value), {
        max: 2,
        underscores: true,
      }),
      2,
    ],
    [linesOf('traceparent', client, fc.constantFrom(...TRACEPARENTS), { max: 2, underscores: true }), 2],
    [linesOf('tracestate', client, fc.constantFrom('vendor=1', 'a=b,c=d', ''), { max: 2 }), 1],
    // TE; on HTTP/2 any other value than trailers makes the request malformed (RFC 9113 §8.2.2)
    [
      linesOf('te', client, h1 ? fc.constantFrom(...TE_VALUES) : weighted(['trailers', 6], ['gzip', 1]), {
        max: 2,
      }),
      2,
    ],
    ...hopByHop,
    [
      oneOf(
        ALSO_DROPPED.map(([name]) => name),
        fc.constantFrom('x', 'AAMAAABkAARAAAAAAAIAAAAA'),
        { max: 1 },
      ),
      1,
    ],
    // framing fields spelled with "_" (a plain Content-Length frames the body: left out; Transfer-Encoding
    // is the chunked requests')
    [
      oneOf(['content-length', 'transfer-encoding'], fc.constantFrom('0', 'chunked'), {
        max: 1,
        underscores: true,
      }).map((lines) => lines.filter(([name]) => name.includes('_'))),
      1,
    ],
  ]
  return all.map(([arbitrary, weight]) => ({ arbitrary, weight }))
}

/** a request's field lines, in a shuffled order, at most a few KiB of them */
function requestOf(client: 'h1' | 'h2') {
  const group = fc.oneof(...groups(client))
  return fc
    .record({
      groups: fc.array(group, { maxLength: 8 }),
      trusted: weighted([false, 3], [true, 1]),
      shuffle: fc.integer(),
      /** HTTP/1.1: Connection lines naming some of the request's fields (by index), and other tokens */
      connection: fc.option(
        fc.record({
          picks: fc.array(fc.nat(), { maxLength: 3 }),
          tokens: fc.subarray(['keep-alive', 'Upgrade', 'TE', 'x-absent', 'Forwarded', 'X-Forwarded-For']),
          split: fc.boolean(),
        }),
        { freq: 2 },
      ),
      chunked: weighted([false, 5], [true, 1]),
      announce: fc.boolean(),
    })
    .map(({ groups, trusted, shuffle, connection, chunked, announce }) => {
      let lines = groups.flat()
      // a trusted proxy's forwarded certificate is believed and rewritten (left out, see above)
      if (trusted) lines = lines.filter(([name]) => !CERT_HEADERS.includes(merged(name)))
      const next = rng(shuffle)
      for (let i = lines.length - 1; i > 0; i--) {
        const j = Math.floor(next() * (i + 1))
        ;[lines[i], lines[j]] = [lines[j]!, lines[i]!]
      }
      let isChunked = client === 'h1' && chunked
      if (client === 'h1') {
        if (connection !== null) {
          const named = connection.picks
            .map((i) => lines[i % Math.max(1, lines.length)]?.[0])
            .filter((n) => n !== undefined)
          const tokens = [...named, ...connection.tokens]
          // a websocket upgrade is a tunnel, and any other with a body is refused (both left out); any other
          // is served as a plain request
          if (tokens.some((token) => lower(token) === 'upgrade')) {
            lines = lines.filter(([name, value]) => lower(name) !== 'upgrade' || value !== 'websocket')
            isChunked = false
          }
          const half = connection.split ? Math.ceil(tokens.length / 2) : tokens.length
          lines.push(['Connection', tokens.slice(0, half).join(', ')])
          if (half < tokens.length) lines.push(['connection', tokens.slice(half).join(', ')])
        }
        if (isChunked) {
          lines = lines.filter(([name]) => lower(name) !== 'trailer')
          lines.push(['Transfer-Encoding', 'chunked'])
          if (announce) lines.push(['Trailer', 'x-t'])
        }
      }
      return { client, lines, trusted, chunked: isChunked } satisfies Sent
    })
    .filter((r) => r.lines.reduce((n, [name, value]) => n + name.length + value.length + 4, 0) < 8000)
}

// ---- the clients ------------------------------------------------------------------------------------------

/** One HTTP/1.1 request on a connection of its own (it asks to close it); resolves with the status line. */
async function h1Send(port: number, id: string, sent: Sent): Promise<string> {
  const body = sent.chunked
    ? `5\r\nhello\r\n0\r\n${sent.lines.some(([n]) => n === 'Trailer') ? 'x-t: 1\r\n' : ''}\r\n`
    : ''
  const head =
    `${sent.chunked ? 'POST' : 'GET'} /r/${id} HTTP/1.1\r\nHost: ${HOST}\r\nx-case: ${id}\r\n` +
    sent.lines.map(([name, value]) => `${name}: ${value}\r\n`).join('') +
    'Connection: close\r\n\r\n'
  const answer = await rawExchange(
    port,
    Buffer.from(head + body, 'latin1'),
    sent.trusted ? TRUSTED : undefined,
  )
  return answer.slice(0, answer.indexOf('\r\n'))
}

/** h2c requests as HEADERS frames on one connection, streams 1, 3, …; resolves with each one's answer */
async function h2Send(
  port: number,
  requests: { id: string; sent: Sent }[],
  trusted: boolean,
): Promise<string[]> {
  const streams = requests.map((_, i) => 2 * i + 1)
  const frames = [PREFACE, frame(FRAME.SETTINGS, 0, 0, Buffer.alloc(0))]
  for (const [i, { id, sent }] of requests.entries()) {
    const block = headerBlock([
      [':method', 'GET'],
      [':scheme', 'http'],
      [':path', `/r/${id}`],
      [':authority', HOST],
      ['x-case', id],
      ...sent.lines,
    ])
    frames.push(frame(FRAME.HEADERS, FLAG.END_HEADERS | FLAG.END_STREAM, streams[i]!, block))
  }
  const answers = await streamAnswers(port, frames, streams, {
    what: `the answers to ${requests.map((r) => r.id).join(', ')}`,
    ...(trusted ? { localAddress: TRUSTED } : {}),
  })
  return streams.map((s) => answers.get(s)!)
}

// ---- the verdict ------------------------------------------------------------------------------------------

interface Disagreement {
  id: string
  what: string
  sent: Sent
  received?: Pairs
}

/** the answer and the arrival of one request, judged; undefined when they are what the reference says */
function verdict(
  id: string,
  sent: Sent,
  answer: string,
  upstream: RecordingUpstream,
  kind: Upstream,
): Disagreement | undefined {
  const expected = expectedAt(sent, id, kind)
  const arrived = upstream.seen.get(id)
  if (expected === 'reset') {
    if (answer.startsWith('reset') && arrived === undefined) return undefined
    return {
      id,
      what: `answered ${answer}, forwarded ${arrived !== undefined}: not refused as malformed`,
      sent,
    }
  }
  if (arrived === undefined) return { id, what: `answered ${answer} without reaching the upstream`, sent }
  const what = judge(arrived.headers, expected, kind)
  return what === undefined ? undefined : { id, what, sent, received: arrived.headers }
}

type Upstream = 'http' | 'h2c'
const UPSTREAMS: Upstream[] = ['http', 'h2c']
const label = (kind: Upstream) => (kind === 'http' ? 'an HTTP/1.1' : 'an h2c')

/** a recording upstream of `kind` and the built sidecar in front of it, trusting TRUSTED */
async function sidecarFor(t: Test, kind: Upstream): Promise<{ upstream: RecordingUpstream; port: number }> {
  const upstreams = await recordingUpstreams(t)
  const upstream = kind === 'http' ? upstreams.h1 : upstreams.h2c
  const sidecar = await startTestSidecar(t, {
    upstream: upstream.url,
    forwardedClientCert: { trustedProxies: [`${TRUSTED}/32`], format: 'xfcc' },
  })
  return { upstream, port: sidecar.proxyAddress.port }
}

/** one request of either client, alone on its connection; resolves with its answer */
const sendOne = async (port: number, id: string, sent: Sent) =>
  sent.client === 'h1' ? h1Send(port, id, sent) : (await h2Send(port, [{ id, sent }], sent.trusted))[0]!

// ---- hand-written cases: what the generated requests found ------------------------------------------------

interface Case {
  what: string
  client: 'h1' | 'h2'
  lines: Pairs
  chunked?: boolean
  /** what the upstream must get under these names, their lines combined; undefined: none */
  want: Record<string, string | undefined>
  /** the same, on an HTTP/1.1 upstream only */
  overHttp?: Record<string, string | undefined>
}

const CASES: Case[] = [
  {
    what: 'an empty last Cookie line: the cookies reach an h2c upstream, not dropped there for a trailing space',
    client: 'h1',
    lines: [
      ['Cookie', 'a=1'],
      ['Cookie', 'b=2'],
      ['Cookie', ''],
    ],
    want: { cookie: 'a=1; b=2;' },
  },
  {
    what: 'an empty last cookie crumb from an h2c client',
    client: 'h2',
    lines: [
      ['cookie', 'a=1'],
      ['cookie', ''],
    ],
    want: { cookie: 'a=1;' },
  },
  {
    what: 'a field whose last line is empty',
    client: 'h1',
    lines: [
      ['X-List', 'a'],
      ['x-list', ''],
    ],
    want: { 'x-list': 'a,' },
  },
  {
    what: 'If-None-Match and If-Match in several h2c lines: every entity tag',
    client: 'h2',
    lines: [
      ['if-none-match', '"a"'],
      ['if-match', '"c"'],
      ['if-none-match', '"b"'],
      ['if-match', '"d"'],
      ['if-match', 'W/"e"'],
    ],
    want: { 'if-none-match': '"a", "b"', 'if-match': '"c", "d", W/"e"' },
  },
  {
    what: 'Content-Encoding and Content-Language in several h2c lines: every coding and language',
    client: 'h2',
    lines: [
      ['content-encoding', 'gzip'],
      ['content-language', 'en'],
      ['content-encoding', 'br'],
      ['content-language', 'de'],
    ],
    want: { 'content-encoding': 'gzip, br', 'content-language': 'en, de' },
  },
  {
    what: 'fields that are no lists, repeated by an h2c client: every line, as from an HTTP/1.1 client',
    client: 'h2',
    lines: [
      ['dnt', '1'],
      ['range', 'bytes=0-1'],
      ['upgrade-insecure-requests', '1'],
      ['dnt', '0'],
      ['range', 'bytes=5-6'],
      ['upgrade-insecure-requests', '0'],
      ['date', 'Mon, 07 Dec 2026 09:00:00 GMT'],
      ['date', 'Tue, 08 Dec 2026 09:00:00 GMT'],
    ],
    want: {
      dnt: '1, 0',
      range: 'bytes=0-1, bytes=5-6',
      'upgrade-insecure-requests': '1, 0',
      date: 'Mon, 07 Dec 2026 09:00:00 GMT, Tue, 08 Dec 2026 09:00:00 GMT',
    },
  },
  {
    what: 'a TE element that only contains the word (x-trailers) is not trailers',
    client: 'h1',
    lines: [['TE', 'x-trailers, gzip;q=0.5']],
    want: { te: undefined },
  },
  {
    what: 'TE with trailers among codings: te: trailers, named in Connection to an HTTP/1.1 upstream',
    client: 'h1',
    lines: [['TE', 'gzip, Trailers']],
    want: { te: 'trailers' },
    overHttp: { connection: 'keep-alive, te' },
  },
  {
    what: 'the same on a chunked body with announced trailers (the node:http path)',
    client: 'h1',
    chunked: true,
    lines: [
      ['TE', 'trailers'],
      ['Transfer-Encoding', 'chunked'],
      ['Trailer', 'x-t'],
    ],
    want: { te: 'trailers' },
    overHttp: { connection: 'keep-alive, te', trailer: 'x-t' },
  },
  {
    what: "an h2c client's te: trailers, named in Connection to an HTTP/1.1 upstream",
    client: 'h2',
    lines: [['te', 'trailers']],
    want: { te: 'trailers' },
    overHttp: { connection: 'keep-alive, te' },
  },
]

for (const kind of UPSTREAMS) {
  t.test(`hand-written cases, to ${label(kind)} upstream`, async (t) => {
    const { upstream, port } = await sidecarFor(t, kind)
    for (const [i, c] of CASES.entries()) {
      const id = `case-${kind}-${i}`
      const sent: Sent = { client: c.client, lines: c.lines, trusted: false, chunked: c.chunked === true }
      const answer = await sendOne(port, id, sent)
      const received = upstream.seen.get(id)?.headers ?? []
      const want = { ...c.want, ...(kind === 'http' ? c.overHttp : {}) }
      for (const [name, value] of Object.entries(want)) {
        const lines = received.filter(([n]) => lower(n) === name).map(([, v]) => v)
        t.equal(lines.length === 0 ? undefined : combine(name, lines), value, `${c.what}: ${name}`)
      }
      t.same(verdict(id, sent, answer, upstream, kind), undefined, `${c.what}: as the reference says`)
    }
  })
}

// ---- the properties ---------------------------------------------------------------------------------------

const h1Requests = requestOf('h1')
const h2Requests = requestOf('h2')

t.test('the grammar reaches both sides of what the proxy decides', async (t) => {
  const nhi = (r: Sent) => r.lines.some(([name]) => merged(name).startsWith('x-nhi-'))
  checkBothSides(t, h1Requests, nhi, [150, 1200], 'HTTP/1.1 requests forging an x-nhi-* field')
  checkBothSides(t, h2Requests, nhi, [150, 1200], 'h2c requests forging an x-nhi-* field')
  const listedField = (r: Sent) => {
    const listed = elements(
      r.lines
        .filter(([n]) => lower(n) === 'connection')
        .map(([, v]) => v)
        .join(', '),
    )
    return r.lines.some(([name]) => lower(name) !== 'connection' && listed.includes(name))
  }
  checkBothSides(
    t,
    h1Requests,
    listedField,
    [150, 1200],
    'HTTP/1.1 requests whose Connection names a field they carry',
  )
  checkBothSides(t, h1Requests, (r) => r.trusted, [250, 1000], 'HTTP/1.1 requests from the trusted proxy')
  checkBothSides(t, h2Requests, malformed, [20, 400], 'malformed h2c requests')
})

for (const kind of UPSTREAMS) {
  t.test(`generated request fields reach ${label(kind)} upstream as the reference says`, async (t) => {
    const { upstream, port } = await sidecarFor(t, kind)

    t.test('from HTTP/1.1 clients', async (t) => {
      const started = Date.now()
      const requests = fc.sample(h1Requests, { numRuns: REQUESTS, seed: PROPERTY_SEED })
      const disagreements: Disagreement[] = []
      await mapLimit(requests, CONCURRENCY, async (sent, i) => {
        const id = `h1-${kind}-${i}`
        const answer = await h1Send(port, id, sent).catch((err: Error) => `failed: ${err.message}`)
        const wrong = verdict(id, sent, answer, upstream, kind)
        if (wrong !== undefined) disagreements.push(wrong)
      })
      t.same(disagreements.slice(0, 3), [], `no disagreement (of ${disagreements.length})`)
      t.comment(
        `${REQUESTS} requests (seed ${PROPERTY_SEED}) in ${Date.now() - started} ms: ${tally(requests)}`,
      )
    })

    t.test('from h2c clients', async (t) => {
      const started = Date.now()
      const requests = fc.sample(h2Requests, { numRuns: REQUESTS, seed: PROPERTY_SEED })
      const disagreements: Disagreement[] = []
      // a connection for each run of up to 6 requests from one peer, one stream each
      const batches: number[][] = []
      for (const [i, r] of requests.entries()) {
        const last = batches.at(-1)
        if (last !== undefined && last.length < 6 && requests[last[0]!]!.trusted === r.trusted) last.push(i)
        else batches.push([i])
      }
      await mapLimit(batches, CONCURRENCY, async (indexes) => {
        const batch = indexes.map((i) => ({ id: `h2-${kind}-${i}`, sent: requests[i]! }))
        const answers = await h2Send(port, batch, batch[0]!.sent.trusted).catch((err: Error) =>
          batch.map(() => `failed: ${err.message}`),
        )
        for (const [j, { id, sent }] of batch.entries()) {
          const wrong = verdict(id, sent, answers[j]!, upstream, kind)
          if (wrong !== undefined) disagreements.push(wrong)
        }
      })
      t.same(disagreements.slice(0, 3), [], `no disagreement (of ${disagreements.length})`)
      t.comment(
        `${REQUESTS} requests (seed ${PROPERTY_SEED}) in ${Date.now() - started} ms: ${tally(requests)}`,
      )
    })
  })
}

function tally(requests: Sent[]): string {
  const n = (f: (r: Sent) => boolean) => requests.filter(f).length
  const some = (r: Sent, f: (name: string, value: string) => boolean) =>
    r.lines.some(([name, value]) => f(name, value))
  return (
    `${n((r) => r.trusted)} from the trusted proxy; ${n((r) => some(r, (name) => merged(name).startsWith('x-nhi-')))} forging x-nhi-*; ` +
    `${n((r) => some(r, (name) => merged(name).startsWith('x-forwarded-') || merged(name) === 'forwarded'))} with x-forwarded-* or Forwarded; ` +
    `${n((r) => some(r, (name) => lower(name) === 'connection'))} with Connection; ` +
    `${n((r) => some(r, (_, value) => /[\x80-\xff]/.test(value)))} with obs-text; ` +
    `${n((r) => some(r, (_, value) => value.length > 256))} with a long value; ${n((r) => r.chunked)} chunked, ` +
    `${n((r) => r.chunked && some(r, (name) => name === 'Trailer'))} announcing trailers; ` +
    `${n(malformed)} malformed`
  )
}
