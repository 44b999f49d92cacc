// Text rendering of `nhi-proxy explain`, separate from the pipeline so it can be golden-tested on its own.
import type { RuleTrace } from '../rules/rule-set.ts'
import { isoFromSeconds } from '../telemetry/identities.ts'
import type { EvidenceSet, Identity, PolicyDecision } from '../types.ts'
import { printable } from './prometheus-api.ts'

/** What explain renders; the pipeline's evaluation plus the request and the rule count. */
export interface ExplainReport {
  request: { method: string; path: string; remoteAddr: string; headers: string[] }
  evidence: EvidenceSet
  trace: RuleTrace[]
  ruleCount: number
  identity: Identity
  decision: PolicyDecision
  policyMode: string
  route: string
  /** what the proxy answers itself instead of forwarding (401 for an invalid token under jwt.onInvalid reject, 403 for an enforced deny) */
  reject?: { status: number; body: string }
  notes: string[]
}

function fmtAttrs(attrs: Readonly<Record<string, string>>): string {
  return Object.keys(attrs)
    .sort()
    .map((k) => `${k}=${attrs[k]}`)
    .join(' ')
}

/**
 * Plain-text report, one line per array element (stable: golden-tested). Most of it is what the request
 * carried (headers, claims, captures, the path): every line is made printable, so none of that can drive
 * the terminal or start a line that reads as part of the report.
 */
export function renderExplain(r: ExplainReport): string[] {
  const lines: string[] = []
  lines.push(`request: ${r.request.method} ${r.request.path} from ${r.request.remoteAddr}`)
  for (const h of r.request.headers) lines.push(`  ${h}`)
  lines.push('evidence:')
  const ev = r.evidence
  let any = false
  for (const c of ev.credentials) {
    lines.push(`  ${c.source.name.padEnd(10)} ${c.source.describe(c.evidence)}`)
    any = true
  }
  for (const f of ev.failures) {
    lines.push(`  failure    ${f.source}: ${f.reason}${f.detail ? ` (${f.detail})` : ''}`)
    any = true
  }
  if (!any) lines.push('  (no credentials)')
  if (ev.anomalies.length) lines.push(`  anomalies  ${ev.anomalies.join(', ')}`)
  lines.push(`rules (${r.ruleCount}, first match wins):`)
  if (r.ruleCount === 0) lines.push('  (no identity rules configured)')
  for (const t of r.trace) {
    lines.push(`  ${t.matched ? 'MATCH' : 'no   '} #${t.index + 1} ${t.rule}`)
    const shown = t.matched ? t.reasons : t.reasons.slice(-1)
    for (const reason of shown) lines.push(`          ${reason}`)
    if (t.captures) lines.push(`          captures: ${fmtAttrs(t.captures)}`)
  }
  const last = r.trace[r.trace.length - 1]
  if (last?.matched && r.trace.length < r.ruleCount) {
    lines.push(`  (${r.ruleCount - r.trace.length} later rules not evaluated)`)
  }
  if (!last?.matched) lines.push(`  no rule matched: using ${r.identity.rule ?? 'the default'}`)
  const id = r.identity
  lines.push(`identity: ${id.name}`)
  lines.push(`  kind=${id.kind} source=${id.source} verified=${id.verified} rule=${id.rule ?? '-'}`)
  if (id.team !== undefined || id.zone !== undefined)
    lines.push(`  team=${id.team ?? '-'} zone=${id.zone ?? '-'}`)
  if (Object.keys(id.attributes).length) lines.push(`  attributes: ${fmtAttrs(id.attributes)}`)
  if (id.expiresAt !== undefined)
    lines.push(`  expires: ${isoFromSeconds(id.expiresAt) ?? `${id.expiresAt} (past any date)`}`)
  const d = r.decision
  lines.push(
    d.skipped
      ? `policy: off (not evaluated)`
      : `policy: ${d.decision} (mode ${r.policyMode}, rule ${d.rule})`,
  )
  lines.push(`route: ${r.route}`)
  if (r.reject) lines.push(`answer: ${r.reject.status} from the proxy, not forwarded: ${r.reject.body}`)
  for (const n of r.notes) lines.push(`note: ${n}`)
  return lines.map(printable)
}
