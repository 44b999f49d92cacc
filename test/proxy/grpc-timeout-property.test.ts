// `grpc-timeout` against gRPC's HTTP/2 protocol (PROTOCOL-HTTP2.md: `Timeout → "grpc-timeout" TimeoutValue
// TimeoutUnit`, TimeoutValue at most 8 ASCII digits, TimeoutUnit one of `H M S m u n`), generated: valid
// values of every unit with 1 to 8 digits (leading zeros, 0, 99999999), and near-valid ones made from them: a
// character inserted, deleted or replaced (a ninth digit, a sign, a point, an exponent, spaces, units in the
// other case or unknown, non-ASCII digits), the unit's case changed, two values as Node joins repeated lines.
// What the proxy reads must be the reference's, and what it writes upstream must be a value of the same
// grammar for every time a call can have left: sub-nanosecond, around each unit's 8-digit bound, huge,
// negative, not a number. The reference:
//
// - a value of the grammar is that many units, exactly (as nanoseconds, in integers); `0` is a deadline that
//   has passed (the grammar says "positive integer"; grpc-go reads 0, and writes `0n` for a passed deadline);
// - anything else is no deadline: the proxy enforces none and passes the header on as the client sent it,
//   for the upstream to judge (docs/reference.md, "HTTP/2 and gRPC");
// - the value sent on is what is left, in the finest unit whose count fits 8 digits, rounded down: never
//   later than the client's deadline, and less than one of its unit earlier; 99999999H at most; nothing
//   (a deadline that has passed) when less than a nanosecond is left.
//
// Times are doubles: a value read is compared with the exact one within a few units in the last place, and
// what is written within a relative 1e-12 of the time it was written for.
import { type IncomingHttpHeaders, request } from 'node:http'
import { performance } from 'node:perf_hooks'
import fc from 'fast-check'
import t from 'tap'
import { grpcTimeoutLeft, grpcTimeoutMs, grpcTimeoutValue } from '../../src/proxy/grpc.ts'
import { applyEdit } from '../helpers/edits.ts'
import { checkBothSides, checkProperty, PROPERTY_SEED } from '../helpers/property.ts'
import { startProxy } from '../helpers/proxy-fixture.ts'
import { startUpstream } from '../helpers/upstream.ts'

// ---- the reference -----------------------------------------------------------------------------------------

const UNITS = ['n', 'u', 'm', 'S', 'M', 'H'] as const
type Unit = (typeof UNITS)[number]
const UNIT_NS: Record<Unit, bigint> = {
  n: 1n,
  u: 1_000n,
  m: 1_000_000n,
  S: 1_000_000_000n,
  M: 60_000_000_000n,
  H: 3_600_000_000_000n,
}
const MAX_COUNT = 99_999_999

interface Timeout {
  count: number
  unit: Unit
  /** exactly */
  ns: bigint
}

function referenceTimeout(value: string): Timeout | undefined {
  const digits = value.slice(0, -1)
  const unit = value.slice(-1)
  if (digits.length < 1 || digits.length > 8) return undefined
  if (![...digits].every((c) => c >= '0' && c <= '9')) return undefined
  if (!(UNITS as readonly string[]).includes(unit)) return undefined
  const count = Number(digits)
  return { count, unit: unit as Unit, ns: BigInt(count) * UNIT_NS[unit as Unit] }
}

/** the double nearest an exact time: a whole number of ms is exact, a finer one a single rounding */
const nsToMs = (ns: bigint) => (ns % 1_000_000n === 0n ? Number(ns / 1_000_000n) : Number(ns) / 1e6)
const RELATIVE = 1e-12

/** whether `written` is what a call with `ms` left must be sent: the grammar, never later, as fine as can be */
function writtenAsReference(ms: number, written: string | undefined): boolean {
  const leftNs = ms * 1e6
  if (!(leftNs >= 1 * (1 + RELATIVE))) {
    // less than a nanosecond left (or not a number): nothing, or at the float's edge one nanosecond
    return written === undefined || (leftNs >= 1 - RELATIVE && written === '1n')
  }
  const out = written === undefined ? undefined : referenceTimeout(written)
  if (!out || `${out.count}${out.unit}` !== written) return false
  // never later than the client's deadline
  if (Number(out.ns) > leftNs * (1 + RELATIVE)) return false
  const unitNs = Number(UNIT_NS[out.unit])
  const capped = out.unit === 'H' && out.count === MAX_COUNT
  // less than one unit earlier, unless the longest value there is was written
  if (!capped && Number(out.ns) + unitNs <= leftNs * (1 - RELATIVE)) return false
  // no finer unit could have carried it in 8 digits
  for (const finer of UNITS.slice(0, UNITS.indexOf(out.unit))) {
    if (leftNs / Number(UNIT_NS[finer]) < (MAX_COUNT + 1) * (1 - RELATIVE)) return false
  }
  return true
}

