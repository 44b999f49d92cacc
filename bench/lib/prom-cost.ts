// prom-client mode (`npm run bench -- --prom`): the per-identity hot families both ways, in-process, on the
// label set of today's request path — our hand-rendered exposition (src/telemetry/metrics.ts) against the same
// families as prom-client Counter/Histogram/Gauge with the same names, labels and buckets.
// (1) update: CPU per request of everything the metrics output records for one request (identity-table
//     admission, requests counter + exemplar, duration histogram + exemplar, byte and upstream-time counters,
//     the policy decision counter), over a pool of RequestEvents shaped as the request path builds them;
// (2) scrape: CPU and wall time to render /metrics and its bytes, after every identity had a request since
//     the last scrape (every series changed, the worst case for a cache of rendered series) and after none had.
// The decision rule of the performance issue: the hand-rendered families stay only if prom-client misses the
// scrape budget (≤ 50 ms) or its share of the per-request CPU budget.
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { cpus, loadavg } from 'node:os'
import { PerformanceObserver, performance } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'
import type { Counter, Gauge, Histogram, Registry, RegistryContentType } from 'prom-client'
import { type IdentityEntry, IdentityTable } from '../../src/telemetry/identity-table.ts'
import { Metrics } from '../../src/telemetry/metrics.ts'
import type { Identity, Kind, RequestEvent } from '../../src/types.ts'
import { type Target, target } from './harness.ts'
import { spawnProcess, TS_NODE_FLAGS } from './procs.ts'

type PromClient = typeof import('prom-client')

export interface PromCostOptions {
  /** distinct identities (the default identity cap is 1,000) */
  identities: number
  /** requests per variant per round of the update measurement */
  requests: number
  rounds: number
  /** scrapes per variant and scenario */
  scrapes: number
  /** the metrics updates' share of the per-request attribution budget */
  share: number
  /**
   * bench: every caller sends the bench's request (one route, 200), one request and one duration series per
   * identity, as in the throughput and memory modes; routes: three routes and four method/status pairs each
   */
  traffic: 'bench' | 'routes'
  log: (line: string) => void
}

export interface ScrapeRow {
  id: string
  label: string
  scenario: 'changed' | 'idle'
  cpuP50Ms: number
  cpuP99Ms: number
  /** the same for the main thread alone (see mainThreadNs) */
  mainP50Ms: number
  mainP99Ms: number
  wallP50Ms: number
  wallP99Ms: number
  /** main-thread GC pauses inside a scrape: the median, and those in the scrape with the most CPU */
  gcP50Ms: number
  gcOfSlowestMs: number
  bytes: number
}

export interface PromCostResult {
  startedAt: string
  machine: { cpu: string; nproc: number; node: string; loadAvg: number }
  options: Omit<PromCostOptions, 'log'>
  /** series lines of one text scrape of the hand-rendered families */
  samples: number
  /** samples per family in one text scrape each way: equal when both render the same series */
  parity: { family: string; hand: number; prom: number }[]
  update: { id: string; label: string; nsPerRequest: number; rounds: number[] }[]
  scrape: ScrapeRow[]
  budget: PerRequestBudget
  targets: Target[]
  /** true when prom-client meets every budget: then the hand-rendered families have no measured reason */
  promClientMeetsBudgets: boolean
}

export interface PerRequestBudget {
  /** CPU per request of the bare engine (b) that the throughput target is relative to */
  bareCpuUs: number
  from: string
  /** what c ≥ 0.9× b leaves for everything nhi-proxy adds: b / 0.9 − b */
  attributionUs: number
  /** the metrics updates' part of it */
  metricsUs: number
}

const SCRAPE_BUDGET_MS = 50
/** the throughput target c ≥ 0.9× b, as CPU per request */
const THROUGHPUT_TARGET = 0.9
/** b of the last full run documented in bench/README.md, when results/latest.json is missing */
const FALLBACK_BARE_CPU_US = 143.3

const SERVICE = 'checkout'
const BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
/** the bench's metrics.routes, plus what falls outside them */
const ROUTES = ['/api/v1/orders/:id', '/healthz', 'other'] as const
const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'CONNECT', 'TRACE'])

