// The metrics output: per-identity accounting in the bounded identity table, rendered as the nhi_* families
// on /metrics and as the /identities view, next to prom-client's process families.
import type { Config } from '../config/schema.ts'
import { issuerProfile, PUBLIC_PROFILES } from '../identity/profiles.ts'
import type { CertificateValidity, Recorder, RequestEvent, UpstreamErrorReason } from '../types.ts'
import { buildIdentitiesView, type IdentitiesView, type IdentitySort } from './identities.ts'
import { IdentityTable, type IdentityTableLimits } from './identity-table.ts'
import {
  type AnomalyObserver,
  type Http2AbuseReason,
  type JwksObserver,
  Metrics,
  type MetricsOptions,
  type Scrape,
  type TlsSide,
  type TunnelProtocol,
} from './metrics.ts'
import { podIdentityKey } from './pod-export.ts'
import { ProcessMetrics } from './process-metrics.ts'

const GIB = 1024 ** 3

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

/**
 * A public IdP's issuer without a `maxIdentities` of its own may name a tenth of the table: room for a
 * service's own workflows or service accounts, while outsiders minting tokens (any repository on GitHub can)
 * leave nine tenths to everyone else. Two public issuers and the made-up names' quarter still leave more
 * than half of the table to the service's own callers.
 */
const PUBLIC_ISSUER_SHARE = 10

/**
 * Each issuer's cap: its own `maxIdentities`, else the public IdPs' default; none for the others. Public is
 * what the issuer URL says (GitHub's and Google's own issuers), not the configured `profile`: the profile
 * only says how to read the claims. GitHub Enterprise Server, or an enterprise's own Actions issuer, is read
 * with `profile: github-actions` yet gives tokens to that enterprise's repositories only, and the public
 * issuer read with another profile still gives them to anyone.
 */
export function issuerCaps(config: Config): Map<string, number> {
  const caps = new Map<string, number>()
  const share = Math.max(1, Math.floor(config.metrics.maxIdentities / PUBLIC_ISSUER_SHARE))
  for (const i of config.jwt.issuers) {
    if (i.maxIdentities !== undefined) caps.set(i.issuer, i.maxIdentities)
    else if (PUBLIC_PROFILES.has(issuerProfile(i.issuer))) caps.set(i.issuer, share)
  }
  return caps
}

/** The identity table's caps for a config: the one-process table's, and a `workers: N` pod's. */
export function tableLimits(config: Config): IdentityTableLimits {
  const m = config.metrics
  return {
    maxIdentities: m.maxIdentities,
    idleTtlMs: m.idleTtl,
    issuerCaps: issuerCaps(config),
    ...(m.maxUnverifiedIdentities !== undefined
      ? { maxUnverifiedIdentities: m.maxUnverifiedIdentities }
      : {}),
  }
}

export interface MetricsRecorderOptions {
  version: string
  now: () => number
  /** how often idle identities are swept; default min(idleTtl / 4, 60 s) */
  sweepIntervalMs?: number
  /** counters other outputs keep, rendered with the nhi_* families */
  external: Pick<MetricsOptions, 'auditLinesDropped' | 'otlpSpans' | 'otlpLogs' | 'recorderFailures'>
}

export class MetricsRecorder implements Recorder {
  readonly name = 'metrics'
  private config: Config
  private limits: IdentityTableLimits
  private readonly now: () => number
  private readonly table: IdentityTable
  private readonly metrics: Metrics
  private readonly process = new ProcessMetrics()
  private readonly sweeper: NodeJS.Timeout

  constructor(config: Config, opts: MetricsRecorderOptions) {
    this.config = config
    this.now = opts.now
    this.limits = tableLimits(config)
    this.table = new IdentityTable(this.limits)
    this.metrics = new Metrics({
      service: config.service,
      buckets: config.metrics.buckets,
      version: opts.version,
      table: this.table,
      now: this.now,
      ...opts.external,
    })
    const interval = opts.sweepIntervalMs ?? Math.max(1000, Math.min(config.metrics.idleTtl / 4, 60_000))
    this.sweeper = setInterval(() => this.sweep(), interval)
    this.sweeper.unref()
  }

  get jwksObserver(): JwksObserver {
    return this.metrics.jwksObserver
  }

