// Credential cross-checks that look at more than one piece of evidence, or at more than one request.
// Memory stays bounded whatever clients send: one LRU of token fingerprints, each with a capped peer set.
import { LRUCache } from 'lru-cache'
import type { Config } from '../config/schema.ts'
import type {
  AnomalyType,
  CertEvidence,
  ConnectionInfo,
  EvidenceSet,
  Failure,
  Identity,
  JwtEvidence,
} from '../types.ts'
import type { CidrSet } from '../util/cidr.ts'
import { lruGet } from '../util/lru-get.ts'
import { type ClientRequest, requestClient } from './client-address.ts'
import { tokenProfile } from './profiles.ts'
import { certificateOf } from './sources/certificate.ts'
import { evidenceOf } from './sources/source.ts'
import { spiffeNamespaceServiceAccount } from './spiffe.ts'

/**
 * Counts an anomaly found after its request was answered (a crawler claim whose reverse DNS lookup concluded
 * later) in nhi_credential_anomalies_total; the request's own record stays as it was.
 */
export interface AnomalyObserver {
  found(type: AnomalyType, count: number): void
}

/** Anomalies implied by a credential failure on its own. */
export function anomaliesFromFailures(failures: readonly Failure[]): AnomalyType[] {
  const out: AnomalyType[] = []
  addFailureAnomalies(failures, out)
  return out
}

/**
 * Appends the anomalies `failures` imply to `into`, each once. Runs on every request, so it neither
 * allocates nor creates a closure when there is nothing to add (nearly always).
 */
export function addFailureAnomalies(failures: readonly Failure[], into: AnomalyType[]): void {
  for (let i = 0; i < failures.length; i++) {
    const reason = failures[i]!.reason
    const a: AnomalyType | undefined =
      reason === 'untrusted_forwarder'
        ? 'spoofed_header'
        : reason === 'unknown_kid'
          ? 'unknown_kid'
          : reason === 'expired'
            ? 'expired_in_use'
            : undefined
    if (a !== undefined) addOnce(into, a)
  }
}

function addOnce(into: AnomalyType[], a: AnomalyType): void {
  if (!into.includes(a)) into.push(a)
}

export interface AnomalyDetectorOptions {
  /** how many distinct token fingerprints are tracked for sharing (least recently seen are forgotten) */
  maxTokens?: number
  /**
   * forwardedClientCert.trustedProxies: behind one of them every client has the proxy's address, so a client
   * is told apart by the address the proxy appended to X-Forwarded-For
   */
  trustedProxies?: CidrSet
  /** `workers: N`: the pod counts a token's clients over every worker and says when it is shared */
  pod?: PodTokenPeers
}

/**
 * A worker's side of the pod's `token_shared` count (`workers: N`): each worker sees only the clients whose
 * connections it was handed, so the primary adds up the (token, client) pairs the workers saw and names the
 * tokens that cross the limit; the worker that brought the crossing pair flags its next request with it.
 */
export interface PodTokenPeers {
  /** a client this worker had not seen with the token in the token's current window */
  seen(fingerprint: string, peer: string): void
  /** true once per verdict: the pod found this token shared since this worker last asked */
  takeVerdict(fingerprint: string): boolean
}

/** TokenPeerWindows.add: the client is new to the token's window */
export const NEW_PEER = 1
/** TokenPeerWindows.add: …and the token has more clients than the limit in its window now */
export const OVER_LIMIT = 2

interface TokenPeers {
  windowStart: number
  /** nearly every token is only ever used by one peer: a Set is made when a second one shows up */
  first: string
  others: Set<string> | undefined
  reported: boolean
}

function peerCount(p: TokenPeers): number {
  return p.others === undefined ? 1 : p.others.size + 1
}

/**
 * The distinct clients of each token within its window, bounded: an LRU of tokens, and at most one client
 * more than the limit kept per token (beyond it nothing more is learnt). Used by each process's detector and
 * by the primary of a pod for the pod's count.
 */