export function perRequestBudget(share: number): PerRequestBudget {
  let bareCpuUs = FALLBACK_BARE_CPU_US
  let from = 'the last full run in bench/README.md'
  try {
    const latest = JSON.parse(readFileSync(new URL('../results/latest.json', import.meta.url), 'utf8')) as {
      startedAt?: string
      configs?: { id: string; proxyCpuUs?: number }[]
    }
    const b = latest.configs?.find((c) => c.id === 'b')?.proxyCpuUs
    if (b !== undefined && b > 0) {
      bareCpuUs = b
      from = `results/latest.json of ${latest.startedAt ?? 'unknown date'}`
    }
  } catch {
    // no full run on this checkout yet: the documented one
  }
  const attributionUs = bareCpuUs / THROUGHPUT_TARGET - bareCpuUs
  return { bareCpuUs, from, attributionUs, metricsUs: attributionUs * share }
}

/** deterministic, so every run measures the same traffic */
function prng(seed: number): () => number {
  let s = seed >>> 0
  return () => {
    s = (s + 0x6d2b79f5) >>> 0
    let x = s
    x = Math.imul(x ^ (x >>> 15), x | 1)
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

const hex = (rand: () => number, chars: number) => {
  let s = ''
  while (s.length < chars)
    s += Math.floor(rand() * 0x100000000)
      .toString(16)
      .padStart(8, '0')
  return s.slice(0, chars)
}

/** 1,000 callers the way the bench's traffic and a typical mesh mix them; unverified ones stay under their cap */
function callers(n: number, nowS: number): Identity[] {
  const out: Identity[] = []
  for (let i = 0; i < n; i++) {
    const slot = i % 20
    if (slot < 14) {
      out.push({
        name: `team-${i % 40}/sa-${i}`,
        kind: 'service',
        source: 'jwt',
        verified: true,
        rule: 'kubernetes',
        attributes: {
          iss: 'https://kubernetes.default.svc',
          sub: `system:serviceaccount:team-${i % 40}:sa-${i}`,
        },
        expiresAt: nowS + 3600,
      })
    } else if (slot < 16) {
      out.push({
        name: `spiffe://cluster.local/ns/team-${i % 40}/sa/svc-${i}`,
        kind: 'service',
        source: 'mtls',
        verified: true,
        attributes: {},
        expiresAt: nowS + 86_400,
      })
    } else if (slot === 16) {
      out.push({
        name: `ci/acme/job-${i}`,
        kind: 'job',
        source: 'jwt',
        verified: true,
        attributes: {
          iss: 'https://token.actions.githubusercontent.com',
          sub: `repo:acme/job-${i}:ref:main`,
        },
        expiresAt: nowS + 600,
        expectEveryMs: 3_600_000,
      })
    } else if (slot === 17) {
      out.push({ name: `partner-${i}`, kind: 'service', source: 'apikey', verified: true, attributes: {} })
    } else {
      const kind: Kind = slot === 18 ? 'bot' : 'agent'
      out.push({ name: `ua:crawler/bot-${i}`, kind, source: 'useragent', verified: false, attributes: {} })
    }
  }
  return out
}

const BENCH_SHAPES = Array.from({ length: 8 }, () => ({ method: 'GET', route: 0, status: 200 }) as const)
/** the request shapes one caller sends, most of them the same read */
const ROUTE_SHAPES = [
  { method: 'GET', route: 0, status: 200 },
  { method: 'GET', route: 0, status: 200 },
  { method: 'GET', route: 0, status: 200 },
  { method: 'POST', route: 0, status: 201 },
  { method: 'GET', route: 1, status: 200 },
  { method: 'GET', route: 0, status: 200 },
  { method: 'GET', route: 2, status: 404 },
  { method: 'GET', route: 0, status: 200 },
] as const

type Shape = { readonly method: string; readonly route: number; readonly status: number }

/** A RequestEvent with the fields and field order RequestExchange.event() gives it on the request path. */
function requestEvent(identity: Identity, shape: Shape, rand: () => number, at: number): RequestEvent {
  const route = ROUTES[shape.route]!
  const durationMs = 0.5 + rand() * rand() * 120
  const event: RequestEvent = {
    time: at,
    traceId: hex(rand, 32),
    spanId: hex(rand, 16),
    requestId: hex(rand, 32),
    identity,
    fingerprints: identity.source === 'jwt' ? { jwt: hex(rand, 16) } : {},
    failures: [],
    anomalies: [],
    // the bench runs policy in observe mode: every request has a decision
    decision: { decision: 'allow', rule: 'default' },
    clientAddress: '10.0.0.7',
    method: shape.method,
    path: route === 'other' ? '/favicon.ico' : route.replace(':id', String(Math.floor(rand() * 1000))),
    route,
    status: shape.status,
    durationMs,
    upstreamMs: durationMs * 0.8,
    bytesIn: shape.method === 'POST' ? 300 : 0,
    bytesOut: 2 + Math.floor(rand() * 2000),
    service: SERVICE,
  }
  event.host = 'checkout.internal:8080'
  return event
}

/** per caller, one event of every shape (each with its own trace id) */
function traffic(n: number, shapes: readonly Shape[]): RequestEvent[][] {
  const rand = prng(22)
  const at = Date.now()
  return callers(n, Math.floor(at / 1000)).map((identity) =>
    shapes.map((shape) => requestEvent(identity, shape, rand, at)),
  )
}

function shuffled<T>(items: T[], rand: () => number): T[] {
  const out = [...items]
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1))
    ;[out[i], out[j]] = [out[j]!, out[i]!]
  }
  return out
}

