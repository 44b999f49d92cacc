// Text rendering of `nhi-proxy explain`, separate from the engine so it can be golden-tested on its own.
import type { RuleTrace } from '../rules/engine.ts'
import type { CertEvidence, EvidenceSet, Identity, PolicyDecision } from '../types.ts'

/** What explain renders; the engine's evaluation plus the request and the rule count. */
export interface ExplainReport {
  request: { method: string; path: string; remoteAddr: string; headers: string[] }
  evidence: EvidenceSet
  trace: RuleTrace[]
  ruleCount: number
  identity: Identity
  decision: PolicyDecision
  policyMode: string
  route: string
  notes: string[]
}

function describeCert(c: CertEvidence): string {
  const parts = [c.verified ? 'verified' : 'unverified']
  if (c.spiffeId) parts.push(c.spiffeId)
  if (c.subject) parts.push(`subject="${c.subject}"`)
  if (c.dnsSans.length) parts.push(`dns=${c.dnsSans.join(',')}`)
  if (c.sha256) parts.push(`sha256=${c.sha256.slice(0, 16)}…`)
  return parts.join(' ')
}

function fmtAttrs(attrs: Readonly<Record<string, string>>): string {
  return Object.keys(attrs)
    .sort()
    .map((k) => `${k}=${attrs[k]}`)
    .join(' ')
}

/** Plain-text report, one line per array element (stable: golden-tested). */
export function renderExplain(r: ExplainReport): string[] {
  const lines: string[] = []
  lines.push(`request: ${r.request.method} ${r.request.path} from ${r.request.remoteAddr}`)
  for (const h of r.request.headers) lines.push(`  ${h}`)
  lines.push('evidence:')
  const ev = r.evidence
  let any = false
  if (ev.mtls) {
    lines.push(`  mtls       ${describeCert(ev.mtls)}`)
    any = true
  }
  if (ev.xfcc) {
    lines.push(`  xfcc       ${describeCert(ev.xfcc)}${ev.xfcc.via ? ` via ${ev.xfcc.via}` : ''}`)
    any = true
  }
  if (ev.jwt) {
    const sub = typeof ev.jwt.claims['sub'] === 'string' ? ` sub=${ev.jwt.claims['sub']}` : ''
    const profile = ev.jwt.profile ? ` profile=${ev.jwt.profile}` : ''
    lines.push(
      `  jwt        verified iss=${ev.jwt.issuer}${sub} alg=${ev.jwt.alg}${profile} fingerprint=${ev.jwt.fingerprint}`,
    )
    any = true
  }
  if (ev.apikey) {
    lines.push(`  apikey     verified name=${ev.apikey.name} fingerprint=${ev.apikey.fingerprint}`)
    any = true
  }
  if (ev.signature) {
    lines.push(`  signature  verified directory=${ev.signature.directory} keyid=${ev.signature.keyid}`)
    any = true
  }
  if (ev.useragent && ev.useragent.ua !== '') {
    const ua = ev.useragent
    const agent = `${ua.operator ? ` operator=${ua.operator}` : ''}${ua.purpose ? ` purpose=${ua.purpose}` : ''}`
    lines.push(`  useragent  ${ua.category} product=${ua.product}${agent}`)
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
  if (id.expiresAt !== undefined) lines.push(`  expires: ${new Date(id.expiresAt * 1000).toISOString()}`)
  const d = r.decision
  lines.push(
    d.skipped
      ? `policy: off (not evaluated)`
      : `policy: ${d.decision} (mode ${r.policyMode}, rule ${d.rule})`,
  )
  lines.push(`route: ${r.route}`)
  for (const n of r.notes) lines.push(`note: ${n}`)
  return lines
}