// ---- generated values --------------------------------------------------------------------------------------

const DIGITS = '0123456789'
const digits = fc.oneof(
  {
    arbitrary: fc.array(fc.constantFrom(...DIGITS), { minLength: 1, maxLength: 8 }).map((ds) => ds.join('')),
    weight: 6,
  },
  { arbitrary: fc.constantFrom('0', '00000000', '99999999', '1', '10000000', '00000001'), weight: 2 },
)
const validValue = fc.tuple(digits, fc.constantFrom(...UNITS)).map(([d, u]) => `${d}${u}`)

const inserted = fc.oneof(
  fc.constantFrom(...DIGITS, ...UNITS),
  fc.constantFrom('h', 's', 'U', 'N', 'x', ' ', '\t', '+', '-', '.', 'e', 'e1', '0x', ','),
  // digits no ASCII reader takes: Arabic-Indic, fullwidth, superscript two
  fc.constantFrom('\u0660', '\uff11', '\u00b2'),
)

type Mutation =
  | { kind: 'insert' | 'replace'; at: number; text: string }
  | { kind: 'delete' | 'flip-case'; at: number }
  | { kind: 'repeat'; other: string }
  | { kind: 'pad'; zeros: number }

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constantFrom('insert' as const, 'replace' as const), at: fc.nat(), text: inserted }),
  fc.record({ kind: fc.constantFrom('delete' as const, 'flip-case' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('repeat' as const), other: validValue }),
  // leading zeros up to and past 8 digits
  fc.record({ kind: fc.constant('pad' as const), zeros: fc.integer({ min: 1, max: 8 }) }),
)

function mutate(s: string, m: Mutation): string {
  switch (m.kind) {
    case 'insert':
    case 'replace':
    case 'delete':
    case 'flip-case':
      return applyEdit(s, m)
    case 'repeat':
      return `${s}, ${m.other}`
    case 'pad':
      return '0'.repeat(m.zeros) + s
  }
}

const nearValid = fc
  .tuple(validValue, fc.array(mutation, { minLength: 1, maxLength: 2 }))
  .map(([s, ms]) => ms.reduce(mutate, s))

const headerValue = fc.oneof(
  { arbitrary: validValue, weight: 4 },
  { arbitrary: nearValid, weight: 5 },
  { arbitrary: fc.string({ maxLength: 12 }), weight: 1 },
)

/** a time left, ms: spread over every unit, at each unit's 8-digit bound, at whole units, and the odd ones */
const timeLeft = fc.oneof(
  { arbitrary: fc.double({ min: 0, max: 4e14, noNaN: true }), weight: 4 },
  {
    arbitrary: fc
      .tuple(
        fc.constantFrom(...UNITS),
        fc.integer({ min: -3, max: 3 }),
        fc.constantFrom(1, 1 + 1e-9, 1 - 1e-9),
      )
      .map(([unit, step, scale]) => ((MAX_COUNT + 1 + step) * Number(UNIT_NS[unit]) * scale) / 1e6),
    weight: 3,
  },
  {
    arbitrary: fc
      .tuple(fc.integer({ min: 1, max: MAX_COUNT }), fc.constantFrom(...UNITS))
      .map(([c, u]) => (c * Number(UNIT_NS[u])) / 1e6),
    weight: 2,
  },
  { arbitrary: fc.double({ min: 0, max: 2e-6, noNaN: true }), weight: 1 },
  {
    arbitrary: fc.constantFrom(
      0,
      -0,
      -1,
      -1e-7,
      Number.NaN,
      Number.POSITIVE_INFINITY,
      Number.NEGATIVE_INFINITY,
      1e300,
      MAX_COUNT * 3.6e6,
      MAX_COUNT * 3.6e6 * 2,
    ),
    weight: 1,
  },
)

const GRPC_TYPES = [
  'application/grpc',
  'application/grpc+proto',
  'application/grpc-web',
  'application/grpc-web-text',
]

// ---- the properties ----------------------------------------------------------------------------------------

t.test('grpc-timeout is read exactly when the grammar takes it, as that many units', async (t) => {
  checkProperty(
    t,
    'grpcTimeoutMs agrees with the reference: the same values, the same time',
    fc.property(headerValue, (value) => {
      const expected = referenceTimeout(value)
      const ms = grpcTimeoutMs({ 'grpc-timeout': value })
      if (expected === undefined) return ms === undefined
      if (ms === undefined) return false
      const exact = nsToMs(expected.ns)
      return expected.unit === 'u' || expected.unit === 'n'
        ? Math.abs(ms - exact) <= 4 * Number.EPSILON * exact
        : ms === exact
    }),
    5000,
  )
  checkBothSides(t, headerValue, (s) => referenceTimeout(s) !== undefined, [500, 1500], 'values are valid')
})

