// The request thread's side of OTLP export: per finished request it writes the request's fields into the
// current batch (otlp-batch.ts), and transfers the batch to the export thread (otlp-worker.ts, where the SDK
// runs) every BATCH records or FLUSH_MS, whichever comes first. That is all a request pays for export.
// Bounded: records buffered here plus records posted and not yet handed to the SDK never exceed
// maxQueueSize; past it a record is dropped and counted as queue_full, so a stuck or slow thread never
// blocks or buffers traffic. The thread reports the SDK's exported / dropped counts back, so the counters
// stay exact; a thread that dies is restarted, and what it held is counted as export_failed. Settings the SDK
// refuses to build exporters from are reported once and not retried: every thread would die the same way.
// Whatever a thread reports is redacted here: the SDK's messages quote the collector URL, credentials and all.
// Imports nothing from the SDK: that is loaded by the thread only.
import type { ResourceLimits, Worker } from 'node:worker_threads'
import { redactText } from '../config/redact.ts'
import type { RequestEvent } from '../types.ts'
import { startWorkerThread } from '../util/worker-thread.ts'
import type { OtlpCounts } from './otlp.ts'
import { OtlpBatchWriter } from './otlp-batch.ts'
import type { OtlpSettings } from './otlp-settings.ts'
import type { OtlpThreadMessage, OtlpWorkerData, OtlpWorkerMessage } from './otlp-worker.ts'

const BATCH = 256
const FLUSH_MS = 50
const RESTART_MIN_MS = 100
const RESTART_MAX_MS = 30_000
/** a thread that ran this long before dying resets the restart backoff */
const STABLE_MS = 10_000
/** the thread's own close is bounded by its exporters' timeout; this is for the last report to arrive */
const CLOSE_GRACE_MS = 1_000

/**
 * V8 sizes a thread's young generation by the machine's memory (tens of MB); the SDK's garbage is short-lived
 * and small, so a few MB do (measured: RSS +57 MB per sidecar without limits). The old generation holds the
 * processors' queues — a span and a log record, with its audit line, per queued request — so its cap grows
 * with maxQueueSize instead of killing a thread configured with a large queue.
 */
function exportThreadLimits(settings: OtlpSettings): ResourceLimits {
  const perRecordKb = settings.logs ? 8 : 4
  return {
    maxYoungGenerationSizeMb: 4,
    maxOldGenerationSizeMb: 48 + Math.ceil((settings.maxQueueSize * perRecordKb) / 1024),
  }
}

export interface OtlpThreadOptions {
  settings: OtlpSettings
  version: string
  /** outlive this instance (a reload replaces it, the counters go on) */
  counts: { spans: OtlpCounts; logs: OtlpCounts }
  /** the thread died (not at close); it is restarted. The message is redacted */
  onExit?: (error: string) => void
  /**
   * the SDK refused these settings: no thread is started again, records are counted as export_failed. The
   * message is redacted
   */
  onUnusable?: (error: string) => void
}

interface Running {
  worker: Worker
  startedAt: number
  /** records posted and not yet reported handed to the SDK */
  inFlight: number
  /** records handed to the SDK whose span is neither exported, dropped nor left out by the sampler yet */
  inSdk: number
  /** the same for log records */
  logsInSdk: number
}

export class OtlpThread {
  private running: Running | undefined
  private readonly batchWriter = new OtlpBatchWriter()
  private flushTimer: NodeJS.Timeout | undefined
  private restartTimer: NodeJS.Timeout | undefined
  private restartDelay = RESTART_MIN_MS
  private closed = false
  /** the SDK refused the settings: nothing runs, every record is counted as lost */
  private unusable = false
  /** ends the wait of a close under way (abort) */
  private cutShort: (() => void) | undefined
  private readonly max: number
  private readonly batch: number
  private readonly logs: boolean

  constructor(private readonly opts: OtlpThreadOptions) {
    this.max = opts.settings.maxQueueSize
    // a small queue must not fill up with records that are only waiting for the batch to be complete
    this.batch = Math.max(1, Math.min(BATCH, opts.settings.maxQueueSize >> 1))
    this.logs = opts.settings.logs !== undefined
    this.start()
  }

  /** the thread's id while one runs (for tests that need to find it) */
  get threadId(): number | undefined {
    return this.running?.worker.threadId
  }

  record(event: RequestEvent): void {
    if (this.closed) return
    if (this.unusable) {
      this.opts.counts.spans.exportFailed++
      if (this.logs) this.opts.counts.logs.exportFailed++
      return
    }
    const writer = this.batchWriter
    if (writer.records + (this.running?.inFlight ?? 0) >= this.max) {
      this.opts.counts.spans.queueFull++
      if (this.logs) this.opts.counts.logs.queueFull++
      return
    }
    if (!writer.write(event)) {
      // the identity table is full: it starts over between batches, so what is written goes first (or, with
      // no thread to take it, is dropped and counted)
      this.flush()
      if (writer.records > 0) this.dropBuffer()
      writer.startOver()
      writer.write(event)
    }
    if (writer.records >= this.batch) this.flush()
    else if (this.flushTimer === undefined) {
      this.flushTimer = setTimeout(() => this.flush(), FLUSH_MS)
      this.flushTimer.unref()
    }
  }

