// Prometheus metrics of SPEC §7 on our own registries. Every metric is registered twice: once on a
// Prometheus-text registry and once on an OpenMetrics registry, so one scrape can ask for exemplars.
// Per-identity gauges are derived from the identity table at scrape time (collect), so only counters and
// the histogram need explicit series removal when an identity goes idle.
import { Counter, Gauge, Histogram, type Metric, type OpenMetricsContentType, Registry } from 'prom-client'
import type { Kind, RequestEvent } from '../types.ts'
import { type IdentityEntry, type IdentityTable, type Labels, OVERFLOW_IDENTITY } from './identity-table.ts'

export interface JwksObserver {
  refreshed(issuer: string, result: 'success' | 'failure', keyCount: number, at: number): void
}

export interface MetricsOptions {
  service: string
  buckets: number[]
  version: string
  table: IdentityTable
}

export interface Scrape {
  contentType: string
  body: string
}

/** Recognised HTTP methods keep their name; anything else is "OTHER" so the label stays bounded. */
const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'CONNECT', 'TRACE'])

export class Metrics {
  private service: string
  private readonly table: IdentityTable
  private readonly text = new Registry()
  private readonly openMetrics = new Registry<OpenMetricsContentType>()
  /** prom-client strips `_total` from counter names while rendering OpenMetrics; we put it back */
  private readonly counterNames = new Map<Metric, string>()

  private readonly requests: Counter<string>
  private readonly duration: Histogram<string>
  private readonly requestBytes: Counter<string>
  private readonly responseBytes: Counter<string>
  private readonly upstreamSeconds: Counter<string>
  private readonly costTotal: Counter<string>
  private readonly authFailures: Counter<string>
  private readonly overflow: Counter<string>
  private readonly anomalies: Counter<string>
  private readonly policyDecisions: Counter<string>
  private readonly upstreamErrors: Counter<string>
  private readonly jwksRefresh: Counter<string>
  private readonly jwksKeys: Gauge<string>
  private readonly jwksLastSuccess: Gauge<string>
  private readonly configReloads: Counter<string>
  private readonly configLastSuccess: Gauge<string>
  /** cached `{service}` label object for the service-only counters */
  private serviceLabels: Labels

