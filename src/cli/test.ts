// `nhi-proxy test FILE…`: rule unit tests, like `promtool test rules`. A test file names a config and lists
// requests with the identity and decision they must get. Credentials are given as already-verified
// evidence: rule tests exercise classification and policy, not cryptography.
import { readFile } from 'node:fs/promises'
import { isIP } from 'node:net'
import { dirname, resolve } from 'node:path'
import * as z from 'zod/mini'
import { formatDiagnostic } from '../config/diagnostics.ts'
import { decodeText, loadConfigFile } from '../config/loader.ts'
import { type Config, described, forwardedCertFormat } from '../config/schema.ts'
import { parseYamlWith } from '../config/yaml-schema.ts'
import { BotVerifier } from '../identity/bots/verify.ts'
import {
  type CertFields,
  certEvidenceFromFields,
  commonName,
  type ForwardedVia,
  rfc4514Subject,
} from '../identity/certificate.ts'
import { xfccCertFields } from '../identity/forwarded/xfcc.ts'
import { apiKeyEvidence } from '../identity/sources/apikey.ts'
import { TrustedForwarders, untrustedForwarder } from '../identity/sources/forwarded-cert.ts'
import { SOURCE_NAMES, sourceNamed } from '../identity/sources/index.ts'
import { addCredential } from '../identity/sources/source.ts'
import { classifyUserAgent } from '../identity/useragent.ts'
import { compilePolicy } from '../policy/policy.ts'
import { requestTarget } from '../proxy/path.ts'
import { requestLineRefusal } from '../proxy/request-lifecycle.ts'
import { compileRules } from '../rules/rule-set.ts'
import type {
  ConnectionInfo,
  EvidenceSet,
  Failure,
  ForwardedCertFormat,
  Identity,
  JwtEvidence,
  PolicyDecision,
  RequestInfo,
} from '../types.ts'
import { KINDS, recordedDecision } from '../types.ts'
import { fingerprint, sha256Hex } from '../util/fingerprint.ts'
import { readProblem } from '../util/read-problem.ts'
import type { Out } from './check.ts'

const stringList = z.union([z.string(), z.array(z.string())])

export const ruleTestFileSchema = z.strictObject({
  config: described(z.string().check(z.minLength(1)), 'config file, relative to this test file'),
  // `tests:` with nothing under it is null: refused as an empty list is (runRuleTests), not as a type error
  tests: z.nullable(
    z.array(
      z.strictObject({
        name: z.string().check(z.minLength(1)),
        request: z.prefault(
          z.strictObject({
            method: z._default(z.string(), 'GET'),
            path: z._default(z.string(), '/'),
            headers: z._default(z.record(z.string(), z.string()), {}),
            // the peer as a socket would report it: a typo (10.0.0.300) would match no CIDR and pass unseen
            remoteAddr: z._default(
              z
                .string()
                .check(
                  z.refine((v: string) => isIP(v) !== 0, 'expected an IP address, e.g. 10.0.0.7 or ::1'),
                ),
              '127.0.0.1',
            ),
            userAgent: z.optional(z.string()),
            /** verified token claims: iss, sub, and any other claim (nested objects allowed) */
            jwt: z.optional(z.looseObject({ iss: z.string() })),
            cert: z.optional(
              z
                .strictObject({
                  spiffe: z.optional(z.string()),
                  uri: z.optional(stringList),
                  dns: z.optional(stringList),
                  subject: z.optional(z.string()),
                  sha256: z.optional(z.string()),
                  /**
                   * in a forwarded-certificate header from the peer (remoteAddr) instead of presented over mTLS:
                   * believed only when forwardedClientCert.trustedProxies trusts that peer for the header's format,
                   * as on the live proxy
                   */
                  forwarded: z._default(z.boolean(), false),
                  format: described(
                    z.optional(forwardedCertFormat),
                    'the header a forwarded certificate arrives in (default: the one format forwardedClientCert trusts remoteAddr for, else xfcc)',
                  ),
                  verified: z._default(z.boolean(), true),
                })
                .check(
                  z.refine(
                    (c) => c.format === undefined || c.forwarded,
                    'format is the header a forwarded certificate arrives in: set forwarded: true',
                  ),
                ),
            ),
            apiKey: described(z.optional(z.string()), 'name of a configured api key'),
          }),
          {},
        ),
        expect: z.strictObject({
          identity: z.optional(z.string()),
          kind: z.optional(z.enum(KINDS)),
          verified: z.optional(z.boolean()),
          source: z.optional(z.enum(SOURCE_NAMES as [string, ...string[]])),
          team: z.optional(z.string()),
          zone: z.optional(z.string()),
          /** identity rule that matched, e.g. "ci-jobs" or "builtin:useragent" */
          rule: z.optional(z.string()),
          /** as the audit line says it: `none` while policy.mode is off (nothing was decided) */
          decision: z.optional(z.enum(['allow', 'deny', 'would_deny', 'none'])),
          /** policy rule that decided */
          policyRule: z.optional(z.string()),
        }),
      }),
    ),
  ),
})
export type RuleTestFile = z.output<typeof ruleTestFileSchema>
export type RuleTestCase = NonNullable<RuleTestFile['tests']>[number]
type TestRequest = RuleTestCase['request']

