// Ordered identity rules (docs/reference.md "Config file"): first match wins; captures fill name/team/zone. Unmatched requests fall
// back to built-in knowledge (IdP profiles, certificates, api keys, user agents). Everything is compiled once
// per config load; classify() runs no regex compilation and creates no closures.
import { LRUCache } from 'lru-cache'
import type { Config, IdentityRuleConfig, MatchConfig } from '../config/schema.ts'
import { profileIdentity as builtinProfileIdentity } from '../identity/profiles.ts'
import type {
  CertEvidence,
  ConnectionInfo,
  EvidenceSet,
  Identity,
  JwtEvidence,
  Kind,
  RequestInfo,
  Source,
} from '../types.ts'
import { SOURCES } from '../types.ts'
import { CidrSet } from '../util/cidr.ts'
import {
  type CompiledPattern,
  type CompiledTemplate,
  compilePattern,
  compileTemplate,
  patternCaptures,
} from './pattern.ts'

export interface RuleTrace {
  index: number
  rule: string
  matched: boolean
  /** why the rule did or did not match, one line per condition checked */
  reasons: string[]
  captures?: Record<string, string>
}

export interface RuleSet {
  readonly size: number
  classify(ev: EvidenceSet, req: RequestInfo, conn: ConnectionInfo, trace?: RuleTrace[]): Identity
}

/** What an IdP profile makes of a verified token (src/identity/profiles.ts implements this shape). */
export interface ProfileIdentity {
  name: string
  kind: Kind
  attributes: Record<string, string>
  expiresAt?: number
  rule: string
}
export type ProfileIdentityFn = (jwt: JwtEvidence) => ProfileIdentity

export interface RuleOptions {
  /** IdP profile mapping for verified tokens that no rule matched */
  profileIdentity?: ProfileIdentityFn
  /** size of the per-credential classification cache (0 disables it) */
  cacheSize?: number
}

type Captures = Record<string, string>
const NO_VALUES: Readonly<Captures> = Object.freeze({})
/** A condition sets its failure reason here; `captures` accumulates across conditions. */
interface Scratch {
  captures: Captures | undefined
  reason: string
}

interface Condition {
  /** label for traces, e.g. "spiffe" */
  readonly label: string
  /** depends on the request itself (not only on credentials): disables the classification cache */
  readonly perRequest: boolean
  test(ev: EvidenceSet, req: RequestInfo, conn: ConnectionInfo, s: Scratch): boolean
}

const MAX_SHOWN_VALUE = 120
function show(v: string): string {
  return JSON.stringify(v.length > MAX_SHOWN_VALUE ? `${v.slice(0, MAX_SHOWN_VALUE)}…` : v)
}

function addCaptures(s: Scratch, found: Captures): void {
  for (const k in found) {
    s.captures ??= {}
    if (!(k in s.captures)) s.captures[k] = found[k]!
  }
}

function matchInto(p: CompiledPattern, value: string, label: string, s: Scratch): boolean {
  const m = p.match(value)
  if (!m) {
    s.reason = `${label}: ${show(value)} does not match ${show(p.source)}`
    return false
  }
  if (p.captures.length) addCaptures(s, m)
  return true
}

/** Strongest certificate: mtls over forwarded (docs/reference.md "Identity model"). */
function certOf(ev: EvidenceSet): CertEvidence | undefined {
  return ev.mtls ?? ev.xfcc
}

class SpiffeCondition implements Condition {
  readonly label = 'spiffe'
  readonly perRequest = false
  constructor(private readonly p: CompiledPattern) {}
  test(ev: EvidenceSet, _r: RequestInfo, _c: ConnectionInfo, s: Scratch): boolean {
    // mtls first, then a forwarded certificate; the first one carrying a SPIFFE ID decides
    const cert =
      ev.mtls?.spiffeId !== undefined ? ev.mtls : ev.xfcc?.spiffeId !== undefined ? ev.xfcc : undefined
    if (cert) return matchInto(this.p, cert.spiffeId!, 'spiffe', s)
    const sawCert = ev.mtls !== undefined || ev.xfcc !== undefined
    s.reason = sawCert ? 'spiffe: certificate has no SPIFFE ID' : 'spiffe: no client certificate'
    return false
  }
}