  constructor(opts: MetricsOptions) {
    this.service = opts.service
    this.table = opts.table
    this.serviceLabels = { service: this.service }
    this.openMetrics.setContentType(Registry.OPENMETRICS_CONTENT_TYPE)
    const registers = [this.text, this.openMetrics]
    const counter = (name: string, help: string, labelNames: string[], enableExemplars = false) => {
      // prom-client refuses exemplar-enabled metrics on a text registry at construction time only; the text
      // rendering simply leaves exemplars out, so such metrics are added to the text registry afterwards.
      const c = new Counter({
        name,
        help,
        labelNames,
        registers: enableExemplars ? [this.openMetrics] : registers,
        enableExemplars,
      })
      if (enableExemplars) this.text.registerMetric(c)
      this.counterNames.set(c as unknown as Metric, name)
      return c
    }
    const gauge = (name: string, help: string, labelNames: string[], collect?: (g: Gauge<string>) => void) =>
      new Gauge({
        name,
        help,
        labelNames,
        registers,
        collect: collect
          ? function (this: Gauge<string>) {
              collect(this)
            }
          : undefined,
      })

    const id = ['service', 'identity', 'kind']
    this.requests = counter(
      'nhi_requests_total',
      'Requests by identity',
      [...id, 'source', 'verified', 'method', 'route', 'code'],
      true,
    )
    this.duration = new Histogram({
      name: 'nhi_request_duration_seconds',
      help: 'Request duration by identity, from first byte in to last byte out',
      labelNames: [...id, 'route'],
      buckets: opts.buckets,
      registers: [this.openMetrics],
      enableExemplars: true,
    })
    this.text.registerMetric(this.duration)
    this.requestBytes = counter('nhi_request_bytes_total', 'Request body bytes received by identity', id)
    this.responseBytes = counter('nhi_response_bytes_total', 'Response body bytes sent by identity', id)
    this.upstreamSeconds = counter('nhi_upstream_seconds_total', 'Time the upstream spent on requests', id)
    this.costTotal = counter('nhi_cost_total', 'Modelled cost of the traffic by identity', [
      ...id,
      'currency',
    ])
    this.authFailures = counter('nhi_auth_failures_total', 'Presented credentials that did not check out', [
      'service',
      'source',
      'reason',
    ])
    this.overflow = counter(
      'nhi_identity_overflow_total',
      'Requests recorded as __overflow__ because metrics.maxIdentities was reached',
      ['service'],
    )
    // exported from the start at 0 so an overflow alert can use rate()/increase() on it
    this.overflow.inc(this.serviceLabels, 0)
    this.anomalies = counter('nhi_credential_anomalies_total', 'Credential anomalies detected', [
      'service',
      'type',
    ])
    this.policyDecisions = counter('nhi_policy_decisions_total', 'Policy decisions', [
      'service',
      'decision',
      'rule',
    ])
    this.upstreamErrors = counter('nhi_upstream_errors_total', 'Failed upstream exchanges', [
      'service',
      'reason',
    ])
    this.jwksRefresh = counter('nhi_jwks_refresh_total', 'JWKS fetches by issuer and result', [
      'issuer',
      'result',
    ])
    this.jwksKeys = gauge('nhi_jwks_keys', 'Keys in the current key set', ['issuer'])
    this.jwksLastSuccess = gauge('nhi_jwks_last_success_timestamp_seconds', 'Last successful JWKS fetch', [
      'issuer',
    ])
    this.configReloads = counter('nhi_config_reloads_total', 'Config reloads by result', ['result'])
    this.configLastSuccess = gauge(
      'nhi_config_last_reload_success_timestamp_seconds',
      'Last successful config load',
      [],
    )
    gauge('nhi_build_info', 'Build information', ['version', 'node']).set(
      { version: opts.version, node: process.version },
      1,
    )

    gauge('nhi_identities', 'Identities currently tracked, by kind', ['service', 'kind'], (g) => {
      g.reset()
      const counts = new Map<Kind, number>()
      for (const e of this.table.values()) if (!e.overflow) counts.set(e.kind, (counts.get(e.kind) ?? 0) + 1)
      for (const [kind, n] of counts) g.set({ service: this.service, kind }, n)
    })
    gauge(
      'nhi_identity_last_seen_timestamp_seconds',
      'Last request of an identity',
      ['service', 'identity', 'kind'],
      (g) => {
        g.reset()
        for (const e of this.table.values()) {
          g.set({ service: this.service, identity: e.name, kind: e.kind }, e.lastSeen / 1000)
        }
      },
    )
    gauge(
      'nhi_credential_expiry_timestamp_seconds',
      'Earliest expiry of the credential an identity last presented',
      ['service', 'identity', 'source'],
      (g) => {
        g.reset()
        for (const e of this.table.values()) {
          if (e.expiresAt !== undefined)
            g.set({ service: this.service, identity: e.name, source: e.source }, e.expiresAt)
        }
      },
    )
    gauge(
      'nhi_job_last_success_timestamp_seconds',
      'Last successful request of a job identity',
      ['service', 'identity'],
      (g) => {
        g.reset()
        for (const e of this.jobs()) {
          if (e.lastSuccess !== undefined)
            g.set({ service: this.service, identity: e.name }, e.lastSuccess / 1000)
        }
      },
    )
    gauge(
      'nhi_job_consecutive_failures',
      'Failed requests of a job identity since its last success (5xx, upstream error, 401/403, policy deny)',
      ['service', 'identity'],
      (g) => {
        g.reset()
        for (const e of this.jobs()) g.set({ service: this.service, identity: e.name }, e.consecutiveFailures)
      },
    )
    gauge(
      'nhi_job_expected_interval_seconds',
      'expectEvery of the rule a job identity matched; alert when time() - last success exceeds it',
      ['service', 'identity'],
      (g) => {
        g.reset()
        for (const e of this.jobs()) {
          if (e.expectEveryMs) g.set({ service: this.service, identity: e.name }, e.expectEveryMs / 1000)
        }
      },
    )
  }

  private *jobs(): Generator<IdentityEntry> {
    for (const e of this.table.values()) if (e.kind === 'job' && !e.overflow) yield e
  }