interface Variant {
  id: string
  label: string
  table: IdentityTable
  observe(
    entry: IdentityEntry,
    event: RequestEvent,
    overflowed: boolean,
    cost: number,
    currency: string,
  ): void
  render(openMetrics: boolean): Promise<string>
}

function newTable(identities: number): IdentityTable {
  return new IdentityTable({ maxIdentities: identities, idleTtlMs: 3_600_000 })
}

function handRendered(identities: number): Variant {
  const table = newTable(identities)
  const metrics = new Metrics({ service: SERVICE, buckets: BUCKETS, version: 'bench', table })
  return {
    id: 'hand',
    label: 'hand-rendered (src/telemetry/metrics.ts)',
    table,
    observe: (entry, event, overflowed, cost, currency) =>
      metrics.observe(entry, event, overflowed, cost, currency),
    render: async (om) => (await metrics.scrape(om)).body,
  }
}

const ID_LABELS = ['service', 'identity', 'source', 'kind'] as const

/**
 * The nhi_* families as prom-client metrics: the per-identity hot families, the per-request service counters
 * and the per-identity gauges (derived from the identity table in collect(), as the hand-rendered ones are at
 * scrape time). Exemplars need an OpenMetrics registry in prom-client, so a registry serves one format.
 */
class PromFamilies implements Variant {
  readonly table: IdentityTable
  readonly registry: Registry<RegistryContentType>
  private readonly exemplars: boolean
  private readonly requests: Counter<string>
  private readonly duration: Histogram<string>
  private readonly grpc: Counter<string>
  private readonly requestBytes: Counter<string>
  private readonly responseBytes: Counter<string>
  private readonly upstreamSeconds: Counter<string>
  private readonly cost: Counter<string>
  private readonly overflow: Counter<string>
  private readonly authFailures: Counter<string>
  private readonly anomalies: Counter<string>
  private readonly policyDecisions: Counter<string>
  private readonly upstreamErrors: Counter<string>

