// The audit line is assembled from bytes cached per identity, per method, per route and per decision, with
// the time formatted from a cached second: for any event it must still be byte for byte the JSON.stringify of
// the documented record. Generated events, seeded so a failure reproduces, with text that needs escaping.
import t from 'tap'
import { auditLine, toAuditRecord } from '../../src/telemetry/audit.ts'
import { AUDIT_CLAIMS, LineBuffer, writeAuditLine } from '../../src/telemetry/audit-line.ts'
import type { Identity, PolicyDecision, RequestEvent } from '../../src/types.ts'
import { rng } from '../helpers/rng.ts'

const PIECES = [
  'a',
  'svc',
  '/',
  ' ',
  '"',
  '\\',
  '\\"',
  '\n',
  '\r',
  '\t',
  '\u0000',
  '\u0001',
  '\u001f',
  '\u007f',
  '\u0080',
  'é',
  'ü',
  '✓',
  '\u2028',
  '\u2029',
  '😀',
  '\ud800',
  '\udc00',
  '\udbff',
  '\ufffd',
  '\ufeff',
  '{"x":1}',
  ',"status":',
]

function text(r: () => number, max = 6): string {
  let s = ''
  const n = Math.floor(r() * max)
  for (let i = 0; i < n; i++) s += PIECES[Math.floor(r() * PIECES.length)]!
  return s
}

const maybe = <T>(r: () => number, value: () => T): T | undefined => (r() < 0.5 ? value() : undefined)

function generatedIdentity(r: () => number): Identity {
  const attributes: Record<string, string> = {}
  // every claim a line shows, and one it must leave out
  for (const key of [...AUDIT_CLAIMS, 'unrelated']) {
    if (r() < 0.3) attributes[key] = text(r)
  }
  const id: Identity = {
    name: text(r, 8),
    kind: (['service', 'job', 'human', 'bot', 'agent', 'unknown'] as const)[Math.floor(r() * 6)]!,
    source: (['jwt', 'mtls', 'apikey', 'useragent', 'anonymous'] as const)[Math.floor(r() * 5)]!,
    verified: r() < 0.5,
    attributes,
  }
  const rule = maybe(r, () => text(r))
  if (rule !== undefined) id.rule = rule
  const team = maybe(r, () => text(r))
  if (team !== undefined) id.team = team
  const zone = maybe(r, () => text(r))
  if (zone !== undefined) id.zone = zone
  return id
}

const TIMES = [
  0,
  1,
  999,
  1000,
  1_764_806_400_000,
  1_764_806_400_999.75,
  Date.UTC(2026, 11, 4, 0, 59, 59, 999),
  -1,
  -1500.5,
  -62_167_219_200_000,
  253_402_300_799_999,
  // six-digit years: the slow path
  253_402_300_800_000,
  -62_167_219_200_001,
  8.64e15,
  // no valid time at all
  8.64e15 + 1,
  Number.NaN,
]

function generatedEvent(r: () => number, identities: Identity[], decisions: PolicyDecision[]): RequestEvent {
  const time =
    r() < 0.3
      ? TIMES[Math.floor(r() * TIMES.length)]!
      : 1_764_806_400_000 + Math.floor(r() * 5_000) + (r() < 0.2 ? r() : 0)
  const fingerprints: RequestEvent['fingerprints'] = {}
  if (r() < 0.5) fingerprints.jwt = text(r)
  if (r() < 0.3) fingerprints.cert = text(r)
  if (r() < 0.3) fingerprints.apikey = text(r)
  const event: RequestEvent = {
    time,
    traceId: r() < 0.8 ? '0af7651916cd43dd8448eb211c80319c' : text(r),
    spanId: r() < 0.8 ? 'b7ad6b7169203331' : text(r),
    requestId: text(r, 4),
    identity: identities[Math.floor(r() * identities.length)]!,
    fingerprints,
    failures:
      r() < 0.7
        ? []
        : Array.from({ length: 1 + Math.floor(r() * 3) }, () => ({
            failed: true as const,
            source: text(r),
            reason: text(r),
            detail: text(r),
          })),
    // a fixed set in the sidecar; any text here, to exercise the escaping
    anomalies: (r() < 0.7
      ? []
      : Array.from({ length: 1 + Math.floor(r() * 3) }, () => text(r))) as RequestEvent['anomalies'],
    decision: decisions[Math.floor(r() * decisions.length)]!,
    clientAddress: r() < 0.8 ? '10.0.0.7' : text(r),
    method: r() < 0.7 ? 'GET' : text(r, 3),
    path: text(r, 10),
    route: r() < 0.5 ? '/api/v1/orders/:id' : text(r, 4),
    status: Math.floor(r() * 600),
    durationMs: r() * (r() < 0.1 ? 1e10 : 1000),
    upstreamMs: r() < 0.1 ? 0 : r() * 500,
    bytesIn: Math.floor(r() * 1e6),
    bytesOut: r() < 0.05 ? 2 ** 53 + 2 : Math.floor(r() * 1e7),
    service: r() < 0.8 ? 'checkout' : text(r, 3),
  }
  if (r() < 0.1) event.upstreamError = text(r) as RequestEvent['upstreamError']
  if (r() < 0.1) event.grpcStatus = Math.floor(r() * 17)
  return event
}

