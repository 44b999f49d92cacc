// Prometheus metrics of docs/reference.md "Metrics". Per-identity series live on their identity-table entry (created on first
// use with their label text escaped once) and are rendered straight from the table, so an idle identity's
// series disappear with its entry and a request updates a handful of numbers. Per-identity gauges are
// derived from the table at scrape time. One registry renders both Prometheus text and OpenMetrics
// (with trace_id exemplars on nhi_requests_total and the duration histogram).

import type { AnomalyObserver } from '../identity/anomalies.ts'
import type { JwksObserver } from '../identity/jwt/jwks.ts'
import type {
  CertificateValidity,
  Identity,
  Kind,
  PolicyDecision,
  RequestEvent,
  UpstreamErrorReason,
} from '../types.ts'
import { flattened } from '../util/flat.ts'
import {
  Buckets,
  CounterFamily,
  CounterSeries,
  escapeLabelValue,
  type FamilyInfo,
  GaugeFamily,
  HistogramSeries,
  OPENMETRICS_CONTENT_TYPE,
  TEXT_CONTENT_TYPE,
  writeHeader,
  writeSample,
} from './exposition.ts'
import {
  type IdentityEntry,
  type IdentityTable,
  type KindSeries,
  OVERFLOW_IDENTITY,
} from './identity-table.ts'

export type { AnomalyObserver, JwksObserver }

export interface MetricsOptions {
  service: string
  buckets: number[]
  version: string
  table: IdentityTable
  /** audit lines dropped because the audit output stalled (read at scrape time) */
  auditLinesDropped?: () => number
  /** OTLP span export counts, undefined while export is off (read at scrape time) */
  otlpSpans?: () => OtlpCounts | undefined
  /** the same for audit log records, undefined while log export is off */
  otlpLogs?: () => OtlpCounts | undefined
  /** events each recorder failed to record (threw or rejected), every recorder listed (read at scrape time) */
  recorderFailures?: () => Iterable<readonly [recorder: string, failures: number]>
  /** the clock the identity table is fed with (unix ms): credential expiries are read against it */
  now?: () => number
}

interface OtlpCounts {
  exported: number
  queueFull: number
  exportFailed: number
}

export interface Scrape {
  contentType: string
  body: string
}

/** Recognised HTTP methods keep their name; anything else is "OTHER" so the label stays bounded. */
const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'CONNECT', 'TRACE'])

/** why the proxy closed an HTTP/2 connection: a fixed set, so the label stays bounded */
export const HTTP2_ABUSE_REASONS = ['rapid_reset', 'ping_flood', 'settings_flood'] as const
export type Http2AbuseReason = (typeof HTTP2_ABUSE_REASONS)[number]

/** what kind of tunnel the proxy cut for idleness (timeouts.tunnelIdle) */
export const TUNNEL_PROTOCOLS = ['websocket', 'http2'] as const
export type TunnelProtocol = (typeof TUNNEL_PROTOCOLS)[number]

/** whose TLS files were reloaded: the https listener's, or upstreamTls's */
export type TlsSide = 'listener' | 'upstream'

const counter = (name: string, help: string): FamilyInfo & { type: 'counter' } => ({
  name,
  help,
  type: 'counter',
})
const gauge = (name: string, help: string): FamilyInfo & { type: 'gauge' } => ({ name, help, type: 'gauge' })

