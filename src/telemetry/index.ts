// The telemetry facade: every finished request goes to a list of recorders (the outputs: metrics, audit
// trail, live feed, OTLP export), and the admin server reads their views through here.
// record() never throws and never waits: one recorder that throws or rejects is counted and skipped, the
// others still record; reconfigure() and close() wait for each recorder at most `recorderTimeoutMs`.
import type { Config } from '../config/schema.ts'
import type { CertificateValidity, Recorder, RequestEvent, UpstreamErrorReason } from '../types.ts'
import { AuditLog, type AuditLogOptions } from './audit.ts'
import type { AuditQuery, AuditRecord } from './audit-ring.ts'
import type { IdentitiesView, IdentitySort } from './identities.ts'
import { LiveFeed, type LiveOptions, type LiveStats, liveLimits } from './live.ts'
import type {
  AnomalyObserver,
  Http2AbuseReason,
  JwksObserver,
  Scrape,
  TlsSide,
  TunnelProtocol,
} from './metrics.ts'
import { MetricsRecorder } from './metrics-recorder.ts'
import { OtlpRecorder } from './otlp-recorder.ts'

export type { AuditQuery, AuditRecord } from './audit-ring.ts'
export type { IdentitiesView, IdentityRow, IdentitySort } from './identities.ts'
export { IDENTITY_SORTS } from './identities.ts'
export { OVERFLOW_IDENTITY } from './identity-table.ts'
export type { LiveEvent, LiveStats } from './live.ts'
export type { JwksObserver, Scrape } from './metrics.ts'
export { jobOutcome } from './metrics-recorder.ts'

export interface TelemetryOptions {
  version: string
  /** clock in unix ms (tests inject one to exercise idle expiry and job liveness) */
  now?: () => number
  audit?: AuditLogOptions
  live?: LiveOptions
  /** how often idle identities are swept; default min(idleTtl / 4, 60 s) */
  sweepIntervalMs?: number
  /** environment the OTLP settings read OTEL_* from; default process.env */
  env?: Record<string, string | undefined>
  /** outputs of an embedding program, recorded after the built-in ones and exactly like them */
  recorders?: Recorder[]
  /** longest wait for one recorder's reconfigure or close; default 10 s */
  recorderTimeoutMs?: number
}

/** A recorder whose reconfigure (or close) threw, rejected or did not finish in time. */
export interface RecorderFailure {
  recorder: string
  error: string
}

const DEFAULT_RECORDER_TIMEOUT_MS = 10_000

function isThenable(v: unknown): v is PromiseLike<unknown> {
  return typeof (v as PromiseLike<unknown> | undefined)?.then === 'function'
}

export class Telemetry {
  private config: Config
  private readonly now: () => number
  readonly metrics: MetricsRecorder
  readonly audit: AuditLog
  readonly live: LiveFeed
  readonly otlp: OtlpRecorder
  /**
   * Every output a finished request goes to, in this order. A new output is its own file implementing
   * Recorder plus one entry here.
   */
  private readonly recorders: readonly Recorder[]
  /** events each recorder failed to record, in list order (nhi_recorder_failures_total) */
  private readonly failures: Map<string, number>
  private readonly timeoutMs: number

  constructor(config: Config, opts: TelemetryOptions) {
    this.config = config
    this.now = opts.now ?? Date.now
    this.timeoutMs = opts.recorderTimeoutMs ?? DEFAULT_RECORDER_TIMEOUT_MS
    this.audit = new AuditLog(config.audit, opts.audit)
    this.live = new LiveFeed({ ...liveLimits(config), ...opts.live })
    this.otlp = new OtlpRecorder(opts.version, opts.env)
    this.metrics = new MetricsRecorder(config, {
      version: opts.version,
      now: this.now,
      ...(opts.sweepIntervalMs !== undefined ? { sweepIntervalMs: opts.sweepIntervalMs } : {}),
      external: {
        auditLinesDropped: () => this.audit.linesDropped,
        otlpSpans: () => this.otlp.spans,
        otlpLogs: () => this.otlp.logs,
        recorderFailures: () => this.failures,
      },
    })
    this.recorders = [this.metrics, this.audit, this.live, this.otlp, ...(opts.recorders ?? [])]
    this.failures = new Map(this.recorders.map((r) => [r.name, 0]))
  }

  get jwksObserver(): JwksObserver {
    return this.metrics.jwksObserver
  }

  /** anomalies found after their request was recorded: counted by the metrics output only */
  get anomalyObserver(): AnomalyObserver {
    return this.metrics.anomalyObserver
  }

  record(event: RequestEvent): void {
    const recorders = this.recorders
    // indexed, and the built-in recorders' undefined result is not probed for a `then`: once per request each
    for (let i = 0; i < recorders.length; i++) {
      const recorder = recorders[i]!
      try {
        const result: unknown = recorder.record(event)
        // a recorder written as async: its rejection must not become an unhandled one (that ends the process)
        if (result !== undefined && isThenable(result)) result.then(undefined, () => this.failed(recorder))
      } catch {
        this.failed(recorder)
      }
    }
  }

