// The shared vocabulary of the request pipeline (docs/reference.md "Request pipeline", "Identity model", "Metrics").
// Every stage talks in these types; nothing here depends on a library.
import type { IncomingHttpHeaders } from 'node:http'
import type { Config } from './config/schema.ts'
import type { CredentialSource } from './identity/sources/source.ts'

export const KINDS = ['human', 'service', 'job', 'bot', 'agent', 'unknown'] as const
export type Kind = (typeof KINDS)[number]

/** The header a trusted front proxy passes a client certificate in (forwardedClientCert.format). */
export const FORWARDED_CERT_FORMATS = ['xfcc', 'rfc9440', 'alb', 'nginx'] as const
export type ForwardedCertFormat = (typeof FORWARDED_CERT_FORMATS)[number]

/**
 * The name of the credential source an identity or failure came from (src/identity/sources lists them), or
 * "anonymous" for a request that presented nothing.
 */
export type Source = string

export interface Identity {
  name: string
  kind: Kind
  source: Source
  /**
   * true only if a signature, certificate chain or api-key hash was checked, or a crawler's claimed operator
   * was confirmed by its published IP ranges or DNS
   */
  verified: boolean
  team?: string
  zone?: string
  /** name of the rule that matched, or "builtin:<what>" */
  rule?: string
  attributes: Record<string, string>
  /** earliest credential expiry (unix seconds); kubernetes warnafter counts as expiry */
  expiresAt?: number
  /** from the matching rule: job liveness window in ms */
  expectEveryMs?: number
  /**
   * the name was filled (wholly or partly) from a request header or the path, which the client sets freely
   * per request and no credential covers: the metrics hold it to the unverified cap, as a made-up name
   */
  nameFromRequest?: boolean
  /**
   * the configured JWT issuer whose token names the identity or is its strongest credential (the one that
   * gives `source`): the metrics hold the names that issuer's tokens give to its own cap
   * (jwt.issuers[].maxIdentities), also behind a stronger credential such as a gateway's certificate
   */
  issuer?: string
}

/** JWT signature algorithms: asymmetric ones are the default allowlist; HMAC only with a configured secret. */
export const ASYMMETRIC_ALGORITHMS = [
  'RS256',
  'RS384',
  'RS512',
  'PS256',
  'PS384',
  'PS512',
  'ES256',
  'ES384',
  'ES512',
  'EdDSA',
] as const
export const HMAC_ALGORITHMS = ['HS256', 'HS384', 'HS512'] as const

/** Built-in IdP claim mappings (docs/reference.md "Built-in knowledge"). */
export const PROFILE_NAMES = [
  'kubernetes',
  'github-actions',
  'auth0',
  'azure-ad',
  'okta',
  'keycloak',
  'google',
  'spiffe',
  'generic',
] as const
export type ProfileName = (typeof PROFILE_NAMES)[number]

/**
 * Why a token or certificate did not check out. A source may add reasons of its own
 * (CredentialSource.failureReasons); identity/sources/index.ts ALL_FAILURE_REASONS lists every one.
 */
export const FAILURE_REASONS = [
  'expired',
  'not_yet_valid',
  'bad_signature',
  'unknown_kid',
  // a token for an issuer whose keys have never been fetched (IdP unreachable since start): not a bad token
  'keys_unavailable',
  // a new token refused because too many new tokens already wait for the verification workers: not a bad token
  'verification_busy',
  'wrong_audience',
  'wrong_issuer',
  'alg_not_allowed',
  'malformed',
  'cert_untrusted',
  'cert_expired',
  // a client certificate from a configured CA whose validity starts later: a CA ahead of this clock, or a
  // certificate issued for later
  'cert_not_yet_valid',
  'spiffe_invalid',
  'untrusted_forwarder',
  // signed agents (HTTP Message Signatures, Web Bot Auth)
  'signature_invalid',
  'signature_expired',
  'signature_replayed',
  'signature_unknown_key',
  // a verified signature refused because the replay cache is full of nonces that can all still verify: not a
  // bad signature, but one whose replay could not be refused later
  'replay_cache_full',
] as const
export type FailureReason = (typeof FAILURE_REASONS)[number]

