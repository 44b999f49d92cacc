// Ordered identity rules (docs/reference.md "Config file"): first match wins; captures fill name/team/zone. Unmatched requests fall
// back to built-in knowledge (identity/builtin.ts: IdP profiles, certificates, api keys, user agents). Everything is
// compiled once per config load; classify() runs no regex compilation and creates no closures.
import { LRUCache } from 'lru-cache'
import type { Config, IdentityRuleConfig } from '../config/schema.ts'
import {
  builtinCaptures,
  builtinIdentity,
  credentialIssuer,
  cutLikeMadeUp,
  defaultKind,
  evidenceAttributes,
  evidenceExpiry,
  evidenceKey,
  hasBuiltinCaptures,
  identityOf,
  strongest,
  tokenIssuer,
  UNVERIFIED_PREFIX,
} from '../identity/builtin.ts'
import { type EvidenceTrieNode, evidenceNode, findEvidenceNode } from '../identity/evidence-trie.ts'
import type { ConnectionInfo, EvidenceSet, Identity, Kind, RequestInfo } from '../types.ts'
import { SecondSight } from '../util/second-sight.ts'
import { type Captures, type Condition, compileConditions, type Scratch } from './conditions/index.ts'
import { JwtCondition } from './conditions/jwt.ts'
import { type CompiledTemplate, compileTemplate, patternCaptures } from './pattern.ts'

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

export interface RuleOptions {
  /** size of the per-credential classification cache (0 disables it) */
  cacheSize?: number
}

const NO_VALUES: Readonly<Captures> = Object.freeze({})

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
  /** the name template uses a capture a header or the path fills (see requestNamed) */
  nameFromRequest: boolean
  /**
   * it matches a token's claims or issuer: the identities it names are charged to that token's issuer (its
   * cap), even when a stronger credential, such as a front proxy's certificate, gives their `source`
   */
  tokenNamed: boolean
}

const UA_CAPTURES: ReadonlySet<string> = new Set(['bot', 'agent', 'product'])

/**
 * Whether a name takes a capture that a header or path condition fills: the client sets those freely on
 * every request and the credential does not cover them, so one key or token holder could make up any number
 * of verified names with them. A capture is filled by the first condition that has it (conditions run in
 * order and a later one never overwrites it), so `{client}` from a token's claim stays the token's even when
 * a header pattern captures `{client}` as well.
 */
function requestNamed(conditions: readonly Condition[], name: CompiledTemplate): boolean {
  const fromRequest = new Map<string, boolean>()
  for (const cond of conditions) {
    for (const c of cond.captures) if (!fromRequest.has(c)) fromRequest.set(c, cond.perRequest)
  }
  return name.captures.some((c) => fromRequest.get(c) === true)
}

function compileRule(r: IdentityRuleConfig, index: number, apiKeyHeader: string): CompiledRule {
  const name = compileTemplate(r.name)
  const ua = r.match.userAgent
  const uaCaptures = ua !== undefined && !ua.startsWith('builtin:') ? patternCaptures(ua) : []
  const conditions = compileConditions(r.match, apiKeyHeader)
  return {
    index,
    label: r.rule ?? `rule-${index + 1}`,
    conditions,
    uaNamed: name.captures.some((c) => UA_CAPTURES.has(c) || uaCaptures.includes(c)),
    nameFromRequest: requestNamed(conditions, name),
    tokenNamed: conditions.some((c) => c instanceof JwtCondition),
    name,
    team: r.team !== undefined ? compileTemplate(r.team) : undefined,
    zone: r.zone !== undefined ? compileTemplate(r.zone) : undefined,
    kind: r.kind,
    expectEveryMs: r.expectEvery,
  }
}

/**
 * identityOf, with a delegated token's `on_behalf_of` (which the token's profile fills with the name it would
 * give) naming the identity the request is attributed to: the one a rule gave it, namespaced as it is sent.
 * `attributes` is the request's own object (evidenceAttributes).
 */
function onBehalfOfItself(i: Identity): Identity {
  const identity = identityOf(i)
  if (identity.attributes['on_behalf_of'] !== undefined) identity.attributes['on_behalf_of'] = identity.name
  return identity
}

