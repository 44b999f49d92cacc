// /metrics of a pod running `workers: N` (docs/reference.md "Workers"): every worker's exposition merged
// into one. Counters and histograms are summed series by series, gauges take the largest value (last seen,
// job last success and failures in a row, JWKS keys and last success, TLS certificate dates), except the
// credential expiry, which takes the smallest (an identity's earliest credential in use on any worker: a
// replica whose rotation broke is not hidden by the ones served elsewhere), and the
// identity cap (metrics.maxIdentities, maxUnverifiedIdentities, jwt.issuers[].maxIdentities) is applied once
// for the whole pod: each
// worker caps its own table, but N workers can each track different identities, so identities beyond the
// pod's cap are folded into their source's `__overflow__` series here, with their requests counted in
// nhi_identity_overflow_total as the single-process mode counts them. Process and runtime families
// (process_*, nodejs_*) are per process: each keeps its series with a `worker` label.
// Workers send what changed since their last answer (pod-export.ts), not their text: merging 40,000 lines
// of text took the primary 80-90 ms of CPU per scrape at 1,000 identities on two workers (bench/README.md).
import { flattened } from '../util/flat.ts'
import { escapeLabelValue, type FamilyInfo, formatValue, writeHeader } from './exposition.ts'
import { type IdentityTableLimits, madeUpName, OVERFLOW_IDENTITY, Shares } from './identity-table.ts'
import { PodExport, type PodFamilyDef, type PodSnapshot } from './pod-export.ts'
import { expiredSincePresented } from './windows.ts'

/** the labels every per-identity series starts with */
const IDENTITY = /^service="((?:[^"\\]|\\.)*)",identity="((?:[^"\\]|\\.)*)",source="([^"]*)"/
const KIND = /,kind="([^"]*)"/

/** families only the primary reports: it validates and counts reloads, and its build is the pod's */
const PRIMARY_FAMILIES = new Set([
  'nhi_config_reloads',
  'nhi_config_last_reload_success_timestamp_seconds',
  'nhi_build_info',
])
/** written by the primary (the audit output) and by the workers (lines their hand-over dropped) */
const SUMMED_WITH_PRIMARY = new Set(['nhi_audit_dropped_lines'])
const IDENTITIES = 'nhi_identities'
const REQUESTS = 'nhi_requests'
const LAST_SEEN = 'nhi_identity_last_seen_timestamp_seconds'
const EXPIRY = 'nhi_credential_expiry_timestamp_seconds'
const OVERFLOW = 'nhi_identity_overflow'

const WORKER_REQUESTS: FamilyInfo & { type: 'counter' } = {
  name: 'nhi_worker_requests',
  help: 'Requests by the worker process that served them (workers: N only)',
  type: 'counter',
}
const WORKER_RESTARTS: FamilyInfo & { type: 'counter' } = {
  name: 'nhi_worker_restarts',
  help: 'Worker processes that exited and were started again (workers: N only)',
  type: 'counter',
}
const WORKER_STALE: FamilyInfo & { type: 'gauge' } = {
  name: 'nhi_worker_metrics_stale',
  help: 'Whether the worker did not answer this scrape in time and shows its last answer (workers: N only)',
  type: 'gauge',
}

export interface ProcessExposition {
  /** the `worker` label of this process's runtime series: "1"…"N", or "primary" */
  worker: string
  body: string
  /** the identities whose credential expiry in `body` was presented expired (PodSnapshot.presentedExpired) */
  presentedExpired?: string[]
}

export interface PodState {
  service: string
  limits: IdentityTableLimits
  /** workers started again after they exited, since the pod started */
  restarts: number
  /**
   * by worker slot (worker `i + 1`): whether its lines are from an earlier scrape, because it did not answer
   * this one in time; the pod's /metrics gives one series per slot
   */
  stale?: readonly boolean[]
  /** unix ms of the scrape (default: the clock) */
  now?: number
}

interface Family {
  base: string
  type: string
  /** HELP and TYPE lines, Prometheus text and OpenMetrics */
  headers: [text: string, openMetrics: string]
  /** process_*, nodejs_*: one series per process, told apart by a `worker` label */
  perProcess: boolean
  /** a gauge whose smallest value is the pod's (the credential expiry), not its largest */
  earliest: boolean
  /** which process's lines count: the primary's only, the workers' only, or both summed */
  from: 'primary' | 'workers' | 'both'
  lines: Map<string, Line>
}

