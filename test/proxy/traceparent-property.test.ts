// The incoming `traceparent` against W3C Trace Context ("Traceparent Header", its "Versioning of
// traceparent", "Mutating the traceparent Field" and the processing model), generated: valid values of
// version 00 and of later versions (with and without fields after the flags, and lengths around the 512
// characters the proxy reads), all-zero and almost-zero ids, every flag byte; and near-valid ones made from
// them: a character inserted, deleted or replaced (upper-case hex, `g`, dashes, spaces, commas, non-ASCII
// digits), a letter's case changed or the whole value upper-cased, a dash doubled, the value cut around 55
// characters, two values as Node joins repeated lines, a version `ff`. Values hold only what a header can
// carry (RFC 9110 field-value: printable ASCII, SP, HTAB, obs-text). The trace the proxy takes and what it
// sends upstream must be the reference's:
//
// - a valid value is continued: its trace-id, a new parent-id (our hop's span), its sampled and random flags
//   (Trace Context Level 2's random-trace-id bit), every other flag bit zero, as version 00; `tracestate` is
//   passed on with it;
// - anything else starts a new trace (`00-<new>-<new>-01`) and `tracestate` is dropped ("If the vendor failed
//   to parse traceparent, it MUST NOT attempt to parse tracestate"; the processing model: a new traceparent
//   deletes tracestate).
//
// The reference reads the text as "Versioning of traceparent" says: a version of 2 lower-case hex digits
// that is not `ff`, and a dash; then, for every version, a 32-digit trace-id, a dash, a 16-digit parent-id, a
// dash and 2 flag digits, all lower-case hex, trace-id and parent-id not all zeros; version 00 ends there, a
// later version ends there or goes on after a dash. A value over 512 characters (a later version's fields) is
// not read: the proxy's bound on what it parses (the spec: "only disallow prohibitively large headers";
// docs/reference.md, "Headers").
import { get as httpGet, type IncomingHttpHeaders } from 'node:http'
import fc from 'fast-check'
import t from 'tap'
import { upstreamHeaders } from '../../src/proxy/headers.ts'
import { traceContext } from '../../src/proxy/ids.ts'
import { applyEdit } from '../helpers/edits.ts'
import { checkBothSides, checkProperty, PROPERTY_SEED } from '../helpers/property.ts'
import { SERVICE_IDENTITY, startProxy } from '../helpers/proxy-fixture.ts'
import { startUpstream } from '../helpers/upstream.ts'

/** the longest traceparent the proxy reads (ids.ts) */
const MAX_TRACEPARENT = 512

// ---- the reference -----------------------------------------------------------------------------------------

const LOWER_HEX = '0123456789abcdef'
const isLowerHex = (s: string) => s.length > 0 && [...s].every((c) => LOWER_HEX.includes(c))

interface Parent {
  traceId: string
  parentId: string
  flags: string
}

function referenceTraceparent(value: string): Parent | undefined {
  if (value.length < 55 || value.length > MAX_TRACEPARENT) return undefined
  const version = value.slice(0, 2)
  if (!isLowerHex(version) || version === 'ff' || value[2] !== '-') return undefined
  const traceId = value.slice(3, 35)
  const parentId = value.slice(36, 52)
  const flags = value.slice(53, 55)
  if (!isLowerHex(traceId) || value[35] !== '-') return undefined
  if (!isLowerHex(parentId) || value[52] !== '-') return undefined
  if (!isLowerHex(flags)) return undefined
  if (version === '00' ? value.length !== 55 : value.length > 55 && value[55] !== '-') return undefined
  if (traceId === '0'.repeat(32) || parentId === '0'.repeat(16)) return undefined
  return { traceId, parentId, flags }
}

/** the flags sent on: sampled (0x01) and random (0x02) kept, the reserved bits zero */
const flagsSentOn = (flags: string) => (Number.parseInt(flags, 16) & 0x03).toString(16).padStart(2, '0')

// ---- generated values --------------------------------------------------------------------------------------

const hex = (n: number) =>
  fc.array(fc.constantFrom(...LOWER_HEX), { minLength: n, maxLength: n }).map((cs) => cs.join(''))
const id = (n: number) =>
  fc.oneof(
    { arbitrary: hex(n), weight: 8 },
    {
      arbitrary: fc.constantFrom('0'.repeat(n), `${'0'.repeat(n - 1)}1`, `1${'0'.repeat(n - 1)}`),
      weight: 1,
    },
  )
const version = fc.oneof(
  { arbitrary: fc.constant('00'), weight: 5 },
  { arbitrary: fc.constantFrom('01', 'cc', 'fe', 'ff'), weight: 2 },
  { arbitrary: hex(2), weight: 2 },
)
const flags = fc.oneof(fc.constantFrom('00', '01', '02', '03', '04', '09', '80', 'ff'), hex(2))