/** A credential that was presented but did not check out. Never carries the raw credential. */
export interface Failure {
  failed: true
  source: Source
  /** a FailureReason, or one of the failing source's own failureReasons */
  reason: string
  /** short human-readable detail, safe to log (no secret material) */
  detail?: string
  /** sha256 prefix of the presented credential, when there was one */
  fingerprint?: string
  /** unverified claims/fields that are safe to keep as evidence (iss, sub, kid…) */
  attributes?: Record<string, string>
}

export const ANOMALY_TYPES = [
  'binding_mismatch',
  'identity_mismatch',
  'token_shared',
  'expired_in_use',
  'unknown_kid',
  'spoofed_header',
  // a user agent claiming a well-known crawler operator from outside that operator's published ranges
  'unverified_claim',
] as const
export type AnomalyType = (typeof ANOMALY_TYPES)[number]

export interface JwtEvidence {
  source: 'jwt'
  verified: true
  issuer: string
  /** IdP profile configured for this issuer, if any */
  profile?: string
  claims: Readonly<Record<string, unknown>>
  alg: string
  kid?: string
  /** sha256 prefix (16 hex) of the raw token */
  fingerprint: string
  /** exp claim, unix seconds */
  exp?: number
}

export interface CertEvidence {
  source: 'mtls' | 'xfcc'
  /** mtls: chain verified by the TLS stack against clientCA; xfcc: vouched for by a trusted proxy */
  verified: boolean
  /** present only when the certificate carries exactly one valid SPIFFE URI SAN */
  spiffeId?: string
  /**
   * RDNs in DER order, as Node prints a certificate's subject (`O=acme, CN=orders`), whichever path brought
   * the certificate: an XFCC Subject (RFC 4514 order) is reversed into it, so one certificate has one subject
   */
  subject?: string
  /**
   * the same subject in RFC 4514 order (`CN=orders,O=acme`), as Envoy writes XFCC's Subject: built once with
   * the evidence, for match.cert.subject patterns written that way and for the XFCC sent upstream (slash
   * form, which has no other order, as it is)
   */
  subjectRfc4514?: string
  cn?: string
  dnsSans: string[]
  uriSans: string[]
  /** sha256 of the DER certificate, lowercase hex (RFC 8705 x5t#S256 uses base64url of the same bytes) */
  sha256?: string
  /** unix seconds */
  notAfter?: number
  /** xfcc: which header format carried it */
  via?: 'xfcc' | 'client-cert' | 'alb' | 'nginx'
}

export type UserAgentCategory = 'browser' | 'bot' | 'agent' | 'unknown'
export interface UserAgentEvidence {
  source: 'useragent'
  /** true only for a crawler whose claimed operator was confirmed by its published IP ranges or DNS */
  verified: boolean
  /** how a verified crawler was confirmed */
  verifiedBy?: 'ranges' | 'dns'
  ua: string
  category: UserAgentCategory
  /** short stable product name, e.g. "googlebot", "gptbot", "curl", "chrome" */
  product: string
  /** known AI agents only: who runs it, e.g. "OpenAI" */
  operator?: string
  /** known AI agents only: training | search | assistant | coding | autonomous */
  purpose?: 'training' | 'search' | 'assistant' | 'coding' | 'autonomous'
}

/** A request signature (RFC 9421, Web Bot Auth) that verified against a configured key directory. */
export interface SignatureEvidence {
  source: 'signature'
  verified: true
  /** the directory's configured name (default: its host) */
  name: string
  kind: Kind
  /** the key directory URL, as configured */
  directory: string
  /** JWK thumbprint of the key that signed (public, safe to show) */
  keyid: string
  operator?: string
  purpose?: 'training' | 'search' | 'assistant' | 'coding' | 'autonomous'
  /** expires parameter of the signature, unix seconds */
  exp?: number
}

/** What every source's evidence has in common; each source adds its own fields (JwtEvidence, CertEvidence…). */
export interface Evidence {
  readonly source: Source
  /** a signature, certificate chain or key hash was checked (or a trusted proxy vouched for it) */
  readonly verified: boolean
}

/** One credential that checked out, with the source that read it. */
export interface Credential<E extends Evidence = Evidence> {
  readonly source: CredentialSource<E>
  readonly evidence: E
}

