// Credential cross-checks that look at more than one piece of evidence, or at more than one request.
// Memory stays bounded whatever clients send: one LRU of token fingerprints, each with a capped peer set.
import type { IncomingHttpHeaders } from 'node:http'
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
import { clientAddress } from './client-address.ts'
import { certificateOf } from './sources/certificate.ts'
import { evidenceOf } from './sources/source.ts'
import { spiffeNamespaceServiceAccount } from './spiffe.ts'

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
}

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

export class AnomalyDetector {
  private readonly tokens: LRUCache<string, TokenPeers>
  private readonly maxPeers: number
  private readonly trustedProxies: CidrSet | undefined

  constructor(
    private readonly cfg: Config['anomalies'],
    private readonly now: () => number = Date.now,
    opts: AnomalyDetectorOptions = {},
  ) {
    this.tokens = new LRUCache({ max: opts.maxTokens ?? 10_000 })
    // once a token has more peers than allowed we know enough; never keep more than that per token
    this.maxPeers = cfg.tokenSharedPeers + 1
    // without trusted proxies (a plain sidecar) the peer is the client: nothing to resolve per request
    this.trustedProxies = opts.trustedProxies?.size ? opts.trustedProxies : undefined
  }

  /** Number of token fingerprints currently tracked (for tests and metrics). */
  get trackedTokens(): number {
    return this.tokens.size
  }

  /** Distinct peers remembered for one token fingerprint in its current window. */
  peersOf(fingerprint: string): number {
    const entry = this.tokens.peek(fingerprint)
    return entry === undefined ? 0 : peerCount(entry)
  }

  /**
   * NEW anomalies for this request; the caller appends them to evidence.anomalies. `headers`: the request's,
   * read for X-Forwarded-For when the peer is a trusted proxy.
   */
  inspect(
    ev: EvidenceSet,
    identity: Identity,
    conn: ConnectionInfo,
    headers?: IncomingHttpHeaders,
  ): AnomalyType[] {
    const out: AnomalyType[] = []
    this.inspectInto(ev, identity, conn, out, headers)
    return out
  }

  /** inspect(), appending to `into` what it does not hold yet: the per-request form, without an array of its own */
  inspectInto(
    ev: EvidenceSet,
    _identity: Identity,
    conn: ConnectionInfo,
    into: AnomalyType[],
    headers?: IncomingHttpHeaders,
  ): void {
    const jwt = evidenceOf<JwtEvidence>(ev, 'jwt')
    if (!jwt) return
    const cert = certificateOf(ev)
    if (bindingMismatch(jwt, cert)) addOnce(into, 'binding_mismatch')
    if (this.cfg.requireCertTokenMatch && cert && identityMismatch(jwt, cert))
      addOnce(into, 'identity_mismatch')
    if (this.tokenShared(jwt.fingerprint, cert?.sha256 ?? this.client(conn, headers)))
      addOnce(into, 'token_shared')
  }

  private client(conn: ConnectionInfo, headers: IncomingHttpHeaders | undefined): string {
    const trusted = this.trustedProxies
    if (trusted === undefined || headers === undefined) return conn.remoteAddress
    return clientAddress(headers, conn.remoteAddress, trusted)
  }

  private tokenShared(fp: string, peer: string): boolean {
    const t = this.now()
    const entry = lruGet(this.tokens, fp)
    if (!entry || t - entry.windowStart > this.cfg.tokenSharedWindow) {
      this.tokens.set(fp, { windowStart: t, first: peer, others: undefined, reported: false })
      return false
    }
    if (peer === entry.first) return false
    if (entry.others === undefined) entry.others = new Set([peer])
    else if (peerCount(entry) < this.maxPeers) entry.others.add(peer)
    if (!entry.reported && peerCount(entry) > this.cfg.tokenSharedPeers) {
      entry.reported = true
      return true
    }
    return false
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

function tokenWorkload(jwt: JwtEvidence): Workload {
  const w: Workload = {}
  const sub = str(jwt.claims['sub'])
  if (jwt.profile === 'kubernetes') {
    const k8s = jwt.claims['kubernetes.io']
    if (k8s && typeof k8s === 'object') {
      const ns = str((k8s as Record<string, unknown>)['namespace'])
      const sa = (k8s as Record<string, unknown>)['serviceaccount']
      const saName = sa && typeof sa === 'object' ? str((sa as Record<string, unknown>)['name']) : undefined
      if (ns && saName) w.nsSa = `${ns}/${saName}`
    }
    const m = sub ? /^system:serviceaccount:([^:]+):([^:]+)$/.exec(sub) : null
    if (!w.nsSa && m) w.nsSa = `${m[1]}/${m[2]}`
  } else if (jwt.profile === 'spiffe' && sub?.startsWith('spiffe://')) {
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