/** a header's characters: printable ASCII, SP, HTAB, obs-text */
const fieldChar = fc.oneof(
  { arbitrary: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)), weight: 8 },
  { arbitrary: fc.constantFrom('\t', '\u00a0', '\u00e9', '\u00ff'), weight: 1 },
)
const fieldText = (maxLength: number) => fc.array(fieldChar, { maxLength }).map((cs) => cs.join(''))

/** what a later version may carry after the flags, around the 512-character bound too */
const laterFields = fc.oneof(
  { arbitrary: fc.constant(''), weight: 3 },
  { arbitrary: fieldText(20).map((x) => `-${x}`), weight: 4 },
  { arbitrary: fieldText(4), weight: 1 },
  {
    arbitrary: fc
      .integer({ min: MAX_TRACEPARENT - 57, max: MAX_TRACEPARENT - 53 })
      .map((n) => `-${'x'.repeat(n)}`),
    weight: 1,
  },
)

const wellFormed = fc
  .tuple(version, id(32), id(16), flags, laterFields)
  .map(([v, traceId, parentId, f, rest]) => `${v}-${traceId}-${parentId}-${f}${v === '00' ? '' : rest}`)

const inserted = fc.oneof(
  fc.constantFrom(...LOWER_HEX),
  fc.constantFrom('A', 'F', 'g', 'x', '-', '--', ' ', '\t', ',', ', '),
  // digits no ASCII reader takes for hex: Arabic-Indic zero, fullwidth zero (obs-text as Latin-1, and beyond)
  fc.constantFrom('\u0660', '\uff10', '\u00b2', '\u00e9'),
)

type Mutation =
  | { kind: 'insert' | 'replace'; at: number; text: string }
  | { kind: 'delete' | 'flip-case'; at: number }
  | { kind: 'double-dash'; at: number }
  | { kind: 'upper-case' }
  | { kind: 'cut'; length: number }
  | { kind: 'repeat'; other: string }
  | { kind: 'version'; text: string }

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constantFrom('insert' as const, 'replace' as const), at: fc.nat(), text: inserted }),
  fc.record({ kind: fc.constantFrom('delete', 'flip-case', 'double-dash'), at: fc.nat() }),
  fc.record({ kind: fc.constant('upper-case' as const) }),
  fc.record({ kind: fc.constant('cut' as const), length: fc.integer({ min: 53, max: 57 }) }),
  fc.record({ kind: fc.constant('repeat' as const), other: wellFormed }),
  fc.record({
    kind: fc.constant('version' as const),
    text: fc.constantFrom('ff', 'FF', '0', '000', 'f', '0A'),
  }),
)

function mutate(s: string, m: Mutation): string {
  switch (m.kind) {
    case 'insert':
    case 'replace':
    case 'delete':
      return applyEdit(s, m)
    case 'flip-case': {
      const letters = [...s.matchAll(/[a-fA-F]/g)].map((x) => x.index)
      if (letters.length === 0) return s
      const i = letters[m.at % letters.length]!
      const c = s[i]!
      return s.slice(0, i) + (c === c.toLowerCase() ? c.toUpperCase() : c.toLowerCase()) + s.slice(i + 1)
    }
    case 'double-dash': {
      const dashes = [...s.matchAll(/-/g)].map((x) => x.index)
      if (dashes.length === 0) return s
      const i = dashes[m.at % dashes.length]!
      return `${s.slice(0, i)}-${s.slice(i)}`
    }
    case 'upper-case':
      return s.toUpperCase()
    case 'cut':
      return s.slice(0, m.length)
    case 'repeat':
      // two header lines, as Node joins them
      return `${s}, ${m.other}`
    case 'version':
      return m.text + s.slice(2)
  }
}

const nearValid = fc
  .tuple(wellFormed, fc.array(mutation, { minLength: 1, maxLength: 2 }))
  .map(([s, ms]) => ms.reduce(mutate, s))

const traceparent = fc.oneof(
  { arbitrary: wellFormed, weight: 4 },
  { arbitrary: nearValid, weight: 5 },
  { arbitrary: fieldText(70), weight: 1 },
)

const tracestate = fc.oneof(
  fc.constant(undefined),
  fc.constant(''),
  fc.constantFrom('congo=t61rcWkgMzE', 'rojo=00f067aa0ba902b7,congo=t61rcWkgMzE', 'a=1, b=2'),
)

// ---- the properties ----------------------------------------------------------------------------------------

const ZERO_SPAN = '0'.repeat(16)