/** One merged sample line: each process's latest value, and the line as rendered from their merge. */
class Line {
  /** by process slot; undefined where that process has no such line */
  readonly values: (number | undefined)[] = []
  processes = 0
  /** a folded identity's contribution (sum) or last-seen time (max); only overflow lines get one */
  extra: number | undefined = undefined
  /**
   * counters and histograms: what processes that stopped rendering this line (their identity went idle
   * there) had counted, kept while the line lives on, so a live series never goes backwards
   */
  retired = 0
  /** some process's counts were retired into it (a zero too: a histogram keeps every bucket line) */
  retiring = false
  /**
   * the line of a folded identity that got a slot: what it counted went to `__overflow__`, and the workers
   * start its series again, so what they still send of it (until they have) counts nowhere
   */
  orphaned = false
  private merged = 0
  private dirty = true
  private rendered = Number.NaN
  private text = ''
  /** `source\0name` of a per-identity line (not the overflow identity's) */
  readonly identity: string | undefined
  /** the labels of a per-identity line: escaped service, kind; and whether verified="true" */
  readonly service: string = ''
  readonly kind: string = ''
  readonly verified: boolean = false
  /** the same line of the overflow identity: where this line goes while its identity is folded */
  readonly overflowKey: string = ''

  constructor(
    readonly key: string,
    readonly family: Family,
  ) {
    if (!family.base.startsWith('nhi_')) return
    const brace = key.indexOf('{')
    if (brace === -1) return
    const labels = key.slice(brace + 1, -1)
    const m = IDENTITY.exec(labels)
    if (!m) return
    this.service = m[1]!
    this.kind = KIND.exec(labels)?.[1] ?? ''
    this.verified = labels.includes(',verified="true"')
    if (m[2] === OVERFLOW_IDENTITY) return
    // podIdentityKey's form: the label value is escaped already
    this.identity = `${m[3]}\u0000${m[2]}`
    this.overflowKey = `${key.slice(0, brace)}{service="${m[1]}",identity="${OVERFLOW_IDENTITY}",source="${m[3]}"${labels.slice(m[0].length)}}`
  }

  set(slot: number, value: number): void {
    if (this.orphaned) return
    const was = this.values[slot]
    if (was === undefined) this.processes++
    else if (Object.is(was, value)) return
    this.values[slot] = value
    this.dirty = true
  }

  /** the process no longer renders the line: a counter keeps what it counted (gauges forget it) */
  retire(slot: number): void {
    const was = this.values[slot]
    if (was === undefined) return
    this.unset(slot)
    this.keep(was)
  }

  /** adds what a process that no longer renders the line had counted (counters and histograms only) */
  keep(value: number): void {
    if (this.family.type === 'gauge' || !Number.isFinite(value)) return
    this.retired += value
    this.retiring = true
    this.dirty = true
  }

  unset(slot: number): void {
    if (this.values[slot] === undefined) return
    this.values[slot] = undefined
    this.processes--
    this.dirty = true
  }

  /** counters and histograms summed over the processes, gauges their largest value (or smallest) */
  value(): number {
    if (!this.dirty) return this.merged
    const max = this.family.type === 'gauge'
    const min = this.family.earliest
    let v: number | undefined
    for (const x of this.values) {
      if (x === undefined) continue
      v = v === undefined ? x : min ? Math.min(v, x) : max ? Math.max(v, x) : v + x
    }
    this.merged = (v ?? 0) + this.retired
    this.dirty = false
    return this.merged
  }

  /** the line as it reads now (or with the value given): rendered again only when its value moved */
  render(merged = this.value()): string {
    let v = merged
    const extra = this.extra
    if (extra !== undefined)
      v =
        this.processes === 0 && !this.retiring
          ? extra
          : this.family.type === 'gauge'
            ? Math.max(v, extra)
            : v + extra
    if (this.text === '' || !Object.is(v, this.rendered)) {
      this.text = flattened(`${this.key} ${formatValue(v)}\n`)
      this.rendered = v
    }
    return this.text
  }
}