/** All ways to read a dotted claim path: "kubernetes.io.namespace" may be {"kubernetes.io": {namespace}}. */
function claimPaths(path: string): string[][] {
  const parts = path.split('.')
  if (parts.length > 8) return [[path], parts]
  const out: string[][] = []
  const walk = (i: number, acc: string[]) => {
    if (i === parts.length) {
      out.push(acc)
      return
    }
    for (let j = parts.length; j > i; j--) walk(j, [...acc, parts.slice(i, j).join('.')])
  }
  walk(0, [])
  return out
}

function readClaim(claims: Readonly<Record<string, unknown>>, paths: readonly string[][]): unknown {
  for (const keys of paths) {
    let v: unknown = claims
    for (const k of keys) {
      if (v === null || typeof v !== 'object' || Array.isArray(v) || !Object.hasOwn(v, k)) {
        v = undefined
        break
      }
      v = (v as Record<string, unknown>)[k]
    }
    if (v !== undefined) return v
  }
  return undefined
}

class JwtCondition implements Condition {
  readonly label = 'jwt'
  readonly perRequest = false
  private readonly issuer: CompiledPattern | undefined
  private readonly claims: { name: string; paths: string[][]; p: CompiledPattern }[]
  constructor(cfg: NonNullable<MatchConfig['jwt']>) {
    this.issuer = cfg.issuer !== undefined ? compilePattern(cfg.issuer) : undefined
    this.claims = Object.entries(cfg.claims ?? {}).map(([name, p]) => ({
      name,
      paths: claimPaths(name),
      p: compilePattern(p),
    }))
  }
  test(ev: EvidenceSet, _r: RequestInfo, _c: ConnectionInfo, s: Scratch): boolean {
    const jwt = ev.jwt
    if (!jwt) {
      s.reason = 'jwt: no verified token'
      return false
    }
    if (this.issuer && !matchInto(this.issuer, jwt.issuer, 'jwt.issuer', s)) return false
    for (const c of this.claims) {
      const v = readClaim(jwt.claims, c.paths)
      const label = `jwt.claims.${c.name}`
      if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') {
        if (!matchInto(c.p, String(v), label, s)) return false
      } else if (Array.isArray(v)) {
        // a list claim (aud, groups) matches when any element does
        let hit = false
        for (const item of v) {
          if (typeof item !== 'string') continue
          const m = c.p.match(item)
          if (m) {
            if (c.p.captures.length) addCaptures(s, m)
            hit = true
            break
          }
        }
        if (!hit) {
          s.reason = `${label}: no element matches ${show(c.p.source)}`
          return false
        }
      } else {
        s.reason = v === undefined ? `${label}: claim not present` : `${label}: not a string`
        return false
      }
    }
    return true
  }
}

