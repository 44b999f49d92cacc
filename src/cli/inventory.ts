// `nhi-proxy inventory --prometheus URL`: every non-human identity the fleet's sidecars saw within a window,
// built from Prometheus instant queries over the nhi_* series (never from the pods): kind, sources, verified,
// first/last seen, services called, credential expiry, error ratio, and a dormant flag.
import type { Out } from './check.ts'
import {
  csvField,
  ERROR_CODES,
  humanSeconds,
  isoSeconds,
  PromError,
  PrometheusClient,
  printable,
  promDuration,
  prometheusBase,
  renderTable,
  type Sample,
  windowIncrease,
} from './prometheus-api.ts'

export interface InventoryOptions {
  prometheus: string
  /** window, ms */
  window: number
  /** silent this long → dormant (jobs with an expected interval use that instead), ms */
  dormantAfter: number
  /** per query, ms */
  timeout: number
  format: 'table' | 'json' | 'csv'
  /** evaluation time (s); default now */
  time?: number
}

export interface InventoryRow {
  identity: string
  kind: string
  sources: string[]
  /** false when any request of the identity in the window was unverified */
  verified: boolean
  firstSeen: string | null
  lastSeen: string | null
  services: string[]
  requests: number
  errors: number
  errorRatio: number | null
  credentialExpiry: string | null
  expectedIntervalSeconds: number | null
  lastSuccess: string | null
  dormant: boolean
  dormantReason: string | null
}

export interface Inventory {
  prometheus: string
  time: string
  window: string
  dormantAfter: string
  /** what Prometheus warned of while answering (a partial response): the list may be incomplete */
  warnings: string[]
  identities: InventoryRow[]
}

const NON_HUMAN = 'kind!="human",identity!="__overflow__"'

/** The PromQL `inventory` runs, in order (documented in docs/reference.md). */
export function inventoryQueries(w: string): Record<string, string> {
  const lastSeen = `nhi_identity_last_seen_timestamp_seconds{${NON_HUMAN}}`
  return {
    lastSeen: `max by (service, identity, kind) (max_over_time(${lastSeen}[${w}]))`,
    firstSeen: `min by (service, identity, kind) (min_over_time(${lastSeen}[${w}]))`,
    requests: `sum by (service, identity, kind, source, verified) (${windowIncrease(`nhi_requests_total{${NON_HUMAN}}`, w)})`,
    errors: `sum by (service, identity, kind) (${windowIncrease(`nhi_requests_total{${NON_HUMAN},code=~"${ERROR_CODES}"}`, w)})`,
    expiry: `min by (identity) (last_over_time(nhi_credential_expiry_timestamp_seconds[${w}]))`,
    interval: `max by (identity) (last_over_time(nhi_job_expected_interval_seconds[${w}]))`,
    lastSuccess: `max by (identity) (max_over_time(nhi_job_last_success_timestamp_seconds[${w}]))`,
  }
}

interface Acc {
  identity: string
  kind: string
  sources: Set<string>
  verified: boolean
  first?: number
  last?: number
  services: Set<string>
  requests: number
  errors: number
}

export async function buildInventory(o: InventoryOptions): Promise<Inventory> {
  const client = new PrometheusClient(prometheusBase(o.prometheus), o.timeout, o.time)
  const w = promDuration(o.window)
  const q = inventoryQueries(w)
  const [lastSeen, firstSeen, requests, errors, expiry, interval, lastSuccess] = (await Promise.all(
    [q.lastSeen, q.firstSeen, q.requests, q.errors, q.expiry, q.interval, q.lastSuccess].map((x) =>
      client.query(x!),
    ),
  )) as Sample[][]

  const rows = new Map<string, Acc>()
  const row = (l: Record<string, string>): Acc | undefined => {
    const identity = l['identity']
    const kind = l['kind']
    if (!identity || !kind) return undefined
    const key = `${identity}\u0000${kind}`
    let r = rows.get(key)
    if (!r) {
      r = { identity, kind, sources: new Set(), verified: true, services: new Set(), requests: 0, errors: 0 }
      rows.set(key, r)
    }
    if (l['service']) r.services.add(l['service'])
    return r
  }
  for (const s of lastSeen!) {
    const r = row(s.labels)
    if (r) r.last = Math.max(r.last ?? 0, s.value)
  }
  for (const s of firstSeen!) {
    const r = row(s.labels)
    if (r && s.value > 0) r.first = Math.min(r.first ?? Number.POSITIVE_INFINITY, s.value)
  }
  for (const s of requests!) {
    const r = row(s.labels)
    if (!r) continue
    r.requests += s.value
    if (s.labels['source']) r.sources.add(s.labels['source'])
    if (s.labels['verified'] === 'false') r.verified = false
  }
  for (const s of errors!) {
    const r = row(s.labels)
    if (r) r.errors += s.value
  }
  const byIdentity = (samples: Sample[]) => new Map(samples.map((s) => [s.labels['identity'] ?? '', s.value]))
  const expiries = byIdentity(expiry!)
  const intervals = byIdentity(interval!)
  const successes = byIdentity(lastSuccess!)

  const now = client.time
  const identities: InventoryRow[] = [...rows.values()]
    .map((r) => {
      const expectEvery = r.kind === 'job' ? intervals.get(r.identity) : undefined
      const success = r.kind === 'job' ? successes.get(r.identity) : undefined
      let dormantReason: string | null = null
      if (expectEvery !== undefined && expectEvery > 0) {
        const since = success ?? r.first
        if (since !== undefined && now - since > expectEvery)
          dormantReason =
            success === undefined
              ? `job overdue: no success in the window, expected every ${humanSeconds(expectEvery)}`
              : `job overdue: last success ${humanSeconds(now - since)} ago, expected every ${humanSeconds(expectEvery)}`
      } else if (r.last !== undefined && now - r.last > o.dormantAfter / 1000) {
        dormantReason = `silent for ${humanSeconds(now - r.last)} (threshold ${humanSeconds(o.dormantAfter / 1000)})`
      }
      const requestsN = Math.round(r.requests)
      const errorsN = Math.min(requestsN, Math.round(r.errors))
      return {
        identity: r.identity,
        kind: r.kind,
        sources: [...r.sources].sort(),
        verified: r.verified,
        firstSeen: isoSeconds(r.first) ?? null,
        lastSeen: isoSeconds(r.last) ?? null,
        services: [...r.services].sort(),
        requests: requestsN,
        errors: errorsN,
        errorRatio: requestsN > 0 ? Math.round((errorsN / requestsN) * 10_000) / 10_000 : null,
        credentialExpiry: isoSeconds(expiries.get(r.identity)) ?? null,
        expectedIntervalSeconds: expectEvery ?? null,
        lastSuccess: isoSeconds(success) ?? null,
        dormant: dormantReason !== null,
        dormantReason,
      }
    })
    .sort((a, b) => a.identity.localeCompare(b.identity) || a.kind.localeCompare(b.kind))
  return {
    prometheus: client.base,
    time: isoSeconds(now) ?? '',
    window: w,
    dormantAfter: promDuration(o.dormantAfter),
    warnings: client.warnings,
    identities,
  }
}

