// The recorder facade: one RequestEvent in → metrics, identities view, audit trail and live feed.
// record() must never throw and never wait: everything here is in-memory work plus async writes.
import type { Config } from '../config/schema.ts'
import type { Recorder, RequestEvent } from '../types.ts'
import { AuditLog, type AuditLogOptions, type AuditQuery, type AuditRecord } from './audit.ts'
import { buildIdentitiesView, type IdentitiesView, type IdentitySort } from './identities.ts'
import { IdentityTable, type IdentityTableLimits } from './identity-table.ts'
import { LiveFeed, type LiveLimits, type LiveOptions, type LiveStats } from './live.ts'
import { type JwksObserver, Metrics, type Scrape } from './metrics.ts'
import type { OtlpRecorder } from './otlp.ts'
import { otlpSettings } from './otlp-settings.ts'
import { ProcessMetrics } from './process-metrics.ts'

export type { AuditQuery, AuditRecord } from './audit.ts'
export type { IdentitiesView, IdentityRow, IdentitySort } from './identities.ts'
export { IDENTITY_SORTS } from './identities.ts'
export { OVERFLOW_IDENTITY } from './identity-table.ts'
export type { LiveEvent, LiveStats } from './live.ts'
export type { JwksObserver, Scrape } from './metrics.ts'

export interface TelemetryOptions {
  version: string
  /** clock in unix ms (tests inject one to exercise idle expiry and job liveness) */
  now?: () => number
  audit?: AuditLogOptions
  live?: LiveOptions
  /** how often idle identities are swept; default min(idleTtl / 4, 60 s) */
  sweepIntervalMs?: number
}

const GIB = 1024 ** 3

function liveLimits(config: Config): LiveLimits {
  const a = config.adminAccess
  return {
    maxSubscribers: a.liveClients,
    writeTimeoutMs: a.liveWriteTimeout,
    maxDurationMs: a.liveMaxDuration,
  }
}

/**
 * Job outcome of one request. Failure: status >= 500, an upstream error, 401/403, a policy deny, or a gRPC
 * call that ended with a non-OK status (its HTTP status is 200). Success: status < 400. Other 4xx (404, 409, 429…) are neither: they neither reset nor extend a failure run.
 */
export function jobOutcome(event: RequestEvent): 'success' | 'failure' | 'neutral' {
  if (event.upstreamError || event.status >= 500 || event.status === 401 || event.status === 403)
    return 'failure'
  if (event.grpcStatus !== undefined && event.grpcStatus !== 0) return 'failure'
  if (!event.decision.skipped && event.decision.decision === 'deny') return 'failure'
  return event.status < 400 ? 'success' : 'neutral'
}

/** An error for the identities view: any 4xx/5xx answer or an upstream failure. */
function isError(event: RequestEvent): boolean {
  return (
    event.status >= 400 ||
    event.upstreamError !== undefined ||
    (event.grpcStatus !== undefined && event.grpcStatus !== 0)
  )
}

export class Telemetry implements Recorder {
  private config: Config
  private readonly now: () => number
  private readonly table: IdentityTable
  private readonly metrics: Metrics
  private readonly audit: AuditLog
  readonly live: LiveFeed
  private readonly process = new ProcessMetrics()
  private readonly sweeper: NodeJS.Timeout
  private recordErrors = 0
  /** OTLP span export; undefined (and the SDK never loaded) while export is off */
  private otlp: OtlpRecorder | undefined

  private readonly version: string

  constructor(config: Config, opts: TelemetryOptions) {
    this.config = config
    this.version = opts.version
    this.now = opts.now ?? Date.now
    this.table = new IdentityTable(tableLimits(config))
    this.metrics = new Metrics({
      service: config.service,
      buckets: config.metrics.buckets,
      version: opts.version,
      table: this.table,
      auditLinesDropped: () => this.audit.linesDropped,
      otlpSpans: () => this.otlp?.counts,
      otlpLogs: () => this.otlp?.logCounts,
    })
    this.audit = new AuditLog(config.audit, opts.audit)
    this.live = new LiveFeed({ ...liveLimits(config), ...opts.live })
    const interval = opts.sweepIntervalMs ?? Math.max(1000, Math.min(config.metrics.idleTtl / 4, 60_000))
    this.sweeper = setInterval(() => this.sweep(), interval)
    this.sweeper.unref()
  }

  get jwksObserver(): JwksObserver {
    return this.metrics.jwksObserver
  }

