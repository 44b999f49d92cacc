// `nhi-proxy fleet --prometheus URL`: the cross-service picture from the nhi_* series of every sidecar, read
// from Prometheus instant queries (never from the pods): identity → service edges (the `service` label is the
// callee), human vs machine share per service, failing and silent jobs, credentials about to expire, cost per
// identity, unverified non-human callers.
import type { Out } from './check.ts'
import {
  ERROR_CODES,
  humanSeconds,
  isoSeconds,
  PromError,
  PrometheusClient,
  promDuration,
  prometheusBase,
  renderTable,
  type Sample,
  windowIncrease,
} from './prometheus-api.ts'

export interface FleetOptions {
  prometheus: string
  /** window, ms */
  window: number
  /** credentials expiring within this are listed, ms */
  expiringWithin: number
  /** per query, ms */
  timeout: number
  json: boolean
  /** evaluation time (s); default now */
  time?: number
}

export interface Edge {
  identity: string
  kind: string
  service: string
  requests: number
  errors: number
  /** false when any of these requests was unverified */
  verified: boolean
}

export interface ServiceShare {
  service: string
  requests: number
  human: number
  machine: number
  unknown: number
  /** machine / requests (null without requests) */
  machineShare: number | null
  callers: number
}

export interface JobState {
  identity: string
  services: string[]
  consecutiveFailures: number
  lastSuccess: string | null
  expectedIntervalSeconds: number | null
  overdueSeconds: number | null
}

export interface Fleet {
  prometheus: string
  time: string
  window: string
  /** what Prometheus warned of while answering (a partial response): the picture may be incomplete */
  warnings: string[]
  services: ServiceShare[]
  edges: Edge[]
  failingJobs: JobState[]
  silentJobs: JobState[]
  expiringCredentials: {
    identity: string
    service: string
    source: string
    expires: string
    inSeconds: number
  }[]
  cost: { identity: string; kind: string; currency: string; cost: number }[]
  unverifiedCallers: { identity: string; kind: string; services: string[]; requests: number }[]
}

const MACHINE = new Set(['service', 'job', 'bot', 'agent'])

/** The PromQL `fleet` runs (documented in docs/reference.md). */
export function fleetQueries(w: string): Record<string, string> {
  return {
    edges: `sum by (identity, kind, service, verified) (${windowIncrease('nhi_requests_total{identity!="__overflow__"}', w)})`,
    overflow: `sum by (service, kind) (${windowIncrease('nhi_requests_total{identity="__overflow__"}', w)})`,
    errors: `sum by (identity, kind, service) (${windowIncrease(`nhi_requests_total{identity!="__overflow__",code=~"${ERROR_CODES}"}`, w)})`,
    failures: `max by (service, identity) (last_over_time(nhi_job_consecutive_failures[${w}]))`,
    interval: `max by (identity) (last_over_time(nhi_job_expected_interval_seconds[${w}]))`,
    lastSuccess: `max by (identity) (max_over_time(nhi_job_last_success_timestamp_seconds[${w}]))`,
    jobsSeen: `max by (service, identity) (max_over_time(nhi_identity_last_seen_timestamp_seconds{kind="job"}[${w}]))`,
    jobsFirstSeen: `min by (identity) (min_over_time(nhi_identity_last_seen_timestamp_seconds{kind="job"}[${w}]))`,
    expiry: `min by (service, identity, source) (last_over_time(nhi_credential_expiry_timestamp_seconds[${w}]))`,
    cost: `sum by (identity, kind, currency) (${windowIncrease('nhi_cost_total', w)}) > 0`,
  }
}

const round = (n: number, digits = 0) => Math.round(n * 10 ** digits) / 10 ** digits
const label = (s: Sample, name: string) => s.labels[name] ?? ''

