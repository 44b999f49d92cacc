// OTLP trace export end to end: built sidecars export to a real OTLP/HTTP receiver that decodes protobuf
// with the official proto definitions. A request crossing two sidecars (client → sidecar A → app A →
// sidecar B → app B) makes one trace with two server spans, parent and child, whose identities say who
// called whom; with the collector down, traffic flows as before and the lost spans are counted.
import { createHash } from 'node:crypto'
import { once } from 'node:events'
import { createServer, request } from 'node:http'
import type { AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { refusedPort } from '../helpers/net.ts'
import { CLEAN_OTEL_ENV, startCollector } from '../helpers/otlp-collector.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const API_KEY = 'billing-secret-key-0123456789'
const sha256 = (s: string) => createHash('sha256').update(s).digest('hex')
const url = (a: AddressInfo) => `http://127.0.0.1:${a.port}`
/** everything a span carries, as text (its nanosecond times are bigints) */
// letters, so it cannot turn up by chance in a span's ids, times or ports (a bare 4111 once did)
const QUERY_SECRET = 'qsCardSecret4111'
const dump = (v: unknown) => JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? String(x) : x))

function get(target: string, headers: Record<string, string> = {}) {
  return new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = request(target, { headers }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => {
        body += c
      })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    })
    req.on('error', reject)
    req.setTimeout(10_000, () => req.destroy(new Error('request timed out')))
    req.end()
  })
}

/**
 * A collector, and a sidecar for "orders" in front of a test upstream that exports to it: `config` over that,
 * `otlp` over the collector's endpoint, and no OTEL_* variable of the environment the tests run in.
 */
async function ordersExporting(t: Test, otlp: Record<string, unknown>, config: Record<string, unknown> = {}) {
  const collector = await startCollector()
  t.teardown(() => collector.close())
  const app = await startUpstream()
  t.teardown(() => app.close())
  const sidecar = await startTestSidecar(
    t,
    { service: 'orders', upstream: app.url, ...config, otlp: { endpoint: collector.url, ...otlp } },
    { env: CLEAN_OTEL_ENV },
  )
  return { collector, app, sidecar }
}

