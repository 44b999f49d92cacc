// The hand-written parts of the record path: metric exposition (checked by the real promtool where
// installed) and the audit line serialiser (checked against JSON.stringify of the audit record).
import { isDeepStrictEqual } from 'node:util'
import fc from 'fast-check'
import t from 'tap'
import { configSchema } from '../../src/config/schema.ts'
import { ALL_FAILURE_REASONS, SOURCE_NAMES } from '../../src/identity/sources/index.ts'
import { auditLine, toAuditRecord } from '../../src/telemetry/audit.ts'
import {
  Buckets,
  CounterSeries,
  escapeLabelValue,
  HistogramSeries,
  labelText,
} from '../../src/telemetry/exposition.ts'
import { Telemetry } from '../../src/telemetry/index.ts'
import { ANOMALY_TYPES, KINDS, type RequestEvent } from '../../src/types.ts'
import { identity, requestEvent } from '../helpers/events.ts'
import { parseMetrics } from '../helpers/metrics.ts'
import { checkProperty } from '../helpers/property.ts'
import { run, systemTool } from '../helpers/tools.ts'

t.test('label values escape backslash, quote and newline, and nothing else', async (t) => {
  t.equal(escapeLabelValue('plain/name-1'), 'plain/name-1')
  t.equal(escapeLabelValue('a"b\\c\nd'), 'a\\"b\\\\c\\nd')
  t.equal(escapeLabelValue('ünïcode ✓'), 'ünïcode ✓')
  t.equal(labelText(['a', 'b'], ['x', 'y"']), 'a="x",b="y\\""')
})

t.test('a lone surrogate in a label value is written as its escape; a surrogate pair as it is', async (t) => {
  t.equal(escapeLabelValue('a\ud800'), 'a\\\\ud800', 'read back by Prometheus as the text a\\ud800')
  t.equal(escapeLabelValue('\udfffb"'), '\\\\udfffb\\"')
  t.equal(escapeLabelValue('a\ud83d\ude00'), 'a\ud83d\ude00')
  t.not(escapeLabelValue('a\ud800'), escapeLabelValue('a\ufffd'))
})

t.test('histogram buckets are cumulative and keep one exemplar per bucket', async (t) => {
  const h = new HistogramSeries('service="s"', new Buckets([0.1, 1]))
  h.observe(0.05, 'aaaa', 1_000)
  h.observe(0.5, 'bbbb', 2_000)
  h.observe(0.1, '', 3_000)
  h.observe(7, 'cccc', 4_000)
  const text: string[] = []
  h.write(text, 'd', false)
  t.same(text.join('').split('\n'), [
    'd_bucket{service="s",le="0.1"} 2',
    'd_bucket{service="s",le="1"} 3',
    'd_bucket{service="s",le="+Inf"} 4',
    'd_sum{service="s"} 7.65',
    'd_count{service="s"} 4',
    '',
  ])
  const om: string[] = []
  h.write(om, 'd', true)
  const lines = om.join('').split('\n')
  t.equal(
    lines[0],
    'd_bucket{service="s",le="0.1"} 2 # {trace_id="aaaa"} 0.05 1.000',
    'no-trace observation keeps the earlier exemplar',
  )
  t.equal(lines[1], 'd_bucket{service="s",le="1"} 3 # {trace_id="bbbb"} 0.5 2.000')
  t.equal(lines[2], 'd_bucket{service="s",le="+Inf"} 4 # {trace_id="cccc"} 7 4.000')

  const c = new CounterSeries('')
  c.incWithExemplar(1, 'dddd', 5_500)
  c.inc(2)
  const out: string[] = []
  c.write(out, 'n', true)
  t.equal(out.join(''), 'n_total 3 # {trace_id="dddd"} 1 5.500\n')
})

