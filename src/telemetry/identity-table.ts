// The cardinality guard: a bounded table of the identities we keep per-identity state (and metric series)
// for. An identity is its (source, name) pair: an api key and a client certificate that resolve to the same
// name are two entries, never one. Admission is first-come: once `maxIdentities` identities are tracked,
// new ones share their source's `__overflow__` entry until an idle identity frees its slot. Names a client
// can make up (unverified identities; verified ones named from the user agent, a request header or the
// path) have their own smaller cap, `maxUnverifiedIdentities`, so a flood of made-up names can never take
// the slots of verified callers: those always have at least `maxIdentities - maxUnverifiedIdentities` slots
// to themselves. A token issuer that gives tokens to anyone (GitHub Actions, Google) names verified callers
// that outsiders choose just as freely, so each issuer may have a cap of its own as well
// (`jwt.issuers[].maxIdentities`): both caps are shares of the table, kept by one `Shares`, here and in the
// pod-wide admission of `workers: N` (pod-metrics.ts).
import { OVERFLOW_IDENTITY } from '../identity/builtin.ts'
import type { Identity, Kind, Source } from '../types.ts'
import { type CounterSeries, escapeLabelValue, type HistogramSeries } from './exposition.ts'
import { EarliestExpiry, LatencyReservoir, RateWindow } from './windows.ts'

export { OVERFLOW_IDENTITY }

/**
 * A name the client made up: an unverified identity's, a verified request's name made from what its user
 * agent says (`apikey:ua:…`, see namespacedName), or one a rule filled from a request header or the path
 * (`fromRequest`): all are held to the unverified cap. They keep their names (policies name identities).
 */
export function madeUpName(name: string, source: string, verified: boolean, fromRequest: boolean): boolean {
  return !verified || fromRequest || (name.startsWith(source) && name.startsWith(':ua:', source.length))
}

function madeUp(identity: Identity): boolean {
  return madeUpName(identity.name, identity.source, identity.verified, identity.nameFromRequest === true)
}
/** caller → callee edges kept per identity (one per fronted service; the cap guards misconfiguration) */
const MAX_EDGES_PER_IDENTITY = 16

export type TrustBoundary = 'internal-verified' | 'unverified' | 'external'

export interface Edge {
  callee: string
  requests: number
  verified: boolean
  zone?: string
  boundary: TrustBoundary
  lastSeen: number
  /** the identity object the edge was last updated from: the same object has the same verified, zone, boundary */
  seenAs: Identity | undefined
}

/** The byte/time counters of one identity under one kind. */
export interface KindSeries {
  /** `service="…",identity="…",source="…",kind="…"`, the label text the identity's other series start with */
  readonly labels: string
  readonly requestBytes: CounterSeries
  readonly responseBytes: CounterSeries
  readonly upstreamSeconds: CounterSeries
}

/**
 * The series an identity's last request went to, with what chose them: the next request with the same
 * kind, verified, method, route and status finds them without a key. (Matched by value: a name's tokens
 * are identity objects of their own, and requests alternate between them.)
 */
export interface HotSeries {
  kind: Kind
  verified: boolean
  /** the request's method as it came (the label is normalised) */
  method: string
  route: string
  status: number
  perKind: KindSeries
  requests: CounterSeries
  duration: HistogramSeries
}

/** The metric series one identity created, keyed by a compact key of their varying labels. */
export interface IdentitySeries {
  readonly requests: Map<string, CounterSeries>
  readonly duration: Map<string, HistogramSeries>
  readonly perKind: Map<Kind, KindSeries>
  readonly cost: Map<string, CounterSeries>
  /** gRPC calls by kind, route and status code */
  readonly grpc: Map<string, CounterSeries>
  hot: HotSeries | undefined
}