t.test('a request across two sidecars is one trace: two server spans, parent and child', async (t) => {
  const collector = await startCollector()
  t.teardown(() => collector.close())
  const appB = await startUpstream()
  t.teardown(() => appB.close())

  // sidecar B fronts "orders"; export configured the standard way, by environment
  const sidecarB = await startTestSidecar(
    t,
    {
      service: 'orders',
      upstream: appB.url,
      apiKeys: { keys: [{ name: 'billing', kind: 'service', sha256: sha256(API_KEY) }] },
    },
    {
      env: {
        ...CLEAN_OTEL_ENV,
        OTEL_EXPORTER_OTLP_ENDPOINT: collector.url,
        OTEL_BSP_SCHEDULE_DELAY: '100',
      },
    },
  )

  // app A ("billing") calls orders through sidecar B with its API key, propagating the trace context
  const seenByA: string[] = []
  const appA = createServer((req, res) => {
    const traceparent = String(req.headers.traceparent ?? '')
    seenByA.push(traceparent)
    get(`${url(sidecarB.proxyAddress)}/orders/42`, { traceparent, 'x-api-key': API_KEY }).then(
      (r) => {
        res.statusCode = r.status
        res.end(r.body)
      },
      () => {
        res.statusCode = 502
        res.end()
      },
    )
  })
  appA.listen(0, '127.0.0.1')
  await once(appA, 'listening')
  t.teardown(() => new Promise<void>((done) => appA.close(() => done())))

  // sidecar A fronts "billing"; export configured by the config block
  const sidecarA = await startTestSidecar(
    t,
    {
      service: 'billing',
      upstream: url(appA.address() as AddressInfo),
      otlp: { endpoint: collector.url, scheduledDelay: '100ms' },
    },
    { env: CLEAN_OTEL_ENV },
  )

  const traceId = '4bf92f3577b34da6a3ce929d0e0e4736'
  const clientSpan = '00f067aa0ba902b7'
  const res = await get(`${url(sidecarA.proxyAddress)}/checkout?card=${QUERY_SECRET}`, {
    traceparent: `00-${traceId}-${clientSpan}-01`,
    'user-agent': 'curl/8.5.0',
  })
  t.equal(res.status, 200)

  const spans = await eventually(
    () => {
      const mine = collector.spans.filter((s) => s.traceId === traceId)
      return mine.length >= 2 ? mine : undefined
    },
    { what: 'two spans of the trace at the collector' },
  )
  t.equal(spans.length, 2, 'one span per sidecar')
  const a = spans.find((s) => s.service === 'billing')
  const b = spans.find((s) => s.service === 'orders')
  if (!a || !b)
    throw new Error(`spans of both services expected: ${JSON.stringify(spans.map((s) => s.service))}`)

  // the spans are the hops the upstreams saw
  const tpA = seenByA[0]!
  const tpB = String(appB.received.at(-1)?.headers.traceparent)
  t.equal(tpA, `00-${traceId}-${a.spanId}-01`, "app A's parent is sidecar A's span")
  t.equal(tpB, `00-${traceId}-${b.spanId}-01`, "app B's parent is sidecar B's span")
  t.equal(a.parentSpanId, clientSpan, "sidecar A's span continues the client's traceparent")
  t.equal(b.parentSpanId, a.spanId, "sidecar B's span is a child of sidecar A's")

  // who called whom
  t.equal(a.kind, 2, 'SERVER span')
  t.equal(b.kind, 2, 'SERVER span')
  t.match(a.attributes, {
    'nhi.identity': 'ua:curl',
    'nhi.source': 'useragent',
    'nhi.verified': false,
    'http.request.method': 'GET',
    'url.path': '/checkout',
    'http.response.status_code': 200,
    'server.address': '127.0.0.1',
    'client.address': '127.0.0.1',
    'nhi.decision': 'none',
  })
  t.match(b.attributes, {
    'nhi.identity': 'billing',
    'nhi.kind': 'service',
    'nhi.source': 'apikey',
    'nhi.verified': true,
    'http.request.method': 'GET',
    'url.path': '/orders/42',
    'http.response.status_code': 200,
    'server.address': '127.0.0.1',
    'server.port': sidecarB.proxyAddress.port,
  })
  t.ok(b.startNanos >= a.startNanos, `B starts after A (${b.startNanos - a.startNanos} ns)`)
  // B records its span when its response to A has closed, which can come a little after A has passed the last
  // byte on and recorded its own; a busy machine delays B's close further (seen at over 5 ms in one suite run)
  t.ok(b.endNanos <= a.endNanos + 50_000_000n, `B ends with A (${b.endNanos - a.endNanos} ns after)`)

  // no token material anywhere in what left the process
  const everything = dump(spans)
  t.notOk(everything.includes(API_KEY), 'the API key is in no attribute')
  t.notOk(everything.includes(QUERY_SECRET), 'the query string is in no attribute')

  // export counters on /metrics
  const samples = await eventually(async () => {
    const s = await scrape(url(sidecarB.adminAddress))
    return metricValue(s, 'nhi_otlp_spans_exported_total') >= 1 ? s : undefined
  })
  t.equal(metricValue(samples, 'nhi_otlp_spans_dropped_total'), 0)
})