  get anomalyObserver(): AnomalyObserver {
    return this.metrics.anomalyObserver
  }

  record(event: RequestEvent): void {
    const now = this.now()
    // the credential was presented when the request started, on this clock durationMs ago
    const entry = this.table.admitEntry(event.identity, now, now - event.durationMs)
    const overflowed = this.table.overflowed
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

  /** Existing series are kept unless the service name changed; new caps apply to identities seen next. */
  reconfigure(config: Config): void {
    if (config.service !== this.config.service) {
      this.table.clear()
      this.metrics.setService(config.service)
    }
    this.limits = tableLimits(config)
    this.table.setLimits(this.limits)
    this.config = config
  }

  /** drops identities idle longer than metrics.idleTtl (jobs with expectEvery: at least 2× that) */
  sweep(): number {
    return this.table.sweep(this.now())
  }

  configReloaded(result: 'success' | 'failure', at: number): void {
    this.metrics.configReloaded(result, at)
  }

  configLoaded(at: number): void {
    this.metrics.configLoaded(at)
  }

  tlsFiles(side: TlsSide, certificate: CertificateValidity | undefined): void {
    this.metrics.tlsFiles(side, certificate)
  }

  tlsReloaded(side: TlsSide, result: 'success' | 'failure'): void {
    this.metrics.tlsReloaded(side, result)
  }

  http2ConnectionClosed(reason: Http2AbuseReason): void {
    this.metrics.http2ConnectionClosed(reason)
  }

  attributionFailed(): void {
    this.metrics.attributionFailed()
  }

  tunnelIdleClosed(protocol: TunnelProtocol): void {
    this.metrics.tunnelIdleClosed(protocol)
  }

  upstreamErrorBetweenRequests(reason: UpstreamErrorReason): void {
    this.metrics.upstreamErrorBetweenRequests(reason)
  }

  /** process_* and nodejs_* metrics (prom-client's default collector) from now on, next to the nhi_* ones */
  startProcessMetrics(): Promise<unknown> {
    return this.process.start()
  }

  async scrape(openMetrics: boolean): Promise<Scrape> {
    this.sweep()
    const runtime = await this.process.render(openMetrics)
    return this.metrics.scrape(openMetrics, runtime)
  }

  /** the Prometheus text exposition as pieces, unjoined: what a worker of `workers: N` exports from */
  async pieces(): Promise<string[]> {
    this.sweep()
    const runtime = await this.process.render(false)
    return this.metrics.pieces(false, runtime)
  }

  /** the tracked identities whose name a rule filled from a request header or the path (podIdentityKey) */
  requestNamed(): string[] {
    const out: string[] = []
    for (const e of this.table.values()) if (e.nameFromRequest) out.push(podIdentityKey(e.source, e.name))
    return out
  }

  /**
   * the tracked identities whose credential expiry is of a credential presented after its expiry
   * (podIdentityKey): a pod's merge keeps those in use once they have passed, and leaves out the others
   */
  presentedExpired(): string[] {
    const out: string[] = []
    for (const e of this.table.values())
      if (!e.overflow && e.expiry.presentedExpired()) out.push(podIdentityKey(e.source, e.name))
    return out
  }

  /**
   * Under `workers: N`: the identities the pod admitted, which this worker's table makes room for, and those
   * among them that the pod had folded into `__overflow__` until now. What those counted stays there; their
   * series start again here, as one process starts the series of an identity it admits.
   */
  podAdmitted(keys: readonly string[], startOver: readonly string[]): void {
    this.table.setPodAdmitted(keys)
    if (startOver.length === 0) return
    const keysOf = new Set(startOver)
    for (const e of this.table.values())
      if (!e.overflow && keysOf.has(podIdentityKey(e.source, e.name))) this.metrics.startOver(e)
  }

  /** the tracked identities a capped token issuer named, with that issuer (podIdentityKey) */
  issued(): [identity: string, issuer: string][] {
    const caps = this.limits.issuerCaps
    const out: [string, string][] = []
    if (caps === undefined || caps.size === 0) return out
    for (const e of this.table.values())
      if (e.issuer !== undefined && caps.has(e.issuer)) out.push([podIdentityKey(e.source, e.name), e.issuer])
    return out
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

  close(): void {
    clearInterval(this.sweeper)
    this.process.stop()
  }
}