  constructor(
    prom: PromClient,
    identities: number,
    readonly id: string,
    readonly label: string,
    openMetrics: boolean,
  ) {
    const table = newTable(identities)
    this.table = table
    this.registry = new prom.Registry<RegistryContentType>()
    if (openMetrics) this.registry.setContentType(prom.Registry.OPENMETRICS_CONTENT_TYPE)
    this.exemplars = openMetrics
    const registers = [this.registry]
    const counter = (name: string, help: string, labelNames: readonly string[], enableExemplars = false) =>
      new prom.Counter({ name, help, labelNames, registers, enableExemplars })
    const perIdentity = (name: string, help: string, extra: string[] = [], enableExemplars = false) =>
      counter(name, help, [...ID_LABELS, ...extra], enableExemplars)
    this.requests = perIdentity(
      'nhi_requests_total',
      'Requests by identity',
      ['verified', 'method', 'route', 'code'],
      this.exemplars,
    )
    this.duration = new prom.Histogram({
      name: 'nhi_request_duration_seconds',
      help: 'Request duration by identity, from first byte in to last byte out',
      labelNames: [...ID_LABELS, 'route'],
      buckets: BUCKETS,
      registers,
      enableExemplars: this.exemplars,
    })
    this.grpc = perIdentity('nhi_grpc_requests_total', 'gRPC calls by identity', ['route', 'grpc_status'])
    this.requestBytes = perIdentity('nhi_request_bytes_total', 'Request body bytes received by identity')
    this.responseBytes = perIdentity('nhi_response_bytes_total', 'Response body bytes sent by identity')
    this.upstreamSeconds = perIdentity('nhi_upstream_seconds_total', 'Time the upstream spent on requests')
    this.cost = perIdentity('nhi_cost_total', 'Modelled cost of the traffic by identity', ['currency'])
    this.overflow = counter('nhi_identity_overflow_total', 'Requests recorded as __overflow__', ['service'])
    this.authFailures = counter('nhi_auth_failures_total', 'Presented credentials that did not check out', [
      'service',
      'source',
      'reason',
    ])
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
    this.overflow.inc({ service: SERVICE }, 0)

    const gauge = (
      name: string,
      help: string,
      labelNames: readonly string[],
      fill: (g: Gauge<string>, entries: IdentityEntry[]) => void,
    ) =>
      new prom.Gauge({
        name,
        help,
        labelNames,
        registers,
        collect() {
          this.reset()
          fill(this, [...table.values()])
        },
      })
    const ids = (e: IdentityEntry) => ({ service: SERVICE, identity: e.name, source: e.source })
    gauge('nhi_identities', 'Identities currently tracked, by kind', ['service', 'kind'], (g, entries) => {
      const kinds = new Map<Kind, number>()
      for (const e of entries) if (!e.overflow) kinds.set(e.kind, (kinds.get(e.kind) ?? 0) + 1)
      for (const [kind, n] of kinds) g.set({ service: SERVICE, kind }, n)
    })
    gauge(
      'nhi_identity_last_seen_timestamp_seconds',
      'Last request of an identity',
      ID_LABELS,
      (g, entries) => {
        for (const e of entries) g.set({ ...ids(e), kind: e.kind }, e.lastSeen / 1000)
      },
    )
    gauge(
      'nhi_credential_expiry_timestamp_seconds',
      'Earliest expiry among the credentials an identity presented in the last 5 to 10 minutes',
      ['service', 'identity', 'source'],
      (g, entries) => {
        const now = Date.now()
        for (const e of entries) {
          const expiry = e.expiry.earliest(now)
          if (expiry !== undefined) g.set(ids(e), expiry)
        }
      },
    )
    const jobs = (entries: IdentityEntry[]) => entries.filter((e) => e.kind === 'job' && !e.overflow)
    gauge(
      'nhi_job_last_success_timestamp_seconds',
      'Last successful request of a job identity',
      ['service', 'identity', 'source'],
      (g, entries) => {
        for (const e of jobs(entries)) if (e.lastSuccess !== undefined) g.set(ids(e), e.lastSuccess / 1000)
      },
    )
    gauge(
      'nhi_job_consecutive_failures',
      'Failed requests of a job identity since its last success',
      ['service', 'identity', 'source'],
      (g, entries) => {
        for (const e of jobs(entries)) g.set(ids(e), e.consecutiveFailures)
      },
    )
    gauge(
      'nhi_job_expected_interval_seconds',
      'expectEvery of the rule a job identity matched',
      ['service', 'identity', 'source'],
      (g, entries) => {
        for (const e of jobs(entries)) if (e.expectEveryMs) g.set(ids(e), e.expectEveryMs / 1000)
      },
    )
  }

  /** what Metrics.observe records, label objects built per request as prom-client's API takes them */
  observe(
    entry: IdentityEntry,
    event: RequestEvent,
    overflowed: boolean,
    cost: number,
    currency: string,
  ): void {
    const kind = event.identity.kind
    const identity = entry.name
    const source = entry.source
    const route = event.route
    const requests = {
      service: SERVICE,
      identity,
      source,
      kind,
      verified: event.identity.verified ? 'true' : 'false',
      method: METHODS.has(event.method) ? event.method : 'OTHER',
      route,
      code: String(event.status),
    }
    const duration = { service: SERVICE, identity, source, kind, route }
    const seconds = event.durationMs / 1000
    if (this.exemplars && event.traceId !== '') {
      const exemplarLabels = { trace_id: event.traceId }
      this.requests.inc({ labels: requests, value: 1, exemplarLabels })
      this.duration.observe({ labels: duration, value: seconds, exemplarLabels })
    } else if (this.exemplars) {
      this.requests.inc({ labels: requests, value: 1 })
      this.duration.observe({ labels: duration, value: seconds })
    } else {
      this.requests.inc(requests, 1)
      this.duration.observe(duration, seconds)
    }
    const perKind = { service: SERVICE, identity, source, kind }
    if (event.grpcStatus !== undefined) {
      this.grpc.inc({ ...perKind, route, grpc_status: String(event.grpcStatus) }, 1)
    }
    if (event.bytesIn > 0) this.requestBytes.inc(perKind, event.bytesIn)
    if (event.bytesOut > 0) this.responseBytes.inc(perKind, event.bytesOut)
    if (event.upstreamMs > 0) this.upstreamSeconds.inc(perKind, event.upstreamMs / 1000)
    if (cost > 0) this.cost.inc({ ...perKind, currency }, cost)
    if (overflowed) this.overflow.inc({ service: SERVICE }, 1)
    for (const f of event.failures)
      this.authFailures.inc({ service: SERVICE, source: f.source, reason: f.reason })
    for (const type of event.anomalies) this.anomalies.inc({ service: SERVICE, type })
    if (!event.decision.skipped) {
      this.policyDecisions.inc({
        service: SERVICE,
        decision: event.decision.decision,
        rule: event.decision.rule,
      })
    }
    if (event.upstreamError) this.upstreamErrors.inc({ service: SERVICE, reason: event.upstreamError })
  }

