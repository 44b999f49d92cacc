// A worker's half of the pod's /metrics with `workers: N` (docs/reference.md "Workers"): instead of its
// whole exposition as text, which the primary had to parse again at every scrape (40,000 lines for two
// workers at 1,000 identities), a worker sends what changed since the snapshot the primary last applied:
// each line's `name{labels}` once, with a number for it, then only the numbers of lines whose value moved.
// The worker reads its own rendered lines for this, unjoined: a line's key is checked against the line at
// the same place in the last scrape (a comparison, no hashing: 1,000 identities cost 7-11 ms of the
// worker's CPU per scrape with half of them changed, against 30-40 ms when every line was looked up by
// its text), and only lines that moved are looked up in the map of keys.
import { escapeLabelValue } from './exposition.ts'

export interface PodFamilyDef {
  index: number
  /** the family's name in the Prometheus text format (counters with `_total`) */
  name: string
  type: string
  /** HELP text, escaped as the text format writes it */
  help: string
}

/** Structured-cloneable: what crosses from a worker to the primary at each scrape. */
export interface PodSnapshot {
  seq: number
  /** the snapshot this one continues (only changes since it), or -1: everything, forget what came before */
  base: number
  families: PodFamilyDef[]
  /** lines first seen (or all lines, when base is -1): id, its family's index and `name{labels}` */
  lineIds: number[]
  lineFamilies: number[]
  lineKeys: string[]
  /** lines whose value changed, new lines included */
  ids: Int32Array
  values: Float64Array
  /** lines no longer rendered: their ids may be given to new lines later */
  removed: number[]
  /**
   * the identities (podIdentityKey) the worker tracks whose name a rule filled from a request header or the
   * path: nothing in their lines tells, and the pod holds them to the unverified cap. All of them at every
   * snapshot; as many as the worker's unverified cap at most.
   */
  requestNamed: string[]
  /**
   * the identities (podIdentityKey) the worker tracks that a capped token issuer named, with that issuer:
   * nothing in their lines tells, and the pod holds each issuer to its cap. All of them at every snapshot;
   * as many as the worker's issuer caps add up to at most.
   */
  issued: [identity: string, issuer: string][]
  /**
   * the identities (podIdentityKey) whose credential expiry line is of a credential presented after its
   * expiry (a Kubernetes token past `warnafter`): once passed, it stays in the pod's merge, where one that
   * was valid when presented is left out. Its lines cannot tell: a long request presented its credential
   * valid and is recorded after it expired. All of them at every snapshot; usually none.
   */
  presentedExpired: string[]
}

/** An identity as the pod's merge keys it: `source\0name`, the name escaped as in its label. */
export function podIdentityKey(source: string, name: string): string {
  return `${source}\u0000${escapeLabelValue(name)}`
}

const HEADER = /^# (HELP|TYPE) (\S+)(?: (.*))?$/
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

function parseValue(text: string): number {
  if (text === '+Inf') return Number.POSITIVE_INFINITY
  if (text === '-Inf') return Number.NEGATIVE_INFINITY
  if (text === 'NaN' || text === 'Nan') return Number.NaN
  return Number(text)
}

/**
 * Turns a worker's Prometheus text exposition, as the pieces its renderer joins, into snapshots. Holds one
 * id, key, value and place per line the worker renders at the last scrape: bounded by what the
 * worker's own metrics hold.
 */
export class PodExport {
  private seq = 0
  private scrapes = 0
  private readonly familyIndex = new Map<string, number>()
  private readonly families: PodFamilyDef[] = []
  private readonly help = new Map<string, string>()
  private readonly ids = new Map<string, number>()
  private readonly keys: (string | undefined)[] = []
  private readonly lineFamily: number[] = []
  private readonly values: number[] = []
  private readonly seen: number[] = []
  private readonly free: number[] = []
  /** the ids of the last scrape's lines in order, and each line's place in it (-1: new this scrape) */
  private order: number[] = []
  private readonly at: number[] = []