class CertCondition implements Condition {
  readonly label = 'cert'
  readonly perRequest = false
  private readonly subject: CompiledPattern | undefined
  private readonly san: CompiledPattern | undefined
  private readonly sha256: string | undefined
  constructor(cfg: NonNullable<MatchConfig['cert']>) {
    this.subject = cfg.subject !== undefined ? compilePattern(cfg.subject) : undefined
    this.san = cfg.san !== undefined ? compilePattern(cfg.san) : undefined
    this.sha256 = cfg.sha256?.toLowerCase().replaceAll(':', '')
  }
  private matchSan(sans: readonly string[], s: Scratch): boolean {
    for (const san of sans) {
      const m = this.san!.match(san)
      if (m) {
        if (this.san!.captures.length) addCaptures(s, m)
        return true
      }
    }
    return false
  }
  test(ev: EvidenceSet, _r: RequestInfo, _c: ConnectionInfo, s: Scratch): boolean {
    const cert = certOf(ev)
    if (!cert) {
      s.reason = 'cert: no client certificate'
      return false
    }
    if (this.subject) {
      const subject = cert.subject ?? (cert.cn !== undefined ? `CN=${cert.cn}` : undefined)
      if (subject === undefined) {
        s.reason = 'cert.subject: certificate has no subject'
        return false
      }
      // A subject pattern may name the full subject or just the common name.
      const m = this.subject.match(subject) ?? (cert.cn !== undefined ? this.subject.match(cert.cn) : null)
      if (!m) {
        s.reason = `cert.subject: ${show(subject)} does not match ${show(this.subject.source)}`
        return false
      }
      if (this.subject.captures.length) addCaptures(s, m)
    }
    if (this.san) {
      if (!this.matchSan(cert.dnsSans, s) && !this.matchSan(cert.uriSans, s)) {
        s.reason = `cert.san: no SAN matches ${show(this.san.source)}`
        return false
      }
    }
    if (this.sha256 !== undefined && cert.sha256?.toLowerCase() !== this.sha256) {
      s.reason = `cert.sha256: certificate fingerprint ${cert.sha256 ? show(cert.sha256.slice(0, 16)) : 'unknown'}… differs`
      return false
    }
    return true
  }
}

class ApiKeyCondition implements Condition {
  readonly label = 'apiKey'
  readonly perRequest = false
  constructor(private readonly p: CompiledPattern) {}
  test(ev: EvidenceSet, _r: RequestInfo, _c: ConnectionInfo, s: Scratch): boolean {
    if (!ev.apikey) {
      s.reason = 'apiKey: no valid api key'
      return false
    }
    return matchInto(this.p, ev.apikey.name, 'apiKey', s)
  }
}

class HeaderCondition implements Condition {
  readonly label = 'header'
  readonly perRequest = true
  private readonly headers: { name: string; p: CompiledPattern }[]
  constructor(cfg: Record<string, string>) {
    this.headers = Object.entries(cfg).map(([name, p]) => ({
      name: name.toLowerCase(),
      p: compilePattern(p),
    }))
  }
  test(_e: EvidenceSet, req: RequestInfo, _c: ConnectionInfo, s: Scratch): boolean {
    for (const h of this.headers) {
      const raw = req.headers[h.name]
      const value = Array.isArray(raw) ? raw[0] : raw
      if (value === undefined) {
        s.reason = `header.${h.name}: not present`
        return false
      }
      if (!matchInto(h.p, value, `header.${h.name}`, s)) return false
    }
    return true
  }
}

const UA_BUILTIN: Record<string, string> = {
  'builtin:bots': 'bot',
  'builtin:agents': 'agent',
  'builtin:browsers': 'browser',
}

class UserAgentCondition implements Condition {
  readonly label = 'userAgent'
  readonly perRequest = false
  private readonly category: string | undefined
  private readonly p: CompiledPattern | undefined
  constructor(private readonly source: string) {
    this.category = UA_BUILTIN[source]
    this.p = this.category === undefined ? compilePattern(source, { ignoreCase: true }) : undefined
  }
  test(ev: EvidenceSet, _r: RequestInfo, _c: ConnectionInfo, s: Scratch): boolean {
    const ua = ev.useragent
    if (!ua || ua.ua === '') {
      s.reason = 'userAgent: no user agent'
      return false
    }
    if (this.category !== undefined) {
      if (ua.category === this.category) return true
      s.reason = `userAgent: ${show(ua.product)} is a ${ua.category}, not ${this.source}`
      return false
    }
    return matchInto(this.p!, ua.ua, 'userAgent', s)
  }
}

class RemoteAddrCondition implements Condition {
  readonly label = 'remoteAddr'
  readonly perRequest = true
  private readonly set: CidrSet
  constructor(private readonly cidrs: string[]) {
    this.set = new CidrSet(cidrs)
  }
  test(_e: EvidenceSet, _r: RequestInfo, conn: ConnectionInfo, s: Scratch): boolean {
    if (this.set.has(conn.remoteAddress)) return true
    s.reason = `remoteAddr: ${show(conn.remoteAddress)} is not in ${this.cidrs.join(', ')}`
    return false
  }
}