/** whether `trace` is what the proxy must make of `incoming`, and its header what it must send */
function tracedAsReference(incoming: string, trace: ReturnType<typeof traceContext>): boolean {
  const expected = referenceTraceparent(incoming)
  const sent = referenceTraceparent(trace.traceparent)
  // what goes upstream is always a valid version-00 traceparent naming the ids of the trace
  if (!sent || trace.traceparent.length !== 55 || !trace.traceparent.startsWith('00-')) return false
  if (sent.traceId !== trace.traceId || sent.parentId !== trace.spanId || sent.flags !== trace.flags)
    return false
  if (trace.spanId === ZERO_SPAN) return false
  if (expected === undefined) {
    // a new trace: nothing of the incoming value is taken
    return (
      !trace.continued &&
      trace.parentSpanId === undefined &&
      trace.flags === '01' &&
      trace.traceId !== incoming.slice(3, 35)
    )
  }
  return (
    trace.continued &&
    trace.traceId === expected.traceId &&
    trace.parentSpanId === expected.parentId &&
    // our hop is a span of its own
    trace.spanId !== expected.parentId &&
    trace.flags === flagsSentOn(expected.flags)
  )
}

t.test('an incoming traceparent is continued exactly when Trace Context takes it', async (t) => {
  checkProperty(
    t,
    'the trace-id, parent, flags and the traceparent sent upstream are the reference’s',
    fc.property(traceparent, (incoming) => tracedAsReference(incoming, traceContext(incoming))),
    5000,
  )
  checkBothSides(
    t,
    traceparent,
    (s) => referenceTraceparent(s) !== undefined,
    [300, 1700],
    'values are valid',
  )
})

t.test('tracestate goes upstream with a continued trace only', async (t) => {
  checkProperty(
    t,
    'upstreamHeaders sends the trace’s traceparent, and tracestate when the traceparent was valid',
    fc.property(traceparent, tracestate, (incoming, state) => {
      const headers: IncomingHttpHeaders = { host: 'api', traceparent: incoming }
      if (state !== undefined) headers.tracestate = state
      const trace = traceContext(incoming)
      const out = upstreamHeaders(headers, SERVICE_IDENTITY, trace, 'rid', '192.0.2.1', 'http')
      const keeps = referenceTraceparent(incoming) !== undefined && state !== undefined && state !== ''
      return out.traceparent === trace.traceparent && out.tracestate === (keeps ? state : undefined)
    }),
    2000,
  )
})

t.test('through the proxy: the upstream gets the reference’s trace for generated traceparents', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const { url } = await startProxy(t, { upstream: up.url })
  // what an HTTP/1.1 client can send (Latin-1 text) and a server hands on as it was sent: no white space at
  // either end (OWS, trimmed)
  const sendable = fc
    .tuple(traceparent, tracestate)
    .filter(([s]) => /^[\x21-\x7e\x80-\xff](?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?$/.test(s))
  const cases = fc.sample(sendable, { numRuns: 60, seed: PROPERTY_SEED })
  const valid = cases.filter(([s]) => referenceTraceparent(s) !== undefined).length
  t.ok(valid >= 10 && valid <= 50, `${valid} of ${cases.length} values sent are valid`)
  for (const [incoming, state] of cases) {
    const headers: Record<string, string> = { traceparent: incoming }
    if (state !== undefined) headers['tracestate'] = state
    const got = await new Promise<IncomingHttpHeaders>((resolve, reject) => {
      const req = httpGet(`${url}/echo`, { headers, agent: false }, (res) => {
        let text = ''
        res.setEncoding('utf8')
        res.on('data', (c: string) => {
          text += c
        })
        res.on('end', () => resolve((JSON.parse(text) as { headers: IncomingHttpHeaders }).headers))
      })
      req.on('error', reject)
    })
    const sent = referenceTraceparent(String(got.traceparent))
    const expected = referenceTraceparent(incoming)
    const label = JSON.stringify(incoming)
    t.ok(sent && String(got.traceparent).startsWith('00-'), `${label}: a valid traceparent goes upstream`)
    if (expected) {
      t.equal(sent?.traceId, expected.traceId, `${label}: trace continued`)
      t.equal(sent?.flags, flagsSentOn(expected.flags), `${label}: sampled and random flags kept`)
      t.not(sent?.parentId, expected.parentId, `${label}: our hop's span is the parent`)
      t.equal(got.tracestate, state === '' ? undefined : state, `${label}: tracestate kept`)
    } else {
      t.not(sent?.traceId, incoming.slice(3, 35), `${label}: a new trace`)
      t.equal(got.tracestate, undefined, `${label}: tracestate dropped`)
    }
  }
})