// per-identity families (rendered from the identity table)
const REQUESTS = counter('nhi_requests', 'Requests by identity')
const DURATION: FamilyInfo = {
  name: 'nhi_request_duration_seconds',
  help: 'Request duration by identity, from first byte in to last byte out',
  type: 'histogram',
}
const GRPC_REQUESTS = counter(
  'nhi_grpc_requests',
  'gRPC calls by identity, route (/package.Service/Method when listed in metrics.routes) and grpc-status code',
)
const REQUEST_BYTES = counter('nhi_request_bytes', 'Request body bytes received by identity')
const RESPONSE_BYTES = counter('nhi_response_bytes', 'Response body bytes sent by identity')
const UPSTREAM_SECONDS = counter('nhi_upstream_seconds', 'Time the upstream spent on requests')
const COST = counter('nhi_cost', 'Modelled cost of the traffic by identity')
const AUDIT_DROPPED = counter(
  'nhi_audit_dropped_lines',
  'Audit lines dropped because the audit output fell too far behind (a stalled stdout or disk)',
)
const OTLP_EXPORTED = counter('nhi_otlp_spans_exported', 'Spans the OTLP collector accepted')
const OTLP_DROPPED = counter(
  'nhi_otlp_spans_dropped',
  'Spans not exported: queue_full (the export queue was full: collector slow or down) or export_failed (retries exhausted)',
)
const OTLP_LOGS_EXPORTED = counter(
  'nhi_otlp_log_records_exported',
  'Audit log records the OTLP collector accepted',
)
const OTLP_LOGS_DROPPED = counter(
  'nhi_otlp_log_records_dropped',
  'Audit log records not exported: queue_full or export_failed (as for spans)',
)
const RECORDER_FAILURES = counter(
  'nhi_recorder_failures',
  'Requests an output (recorder) failed to record: it threw or its promise rejected; the other outputs recorded them',
)
const IDENTITIES = gauge('nhi_identities', 'Identities currently tracked, by kind')
const LAST_SEEN = gauge('nhi_identity_last_seen_timestamp_seconds', 'Last request of an identity')
const EXPIRY = gauge(
  'nhi_credential_expiry_timestamp_seconds',
  'Earliest expiry among the credentials an identity presented in the last 5 to 10 minutes',
)
const JOB_LAST_SUCCESS = gauge(
  'nhi_job_last_success_timestamp_seconds',
  'Last successful request of a job identity',
)
const JOB_FAILURES = gauge(
  'nhi_job_consecutive_failures',
  'Failed requests of a job identity since its last success (5xx, upstream error, 401/403, policy deny)',
)
const JOB_INTERVAL = gauge(
  'nhi_job_expected_interval_seconds',
  'expectEvery of the rule a job identity matched; alert when time() - last success exceeds it',
)

export class Metrics {
  private service: string
  /** `service="…"`, escaped */
  private serviceLabel: string
  private readonly table: IdentityTable
  private readonly buckets: Buckets
  private overflowSeries: CounterSeries
  /** the policy decision series of each (constant) decision object, until the service is renamed */
  private decisionSeries = new WeakMap<PolicyDecision, CounterSeries>()
  private readonly auditLinesDropped: () => number
  private readonly otlpSpans: NonNullable<MetricsOptions['otlpSpans']>
  private readonly otlpLogs: NonNullable<MetricsOptions['otlpLogs']>
  private readonly recorderFailures: NonNullable<MetricsOptions['recorderFailures']>
  private readonly now: () => number