t.test('anomalies and credential failures are span events; 5xx is an error status', async (t) => {
  const { collector, app, sidecar } = await ordersExporting(
    t,
    { scheduledDelay: '50ms', logs: true },
    { apiKeys: { keys: [{ name: 'billing', kind: 'service', sha256: sha256(API_KEY) }] } },
  )
  const res = await get(`${url(sidecar.proxyAddress)}/status/503`, { 'x-api-key': 'not-a-known-key-42' })
  t.equal(res.status, 503)
  const [span] = await eventually(() => (collector.spans.length > 0 ? collector.spans : undefined))
  t.equal(span!.parentSpanId, '', 'no incoming traceparent: a root span')
  t.equal(span!.traceId, String(app.received.at(-1)?.headers.traceparent).split('-')[1])
  t.equal(span!.statusCode, 2, 'error status')
  t.equal(span!.attributes['error.type'], '503')
  t.same(span!.attributes['nhi.credential_failures'], ['apikey:apikey_unknown'])
  t.ok(
    span!.events.some(
      (e) => e.name === 'nhi.credential_failure' && e.attributes['nhi.failure.reason'] === 'apikey_unknown',
    ),
  )
  t.notOk(dump(span).includes('not-a-known-key-42'), 'the presented key is in no attribute')

  // otlp.logs: the audit record as a log record in the same trace
  const [log] = await eventually(() => (collector.logs.length > 0 ? collector.logs : undefined), {
    what: 'the audit log record',
  })
  t.equal(log!.eventName, 'nhi.audit')
  t.equal(log!.service, 'orders')
  t.equal(log!.traceId, span!.traceId)
  t.equal(log!.spanId, span!.spanId)
  t.equal(log!.severityText, 'WARN')
  t.type(log!.body, 'string', 'the body is the audit line (JSON text)')
  t.match(JSON.parse(String(log!.body)), {
    type: 'audit',
    trace_id: span!.traceId,
    status: 503,
    source: 'anonymous',
    failures: [{ reason: 'apikey_unknown' }],
  })
  t.match(log!.attributes, {
    'nhi.identity': span!.attributes['nhi.identity'],
    'http.response.status_code': 503,
  })
  t.notOk(JSON.stringify(log).includes('not-a-known-key-42'), 'the presented key is in no log field')
  const samples = await eventually(async () => {
    const s = await scrape(url(sidecar.adminAddress))
    return metricValue(s, 'nhi_otlp_log_records_exported_total') >= 1 ? s : undefined
  })
  t.equal(metricValue(samples, 'nhi_otlp_log_records_dropped_total'), 0)
})

t.test('collector down: traffic is not slowed, lost spans are counted', async (t) => {
  // a port nothing listens on, and no other test file can be given while this one runs
  const closedPort = await refusedPort()

  const app = await startUpstream()
  t.teardown(() => app.close())
  const sidecar = await startTestSidecar(
    t,
    {
      service: 'orders',
      upstream: app.url,
      otlp: {
        endpoint: `http://127.0.0.1:${closedPort}`,
        timeout: '5s',
        maxQueueSize: 8,
        maxExportBatchSize: 4,
        scheduledDelay: '20ms',
      },
    },
    { env: CLEAN_OTEL_ENV },
  )
  const target = `${url(sidecar.proxyAddress)}/echo`
  // the first request opens the upstream connection: not what is measured
  t.equal((await get(target)).status, 200)
  const latencies: number[] = []
  const statuses = new Set<number>()
  for (let i = 0; i < 200; i++) {
    const started = performance.now()
    const r = await get(target)
    latencies.push(performance.now() - started)
    statuses.add(r.status)
  }
  t.same([...statuses], [200], 'every request answered 200')
  latencies.sort((x, y) => x - y)
  const median = latencies[latencies.length >> 1]!
  const max = latencies.at(-1)!
  t.comment(`latency with the collector down: median ${median.toFixed(1)} ms, max ${max.toFixed(1)} ms`)
  t.ok(median < 50, `median ${median.toFixed(1)} ms`)
  // an export that blocked a request would take the export timeout (5 s) at least; a loaded machine's pauses
  // stay well under it
  t.ok(max < 4000, `max ${max.toFixed(1)} ms`)

  const samples = await eventually(
    async () => {
      const s = await scrape(url(sidecar.adminAddress))
      return metricValue(s, 'nhi_otlp_spans_dropped_total', { reason: 'queue_full' }) > 0 &&
        metricValue(s, 'nhi_otlp_spans_dropped_total', { reason: 'export_failed' }) > 0
        ? s
        : undefined
    },
    { what: 'dropped spans counted', timeoutMs: 15_000 },
  )
  t.equal(metricValue(samples, 'nhi_otlp_spans_exported_total'), 0)
  const dropped = metricValue(samples, 'nhi_otlp_spans_dropped_total')
  t.ok(dropped <= 201, `${dropped} spans dropped of 201`)
})

t.test('spans still queued at shutdown are sent before the sidecar exits', async (t) => {
  // a batch would wait a minute: only the shutdown flush sends it in time
  const { collector, sidecar } = await ordersExporting(t, { scheduledDelay: '60s' })
  t.equal((await get(`${url(sidecar.proxyAddress)}/echo`)).status, 200)
  t.equal(collector.spans.length, 0, 'nothing sent yet')
  t.equal(await sidecar.close(), 0, 'exits 0')
  t.equal(collector.spans.length, 1, 'the queued span was sent on the way out')
})
