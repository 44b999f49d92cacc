// The export thread's exporter against a collector that takes requests and never answers: once a processor's
// queue is full, further spans and log records are counted as queue_full without being built — exactly the
// ones the SDK's processor would have dropped, not one more — and they are built again as soon as the
// collector's failure frees room. A sampler whose answer is not known beforehand keeps every span built.
import { once } from 'node:events'
import { createServer, type Server } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import t, { type Test } from 'tap'
import { OtlpExport, zeroCounts } from '../../src/telemetry/otlp.ts'
import type { OtlpSettings } from '../../src/telemetry/otlp-settings.ts'
import { requestEvent } from '../helpers/events.ts'
import { eventually } from '../helpers/eventually.ts'
import { CLEAN_OTEL_ENV } from '../helpers/otlp-collector.ts'

for (const name of Object.keys(CLEAN_OTEL_ENV)) delete process.env[name]

const QUEUE = 64
const BATCH = 16
/** records the processor holds before it drops: a full queue plus the batch on its way */
const HELD = QUEUE + BATCH

/** a collector that reads every export and never answers */
async function stalledCollector(t: Test): Promise<string> {
  const sockets = new Set<Socket>()
  const server: Server = createServer((req) => req.resume())
  server.on('connection', (s) => {
    sockets.add(s)
    s.once('close', () => sockets.delete(s))
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => {
    for (const s of sockets) s.destroy()
    server.close()
  })
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

function settings(base: string): OtlpSettings {
  return {
    url: `${base}/v1/traces`,
    target: base,
    timeoutMillis: 1_500,
    maxQueueSize: QUEUE,
    maxExportBatchSize: BATCH,
    // only a full batch starts an export
    scheduledDelayMillis: 60_000,
    logs: { url: `${base}/v1/logs` },
    serviceName: 'checkout',
  }
}

t.test('a full queue: records past it are counted, not built; room again, built again', async (t) => {
  const counts = { spans: zeroCounts(), logs: zeroCounts() }
  const exporter = new OtlpExport(settings(await stalledCollector(t)), '0.0.0-test', counts)
  t.teardown(() => exporter.close())

  for (let i = 0; i < 200; i++) exporter.record(requestEvent())
  t.equal(counts.spans.queueFull, 200 - HELD, 'spans past the queue and the batch on its way are dropped')
  t.equal(exporter.skipped.spans, 200 - HELD, '… every one of them without building it')
  t.equal(counts.logs.queueFull, 200 - HELD, 'log records the same')
  t.equal(exporter.skipped.logs, 200 - HELD)

  // the caller's trace is not sampled: the sampler leaves the span out, it is no queue_full
  const parent = { parentSpanId: 'b7ad6b7169203331', traceFlags: '00' }
  for (let i = 0; i < 10; i++) exporter.record(requestEvent(parent))
  t.equal(exporter.unsampled, 10, 'unsampled spans are counted as such')
  t.equal(counts.spans.queueFull, 200 - HELD, 'and not as dropped')
  t.equal(counts.logs.queueFull, 210 - HELD, 'their log records are dropped: that queue is full')

  // the stalled export times out and fails: its batch leaves the processor, the next one goes out
  await eventually(() => counts.spans.exportFailed >= BATCH && counts.logs.exportFailed >= BATCH, {
    timeoutMs: 10_000,
    what: 'the first batches failed',
  })
  exporter.record(requestEvent())
  t.equal(exporter.skipped.spans, 200 - HELD, 'with room again, a span is built')
  t.equal(counts.spans.queueFull, 200 - HELD, 'and queued, not dropped')
  t.equal(exporter.skipped.logs, 210 - HELD, 'the same for its log record')
  t.equal(counts.logs.queueFull, 210 - HELD)
})

t.test('a sampler known only to the SDK: every span is built, the processor drops', async (t) => {
  process.env.OTEL_TRACES_SAMPLER = 'traceidratio'
  process.env.OTEL_TRACES_SAMPLER_ARG = '1'
  const counts = { spans: zeroCounts(), logs: zeroCounts() }
  let exporter: OtlpExport
  try {
    exporter = new OtlpExport(settings(await stalledCollector(t)), '0.0.0-test', counts)
  } finally {
    delete process.env.OTEL_TRACES_SAMPLER
    delete process.env.OTEL_TRACES_SAMPLER_ARG
  }
  t.teardown(() => exporter.close())
  for (let i = 0; i < 200; i++) exporter.record(requestEvent())
  t.equal(counts.spans.queueFull, 200 - HELD, 'the same spans are dropped')
  t.equal(exporter.skipped.spans, 0, 'by the processor, after being built')
  t.equal(exporter.skipped.logs, 200 - HELD, 'log records do not depend on the sampler')
})
