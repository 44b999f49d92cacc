// When OTLP export is on and with what settings: the `otlp` block, and the standard OTEL_* variables that win.
import t from 'tap'
import { configSchema } from '../../src/config/schema.ts'
import { otlpSettings } from '../../src/telemetry/otlp-settings.ts'

const config = (otlp: Record<string, unknown> = {}) => configSchema.parse({ service: 'orders', otlp })

t.test('off by default, and with no endpoint anywhere', async (t) => {
  t.equal(otlpSettings(config(), {}), undefined)
  t.equal(otlpSettings(config(), { OTEL_SERVICE_NAME: 'x', OTEL_BSP_MAX_QUEUE_SIZE: '10' }), undefined)
})

t.test('the config block turns it on', async (t) => {
  const s = otlpSettings(config({ endpoint: 'http://collector:4318/', scheduledDelay: '250ms' }), {})
  t.match(s, {
    url: 'http://collector:4318/v1/traces',
    timeoutMillis: 10_000,
    maxQueueSize: 2048,
    maxExportBatchSize: 512,
    scheduledDelayMillis: 250,
    serviceName: 'orders',
  })
})

t.test('OTEL_* variables win over the config block', async (t) => {
  const c = config({ endpoint: 'http://config:4318', maxQueueSize: 100, timeout: '3s' })
  const generic = otlpSettings(c, { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://env:4318' })
  t.equal(generic?.url, undefined, 'the exporter reads the endpoint variable itself')
  t.equal(generic?.target, 'http://env:4318')
  const traces = otlpSettings(c, {
    OTEL_EXPORTER_OTLP_ENDPOINT: 'http://env:4318',
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://env-traces:4318/v1/traces',
    OTEL_BSP_MAX_QUEUE_SIZE: '64',
    OTEL_EXPORTER_OTLP_TIMEOUT: '500',
  })
  t.equal(traces?.target, 'http://env-traces:4318/v1/traces')
  t.equal(traces?.maxQueueSize, 64)
  t.equal(traces?.timeoutMillis, undefined, 'the exporter reads the timeout variable itself')
  t.equal(otlpSettings(c, { OTEL_BSP_MAX_QUEUE_SIZE: 'lots' })?.maxQueueSize, 100, 'a bad number is ignored')
  t.equal(otlpSettings(c, {})?.timeoutMillis, 3000)
})

t.test('OTEL_SDK_DISABLED and OTEL_TRACES_EXPORTER=none turn it off', async (t) => {
  const c = config({ endpoint: 'http://collector:4318' })
  t.equal(otlpSettings(c, { OTEL_SDK_DISABLED: 'true' }), undefined)
  t.equal(otlpSettings(c, { OTEL_TRACES_EXPORTER: 'none' }), undefined)
  t.ok(otlpSettings(c, { OTEL_TRACES_EXPORTER: 'otlp' }))
  t.ok(otlpSettings(c, { OTEL_SDK_DISABLED: 'false' }))
})

t.test('only http(s) endpoints are accepted in the config', async (t) => {
  t.notOk(configSchema.safeParse({ otlp: { endpoint: 'collector:4317' } }).success)
})

t.test(
  'an endpoint with a path and a query: the signal path goes after the path, the query stays',
  async (t) => {
    const s = otlpSettings(
      config({ endpoint: 'https://otlp.example/tenant-a/?api_key=K&x=1', logs: true }),
      {},
    )
    t.equal(s?.url, 'https://otlp.example/tenant-a/v1/traces?api_key=K&x=1')
    t.same(s?.logs, { url: 'https://otlp.example/tenant-a/v1/logs?api_key=K&x=1' })
    t.equal(
      otlpSettings(config({ endpoint: 'http://collector:4318?api_key=K' }), {})?.url,
      'http://collector:4318/v1/traces?api_key=K',
      'no path',
    )
    t.equal(
      otlpSettings(config({ endpoint: 'http://otel:pa%23ss@collector:4318//' }), {})?.url,
      'http://otel:pa%23ss@collector:4318/v1/traces',
      'credentials kept, trailing slashes dropped',
    )
  },
)

t.test('audit log records: otlp.logs, or OTEL_LOGS_EXPORTER which wins', async (t) => {
  const on = config({ endpoint: 'http://collector:4318', logs: true })
  const off = config({ endpoint: 'http://collector:4318' })
  t.equal(otlpSettings(off, {})?.logs, undefined, 'off by default')
  t.same(otlpSettings(on, {})?.logs, { url: 'http://collector:4318/v1/logs' })
  t.same(otlpSettings(off, { OTEL_LOGS_EXPORTER: 'otlp' })?.logs, { url: 'http://collector:4318/v1/logs' })
  t.equal(otlpSettings(on, { OTEL_LOGS_EXPORTER: 'none' })?.logs, undefined)
  t.same(
    otlpSettings(on, { OTEL_EXPORTER_OTLP_LOGS_ENDPOINT: 'http://logs:4318/v1/logs' })?.logs,
    {},
    'the exporter reads the endpoint variable itself',
  )
})

t.test('otlp.headers: sent with every export, except names OTEL_EXPORTER_OTLP_*HEADERS sets', async (t) => {
  const c = config({
    endpoint: 'http://collector:4318',
    headers: { Authorization: 'Bearer t', 'x-tenant': 'acme' },
  })
  t.same(otlpSettings(c, {})?.headers, { Authorization: 'Bearer t', 'x-tenant': 'acme' })
  t.same(
    otlpSettings(c, { OTEL_EXPORTER_OTLP_HEADERS: 'authorization=Bearer%20env' })?.headers,
    { 'x-tenant': 'acme' },
    'the environment wins (the exporter reads it itself)',
  )
  t.equal(
    otlpSettings(c, { OTEL_EXPORTER_OTLP_TRACES_HEADERS: 'authorization=a,x-tenant=b' })?.headers,
    undefined,
  )
  t.notOk(configSchema.safeParse({ otlp: { headers: { 'bad name': 'x' } } }).success)
  t.notOk(configSchema.safeParse({ otlp: { headers: { ok: 'two\nlines' } } }).success)
})