/** Everything the identify stage learned about one request. */
export interface EvidenceSet {
  /** strongest first (source precedence), at most one per source */
  credentials: Credential[]
  failures: Failure[]
  anomalies: AnomalyType[]
}

/** What an extractor sees of the request. Headers are Node's lower-cased header object. */
export interface RequestInfo {
  method: string
  /** path without query string */
  path: string
  /** request target (path + query), its path normalized (proxy/path.ts) */
  url: string
  /**
   * The origin-form target as the client sent it, before normalization: what an HTTP Message Signature
   * covers (`@path`, `@query`, `@target-uri`). undefined: `url` is that too.
   */
  readonly sentTarget?: string | undefined
  /**
   * The header lines as received, name and value alternating (Node's rawHeaders), where `headers` joined the
   * lines of a field: for what needs each line (a signature over a field with `;bs`). undefined: unknown.
   */
  readonly rawHeaders?: readonly string[] | undefined
  headers: IncomingHttpHeaders
  /**
   * The address the request comes from (identity/client-address.ts `requestClient`), kept by the first stage
   * that works it out for the stages after it; only a request object that has the field keeps it.
   */
  client?: string | undefined
}

/** Per-connection facts, computed once per TCP/TLS connection. */
export interface ConnectionInfo {
  remoteAddress: string
  remotePort: number
  tls: boolean
  /** parsed once per TLS connection; Failure when the presented cert did not verify */
  peerCert?: CertEvidence | Failure
}

export type MaybePromise<T> = T | Promise<T>

export type Decision = 'allow' | 'deny' | 'would_deny'
export interface PolicyDecision {
  decision: Decision
  /** policy rule name/route that decided, or "default" */
  rule: string
  /** present when policy is off: nothing was evaluated */
  skipped?: boolean
}

/** a decision as every record of a request says it: `none` while the policy is off (nothing was decided) */
export function recordedDecision(d: PolicyDecision): Decision | 'none' {
  return d.skipped ? 'none' : d.decision
}

export type UpstreamErrorReason = 'connect' | 'timeout' | 'reset'

/** The one record every recorder sees, after the response has ended. Never carries raw credentials. */
export interface RequestEvent {
  /** unix ms at request start */
  time: number
  traceId: string
  /** our hop's span id: the parent the upstream sees in `traceparent` */
  spanId: string
  /** the caller's span id, when the request came with a valid `traceparent` */
  parentSpanId?: string
  /** W3C trace flags (2 hex) sent upstream; "01" = sampled */
  traceFlags?: string
  requestId: string
  identity: Identity
  /** sha256 prefixes of presented credentials */
  fingerprints: { jwt?: string; cert?: string; apikey?: string }
  failures: Failure[]
  anomalies: AnomalyType[]
  decision: PolicyDecision
  /** the peer, or behind a trusted proxy the client it forwarded for (X-Forwarded-For) */
  clientAddress: string
  /** the direct peer (the trusted proxy), when the client address is one it forwarded for */
  peerAddress?: string
  /** the Host header (or :authority) the client addressed, when it sent one */
  host?: string
  method: string
  path: string
  /** bounded route label: a configured template or "other" */
  route: string
  status: number
  durationMs: number
  /** time the upstream took (0 when not forwarded) */
  upstreamMs: number
  bytesIn: number
  bytesOut: number
  upstreamError?: UpstreamErrorReason
  /** gRPC calls only: the call's status code (0 OK … 16 UNAUTHENTICATED), from the upstream or the proxy */
  grpcStatus?: number
  /** the service this sidecar fronts (callee) */
  service: string
}

/**
 * One output of finished requests (metrics, audit, live feed, OTLP…), one file each under src/telemetry,
 * listed once in the telemetry facade. record() must not block and must keep memory bounded; the facade
 * contains a recorder that throws or rejects anyway, so one broken output never reaches the others or the
 * request.
 */
export interface Recorder {
  /** label of `nhi_recorder_failures_total` and of log lines about this recorder */
  readonly name: string
  record(event: RequestEvent): void
  /** applies a reloaded config (and the initial one, once at start) */
  reconfigure?(config: Config): void | Promise<void>
  /** sends or writes what is pending; bounded */
  close?(): void | Promise<void>
}

/** a certificate's validity, unix seconds */
export interface CertificateValidity {
  notBefore: number
  notAfter: number
}