export async function buildFleet(o: FleetOptions): Promise<Fleet> {
  const client = new PrometheusClient(prometheusBase(o.prometheus), o.timeout, o.time)
  const w = promDuration(o.window)
  const q = fleetQueries(w)
  const names = Object.keys(q)
  const results = await Promise.all(names.map((n) => client.query(q[n]!)))
  const r = Object.fromEntries(names.map((n, i) => [n, results[i]!])) as Record<string, Sample[]>
  const now = client.time

  const edges = new Map<string, Edge>()
  const edgeKey = (s: Sample) =>
    `${label(s, 'identity')}\u0000${label(s, 'kind')}\u0000${label(s, 'service')}`
  for (const s of r['edges']!) {
    const key = edgeKey(s)
    let e = edges.get(key)
    if (!e) {
      e = {
        identity: label(s, 'identity'),
        kind: label(s, 'kind'),
        service: label(s, 'service'),
        requests: 0,
        errors: 0,
        verified: true,
      }
      edges.set(key, e)
    }
    e.requests += s.value
    if (label(s, 'verified') === 'false') e.verified = false
  }
  for (const s of r['errors']!) {
    const e = edges.get(edgeKey(s))
    if (e) e.errors += s.value
  }
  for (const e of edges.values()) {
    e.requests = Math.round(e.requests)
    e.errors = Math.min(e.requests, Math.round(e.errors))
  }
  const edgeList = [...edges.values()]
    .filter((e) => e.requests > 0)
    .sort(
      (a, b) =>
        a.service.localeCompare(b.service) ||
        a.identity.localeCompare(b.identity) ||
        a.kind.localeCompare(b.kind),
    )

  const shares = new Map<string, ServiceShare>()
  const share = (service: string) => {
    let s = shares.get(service)
    if (!s) {
      s = { service, requests: 0, human: 0, machine: 0, unknown: 0, machineShare: null, callers: 0 }
      shares.set(service, s)
    }
    return s
  }
  const count = (s: ServiceShare, kind: string, n: number) => {
    s.requests += n
    if (kind === 'human') s.human += n
    else if (MACHINE.has(kind)) s.machine += n
    else s.unknown += n
  }
  for (const e of edgeList) {
    const s = share(e.service)
    s.callers++
    count(s, e.kind, e.requests)
  }
  for (const o of r['overflow']!) count(share(label(o, 'service')), label(o, 'kind'), Math.round(o.value))
  const services = [...shares.values()]
    .map((s) => ({ ...s, machineShare: s.requests > 0 ? round(s.machine / s.requests, 4) : null }))
    .sort((a, b) => a.service.localeCompare(b.service))

  // jobs: one state per identity across the sidecars it calls
  const intervals = new Map(r['interval']!.map((s) => [label(s, 'identity'), s.value]))
  const successes = new Map(r['lastSuccess']!.map((s) => [label(s, 'identity'), s.value]))
  const firstSeen = new Map(r['jobsFirstSeen']!.map((s) => [label(s, 'identity'), s.value]))
  const jobs = new Map<string, { services: Set<string>; failures: number }>()
  const job = (identity: string) => {
    let j = jobs.get(identity)
    if (!j) {
      j = { services: new Set(), failures: 0 }
      jobs.set(identity, j)
    }
    return j
  }
  for (const s of r['jobsSeen']!) job(label(s, 'identity')).services.add(label(s, 'service'))
  for (const s of r['failures']!) {
    const j = job(label(s, 'identity'))
    j.services.add(label(s, 'service'))
    j.failures = Math.max(j.failures, s.value)
  }
  const jobStates: JobState[] = [...jobs.entries()]
    .map(([identity, j]) => {
      const interval = intervals.get(identity)
      const success = successes.get(identity)
      // a job that has not succeeded yet is overdue once its interval has passed since it first showed up
      // (as `inventory` counts it): a job deployed an hour ago that runs daily is not silent
      const since = success ?? firstSeen.get(identity)
      const overdue =
        interval !== undefined && interval > 0 && since !== undefined
          ? Math.max(0, now - since - interval)
          : undefined
      return {
        identity,
        services: [...j.services].sort(),
        consecutiveFailures: j.failures,
        lastSuccess: isoSeconds(success) ?? null,
        expectedIntervalSeconds: interval ?? null,
        overdueSeconds: overdue === undefined ? null : round(overdue),
      }
    })
    .sort((a, b) => a.identity.localeCompare(b.identity))
  const failingJobs = jobStates.filter((j) => j.consecutiveFailures > 0)
  const silentJobs = jobStates.filter(
    (j) =>
      j.expectedIntervalSeconds !== null &&
      j.expectedIntervalSeconds > 0 &&
      (j.overdueSeconds === null || j.overdueSeconds > 0),
  )

  const expiringCredentials = r['expiry']!.filter((s) => s.value - now <= o.expiringWithin / 1000)
    .map((s) => ({
      identity: label(s, 'identity'),
      service: label(s, 'service'),
      source: label(s, 'source'),
      expires: isoSeconds(s.value) ?? '',
      inSeconds: round(s.value - now),
    }))
    .sort((a, b) => a.inSeconds - b.inSeconds || a.identity.localeCompare(b.identity))

  const cost = r['cost']!.map((s) => ({
    identity: label(s, 'identity'),
    kind: label(s, 'kind'),
    currency: label(s, 'currency'),
    cost: round(s.value, 6),
  })).sort((a, b) => b.cost - a.cost || a.identity.localeCompare(b.identity))

  const unverified = new Map<
    string,
    { identity: string; kind: string; services: Set<string>; requests: number }
  >()
  for (const e of edgeList) {
    if (e.verified || e.kind === 'human') continue
    const key = `${e.identity}\u0000${e.kind}`
    let u = unverified.get(key)
    if (!u) {
      u = { identity: e.identity, kind: e.kind, services: new Set(), requests: 0 }
      unverified.set(key, u)
    }
    u.services.add(e.service)
    u.requests += e.requests
  }
  const unverifiedCallers = [...unverified.values()]
    .map((u) => ({ ...u, services: [...u.services].sort() }))
    .sort((a, b) => a.identity.localeCompare(b.identity))

  return {
    prometheus: client.base,
    time: isoSeconds(now) ?? '',
    window: w,
    warnings: client.warnings,
    services,
    edges: edgeList,
    failingJobs,
    silentJobs,
    expiringCredentials,
    cost,
    unverifiedCallers,
  }
}