t.test('the time left is written upstream as a grpc-timeout of the grammar, never later', async (t) => {
  checkProperty(
    t,
    'grpcTimeoutValue: 1–8 digits and a unit, the finest that fits, rounded down, 99999999H at most',
    fc.property(timeLeft, (ms) => writtenAsReference(ms, grpcTimeoutValue(ms))),
    5000,
  )
  checkProperty(
    t,
    'a value read and written back at once is the value, or as little less as its double loses',
    fc.property(validValue, (value) => {
      const expected = referenceTimeout(value)!
      const written = grpcTimeoutValue(grpcTimeoutMs({ 'grpc-timeout': value })!)
      if (expected.count === 0) return written === undefined
      return writtenAsReference(nsToMs(expected.ns), written)
    }),
    3000,
  )
})

t.test('grpcTimeoutLeft: what a call forwarded now is sent, for every header and time spent', async (t) => {
  checkProperty(
    t,
    'a gRPC call with a valid value gets a valid one no later than its own deadline, or null; any other nothing',
    fc.property(
      headerValue,
      fc.oneof(
        fc.constantFrom(...GRPC_TYPES),
        fc.constantFrom('application/json', 'text/plain', 'application/grp'),
      ),
      fc.oneof(fc.double({ min: 0, max: 1e9, noNaN: true }), fc.constantFrom(0, 0.5, 1000)),
      (value, type, spent) => {
        const headers: IncomingHttpHeaders = { 'content-type': type, 'grpc-timeout': value }
        const before = performance.now()
        const left = grpcTimeoutLeft(headers, before - spent)
        const passed = performance.now() - before
        const expected = referenceTimeout(value)
        if (!type.startsWith('application/grpc') || expected === undefined) return left === undefined
        const leftMs = nsToMs(expected.ns) - spent
        if (left === null) return leftMs - passed < 1e-6 * (1 + RELATIVE)
        const out = left === undefined ? undefined : referenceTimeout(left)
        return (
          out !== undefined && `${out.count}${out.unit}` === left && nsToMs(out.ns) <= leftMs * (1 + RELATIVE)
        )
      },
    ),
    3000,
  )
  t.equal(grpcTimeoutLeft({ 'content-type': 'application/grpc' }, performance.now()), undefined, 'no header')
})

t.test(
  'through the proxy: a gRPC-Web call reaches its upstream with a valid deadline, or its own text',
  async (t) => {
    const up = await startUpstream()
    t.teardown(() => up.close())
    const { url } = await startProxy(t, { upstream: up.url })
    // what an HTTP/1.1 client can send (Latin-1 text, no white space at either end, which is trimmed)
    const sendable = headerValue.filter((s) =>
      /^[\x21-\x7e\x80-\xff](?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?$/.test(s),
    )
    const values = fc.sample(sendable, { numRuns: 50, seed: PROPERTY_SEED })
    const valid = values.filter((v) => referenceTimeout(v) !== undefined).length
    t.ok(valid >= 10 && valid <= 40, `${valid} of ${values.length} values sent are valid`)
    for (const [i, value] of values.entries()) {
      const path = `/echo/${i}`
      const answer = await new Promise<IncomingHttpHeaders>((resolve, reject) => {
        const req = request(
          `${url}${path}`,
          {
            method: 'POST',
            agent: false,
            headers: {
              'content-type': 'application/grpc-web+proto',
              'x-grpc-web': '1',
              'grpc-timeout': value,
            },
          },
          (res) => {
            res.resume()
            res.on('end', () => resolve(res.headers))
          },
        )
        req.on('error', reject)
        req.end(Buffer.from([0, 0, 0, 0, 0]))
      })
      const expected = referenceTimeout(value)
      const forwarded = up.received.find((r) => r.url === path)
      const label = JSON.stringify(value)
      if (expected === undefined) {
        t.equal(
          forwarded?.headers['grpc-timeout'],
          value,
          `${label}: no deadline to the proxy, passed on as sent`,
        )
        continue
      }
      if (forwarded === undefined) {
        // the deadline passed before the call could be forwarded: the proxy answered it
        t.equal(answer['grpc-status'], '4', `${label}: not forwarded, DEADLINE_EXCEEDED`)
        continue
      }
      const sent = String(forwarded.headers['grpc-timeout'])
      const out = referenceTimeout(sent)
      t.ok(out && `${out.count}${out.unit}` === sent, `${label} → ${sent}: a value of the grammar`)
      t.ok(out && out.ns <= expected.ns, `${label} → ${sent}: no later than the client's`)
    }
  },
)