  private readonly authFailures = new CounterFamily(
    counter('nhi_auth_failures', 'Presented credentials that did not check out'),
    ['service', 'source', 'reason'],
  )
  private readonly overflow = new CounterFamily(
    counter(
      'nhi_identity_overflow',
      'Requests recorded as __overflow__ because metrics.maxIdentities was reached',
    ),
    ['service'],
  )
  private readonly anomalies = new CounterFamily(
    counter('nhi_credential_anomalies', 'Credential anomalies detected'),
    ['service', 'type'],
  )
  private readonly policyDecisions = new CounterFamily(counter('nhi_policy_decisions', 'Policy decisions'), [
    'service',
    'decision',
    'rule',
  ])
  private readonly upstreamErrors = new CounterFamily(
    counter('nhi_upstream_errors', 'Failed upstream exchanges'),
    ['service', 'reason'],
  )
  private readonly attributionErrors = new CounterFamily(
    counter(
      'nhi_attribution_errors',
      'Requests the proxy failed to attribute (an internal error): answered 500 under an enforced policy, else forwarded as anonymous',
    ),
    ['service'],
  )
  private attributionErrorSeries: CounterSeries
  private readonly http2Closed = new CounterFamily(
    counter(
      'nhi_http2_connections_closed',
      'HTTP/2 connections the proxy closed for abuse (rapid_reset: CVE-2023-44487 stream resets past the budget; ping_flood/settings_flood: PING/SETTINGS sent without reading the acknowledgements)',
    ),
    ['service', 'reason'],
  )
  private readonly tunnelsIdleClosed = new CounterFamily(
    counter(
      'nhi_tunnels_idle_closed',
      'Websocket tunnels and answered HTTP/2 upstream streams the proxy closed because no byte moved either way for timeouts.tunnelIdle',
    ),
    ['service', 'protocol'],
  )
  private readonly jwksRefresh = new CounterFamily(
    counter('nhi_jwks_refresh', 'JWKS fetches by issuer and result'),
    ['issuer', 'result'],
  )
  private readonly jwksKeys = new GaugeFamily(gauge('nhi_jwks_keys', 'Keys in the current key set'), [
    'issuer',
  ])
  private readonly jwksLastSuccess = new GaugeFamily(
    gauge('nhi_jwks_last_success_timestamp_seconds', 'Last successful JWKS fetch'),
    ['issuer'],
  )
  private readonly configReloads = new CounterFamily(
    counter('nhi_config_reloads', 'Config reloads by result'),
    ['result'],
  )
  private readonly tlsReloads = new CounterFamily(
    counter(
      'nhi_tls_reloads',
      'Reloads of rotated TLS files by side (listener: the https listener, upstream: upstreamTls) and result',
    ),
    ['side', 'result'],
  )
  private readonly tlsCertificateExpiry = new GaugeFamily(
    gauge(
      'nhi_tls_certificate_expiry_timestamp_seconds',
      "notAfter of the certificate this process presents that expires first (of the chain in its file), by side (listener: the https listener's, upstream: upstreamTls's client certificate)",
    ),
    ['side'],
  )
  private readonly tlsCertificateStart = new GaugeFamily(
    gauge(
      'nhi_tls_certificate_not_before_timestamp_seconds',
      'notBefore of the same certificate: with its expiry, how much of its life is left',
    ),
    ['side'],
  )
  private readonly configLastSuccess = new GaugeFamily(
    gauge('nhi_config_last_reload_success_timestamp_seconds', 'Last successful config load'),
    [],
  )
  private readonly buildInfo = new GaugeFamily(gauge('nhi_build_info', 'Build information'), [
    'version',
    'node',
  ])

  constructor(opts: MetricsOptions) {
    this.service = opts.service
    this.serviceLabel = `service="${escapeLabelValue(opts.service)}"`
    this.table = opts.table
    this.buckets = new Buckets(opts.buckets)
    this.auditLinesDropped = opts.auditLinesDropped ?? (() => 0)
    this.otlpSpans = opts.otlpSpans ?? (() => undefined)
    this.otlpLogs = opts.otlpLogs ?? (() => undefined)
    this.recorderFailures = opts.recorderFailures ?? (() => [])
    this.now = opts.now ?? Date.now
    // exported from the start at 0 so an overflow alert can use rate()/increase() on it
    this.overflowSeries = this.overflow.child([this.service])
    this.attributionErrorSeries = this.attributionErrors.child([this.service])
    this.zeroClosedSeries()
    this.configLastSuccess.set([], 0)
    this.buildInfo.set([opts.version, process.version], 1)
  }

  private writeOtlp(
    out: string[],
    om: boolean,
    counts: OtlpCounts | undefined,
    exported: FamilyInfo,
    dropped: FamilyInfo,
  ): void {
    if (!counts) return
    writeHeader(out, exported, om)
    writeSample(out, `${exported.name}_total`, this.serviceLabel, counts.exported)
    writeHeader(out, dropped, om)
    writeSample(out, `${dropped.name}_total`, `${this.serviceLabel},reason="queue_full"`, counts.queueFull)
    writeSample(
      out,
      `${dropped.name}_total`,
      `${this.serviceLabel},reason="export_failed"`,
      counts.exportFailed,
    )
  }