/** What the primary holds of one process: its lines by the ids its snapshots use. */
interface Slot {
  label: string
  index: number
  /** the last snapshot applied, -1 before the first and after a reset: the next one must be whole */
  seq: number
  /** families by the process's family index; undefined for a family this process does not contribute to */
  families: (Family | undefined)[]
  lines: (Line | undefined)[]
  /** tracked: a worker that exited is dropped and its replacement starts from nothing */
  active: boolean
  /** the identities its last snapshot said were named from a request header or the path */
  requestNamed: string[]
  /** the identities its last snapshot said a capped token issuer named, with that issuer */
  issued: [identity: string, issuer: string][]
  /** the identities its last snapshot said had their credential expiry presented expired */
  presentedExpired: ReadonlySet<string>
  /**
   * requests this process counted on nhi_requests lines it no longer renders (an identity it dropped after
   * metrics.idleTtl): still its own, so that its nhi_worker_requests_total never goes down while it lives
   */
  retiredRequests: number
}

interface Present {
  verified: boolean
  /** some worker named it from a request header or the path */
  fromRequest: boolean
  /** the capped token issuer that named it, as the first worker to say so said */
  issuer: string | undefined
  kind: string
  service: string
}

interface Folded {
  family: Family
  value: number
}

/**
 * The pod's /metrics from the processes' snapshots. Keeps every process's latest values line by line and
 * each merged line as last rendered, so a scrape re-renders only the lines whose merged value moved, as a
 * single process re-renders only its changed series. Also keeps the pod-wide admission state between
 * scrapes so that, as in one process, an identity keeps its own series for as long as some worker tracks
 * it, and one folded gets a slot once there is room.
 */
export class PodMetrics {
  private readonly families = new Map<string, Family>()
  private readonly slots = new Map<string, Slot>()
  /** exporters of the text bodies given to merge() */
  private readonly exporters = new Map<string, PodExport>()
  /** pod-wide admitted identities (`source\0name`) → the shares it holds a slot of */
  private readonly admitted = new Map<string, { madeUp: boolean; issuer: string | undefined }>()
  /** the unverified and per-issuer slots the admitted identities hold (made with the first render's limits) */
  private shares: Shares | undefined
  /** moves whenever an identity is admitted or leaves: the workers are told the admitted ones again */
  admittedVersion = 0
  /**
   * identities beyond the cap → their counter/histogram values (and last seen) at the last scrape, on
   * overflow lines
   */
  private readonly folded = new Map<string, Map<string, Folded>>()
  /**
   * Values of folded identities no worker tracks any more: still part of the overflow series, as in one
   * process the overflow entry keeps what was recorded into it. Keyed by overflow line: bounded like them.
   */
  private readonly carried = new Map<string, Folded>()
  /** lines that got an extra at the last scrape */
  private extras: Line[] = []
  /**
   * folded identities that got a slot at the last scrape: their counts so far moved to `__overflow__`, and
   * the workers are told to start their series again, as one process starts an identity it admits
   */
  private unfolded: string[] = []
  /**
   * identities that got a slot after they were folded, until a request of theirs shows: one process admits
   * such an identity at its next request, so until then it has no series, and no count in nhi_identities
   */
  private readonly waiting = new Set<string>()

  /** the snapshot the next one from this process should continue (-1: send everything) */
  since(process: string): number {
    return this.slots.get(process)?.seq ?? -1
  }

  /** Applies a process's snapshot; false when it does not continue the last one applied (then ask again). */
  apply(process: string, snapshot: PodSnapshot): boolean {
    const slot = this.slot(process)
    /** a whole snapshot replaces the process's lines: those it no longer holds are retired after it */
    let before: { line: Line; value: number }[] | undefined
    if (snapshot.base === -1) {
      before = []
      for (const line of slot.lines) {
        const value = line?.values[slot.index]
        if (line !== undefined && value !== undefined) before.push({ line, value })
      }
      this.clear(slot)
    } else if (snapshot.base !== slot.seq) {
      slot.seq = -1
      return false
    }
    slot.active = true
    const primary = process === PRIMARY
    for (const def of snapshot.families) slot.families[def.index] = this.family(def, primary)
    const { lineIds, lineFamilies, lineKeys } = snapshot
    for (let i = 0; i < lineIds.length; i++) {
      const family = slot.families[lineFamilies[i]!]
      const id = lineIds[i]!
      slot.lines[id]?.unset(slot.index)
      if (family === undefined) {
        slot.lines[id] = undefined
        continue
      }
      const raw = lineKeys[i]!
      const key = family.perProcess ? withWorker(raw, process) : raw
      let line = family.lines.get(key)
      if (line === undefined) {
        line = new Line(key, family)
        family.lines.set(key, line)
      }
      slot.lines[id] = line
    }
    for (const id of snapshot.removed) {
      const line = slot.lines[id]
      if (line?.family.base === REQUESTS) slot.retiredRequests += line.values[slot.index] ?? 0
      line?.retire(slot.index)
      slot.lines[id] = undefined
    }
    const { ids, values } = snapshot
    for (let i = 0; i < ids.length; i++) slot.lines[ids[i]!]?.set(slot.index, values[i]!)
    if (before !== undefined) {
      for (const { line, value } of before) {
        if (line.values[slot.index] !== undefined) continue
        line.keep(value)
        if (line.family.base === REQUESTS) slot.retiredRequests += value
      }
    }
    slot.requestNamed = snapshot.requestNamed
    slot.issued = snapshot.issued
    slot.presentedExpired =
      snapshot.presentedExpired.length === 0 ? NONE_PRESENTED_EXPIRED : new Set(snapshot.presentedExpired)
    slot.seq = snapshot.seq
    return true
  }

