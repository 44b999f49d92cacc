// What the pipeline knows about a request from its credentials alone, whichever rule matches: the strongest
// credential (source, verified), the attributes and expiry the identity keeps, the kind a rule without `kind`
// gives it, the identity built-in knowledge names when no rule matched, and the namespace of unverified
// names (docs/reference.md "Identity model"). Each credential source says its part (identity/sources).
import { createHash } from 'node:crypto'
import type { Credential, EvidenceSet, Identity, Kind, Source } from '../types.ts'
import { cutWhole } from '../util/lone-surrogate.ts'
import type { BuiltinIdentity, CredentialSource } from './sources/source.ts'

export interface Strongest {
  readonly source: Source
  readonly verified: boolean
}

const ANONYMOUS_CREDENTIAL: Strongest = Object.freeze({ source: 'anonymous', verified: false })
/** one frozen answer per source and verified flag: strongest() allocates nothing per request */
const answers = new WeakMap<CredentialSource, readonly [Strongest, Strongest]>()

/** Strongest credential present: decides the identity's `source` and `verified`. */
export function strongest(ev: EvidenceSet): Strongest {
  const c = ev.credentials[0]
  if (c === undefined) return ANONYMOUS_CREDENTIAL
  let pair = answers.get(c.source)
  if (pair === undefined) {
    const name = c.source.name
    pair = [Object.freeze({ source: name, verified: false }), Object.freeze({ source: name, verified: true })]
    answers.set(c.source, pair)
  }
  return pair[c.evidence.verified ? 1 : 0]
}

/**
 * The issuer of the strongest credential, when its source has issuers (a token's `iss`): whichever rule
 * names the identity, an outsider holding only such a token is named by what that issuer vouches for.
 */
export function credentialIssuer(ev: EvidenceSet): string | undefined {
  const c = ev.credentials[0]
  return c === undefined ? undefined : c.source.issuer?.(c.evidence)
}

/**
 * The issuer of the token among the credentials, wherever it ranks: a rule that matches the token's claims
 * names the identity by them even when a stronger credential (a front proxy's certificate) gives `source`.
 */
export function tokenIssuer(ev: EvidenceSet): string | undefined {
  for (const c of ev.credentials) {
    const issuer = c.source.issuer?.(c.evidence)
    if (issuer !== undefined) return issuer
  }
  return undefined
}

/** Only the strongest certificate describes the caller; a weaker one is evidence, not a name. */
function describesCaller(c: Credential, sawCertificate: boolean): boolean {
  return !sawCertificate || c.source.certificate?.(c.evidence) === undefined
}

/** Evidence worth keeping on the identity: fingerprints and names only, never raw secrets. */
export function evidenceAttributes(ev: EvidenceSet): Record<string, string> {
  const a: Record<string, string> = {}
  const verified = strongest(ev).verified
  let sawCertificate = false
  for (const c of ev.credentials) {
    if (!describesCaller(c, sawCertificate)) continue
    if (c.source.certificate?.(c.evidence)) sawCertificate = true
    c.source.attributes(c.evidence, a, verified)
  }
  return a
}

/** The earliest expiry of any presented credential (unix seconds). */
export function evidenceExpiry(ev: EvidenceSet): number | undefined {
  let out: number | undefined
  for (const c of ev.credentials) {
    const e = c.source.expiresAt?.(c.evidence)
    if (e !== undefined && (out === undefined || e < out)) out = e
  }
  return out
}

/** A rule without `kind` inherits what the strongest kind-giving credential says. */
export function defaultKind(ev: EvidenceSet): Kind {
  for (const c of ev.credentials) {
    const k = c.source.defaultKind?.(c.evidence)
    if (k !== undefined) return k
  }
  return 'unknown'
}

const ANONYMOUS_IDENTITY: BuiltinIdentity = Object.freeze({
  name: 'anonymous',
  kind: 'unknown',
  rule: 'builtin:anonymous',
})

/**
 * Who built-in knowledge says the caller is, when no rule matched: the first credential (by naming precedence)
 * that names one, with the issuer of that credential (`issuer`, for the issuer caps). A token names the caller
 * ahead of a certificate, so a request that carries a trusted proxy's or gateway's certificate and an
 * outsider's token is named by the token's claims: that name is the token issuer's to charge, not nobody's.
 */
export function builtinIdentity(ev: EvidenceSet): BuiltinIdentity {
  let best: BuiltinIdentity | undefined
  let namer: Credential | undefined
  let bestRank = Number.POSITIVE_INFINITY
  for (const c of ev.credentials) {
    const rank = c.source.namingPrecedence ?? c.source.precedence
    if (rank >= bestRank) continue
    const b = c.source.builtinIdentity?.(c.evidence)
    if (b === undefined) continue
    best = b
    namer = c
    bestRank = rank
  }
  if (best === undefined || namer === undefined) return ANONYMOUS_IDENTITY
  const issuer = namer.source.issuer?.(namer.evidence)
  return issuer === undefined ? best : { ...best, issuer }
}

/** Captures every rule may use ({product}, and {bot}/{agent} when the user agent is one). */
export function builtinCaptures(ev: EvidenceSet, into: Record<string, string>): void {
  for (const c of ev.credentials) c.source.captures?.(c.evidence, into)
}

