// /identities and /audit of a pod running `workers: N`: every worker's view merged into one, so the live
// view's table and its click-through show the whole pod (docs/reference.md "Workers").
import { type AuditQuery, type AuditRecord, DEFAULT_AUDIT_LIMIT, MAX_AUDIT_LIMIT } from './audit-ring.ts'
import type { EdgeRow, IdentitiesView, IdentityRow, IdentitySort } from './identities.ts'
import { podIdentityKey } from './pod-export.ts'
import { expiredSincePresented } from './windows.ts'

/**
 * A worker's answer for the pod's /identities: its view, and the identities (podIdentityKey) whose
 * `credentialExpiry` in it is of a credential presented after its expiry (PodSnapshot.presentedExpired)
 */
export interface WorkerIdentitiesView extends IdentitiesView {
  presentedExpired?: readonly string[]
}

const later = (a: string | undefined, b: string | undefined) =>
  a === undefined || (b !== undefined && b > a) ? b : a
const earlier = (a: string, b: string) => (b < a ? b : a)

function mergeRow(into: IdentityRow, row: IdentityRow): IdentityRow {
  const newest = row.lastSeen > into.lastSeen ? row : into
  const rps = into.rps + row.rps
  const merged: IdentityRow = {
    ...newest,
    requests: into.requests + row.requests,
    errors: into.errors + row.errors,
    rps,
    errorRatio: rps > 0 ? (into.errorRatio * into.rps + row.errorRatio * row.rps) / rps : 0,
    // the slowest worker's: an upper bound of the pod's p95
    p95Ms:
      into.p95Ms === undefined
        ? row.p95Ms
        : row.p95Ms === undefined
          ? into.p95Ms
          : Math.max(into.p95Ms, row.p95Ms),
    bytesIn: into.bytesIn + row.bytesIn,
    bytesOut: into.bytesOut + row.bytesOut,
    upstreamSeconds: into.upstreamSeconds + row.upstreamSeconds,
    cost: into.cost + row.cost,
    firstSeen: earlier(into.firstSeen, row.firstSeen),
    lastSeen: newest.lastSeen,
  }
  if (into.job && row.job) {
    const lastSuccess = later(into.job.lastSuccess, row.job.lastSuccess)
    merged.job = {
      ...newest.job!,
      ...(lastSuccess === undefined ? {} : { lastSuccess }),
      consecutiveFailures: Math.max(into.job.consecutiveFailures, row.job.consecutiveFailures),
      // a success any worker saw within the interval keeps the job on time
      overdue: into.job.overdue && row.job.overdue,
    }
  }
  return merged
}

const comparators: Record<IdentitySort, (a: IdentityRow, b: IdentityRow) => number> = {
  cost: (a, b) => b.cost - a.cost || b.requests - a.requests,
  requests: (a, b) => b.requests - a.requests,
  errors: (a, b) => b.errors - a.errors || b.errorRatio - a.errorRatio,
}

/**
 * Whether a worker's credential expiry (its earliest credential in use) still counts for the pod: not when it
 * was valid when presented there and has expired since, as pod-metrics.ts inUse() judges the gauge.
 */
function expiryInUse(
  row: IdentityRow,
  presentedExpired: ReadonlySet<string> | undefined,
  now: number,
): boolean {
  const expiry = Date.parse(row.credentialExpiry!)
  // looked up only for an expiry that has passed, in the few identities a worker saw present one expired
  const presentedAfterExpiry =
    presentedExpired !== undefined &&
    expiry <= now &&
    presentedExpired.has(podIdentityKey(row.source, row.name))
  return !expiredSincePresented(expiry, presentedAfterExpiry, now)
}

/**
 * One row per identity (source and name) over every worker: counts and rates summed, first seen the
 * earliest, credential expiry the earliest of the workers' (as the pod's gauge), the rest from the worker
 * that saw it last. Lists every identity some worker tracks.
 */
export function mergeIdentitiesViews(
  views: readonly WorkerIdentitiesView[],
  opts: { now: number; sort?: IdentitySort; maxIdentities: number; currency?: string },
): IdentitiesView {
  const rows = new Map<string, IdentityRow>()
  const edges = new Map<string, EdgeRow>()
  /** by identity: the earliest credential expiry of the workers where it is in use, and of all of them */
  const expiries = new Map<string, { inUse: string | undefined; any: string }>()
  for (const view of views) {
    const presentedExpired = view.presentedExpired?.length ? new Set(view.presentedExpired) : undefined
    for (const row of view.identities) {
      const key = `${row.source}\u0000${row.name}`
      const was = rows.get(key)
      rows.set(key, was ? mergeRow(was, row) : row)
      const expiry = row.credentialExpiry
      if (expiry === undefined) continue
      const inUse = expiryInUse(row, presentedExpired, opts.now) ? expiry : undefined
      const earliest = expiries.get(key)
      if (earliest === undefined) expiries.set(key, { inUse, any: expiry })
      else {
        if (Date.parse(expiry) < Date.parse(earliest.any)) earliest.any = expiry
        if (
          inUse !== undefined &&
          (earliest.inUse === undefined || Date.parse(inUse) < Date.parse(earliest.inUse))
        )
          earliest.inUse = inUse
      }
    }
    for (const edge of view.edges) {
      const key = `${edge.callerSource}\u0000${edge.caller}\u0000${edge.callee}`
      const was = edges.get(key)
      edges.set(key, was ? { ...was, requests: was.requests + edge.requests } : edge)
    }
  }
  for (const [key, { inUse, any }] of expiries) {
    const row = rows.get(key)!
    const expiry = inUse ?? any
    if (row.credentialExpiry !== expiry) rows.set(key, { ...row, credentialExpiry: expiry })
  }
  const identities = [...rows.values()].sort(comparators[opts.sort ?? 'requests'])
  const byKind: Record<string, { identities: number; rps: number }> = {}
  let requests = 0
  let rps = 0
  for (const row of identities) {
    requests += row.requests
    rps += row.rps
    const k = byKind[row.kind] ?? { identities: 0, rps: 0 }
    byKind[row.kind] = k
    k.identities++
    k.rps += row.rps
  }
  return {
    generatedAt: new Date(opts.now).toISOString(),
    currency: opts.currency,
    tracked: identities.filter((r) => !r.overflow).length,
    maxIdentities: opts.maxIdentities,
    totals: { requests, rps, byKind },
    identities,
    edges: [...edges.values()].sort((a, b) => b.requests - a.requests),
  }
}

/** Every worker's newest matching audit records, newest first over the pod, at most the query's limit. */
export function mergeAuditRecords(lists: readonly AuditRecord[][], q: AuditQuery): AuditRecord[] {
  const limit = Math.min(MAX_AUDIT_LIMIT, Math.max(1, q.limit ?? DEFAULT_AUDIT_LIMIT))
  return lists
    .flat()
    .sort((a, b) => (a.time < b.time ? 1 : a.time > b.time ? -1 : 0))
    .slice(0, limit)
}