  /**
   * A process that is gone: its lines leave the merge, and its replacement starts with a whole snapshot.
   * Its counters and histograms stay in the pod's series that live on (others serve them, or their
   * identity is tracked elsewhere): dropping them would take such a series down to the survivors' sum,
   * which Prometheus reads as a reset to 0 and counts the survivors' totals again. Its own per-process
   * series restart with the replacement, as a restarted process's do.
   */
  drop(process: string): void {
    const slot = this.slots.get(process)
    if (slot === undefined) return
    for (const line of slot.lines) {
      if (line === undefined) continue
      if (line.family.perProcess) line.unset(slot.index)
      else line.retire(slot.index)
    }
    this.clear(slot)
    // its replacement's nhi_worker_requests_total starts from nothing, as a restarted process's counters do
    slot.retiredRequests = 0
    slot.active = false
  }

  /** Text bodies through the same path (an exporter per process): tests and the bench measure with it. */
  merge(
    workers: readonly ProcessExposition[],
    primary: ProcessExposition,
    state: PodState,
    openMetrics: boolean,
  ): string {
    const given = new Set<string>()
    for (const p of [...workers, { ...primary, worker: PRIMARY }]) {
      given.add(p.worker)
      let exporter = this.exporters.get(p.worker)
      if (exporter === undefined) {
        exporter = new PodExport()
        this.exporters.set(p.worker, exporter)
      }
      this.apply(p.worker, exporter.snapshot([p.body], this.since(p.worker), [], [], p.presentedExpired))
    }
    for (const label of this.slots.keys()) {
      if (given.has(label)) continue
      this.drop(label)
      this.exporters.delete(label)
    }
    return this.render(state, openMetrics)
  }

  render(state: PodState, openMetrics: boolean): string {
    this.unfolded = []
    const present = this.present()
    this.admit(present, state.limits)
    this.fold()

    const format = openMetrics ? 1 : 0
    const served = new Map<Slot, number>()
    const workers = [...this.slots.values()].filter((s) => s.active && s.label !== PRIMARY)
    for (const s of workers) served.set(s, s.retiredRequests)
    const requests = this.families.get(REQUESTS)
    if (requests) {
      for (const line of requests.lines.values()) {
        for (const s of workers) served.set(s, served.get(s)! + (line.values[s.index] ?? 0))
      }
    }

    if (this.waiting.size > 0) this.stopWaiting()
    const out: string[] = []
    const folding = this.folded.size > 0
    const presentedExpired: ReadonlySet<string>[] = []
    for (const s of this.slots.values()) presentedExpired[s.index] = s.presentedExpired
    const nowSeconds = (state.now ?? Date.now()) / 1000
    for (const f of this.families.values()) {
      out.push(f.headers[format])
      if (f.base === IDENTITIES) {
        this.writeIdentities(out, present)
        continue
      }
      for (const [key, line] of f.lines) {
        // a line no process renders goes, unless it kept counts of an identity some worker still tracks
        // for the same service (after a reload renamed the service, the old one's lines go, as in one process)
        const kept =
          line.retiring && line.identity !== undefined && present.get(line.identity)?.service === line.service
        if (line.processes === 0 && line.extra === undefined && !kept) {
          f.lines.delete(key)
          continue
        }
        if (folding && line.identity !== undefined && this.folded.has(line.identity)) continue
        if (this.waiting.size > 0 && line.identity !== undefined && this.waiting.has(line.identity)) continue
        out.push(f.earliest ? line.render(inUse(line, presentedExpired, nowSeconds)) : line.render())
      }
    }
    const service = `service="${escapeLabelValue(state.service)}"`
    writeHeader(out, WORKER_REQUESTS, openMetrics)
    for (const [s, n] of served)
      out.push(`${WORKER_REQUESTS.name}_total{${service},worker="${s.label}"} ${formatValue(n)}\n`)
    writeHeader(out, WORKER_RESTARTS, openMetrics)
    out.push(`${WORKER_RESTARTS.name}_total{${service}} ${state.restarts}\n`)
    if (state.stale !== undefined) {
      writeHeader(out, WORKER_STALE, openMetrics)
      state.stale.forEach((stale, i) => {
        out.push(`${WORKER_STALE.name}{${service},worker="${i + 1}"} ${stale ? 1 : 0}\n`)
      })
    }
    if (openMetrics) out.push('# EOF\n')
    return out.join('')
  }