t.test('a series renders again after any change, and in the format asked for', async (t) => {
  const render = (s: { write(out: string[], family: string, om: boolean): void }, om: boolean) => {
    const out: string[] = []
    s.write(out, 'x', om)
    return out.join('')
  }
  const h = new HistogramSeries('', new Buckets([1]))
  h.observe(0.5, 'aaaa', 1_000)
  t.equal(render(h, false), 'x_bucket{le="1"} 1\nx_bucket{le="+Inf"} 1\nx_sum 0.5\nx_count 1\n')
  t.equal(render(h, false), render(h, false), 'unchanged series, same text')
  t.match(render(h, true), /^x_bucket\{le="1"\} 1 # \{trace_id="aaaa"\}/, 'switching format re-renders')
  h.observe(2, '', 2_000)
  t.equal(render(h, false), 'x_bucket{le="1"} 1\nx_bucket{le="+Inf"} 2\nx_sum 2.5\nx_count 2\n', 'observe')

  const c = new CounterSeries('k="v"')
  t.equal(render(c, false), 'x_total{k="v"} 0\n')
  c.inc(2)
  t.equal(render(c, false), 'x_total{k="v"} 2\n', 'inc')
  c.incWithExemplar(1, 'bbbb', 3_000)
  t.equal(render(c, true), 'x_total{k="v"} 3 # {trace_id="bbbb"} 1 3.000\n', 'incWithExemplar')
  t.equal(render(c, false), 'x_total{k="v"} 3\n')
})

t.test('a series kept between scrapes renders what a new series fed the same updates renders', async (t) => {
  // the kept bucket lines, exemplars and prefixes are only re-rendered when their counts moved: any
  // sequence of updates and scrapes, in either format, must still give the text of a series rendered once
  type Op =
    | { op: 'observe'; value: number; trace: string; at: number }
    | { op: 'inc'; amount: number; trace: string; at: number }
    | { op: 'scrape'; om: boolean }
  const op: fc.Arbitrary<Op> = fc.oneof(
    fc.record({
      op: fc.constant('observe' as const),
      value: fc.constantFrom(0, 0.05, 0.1, 0.3, 1, 2.5, 99),
      trace: fc.constantFrom('', 'aaaa', 'bbbb', 'cccc'),
      at: fc.integer({ min: 0, max: 5_000 }),
    }),
    fc.record({
      op: fc.constant('inc' as const),
      amount: fc.constantFrom(1, 2, 0.5),
      trace: fc.constantFrom('', 'dddd', 'eeee'),
      at: fc.integer({ min: 0, max: 5_000 }),
    }),
    fc.record({ op: fc.constant('scrape' as const), om: fc.boolean() }),
  )
  const buckets = new Buckets([0.1, 1, 2.5])
  const render = (s: { write(out: string[], family: string, om: boolean): void }, om: boolean) => {
    const out: string[] = []
    s.write(out, 'f', om)
    return out.join('')
  }
  checkProperty(
    t,
    'kept text equals fresh text after every scrape',
    fc.property(fc.array(op, { maxLength: 40 }), (ops) => {
      const h = new HistogramSeries('service="s",identity="a\\"b"', buckets)
      const c = new CounterSeries('service="s"')
      const done: Op[] = []
      for (const o of ops) {
        done.push(o)
        if (o.op === 'observe') h.observe(o.value, o.trace, o.at)
        else if (o.op === 'inc') c.incWithExemplar(o.amount, o.trace, o.at)
        else {
          const freshH = new HistogramSeries('service="s",identity="a\\"b"', buckets)
          const freshC = new CounterSeries('service="s"')
          for (const d of done) {
            if (d.op === 'observe') freshH.observe(d.value, d.trace, d.at)
            else if (d.op === 'inc') freshC.incWithExemplar(d.amount, d.trace, d.at)
          }
          if (render(h, o.om) !== render(freshH, o.om)) return false
          if (render(c, o.om) !== render(freshC, o.om)) return false
        }
      }
      return true
    }),
    300,
  )
})

const promtool = systemTool('promtool')

t.test('a scrape with hostile identity names is valid exposition (promtool check metrics)', async (t) => {
  const telemetry = new Telemetry(
    configSchema.parse({ service: 'svc"x', audit: { output: 'off' }, cost: { perRequest: 0.01 } }),
    { version: 'test' },
  )
  t.teardown(() => telemetry.close())
  const names = ['plain', 'quote"d', 'back\\slash', 'new\nline', 'ünï ✓', '{brace}', 'a,b=c']
  for (const [i, name] of names.entries()) {
    telemetry.record(
      requestEvent({
        identity: identity(name, { kind: i % 2 ? 'job' : 'service', expiresAt: 2_000_000_000 }),
        route: i === 3 ? '/odd/"route"' : '/api/v1/orders/:id',
        status: i === 2 ? 503 : 200,
        failures: i === 4 ? [{ failed: true, source: 'jwt', reason: 'expired', detail: 'x' }] : [],
        decision: { decision: 'would_deny', rule: 'r"1', skipped: false },
      }),
    )
  }
  const text = await telemetry.scrape(false)
  const samples = parseMetrics(text.body)
  for (const name of names) {
    t.ok(
      samples.some((s) => s.name === 'nhi_requests_total' && s.labels['identity'] === name),
      `series for ${JSON.stringify(name)} round-trips`,
    )
  }
  const om = await telemetry.scrape(true)
  t.match(om.body, /# EOF\n$/)
  t.equal(om.body.indexOf('# EOF'), om.body.length - 6, 'one EOF, at the end')
  // promtool lints the Prometheus text format: a malformed line or label makes it exit non-zero
  if (promtool) {
    const r = await run(promtool, ['check', 'metrics'], { input: text.body })
    t.equal(r.code, 0, `promtool accepts the text format ${r.stderr}`)
    t.notMatch(r.stderr, /error/i)
  } else t.comment('promtool not installed: format checked by the parser above only')
})

const text = fc.string({ unit: 'binary', maxLength: 24 })
const maybe = <T>(arb: fc.Arbitrary<T>) => fc.option(arb, { nil: undefined })

const eventArb: fc.Arbitrary<RequestEvent> = fc
  .record({
    name: text,
    kind: fc.constantFrom(...KINDS),
    source: fc.constantFrom(...SOURCE_NAMES),
    verified: fc.boolean(),
    rule: maybe(text),
    team: maybe(text),
    zone: maybe(text),
    iss: maybe(text),
    sub: maybe(text),
    jti: maybe(text),
    jwt: maybe(text),
    cert: maybe(text),
    apikey: maybe(text),
    failures: fc.array(fc.constantFrom(...ALL_FAILURE_REASONS), { maxLength: 3 }),
    anomalies: fc.array(fc.constantFrom(...ANOMALY_TYPES), { maxLength: 3 }),
    path: text,
    method: text,
    requestId: text,
    status: fc.integer({ min: 100, max: 999 }),
    durationMs: fc.oneof(
      fc.double({ min: 0, max: 1e7, noNaN: true }),
      fc.constantFrom(0, 0.0005, 0.9995, 1e12),
    ),
    upstreamMs: fc.double({ min: 0, max: 1e5, noNaN: true }),
    bytesIn: fc.nat(),
    upstreamError: maybe(fc.constantFrom('connect' as const, 'timeout' as const, 'reset' as const)),
    peer: maybe(text),
    skipped: fc.boolean(),
  })
  .map((r) => {
    const attributes: Record<string, string> = {}
    if (r.iss !== undefined) attributes['iss'] = r.iss
    if (r.sub !== undefined) attributes['sub'] = r.sub
    if (r.jti !== undefined) attributes['jti'] = r.jti
    const fingerprints: RequestEvent['fingerprints'] = {}
    if (r.jwt !== undefined) fingerprints.jwt = r.jwt
    if (r.cert !== undefined) fingerprints.cert = r.cert
    if (r.apikey !== undefined) fingerprints.apikey = r.apikey
    const event = requestEvent({
      identity: identity(r.name, {
        kind: r.kind,
        source: r.source,
        verified: r.verified,
        attributes,
        ...(r.rule !== undefined ? { rule: r.rule } : {}),
        ...(r.team !== undefined ? { team: r.team } : {}),
        ...(r.zone !== undefined ? { zone: r.zone } : {}),
      }),
      fingerprints,
      failures: r.failures.map((reason) => ({
        failed: true as const,
        source: 'jwt' as const,
        reason,
        detail: 'd',
      })),
      anomalies: r.anomalies,
      path: r.path,
      method: r.method,
      requestId: r.requestId,
      status: r.status,
      durationMs: r.durationMs,
      upstreamMs: r.upstreamMs,
      bytesIn: r.bytesIn,
      decision: { decision: 'deny', rule: 'p', skipped: r.skipped },
    })
    if (r.upstreamError) event.upstreamError = r.upstreamError
    if (r.peer !== undefined) event.peerAddress = r.peer
    return event
  })

t.test('the audit line says exactly what JSON.stringify of the audit record says', async (t) => {
  checkProperty(
    t,
    'auditLine(e) parses to {type: "audit", ...toAuditRecord(e)}, with durations to the microsecond',
    fc.property(eventArb, (event) => {
      const line = auditLine(event)
      if (!line.endsWith('}\n') || line.indexOf('\n') !== line.length - 1) return false
      const got = JSON.parse(line) as Record<string, unknown>
      const want = { type: 'audit', ...(JSON.parse(JSON.stringify(toAuditRecord(event))) as object) }
      return isDeepStrictEqual(got, want) && Object.keys(got).join() === Object.keys(want).join()
    }),
    300,
  )
  checkProperty(
    t,
    'and byte for byte: JSON.stringify of the record, durations written with three decimals',
    fc.property(eventArb, (event) => line(event) === auditLine(event)),
    300,
  )
})

/** the reference text: JSON.stringify with the two durations in the line's fixed three-decimal form */
function line(event: RequestEvent): string {
  const ms = (v: number) =>
    Number.isFinite(v) && v >= 0 && v < 1e9 ? (Math.round(v * 1000) / 1000).toFixed(3) : JSON.stringify(v)
  const record = { type: 'audit', ...toAuditRecord(event), duration_ms: '\0d', upstream_ms: '\0u' }
  return `${JSON.stringify(record)
    .replace('"\\u0000d"', ms(Math.round(event.durationMs * 1000) / 1000))
    .replace('"\\u0000u"', ms(Math.round(event.upstreamMs * 1000) / 1000))}\n`
}
