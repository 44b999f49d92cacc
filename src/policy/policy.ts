// Policy (docs/reference.md "Config file"): off | observe (record would_deny) | enforce (403). First policy rule whose route and
// method match decides; a request is allowed when any of its allow matchers matches the identity.
import type { Config } from '../config/schema.ts'
import {
  type CompiledPattern,
  compilePattern,
  pathPatternWithoutTrailingSlash,
  pathWithoutTrailingSlash,
} from '../rules/pattern.ts'
import type { Identity, Kind, PolicyDecision, RequestInfo, Source } from '../types.ts'
import { normalizeHeaderName } from '../util/header-names.ts'

export type PolicyMode = Config['policy']['mode']

export interface Policy {
  readonly mode: PolicyMode
  decide(identity: Identity, req: RequestInfo): PolicyDecision
}

interface AllowMatcher {
  identity?: CompiledPattern
  kind?: Kind
  team?: string
  verified?: boolean
  sources?: ReadonlySet<Source>
}

interface CompiledPolicyRule {
  label: string
  route: CompiledPattern
  methods?: ReadonlySet<string>
  allow: AllowMatcher[]
  /** decisions are constant per rule and mode, so they are allocated once */
  allowed: PolicyDecision
  denied: PolicyDecision
}

const OFF: PolicyDecision = Object.freeze({ decision: 'allow', rule: 'off', skipped: true })
const DEFAULT_ALLOW: PolicyDecision = Object.freeze({ decision: 'allow', rule: 'default' })

function allows(m: AllowMatcher, id: Identity): boolean {
  if (m.kind !== undefined && id.kind !== m.kind) return false
  if (m.team !== undefined && id.team !== m.team) return false
  if (m.verified !== undefined && id.verified !== m.verified) return false
  if (m.sources && !m.sources.has(id.source)) return false
  if (m.identity && !m.identity.match(id.name)) return false
  return true
}

/**
 * Headers upstream frameworks take the method from on a POST (Symfony/Laravel, Express method-override,
 * Rack::MethodOverride, ASP.NET Core, OData), compared as an upstream merges names ("_" ≡ "-").
 */
export const METHOD_OVERRIDE_HEADERS: ReadonlySet<string> = new Set([
  'x-http-method-override',
  'x-http-method',
  'x-method-override',
])

/** The methods a request's override headers name, upper-cased; undefined when it has none. */
function overriddenMethods(headers: RequestInfo['headers']): string[] | undefined {
  let out: string[] | undefined
  for (const name in headers) {
    // all three names start with x (or X): the other headers of the request are passed over at once
    const c = name.charCodeAt(0)
    if ((c !== 120 && c !== 88) || !METHOD_OVERRIDE_HEADERS.has(normalizeHeaderName(name))) continue
    const value = headers[name]
    for (const m of String(value).split(',')) {
      const method = m.trim().toUpperCase()
      if (!method) continue
      out ??= []
      out.push(method)
    }
  }
  return out
}

/**
 * The `_method` query parameter Laravel and Symfony (with method parameter override, which Laravel turns on)
 * and Express's `methodOverride('_method')` run a POST as. Names are read as PHP reads them (percent-decoded,
 * cut at a NUL, "." and " " taken for "_"), values upper-cased. A `_method` in a form body cannot be seen here.
 */
function queryMethods(url: string, into: string[] | undefined): string[] | undefined {
  const q = url.indexOf('?')
  // every spelling of the name has "method" in it, or an escape
  if (q === -1 || (url.indexOf('method', q) === -1 && url.indexOf('%', q) === -1)) return into
  for (const pair of url.slice(q + 1).split('&')) {
    const eq = pair.indexOf('=')
    if (eq === -1) continue
    const decoded = decodeQueryPart(pair.slice(0, eq))
    // PHP cuts a parameter name at its first NUL: `_method%00x` is its $_GET['_method']
    const nul = decoded.indexOf('\0')
    const name = nul === -1 ? decoded : decoded.slice(0, nul)
    if (name.trimStart().replace(/[. ]/g, '_') !== '_method') continue
    const method = decodeQueryPart(pair.slice(eq + 1))
      .trim()
      .toUpperCase()
    if (!method) continue
    into ??= []
    into.push(method)
  }
  return into
}