  /**
   * The identities with a slot of the pod's cap (podIdentityKey), for the workers: each makes room for
   * them in its own table, so what they do on a worker whose table other names filled is still theirs.
   */
  admittedIdentities(): string[] {
    return [...this.admitted.keys()]
  }

  /** the identities folded until the last scrape that got a slot at it: workers start their series again */
  startedOver(): readonly string[] {
    return this.unfolded
  }

  private slot(process: string): Slot {
    let slot = this.slots.get(process)
    if (slot === undefined) {
      slot = {
        label: process,
        index: this.slots.size,
        seq: -1,
        families: [],
        lines: [],
        active: true,
        requestNamed: [],
        issued: [],
        presentedExpired: NONE_PRESENTED_EXPIRED,
        retiredRequests: 0,
      }
      this.slots.set(process, slot)
    }
    return slot
  }

  private clear(slot: Slot): void {
    for (const line of slot.lines) line?.unset(slot.index)
    slot.lines = []
    slot.families = []
    slot.requestNamed = []
    slot.issued = []
    slot.presentedExpired = NONE_PRESENTED_EXPIRED
    slot.seq = -1
  }

  /** the pod's family of a process's family; undefined when that process's lines of it do not count */
  private family(def: PodFamilyDef, primary: boolean): Family | undefined {
    const base = def.type === 'counter' ? def.name.replace(/_total$/, '') : def.name
    let f = this.families.get(base)
    if (f === undefined) {
      const nhi = base.startsWith('nhi_')
      const help = def.help === '' ? '' : ` ${def.help}`
      const omName = def.type === 'counter' ? base : def.name
      f = {
        base,
        type: def.type,
        headers: [
          `# HELP ${def.name}${help}\n# TYPE ${def.name} ${def.type}\n`,
          `# HELP ${omName}${help}\n# TYPE ${omName} ${def.type}\n`,
        ],
        perProcess: !nhi,
        earliest: base === EXPIRY,
        from:
          !nhi || SUMMED_WITH_PRIMARY.has(base) ? 'both' : PRIMARY_FAMILIES.has(base) ? 'primary' : 'workers',
        lines: new Map(),
      }
      this.families.set(base, f)
    }
    if (f.base === IDENTITIES) return undefined
    if (f.from === 'both') return f
    return (f.from === 'primary') === primary ? f : undefined
  }

  /** identities the workers track now (they have a last-seen line), in the order they first showed up */
  private present(): Map<string, Present> {
    const present = new Map<string, Present>()
    for (const line of this.families.get(LAST_SEEN)?.lines.values() ?? []) {
      if (line.identity === undefined || line.processes === 0 || present.has(line.identity)) continue
      present.set(line.identity, {
        verified: false,
        fromRequest: false,
        issuer: undefined,
        kind: line.kind,
        service: line.service,
      })
    }
    for (const line of this.families.get(REQUESTS)?.lines.values() ?? []) {
      if (!line.verified || line.identity === undefined || line.processes === 0) continue
      const p = present.get(line.identity)
      if (p) p.verified = true
    }
    for (const slot of this.slots.values()) {
      for (const key of slot.requestNamed) {
        const p = present.get(key)
        if (p) p.fromRequest = true
      }
      for (const [key, issuer] of slot.issued) {
        const p = present.get(key)
        if (p && p.issuer === undefined) p.issuer = issuer
      }
    }
    return present
  }