  /** Records one finished request for an admitted identity entry. */
  observe(
    entry: IdentityEntry,
    event: RequestEvent,
    overflowed: boolean,
    cost: number,
    currency: string,
  ): void {
    const identity = event.identity
    const kind = identity.kind
    const service = this.service
    const method = METHODS.has(event.method) ? event.method : 'OTHER'
    const code = String(event.status)
    const verified = identity.verified ? 'true' : 'false'
    const exemplarLabels = event.traceId ? { trace_id: event.traceId } : undefined

    const reqKey = `${kind}\u0000${identity.source}\u0000${verified}\u0000${method}\u0000${event.route}\u0000${code}`
    let reqLabels = entry.series.requests.get(reqKey)
    if (!reqLabels) {
      reqLabels = {
        service,
        identity: entry.name,
        kind,
        source: identity.source,
        verified,
        method,
        route: event.route,
        code,
      }
      entry.series.requests.set(reqKey, reqLabels)
    }
    this.requests.inc({ labels: reqLabels, value: 1, exemplarLabels })

    const durKey = `${kind}\u0000${event.route}`
    let durLabels = entry.series.duration.get(durKey)
    if (!durLabels) {
      durLabels = { service, identity: entry.name, kind, route: event.route }
      entry.series.duration.set(durKey, durLabels)
    }
    this.duration.observe({ labels: durLabels, value: event.durationMs / 1000, exemplarLabels })

    let idLabels = entry.series.perKind.get(kind)
    if (!idLabels) {
      idLabels = { service, identity: entry.name, kind }
      entry.series.perKind.set(kind, idLabels)
    }
    if (event.bytesIn > 0) this.requestBytes.inc(idLabels, event.bytesIn)
    if (event.bytesOut > 0) this.responseBytes.inc(idLabels, event.bytesOut)
    if (event.upstreamMs > 0) this.upstreamSeconds.inc(idLabels, event.upstreamMs / 1000)
    if (cost > 0) {
      const costKey = `${kind}\u0000${currency}`
      let costLabels = entry.series.cost.get(costKey)
      if (!costLabels) {
        costLabels = { service, identity: entry.name, kind, currency }
        entry.series.cost.set(costKey, costLabels)
      }
      this.costTotal.inc(costLabels, cost)
    }

    if (overflowed) this.overflow.inc(this.serviceLabels)
    for (const f of event.failures) this.authFailures.inc({ service, source: f.source, reason: f.reason })
    for (const type of event.anomalies) this.anomalies.inc({ service, type })
    if (!event.decision.skipped) {
      this.policyDecisions.inc({ service, decision: event.decision.decision, rule: event.decision.rule })
    }
    if (event.upstreamError) this.upstreamErrors.inc({ service, reason: event.upstreamError })
  }

  /** Removes every counter/histogram series an identity created (its gauges vanish with the table entry). */
  forget(entry: IdentityEntry): void {
    for (const labels of entry.series.requests.values()) this.requests.remove(labels)
    for (const labels of entry.series.duration.values()) this.duration.remove(labels)
    for (const labels of entry.series.perKind.values()) {
      this.requestBytes.remove(labels)
      this.responseBytes.remove(labels)
      this.upstreamSeconds.remove(labels)
    }
    for (const labels of entry.series.cost.values()) this.costTotal.remove(labels)
  }

  /** A new service name relabels everything: identity series are dropped by the caller, the rest here. */
  setService(service: string): void {
    if (service === this.service) return
    this.service = service
    this.serviceLabels = { service }
    for (const c of [
      this.authFailures,
      this.overflow,
      this.anomalies,
      this.policyDecisions,
      this.upstreamErrors,
    ]) {
      c.reset()
    }
    this.overflow.inc(this.serviceLabels, 0)
  }

  readonly jwksObserver: JwksObserver = {
    refreshed: (issuer, result, keyCount, at) => {
      this.jwksRefresh.inc({ issuer, result })
      if (result === 'success') {
        this.jwksKeys.set({ issuer }, keyCount)
        this.jwksLastSuccess.set({ issuer }, at / 1000)
      }
    },
  }

  configReloaded(result: 'success' | 'failure', at: number): void {
    this.configReloads.inc({ result })
    if (result === 'success') this.configLastSuccess.set(at / 1000)
  }

  async scrape(openMetrics: boolean): Promise<Scrape> {
    if (!openMetrics) return { contentType: this.text.contentType, body: await this.text.metrics() }
    // Rendering renames counters synchronously before its first await; restore the names right away so a
    // concurrent text scrape keeps the `_total` suffix.
    const rendering = this.openMetrics.metrics()
    for (const [metric, name] of this.counterNames) (metric as unknown as { name: string }).name = name
    return { contentType: this.openMetrics.contentType, body: await rendering }
  }
}

export { OVERFLOW_IDENTITY }