/** the identity of one combination of evidence objects, and the longer combinations it starts */
interface EvidenceNode extends EvidenceTrieNode<EvidenceNode> {
  identity?: Identity
}
const newEvidenceNode = (): EvidenceNode => ({})

export function compileRules(config: Config, opts: RuleOptions = {}): RuleSet {
  const rules = config.identities.map((r, i) => compileRule(r, i, config.apiKeys.header))
  const perRequest = rules.some((r) => r.conditions.some((c) => c.perRequest))
  const cacheSize = opts.cacheSize ?? 10_000
  const caches =
    !perRequest && cacheSize > 0
      ? {
          byKey: new LRUCache<string, Identity>({ max: cacheSize }),
          // the same decision, keyed by the evidence objects themselves (evidence is never mutated: a claim
          // verified after the fact replaces its object); weak, so it lives no longer than the credential caches
          byEvidence: new WeakMap<object, EvidenceNode>(),
          // an identity is kept from its key's second sight: a never-repeating token's (one per request, or a
          // flood of them) is worked out, used and dropped, instead of filling the cache and evicting
          // identities still in use
          admission: new SecondSight(cacheSize),
        }
      : undefined
  const scratch: Scratch = { captures: undefined, reason: '' }

  function classifyUncached(
    ev: EvidenceSet,
    req: RequestInfo,
    conn: ConnectionInfo,
    trace?: RuleTrace[],
  ): Identity {
    const { source, verified } = strongest(ev)
    // attributes and expiry (a profile's kubernetes warnafter…) apply whichever rule matches
    const attributes = evidenceAttributes(ev)
    const expiry = evidenceExpiry(ev)
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
      if (hasBuiltinCaptures(ev)) {
        scratch.captures ??= {}
        builtinCaptures(ev, scratch.captures)
      }
      const values = (scratch.captures as Captures | undefined) ?? NO_VALUES
      const full = rule.name.render(values)
      // a name taken from a header or the path is what the client says, verified credential or not, and a team
      // or zone filled from a capture as well: no longer than a made-up name may be (each is repeated on every
      // series line, row and audit line of the identity)
      const rendered = rule.nameFromRequest ? cutLikeMadeUp(full) : full
      return onBehalfOfItself({
        // a name made from what the user agent says is a ua: name even on a verified request (where
        // identityOf then prefixes it with the source: apikey:ua:curl), never a verified-looking one
        name:
          rule.uaNamed && !rendered.startsWith(UNVERIFIED_PREFIX) ? UNVERIFIED_PREFIX + rendered : rendered,
        kind: rule.kind ?? defaultKind(ev),
        source,
        verified,
        team: cutLikeMadeUp(rule.team?.render(values)),
        zone: cutLikeMadeUp(rule.zone?.render(values)),
        rule: rule.label,
        attributes,
        expiresAt: expiry,
        expectEveryMs: rule.expectEveryMs,
        nameFromRequest: rule.nameFromRequest,
        issuer: rule.tokenNamed ? tokenIssuer(ev) : credentialIssuer(ev),
      })
    }
    const b = builtinIdentity(ev)
    // the credential that named it is charged (a token names ahead of a certificate), not the strongest one
    return onBehalfOfItself({ ...b, source, verified, attributes, expiresAt: expiry })
  }

  return {
    size: rules.length,
    classify(ev, req, conn, trace) {
      if (!caches || trace) return classifyUncached(ev, req, conn, trace)
      const { byKey, byEvidence, admission } = caches
      // credentials whose evidence objects earlier requests had (a cached token's, a known user agent's):
      // their identity is found without building the evidence key string
      const credentials = ev.credentials
      const known = findEvidenceNode(byEvidence, credentials)?.identity
      if (known !== undefined) return known
      const key = evidenceKey(ev)
      if (key === undefined) return classifyUncached(ev, req, conn)
      let identity = byKey.get(key)
      if (identity === undefined) {
        identity = classifyUncached(ev, req, conn)
        if (!admission.seen(key)) return identity
        byKey.set(key, identity)
      }
      if (credentials.length > 0) evidenceNode(byEvidence, credentials, newEvidenceNode).identity = identity
      return identity
    },
  }
}