export const CSV_COLUMNS = [
  'identity',
  'kind',
  'sources',
  'verified',
  'first_seen',
  'last_seen',
  'services',
  'requests',
  'errors',
  'error_ratio',
  'credential_expiry',
  'expected_interval_seconds',
  'last_success',
  'dormant',
  'dormant_reason',
]

function csvRow(r: InventoryRow): string {
  return [
    r.identity,
    r.kind,
    r.sources.join(';'),
    String(r.verified),
    r.firstSeen ?? '',
    r.lastSeen ?? '',
    r.services.join(';'),
    String(r.requests),
    String(r.errors),
    r.errorRatio === null ? '' : String(r.errorRatio),
    r.credentialExpiry ?? '',
    r.expectedIntervalSeconds === null ? '' : String(r.expectedIntervalSeconds),
    r.lastSuccess ?? '',
    String(r.dormant),
    r.dormantReason ?? '',
  ]
    .map(csvField)
    .join(',')
}

function printTable(inv: Inventory, out: Out): void {
  out(
    `Non-human identities seen in the last ${inv.window} (Prometheus ${inv.prometheus}, at ${inv.time}): ${inv.identities.length}`,
  )
  if (inv.identities.length === 0) {
    out('none: no nhi_* series of a non-human identity in the window (is Prometheus scraping the sidecars?)')
    return
  }
  const pct = (r: InventoryRow) => (r.errorRatio === null ? '-' : `${(r.errorRatio * 100).toFixed(1)}%`)
  const rows = [
    [
      'IDENTITY',
      'KIND',
      'SOURCE',
      'VERIFIED',
      'FIRST SEEN',
      'LAST SEEN',
      'SERVICES',
      'REQUESTS',
      'ERRORS',
      'EXPIRES',
      'STATUS',
    ],
    ...inv.identities.map((r) => [
      r.identity,
      r.kind,
      r.sources.join(',') || '-',
      r.verified ? 'yes' : 'no',
      r.firstSeen ?? '-',
      r.lastSeen ?? '-',
      r.services.join(',') || '-',
      String(r.requests),
      pct(r),
      r.credentialExpiry ?? '-',
      r.dormant ? 'DORMANT' : 'active',
    ]),
  ]
  for (const line of renderTable(rows)) out(line)
  const dormant = inv.identities.filter((r) => r.dormant)
  if (dormant.length) {
    out('')
    out(`Dormant (${dormant.length}):`)
    for (const r of dormant) out(`  ${printable(r.identity)}: ${r.dormantReason}`)
  }
}

export async function runInventory(o: InventoryOptions, out: Out, err: Out): Promise<number> {
  try {
    const inv = await buildInventory(o)
    for (const w of inv.warnings) err(`nhi-proxy: warning: Prometheus: ${w}`)
    if (o.format === 'json') out(JSON.stringify(inv, null, 2))
    else if (o.format === 'csv') {
      out(CSV_COLUMNS.join(','))
      for (const r of inv.identities) out(csvRow(r))
    } else printTable(inv, out)
    return 0
  } catch (e) {
    if (e instanceof PromError) {
      err(`nhi-proxy: ${e.message}`)
      return e.exitCode
    }
    throw e
  }
}
