// The OTLP export thread: the request thread only hands records over, within a bound it enforces itself;
// a collector that never answers does not hold up traffic; a thread that dies is restarted and what it
// held is counted, so exported + dropped always adds up to what was recorded; settings the SDK refuses are
// reported once, credentials masked, and not retried.
import { once } from 'node:events'
import { createServer, type IncomingMessage, request, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Worker } from 'node:worker_threads'
import t from 'tap'
import { zeroCounts } from '../../src/telemetry/otlp.ts'
import type { OtlpSettings } from '../../src/telemetry/otlp-settings.ts'
import { OtlpThread } from '../../src/telemetry/otlp-thread.ts'
import { requestEvent } from '../helpers/events.ts'
import { eventually, stillTrueFor } from '../helpers/eventually.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { CLEAN_OTEL_ENV, startCollector } from '../helpers/otlp-collector.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

// the export thread inherits this process's environment: none of the runner's own OTEL_* settings
for (const name of Object.keys(process.env)) if (name.startsWith('OTEL_')) delete process.env[name]

const url = (a: AddressInfo) => `http://127.0.0.1:${a.port}`

function settings(endpoint: string, overrides: Partial<OtlpSettings> = {}): OtlpSettings {
  return {
    url: `${endpoint}/v1/traces`,
    target: `${endpoint}/v1/traces`,
    timeoutMillis: 2_000,
    maxQueueSize: 512,
    maxExportBatchSize: 64,
    scheduledDelayMillis: 20,
    serviceName: 'orders',
    logs: { url: `${endpoint}/v1/logs` },
    ...overrides,
  }
}

const total = (c: { exported: number; queueFull: number; exportFailed: number }) =>
  c.exported + c.queueFull + c.exportFailed

function get(target: string): Promise<number> {
  return new Promise((resolve, reject) => {
    request(target, (res) => {
      res.resume()
      res.on('end', () => resolve(res.statusCode ?? 0))
    })
      .on('error', reject)
      .end()
  })
}

t.test(
  'past maxQueueSize records not yet taken by the thread, the request thread drops and counts',
  async (t) => {
    const collector = await startCollector()
    t.teardown(() => collector.close())
    const counts = { spans: zeroCounts(), logs: zeroCounts() }
    const thread = new OtlpThread({
      settings: settings(collector.url, { maxQueueSize: 8 }),
      version: 't',
      counts,
    })
    t.teardown(() => thread.close())
    // one synchronous burst: the thread cannot have taken anything yet, so exactly the bound gets through
    for (let i = 0; i < 100; i++) thread.record(requestEvent())
    t.equal(counts.spans.queueFull, 92, 'spans beyond the bound dropped at once')
    t.equal(counts.logs.queueFull, 92, 'and their log records')
    await eventually(() => collector.spans.length === 8 && collector.logs.length === 8, {
      what: 'the 8 within the bound exported',
    })
    await eventually(() => counts.spans.exported === 8 && counts.logs.exported === 8, {
      what: 'exports reported back',
    })
  },
)

t.test('a thread that dies is restarted; what it held is counted, the counts add up', async (t) => {
  const collector = await startCollector()
  t.teardown(() => collector.close())
  const counts = { spans: zeroCounts(), logs: zeroCounts() }
  const exits: string[] = []
  const thread = new OtlpThread({
    settings: settings(collector.url),
    version: 't',
    counts,
    onExit: (error) => exits.push(error),
  })
  for (let i = 0; i < 20; i++) thread.record(requestEvent({ path: '/before' }))
  await eventually(() => counts.spans.exported === 20, { what: 'first records exported' })
  const firstThread = thread.threadId
  t.ok(firstThread !== undefined)

  // records on their way to the thread when it dies
  for (let i = 0; i < 30; i++) thread.record(requestEvent({ path: '/lost' }))
  ;(thread as unknown as { flush(): void }).flush()
  const { worker } = (thread as unknown as { running: { worker: Worker } }).running
  await worker.terminate()
  await eventually(() => exits.length === 1, { what: 'the death reported' })

  // recorded while no thread runs: kept within the bound and sent by the replacement
  for (let i = 0; i < 10; i++) thread.record(requestEvent({ path: '/after' }))
  await eventually(() => collector.spans.filter((s) => s.attributes['url.path'] === '/after').length === 10, {
    what: 'records after the death exported by a new thread',
  })
  t.not(thread.threadId, firstThread, 'a new thread')
  await thread.close()
  t.equal(exits.length, 1, 'closing is not a death')
  t.equal(total(counts.spans), 60, `every span counted once: ${JSON.stringify(counts.spans)}`)
  t.equal(total(counts.logs), 60, `every log record counted once: ${JSON.stringify(counts.logs)}`)
  t.equal(counts.spans.exported, collector.spans.length, 'exported is what the collector received')
  t.ok(counts.spans.exportFailed > 0, 'what the dead thread held is counted as export_failed')
})

