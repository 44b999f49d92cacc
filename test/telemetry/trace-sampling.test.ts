// The sampled flag of the `traceparent` the upstream gets is this hop's own sampling decision, the one the span
// export takes from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG: a trace the proxy starts under a ratio or
// an always_off sampler was sent on marked sampled (01) while its span was dropped, so the upstream's spans were
// recorded without their parent. Checked against the OpenTelemetry SDK's own samplers (built from the same
// environment by a tracer provider, as the export builds them), and end to end through the built bundle: the
// upstream sees 01 exactly for the traces whose span reaches the collector.
import { type Context, ROOT_CONTEXT, TraceFlags, trace } from '@opentelemetry/api'
import { BasicTracerProvider } from '@opentelemetry/sdk-trace-base'
import fc from 'fast-check'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { samplingRuleFromEnv } from '../../src/proxy/ids.ts'
import { eventually } from '../helpers/eventually.ts'
import { CLEAN_OTEL_ENV, startCollector } from '../helpers/otlp-collector.ts'
import { PROPERTY_SEED } from '../helpers/property.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const SAMPLERS = [
  undefined,
  '',
  '  ',
  'always_on',
  'always_off',
  'parentbased_always_on',
  'parentbased_always_off',
  'traceidratio',
  'parentbased_traceidratio',
  ' always_off',
  'ALWAYS_OFF',
  'nonsense',
]
const ARGS = [undefined, '', '0', '0.25', '0.5', '1', '1.5', '-0.1', 'half', ' 0.75 ']

/** the SDK's decision for one span under `env`, with the caller's flags (undefined: a root span) */
function sdkSamples(env: Record<string, string | undefined>, traceId: string, caller: number | undefined) {
  const saved = { sampler: process.env.OTEL_TRACES_SAMPLER, arg: process.env.OTEL_TRACES_SAMPLER_ARG }
  const set = (k: string, v: string | undefined) => {
    if (v === undefined) delete process.env[k]
    else process.env[k] = v
  }
  set('OTEL_TRACES_SAMPLER', env['OTEL_TRACES_SAMPLER'])
  set('OTEL_TRACES_SAMPLER_ARG', env['OTEL_TRACES_SAMPLER_ARG'])
  try {
    const provider = new BasicTracerProvider({
      idGenerator: { generateTraceId: () => traceId, generateSpanId: () => '1122334455667788' },
    })
    const parent: Context =
      caller === undefined
        ? ROOT_CONTEXT
        : trace.setSpanContext(ROOT_CONTEXT, {
            traceId,
            spanId: 'aabbccddeeff0011',
            traceFlags: caller,
            isRemote: true,
          })
    const span = provider.getTracer('t').startSpan('s', {}, parent)
    return (span.spanContext().traceFlags & TraceFlags.SAMPLED) === TraceFlags.SAMPLED
  } finally {
    set('OTEL_TRACES_SAMPLER', saved.sampler)
    set('OTEL_TRACES_SAMPLER_ARG', saved.arg)
  }
}

t.test("the hop's sampling decision is the OpenTelemetry SDK's, for every sampler setting", async (t) => {
  const traceId = fc.stringMatching(/^[0-9a-f]{32}$/).filter((id) => !/^0+$/.test(id))
  let checked = 0
  fc.assert(
    fc.property(
      fc.constantFrom(...SAMPLERS),
      fc.constantFrom(...ARGS),
      traceId,
      fc.constantFrom(undefined, 0, 1, 2, 3),
      (sampler, arg, id, caller) => {
        const env = { OTEL_TRACES_SAMPLER: sampler, OTEL_TRACES_SAMPLER_ARG: arg }
        checked++
        return samplingRuleFromEnv(env)(id, caller) === sdkSamples(env, id, caller)
      },
    ),
    { numRuns: 2_000, seed: PROPERTY_SEED },
  )
  t.equal(checked, 2_000)
})

/** a sidecar exporting to a collector under `sampler`, in front of an upstream that echoes what it got */
async function sampledSidecar(t: Test, sampler: Record<string, string>) {
  const collector = await startCollector()
  t.teardown(() => collector.close())
  const app = await startUpstream()
  t.teardown(() => app.close())
  const sidecar = await startTestSidecar(
    t,
    { service: 'orders', upstream: app.url, otlp: { endpoint: collector.url, scheduledDelay: '50ms' } },
    { env: { ...CLEAN_OTEL_ENV, ...sampler } },
  )
  const send = async (traceparent?: string) => {
    const res = await request(`${sidecar.proxyUrl}/echo`, traceparent ? { headers: { traceparent } } : {})
    const sent = (JSON.parse(await res.body.text()) as { headers: Record<string, string> }).headers[
      'traceparent'
    ]!
    return { traceId: sent.slice(3, 35), flags: sent.slice(53) }
  }
  /** the trace ids whose spans reached the collector, once the marker's (a sampled caller's trace) has */
  const exported = async (marker: string) => {
    await eventually(() => collector.spans.some((s) => s.traceId === marker), { what: "the marker's span" })
    return new Set(collector.spans.map((s) => s.traceId))
  }
  return { send, exported }
}

t.test('a ratio sampler: the upstream sees 01 exactly for the traces whose span is exported', async (t) => {
  const { send, exported } = await sampledSidecar(t, {
    OTEL_TRACES_SAMPLER: 'parentbased_traceidratio',
    OTEL_TRACES_SAMPLER_ARG: '0.5',
  })
  const started = []
  for (let i = 0; i < 40; i++) started.push(await send())
  const marker = '4bf92f3577b34da6a3ce929d0e0e4736'
  t.equal(
    (await send(`00-${marker}-00f067aa0ba902b7-01`)).flags,
    '01',
    "a sampled caller's trace stays sampled",
  )
  const spans = await exported(marker)
  const sampled = started.filter((s) => s.flags === '01').length
  t.ok(sampled > 0 && sampled < started.length, `both decisions were drawn (${sampled} of ${started.length})`)
  for (const s of started) {
    t.equal(
      s.flags === '01',
      spans.has(s.traceId),
      `trace ${s.traceId}: flags ${s.flags}, span exported or not alike`,
    )
  }
})

t.test('always_off sends 00; always_on sends 01 even when the caller said 00', async (t) => {
  const off = await sampledSidecar(t, { OTEL_TRACES_SAMPLER: 'always_off' })
  t.equal((await off.send()).flags, '00', 'always_off: a trace the proxy starts is not sampled')
  t.equal((await off.send(`00-${'ab'.repeat(16)}-00f067aa0ba902b7-01`)).flags, '00', "nor a sampled caller's")
  const on = await sampledSidecar(t, { OTEL_TRACES_SAMPLER: 'always_on' })
  const marker = 'cd'.repeat(16)
  t.equal((await on.send(`00-${marker}-00f067aa0ba902b7-00`)).flags, '01', 'always_on records and says so')
  t.equal((await on.send(`00-${'ef'.repeat(16)}-00f067aa0ba902b7-02`)).flags, '03', 'the random bit is kept')
  t.ok((await on.exported(marker)).has(marker), 'its span is exported')
})