  private failed(recorder: Recorder): void {
    this.failures.set(recorder.name, (this.failures.get(recorder.name) ?? 0) + 1)
  }

  /** events that could not be recorded by some recorder (should stay 0) */
  get recordFailures(): number {
    let n = 0
    for (const v of this.failures.values()) n += v
    return n
  }

  /**
   * Loads what the initial config asks for (the OTLP SDK when export is on). Returns the recorders that
   * could not apply it; they keep recording with what they had, the sidecar serves.
   */
  start(): Promise<RecorderFailure[]> {
    return this.eachRecorder('reconfigure', (r) => r.reconfigure?.(this.config))
  }

  /** drops identities idle longer than metrics.idleTtl (jobs with expectEvery: at least 2× that) */
  sweep(): number {
    return this.metrics.sweep()
  }

  configReloaded(result: 'success' | 'failure', at = this.now()): void {
    this.metrics.configReloaded(result, at)
  }

  /** the https listener's or upstreamTls's files were read again (docs/reference.md "Config file") */
  tlsReloaded(side: TlsSide, result: 'success' | 'failure'): void {
    this.metrics.tlsReloaded(side, result)
  }

  /**
   * this side's TLS files in use (at start and after each rotation): its reload counts are exported from now
   * on, with the dates of the certificate it presents
   */
  tlsFiles(side: TlsSide, certificate: CertificateValidity | undefined): void {
    this.metrics.tlsFiles(side, certificate)
  }

  /** the config the process started with: its load time, not a reload */
  configLoaded(at = this.now()): void {
    this.metrics.configLoaded(at)
  }

  /** an HTTP/2 connection closed for abuse (docs/reference.md "HTTP/2 and gRPC") */
  http2ConnectionClosed(reason: Http2AbuseReason): void {
    this.metrics.http2ConnectionClosed(reason)
  }

  /** the pipeline failed to attribute a request (docs/reference.md "Errors") */
  attributionFailed(): void {
    this.metrics.attributionFailed()
  }

  /** a tunnel cut for idleness, timeouts.tunnelIdle (docs/reference.md "Errors") */
  tunnelIdleClosed(protocol: TunnelProtocol): void {
    this.metrics.tunnelIdleClosed(protocol)
  }

  /**
   * an upstream error between requests: an HTTP/1.1 upstream's bytes after a complete response or on an idle
   * connection (docs/reference.md "Errors"), counted in nhi_upstream_errors_total as a request's would be
   */
  upstreamErrorBetweenRequests(reason: UpstreamErrorReason): void {
    this.metrics.upstreamErrorBetweenRequests(reason)
  }

  /**
   * Applies a reloaded config to every recorder. Synchronous recorders have applied it when this returns;
   * the promise settles once the asynchronous ones (OTLP) are done too, with those that failed.
   */
  reconfigure(config: Config): Promise<RecorderFailure[]> {
    this.config = config
    return this.eachRecorder('reconfigure', (r) => r.reconfigure?.(config))
  }

  /** Runs `step` on every recorder at once; each failure (throw, rejection, timeout) is reported, never thrown. */
  private async eachRecorder(
    what: string,
    step: (r: Recorder) => void | Promise<void> | undefined,
  ): Promise<RecorderFailure[]> {
    const failures: RecorderFailure[] = []
    await Promise.all(
      this.recorders.map(async (recorder) => {
        let timer: NodeJS.Timeout | undefined
        try {
          const result = step(recorder)
          if (!isThenable(result)) return
          await Promise.race([
            result,
            new Promise((_, reject) => {
              timer = setTimeout(
                () => reject(new Error(`${what} took over ${this.timeoutMs} ms`)),
                this.timeoutMs,
              )
            }),
          ])
        } catch (err) {
          failures.push({ recorder: recorder.name, error: (err as Error)?.message ?? String(err) })
        } finally {
          clearTimeout(timer)
        }
      }),
    )
    return failures
  }

  /** process_* and nodejs_* metrics (prom-client's default collector) from now on, next to the nhi_* ones */
  startProcessMetrics(): Promise<unknown> {
    return this.metrics.startProcessMetrics()
  }

  scrape(openMetrics: boolean): Promise<Scrape> {
    return this.metrics.scrape(openMetrics)
  }

  identities(sort?: IdentitySort): IdentitiesView {
    return this.metrics.identities(sort)
  }

  auditQuery(q: AuditQuery): AuditRecord[] {
    return this.audit.ring.query(q)
  }

  liveStats(): LiveStats {
    return this.live.stats()
  }

  /** closes every recorder, each bounded by recorderTimeoutMs; returns those that failed or timed out */
  close(): Promise<RecorderFailure[]> {
    return this.eachRecorder('close', (r) => r.close?.())
  }
}