  /**
   * The changes since snapshot `since` when that is the last one this exporter made (the primary applied
   * it), everything otherwise: a reply the primary never applied (it timed out) costs one full snapshot.
   */
  snapshot(
    pieces: readonly string[],
    since: number,
    requestNamed: string[] = [],
    issued: [identity: string, issuer: string][] = [],
    presentedExpired: string[] = [],
  ): PodSnapshot {
    const scrape = ++this.scrapes
    const full = since !== this.seq
    const newFamilies: PodFamilyDef[] = []
    const lineIds: number[] = []
    const lineFamilies: number[] = []
    const lineKeys: string[] = []
    const changedIds: number[] = []
    const changedValues: number[] = []
    // this scrape's lines in order: the next scrape expects the same lines in the same order
    const order: number[] = []
    const previous = this.order
    let hint = 0
    let family = -1
    for (const piece of pieces) {
      let from = 0
      while (from < piece.length) {
        let end = piece.indexOf('\n', from)
        if (end === -1) end = piece.length
        const line = piece.slice(from, end)
        from = end + 1
        if (line === '') continue
        if (line.charCodeAt(0) === 0x23 /* # */) {
          const opened = this.header(line, newFamilies)
          if (opened !== -1) family = opened
          continue
        }
        if (family === -1) continue
        // most lines are where they were at the last scrape: their key is compared, not looked up
        let id = hint < previous.length ? previous[hint]! : -1
        let key = id === -1 ? undefined : this.keys[id]
        if (
          key === undefined ||
          this.seen[id] === scrape ||
          line.charCodeAt(key.length) !== 0x20 ||
          // a slice and ===: V8 compares flat contents directly, startsWith walks them a character at a time
          line.slice(0, key.length) !== key
        ) {
          let space = line.lastIndexOf(' ')
          // an OpenMetrics exemplar (or a label value holding ` # `): the value follows the labels
          if (line.includes(' # ')) space = valueStart(line) - 1
          if (space <= 0) continue
          key = line.slice(0, space)
          const known = this.ids.get(key)
          if (known === undefined) {
            // a slice keeps the whole rendered piece it was cut from alive: a key kept for the line's life
            // is its own copy
            key = ` ${key}`.slice(1)
            id = this.free.pop() ?? this.keys.length
            this.ids.set(key, id)
            this.keys[id] = key
            this.lineFamily[id] = family
            this.values[id] = Number.NaN
            this.at[id] = -1
            lineIds.push(id)
            lineFamilies.push(family)
            lineKeys.push(key)
          } else {
            id = known
            // lines were added or removed before this one: carry on from where it was last time
            if (this.seen[id] !== scrape && this.at[id]! >= 0) hint = this.at[id]!
          }
        }
        hint++
        let valueEnd = line.indexOf(' ', key.length + 1)
        if (valueEnd === -1) valueEnd = line.length
        const value = parseValue(line.slice(key.length + 1, valueEnd))
        if (this.at[id] === -1 || !Object.is(this.values[id], value)) {
          this.values[id] = value
          changedIds.push(id)
          changedValues.push(value)
        }
        this.seen[id] = scrape
        this.at[id] = order.length
        order.push(id)
      }
    }
    this.order = order

    const removed: number[] = []
    for (let id = 0; id < this.keys.length; id++) {
      const key = this.keys[id]
      if (key === undefined || this.seen[id] === scrape) continue
      this.ids.delete(key)
      this.keys[id] = undefined
      this.free.push(id)
      removed.push(id)
    }

    this.seq++
    if (!full) {
      return {
        seq: this.seq,
        base: since,
        families: newFamilies,
        lineIds,
        lineFamilies,
        lineKeys,
        ids: Int32Array.from(changedIds),
        values: Float64Array.from(changedValues),
        removed,
        requestNamed,
        issued,
        presentedExpired,
      }
    }
    const all: PodSnapshot = {
      seq: this.seq,
      base: -1,
      families: [...this.families],
      lineIds: [],
      lineFamilies: [],
      lineKeys: [],
      ids: new Int32Array(0),
      values: new Float64Array(0),
      removed: [],
      requestNamed,
      issued,
      presentedExpired,
    }
    const ids: number[] = []
    const values: number[] = []
    for (let id = 0; id < this.keys.length; id++) {
      const key = this.keys[id]
      if (key === undefined) continue
      all.lineIds.push(id)
      all.lineFamilies.push(this.lineFamily[id]!)
      all.lineKeys.push(key)
      ids.push(id)
      values.push(this.values[id]!)
    }
    all.ids = Int32Array.from(ids)
    all.values = Float64Array.from(values)
    return all
  }

  /** a family's index when `line` is its TYPE line (a new family is defined), -1 for other comments */
  private header(line: string, newFamilies: PodFamilyDef[]): number {
    const m = HEADER.exec(line)
    if (!m) return -1
    const name = m[2]!
    if (m[1] === 'HELP') {
      if (!this.familyIndex.has(name)) this.help.set(name, m[3] ?? '')
      return -1
    }
    let index = this.familyIndex.get(name)
    if (index === undefined) {
      index = this.families.length
      const type = m[3] ?? 'untyped'
      // an OpenMetrics body names a counter family without `_total`: kept by its text-format name
      const textName = type === 'counter' && !name.endsWith('_total') ? `${name}_total` : name
      const def = { index, name: textName, type, help: this.help.get(name) ?? '' }
      this.help.delete(name)
      this.familyIndex.set(name, index)
      this.families.push(def)
      newFamilies.push(def)
    }
    return index
  }
}

/** where the value of a sample line starts: after its name and labels and the spaces after them */
function valueStart(line: string): number {
  const brace = line.indexOf('{')
  const space = line.indexOf(' ')
  let i = brace !== -1 && (space === -1 || brace < space) ? labelsEnd(line, brace + 1) + 1 : space
  while (line.charCodeAt(i) === 0x20) i++
  return i
}