export class TokenPeerWindows {
  private readonly tokens: LRUCache<string, TokenPeers>
  private readonly maxPeers: number

  constructor(
    private readonly limit: number,
    private readonly windowMs: number,
    private readonly now: () => number = Date.now,
    maxTokens = 10_000,
  ) {
    this.tokens = new LRUCache({ max: maxTokens })
    this.maxPeers = limit + 1
  }

  get size(): number {
    return this.tokens.size
  }

  peersOf(fingerprint: string): number {
    const entry = this.tokens.peek(fingerprint)
    return entry === undefined ? 0 : peerCount(entry)
  }

  /** records `peer` for the token: 0, or NEW_PEER and OVER_LIMIT bits (a number: this runs on every request) */
  add(fp: string, peer: string): number {
    const t = this.now()
    const entry = lruGet(this.tokens, fp)
    if (!entry || t - entry.windowStart > this.windowMs) {
      this.tokens.set(fp, { windowStart: t, first: peer, others: undefined, reported: false })
      return NEW_PEER
    }
    if (peer === entry.first) return 0
    if (entry.others === undefined) entry.others = new Set([peer])
    else if (entry.others.has(peer) || peerCount(entry) >= this.maxPeers) return 0
    else entry.others.add(peer)
    return peerCount(entry) > this.limit ? NEW_PEER | OVER_LIMIT : NEW_PEER
  }

  /** marks the token's window reported: true the first time, so that a shared token is reported once a window */
  report(fp: string): boolean {
    const entry = this.tokens.peek(fp)
    if (entry === undefined || entry.reported) return false
    entry.reported = true
    return true
  }
}

export class AnomalyDetector {
  private readonly windows: TokenPeerWindows
  private readonly trustedProxies: CidrSet | undefined
  private readonly pod: PodTokenPeers | undefined

  constructor(
    private readonly cfg: Config['anomalies'],
    now: () => number = Date.now,
    opts: AnomalyDetectorOptions = {},
  ) {
    this.windows = new TokenPeerWindows(cfg.tokenSharedPeers, cfg.tokenSharedWindow, now, opts.maxTokens)
    // without trusted proxies (a plain sidecar) the peer is the client: nothing to resolve per request
    this.trustedProxies = opts.trustedProxies?.size ? opts.trustedProxies : undefined
    this.pod = opts.pod
  }

  /** Number of token fingerprints currently tracked (for tests and metrics). */
  get trackedTokens(): number {
    return this.windows.size
  }

  /** Distinct peers remembered for one token fingerprint in its current window. */
  peersOf(fingerprint: string): number {
    return this.windows.peersOf(fingerprint)
  }

  /**
   * NEW anomalies for this request; the caller appends them to evidence.anomalies. `req`: the request, whose
   * client address (X-Forwarded-For) tells clients apart when the peer is a trusted proxy.
   */
  inspect(ev: EvidenceSet, identity: Identity, conn: ConnectionInfo, req?: ClientRequest): AnomalyType[] {
    const out: AnomalyType[] = []
    this.inspectInto(ev, identity, conn, out, req)
    return out
  }

  /** inspect(), appending to `into` what it does not hold yet: the per-request form, without an array of its own */
  inspectInto(
    ev: EvidenceSet,
    _identity: Identity,
    conn: ConnectionInfo,
    into: AnomalyType[],
    req?: ClientRequest,
  ): void {
    const jwt = evidenceOf<JwtEvidence>(ev, 'jwt')
    if (!jwt) return
    const cert = certificateOf(ev)
    if (bindingMismatch(jwt, cert)) addOnce(into, 'binding_mismatch')
    if (this.cfg.requireCertTokenMatch && cert && identityMismatch(jwt, cert))
      addOnce(into, 'identity_mismatch')
    if (this.tokenShared(jwt.fingerprint, cert?.sha256 ?? this.client(conn, req)))
      addOnce(into, 'token_shared')
  }