  /**
   * `service="…",identity="…",source="…"` plus escaped extra labels. Every per-identity family carries the
   * source: an identity is its (source, name) pair, so two sources with one name are two sets of series.
   */
  private identityLabels(entry: IdentityEntry, extra: string): string {
    return `${this.serviceLabel},identity="${escapeLabelValue(entry.name)}",source="${entry.source}"${extra}`
  }

  /**
   * An entry's `service,identity,source` labels for the per-identity gauges, escaped at its first scrape
   * rather than at every scrape. Weak, so an entry the table drops takes its text with it; replaced when the
   * service name changes.
   */
  private gaugeLabels = new WeakMap<IdentityEntry, string>()

  private entryLabels(entry: IdentityEntry): string {
    let labels = this.gaugeLabels.get(entry)
    if (labels === undefined) {
      labels = flattened(this.identityLabels(entry, ''))
      this.gaugeLabels.set(entry, labels)
    }
    return labels
  }

  /** `service,identity,source,kind`: the entry's per-kind series already hold it for its current kind */
  private entryKindLabels(entry: IdentityEntry): string {
    return entry.series.perKind.get(entry.kind)?.labels ?? `${this.entryLabels(entry)},kind="${entry.kind}"`
  }

  private kindSeries(entry: IdentityEntry, kind: Kind): KindSeries {
    let series = entry.series.perKind.get(kind)
    if (series === undefined) {
      const labels = this.identityLabels(entry, `,kind="${kind}"`)
      series = {
        labels,
        requestBytes: new CounterSeries(labels),
        responseBytes: new CounterSeries(labels),
        upstreamSeconds: new CounterSeries(labels),
      }
      entry.series.perKind.set(kind, series)
    }
    return series
  }

  /**
   * An entry's series start again (its counters, histograms and job state), as a newly admitted entry's
   * would: a pod admitted it after it had folded it into `__overflow__` (pod-metrics.ts).
   */
  startOver(entry: IdentityEntry): void {
    const series = entry.series
    series.requests.clear()
    series.duration.clear()
    series.perKind.clear()
    series.cost.clear()
    series.grpc.clear()
    series.hot = undefined
    entry.lastSuccess = undefined
    entry.consecutiveFailures = 0
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
    const series = entry.series
    const route = event.route
    const traceId = event.traceId
    const at = event.time
    const status = event.status

    // An identity's requests mostly repeat the labels of its previous one: then its series are found without
    // a lookup or a key built (a string per key per request).
    const hot = series.hot
    let perKind: KindSeries
    let requests: CounterSeries
    let duration: HistogramSeries
    const verified = identity.verified
    if (hot !== undefined && hot.kind === kind && hot.verified === verified && hot.route === route) {
      perKind = hot.perKind
      duration = hot.duration
      if (hot.method === event.method && hot.status === status) requests = hot.requests
      else {
        requests = this.requestSeries(series, perKind, identity, event.method, route, status)
        hot.method = event.method
        hot.status = status
        hot.requests = requests
      }
    } else {
      perKind = this.kindSeries(entry, kind)
      requests = this.requestSeries(series, perKind, identity, event.method, route, status)
      duration = this.durationSeries(series, perKind, kind, route)
      if (hot === undefined) {
        series.hot = { kind, verified, method: event.method, route, status, perKind, requests, duration }
      } else {
        hot.kind = kind
        hot.verified = verified
        hot.method = event.method
        hot.route = route
        hot.status = status
        hot.perKind = perKind
        hot.requests = requests
        hot.duration = duration
      }
    }
    requests.incWithExemplar(1, traceId, at)
    duration.observe(event.durationMs / 1000, traceId, at)

    if (event.grpcStatus !== undefined) {
      // the code is 0–16 and the route a configured template: the label set stays bounded
      const grpcKey = `${kind}\u0000${route}\u0000${event.grpcStatus}`
      let grpc = series.grpc.get(grpcKey)
      if (grpc === undefined) {
        grpc = new CounterSeries(
          `${perKind.labels},route="${escapeLabelValue(route)}",grpc_status="${event.grpcStatus}"`,
        )
        series.grpc.set(grpcKey, grpc)
      }
      grpc.inc(1)
    }

    if (event.bytesIn > 0) perKind.requestBytes.inc(event.bytesIn)
    if (event.bytesOut > 0) perKind.responseBytes.inc(event.bytesOut)
    if (event.upstreamMs > 0) perKind.upstreamSeconds.inc(event.upstreamMs / 1000)
    if (cost > 0) {
      const costKey = `${kind}\u0000${currency}`
      let costSeries = series.cost.get(costKey)
      if (costSeries === undefined) {
        costSeries = new CounterSeries(`${perKind.labels},currency="${escapeLabelValue(currency)}"`)
        series.cost.set(costKey, costSeries)
      }
      costSeries.inc(cost)
    }

    if (overflowed) this.overflowSeries.inc(1)
    const service = this.service
    // indexed: a for-of iterator over a shared frozen empty list is not optimised away
    const failures = event.failures
    for (let i = 0; i < failures.length; i++) {
      const f = failures[i]!
      this.authFailures.inc([service, f.source, f.reason])
    }
    const anomalies = event.anomalies
    for (let i = 0; i < anomalies.length; i++) this.anomalies.inc([service, anomalies[i]!])
    const decision = event.decision
    if (!decision.skipped) {
      // policy decisions are constant objects per rule: their series is found without a key per request
      let decided = this.decisionSeries.get(decision)
      if (decided === undefined) {
        decided = this.policyDecisions.child([service, decision.decision, decision.rule])
        this.decisionSeries.set(decision, decided)
      }
      decided.inc(1)
    }
    if (event.upstreamError) this.upstreamErrors.inc([service, event.upstreamError])
  }