export function printFleet(f: Fleet, out: Out): void {
  out(`Fleet over the last ${f.window} (Prometheus ${f.prometheus}, at ${f.time})`)
  for (const w of f.warnings) out(`warning: Prometheus: ${w} (the picture may be incomplete)`)
  const section = (title: string, rows: string[][], empty: string) => {
    out('')
    out(`${title}:`)
    if (rows.length <= 1) out(`  ${empty}`)
    else for (const line of renderTable(rows)) out(`  ${line}`)
  }
  const pct = (x: number | null) => (x === null ? '-' : `${(x * 100).toFixed(1)}%`)
  section(
    'Services (callee)',
    [
      ['SERVICE', 'REQUESTS', 'CALLERS', 'HUMAN', 'MACHINE', 'UNKNOWN', 'MACHINE SHARE'],
      ...f.services.map((s) => [
        s.service,
        String(s.requests),
        String(s.callers),
        String(s.human),
        String(s.machine),
        String(s.unknown),
        pct(s.machineShare),
      ]),
    ],
    'no requests in the window (is Prometheus scraping the sidecars?)',
  )
  section(
    'Edges (identity → service)',
    [
      ['IDENTITY', 'KIND', 'SERVICE', 'REQUESTS', 'ERRORS', 'VERIFIED'],
      ...f.edges.map((e) => [
        e.identity,
        e.kind,
        e.service,
        String(e.requests),
        String(e.errors),
        e.verified ? 'yes' : 'no',
      ]),
    ],
    'none',
  )
  section(
    'Failing jobs',
    [
      ['JOB', 'SERVICES', 'CONSECUTIVE FAILURES', 'LAST SUCCESS'],
      ...f.failingJobs.map((j) => [
        j.identity,
        j.services.join(','),
        String(j.consecutiveFailures),
        j.lastSuccess ?? 'never',
      ]),
    ],
    'none',
  )
  section(
    'Silent jobs (past their expected interval)',
    [
      ['JOB', 'SERVICES', 'EXPECTED EVERY', 'LAST SUCCESS', 'OVERDUE BY'],
      ...f.silentJobs.map((j) => [
        j.identity,
        j.services.join(','),
        humanSeconds(j.expectedIntervalSeconds ?? 0),
        j.lastSuccess ?? 'never',
        j.lastSuccess === null ? '-' : humanSeconds(j.overdueSeconds ?? 0),
      ]),
    ],
    'none',
  )
  section(
    'Credentials expiring soon',
    [
      ['IDENTITY', 'SERVICE', 'SOURCE', 'EXPIRES', 'IN'],
      ...f.expiringCredentials.map((c) => [
        c.identity,
        c.service,
        c.source,
        c.expires,
        c.inSeconds < 0 ? `expired ${humanSeconds(-c.inSeconds)} ago` : humanSeconds(c.inSeconds),
      ]),
    ],
    'none',
  )
  section(
    'Cost per identity',
    [['IDENTITY', 'KIND', 'COST'], ...f.cost.map((c) => [c.identity, c.kind, `${c.cost} ${c.currency}`])],
    'none (no cost model configured, or no traffic)',
  )
  section(
    'Unverified non-human callers',
    [
      ['IDENTITY', 'KIND', 'SERVICES', 'REQUESTS'],
      ...f.unverifiedCallers.map((u) => [u.identity, u.kind, u.services.join(','), String(u.requests)]),
    ],
    'none',
  )
}

export async function runFleet(o: FleetOptions, out: Out, err: Out): Promise<number> {
  try {
    const fleet = await buildFleet(o)
    // the table carries them itself (as the --serve page does)
    if (o.json) for (const w of fleet.warnings) err(`nhi-proxy: warning: Prometheus: ${w}`)
    if (o.json) out(JSON.stringify(fleet, null, 2))
    else printFleet(fleet, out)
    return 0
  } catch (e) {
    if (e instanceof PromError) {
      err(`nhi-proxy: ${e.message}`)
      return e.exitCode
    }
    throw e
  }
}
