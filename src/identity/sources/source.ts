// The one interface every credential source implements (docs/reference.md "Request pipeline"). A source says
// how to read its credential off a request and everything the rest of the pipeline needs to know about the
// evidence it produces, so that no other module has to name it: precedence, fingerprint, attributes, the
// kind a rule without `kind` gives it, the identity built-in knowledge gives it, and its config checks.
import type { Config } from '../../config/schema.ts'
import type { Path } from '../../config/yaml-schema.ts'
import type {
  CertEvidence,
  ConnectionInfo,
  Credential,
  Evidence,
  EvidenceSet,
  Failure,
  Identity,
  Kind,
  MaybePromise,
  RequestEvent,
  RequestInfo,
} from '../../types.ts'
import type { AnomalyObserver } from '../anomalies.ts'
import type { BotRangesObserver } from '../bots/verify.ts'
import type { JwksObserver, KeyMemory } from '../jwt/jwks.ts'
import type { NonceStore } from '../signatures/nonces.ts'

/** What built-in knowledge names a caller by when no identity rule matched. */
export type BuiltinIdentity = Omit<Identity, 'source' | 'verified' | 'attributes'>

/** What the proxy answers instead of forwarding. */
export interface Rejection {
  status: number
  body: string
  headers?: Record<string, string>
}

/** What a source's extractor may need besides its own config section. */
export interface SourceContext {
  jwksObserver?: JwksObserver
  botRangesObserver?: BotRangesObserver
  /** where anomalies found after their request was answered are counted */
  anomalyObserver?: AnomalyObserver
  /** unix ms clock (tests) */
  now?: () => number
  /**
   * The signed agents' nonces, owned by the runtime (or the primary of `workers: N`) rather than by one
   * pipeline: a reload must not forget which signatures were used
   */
  nonces?: NonceStore
  /**
   * The files of secrets the sources' `secretFiles` named, by setting, read with the config by whoever builds
   * the pipeline (`readSecretFiles`): a reload that cannot read one fails whole, before any source changes.
   */
  secretFiles?: ReadonlyMap<string, Uint8Array>
  /** the issuers' last good keys, owned by the runtime: a reload during an IdP outage keeps them */
  keyMemory?: KeyMemory
}

/** A file of a secret a source's extractor is created with. */
export interface SecretFile {
  /** the config setting that names it (`apiKeys.fingerprintKeyFile`), for errors and `SourceContext.secretFiles` */
  setting: string
  path: string
  /** its bytes, or a rejection saying what is wrong with them */
  read(path: string): Promise<Uint8Array>
}

/** One source's reader for one loaded config; a reload builds a new one. */
export interface SourceExtractor<E extends Evidence = Evidence> {
  /**
   * Must not throw for any client input. Answers synchronously when it can (the common request is attributed
   * without a promise); a source that has to wait (key fetch, a lookup of the client address in `conn`)
   * returns a promise.
   */
  extract(req: RequestInfo, conn: ConnectionInfo): MaybePromise<E | Failure | undefined>
  /** an answer instead of forwarding when this source's credential failed (jwt.onInvalid: reject) */
  reject?(failure: Failure): Rejection | undefined
  /**
   * After every source has read the request: cross-checks this source's evidence with the client address;
   * may replace it with a verified copy (replaceEvidence) or add anomalies.
   */
  attest?(evidence: EvidenceSet, req: RequestInfo, conn: ConnectionInfo): void
  /**
   * Headers this reader takes a credential from that the proxy does not already know as credentials (a
   * configured `apiKeys.header`): their values count in the header section only, never as request trailers.
   */
  readonly credentialHeaders?: readonly string[]
  /**
   * Headers this reader reads on every request under their exact, lower-case name (`user-agent`). An upstream
   * framework merges other spellings with them (`User_Agent` is HTTP_USER_AGENT too), so the pipeline strips
   * those before the upstream, counts them as spoofed_header and withholds every spelling as a request trailer
   * (pipeline/read-headers.ts).
   */
  readonly readHeaders?: readonly string[]
  /** the request carries a header of this source that its peer may not set (anomaly spoofed_header) */
  spoofedHeaders?(req: RequestInfo, conn: ConnectionInfo): boolean
  /** last word on this source's headers sent upstream (after the proxy's own header handling) */
  prepareUpstreamHeaders?(
    headers: Record<string, string | string[] | undefined>,
    evidence: EvidenceSet,
    conn: ConnectionInfo,
  ): void
  /** initial fetches (keys, lists); never throws: a failed start leaves ready() false */
  start?(): Promise<void>
  /** resolves once background checks started by earlier requests (DNS lookups) have answered */
  settled?(): Promise<void>
  /** for /readyz: the source can verify what it is given */
  ready?(): boolean
  /** what /readyz shows about the source (e.g. `issuers`) */
  readinessDetail?(): Record<string, unknown>
  close?(): void
}

export type ConfigIssue = (path: Path, message: string, hint?: string, at?: 'key' | 'value') => void