  /** first come, first admitted, as IdentityTable does it, over the whole pod */
  private admit(present: Map<string, Present>, limits: IdentityTableLimits): void {
    let shares = this.shares
    if (shares === undefined) {
      shares = new Shares(limits)
      this.shares = shares
    } else shares.setLimits(limits)
    for (const [key, held] of this.admitted) {
      const p = present.get(key)
      if (p === undefined) {
        this.admitted.delete(key)
        this.admittedVersion++
        shares.give(held.madeUp, held.issuer)
      } else if (held.issuer === undefined && p.issuer !== undefined) {
        // Workers name only capped issuers, so an identity admitted before a reload capped its issuer was
        // charged to none: charged now, the new cap counts it as one process's table does (which knows
        // every identity's issuer), instead of admitting a full cap of newcomers on top of it.
        held.issuer = p.issuer
        shares.take(false, p.issuer)
      }
    }
    for (const [key, values] of this.folded) {
      if (present.has(key)) continue
      this.folded.delete(key)
      for (const [overflowKey, { family, value }] of values) {
        this.carry(family, overflowKey, value)
      }
    }
    // A folded identity is admitted too once there is room (an admitted one went idle on every worker, or a
    // reload raised a cap), as one process gives it a slot at its next request
    for (const [key, p] of present) {
      if (this.admitted.has(key)) continue
      const sep = key.indexOf('\u0000')
      const madeUp = madeUpName(key.slice(sep + 1), key.slice(0, sep), p.verified, p.fromRequest)
      const fits = this.admitted.size < limits.maxIdentities && shares.fits(madeUp, p.issuer)
      const folded = this.folded.has(key)
      if (fits) {
        this.admitted.set(key, { madeUp, issuer: p.issuer })
        this.admittedVersion++
        shares.take(madeUp, p.issuer)
        if (folded) {
          this.folded.delete(key)
          this.unfolded.push(key)
        }
      } else if (!folded) this.folded.set(key, new Map())
    }
  }

  /**
   * Folded identities' lines go to their overflow lines (counters and histograms summed, last seen the
   * latest), and their requests count in nhi_identity_overflow_total, as one process counts a request
   * that does not fit; with what was carried over from folded identities no worker tracks any more.
   */
  private fold(): void {
    for (const line of this.extras) line.extra = undefined
    this.extras = []
    if (this.unfolded.length > 0) this.unfold()
    if (this.folded.size === 0 && this.carried.size === 0) return
    const extra = new Map<string, Folded & { max: boolean }>()
    const add = (family: Family, key: string, value: number, max: boolean) => {
      const was = extra.get(key)
      if (was === undefined) extra.set(key, { family, value, max })
      else was.value = max ? Math.max(was.value, value) : was.value + value
    }
    const foldedNow = new Map<string, Map<string, Folded>>()
    const overflow = this.families.get(OVERFLOW)
    if (this.folded.size > 0) {
      for (const f of this.families.values()) {
        if (f.perProcess) continue
        const additive = f.type !== 'gauge'
        if (!additive && f.base !== LAST_SEEN) continue
        for (const line of f.lines.values()) {
          if (line.identity === undefined || !this.folded.has(line.identity)) continue
          if (line.processes === 0 && !line.retiring) continue
          const value = line.value()
          add(f, line.overflowKey, value, !additive)
          let mine = foldedNow.get(line.identity)
          if (!mine) {
            mine = new Map()
            foldedNow.set(line.identity, mine)
          }
          // last seen the latest, as the overflow entry of one process has it
          const sum = (family: Family, key: string, v: number) => {
            const was = mine!.get(key)
            const value = was === undefined ? v : additive ? was.value + v : Math.max(was.value, v)
            mine!.set(key, { family, value })
          }
          sum(f, line.overflowKey, value)
          // what one process counts when an identity does not fit: every request it makes
          if (f.base === REQUESTS && overflow)
            sum(overflow, `${OVERFLOW}_total{service="${line.service}"}`, value)
        }
      }
    }
    for (const [key, values] of foldedNow) this.folded.set(key, values)
    for (const key of this.folded.keys()) if (!foldedNow.has(key)) this.folded.set(key, new Map())
    for (const values of foldedNow.values()) {
      for (const [key, { family, value }] of values) if (family === overflow) add(family, key, value, false)
    }
    for (const [key, { family, value }] of this.carried) add(family, key, value, family.type === 'gauge')

    for (const [key, { family, value }] of extra) {
      let line = family.lines.get(key)
      if (line === undefined) {
        line = new Line(key, family)
        family.lines.set(key, line)
      }
      line.extra = value
      this.extras.push(line)
    }
  }