  private requestSeries(
    series: IdentityEntry['series'],
    perKind: KindSeries,
    identity: Identity,
    requestMethod: string,
    route: string,
    status: number,
  ): CounterSeries {
    const kind = identity.kind
    const verified = identity.verified ? 'true' : 'false'
    const method = METHODS.has(requestMethod) ? requestMethod : 'OTHER'
    // the entry is one source's: its series need no source in their key
    const reqKey = `${kind}\u0000${verified}\u0000${method}\u0000${route}\u0000${status}`
    let requests = series.requests.get(reqKey)
    if (requests === undefined) {
      requests = new CounterSeries(
        `${perKind.labels},verified="${verified}",method="${method}",route="${escapeLabelValue(route)}",code="${status}"`,
      )
      series.requests.set(reqKey, requests)
    }
    return requests
  }

  private durationSeries(
    series: IdentityEntry['series'],
    perKind: KindSeries,
    kind: Kind,
    route: string,
  ): HistogramSeries {
    const durKey = `${kind}\u0000${route}`
    let duration = series.duration.get(durKey)
    if (duration === undefined) {
      duration = new HistogramSeries(`${perKind.labels},route="${escapeLabelValue(route)}"`, this.buckets)
      series.duration.set(durKey, duration)
    }
    return duration
  }

  /** A new service name relabels everything: identity series are dropped by the caller, the rest here. */
  setService(service: string): void {
    if (service === this.service) return
    this.service = service
    this.serviceLabel = `service="${escapeLabelValue(service)}"`
    this.gaugeLabels = new WeakMap()
    for (const c of [
      this.authFailures,
      this.overflow,
      this.anomalies,
      this.policyDecisions,
      this.upstreamErrors,
      this.attributionErrors,
      this.http2Closed,
      this.tunnelsIdleClosed,
    ]) {
      c.reset()
    }
    this.overflowSeries = this.overflow.child([service])
    this.attributionErrorSeries = this.attributionErrors.child([service])
    this.decisionSeries = new WeakMap()
    this.zeroClosedSeries()
  }

  /** exported at 0 from the start so an alert can use increase() on them before the first attack or cut */
  private zeroClosedSeries(): void {
    for (const reason of HTTP2_ABUSE_REASONS) this.http2Closed.child([this.service, reason])
    for (const protocol of TUNNEL_PROTOCOLS) this.tunnelsIdleClosed.child([this.service, protocol])
  }