export interface IdentityEntry {
  readonly name: string
  /** part of the entry's key: two sources never share an entry */
  readonly source: Source
  readonly overflow: boolean
  /** admitted under the unverified cap (its slot is returned there when it goes) */
  readonly unverifiedSlot: boolean
  /** the token issuer whose share it was admitted under (its slot is returned there when it goes) */
  readonly issuer: string | undefined
  /** its name was filled from a request header or the path (a pod's primary is told: pod-metrics.ts) */
  readonly nameFromRequest: boolean
  kind: Kind
  verified: boolean
  team?: string
  zone?: string
  rule?: string
  /** a known AI agent's operator and purpose, from its user agent */
  operator?: string
  purpose?: string
  /** RFC 8693 delegation: the actor last seen acting on behalf of this identity */
  actor?: string
  /** unix ms */
  firstSeen: number
  lastSeen: number
  /**
   * the expiries of the credentials it presented in the last 5 to 10 minutes: `expiry.earliest(now)` is its
   * credential expiry (the gauge, /identities), the one closest to expiring of all its replicas', not the last
   * caller's (never updated on the overflow entry)
   */
  readonly expiry: EarliestExpiry
  expectEveryMs?: number
  requests: number
  errors: number
  bytesIn: number
  bytesOut: number
  upstreamMs: number
  cost: number
  /** job bookkeeping (kind job): unix ms of the last successful run, failures since */
  lastSuccess?: number
  consecutiveFailures: number
  readonly rate: RateWindow
  readonly latency: LatencyReservoir
  readonly edges: Map<string, Edge>
  /** the edge of the last request: most identities call one service */
  lastEdge: Edge | undefined
  /**
   * the identity object the entry's fields were last copied from: identity objects are never mutated, so
   * the next request with the same object has nothing to copy
   */
  seenAs: Identity | undefined
  /** its metric series: they are rendered from the table, so they go when the entry goes */
  readonly series: IdentitySeries
}

export interface IdentityTableLimits {
  maxIdentities: number
  /** cap for unverified identities; default a quarter of maxIdentities (at least 1), never above it */
  maxUnverifiedIdentities?: number
  /** caps of the issuers that have one (jwt.issuers[].maxIdentities, or a public IdP's default) */
  issuerCaps?: ReadonlyMap<string, number>
  idleTtlMs: number
}

/** The effective cap for unverified identities. */
export function unverifiedCap(limits: IdentityTableLimits): number {
  const cap = limits.maxUnverifiedIdentities ?? Math.max(1, Math.floor(limits.maxIdentities / 4))
  return Math.min(cap, limits.maxIdentities)
}

const NO_ISSUER_CAPS: ReadonlyMap<string, number> = new Map()

/**
 * The shares of the table a group of identities may hold at most: the made-up names' (the unverified cap)
 * and each capped issuer's. Holdings are counted for every issuer, capped or not, so a cap that a reload
 * adds counts the names its issuer already holds. A lower cap evicts no one: it only turns newcomers away.
 */
export class Shares {
  private unverified = 0
  private readonly byIssuer = new Map<string, number>()
  private maxUnverified: number
  private issuerCaps: ReadonlyMap<string, number>

  constructor(limits: IdentityTableLimits) {
    this.maxUnverified = unverifiedCap(limits)
    this.issuerCaps = limits.issuerCaps ?? NO_ISSUER_CAPS
  }

  setLimits(limits: IdentityTableLimits): void {
    this.maxUnverified = unverifiedCap(limits)
    this.issuerCaps = limits.issuerCaps ?? NO_ISSUER_CAPS
  }

  /** whether an identity whose name is made up (or not), from that issuer (or none), has room */
  fits(madeUp: boolean, issuer: string | undefined): boolean {
    if (madeUp && this.unverified >= this.maxUnverified) return false
    if (issuer === undefined) return true
    const cap = this.issuerCaps.get(issuer)
    return cap === undefined || (this.byIssuer.get(issuer) ?? 0) < cap
  }

  take(madeUp: boolean, issuer: string | undefined): void {
    if (madeUp) this.unverified++
    if (issuer !== undefined) this.byIssuer.set(issuer, (this.byIssuer.get(issuer) ?? 0) + 1)
  }

  give(madeUp: boolean, issuer: string | undefined): void {
    if (madeUp) this.unverified--
    if (issuer === undefined) return
    const held = (this.byIssuer.get(issuer) ?? 0) - 1
    // an issuer a reload removed leaves no count behind once its names are gone
    if (held > 0) this.byIssuer.set(issuer, held)
    else this.byIssuer.delete(issuer)
  }

  clear(): void {
    this.unverified = 0
    this.byIssuer.clear()
  }
}

export interface Admission {
  entry: IdentityEntry
  /** true when the identity did not fit and was recorded as `__overflow__` */
  overflowed: boolean
}