class PathCondition implements Condition {
  readonly label = 'path'
  readonly perRequest = true
  constructor(private readonly p: CompiledPattern) {}
  test(_e: EvidenceSet, req: RequestInfo, _c: ConnectionInfo, s: Scratch): boolean {
    return matchInto(this.p, req.path, 'path', s)
  }
}

class MethodCondition implements Condition {
  readonly label = 'method'
  readonly perRequest = true
  private readonly methods: ReadonlySet<string>
  constructor(m: string | string[]) {
    this.methods = new Set((Array.isArray(m) ? m : [m]).map((x) => x.toUpperCase()))
  }
  test(_e: EvidenceSet, req: RequestInfo, _c: ConnectionInfo, s: Scratch): boolean {
    if (this.methods.has(req.method.toUpperCase())) return true
    s.reason = `method: ${show(req.method)} is not ${[...this.methods].join('|')}`
    return false
  }
}

interface Strongest {
  readonly source: Source
  readonly verified: boolean
}
const STRONGEST: Record<Source, readonly [Strongest, Strongest]> = Object.fromEntries(
  SOURCES.map((source) => [
    source,
    [Object.freeze({ source, verified: false }), Object.freeze({ source, verified: true })],
  ]),
) as unknown as Record<Source, readonly [Strongest, Strongest]>
const pick = (source: Source, verified: boolean): Strongest => STRONGEST[source][verified ? 1 : 0]

/** Strongest credential present (docs/reference.md "Identity model"): decides `source` and `verified`. Allocation-free. */
export function strongest(ev: EvidenceSet): Strongest {
  if (ev.mtls) return pick('mtls', ev.mtls.verified)
  if (ev.xfcc) return pick('xfcc', ev.xfcc.verified)
  if (ev.jwt) return pick('jwt', true)
  if (ev.apikey) return pick('apikey', true)
  if (ev.signature) return pick('signature', true)
  if (ev.useragent && ev.useragent.ua !== '') return pick('useragent', ev.useragent.verified)
  return pick('anonymous', false)
}

class VerifiedCondition implements Condition {
  readonly label = 'verified'
  readonly perRequest = false
  constructor(private readonly want: boolean) {}
  test(ev: EvidenceSet, _r: RequestInfo, _c: ConnectionInfo, s: Scratch): boolean {
    if (strongest(ev).verified === this.want) return true
    s.reason = `verified: request is ${this.want ? 'not verified' : 'verified'}`
    return false
  }
}

class SourceCondition implements Condition {
  readonly label = 'source'
  readonly perRequest = false
  constructor(private readonly want: Source) {}
  test(ev: EvidenceSet, _r: RequestInfo, _c: ConnectionInfo, s: Scratch): boolean {
    const got = strongest(ev).source
    if (got === this.want) return true
    s.reason = `source: strongest credential is ${got}, not ${this.want}`
    return false
  }
}

function compileConditions(m: MatchConfig): Condition[] {
  const out: Condition[] = []
  if (m.spiffe !== undefined) out.push(new SpiffeCondition(compilePattern(m.spiffe, { separator: '/' })))
  if (m.jwt) out.push(new JwtCondition(m.jwt))
  if (m.cert) out.push(new CertCondition(m.cert))
  if (m.apiKey !== undefined) out.push(new ApiKeyCondition(compilePattern(m.apiKey)))
  if (m.header) out.push(new HeaderCondition(m.header))
  if (m.userAgent !== undefined) out.push(new UserAgentCondition(m.userAgent))
  if (m.remoteAddr) out.push(new RemoteAddrCondition(m.remoteAddr))
  if (m.path !== undefined) out.push(new PathCondition(compilePattern(m.path, { separator: '/' })))
  if (m.method !== undefined) out.push(new MethodCondition(m.method))
  if (m.verified !== undefined) out.push(new VerifiedCondition(m.verified))
  if (m.source !== undefined) out.push(new SourceCondition(m.source))
  return out
}