/** Whether any credential offers rule captures (so a rule without captures of its own needs no object). */
export function hasBuiltinCaptures(ev: EvidenceSet): boolean {
  for (const c of ev.credentials) if (c.source.captures) return true
  return false
}

/**
 * The pieces of the key being built, joined once: the key is kept in the rule set's cache for as long as the
 * token's identity, and `+=` made it a tree of six string pieces (and a copy of a source's name) kept with it,
 * about 250 bytes per never-seen token instead of one flat string.
 */
const keyParts: string[] = []

/** Cache key over everything a credential-only rule set can look at; undefined when not cacheable. */
export function evidenceKey(ev: EvidenceSet): string | undefined {
  keyParts.length = 0
  for (const c of ev.credentials) {
    const k = c.source.cacheKey(c.evidence)
    if (k === undefined) {
      keyParts.length = 0
      return undefined
    }
    keyParts.push(c.source.name, ':', k, '|')
  }
  const key = keyParts.join('')
  keyParts.length = 0
  return key
}

/** Names of requests that verified nothing (user agents, headers, unverified certificates) live here. */
export const UNVERIFIED_PREFIX = 'ua:'
/** longest unverified identity name (a made-up name: header captures, user agents) */
export const MAX_UNVERIFIED_NAME_LENGTH = 256
/** What a client says, cut to the length a made-up name may have (MAX_UNVERIFIED_NAME_LENGTH). */
export function cutLikeMadeUp<T extends string | undefined>(value: T): T {
  // a header's UTF-8 can be read as characters outside the BMP: the cut keeps each one whole
  return (value === undefined ? value : cutWhole(value, MAX_UNVERIFIED_NAME_LENGTH)) as T
}

/**
 * longest verified identity name (a credential's: a claim, a certificate, a SPIFFE ID). It is repeated on every
 * series line and audit line of the identity and sent in `x-nhi-identity`, percent-encoded (up to 9 bytes a
 * UTF-16 unit): beside the token that carries it (up to 8 KiB), an IdP's claim of a thousand or two
 * characters would otherwise make the head larger than an upstream takes (16 KiB in Node), and every request
 * of that caller would fail there.
 */
export const MAX_VERIFIED_NAME_LENGTH = 512
/** `…#` and 16 hex digits: what a cut verified name ends with */
const CUT_MARK_LENGTH = 18
/** how much of a verified name longer than MAX_VERIFIED_NAME_LENGTH its cut keeps (at most: never half a character) */
export const KEPT_OF_CUT_VERIFIED_NAME = MAX_VERIFIED_NAME_LENGTH - CUT_MARK_LENGTH

/**
 * A verified name within MAX_VERIFIED_NAME_LENGTH: a longer one is cut (never inside a character) and ends with
 * `…#` and the first 16 hex digits of the SHA-256 of the whole name (as UTF-16, so that lone surrogates count),
 * so that two long names that begin alike stay two identities.
 */
export function cutVerifiedName(name: string): string {
  if (name.length <= MAX_VERIFIED_NAME_LENGTH) return name
  const digest = createHash('sha256').update(name, 'utf16le').digest('hex').slice(0, 16)
  return `${cutWhole(name, KEPT_OF_CUT_VERIFIED_NAME)}…#${digest}`
}

/** The identity of requests with nothing to name them by; shared by every unverified, unnamed caller. */
export const ANONYMOUS = 'anonymous'

/** The name the metrics give the identities beyond the cardinality cap (one entry per source). */
export const OVERFLOW_IDENTITY = '__overflow__'

/**
 * Keeps the names of unverified and verified identities apart, whatever rules and built-ins produce, so a
 * client can never take the name of an api key, certificate or token by what it says (`curl -A
 * billing-export/1.0`): an unverified name other than `anonymous` is prefixed `ua:` (`ua:curl`,
 * `ua:googlebot`), and a verified name that would fall into that namespace (`anonymous`, `ua:…`) is
 * prefixed with its source instead (`apikey:anonymous`). So is `__overflow__` (`jwt:__overflow__`): a token
 * whose claim names it so would otherwise share its source's overflow series, show as overflow in
 * /identities and be left out of `inventory`. A verified name is at most MAX_VERIFIED_NAME_LENGTH
 * (cutVerifiedName).
 */
export function namespacedName(name: string, source: Source, verified: boolean): string {
  if (!verified) {
    const named = name === ANONYMOUS || name.startsWith(UNVERIFIED_PREFIX) ? name : UNVERIFIED_PREFIX + name
    // what a client says (a captured header) is no longer than a user agent may be: the name is repeated
    // on every series line, row and audit line of the identity
    return cutLikeMadeUp(named)
  }
  const named =
    name === ANONYMOUS || name === OVERFLOW_IDENTITY || name.startsWith(UNVERIFIED_PREFIX)
      ? `${source}:${name}`
      : name
  return cutVerifiedName(named)
}

/**
 * Every identity gets the same properties in the same order (absent ones undefined): they are read on every
 * request by the recorders, and one object shape keeps those reads monomorphic.
 */
export function identityOf(i: Identity): Identity {
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
    nameFromRequest: i.nameFromRequest === true,
    issuer: i.issuer,
  }
}