export interface CredentialSource<E extends Evidence = Evidence> {
  /** `source` of its evidence, failures and identities; a value of `match.source` */
  readonly name: string
  /**
   * Lower is stronger. The strongest credential present decides the identity's `source` and `verified`,
   * and credentials are listed, explained and turned into attributes in this order.
   */
  readonly precedence: number
  /** which built-in identity wins when several credentials name one; lower first (default: precedence) */
  readonly namingPrecedence?: number
  /** the request event's fingerprint slot for this source's credential (audit `fingerprints`) */
  readonly fingerprintField?: keyof RequestEvent['fingerprints']
  /** failure reasons of its own, beyond the shared FAILURE_REASONS (metric label values, audit) */
  readonly failureReasons?: readonly string[]
  /** the reader for this config, or undefined when the config leaves the source nothing to read */
  create(config: Config, ctx: SourceContext): SourceExtractor<E> | undefined
  /** files of secrets `create` needs from `ctx.secretFiles` */
  secretFiles?(config: Config): readonly SecretFile[]
  /** sha256 prefix (or certificate hash prefix) of the presented credential; never the credential */
  fingerprint?(ev: E): string | undefined
  /**
   * Evidence worth keeping on the identity (names and fingerprints, never secrets). `into` already holds
   * what stronger credentials said; a source does not overwrite those keys. `verifiedIdentity`: the
   * identity is verified (its strongest credential is), so what an unverified credential says about who it
   * is (an operator, a purpose) would pass for checked when it is only what the client wrote.
   */
  attributes(ev: E, into: Record<string, string>, verifiedIdentity: boolean): void
  /** credential expiry (unix seconds); the identity keeps the earliest */
  expiresAt?(ev: E): number | undefined
  /** the configured issuer that vouches for the credential, for a source whose issuers have caps of their own */
  issuer?(ev: E): string | undefined
  /** the kind a rule without `kind` gives a request whose strongest kind-giving credential this is */
  defaultKind?(ev: E): Kind | undefined
  /** who built-in knowledge says this is, or undefined to let the next credential name the caller */
  builtinIdentity?(ev: E): BuiltinIdentity | undefined
  /** rule captures every rule may use ({product}, {bot}…); only set keys not already set */
  captures?(ev: E, into: Record<string, string>): void
  /**
   * Everything about the evidence a credential-only rule set can look at, for the classification cache;
   * undefined makes the request uncacheable.
   */
  cacheKey(ev: E): string | undefined
  /** one line for `nhi-proxy explain` */
  describe(ev: E): string
  /** for sources whose credential is an X.509 certificate: rule `cert`/`spiffe` conditions and token binding */
  certificate?(ev: E): CertEvidence | undefined
  /** checks of the source's config section the schema cannot express */
  checkConfig?(config: Config, error: ConfigIssue, warn: ConfigIssue): void
}

/**
 * A credential entry per evidence object: a cached credential's evidence (a token's, a known user agent's) is
 * the same object on every request that presents it, and entries are never changed (replaceEvidence puts a
 * new one in the list), so its entry is made once instead of per request. Weak: it lives as long as the
 * credential cache holds the evidence.
 */
const entries = new WeakMap<Evidence, Credential>()

function entryFor(source: CredentialSource, evidence: Evidence): Credential {
  const cached = entries.get(evidence)
  if (cached !== undefined && cached.source === source) return cached
  const entry = { source, evidence }
  entries.set(evidence, entry)
  return entry
}

/** Adds a credential, keeping the list strongest first. */
export function addCredential(set: EvidenceSet, source: CredentialSource, evidence: Evidence): void {
  const list = set.credentials
  const entry = entryFor(source, evidence)
  // A request presents one or two credentials: a list of exactly the new size is cheaper than a push, which
  // reserves 17 slots; the list is strongest first, the new entry goes before the first weaker one.
  const n = list.length
  if (n === 0) {
    set.credentials = [entry]
    return
  }
  const next = new Array<Credential>(n + 1)
  let i = n
  while (i > 0 && list[i - 1]!.source.precedence > source.precedence) {
    next[i] = list[i - 1]!
    i--
  }
  next[i] = entry
  for (let j = 0; j < i; j++) next[j] = list[j]!
  set.credentials = next
}

/** Puts `evidence` in the place of the named source's evidence (a claim verified after the fact). */
export function replaceEvidence(set: EvidenceSet, name: string, evidence: Evidence): void {
  const list = set.credentials
  for (let i = 0; i < list.length; i++) {
    if (list[i]!.source.name === name) list[i] = { source: list[i]!.source, evidence }
  }
}

/** The evidence of the named source, when it presented one. */
export function evidenceOf<E extends Evidence>(set: EvidenceSet, name: string): E | undefined {
  for (const c of set.credentials) if (c.source.name === name) return c.evidence as E
  return undefined
}

/** `nhi-proxy explain --json`: evidence by source name, as the report has always shown it. */
export function evidenceByName(set: EvidenceSet): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const c of set.credentials) out[c.source.name] = c.evidence
  out['failures'] = set.failures
  out['anomalies'] = set.anomalies
  return out
}

/** The strongest credential, for its source and verified flag. */
export function strongestCredential(set: EvidenceSet): Credential | undefined {
  return set.credentials[0]
}