interface CompiledRule {
  index: number
  label: string
  conditions: Condition[]
  name: CompiledTemplate
  team: CompiledTemplate | undefined
  zone: CompiledTemplate | undefined
  kind: Kind | undefined
  expectEveryMs: number | undefined
  /** the name template uses what the user agent says ({bot}, {agent}, {product}, userAgent captures) */
  uaNamed: boolean
}

const UA_CAPTURES: ReadonlySet<string> = new Set(['bot', 'agent', 'product'])

function compileRule(r: IdentityRuleConfig, index: number): CompiledRule {
  const name = compileTemplate(r.name)
  const ua = r.match.userAgent
  const uaCaptures = ua !== undefined && !ua.startsWith('builtin:') ? patternCaptures(ua) : []
  return {
    index,
    label: r.rule ?? `rule-${index + 1}`,
    conditions: compileConditions(r.match),
    uaNamed: name.captures.some((c) => UA_CAPTURES.has(c) || uaCaptures.includes(c)),
    name,
    team: r.team !== undefined ? compileTemplate(r.team) : undefined,
    zone: r.zone !== undefined ? compileTemplate(r.zone) : undefined,
    kind: r.kind,
    expectEveryMs: r.expectEvery,
  }
}

function minDefined(a: number | undefined, b: number | undefined): number | undefined {
  if (a === undefined) return b
  if (b === undefined) return a
  return Math.min(a, b)
}

/** Evidence worth keeping on the identity; fingerprints and names only, never raw secrets. */
function evidenceAttributes(ev: EvidenceSet): Record<string, string> {
  const a: Record<string, string> = {}
  if (ev.jwt) {
    a['iss'] = ev.jwt.issuer
    const c = ev.jwt.claims
    for (const k of ['sub', 'client_id', 'azp', 'jti'] as const) {
      const v = c[k]
      if (typeof v === 'string') a[k] = v
    }
    const aud = c['aud']
    if (typeof aud === 'string') a['aud'] = aud
    else if (Array.isArray(aud)) a['aud'] = aud.filter((x) => typeof x === 'string').join(',')
    a['jwt_fingerprint'] = ev.jwt.fingerprint
  }
  const cert = certOf(ev)
  if (cert) {
    if (cert.spiffeId) a['spiffe_id'] = cert.spiffeId
    if (cert.sha256) a['cert_sha256'] = cert.sha256
    if (cert.subject) a['cert_subject'] = cert.subject
  }
  if (ev.apikey) {
    a['api_key'] = ev.apikey.name
    a['api_key_fingerprint'] = ev.apikey.fingerprint
  }
  if (ev.useragent && ev.useragent.ua !== '') {
    a['ua_product'] = ev.useragent.product
    a['ua_category'] = ev.useragent.category
    if (ev.useragent.operator) a['agent_operator'] = ev.useragent.operator
    if (ev.useragent.purpose) a['agent_purpose'] = ev.useragent.purpose
    if (ev.useragent.verifiedBy) a['bot_verified_by'] = ev.useragent.verifiedBy
  }
  if (ev.signature) {
    // a verified directory's operator and purpose outrank what a user agent claims
    a['signature_agent'] = ev.signature.directory
    a['signature_keyid'] = ev.signature.keyid
    if (ev.signature.operator) a['agent_operator'] = ev.signature.operator
    if (ev.signature.purpose) a['agent_purpose'] = ev.signature.purpose
  }
  return a
}

function evidenceExpiry(ev: EvidenceSet): number | undefined {
  return minDefined(ev.jwt?.exp, minDefined(ev.mtls?.notAfter, ev.xfcc?.notAfter))
}

/** Captures every rule may use: {product}, and {bot}/{agent} when the user agent is one. */
function userAgentCaptures(ev: EvidenceSet, s: Scratch): void {
  const ua = ev.useragent
  if (!ua || ua.ua === '') return
  s.captures ??= {}
  s.captures['product'] ??= ua.product
  if (ua.category === 'bot') s.captures['bot'] ??= ua.product
  if (ua.category === 'agent') s.captures['agent'] ??= ua.product
}