const asList = (v: string | string[] | undefined): string[] =>
  v === undefined ? [] : Array.isArray(v) ? v : [v]

/** Builds the evidence the extractors would have produced for a verified request. */
export function evidenceForTest(config: Config, r: TestRequest): EvidenceSet {
  const ev: EvidenceSet = { credentials: [], failures: [], anomalies: [] }
  if (r.jwt) {
    const claims = r.jwt as Record<string, unknown>
    const issuer = r.jwt.iss
    const configured = config.jwt.issuers.find((i) => i.issuer === issuer)
    if (configured === undefined) {
      // the live proxy never verifies a token of an issuer jwt.issuers does not list
      ev.failures.push({
        failed: true,
        source: 'jwt',
        reason: 'wrong_issuer',
        detail: `issuer ${issuer} is not configured in jwt.issuers`,
      })
    } else {
      const jwt: JwtEvidence = {
        source: 'jwt',
        verified: true,
        issuer,
        claims,
        alg: 'RS256',
        fingerprint: fingerprint(JSON.stringify(claims)),
      }
      if (configured.profile) jwt.profile = configured.profile
      if (typeof claims['exp'] === 'number') jwt.exp = claims['exp']
      addCredential(ev, sourceNamed('jwt'), jwt)
    }
  }
  if (r.cert) {
    const c = r.cert
    const format = c.forwarded ? forwardedFormat(config, r.remoteAddr, c.format) : undefined
    if (format !== undefined && 'failed' in format) {
      ev.failures.push(format)
    } else {
      const uriSans = [...(c.spiffe ? [c.spiffe] : []), ...asList(c.uri)]
      const dnsSans = asList(c.dns)
      const sha256 = c.sha256?.toLowerCase() ?? sha256Hex(JSON.stringify(c))
      // an XFCC subject is written as the proxy's Subject is, and read as the live proxy reads that (one that
      // names nothing is a malformed XFCC, not a certificate without a CN; the rest in DER order, as the other
      // paths give it); the other formats carry the certificate itself, so their subject is the certificate's,
      // in DER order, as over mTLS. Either way the case has it in both orders, as a live certificate has.
      const xfcc = format?.format === 'xfcc'
      const fields: CertFields | Failure = xfcc
        ? xfccCertFields(c.subject || undefined, uriSans, dnsSans, sha256)
        : certificateSubjectFields(c.subject, { dnsSans, uriSans, sha256 })
      const source = format ? 'xfcc' : 'mtls'
      const cert =
        'failed' in fields
          ? fields
          : certEvidenceFromFields(fields, source, c.verified, format && FORWARDED_VIA[format.format])
      if ('failed' in cert) ev.failures.push(cert)
      else addCredential(ev, sourceNamed(source), cert)
    }
  }
  if (r.apiKey !== undefined) {
    const key = config.apiKeys.keys.find((k) => k.name === r.apiKey)
    if (key) {
      addCredential(ev, sourceNamed('apikey'), apiKeyEvidence(key, fingerprint(key.name)))
    } else {
      ev.failures.push({
        failed: true,
        source: 'apikey',
        reason: 'apikey_unknown',
        detail: `no key named ${r.apiKey}`,
      })
    }
  }
  const ua = r.userAgent ?? headerValue(r.headers, 'user-agent')
  const uaEvidence = ua ? classifyUserAgent(ua) : undefined
  // a blank User-Agent says nothing, as on the live proxy
  if (uaEvidence && uaEvidence.ua !== '') addCredential(ev, sourceNamed('useragent'), uaEvidence)
  return ev
}