  record(event: RequestEvent): void {
    try {
      this.recordUnsafe(event)
    } catch {
      // A recorder bug must never reach the request path; it shows up in recordFailures instead.
      this.recordErrors++
    }
  }

  /** events that could not be recorded (should stay 0) */
  get recordFailures(): number {
    return this.recordErrors
  }

  private recordUnsafe(event: RequestEvent): void {
    const now = this.now()
    const { entry, overflowed } = this.table.admit(event.identity, now)
    const cost = this.costOf(event)
    const error = isError(event)
    entry.requests++
    if (error) entry.errors++
    entry.bytesIn += event.bytesIn
    entry.bytesOut += event.bytesOut
    entry.upstreamMs += event.upstreamMs
    entry.cost += cost
    entry.rate.add(now, error)
    entry.latency.add(event.durationMs)
    if (entry.kind === 'job' && !entry.overflow) {
      const outcome = jobOutcome(event)
      if (outcome === 'success') {
        entry.lastSuccess = now
        entry.consecutiveFailures = 0
      } else if (outcome === 'failure') entry.consecutiveFailures++
    }
    if (!entry.overflow) this.table.recordEdge(entry, event.service, event.identity, now)
    this.metrics.observe(entry, event, overflowed, cost, this.config.cost?.currency ?? 'USD')
    this.audit.record(event)
    this.live.publish(event)
    this.otlp?.record(event)
  }

  private costOf(event: RequestEvent): number {
    const c = this.config.cost
    if (!c) return 0
    return (
      c.perRequest +
      (c.perGiB * (event.bytesIn + event.bytesOut)) / GIB +
      (c.perUpstreamSecond * event.upstreamMs) / 1000
    )
  }

  /** drops identities idle longer than metrics.idleTtl (jobs with expectEvery: at least 2× that) */
  sweep(): number {
    return this.table.sweep(this.now())
  }

  configReloaded(result: 'success' | 'failure', at = this.now()): void {
    this.metrics.configReloaded(result, at)
  }

  /** Applies a reloaded config; existing series are kept unless the service name changed. */
  reconfigure(config: Config): void {
    if (config.service !== this.config.service) {
      this.table.clear()
      this.metrics.setService(config.service)
    }
    this.table.setLimits(tableLimits(config))
    this.audit.reconfigure(config.audit)
    this.live.configure(liveLimits(config))
    this.config = config
  }

  /**
   * Starts OTLP span export when the `otlp` block or OTEL_* variables ask for it (read once: a reload does
   * not change it). Returns where spans go, or undefined when export is off. The SDK is loaded only then.
   */
  async startExport(env: Record<string, string | undefined> = process.env): Promise<string | undefined> {
    const settings = otlpSettings(this.config, env)
    if (!settings || this.otlp) return undefined
    const { OtlpRecorder } = await import('./otlp.ts')
    this.otlp = new OtlpRecorder(settings, this.version)
    return settings.target
  }

  /** process_* and nodejs_* metrics (prom-client's default collector) from now on, next to the nhi_* ones */
  startProcessMetrics(): Promise<unknown> {
    return this.process.start()
  }

  async scrape(openMetrics: boolean): Promise<Scrape> {
    this.sweep()
    const scrape = await this.metrics.scrape(openMetrics)
    const runtime = await this.process.render(openMetrics)
    if (!runtime) return scrape
    const body = openMetrics
      ? `${scrape.body.replace(/# EOF\n$/, '')}${runtime}# EOF\n`
      : `${scrape.body}${runtime}`
    return { contentType: scrape.contentType, body }
  }

  identities(sort?: IdentitySort): IdentitiesView {
    this.sweep()
    return buildIdentitiesView(this.table, {
      now: this.now(),
      sort,
      maxIdentities: this.config.metrics.maxIdentities,
      currency: this.config.cost?.currency,
    })
  }

  auditQuery(q: AuditQuery): AuditRecord[] {
    return this.audit.ring.query(q)
  }

  liveStats(): LiveStats {
    return this.live.stats()
  }

  async close(): Promise<void> {
    clearInterval(this.sweeper)
    this.process.stop()
    this.live.close()
    await Promise.all([this.audit.close(), this.otlp?.close()])
  }
}

function tableLimits(config: Config): IdentityTableLimits {
  const m = config.metrics
  return {
    maxIdentities: m.maxIdentities,
    idleTtlMs: m.idleTtl,
    ...(m.maxUnverifiedIdentities !== undefined
      ? { maxUnverifiedIdentities: m.maxUnverifiedIdentities }
      : {}),
  }
}
