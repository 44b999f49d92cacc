// OTLP settings follow a config reload on the built sidecar, no restart: export turned on, moved to another
// collector (with audit log records and an auth header switched on there), turned off and on again with a
// rotated header; the export counters go on; the header value is shown nowhere.
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { metricValue, scrape, scrapeUntil, seriesCount } from '../helpers/metrics.ts'
import { CLEAN_OTEL_ENV, startCollector } from '../helpers/otlp-collector.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const url = (a: AddressInfo) => `http://127.0.0.1:${a.port}`

t.test('turning OTLP export on, moving it and turning it off take effect on reload', async (t) => {
  const [collectorA, collectorB, app] = await Promise.all([
    startCollector(),
    startCollector(),
    startUpstream(),
  ])
  t.teardown(() => Promise.all([collectorA.close(), collectorB.close(), app.close()]))
  const base = { service: 'orders', upstream: app.url }
  const sidecar = await startTestSidecar(t, base, { env: CLEAN_OTEL_ENV })
  const proxy = url(sidecar.proxyAddress)
  const admin = url(sidecar.adminAddress)

  let n = 0
  /** one request with a trace id of its own; resolves with that trace id */
  const request = async (): Promise<string> => {
    const traceId = (++n).toString(16).padStart(32, 'a')
    const res = await fetch(`${proxy}/orders/${n}`, {
      headers: { traceparent: `00-${traceId}-00f067aa0ba902b7-01` },
    })
    t.equal(res.status, 200)
    await res.arrayBuffer()
    return traceId
  }
  const spanAt = (collector: typeof collectorA, traceId: string) =>
    eventually(() => collector.spans.find((s) => s.traceId === traceId), {
      what: `the span of trace ${traceId} at ${collector.url}`,
    })

  const beforeOn = await request()
  t.equal(seriesCount(await scrape(admin), 'nhi_otlp_spans_exported_total'), 0, 'export off at start')

  t.ok(await sidecar.reload({ ...base, otlp: { endpoint: collectorA.url, scheduledDelay: '50ms' } }))
  const atA = await request()
  t.equal((await spanAt(collectorA, atA)).attributes['url.path'], '/orders/2')
  t.notOk(
    collectorA.spans.some((s) => s.traceId === beforeOn),
    'a request before export was on has no span',
  )
  t.equal(collectorA.logs.length, 0, 'no audit log records while otlp.logs is off')

  t.ok(
    await sidecar.reload({
      ...base,
      otlp: {
        endpoint: collectorB.url,
        scheduledDelay: '50ms',
        logs: true,
        headers: { authorization: 'Bearer collector-token-1' },
      },
    }),
  )
  const atB = await request()
  await spanAt(collectorB, atB)
  const log = await eventually(() => collectorB.logs.find((l) => l.traceId === atB), {
    what: 'the audit log record at B',
  })
  t.equal(log.eventName, 'nhi.audit')
  const carrying = (collector: typeof collectorA, traceId: string) =>
    collector.exports.filter((e) => e.traceIds.includes(traceId)).map((e) => e.headers.authorization)
  t.same(carrying(collectorB, atB), ['Bearer collector-token-1', 'Bearer collector-token-1'], 'span and log')
  t.same(carrying(collectorA, atA), [undefined], 'no header before it was configured')
  t.notOk(
    collectorA.spans.some((s) => s.traceId === atB),
    'after the move nothing goes to the old collector',
  )
  // spans and log records go out in separate exports: wait for both counters
  const exported = await scrapeUntil(
    admin,
    (m) =>
      metricValue(m, 'nhi_otlp_spans_exported_total') >= 2 &&
      metricValue(m, 'nhi_otlp_log_records_exported_total') >= 1,
    'the span and log record exports to be counted',
  )
  t.equal(metricValue(exported, 'nhi_otlp_spans_exported_total'), 2, 'the counter went on across the move')
  t.equal(metricValue(exported, 'nhi_otlp_log_records_exported_total'), 1)

  // the otlp block removed
  t.ok(await sidecar.reload(base))
  t.equal(seriesCount(await scrape(admin), 'nhi_otlp_spans_exported_total'), 0, 'export off again')
  const whileOff = await request()

  const rotated = { authorization: 'Bearer collector-token-2' }
  t.ok(
    await sidecar.reload({
      ...base,
      otlp: { endpoint: collectorB.url, scheduledDelay: '50ms', headers: rotated },
    }),
  )
  const backOn = await request()
  await spanAt(collectorB, backOn)
  t.same(carrying(collectorB, backOn), ['Bearer collector-token-2'], 'the rotated header is used')
  const effective = await (await fetch(`${admin}/config`)).text()
  t.match(effective, /"authorization":"<redacted>"/, '/config masks header values')
  t.notMatch(
    effective + sidecar.process.stdout() + sidecar.process.stderr(),
    /collector-token/,
    'nowhere shown',
  )
  t.notOk(
    collectorB.spans.some((s) => s.traceId === whileOff),
    'a request while export was off was not exported',
  )
  t.equal(collectorB.spans.filter((s) => s.traceId === atB).length, 1, 'each span sent once')
})