/** the fields of a certificate whose subject is `subject`, as Node prints it (DER order) */
function certificateSubjectFields(subject: string | undefined, fields: CertFields): CertFields {
  if (!subject) return fields
  fields.subject = subject
  fields.subjectRfc4514 = rfc4514Subject(subject)
  const cn = commonName(subject)
  if (cn) fields.cn = cn
  return fields
}

/** what the live proxy's parser of each format records a certificate as forwarded by */
const FORWARDED_VIA: Record<ForwardedCertFormat, ForwardedVia> = {
  xfcc: 'xfcc',
  rfc9440: 'client-cert',
  alb: 'alb',
  nginx: 'nginx',
}

/**
 * The format of a forwarded case's header, or the live proxy's failure for it. The header is the case's
 * `format`, else the one the peer is trusted for (a case stands for what the proxy in front sends), else XFCC;
 * the live proxy believes it only from a peer trusted for that very format.
 */
function forwardedFormat(
  config: Config,
  peer: string,
  given: ForwardedCertFormat | undefined,
): { format: ForwardedCertFormat } | Failure {
  const trusted = new TrustedForwarders(config.forwardedClientCert).formatFor(peer)
  const format = given ?? trusted ?? 'xfcc'
  return format === trusted ? { format } : untrustedForwarder(peer, trusted)
}

function headerValue(headers: Record<string, string>, name: string): string | undefined {
  for (const [k, v] of Object.entries(headers)) if (k.toLowerCase() === name) return v
  return undefined
}

/** a request the test file names: what the live proxy would refuse is the caller's to report (requestLineRefusal) */
export function requestForTest(r: TestRequest): { req: RequestInfo; conn: ConnectionInfo } {
  const headers: Record<string, string> = {}
  for (const [k, v] of Object.entries(r.headers)) headers[k.toLowerCase()] = v
  if (r.userAgent !== undefined) headers['user-agent'] = r.userAgent
  const q = r.path.indexOf('?')
  // the path as the live proxy normalizes it before rules and policy see it
  const target = requestTarget(r.path) ?? { path: q < 0 ? r.path : r.path.slice(0, q), target: r.path }
  return {
    req: { method: r.method, path: target.path, url: target.target, headers },
    conn: { remoteAddress: r.remoteAddr, remotePort: 0, tls: r.cert !== undefined && !r.cert.forwarded },
  }
}

export interface CaseResult {
  name: string
  ok: boolean
  /** one line per mismatched field */
  mismatches: string[]
  /** the live proxy answers the request itself (requestLineRefusal): identity and decision are never made */
  refused?: boolean
  /** credentials the live proxy would not have verified, with why (`jwt wrong_issuer: …`) */
  failures: string[]
  identity: Identity
  decision: PolicyDecision
}

/**
 * What a case's crawler claim is checked against, as the live proxy checks it by the client address (the peer,
 * or the X-Forwarded-For of a trusted one): the shipped range snapshot, with no range file fetched and no DNS
 * lookup (a rule test reaches out to nothing). One per config: compiling the snapshot costs some 15 ms.
 */
const crawlerRanges = new WeakMap<Config, BotVerifier>()

function crawlerRangesOf(config: Config): BotVerifier {
  let ranges = crawlerRanges.get(config)
  if (ranges === undefined) {
    const verify = config.bots.verify
    ranges = new BotVerifier(
      { ...verify, dns: { ...verify.dns, enabled: false } },
      config.forwardedClientCert,
    )
    crawlerRanges.set(config, ranges)
  }
  return ranges
}

