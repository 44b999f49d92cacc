// /metrics of a pod running `workers: N` (docs/reference.md "Workers"): every worker's exposition merged
// into one. Counters and histograms are summed series by series, gauges take the largest value, and the
// identity cap (metrics.maxIdentities, maxUnverifiedIdentities) is applied once for the whole pod: each
// worker caps its own table, but N workers can each track different identities, so identities beyond the
// pod's cap are folded into their source's `__overflow__` series here, with their requests counted in
// nhi_identity_overflow_total as the single-process mode counts them. Process and runtime families
// (process_*, nodejs_*) are per process: each keeps its series with a `worker` label.
import { escapeLabelValue, type FamilyInfo, formatValue, writeHeader } from './exposition.ts'
import { type IdentityTableLimits, OVERFLOW_IDENTITY, unverifiedCap } from './identity-table.ts'

export interface ProcessExposition {
  /** the `worker` label of this process's runtime series: "1"…"N", or "primary" */
  worker: string
  body: string
}

interface Sample {
  /** `name{labels}` as rendered (or `name` without labels) */
  prefix: string
  name: string
  labels: string
  value: number
}

interface ParsedFamily {
  /** family name, counters without `_total` (as OpenMetrics names them), so both formats share keys */
  base: string
  type: string
  header: string
  samples: Sample[]
}

const HEADER = /^# (HELP|TYPE|UNIT) (\S+)(?: (.*))?$/
/** the labels every per-identity series starts with */
const IDENTITY = /^service="((?:[^"\\]|\\.)*)",identity="((?:[^"\\]|\\.)*)",source="([^"]*)"/
const KIND = /,kind="([^"]*)"/

function parseValue(text: string): number {
  if (text === '+Inf') return Number.POSITIVE_INFINITY
  if (text === '-Inf') return Number.NEGATIVE_INFINITY
  if (text === 'NaN') return Number.NaN
  return Number(text)
}

const OPEN_BRACE = 0x7b
const SPACE = 0x20
const BACKSLASH = 0x5c

/**
 * Where the labels that start at `from` end (their `}`), jumping from quote to quote: a `}` inside a quoted
 * value is not the end, and a quote escaped with a backslash does not close the value.
 */
function labelsEnd(line: string, from: number): number {
  let i = from
  for (;;) {
    const brace = line.indexOf('}', i)
    const open = line.indexOf('"', i)
    if (open === -1 || brace === -1 || brace < open) return brace === -1 ? line.length : brace
    let close = open
    do close = line.indexOf('"', close + 1)
    while (close !== -1 && escaped(line, close))
    if (close === -1) return line.length
    i = close + 1
  }
}

/** an odd number of backslashes before the quote at `at` */
function escaped(line: string, at: number): boolean {
  let n = 0
  while (line.charCodeAt(at - 1 - n) === BACKSLASH) n++
  return n % 2 === 1
}

/**
 * One sample line; an OpenMetrics exemplar or a timestamp after the value is ignored. The name, labels and
 * `name{labels}` are slices of the line, not new strings: a pod scrape parses every worker's 20,000+ lines.
 */
function parseSample(line: string): Sample | undefined {
  const n = line.length
  // the name ends at the first `{` or space: a metric name has neither
  const space = line.indexOf(' ')
  const brace = line.indexOf('{')
  let i = space === -1 ? (brace === -1 ? n : brace) : brace === -1 || space < brace ? space : brace
  const name = line.slice(0, i)
  let labels = ''
  let prefixEnd = i
  if (line.charCodeAt(i) === OPEN_BRACE) {
    const start = i + 1
    i = labelsEnd(line, start)
    labels = line.slice(start, i)
    i++
    prefixEnd = i
  }
  while (line.charCodeAt(i) === SPACE) i++
  let end = line.indexOf(' ', i)
  if (end === -1) end = n
  if (name === '' || end === i) return undefined
  return {
    prefix: labels === '' ? name : line.slice(0, prefixEnd),
    name,
    labels,
    value: parseValue(line.slice(i, end)),
  }
}

/** Families of a Prometheus text or OpenMetrics body, in order, samples grouped under their header. */
export function parseExposition(body: string): ParsedFamily[] {
  const families: ParsedFamily[] = []
  let current: (ParsedFamily & { headerName: string }) | undefined
  for (const line of body.split('\n')) {
    if (line === '' || line === '# EOF') continue
    if (line.startsWith('#')) {
      const m = HEADER.exec(line)
      if (!m) continue
      const name = m[2]!
      if (current?.headerName !== name) {
        current = { base: name, headerName: name, type: 'untyped', header: '', samples: [] }
        families.push(current)
      }
      current.header += `${line}\n`
      if (m[1] === 'TYPE') {
        current.type = m[3] ?? 'untyped'
        if (current.type === 'counter') current.base = name.replace(/_total$/, '')
      }
      continue
    }
    const s = parseSample(line)
    if (s && current) current.samples.push(s)
  }
  return families
}

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