t.test(
  'settings the SDK refuses: reported once and masked, no thread restarted, records counted',
  async (t) => {
    const counts = { spans: zeroCounts(), logs: zeroCounts() }
    const exits: string[] = []
    const refusals: string[] = []
    // a port past 65535: the SDK cannot parse the URL, however often a thread is started with it
    const thread = new OtlpThread({
      settings: settings('http://collector:S3CRET@127.0.0.1:99999'),
      version: 't',
      counts,
      onExit: (error) => exits.push(error),
      onUnusable: (error) => refusals.push(error),
    })
    t.teardown(() => thread.close())
    for (let i = 0; i < 10; i++) thread.record(requestEvent())
    await eventually(() => refusals.length > 0 || exits.length > 0, { what: 'the thread to give up' })
    t.same(exits, [], 'not a death to restart from')
    t.same(refusals, [
      "Configuration: Could not parse user-provided export URL: 'http://redacted@127.0.0.1:99999/v1/traces'",
    ])
    t.notMatch([...exits, ...refusals].join('\n'), /S3CRET/, 'the password is in no message')
    // a restart would come after 100 ms, then 200 ms, 400 ms…
    t.ok(
      await stillTrueFor(
        () => thread.threadId === undefined && exits.length === 0 && refusals.length === 1,
        1000,
      ),
      'no thread started again, nothing reported again',
    )
    for (let i = 0; i < 5; i++) thread.record(requestEvent())
    t.same(
      counts.spans,
      { exported: 0, queueFull: 0, exportFailed: 15 },
      'every span counted as export_failed',
    )
    t.same(counts.logs, { exported: 0, queueFull: 0, exportFailed: 15 }, 'and every log record')
  },
)

t.test('a collector that never answers: traffic flows, dropped spans are counted', async (t) => {
  // accepts every export and never answers it
  const held: ServerResponse[] = []
  const stalled = createServer((req: IncomingMessage, res) => {
    req.resume()
    held.push(res)
  })
  stalled.listen(0, '127.0.0.1')
  await once(stalled, 'listening')
  t.teardown(() => {
    for (const res of held) res.destroy()
    stalled.close()
  })
  const app = await startUpstream()
  t.teardown(() => app.close())
  const sidecar = await startTestSidecar(
    t,
    {
      service: 'orders',
      upstream: app.url,
      otlp: {
        endpoint: url(stalled.address() as AddressInfo),
        timeout: '30s',
        logs: true,
        maxQueueSize: 16,
        maxExportBatchSize: 8,
        scheduledDelay: '20ms',
      },
    },
    { env: CLEAN_OTEL_ENV },
  )
  const target = `${url(sidecar.proxyAddress)}/echo`
  const statuses = new Set<number>()
  for (let round = 0; round < 10; round++) {
    const answers = await Promise.all(Array.from({ length: 30 }, () => get(target)))
    for (const s of answers) statuses.add(s)
  }
  t.same([...statuses], [200], 'all 300 requests answered 200 while no export was ever answered')
  const samples = await eventually(
    async () => {
      const s = await scrape(url(sidecar.adminAddress))
      return held.length > 0 &&
        metricValue(s, 'nhi_otlp_spans_dropped_total', { reason: 'queue_full' }) > 0 &&
        metricValue(s, 'nhi_otlp_log_records_dropped_total', { reason: 'queue_full' }) > 0
        ? s
        : undefined
    },
    { what: 'exports held by the collector, dropped spans and log records counted' },
  )
  t.equal(metricValue(samples, 'nhi_otlp_spans_exported_total'), 0)
  t.ok(metricValue(samples, 'nhi_otlp_spans_dropped_total', { reason: 'queue_full' }) <= 300)
})