export function runCase(config: Config, c: RuleTestCase): CaseResult {
  const rules = compileRules(config, { cacheSize: 0 })
  const policy = compilePolicy(config.policy)
  const { req, conn } = requestForTest(c.request)
  const evidence = evidenceForTest(config, c.request)
  // a crawler from its operator's published ranges is a verified crawler, as on the live proxy
  crawlerRangesOf(config).attest(evidence, req, conn)
  const identity = rules.classify(evidence, req, conn)
  const decision = policy.decide(identity, req)
  // the peer is named: a case without remoteAddr comes from 127.0.0.1, which few configs trust
  const failures = evidence.failures.map(
    (f) =>
      `${f.source} ${f.reason}: ${f.detail}${f.attributes?.['peer'] ? ` (peer ${f.attributes['peer']})` : ''}`,
  )
  // a request the proxy answers before rules and policy see it decides nothing: the test cannot pass
  const refusal = requestLineRefusal(c.request.method, c.request.path)
  if (refusal !== undefined)
    return {
      name: c.name,
      ok: false,
      mismatches: [
        `request ${c.request.method} ${c.request.path}: ${refusal}; rules and policy never see it`,
      ],
      refused: true,
      failures,
      identity,
      decision,
    }
  const actual: Record<keyof RuleTestCase['expect'], unknown> = {
    identity: identity.name,
    kind: identity.kind,
    verified: identity.verified,
    source: identity.source,
    team: identity.team,
    zone: identity.zone,
    rule: identity.rule,
    decision: recordedDecision(decision),
    policyRule: decision.rule,
  }
  const mismatches: string[] = []
  for (const [field, want] of Object.entries(c.expect)) {
    if (want === undefined) continue
    const got = actual[field as keyof typeof actual]
    // with the policy off nothing denies the request: `allow`, what rule tests said before `none` existed,
    // still passes, so files written then keep passing; `deny` and `would_deny` do not
    if (field === 'decision' && got === 'none' && want === 'allow') continue
    if (got !== want)
      mismatches.push(`${field}: expected ${JSON.stringify(want)}, got ${JSON.stringify(got) ?? 'nothing'}`)
  }
  return { name: c.name, ok: mismatches.length === 0, mismatches, failures, identity, decision }
}

export async function runRuleTests(files: string[], out: Out): Promise<number> {
  let n = 0
  let passed = 0
  let failed = 0
  let broken = false
  for (const file of files) {
    let bytes: Uint8Array
    try {
      bytes = await readFile(file)
    } catch (e) {
      out(`${file}:1:1 ${readProblem(e)}`)
      broken = true
      continue
    }
    const decoded = decodeText(bytes, file)
    if ('error' in decoded) {
      out(formatDiagnostic(decoded.error))
      broken = true
      continue
    }
    const parsed = parseYamlWith(decoded.text, file, ruleTestFileSchema)
    if (!parsed.value) {
      for (const d of parsed.errors) out(formatDiagnostic(d))
      broken = true
      continue
    }
    const cases = parsed.value.tests ?? []
    // a file whose cases were all deleted (or never written) would pass CI while testing nothing
    if (cases.length === 0) {
      out(
        formatDiagnostic({
          file,
          ...parsed.locate(['tests'], 'key'),
          message:
            'tests: no test cases (a rule-test file needs at least one, or it passes while checking nothing)',
          hint: 'add a case with a name, a request and what to expect, or drop the file',
          severity: 'error',
        }),
      )
      broken = true
      continue
    }
    const configPath = resolve(dirname(file), parsed.value.config)
    const loaded = await loadConfigFile(configPath)
    out(`# ${file} (config ${parsed.value.config})`)
    if (!loaded.ok) {
      for (const d of loaded.errors) out(formatDiagnostic(d))
      broken = true
      continue
    }
    for (const c of cases) {
      n++
      const result = runCase(loaded.config, c)
      if (result.ok) {
        passed++
        out(`ok ${n} - ${c.name}`)
      } else {
        failed++
        out(`not ok ${n} - ${c.name}`)
        out('  ---')
        for (const m of result.mismatches) out(`  ${m}`)
        if (!result.refused) {
          out(
            `  actual: ${result.identity.name} (${result.identity.kind}, ${result.identity.source}, rule ${result.identity.rule})`,
          )
          for (const f of result.failures) out(`  not verified: ${f}`)
        }
        out('  ...')
      }
    }
  }
  out(`1..${n}`)
  out(`# ${n} tests, ${passed} passed, ${failed} failed${broken ? ', some files could not be loaded' : ''}`)
  return failed || broken ? 1 : 0
}