  private flush(): void {
    clearTimeout(this.flushTimer)
    this.flushTimer = undefined
    const running = this.running
    // without a thread (one is restarting) records wait here, within the same bound
    if (!running || this.batchWriter.records === 0) return
    const batch = this.batchWriter.take()
    running.inFlight += batch.records
    // the bytes move to the thread, not a copy of them
    running.worker.postMessage(batch satisfies OtlpThreadMessage, [batch.bytes])
  }

  private start(): void {
    const data: OtlpWorkerData = { settings: this.opts.settings, version: this.opts.version }
    let worker: Worker
    try {
      worker = startWorkerThread(new URL('./otlp-worker.ts', import.meta.url), 'otlp-export-worker.mjs', {
        options: { workerData: data },
        resourceLimits: exportThreadLimits(this.opts.settings),
      })
    } catch (err) {
      this.died(undefined, err)
      return
    }
    const running: Running = { worker, startedAt: Date.now(), inFlight: 0, inSdk: 0, logsInSdk: 0 }
    this.running = running
    // an idle export must not keep the process alive; close() refs it while it flushes
    worker.unref()
    worker.on('message', (message: OtlpWorkerMessage) => {
      if (message.type === 'report') this.reported(running, message)
      else if (message.type === 'unusable') this.refused(running, message.error)
    })
    worker.on('error', (err) => this.died(running, err))
    worker.on('exit', (code) => this.died(running, new Error(`exit code ${code}`)))
    // a new thread knows no identity: the ones that records already written (or written later) refer to first
    const prelude = this.batchWriter.prelude()
    if (prelude) worker.postMessage(prelude satisfies OtlpThreadMessage, [prelude.bytes])
    this.flush()
  }

  private reported(running: Running, r: Extract<OtlpWorkerMessage, { type: 'report' }>): void {
    const { spans, logs } = this.opts.counts
    running.inFlight -= r.handled
    running.inSdk += r.handled - r.unsampled - r.spans.exported - r.spans.queueFull - r.spans.exportFailed
    spans.exported += r.spans.exported
    spans.queueFull += r.spans.queueFull
    spans.exportFailed += r.spans.exportFailed
    if (this.logs) {
      running.logsInSdk += r.handled - r.logs.exported - r.logs.queueFull - r.logs.exportFailed
      logs.exported += r.logs.exported
      logs.queueFull += r.logs.queueFull
      logs.exportFailed += r.logs.exportFailed
    }
  }

  /** what a thread held when it stopped is lost: counted, so exported + dropped still adds up */
  private lost(running: Running): void {
    const { spans, logs } = this.opts.counts
    spans.exportFailed += running.inFlight + Math.max(0, running.inSdk)
    if (this.logs) logs.exportFailed += running.inFlight + Math.max(0, running.logsInSdk)
    running.inFlight = running.inSdk = running.logsInSdk = 0
  }

  /** the SDK's messages quote the URLs they could not use as given: userinfo included */
  private redact(message: string): string {
    const { url, target, logs } = this.opts.settings
    return redactText(message, [url, target, logs?.url])
  }

  private refused(running: Running, error: string): void {
    if (this.running !== running) return
    this.running = undefined
    this.unusable = true
    running.worker.removeAllListeners()
    void running.worker.terminate().catch(() => {})
    this.lost(running)
    this.dropBuffer()
    if (!this.closed) this.opts.onUnusable?.(this.redact(error))
  }

  private died(running: Running | undefined, err: unknown): void {
    if (running) {
      if (this.running !== running) return
      this.running = undefined
      running.worker.removeAllListeners()
      void running.worker.terminate().catch(() => {})
      this.lost(running)
      if (Date.now() - running.startedAt >= STABLE_MS) this.restartDelay = RESTART_MIN_MS
    }
    if (this.closed) return
    this.opts.onExit?.(this.redact(err instanceof Error ? err.message : String(err)))
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined
      if (!this.closed) this.start()
    }, this.restartDelay)
    this.restartTimer.unref()
    this.restartDelay = Math.min(this.restartDelay * 2, RESTART_MAX_MS)
  }

  /** hands over what is buffered and lets the thread send what it holds, bounded by the export timeout */
  async close(): Promise<void> {
    if (this.closed) return
    this.flush()
    this.closed = true
    clearTimeout(this.restartTimer)
    const running = this.running
    // from here an exit is the end of the close, not a crash to restart from
    this.running = undefined
    this.dropBuffer()
    if (!running) return
    const { worker } = running
    worker.ref()
    const timeoutMs = Math.min(this.opts.settings.timeoutMillis ?? 10_000, 5_000) + CLOSE_GRACE_MS
    let timer: NodeJS.Timeout | undefined
    await new Promise<void>((done) => {
      this.cutShort = done
      timer = setTimeout(done, timeoutMs)
      worker.on('message', (message: OtlpWorkerMessage) => {
        if (message.type === 'closed') done()
      })
      worker.once('exit', () => done())
      worker.postMessage('close' satisfies OtlpThreadMessage)
    })
    clearTimeout(timer)
    this.cutShort = undefined
    worker.removeAllListeners()
    this.lost(running)
    await worker.terminate().catch(() => {})
  }

  /**
   * Ends a close under way now rather than at its deadline: the thread is terminated, and what it still held
   * is counted as export_failed. Before close, nothing.
   */
  abort(): void {
    this.cutShort?.()
  }

  private dropBuffer(): void {
    const n = this.batchWriter.records
    this.batchWriter.discard()
    this.opts.counts.spans.exportFailed += n
    if (this.logs) this.opts.counts.logs.exportFailed += n
  }
}