function decodeQueryPart(s: string): string {
  try {
    return decodeURIComponent(s.replaceAll('+', ' '))
  } catch {
    // PHP and qs keep a broken escape as it is
    return s
  }
}

/** a rule decides for the identity: allowed when any of its allow matchers admits it */
function ruleDecision(rule: CompiledPolicyRule, identity: Identity): PolicyDecision {
  for (const m of rule.allow) if (allows(m, identity)) return rule.allowed
  return rule.denied
}

export function compilePolicy(cfg: Config['policy']): Policy {
  const mode = cfg.mode
  if (mode === 'off') return { mode, decide: () => OFF }
  const denyDecision = mode === 'enforce' ? 'deny' : 'would_deny'
  // paths arrive normalized but with their case; an upstream that folds case needs routes that do too
  const ignoreCase = cfg.pathCase === 'insensitive'
  const rules: CompiledPolicyRule[] = cfg.rules.map((r) => {
    const label = r.name ?? r.route
    const rule: CompiledPolicyRule = {
      label,
      route: compilePattern(pathPatternWithoutTrailingSlash(r.route), { separator: '/', ignoreCase }),
      allow: r.allow.map((a) => {
        const m: AllowMatcher = {}
        if (a.identity !== undefined) m.identity = compilePattern(a.identity)
        if (a.kind !== undefined) m.kind = a.kind
        if (a.team !== undefined) m.team = a.team
        if (a.verified !== undefined) m.verified = a.verified
        if (a.source !== undefined) m.sources = new Set(Array.isArray(a.source) ? a.source : [a.source])
        // An identity name is only as good as what verified it: an `identity:` entry names verified
        // identities unless it says otherwise (`verified: false`, or the `source` it means).
        if (a.identity !== undefined && a.verified === undefined && a.source === undefined) m.verified = true
        return m
      }),
      allowed: Object.freeze({ decision: 'allow', rule: label }),
      denied: Object.freeze({ decision: denyDecision, rule: label }),
    }
    if (r.methods?.length) {
      const methods = new Set(r.methods.map((x) => x.toUpperCase()))
      // HEAD is a GET without the body (RFC 9110 §9.3.2): a rule about GET covers it
      if (methods.has('GET')) methods.add('HEAD')
      rule.methods = methods
    }
    return rule
  })
  const byMethod = rules.some((r) => r.methods !== undefined)
  /**
   * Whether each rule's route matched the request's path, worked out at most once per request (reset by
   * decide; decide is synchronous, so one array serves every request): a request whose override header names
   * other methods asks the rules again for each, and its path is the same.
   */
  const matched: (boolean | undefined)[] = new Array(rules.length)
  const decideFor = (identity: Identity, method: string, path: string): PolicyDecision => {
    for (let i = 0; i < rules.length; i++) {
      const rule = rules[i]!
      if (rule.methods && !rule.methods.has(method)) continue
      let matches = matched[i]
      if (matches === undefined) {
        matches = rule.route.match(path) !== null
        matched[i] = matches
      }
      if (matches) return ruleDecision(rule, identity)
    }
    return DEFAULT_ALLOW
  }
  return {
    mode,
    decide(identity, req) {
      matched.fill(undefined)
      // `req.path` is already normalized (dot segments, slashes, encodings, path parameters: proxy/path.ts)
      const path = pathWithoutTrailingSlash(req.path)
      const decision = decideFor(identity, req.method.toUpperCase(), path)
      if (!byMethod || decision.decision !== 'allow') return decision
      // the method the upstream may run instead (a POST with X-HTTP-Method-Override or ?_method=) must be
      // allowed too
      const overrides = queryMethods(req.url, overriddenMethods(req.headers))
      if (overrides === undefined) return decision
      for (const method of overrides) {
        const other = decideFor(identity, method, path)
        if (other.decision !== 'allow') return other
      }
      return decision
    },
  }
}

export interface DenyResponse {
  status: number
  body: string
  headers: Record<string, string>
}

const DENY_HEADERS = Object.freeze({ 'content-type': 'application/json' }) as Record<string, string>

/** 403 body for enforce mode; names the identity and rule so a caller can tell why, never a credential. */
export function denyResponse(identity: Identity, decision: PolicyDecision): DenyResponse {
  return {
    status: 403,
    body: JSON.stringify({ error: 'forbidden', identity: identity.name, rule: decision.rule }),
    headers: DENY_HEADERS,
  }
}