function newEntry(name: string, identity: Identity, now: number): IdentityEntry {
  return {
    name,
    source: identity.source,
    overflow: name === OVERFLOW_IDENTITY,
    unverifiedSlot: name !== OVERFLOW_IDENTITY && madeUp(identity),
    issuer: name !== OVERFLOW_IDENTITY ? identity.issuer : undefined,
    nameFromRequest: name !== OVERFLOW_IDENTITY && identity.nameFromRequest === true,
    kind: identity.kind,
    verified: identity.verified,
    // every optional field is present from the start, so all entries share one object shape and the
    // per-request updates stay monomorphic
    team: undefined,
    zone: undefined,
    rule: undefined,
    operator: undefined,
    purpose: undefined,
    actor: undefined,
    firstSeen: now,
    lastSeen: now,
    expectEveryMs: undefined,
    requests: 0,
    errors: 0,
    bytesIn: 0,
    bytesOut: 0,
    upstreamMs: 0,
    cost: 0,
    lastSuccess: undefined,
    consecutiveFailures: 0,
    rate: new RateWindow(),
    expiry: new EarliestExpiry(),
    latency: new LatencyReservoir(),
    edges: new Map(),
    lastEdge: undefined,
    seenAs: undefined,
    series: {
      requests: new Map(),
      duration: new Map(),
      perKind: new Map(),
      cost: new Map(),
      grpc: new Map(),
      hot: undefined,
    },
  }
}

/** verified & zone not external → internal-verified; unverified → unverified; external zone or anonymous/bot/agent → external */
export function trustBoundary(identity: Identity): TrustBoundary {
  if (identity.zone === 'external') return 'external'
  if (identity.kind === 'bot' || identity.kind === 'agent') return 'external'
  if (identity.source === 'anonymous' || (identity.source === 'useragent' && identity.kind === 'human')) {
    return 'external'
  }
  return identity.verified ? 'internal-verified' : 'unverified'
}

export class IdentityTable {
  /**
   * One name → entry map per source: a lookup is two map reads on values the identity already holds, no
   * composite key string per request.
   */
  private readonly bySource = new Map<Source, Map<string, IdentityEntry>>()
  /** every entry in admission order (what scrapes and the identities view iterate) */
  private readonly entries = new Set<IdentityEntry>()
  private limits: IdentityTableLimits
  /** the unverified and per-issuer slots the tracked entries hold */
  private readonly shares: Shares
  /** overflow entries (one per source at most) */
  private overflows = 0
  private lastSweep = 0
  /**
   * Under `workers: N`: the names (escaped, by source) the pod gave a slot of its cap, as the primary last
   * said. This table makes room for them beyond its own caps: it may have filled its slots with names the
   * pod folded into `__overflow__` while the pod's own callers were served by other workers, and their
   * requests here would then be lost to `__overflow__` although one process counts them as theirs. At most
   * the pod's maxIdentities names, so the table holds twice its cap at most.
   */
  private podAdmitted: ReadonlyMap<Source, ReadonlySet<string>> | undefined

  constructor(limits: IdentityTableLimits) {
    this.limits = { ...limits }
    this.shares = new Shares(limits)
  }

  setLimits(limits: IdentityTableLimits): void {
    // A lower cap does not evict anyone: existing identities keep their series until they go idle.
    this.limits = { ...limits }
    this.shares.setLimits(limits)
  }

  private fits(identity: Identity): boolean {
    if (identity.name === OVERFLOW_IDENTITY) return false
    if (this.tracked >= this.limits.maxIdentities) return false
    return this.shares.fits(madeUp(identity), identity.issuer)
  }

  /** a pod's admitted identities (podIdentityKey: `source\0name`, the name escaped as in its label) */
  setPodAdmitted(keys: readonly string[]): void {
    const bySource = new Map<Source, Set<string>>()
    for (const key of keys) {
      const sep = key.indexOf('\u0000')
      const source = key.slice(0, sep) as Source
      let names = bySource.get(source)
      if (names === undefined) {
        names = new Set()
        bySource.set(source, names)
      }
      names.add(key.slice(sep + 1))
    }
    this.podAdmitted = bySource
  }

  /** whether the pod gave the identity a slot: it gets an entry here whatever this table's caps say */
  private admittedByPod(identity: Identity): boolean {
    if (this.podAdmitted === undefined || identity.name === OVERFLOW_IDENTITY) return false
    return this.podAdmitted.get(identity.source)?.has(escapeLabelValue(identity.name)) === true
  }

  get size(): number {
    return this.entries.size
  }

  /** tracked identities, excluding the overflow entries */
  get tracked(): number {
    return this.entries.size - this.overflows
  }

  get(source: Source, name: string): IdentityEntry | undefined {
    return this.bySource.get(source)?.get(name)
  }

  values(): IterableIterator<IdentityEntry> {
    return this.entries.values()
  }

