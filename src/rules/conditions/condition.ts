// What every rule condition implements, and the helpers they share for matching and explaining.
import type { ConnectionInfo, EvidenceSet, RequestInfo } from '../../types.ts'
import type { CompiledPattern } from '../pattern.ts'

export type Captures = Record<string, string>

/** A condition sets its failure reason here; `captures` accumulates across conditions. */
export interface Scratch {
  captures: Captures | undefined
  reason: string
}

export interface Condition {
  /** label for traces, e.g. "spiffe" */
  readonly label: string
  /** depends on the request itself (not only on credentials): disables the classification cache */
  readonly perRequest: boolean
  /** the capture names it fills when it matches */
  readonly captures: readonly string[]
  test(ev: EvidenceSet, req: RequestInfo, conn: ConnectionInfo, s: Scratch): boolean
}

const MAX_SHOWN_VALUE = 120
export function show(v: string): string {
  return JSON.stringify(v.length > MAX_SHOWN_VALUE ? `${v.slice(0, MAX_SHOWN_VALUE)}…` : v)
}

export function addCaptures(s: Scratch, found: Captures): void {
  for (const k in found) {
    s.captures ??= {}
    if (!(k in s.captures)) s.captures[k] = found[k]!
  }
}

export function matchInto(p: CompiledPattern, value: string, label: string, s: Scratch): boolean {
  const m = p.match(value)
  if (!m) {
    s.reason = `${label}: ${show(value)} does not match ${show(p.source)}`
    return false
  }
  if (p.captures.length) addCaptures(s, m)
  return true
}
