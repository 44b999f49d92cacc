// `nhi-proxy explain`: the identity a request would get, with the evidence, every rule tried (and why it
// did or did not match), and the policy decision. Runs the real pipeline: tokens are really verified.
import type { X509Certificate } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { formatDiagnostic } from '../config/diagnostics.ts'
import { loadConfigFile } from '../config/loader.ts'
import { redactHeader, redactTarget } from '../config/redact.ts'
import { type Config, configSchema } from '../config/schema.ts'
import {
  certEvidenceFromX509,
  certificateNameConstraints,
  certificateNames,
  loadCertificateDecoder,
  nameConstraintViolation,
  pathToAnchor,
  pemCertificates,
  rootedChain,
  subjectOf,
  undatedChainProblem,
} from '../identity/certificate.ts'
import { evidenceByName } from '../identity/sources/source.ts'
import { AttributionPipeline, readSecretFiles } from '../pipeline/index.ts'
import { requestTarget } from '../proxy/path.ts'
import { hostLinesRefusal, requestLineRefusal } from '../proxy/request-lifecycle.ts'
import {
  type CertEvidence,
  type ConnectionInfo,
  type Failure,
  type RequestInfo,
  recordedDecision,
} from '../types.ts'
import { sha256Hex } from '../util/fingerprint.ts'
import { readProblem } from '../util/read-problem.ts'
import type { Out } from './check.ts'
import { type ExplainReport, renderExplain } from './explain-render.ts'
import { printable } from './prometheus-api.ts'

export type { ExplainReport } from './explain-render.ts'