  render(): Promise<string> {
    return this.registry.metrics()
  }
}

const PARITY_FAMILIES = [
  'nhi_requests_total',
  'nhi_request_duration_seconds_bucket',
  'nhi_request_duration_seconds_count',
  'nhi_request_bytes_total',
  'nhi_response_bytes_total',
  'nhi_upstream_seconds_total',
  'nhi_policy_decisions_total',
  'nhi_identity_last_seen_timestamp_seconds',
  'nhi_credential_expiry_timestamp_seconds',
  'nhi_job_consecutive_failures',
]

function countSamples(body: string, family: string): number {
  let n = 0
  for (const line of body.split('\n')) if (line.startsWith(`${family}{`) || line.startsWith(`${family} `)) n++
  return n
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!
}

const median = (xs: number[]) =>
  percentile(
    [...xs].sort((a, b) => a - b),
    50,
  )

/** CPU of this process (all its threads, so GC helpers count) per request, in ns */
function timeUpdates(v: Variant, events: RequestEvent[], n: number): number {
  const table = v.table
  const before = process.cpuUsage()
  for (let i = 0; i < n; i++) {
    const event = events[i % events.length]!
    const { entry, overflowed } = table.admit(event.identity, event.time)
    v.observe(entry, event, overflowed, 0, 'USD')
  }
  const used = process.cpuUsage(before)
  return ((used.user + used.system) * 1000) / n
}

function feed(v: Variant, events: readonly RequestEvent[]): void {
  for (const event of events) {
    const { entry, overflowed } = v.table.admit(event.identity, event.time)
    v.observe(entry, event, overflowed, 0, 'USD')
  }
}

/**
 * On-CPU time of this thread (the event loop's), in ns, from the scheduler's account; NaN where there is no
 * /proc. process.cpuUsage() adds V8's background threads (concurrent marking and sweeping, on the other
 * core): CPU the machine spends, but not time the event loop is blocked.
 */