  /** sources are the fixed set the code registers (identity/sources), never client input */
  private namesOf(source: Source): Map<string, IdentityEntry> {
    let names = this.bySource.get(source)
    if (names === undefined) {
      names = new Map()
      this.bySource.set(source, names)
    }
    return names
  }

  private add(entry: IdentityEntry): void {
    this.namesOf(entry.source).set(entry.name, entry)
    this.entries.add(entry)
    if (entry.overflow) this.overflows++
    else this.shares.take(entry.unverifiedSlot, entry.issuer)
  }

  private remove(entry: IdentityEntry): void {
    this.bySource.get(entry.source)?.delete(entry.name)
    this.entries.delete(entry)
    if (entry.overflow) this.overflows--
    else this.shares.give(entry.unverifiedSlot, entry.issuer)
  }

  admit(identity: Identity, now: number): Admission {
    const entry = this.admitEntry(identity, now)
    return { entry, overflowed: this.overflowed }
  }

  /** whether the last admitEntry() recorded its identity as `__overflow__` */
  overflowed = false

  /**
   * admit() without an object per request: whether it overflowed is left in `overflowed`. `presentedAt` is
   * when the request presented its credential (its start), `now` when it is recorded.
   */
  admitEntry(identity: Identity, now: number, presentedAt = now): IdentityEntry {
    const bySource = this.namesOf(identity.source)
    let entry = bySource.get(identity.name)
    let overflowed = false
    if (!entry) {
      // A full table first tries to free idle slots, at most once a second so overflow traffic stays cheap.
      if (!this.fits(identity) && now - this.lastSweep >= 1000) this.sweep(now)
      if (this.fits(identity) || this.admittedByPod(identity)) {
        entry = newEntry(identity.name, identity, now)
        this.add(entry)
      } else {
        overflowed = identity.name !== OVERFLOW_IDENTITY
        // overflow is per source too, so even the overflow bucket never mixes sources
        entry = bySource.get(OVERFLOW_IDENTITY)
        if (!entry) {
          entry = newEntry(OVERFLOW_IDENTITY, identity, now)
          this.add(entry)
        }
      }
    }
    this.overflowed = overflowed
    entry.lastSeen = now
    // before the early return: the same identity object keeps its credential in the window and rolls it
    if (!entry.overflow) entry.expiry.present(identity.expiresAt, now, presentedAt)
    if (entry.seenAs === identity) return entry
    entry.seenAs = identity
    entry.kind = identity.kind
    entry.verified = identity.verified
    if (!entry.overflow) {
      entry.team = identity.team
      entry.zone = identity.zone
      entry.rule = identity.rule
      entry.operator = identity.attributes['agent_operator']
      entry.purpose = identity.attributes['agent_purpose']
      // kept across the subject's own requests: the row says which agent last acted for it
      const actor = identity.attributes['actor']
      if (actor !== undefined) entry.actor = actor
      entry.expectEveryMs = identity.expectEveryMs
    }
    return entry
  }

  /** idle time after which an entry is dropped; jobs with expectEvery are kept long enough to be seen overdue */
  ttlFor(entry: IdentityEntry): number {
    const ttl = this.limits.idleTtlMs
    return entry.expectEveryMs ? Math.max(ttl, entry.expectEveryMs * 2) : ttl
  }

  /** drops idle identities (freeing their slots and metric series); returns how many were dropped */
  sweep(now: number): number {
    this.lastSweep = now
    let dropped = 0
    for (const entry of this.entries) {
      if (now - entry.lastSeen > this.ttlFor(entry)) {
        this.remove(entry)
        dropped++
      }
    }
    return dropped
  }

  clear(): void {
    for (const map of this.bySource.values()) map.clear()
    this.entries.clear()
    this.shares.clear()
    this.overflows = 0
  }

  recordEdge(entry: IdentityEntry, callee: string, identity: Identity, now: number): void {
    let edge = entry.lastEdge
    if (edge === undefined || edge.callee !== callee) {
      edge = entry.edges.get(callee)
      if (!edge) {
        if (entry.edges.size >= MAX_EDGES_PER_IDENTITY) return
        edge = {
          callee,
          requests: 0,
          verified: false,
          zone: undefined,
          boundary: 'unverified',
          lastSeen: now,
          seenAs: undefined,
        }
        entry.edges.set(callee, edge)
      }
      entry.lastEdge = edge
    }
    edge.requests++
    edge.lastSeen = now
    if (edge.seenAs === identity) return
    edge.seenAs = identity
    edge.verified = identity.verified
    edge.zone = identity.zone
    edge.boundary = trustBoundary(identity)
  }
}