  private client(conn: ConnectionInfo, req: ClientRequest | undefined): string {
    const trusted = this.trustedProxies
    if (trusted === undefined || req === undefined) return conn.remoteAddress
    return requestClient(req, conn.remoteAddress, trusted)
  }

  private tokenShared(fp: string, peer: string): boolean {
    const added = this.windows.add(fp, peer)
    const pod = this.pod
    if (pod === undefined) return (added & OVER_LIMIT) !== 0 && this.windows.report(fp)
    // the pod's count decides: what this worker saw goes to the primary, the verdict comes back
    if (added & NEW_PEER) pod.seen(fp, peer)
    return pod.takeVerdict(fp) && this.windows.report(fp)
  }
}

/** RFC 8705 certificate-bound token: cnf["x5t#S256"] must equal the base64url sha256 of the presented cert. */
function bindingMismatch(jwt: JwtEvidence, cert: CertEvidence | undefined): boolean {
  const cnf = jwt.claims['cnf']
  if (!cnf || typeof cnf !== 'object') return false
  const thumbprint = (cnf as Record<string, unknown>)['x5t#S256']
  if (typeof thumbprint !== 'string') return false
  if (!cert?.sha256) return true
  const presented = Buffer.from(cert.sha256, 'hex').toString('base64url')
  return presented !== thumbprint.replace(/=+$/, '')
}

interface Workload {
  /** "ns/sa" for Kubernetes-style identities */
  nsSa?: string
  /** full SPIFFE ID */
  spiffeId?: string
}

function certWorkload(cert: CertEvidence): Workload {
  const w: Workload = {}
  if (cert.spiffeId) {
    w.spiffeId = cert.spiffeId
    const nsSa = spiffeNamespaceServiceAccount(cert.spiffeId)
    if (nsSa) w.nsSa = nsSa
  } else if (cert.cn && /^[^/\s]+\/[^/\s]+$/.test(cert.cn)) {
    // a cert named "ns/sa" speaks for that workload too
    w.nsSa = cert.cn
  }
  return w
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' && v !== '' ? v : undefined
}

/**
 * The workload a token names, read with the profile that names its identity: the issuer's `profile`, or the
 * one guessed from the issuer URL when none is configured (a cluster's token is `orders/worker` either way,
 * and must be compared with the certificate either way).
 */
function tokenWorkload(jwt: JwtEvidence): Workload {
  const w: Workload = {}
  const sub = str(jwt.claims['sub'])
  const profile = tokenProfile(jwt)
  if (profile === 'kubernetes') {
    const k8s = jwt.claims['kubernetes.io']
    if (k8s && typeof k8s === 'object') {
      const ns = str((k8s as Record<string, unknown>)['namespace'])
      const sa = (k8s as Record<string, unknown>)['serviceaccount']
      const saName = sa && typeof sa === 'object' ? str((sa as Record<string, unknown>)['name']) : undefined
      if (ns && saName) w.nsSa = `${ns}/${saName}`
    }
    const m = sub ? /^system:serviceaccount:([^:]+):([^:]+)$/.exec(sub) : null
    if (!w.nsSa && m) w.nsSa = `${m[1]}/${m[2]}`
  } else if (profile === 'spiffe' && sub?.startsWith('spiffe://')) {
    w.spiffeId = sub
    const nsSa = spiffeNamespaceServiceAccount(sub)
    if (nsSa) w.nsSa = nsSa
  }
  return w
}

/** Only compares what both sides state; a side that names no workload cannot disagree. */
function identityMismatch(jwt: JwtEvidence, cert: CertEvidence): boolean {
  const token = tokenWorkload(jwt)
  const c = certWorkload(cert)
  if (token.spiffeId && c.spiffeId) return token.spiffeId !== c.spiffeId
  if (token.nsSa && c.nsSa) return token.nsSa !== c.nsSa
  return false
}