  http2ConnectionClosed(reason: Http2AbuseReason): void {
    this.http2Closed.inc([this.service, reason])
  }

  attributionFailed(): void {
    this.attributionErrorSeries.inc(1)
  }

  tunnelIdleClosed(protocol: TunnelProtocol): void {
    this.tunnelsIdleClosed.inc([this.service, protocol])
  }

  /** an upstream error no request's event carries (its response stood: bytes after it, on an idle connection) */
  upstreamErrorBetweenRequests(reason: UpstreamErrorReason): void {
    this.upstreamErrors.inc([this.service, reason])
  }

  readonly jwksObserver: JwksObserver = {
    refreshed: (issuer, result, keyCount, at) => {
      this.jwksRefresh.inc([issuer, result])
      // keys in use, after failures too: 0 for an issuer whose keys were never fetched (keys_unavailable)
      this.jwksKeys.set([issuer], keyCount)
      if (result === 'success') this.jwksLastSuccess.set([issuer], at / 1000)
    },
  }

  /** anomalies found after their request was recorded (a crawler claim's DNS lookup concluded later) */
  readonly anomalyObserver: AnomalyObserver = {
    found: (type, count) => this.anomalies.inc([this.service, type], count),
  }

  /**
   * a side's TLS files in use, at start and after each rotation: its reload counts are exported at 0 from
   * the start, so an alert can use increase() before the first failure, and the expiry of the certificate it
   * presents (none for an upstreamTls with a CA bundle only)
   */
  tlsFiles(side: TlsSide, certificate: CertificateValidity | undefined): void {
    this.tlsReloads.child([side, 'success'])
    this.tlsReloads.child([side, 'failure'])
    if (certificate === undefined) return
    this.tlsCertificateExpiry.set([side], certificate.notAfter)
    this.tlsCertificateStart.set([side], certificate.notBefore)
  }

  tlsReloaded(side: TlsSide, result: 'success' | 'failure'): void {
    this.tlsReloads.inc([side, result])
  }

  configReloaded(result: 'success' | 'failure', at: number): void {
    this.configReloads.inc([result])
    if (result === 'success') this.configLastSuccess.set([], at / 1000)
  }

  /**
   * The config a process started with counts as its last successful load (as Prometheus's own
   * prometheus_config_last_reload_success_timestamp_seconds), not as a reload: an alert on "last successful
   * load older than the last edit" holds from the start.
   */
  configLoaded(at: number): void {
    this.configLastSuccess.set([], at / 1000)
  }

  /**
   * Renders every family synchronously: one join of kept pieces; a series unchanged since the last scrape is
   * copied rather than rendered again, a changed one re-renders only its changed lines (2.8 MB of text at
   * 1,000 identities: a median 20–25 ms of CPU when every series changed, 6–9 ms when idle, on a loaded
   * 2-core machine: `npm run bench -- --prom`). `trailer` is more exposition (without `# EOF`) to end the
   * body with, in the same join.
   */
  async scrape(openMetrics: boolean, trailer = ''): Promise<Scrape> {
    return {
      contentType: openMetrics ? OPENMETRICS_CONTENT_TYPE : TEXT_CONTENT_TYPE,
      body: this.pieces(openMetrics, trailer).join(''),
    }
  }