type BuiltinIdentity = Omit<Identity, 'source' | 'verified' | 'attributes'>

/**
 * Every identity gets the same properties in the same order (absent ones undefined): they are read on every
 * request by the recorders, and one object shape keeps those reads monomorphic.
 */
function identityOf(i: Identity): Identity {
  return {
    name: namespacedName(i.name, i.source, i.verified),
    kind: i.kind,
    source: i.source,
    verified: i.verified,
    team: i.team,
    zone: i.zone,
    rule: i.rule,
    attributes: i.attributes,
    expiresAt: i.expiresAt,
    expectEveryMs: i.expectEveryMs,
  }
}

function builtinIdentity(ev: EvidenceSet, profile: ProfileIdentity | undefined): BuiltinIdentity {
  if (profile) return { name: profile.name, kind: profile.kind, rule: profile.rule }
  const cert = certOf(ev)
  if (cert) {
    const name =
      cert.spiffeId ??
      cert.cn ??
      cert.dnsSans[0] ??
      cert.uriSans[0] ??
      cert.sha256?.slice(0, 16) ??
      'certificate'
    return { name, kind: 'service', rule: 'builtin:cert' }
  }
  if (ev.apikey) {
    const out: BuiltinIdentity = {
      name: ev.apikey.name,
      kind: ev.apikey.kind ?? 'service',
      rule: 'builtin:apikey',
    }
    if (ev.apikey.team !== undefined) out.team = ev.apikey.team
    return out
  }
  if (ev.signature) return { name: ev.signature.name, kind: ev.signature.kind, rule: 'builtin:signature' }
  const ua = ev.useragent
  if (ua && (ua.category === 'bot' || ua.category === 'agent')) {
    return { name: ua.product, kind: ua.category, rule: 'builtin:useragent' }
  }
  if (ua?.category === 'browser') return { name: 'anonymous', kind: 'human', rule: 'builtin:anonymous' }
  return { name: 'anonymous', kind: 'unknown', rule: 'builtin:anonymous' }
}

/** Names of requests that verified nothing (user agents, headers, unverified certificates) live here. */
export const UNVERIFIED_PREFIX = 'ua:'
/** The identity of requests with nothing to name them by; shared by every unverified, unnamed caller. */
export const ANONYMOUS = 'anonymous'

/**
 * Keeps the names of unverified and verified identities apart, whatever rules and built-ins produce, so a
 * client can never take the name of an api key, certificate or token by what it says (`curl -A
 * billing-export/1.0`): an unverified name other than `anonymous` is prefixed `ua:` (`ua:curl`,
 * `ua:googlebot`), and a verified name that would fall into that namespace (`anonymous`, `ua:…`) is
 * prefixed with its source instead (`apikey:anonymous`).
 */
export function namespacedName(name: string, source: Source, verified: boolean): string {
  if (!verified)
    return name === ANONYMOUS || name.startsWith(UNVERIFIED_PREFIX) ? name : UNVERIFIED_PREFIX + name
  return name === ANONYMOUS || name.startsWith(UNVERIFIED_PREFIX) ? `${source}:${name}` : name
}

/** Cache key over everything a credential-only rule set can look at; undefined when not cacheable. */
function evidenceKey(ev: EvidenceSet): string | undefined {
  let key = ''
  for (const cert of [ev.mtls, ev.xfcc]) {
    if (!cert) {
      key += '|'
      continue
    }
    if (!cert.sha256) return undefined
    key += `${cert.source}:${cert.verified ? 1 : 0}:${cert.sha256}|`
  }
  key += ev.jwt ? `${ev.jwt.fingerprint}|` : '|'
  key += ev.apikey ? `${ev.apikey.fingerprint}|` : '|'
  key += ev.signature ? `${ev.signature.directory} ${ev.signature.keyid}|` : '|'
  // a crawler verified by its address is another identity than the same user agent from elsewhere
  key += ev.useragent ? `${ev.useragent.verifiedBy ?? ''}|${ev.useragent.ua}` : ''
  return key
}

