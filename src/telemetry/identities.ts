// The /identities view: one row per tracked identity (a source and a name: one name under two sources is two
// rows) plus caller → callee edges, built on demand from the bounded identity table (so its size is bounded
// by metrics.maxIdentities too).
import type { Identity, Kind, Source } from '../types.ts'
import type { IdentityEntry, IdentityTable, TrustBoundary } from './identity-table.ts'

export type IdentitySort = 'cost' | 'requests' | 'errors'
export const IDENTITY_SORTS: readonly IdentitySort[] = ['cost', 'requests', 'errors']

export interface JobStatus {
  /** ISO time of the last successful request, if any */
  lastSuccess?: string
  consecutiveFailures: number
  expectEverySeconds?: number
  /** true when expectEvery is set and no success was seen within it */
  overdue: boolean
}

export interface IdentityRow
  extends Pick<Identity, 'name' | 'kind' | 'source' | 'verified' | 'team' | 'zone' | 'rule'> {
  overflow: boolean
  /** a known AI agent's operator, e.g. "OpenAI" */
  operator?: string
  /** a known AI agent's purpose: training | search | assistant | coding | autonomous */
  purpose?: string
  /** RFC 8693 delegation: the actor last seen acting on behalf of this identity */
  actor?: string
  /** with actor: the identity it acted for (this row's name), so a row reads "actor on behalf of onBehalfOf" */
  onBehalfOf?: string
  requests: number
  errors: number
  /** requests per second over the last minute */
  rps: number
  /** errors / requests over the last minute */
  errorRatio: number
  p95Ms?: number
  bytesIn: number
  bytesOut: number
  upstreamSeconds: number
  cost: number
  firstSeen: string
  lastSeen: string
  /** ISO time of the earliest credential expiry */
  credentialExpiry?: string
  job?: JobStatus
}

export interface EdgeRow {
  caller: string
  /** the caller's source: with `caller` it names the identity row the edge belongs to */
  callerSource: Source
  callee: string
  kind: Kind
  requests: number
  verified: boolean
  zone?: string
  boundary: TrustBoundary
}

export interface IdentitiesView {
  generatedAt: string
  currency?: string
  tracked: number
  maxIdentities: number
  totals: { requests: number; rps: number; byKind: Record<string, { identities: number; rps: number }> }
  identities: IdentityRow[]
  edges: EdgeRow[]
}

const round = (n: number, digits = 3) => {
  const f = 10 ** digits
  return Math.round(n * f) / f
}

/** ISO time of unix seconds; undefined beyond what a Date holds (a verified token may say `exp: 1e13`) */
export function isoFromSeconds(seconds: number): string | undefined {
  const d = new Date(seconds * 1000)
  return Number.isNaN(d.getTime()) ? undefined : d.toISOString()
}

export function isJobOverdue(entry: IdentityEntry, now: number): boolean {
  if (!entry.expectEveryMs) return false
  return now - (entry.lastSuccess ?? entry.firstSeen) > entry.expectEveryMs
}

function toRow(e: IdentityEntry, now: number): IdentityRow {
  const window = e.rate.read(now, e.firstSeen)
  const p95 = e.latency.percentile(95)
  const expiry = e.expiry.earliest(now)
  const row: IdentityRow = {
    name: e.name,
    kind: e.kind,
    source: e.source,
    verified: e.verified,
    team: e.team,
    zone: e.zone,
    rule: e.rule,
    overflow: e.overflow,
    operator: e.operator,
    purpose: e.purpose,
    actor: e.actor,
    onBehalfOf: e.actor === undefined ? undefined : e.name,
    requests: e.requests,
    errors: e.errors,
    rps: round(window.perSecond),
    errorRatio: round(window.errorRatio, 4),
    p95Ms: p95 === undefined ? undefined : round(p95, 1),
    bytesIn: e.bytesIn,
    bytesOut: e.bytesOut,
    upstreamSeconds: round(e.upstreamMs / 1000),
    cost: round(e.cost, 9),
    firstSeen: new Date(e.firstSeen).toISOString(),
    lastSeen: new Date(e.lastSeen).toISOString(),
    credentialExpiry: expiry === undefined ? undefined : isoFromSeconds(expiry),
  }
  if (e.kind === 'job' && !e.overflow) {
    row.job = {
      lastSuccess: e.lastSuccess === undefined ? undefined : new Date(e.lastSuccess).toISOString(),
      consecutiveFailures: e.consecutiveFailures,
      expectEverySeconds: e.expectEveryMs ? e.expectEveryMs / 1000 : undefined,
      overdue: isJobOverdue(e, now),
    }
  }
  return row
}

const comparators: Record<IdentitySort, (a: IdentityRow, b: IdentityRow) => number> = {
  cost: (a, b) => b.cost - a.cost || b.requests - a.requests,
  requests: (a, b) => b.requests - a.requests,
  errors: (a, b) => b.errors - a.errors || b.errorRatio - a.errorRatio,
}

export function buildIdentitiesView(
  table: IdentityTable,
  opts: { now: number; sort?: IdentitySort; maxIdentities: number; currency?: string },
): IdentitiesView {
  const identities: IdentityRow[] = []
  const edges: EdgeRow[] = []
  const byKind: Record<string, { identities: number; rps: number }> = {}
  let requests = 0
  let rps = 0
  for (const e of table.values()) {
    const row = toRow(e, opts.now)
    identities.push(row)
    requests += row.requests
    rps += row.rps
    const k = byKind[row.kind] ?? { identities: 0, rps: 0 }
    byKind[row.kind] = k
    k.identities++
    k.rps = round(k.rps + row.rps)
    for (const edge of e.edges.values()) {
      edges.push({
        caller: e.name,
        callerSource: e.source,
        callee: edge.callee,
        kind: e.kind,
        requests: edge.requests,
        verified: edge.verified,
        zone: edge.zone,
        boundary: edge.boundary,
      })
    }
  }
  identities.sort(comparators[opts.sort ?? 'requests'])
  edges.sort((a, b) => b.requests - a.requests)
  return {
    generatedAt: new Date(opts.now).toISOString(),
    currency: opts.currency,
    tracked: table.tracked,
    maxIdentities: opts.maxIdentities,
    totals: { requests, rps: round(rps), byKind },
    identities,
    edges,
  }
}