  /**
   * The exposition as the pieces scrape() joins: a worker of `workers: N` reads them line by line to send
   * the primary only what changed (pod-export.ts), with no multi-megabyte join it would not use.
   */
  pieces(openMetrics: boolean, trailer = ''): string[] {
    const out: string[] = []
    const entries = [...this.table.values()]
    const om = openMetrics

    writeHeader(out, REQUESTS, om)
    for (const e of entries) for (const s of e.series.requests.values()) s.write(out, REQUESTS.name, om)
    writeHeader(out, DURATION, om)
    for (const e of entries) for (const s of e.series.duration.values()) s.write(out, DURATION.name, om)
    writeHeader(out, GRPC_REQUESTS, om)
    for (const e of entries) for (const s of e.series.grpc.values()) s.write(out, GRPC_REQUESTS.name, om)
    for (const [family, pick] of [
      [REQUEST_BYTES, (k: KindSeries) => k.requestBytes],
      [RESPONSE_BYTES, (k: KindSeries) => k.responseBytes],
      [UPSTREAM_SECONDS, (k: KindSeries) => k.upstreamSeconds],
    ] as const) {
      writeHeader(out, family, om)
      for (const e of entries) {
        for (const k of e.series.perKind.values()) {
          const s = pick(k)
          if (s.value > 0) s.write(out, family.name, om)
        }
      }
    }
    writeHeader(out, COST, om)
    for (const e of entries) for (const s of e.series.cost.values()) s.write(out, COST.name, om)

    for (const family of [
      this.authFailures,
      this.overflow,
      this.anomalies,
      this.policyDecisions,
      this.upstreamErrors,
      this.attributionErrors,
      this.http2Closed,
      this.tunnelsIdleClosed,
      this.jwksRefresh,
      this.jwksKeys,
      this.jwksLastSuccess,
      this.configReloads,
      this.configLastSuccess,
      this.tlsReloads,
      this.tlsCertificateExpiry,
      this.tlsCertificateStart,
      this.buildInfo,
    ]) {
      family.write(out, om)
    }

    writeHeader(out, AUDIT_DROPPED, om)
    writeSample(out, `${AUDIT_DROPPED.name}_total`, this.serviceLabel, this.auditLinesDropped())

    this.writeOtlp(out, om, this.otlpSpans(), OTLP_EXPORTED, OTLP_DROPPED)
    this.writeOtlp(out, om, this.otlpLogs(), OTLP_LOGS_EXPORTED, OTLP_LOGS_DROPPED)

    writeHeader(out, RECORDER_FAILURES, om)
    for (const [recorder, n] of this.recorderFailures()) {
      const labels = `${this.serviceLabel},recorder="${escapeLabelValue(recorder)}"`
      writeSample(out, `${RECORDER_FAILURES.name}_total`, labels, n)
    }

    writeHeader(out, IDENTITIES, om)
    const kinds = new Map<Kind, number>()
    for (const e of entries) if (!e.overflow) kinds.set(e.kind, (kinds.get(e.kind) ?? 0) + 1)
    for (const [kind, n] of kinds) writeSample(out, IDENTITIES.name, `${this.serviceLabel},kind="${kind}"`, n)

    writeHeader(out, LAST_SEEN, om)
    for (const e of entries) writeSample(out, LAST_SEEN.name, this.entryKindLabels(e), e.lastSeen / 1000)
    writeHeader(out, EXPIRY, om)
    const now = this.now()
    for (const e of entries) {
      const expiry = e.expiry.earliest(now)
      if (expiry !== undefined) writeSample(out, EXPIRY.name, this.entryLabels(e), expiry)
    }
    const jobs = entries.filter((e) => e.kind === 'job' && !e.overflow)
    writeHeader(out, JOB_LAST_SUCCESS, om)
    for (const e of jobs) {
      if (e.lastSuccess !== undefined)
        writeSample(out, JOB_LAST_SUCCESS.name, this.entryLabels(e), e.lastSuccess / 1000)
    }
    writeHeader(out, JOB_FAILURES, om)
    for (const e of jobs) writeSample(out, JOB_FAILURES.name, this.entryLabels(e), e.consecutiveFailures)
    writeHeader(out, JOB_INTERVAL, om)
    for (const e of jobs) {
      if (e.expectEveryMs) writeSample(out, JOB_INTERVAL.name, this.entryLabels(e), e.expectEveryMs / 1000)
    }

    // other families (prom-client's) go into the same join: appended to the joined body, the concatenation
    // would be flattened into a second multi-megabyte copy when the response is written
    out.push(trailer)
    if (om) out.push('# EOF\n')
    return out
  }
}

export { OVERFLOW_IDENTITY }