export function compileRules(config: Config, opts: RuleOptions = {}): RuleSet {
  const rules = config.identities.map(compileRule)
  const profileIdentity = opts.profileIdentity ?? builtinProfileIdentity
  const perRequest = rules.some((r) => r.conditions.some((c) => c.perRequest))
  const cacheSize = opts.cacheSize ?? 10_000
  const cache = !perRequest && cacheSize > 0 ? new LRUCache<string, Identity>({ max: cacheSize }) : undefined
  const scratch: Scratch = { captures: undefined, reason: '' }

  function classifyUncached(
    ev: EvidenceSet,
    req: RequestInfo,
    conn: ConnectionInfo,
    trace?: RuleTrace[],
  ): Identity {
    const { source, verified } = strongest(ev)
    const profile = ev.jwt ? profileIdentity(ev.jwt) : undefined
    const attributes = evidenceAttributes(ev)
    // profile attributes (ns, sa, pod, repository…) and expiry (kubernetes warnafter) apply whichever rule matches
    if (profile) Object.assign(attributes, profile.attributes)
    const expiry = minDefined(evidenceExpiry(ev), profile?.expiresAt)
    for (const rule of rules) {
      scratch.captures = undefined
      scratch.reason = ''
      const reasons: string[] | undefined = trace ? [] : undefined
      let ok = true
      for (const cond of rule.conditions) {
        if (cond.test(ev, req, conn, scratch)) {
          reasons?.push(`${cond.label}: ok`)
        } else {
          ok = false
          reasons?.push(scratch.reason)
          break
        }
      }
      if (trace) {
        const t: RuleTrace = { index: rule.index, rule: rule.label, matched: ok, reasons: reasons! }
        if (ok && rule.conditions.length === 0) reasons!.push('no conditions: matches every request')
        // conditions mutate scratch through method calls, which TypeScript's narrowing cannot see
        const caps = scratch.captures as Captures | undefined
        if (ok && caps) t.captures = { ...caps }
        trace.push(t)
      }
      if (!ok) continue
      userAgentCaptures(ev, scratch)
      const values = (scratch.captures as Captures | undefined) ?? NO_VALUES
      const rendered = rule.name.render(values)
      return identityOf({
        // a name made from what the user agent says is a ua: name even on a verified request (where
        // identityOf then prefixes it with the source: apikey:ua:curl), never a verified-looking one
        name:
          rule.uaNamed && !rendered.startsWith(UNVERIFIED_PREFIX) ? UNVERIFIED_PREFIX + rendered : rendered,
        kind: rule.kind ?? (profile && !ev.mtls && !ev.xfcc ? profile.kind : defaultKind(ev)),
        source,
        verified,
        team: rule.team?.render(values),
        zone: rule.zone?.render(values),
        rule: rule.label,
        attributes,
        expiresAt: expiry,
        expectEveryMs: rule.expectEveryMs,
      })
    }
    const b = builtinIdentity(ev, profile)
    return identityOf({ ...b, source, verified, attributes, expiresAt: expiry })
  }

  return {
    size: rules.length,
    classify(ev, req, conn, trace) {
      if (!cache || trace) return classifyUncached(ev, req, conn, trace)
      const key = evidenceKey(ev)
      if (key === undefined) return classifyUncached(ev, req, conn)
      const hit = cache.get(key)
      if (hit) return hit
      const identity = classifyUncached(ev, req, conn)
      cache.set(key, identity)
      return identity
    },
  }
}

/** A rule without `kind` inherits what the built-in knowledge would say about the evidence. */
function defaultKind(ev: EvidenceSet): Kind {
  if (ev.mtls || ev.xfcc) return 'service'
  if (ev.apikey) return ev.apikey.kind ?? 'service'
  if (ev.signature) return ev.signature.kind
  if (ev.useragent?.category === 'bot' || ev.useragent?.category === 'agent') return ev.useragent.category
  if (ev.useragent?.category === 'browser') return 'human'
  return 'unknown'
}