  /**
   * What identities folded until this scrape had counted stays in their `__overflow__` series (and in
   * nhi_identity_overflow_total), where one process had counted it: carried there. Their own counter and
   * histogram lines go; the workers, told to start those series again, send them anew (a request of theirs
   * that a worker counts before it is told is lost with the old lines).
   */
  private unfold(): void {
    const unfolded = new Set(this.unfolded)
    const overflow = this.families.get(OVERFLOW)
    for (const f of this.families.values()) {
      if (f.perProcess || (f.type === 'gauge' && f.base !== LAST_SEEN)) continue
      for (const [key, line] of f.lines) {
        if (line.identity === undefined || !unfolded.has(line.identity)) continue
        const counted = line.value()
        this.carry(f, line.overflowKey, counted)
        // its own last seen goes on: only the overflow entry's keeps the time it was last seen folded
        if (f.type === 'gauge') continue
        if (f.base === REQUESTS && overflow)
          this.carry(overflow, `${OVERFLOW}_total{service="${line.service}"}`, counted)
        for (const slot of this.slots.values()) {
          // the worker served them: its nhi_worker_requests_total keeps them
          if (f.base === REQUESTS) slot.retiredRequests += line.values[slot.index] ?? 0
          line.unset(slot.index)
        }
        line.orphaned = true
        f.lines.delete(key)
      }
    }
    for (const key of unfolded) this.waiting.add(key)
    // a worker's series started again render with the keys they had: its next snapshot is whole, so that
    // they come back as new lines, not as values of the ones that went
    for (const slot of this.slots.values()) if (slot.label !== PRIMARY) slot.seq = -1
  }

  /** identities waiting for a request after they got a slot: those with a request line again, or gone, end */
  private stopWaiting(): void {
    for (const key of this.waiting) if (!this.admitted.has(key)) this.waiting.delete(key)
    for (const line of this.families.get(REQUESTS)?.lines.values() ?? [])
      if (line.identity !== undefined && line.processes > 0) this.waiting.delete(line.identity)
  }

  /** what stays in an overflow line when the identity that counted it leaves: summed, last seen the latest */
  private carry(family: Family, key: string, value: number): void {
    const was = this.carried.get(key)
    const gauge = family.type === 'gauge'
    const carried = was === undefined ? value : gauge ? Math.max(was.value, value) : was.value + value
    this.carried.set(key, { family, value: carried })
  }

  private writeIdentities(out: string[], present: Map<string, Present>): void {
    const byKind = new Map<string, number>()
    for (const key of this.admitted.keys()) {
      const p = present.get(key)
      if (!p || this.waiting.has(key)) continue
      const labels = `service="${p.service}",kind="${p.kind}"`
      byKind.set(labels, (byKind.get(labels) ?? 0) + 1)
    }
    for (const [labels, n] of byKind) out.push(`${IDENTITIES}{${labels}} ${n}\n`)
  }
}

const PRIMARY = 'primary'
const NONE_PRESENTED_EXPIRED: ReadonlySet<string> = new Set()

function withWorker(key: string, worker: string): string {
  const brace = key.indexOf('{')
  return brace === -1 ? `${key}{worker="${worker}"}` : `${key.slice(0, -1)},worker="${worker}"}`
}

/**
 * The pod's credential expiry of an identity: the earliest of its workers', leaving out a worker's that was
 * valid when presented there and has expired since. The identity's requests went to other workers since (its
 * connections moved), or a long request there outlived it: its client renewed it, and one process leaves it
 * out. One presented after its expiry stays in. All of them left out: the identity stopped calling, and keeps
 * the value of its last requests, as in one process.
 */
function inUse(line: Line, presentedExpired: readonly ReadonlySet<string>[], nowSeconds: number): number {
  let earliest: number | undefined
  for (let i = 0; i < line.values.length; i++) {
    const x = line.values[i]
    if (x === undefined) continue
    const presentedAfterExpiry =
      line.identity !== undefined && presentedExpired[i]?.has(line.identity) === true
    if (expiredSincePresented(x, presentedAfterExpiry, nowSeconds)) continue
    if (earliest === undefined || x < earliest) earliest = x
  }
  return earliest ?? line.value()
}