export interface ExplainOptions {
  /** config file; none → the built-in defaults (no rules, no issuers: built-in knowledge only) */
  config?: string
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

/**
 * Fields of which Node's HTTP/1.1 parser keeps the first line when a request repeats them (the rest it joins:
 * cookies with "; ", any other field with ", "): the live proxy reads what the parser gives it.
 */
const FIRST_LINE_ONLY: ReadonlySet<string> = new Set([
  'age',
  'authorization',
  'content-length',
  'content-type',
  'etag',
  'expires',
  'from',
  'host',
  'if-modified-since',
  'if-unmodified-since',
  'last-modified',
  'location',
  'max-forwards',
  'proxy-authorization',
  'referer',
  'retry-after',
  'server',
  'user-agent',
])

const isHostLine = (h: string) =>
  h
    .slice(0, Math.max(0, h.indexOf(':')))
    .trim()
    .toLowerCase() === 'host'

/** `-H` arguments as the live proxy reads the same header lines: a repeated name as Node's parser merges it */
export function parseHeaderArgs(args: readonly string[]): Record<string, string> | string {
  const headers: Record<string, string> = {}
  for (const [n, h] of args.entries()) {
    const i = h.indexOf(':')
    // not echoed: a -H that lost its colon is as often a credential (`Authorization Bearer …`, a bare token)
    if (i <= 0) return `-H #${n + 1} is not 'Name: value' (no header name before a ':')`
    const name = h.slice(0, i).trim().toLowerCase()
    const value = h.slice(i + 1).trim()
    const before = headers[name]
    if (before === undefined) headers[name] = value
    else if (!FIRST_LINE_ONLY.has(name)) headers[name] = `${before}${name === 'cookie' ? '; ' : ', '}${value}`
  }
  return headers
}

/**
 * mTLS evidence from a PEM file (the client certificate, then any intermediates it would send), judged as the
 * listener judges it: it must chain to a certificate of listen.https.clientCA, be within its dates and be
 * meant for client authentication, or it
 * is a failure rather than evidence. Without a clientCA the live listener does not request client
 * certificates, so the certificate is no evidence here either.
 */
async function certFromPem(
  pem: string,
  config: Config,
  notes: string[],
): Promise<CertEvidence | Failure | undefined> {
  const [cert, ...chain] = pemCertificates(pem)
  if (!cert) throw new Error('no PEM certificate in the file')
  const caFile = config.listen.https?.clientCA
  if (!caFile) {
    notes.push(
      'no listen.https.clientCA configured: the listener does not request client certificates, so --cert is ignored',
    )
    return undefined
  }
  let anchors: X509Certificate[] = []
  try {
    anchors = pemCertificates(await readFile(caFile, 'utf8'))
  } catch (e) {
    notes.push(`cannot read clientCA ${caFile}: ${readProblem(e)}`)
  }
  const failure = (reason: Failure['reason'], what: string): Failure => {
    const detail = `certificate ${what}`
    notes.push(detail)
    return {
      failed: true,
      source: 'mtls',
      reason,
      detail,
      fingerprint: sha256Hex(cert.raw).slice(0, 16),
      attributes: { cert_sha256: sha256Hex(cert.raw) },
    }
  }
  const trusted = pathToAnchor(cert, chain, anchors)
  if (!trusted) return failure('cert_untrusted', `is not issued by ${caFile}`)
  const full = rootedChain(trusted, anchors)
  if (!full)
    return failure(
      'cert_untrusted',
      `chain ends at ${subjectOf(trusted.at(-1)!)}, which is not self-signed: the listener needs the root CA in ${caFile}`,
    )
  // what the listener refuses whatever the dates comes before them: its OpenSSL reports the dates only when
  // nothing else is wrong, and names a violated name constraint over them (see parsePeerCertificate)
  await loadCertificateDecoder()
  const problem = undatedChainProblem(full)
  if (problem) return failure('cert_untrusted', problem)
  const names = certificateNames(cert.raw).sans
  for (const c of full.slice(1)) {
    const constraints = certificateNameConstraints(c.raw)
    if (constraints === undefined) continue
    const { violation, unchecked } = nameConstraintViolation(names, constraints)
    if (violation !== undefined)
      return failure(
        'cert_untrusted',
        `names ${violation}, which the name constraints of ${subjectOf(c)} rule out`,
      )
    if (unchecked)
      notes.push(
        `${subjectOf(c)} has name constraints of a kind explain does not evaluate (directory names, e-mail, IP addresses): the listener does`,
      )
  }
  // the root above an intermediate of clientCA too: OpenSSL checks the dates of the whole chain it built
  const now = Date.now()
  for (const c of full) {
    if (Date.parse(c.validTo) < now) return failure('cert_expired', `chain has expired (${subjectOf(c)})`)
    if (Date.parse(c.validFrom) > now)
      return failure('cert_not_yet_valid', `chain is not yet valid (${subjectOf(c)})`)
  }
  return certEvidenceFromX509(cert, 'mtls', true)
}

export async function runExplain(opts: ExplainOptions, report: Out): Promise<number> {
  // what stops the explanation (a config that does not load, a request the proxy refuses): text, or with
  // --json one {"errors": [...]} document, so that a script's JSON parser always gets JSON
  const errors: string[] = []
  const out: Out = opts.json ? (line) => errors.push(line) : report
  const code = await explainTo(opts, out, report)
  if (opts.json && errors.length > 0) report(JSON.stringify({ errors }, null, 2))
  return code
}

async function explainTo(opts: ExplainOptions, out: Out, report: Out): Promise<number> {
  const notes: string[] = []
  let config: Config
  if (opts.config === undefined) {
    config = configSchema.parse({})
    notes.push('no config file (-c): built-in defaults, so no identity rules and no token issuers')
  } else {
    const loaded = await loadConfigFile(opts.config)
    if (!loaded.ok) {
      for (const d of loaded.errors) out(formatDiagnostic(d))
      return 1
    }
    config = loaded.config
  }
  const headers = parseHeaderArgs(opts.headers)
  if (typeof headers === 'string') {
    out(printable(headers))
    return 1
  }
  if (opts.token) headers['authorization'] = `Bearer ${opts.token}`
  if (opts.ua !== undefined) headers['user-agent'] = opts.ua
  const remoteAddr = opts.remoteAddr ?? '127.0.0.1'
  const conn: ConnectionInfo = { remoteAddress: remoteAddr, remotePort: 0, tls: opts.cert !== undefined }
  if (opts.cert) {
    // said as a config file's problem is (FILE: file not found), not as the errno Node words it
    let pem: string
    try {
      pem = await readFile(opts.cert, 'utf8')
    } catch (e) {
      out(`${opts.cert}: ${readProblem(e)}`)
      return 1
    }
    try {
      const peerCert = await certFromPem(pem, config, notes)
      if (peerCert) conn.peerCert = peerCert
    } catch (e) {
      out(`${opts.cert}: ${(e as Error).message}`)
      return 1
    }
  }
  // what the live proxy refuses (or answers itself) before rules and policy: said, not decided
  const refusal = requestLineRefusal(opts.method, opts.path)
  if (refusal !== undefined) {
    const what = requestTarget(opts.path) === undefined ? redactTarget(opts.path) : opts.method
    out(`${printable(what)}: ${refusal}`)
    return 1
  }
  const hostRefusal = hostLinesRefusal(
    opts.headers.filter(isHostLine).map((h) => h.slice(h.indexOf(':') + 1).trim()),
  )
  if (hostRefusal !== undefined) {
    out(`Host: ${hostRefusal}`)
    return 1
  }
  const target = requestTarget(opts.path)!
  if (target.path !== opts.path.split('?')[0]) notes.push(`path normalized to ${target.path}`)
  const req: RequestInfo = {
    method: opts.method,
    path: target.path,
    url: target.target,
    // a signature covers the target as sent, as the live proxy checks it
    sentTarget: opts.path.startsWith('/') ? opts.path : undefined,
    headers,
  }
  // the proxy's own secret files: an api key's fingerprint here is the one the proxy's audit shows
  let secretFiles: Map<string, Uint8Array>
  try {
    secretFiles = await readSecretFiles(config)
  } catch (e) {
    out((e as Error).message)
    return 1
  }
  const pipeline = new AttributionPipeline(config, { secretFiles })
  try {
    // a token's keys are fetched when it is verified; a crawler's ranges files only by a start, as the live
    // proxy fetches them before its first request (an IdP that is down must not hold up a user-agent question)
    if (opts.token) await pipeline.start()
    else if (config.bots.verify.ranges.length > 0 && headers['user-agent'] !== undefined)
      await pipeline.start(['useragent'])
    const result = await pipeline.evaluate(req, conn, { trace: true })
    const apiKeyPresented =
      result.evidence.credentials.some((c) => c.evidence.source === 'apikey') ||
      result.evidence.failures.some((f) => f.source === 'apikey')
    if (apiKeyPresented && config.apiKeys.fingerprintKeyFile === undefined)
      notes.push(
        "the api key's fingerprint is keyed by this run (no apiKeys.fingerprintKeyFile): a running proxy shows its own pod's",
      )
    const explained: ExplainReport = {
      request: {
        method: req.method,
        path: redactTarget(opts.path),
        remoteAddr,
        headers: Object.keys(headers).map(
          (k) => `${k}: ${redactHeader(k, headers[k]!, config.apiKeys.header)}`,
        ),
      },
      evidence: result.evidence,
      trace: result.trace,
      ruleCount: config.identities.length,
      identity: result.identity,
      decision: result.decision,
      policyMode: config.policy.mode,
      route: result.route,
      ...(result.reject && { reject: { status: result.reject.status, body: result.reject.body } }),
      notes,
    }
    // the decision as the audit line says it: `none` under policy off, where nothing was decided
    const json = () =>
      JSON.stringify(
        {
          ...explained,
          evidence: evidenceByName(explained.evidence),
          decision: { ...explained.decision, decision: recordedDecision(explained.decision) },
        },
        null,
        2,
      )
    for (const line of opts.json ? [json()] : renderExplain(explained)) report(line)
    return 0
  } finally {
    pipeline.close()
  }
}
