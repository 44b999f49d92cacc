// The body of the OTLP export thread (otlp-thread.ts starts it): the OpenTelemetry SDK — tracer and logger
// providers, batch processors, OTLP/HTTP protobuf exporters — fed with the batches the request thread
// writes (otlp-batch.ts), read back here into the request's fields. Building
// spans and log records and encoding batches is CPU the request thread no longer spends.
// It answers every batch with how many records it handed to the SDK (the request thread bounds what is on
// its way here) and reports the SDK's exported / dropped counts as they change, and a last time on close.
import { readlinkSync } from 'node:fs'
import { setPriority } from 'node:os'
import { parentPort, workerData } from 'node:worker_threads'
import { OtlpExport, zeroCounts } from './otlp.ts'
import { type OtlpBatch, OtlpBatchReader } from './otlp-batch.ts'
import type { OtlpSettings } from './otlp-settings.ts'

export interface OtlpWorkerData {
  settings: OtlpSettings
  version: string
}

/** counts since the previous report */
export interface OtlpWorkerReport {
  type: 'report'
  /** records handed to the SDK */
  handled: number
  /** spans the sampler left out (never exported, never dropped) */
  unsampled: number
  spans: { exported: number; queueFull: number; exportFailed: number }
  logs: { exported: number; queueFull: number; exportFailed: number }
}

/**
 * The SDK refused to build the exporters from these settings (a URL it cannot parse, a timeout of 0): no
 * thread started with them can do better, so it is not restarted. The message is the SDK's, unredacted.
 */
export interface OtlpWorkerUnusable {
  type: 'unusable'
  error: string
}

export type OtlpWorkerMessage = OtlpWorkerReport | OtlpWorkerUnusable | { type: 'closed' }

/** what the request thread sends: a batch of records, or 'close' */
export type OtlpThreadMessage = OtlpBatch | 'close'

const REPORT_EVERY_MS = 100

/**
 * The thread's nice value (Linux, where a thread has a priority of its own). Where the cores are busy —
 * a sidecar sharing its pod's CPU limit with the application, a loaded node — the request thread is served
 * first and export falls behind, which its bounded queues turn into counted drops, never into slower
 * traffic. With a core to spare nothing changes.
 */
export const EXPORT_THREAD_NICE = 10

/** this thread's own id (/proc/thread-self → "<pid>/task/<tid>"); undefined where there is no such file */
function threadId(): number | undefined {
  try {
    const tid = Number(readlinkSync('/proc/thread-self').split('/').pop())
    return Number.isInteger(tid) && tid > 0 ? tid : undefined
  } catch {
    return undefined
  }
}

const tid = threadId()
if (tid !== undefined) {
  try {
    // lowering one's own priority needs no privilege; only this thread, not the process, is affected
    setPriority(tid, EXPORT_THREAD_NICE)
  } catch {
    // a platform without per-thread priorities: export runs at the process's priority
  }
}

const port = parentPort!
const { settings, version } = workerData as OtlpWorkerData
const spans = zeroCounts()
const logs = zeroCounts()
let built: OtlpExport | undefined
try {
  built = new OtlpExport(settings, version, { spans, logs })
} catch (err) {
  port.postMessage({
    type: 'unusable',
    error: err instanceof Error ? err.message : String(err),
  } satisfies OtlpWorkerMessage)
}
if (built === undefined) {
  // nothing left to run: the port closed, the thread ends
  port.close()
} else {
  serve(built)
}

function serve(exporter: OtlpExport): void {
  const reader = new OtlpBatchReader()
  let handled = 0
  let unsampledReported = 0

  function report(): void {
    const unsampled = exporter.unsampled - unsampledReported
    const changed =
      handled +
      unsampled +
      spans.exported +
      spans.queueFull +
      spans.exportFailed +
      logs.exported +
      logs.queueFull +
      logs.exportFailed
    if (changed === 0) return
    const message: OtlpWorkerReport = {
      type: 'report',
      handled,
      unsampled,
      spans: { ...spans },
      logs: { ...logs },
    }
    handled = 0
    unsampledReported = exporter.unsampled
    spans.exported = spans.queueFull = spans.exportFailed = 0
    logs.exported = logs.queueFull = logs.exportFailed = 0
    port.postMessage(message)
  }

  // exports finish between batches: their counts must reach the metrics without waiting for more traffic
  setInterval(report, REPORT_EVERY_MS).unref()

  port.on('message', (message: OtlpThreadMessage) => {
    if (message === 'close') {
      void exporter.close().then(() => {
        report()
        port.postMessage({ type: 'closed' } satisfies OtlpWorkerMessage)
      })
      return
    }
    reader.read(message, (event) => exporter.record(event))
    handled += message.records
    report()
  })
}