/**
 * The line as plain JSON.stringify writes the documented record. The one documented difference: the two
 * millisecond fields always carry three decimals ("12.300"), which JSON.stringify would shorten.
 */
function reference(event: RequestEvent): string {
  const record = toAuditRecord(event)
  let line = JSON.stringify({ type: 'audit', ...record })
  for (const key of ['duration_ms', 'upstream_ms'] as const) {
    const v = record[key]
    if (v >= 0 && v < 1e9) {
      // an unescaped `,"key":` cannot occur inside a JSON string: it is this field
      line = line.replace(`,"${key}":${JSON.stringify(v)},`, `,"${key}":${v.toFixed(3)},`)
    }
  }
  return `${line}\n`
}

t.test('generated events: the fast line is the JSON.stringify of the record, byte for byte', async (t) => {
  const r = rng(22)
  const identities = Array.from({ length: 40 }, () => generatedIdentity(r))
  const decisions: PolicyDecision[] = [
    { decision: 'allow', rule: 'off', skipped: true },
    { decision: 'allow', rule: 'default' },
    { decision: 'deny', rule: '/admin/**' },
    { decision: 'would_deny', rule: 'r"\\\n😀\ud800' },
  ]
  const out = new LineBuffer(64)
  let mismatches = 0
  const events = 5000
  for (let i = 0; i < events; i++) {
    const event = generatedEvent(r, identities, decisions)
    let want: string
    try {
      want = reference(event)
    } catch {
      // no valid time: both writers refuse the event
      t.throws(() => writeAuditLine(new LineBuffer(64), event), RangeError)
      continue
    }
    out.length = 0
    writeAuditLine(out, event)
    const got = out.toString()
    if (got !== want) {
      mismatches++
      if (mismatches <= 3) t.equal(got, want, `event ${i}`)
    }
    // the string form used by OTLP log records is the same line
    if (auditLine(event) !== want) mismatches++
  }
  t.equal(mismatches, 0, `${events} events, no line differs`)
})

t.test('many lines appended into one buffer equal the lines one by one', async (t) => {
  const r = rng(7)
  const identities = Array.from({ length: 5 }, () => generatedIdentity(r))
  const decisions: PolicyDecision[] = [{ decision: 'allow', rule: 'default' }]
  const out = new LineBuffer(16)
  let want = ''
  for (let i = 0; i < 500; i++) {
    const event = generatedEvent(r, identities, decisions)
    if (!(Math.abs(event.time) <= 8.64e15)) continue
    writeAuditLine(out, event)
    want += reference(event)
  }
  t.equal(out.take().toString('utf8'), want)
})

t.test('a decision object changed in place is written with its new text', async (t) => {
  const decision: PolicyDecision = { decision: 'allow', rule: 'first' }
  const event = generatedEvent(
    rng(1),
    [{ name: 'n', kind: 'service', source: 'jwt', verified: true, attributes: {} }],
    [decision],
  )
  const out = new LineBuffer(64)
  writeAuditLine(out, event)
  t.match(out.toString(), /"decision":"allow","policy_rule":"first"/)
  decision.decision = 'deny'
  decision.rule = 'second'
  out.length = 0
  writeAuditLine(out, event)
  t.equal(out.toString(), reference(event))
})

t.test('the route and method fragments stay bounded under made-up methods', async (t) => {
  // HTTP/2 accepts any token as a method: thousands of distinct ones must still be written correctly
  const r = rng(3)
  const identities = [generatedIdentity(r)]
  const decisions: PolicyDecision[] = [{ decision: 'allow', rule: 'default' }]
  const out = new LineBuffer(64)
  let bad = 0
  for (let i = 0; i < 2000; i++) {
    const event = {
      ...generatedEvent(r, identities, decisions),
      method: `M${i}`,
      route: `/r${i % 300}`,
      time: 1_764_806_400_000 + i,
    }
    out.length = 0
    writeAuditLine(out, event)
    if (out.toString() !== reference(event)) bad++
  }
  t.equal(bad, 0)
})