function mainThreadNs(): number {
  try {
    return Number(readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ')[0])
  } catch {
    return Number.NaN
  }
}

async function timeScrapes(
  v: Variant,
  openMetrics: boolean,
  scenario: 'changed' | 'idle',
  byCaller: RequestEvent[][],
  scrapes: number,
): Promise<Omit<ScrapeRow, 'id' | 'label'>> {
  const cpu: number[] = []
  const main: number[] = []
  const wall: number[] = []
  const windows: [start: number, end: number][] = []
  const pauses: PerformanceEntry[] = []
  // GC pauses of the main thread, to tell a scrape's own work from the collections that land in it
  const gc = new PerformanceObserver((list) => {
    pauses.push(...list.getEntries())
  })
  gc.observe({ entryTypes: ['gc'] })
  let bytes = 0
  // one scrape first, so "idle" means unchanged since a scrape and the first timed one is not a cold start
  await v.render(openMetrics)
  for (let i = 0; i < scrapes; i++) {
    if (scenario === 'changed')
      feed(
        v,
        byCaller.map((shapes) => shapes[i % shapes.length]!),
      )
    const cpuBefore = process.cpuUsage()
    const mainBefore = mainThreadNs()
    const wallBefore = performance.now()
    const body = await v.render(openMetrics)
    const wallAfter = performance.now()
    main.push((mainThreadNs() - mainBefore) / 1e6)
    wall.push(wallAfter - wallBefore)
    const used = process.cpuUsage(cpuBefore)
    cpu.push((used.user + used.system) / 1000)
    windows.push([wallBefore, wallAfter])
    bytes = Buffer.byteLength(body)
  }
  // the observer's entries arrive on a later turn of the event loop than the pauses they describe
  await new Promise((resolve) => setTimeout(resolve, 50))
  gc.disconnect()
  const gcIn = windows.map(([start, end]) =>
    pauses.filter((p) => p.startTime >= start && p.startTime < end).reduce((sum, p) => sum + p.duration, 0),
  )
  const slowest = cpu.indexOf(Math.max(...cpu))
  const gcSorted = [...gcIn].sort((a, b) => a - b)
  cpu.sort((a, b) => a - b)
  main.sort((a, b) => a - b)
  wall.sort((a, b) => a - b)
  return {
    scenario,
    cpuP50Ms: percentile(cpu, 50),
    cpuP99Ms: percentile(cpu, 99),
    mainP50Ms: percentile(main, 50),
    mainP99Ms: percentile(main, 99),
    wallP50Ms: percentile(wall, 50),
    wallP99Ms: percentile(wall, 99),
    gcP50Ms: percentile(gcSorted, 50),
    gcOfSlowestMs: gcIn[slowest] ?? 0,
    bytes,
  }
}

export interface ScrapeJob {
  variant: 'hand' | 'prom-om' | 'prom-text'
  identities: number
  traffic: PromCostOptions['traffic']
  scrapes: number
  formats: boolean[]
}

export type ChildScrapeRow = Omit<ScrapeRow, 'id' | 'label'> & { openMetrics: boolean }

function variantOf(prom: PromClient, job: ScrapeJob): Variant {
  if (job.variant === 'hand') return handRendered(job.identities)
  return job.variant === 'prom-om'
    ? new PromFamilies(prom, job.identities, 'prom-om', 'prom-client, trace_id exemplars', true)
    : new PromFamilies(prom, job.identities, 'prom-text', 'prom-client, no exemplars', false)
}

/**
 * The scrape half of the mode for one variant, in the process that runs it (lib/prom-scrape.ts): a heap
 * holding that variant alone, as a sidecar's does. Measured in the process that had run every variant, a
 * hand-rendered scrape's CPU was twice its wall time: V8's concurrent marking of the other variants'
 * objects (prom-client's two registries of 1,000 identities) ran on the other core during the scrape.
 */
export async function measureScrapes(job: ScrapeJob): Promise<ChildScrapeRow[]> {
  const prom = ((await import('prom-client')) as unknown as { default: PromClient }).default
  const byCaller = traffic(job.identities, job.traffic === 'routes' ? ROUTE_SHAPES : BENCH_SHAPES)
  const v = variantOf(prom, job)
  // every series exists and the code is optimised before anything is timed
  const pool = shuffled(byCaller.flat(), prng(9))
  for (let i = 0; i < 5; i++) feed(v, pool)
  const rows: ChildScrapeRow[] = []
  for (const scenario of ['changed', 'idle'] as const)
    for (const openMetrics of job.formats)
      rows.push({ openMetrics, ...(await timeScrapes(v, openMetrics, scenario, byCaller, job.scrapes)) })
  return rows
}

const SCRAPE_CHILD = fileURLToPath(new URL('./prom-scrape.ts', import.meta.url))
const ORPHAN_GUARD = fileURLToPath(new URL('../orphan-guard.mjs', import.meta.url))

async function scrapesInOwnProcess(job: ScrapeJob): Promise<ChildScrapeRow[]> {
  const child = spawnProcess(
    `prom scrape ${job.variant}`,
    process.execPath,
    [...TS_NODE_FLAGS, '--import', ORPHAN_GUARD, SCRAPE_CHILD, JSON.stringify(job)],
    { stdout: 'pipe' },
  )
  let out = ''
  child.child.stdout?.setEncoding('utf8')
  child.child.stdout?.on('data', (s: string) => {
    out += s
  })
  const [code] = (await once(child.child, 'exit')) as [number | null]
  if (code !== 0) throw new Error(`prom mode: ${child.name} exited with ${code}: ${child.stderrTail()}`)
  return JSON.parse(out) as ChildScrapeRow[]
}

export async function runPromCost(opts: PromCostOptions): Promise<PromCostResult> {
  const { log } = opts
  const startedAt = new Date().toISOString()
  const prom = ((await import('prom-client')) as unknown as { default: PromClient }).default
  const byCaller = traffic(opts.identities, opts.traffic === 'routes' ? ROUTE_SHAPES : BENCH_SHAPES)
  const pool = shuffled(byCaller.flat(), prng(9))

  const hand = handRendered(opts.identities)
  const promOm = new PromFamilies(
    prom,
    opts.identities,
    'prom-om',
    'prom-client, trace_id exemplars (OpenMetrics registry)',
    true,
  )
  const promText = new PromFamilies(
    prom,
    opts.identities,
    'prom-text',
    'prom-client, no exemplars (text registry)',
    false,
  )
  const variants: Variant[] = [hand, promOm, promText]

  // every series exists and the code is optimised before anything is timed
  for (const v of variants) for (let i = 0; i < 3; i++) feed(v, pool)
  log(`update cost: ${opts.rounds} round(s) × ${opts.requests.toLocaleString('en')} requests per variant`)
  const rounds = new Map<string, number[]>(variants.map((v) => [v.id, []]))
  for (let r = 0; r < opts.rounds; r++) {
    // the order rotates, so a slow moment of the machine does not always hit the same variant
    for (let k = 0; k < variants.length; k++) {
      const v = variants[(r + k) % variants.length]!
      rounds.get(v.id)!.push(timeUpdates(v, pool, opts.requests))
    }
  }
  const update = variants.map((v) => ({
    id: v.id,
    label: v.label,
    nsPerRequest: median(rounds.get(v.id)!),
    rounds: rounds.get(v.id)!,
  }))

  log(
    `scrape cost: ${opts.scrapes} scrapes per variant, format and scenario, each variant in a process of its own`,
  )
  const scrape: ScrapeRow[] = []
  const cases: [Variant, boolean, string][] = [
    [hand, false, 'hand-rendered, Prometheus text'],
    [promText, false, 'prom-client, Prometheus text'],
    [hand, true, 'hand-rendered, OpenMetrics with exemplars'],
    [promOm, true, 'prom-client, OpenMetrics with exemplars'],
  ]
  const measured = new Map<string, ChildScrapeRow[]>()
  for (const v of variants) {
    const formats = cases.filter(([c]) => c === v).map(([, om]) => om)
    measured.set(
      v.id,
      await scrapesInOwnProcess({
        variant: v.id as ScrapeJob['variant'],
        identities: opts.identities,
        traffic: opts.traffic,
        scrapes: opts.scrapes,
        formats,
      }),
    )
  }
  for (const scenario of ['changed', 'idle'] as const) {
    for (const [v, om, label] of cases) {
      const found = measured.get(v.id)!.find((r) => r.scenario === scenario && r.openMetrics === om)
      if (!found) throw new Error(`prom mode: no ${scenario} scrape row for ${v.id}`)
      const { openMetrics: _, ...row } = found
      scrape.push({ id: `${v.id}${om ? '-om' : '-text'}`, label, ...row })
    }
  }
  const handText = await hand.render(false)
  const promTextBody = await promText.render()
  const samples = handText.split('\n').filter((l) => l !== '' && !l.startsWith('#')).length
  // both ways must render the same series, or the comparison compares different work
  const parity = PARITY_FAMILIES.map((family) => ({
    family,
    hand: countSamples(handText, family),
    prom: countSamples(promTextBody, family),
  }))

  const budget = perRequestBudget(opts.share)
  const us = (id: string) => update.find((u) => u.id === id)!.nsPerRequest / 1000
  // CPU, not wall time: on shared cores the wall time of a scrape includes other processes' time slices.
  // The event-loop thread's CPU where /proc has it: the process's adds V8's concurrent GC threads, which
  // run on the other core beside the scrape instead of blocking it (both are in the table)
  const worstP99 = (who: 'hand' | 'prom') =>
    Math.max(
      ...scrape
        .filter((s) => s.label.startsWith(who))
        .map((s) => (Number.isFinite(s.mainP99Ms) ? s.mainP99Ms : s.cpuP99Ms)),
    )
  const threadCpu = scrape.every((s) => Number.isFinite(s.mainP99Ms))
  const shareNote = (x: number) =>
    `${((100 * x) / budget.attributionUs).toFixed(0)} % of the ${budget.attributionUs.toFixed(1)} µs attribution budget, ${((100 * x) / (budget.bareCpuUs / THROUGHPUT_TARGET)).toFixed(1)} % of c's whole ${(budget.bareCpuUs / THROUGHPUT_TARGET).toFixed(0)} µs`
  const perRequest = `update ≤ ${budget.metricsUs.toFixed(1)} µs/req (${Math.round(opts.share * 100)} % of b/0.9 − b)`
  const scrapeName = `scrape p99 ≤ ${SCRAPE_BUDGET_MS} ms at ${opts.identities.toLocaleString('en')} identities (${threadCpu ? 'CPU of the event-loop thread' : 'CPU'}, both formats, changed and idle)`
  const goal = Number(budget.metricsUs.toFixed(1))
  const targets = [
    target(`prom-client ${perRequest}`, us('prom-om'), goal, 'max', 'µs', shareNote(us('prom-om'))),
    target(`prom-client ${scrapeName}`, worstP99('prom'), SCRAPE_BUDGET_MS, 'max', 'ms'),
    target(`hand-rendered ${perRequest}`, us('hand'), goal, 'max', 'µs', shareNote(us('hand'))),
    target(`hand-rendered ${scrapeName}`, worstP99('hand'), SCRAPE_BUDGET_MS, 'max', 'ms'),
  ]
  return {
    startedAt,
    machine: {
      cpu: cpus()[0]?.model ?? 'unknown',
      nproc: cpus().length,
      node: process.version,
      loadAvg: loadavg()[0]!,
    },
    options: {
      identities: opts.identities,
      requests: opts.requests,
      rounds: opts.rounds,
      scrapes: opts.scrapes,
      share: opts.share,
      traffic: opts.traffic,
    },
    samples,
    parity,
    update,
    scrape,
    budget,
    targets,
    promClientMeetsBudgets: targets.filter((t) => t.name.startsWith('prom-client')).every((t) => t.pass),
  }
}

const f = (n: number, digits = 2) => (Number.isFinite(n) ? n.toFixed(digits) : '—')

export function promCostMarkdown(r: PromCostResult, targetLine: (t: Target) => string): string {
  const b = r.budget
  const o = r.options
  const lines = [
    `# prom-client vs hand-rendered nhi_* families — ${r.startedAt}`,
    '',
    `Machine: ${r.machine.nproc} × ${r.machine.cpu}, Node ${r.machine.node}; load average ${r.machine.loadAvg.toFixed(1)} at start.`,
    `In-process: ${o.identities.toLocaleString('en')} identities (${o.traffic === 'routes' ? 'three routes and four method/status pairs per identity' : "the bench's request: one route, 200"}), ${r.samples.toLocaleString('en')} samples in a text scrape of the hand-rendered families; ${o.rounds} round(s) × ${o.requests.toLocaleString('en')} requests per variant; ${o.scrapes} scrapes per row.`,
    '',
    '## Per-request update (identity admission + every nhi_* update one request makes)',
    '',
    '| variant | CPU ns/request (median) | … per round | vs hand-rendered |',
    '|---|---:|---:|---:|',
    ...r.update.map(
      (u) =>
        `| ${u.label} | ${f(u.nsPerRequest, 0)} | ${u.rounds.map((x) => x.toFixed(0)).join(' / ')} | ${f(u.nsPerRequest / r.update[0]!.nsPerRequest)}× |`,
    ),
    '',
    `Same series both ways (samples per family in a text scrape, hand-rendered / prom-client): ${r.parity.map((p) => `${p.family} ${p.hand}/${p.prom}`).join(', ')}.`,
    '',
    '## Scrape (render /metrics)',
    '',
    '| variant | since last scrape | CPU p50 ms | CPU p99 ms | main thread CPU p50 / p99 ms | wall p50 ms | wall p99 ms | GC pauses p50 / in the CPU p99 scrape, ms | bytes |',
    '|---|---|---:|---:|---:|---:|---:|---:|---:|',
    ...r.scrape.map(
      (s) =>
        `| ${s.label} | ${s.scenario === 'changed' ? 'every identity had a request' : 'idle'} | ${f(s.cpuP50Ms)} | ${f(s.cpuP99Ms)} | ${f(s.mainP50Ms)} / ${f(s.mainP99Ms)} | ${f(s.wallP50Ms)} | ${f(s.wallP99Ms)} | ${f(s.gcP50Ms, 1)} / ${f(s.gcOfSlowestMs, 1)} | ${s.bytes.toLocaleString('en')} |`,
    ),
    '',
    '## Budgets',
    '',
    `Per-request CPU budget: c ≥ ${THROUGHPUT_TARGET}× b leaves b / ${THROUGHPUT_TARGET} − b = ${f(b.attributionUs, 1)} µs per request for everything nhi-proxy adds to the bare engine (b = ${f(b.bareCpuUs, 1)} µs, ${b.from}); the metrics updates' share is ${Math.round(o.share * 100)} % of it = ${f(b.metricsUs, 1)} µs. Scrape budget: ${SCRAPE_BUDGET_MS} ms of the event-loop thread's CPU at the p99 (the slowest of ${o.scrapes}); the process's CPU, which adds V8's concurrent GC threads on the other core, is the column beside it.`,
    '',
    '```',
    ...r.targets.map(targetLine),
    '```',
    '',
    r.promClientMeetsBudgets
      ? '**Decision rule "hand-rendered stays only if prom-client misses a budget": PASS for prom-client — it meets both budgets, so the measurement gives no reason to keep the hand-rendered families.**'
      : `**Decision rule "hand-rendered stays only if prom-client misses a budget": prom-client MISSES (${r.targets
          .filter((t) => t.name.startsWith('prom-client') && !t.pass)
          .map((t) => t.name.replace(/^prom-client /, ''))
          .join(
            '; ',
          )}) — the hand-rendered families stay, appended to prom-client's registry output on /metrics.**`,
    '',
  ]
  return lines.join('\n')
}