interface MergedFamily {
  header: string
  type: string
  /** one lookup per sample: the second worker's sample adds to the first's in place */
  samples: Map<string, { value: number }>
}

interface Present {
  verified: boolean
  kind: string
  service: string
}

export interface PodState {
  service: string
  limits: IdentityTableLimits
  /** workers started again after they exited, since the pod started */
  restarts: number
}

/**
 * Merges scrapes. Keeps the pod-wide admission state between scrapes so that, as in one process, an
 * identity keeps its own series (or stays folded) for as long as some worker tracks it.
 */
export class PodMetrics {
  /** pod-wide admitted identities (`source\0name`) → holds an unverified slot */
  private readonly admitted = new Map<string, boolean>()
  private unverified = 0
  /** identities beyond the cap → their counter/histogram samples at the last scrape, relabelled to overflow */
  private readonly folded = new Map<string, Map<string, { base: string; value: number }>>()
  /**
   * Samples of folded identities no worker tracks any more: still part of the overflow series, as in one
   * process the overflow entry keeps what was recorded into it. Keyed by overflow series: bounded like them.
   */
  private readonly carried = new Map<string, { base: string; value: number }>()

  merge(
    workers: readonly ProcessExposition[],
    primary: ProcessExposition,
    state: PodState,
    openMetrics: boolean,
  ): string {
    const parsed = workers.map((w) => ({ worker: w.worker, families: parseExposition(w.body) }))
    const present = this.present(parsed)
    this.admit(present, state.limits)

    const merged = new Map<string, MergedFamily>()
    const family = (base: string, type: string, header: string): MergedFamily => {
      let f = merged.get(base)
      if (!f) {
        f = { header, type, samples: new Map() }
        merged.set(base, f)
      }
      return f
    }
    const add = (f: MergedFamily, prefix: string, value: number, combine: 'sum' | 'max') => {
      const was = f.samples.get(prefix)
      if (was === undefined) f.samples.set(prefix, { value })
      else was.value = combine === 'sum' ? was.value + value : Math.max(was.value, value)
    }
    const foldedNow = new Map<string, Map<string, { base: string; value: number }>>()
    const perWorker: [string, number][] = []

    const folding = this.folded.size > 0
    for (const { worker, families } of parsed) {
      let served = 0
      for (const f of families) {
        if (PRIMARY_FAMILIES.has(f.base)) continue
        const into = family(f.base, f.type, f.header)
        if (f.base === IDENTITIES) continue
        if (!f.base.startsWith('nhi_')) {
          for (const s of f.samples) add(into, withWorker(s, worker), s.value, 'sum')
          continue
        }
        const additive = f.type !== 'gauge'
        for (const s of f.samples) {
          if (f.base === REQUESTS) served += s.value
          // nothing folded (the pod is under its cap): no identity to look up
          const m = folding ? IDENTITY.exec(s.labels) : null
          const key = m && m[2] !== OVERFLOW_IDENTITY ? `${m[3]}\u0000${m[2]}` : undefined
          if (m && key !== undefined && this.folded.has(key)) {
            if (!additive && f.base !== LAST_SEEN) continue
            const labels = `service="${m[1]}",identity="${OVERFLOW_IDENTITY}",source="${m[3]}"${s.labels.slice(m[0].length)}`
            const prefix = `${s.name}{${labels}}`
            add(into, prefix, s.value, additive ? 'sum' : 'max')
            if (!additive) continue
            let mine = foldedNow.get(key)
            if (!mine) {
              mine = new Map()
              foldedNow.set(key, mine)
            }
            const sum = (base: string, p: string, v: number) => {
              const was = mine!.get(p)
              mine!.set(p, { base, value: (was?.value ?? 0) + v })
            }
            sum(f.base, prefix, s.value)
            // what one process counts when an identity does not fit: every request it makes
            if (f.base === REQUESTS) sum(OVERFLOW, `${OVERFLOW}_total{service="${m[1]}"}`, s.value)
            continue
          }
          add(into, s.prefix, s.value, additive ? 'sum' : 'max')
        }
      }
      perWorker.push([worker, served])
    }
    for (const [key, samples] of foldedNow) this.folded.set(key, samples)
    for (const key of this.folded.keys()) if (!foldedNow.has(key)) this.folded.set(key, new Map())
    const overflowFamily = merged.get(OVERFLOW)
    for (const samples of foldedNow.values()) {
      for (const [prefix, { base, value }] of samples) {
        if (base === OVERFLOW && overflowFamily) add(overflowFamily, prefix, value, 'sum')
      }
    }
    for (const [prefix, { base, value }] of this.carried) {
      const f = merged.get(base)
      if (f) add(f, prefix, value, 'sum')
    }

    for (const f of parseExposition(primary.body)) {
      if (PRIMARY_FAMILIES.has(f.base) || SUMMED_WITH_PRIMARY.has(f.base)) {
        const into = family(f.base, f.type, f.header)
        for (const s of f.samples) add(into, s.prefix, s.value, 'sum')
      } else if (!f.base.startsWith('nhi_')) {
        const into = family(f.base, f.type, f.header)
        for (const s of f.samples) add(into, withWorker(s, primary.worker), s.value, 'sum')
      }
    }

    const identities = merged.get(IDENTITIES)
    if (identities) {
      const byKind = new Map<string, { value: number }>()
      for (const key of this.admitted.keys()) {
        const p = present.get(key)
        if (!p) continue
        const prefix = `${IDENTITIES}{service="${p.service}",kind="${p.kind}"}`
        const n = byKind.get(prefix)
        if (n === undefined) byKind.set(prefix, { value: 1 })
        else n.value++
      }
      identities.samples = byKind
    }

    const out: string[] = []
    for (const f of merged.values()) {
      out.push(f.header)
      // the pieces as they are: the one join copies them, with no line string per sample in between
      for (const [prefix, sample] of f.samples) out.push(prefix, ' ', formatValue(sample.value), '\n')
    }
    const service = `service="${escapeLabelValue(state.service)}"`
    writeHeader(out, WORKER_REQUESTS, openMetrics)
    for (const [worker, n] of perWorker)
      out.push(`${WORKER_REQUESTS.name}_total{${service},worker="${worker}"} ${formatValue(n)}\n`)
    writeHeader(out, WORKER_RESTARTS, openMetrics)
    out.push(`${WORKER_RESTARTS.name}_total{${service}} ${state.restarts}\n`)
    if (openMetrics) out.push('# EOF\n')
    return out.join('')
  }

