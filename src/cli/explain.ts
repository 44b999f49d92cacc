// `nhi-proxy explain`: the identity a request would get, with the evidence, every rule tried (and why it
// did or did not match), and the policy decision. Runs the real engine: tokens are really verified.
import { X509Certificate } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { formatDiagnostic } from '../config/diagnostics.ts'
import { loadConfigFile } from '../config/loader.ts'
import type { Config } from '../config/schema.ts'
import { Engine } from '../engine.ts'
import { certEvidenceFromX509 } from '../identity/certificate.ts'
import type { RuleTrace } from '../rules/engine.ts'
import type {
  CertEvidence,
  ConnectionInfo,
  EvidenceSet,
  Failure,
  Identity,
  PolicyDecision,
  RequestInfo,
} from '../types.ts'
import type { Out } from './check.ts'

export interface ExplainOptions {
  config: string
  /** 'Name: value' */
  headers: string[]
  token?: string
  /** PEM file presented as the mTLS client certificate */
  cert?: string
  ua?: string
  method: string
  path: string
  remoteAddr?: string
  json: boolean
}

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

const SAFE_HEADER_ECHO = /^(authorization|cookie|x-api-key|proxy-authorization)$/i

export function parseHeaderArgs(args: readonly string[]): Record<string, string> | string {
  const headers: Record<string, string> = {}
  for (const h of args) {
    const i = h.indexOf(':')
    if (i <= 0) return `invalid header "${h}": expected 'Name: value'`
    headers[h.slice(0, i).trim().toLowerCase()] = h.slice(i + 1).trim()
  }
  return headers
}

/** mTLS evidence from a PEM file, verified against listen.https.clientCA when one is configured. */
async function certFromFile(path: string, config: Config, notes: string[]): Promise<CertEvidence | Failure> {
  const cert = new X509Certificate(await readFile(path))
  const caFile = config.listen.https?.clientCA
  let verified = false
  if (caFile) {
    try {
      const ca = new X509Certificate(await readFile(caFile))
      verified = cert.checkIssued(ca) && cert.verify(ca.publicKey)
      if (!verified) notes.push(`certificate is not issued by ${caFile}`)
    } catch (e) {
      notes.push(`cannot read clientCA ${caFile}: ${(e as Error).message}`)
    }
  } else notes.push('no listen.https.clientCA configured: the certificate is treated as unverified')
  return certEvidenceFromX509(cert, 'mtls', verified)
}

export async function runExplain(opts: ExplainOptions, out: Out): Promise<number> {
  const loaded = await loadConfigFile(opts.config)
  if (!loaded.ok) {
    for (const d of loaded.errors) out(formatDiagnostic(d))
    return 1
  }
  const config = loaded.config
  const headers = parseHeaderArgs(opts.headers)
  if (typeof headers === 'string') {
    out(headers)
    return 1
  }
  if (opts.token) headers['authorization'] = `Bearer ${opts.token}`
  if (opts.ua !== undefined) headers['user-agent'] = opts.ua
  const notes: string[] = []
  const remoteAddr = opts.remoteAddr ?? '127.0.0.1'
  const conn: ConnectionInfo = { remoteAddress: remoteAddr, remotePort: 0, tls: opts.cert !== undefined }
  if (opts.cert) {
    try {
      conn.peerCert = await certFromFile(opts.cert, config, notes)
    } catch (e) {
      out(`${opts.cert}: cannot read certificate: ${(e as Error).message}`)
      return 1
    }
  }
  const q = opts.path.indexOf('?')
  const req: RequestInfo = {
    method: opts.method.toUpperCase(),
    path: q < 0 ? opts.path : opts.path.slice(0, q),
    url: opts.path,
    headers,
  }
  const engine = new Engine(config)
  try {
    if (opts.token) await engine.start()
    const result = await engine.evaluate(req, conn, { trace: true })
    const report: ExplainReport = {
      request: {
        method: req.method,
        path: opts.path,
        remoteAddr,
        headers: Object.keys(headers).map(
          (k) => `${k}: ${SAFE_HEADER_ECHO.test(k) ? '<redacted>' : headers[k]}`,
        ),
      },
      evidence: result.evidence,
      trace: result.trace,
      ruleCount: config.identities.length,
      identity: result.identity,
      decision: result.decision,
      policyMode: config.policy.mode,
      route: result.route,
      notes,
    }
    for (const line of opts.json ? [JSON.stringify(report, null, 2)] : renderExplain(report)) out(line)
    return 0
  } finally {
    engine.close()
  }
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
  if (ev.useragent && ev.useragent.ua !== '') {
    lines.push(`  useragent  ${ev.useragent.category} product=${ev.useragent.product}`)
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
  if (!last?.matched) lines.push(`  no rule matched: built-in ${r.identity.rule ?? 'default'}`)
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