  /** identities the workers track now (from their last-seen series), first worker first */
  private present(parsed: { families: ParsedFamily[] }[]): Map<string, Present> {
    const present = new Map<string, Present>()
    for (const { families } of parsed) {
      for (const f of families) {
        if (f.base !== LAST_SEEN) continue
        for (const s of f.samples) {
          const m = IDENTITY.exec(s.labels)
          if (!m || m[2] === OVERFLOW_IDENTITY) continue
          const key = `${m[3]}\u0000${m[2]}`
          if (!present.has(key))
            present.set(key, { verified: false, kind: KIND.exec(s.labels)?.[1] ?? '', service: m[1]! })
        }
      }
    }
    for (const { families } of parsed) {
      for (const f of families) {
        if (f.base !== REQUESTS) continue
        for (const s of f.samples) {
          if (!s.labels.includes(',verified="true"')) continue
          const m = IDENTITY.exec(s.labels)
          const p = m ? present.get(`${m[3]}\u0000${m[2]}`) : undefined
          if (p) p.verified = true
        }
      }
    }
    return present
  }

  /** first come, first admitted, as IdentityTable does it, over the whole pod */
  private admit(present: Map<string, Present>, limits: IdentityTableLimits): void {
    for (const [key, unverifiedSlot] of this.admitted) {
      if (present.has(key)) continue
      this.admitted.delete(key)
      if (unverifiedSlot) this.unverified--
    }
    for (const [key, samples] of this.folded) {
      if (present.has(key)) continue
      this.folded.delete(key)
      for (const [prefix, { base, value }] of samples) {
        const was = this.carried.get(prefix)
        this.carried.set(prefix, { base, value: (was?.value ?? 0) + value })
      }
    }
    const maxUnverified = unverifiedCap(limits)
    for (const [key, p] of present) {
      if (this.admitted.has(key) || this.folded.has(key)) continue
      const fits =
        this.admitted.size < limits.maxIdentities && (p.verified || this.unverified < maxUnverified)
      if (fits) {
        this.admitted.set(key, !p.verified)
        if (!p.verified) this.unverified++
      } else this.folded.set(key, new Map())
    }
  }
}

function withWorker(s: Sample, worker: string): string {
  return `${s.name}{${s.labels === '' ? '' : `${s.labels},`}worker="${worker}"}`
}
