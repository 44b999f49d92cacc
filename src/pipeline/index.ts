// The attribution pipeline: identify (every credential source) → classify (identity rules, built-in
// knowledge) → anomalies → route → policy, and record. One object per loaded config, carrying that config:
// a reload builds a new one and swaps it in between requests, so every request sees one consistent config.
import type { Config } from '../config/schema.ts'
import { AnomalyDetector, addFailureAnomalies, type PodTokenPeers } from '../identity/anomalies.ts'
import { requestClient, trustedProxySet } from '../identity/client-address.ts'
import { type EvidenceTrieNode, evidenceNode } from '../identity/evidence-trie.ts'
import { CREDENTIAL_SOURCES } from '../identity/sources/index.ts'
import {
  addCredential,
  type CredentialSource,
  type SourceContext,
  type SourceExtractor,
} from '../identity/sources/source.ts'
import { compilePolicy, denyResponse, type Policy } from '../policy/policy.ts'
import { compileRoutes } from '../rules/routes.ts'
import { compileRules, type RuleSet, type RuleTrace } from '../rules/rule-set.ts'
import type {
  ConnectionInfo,
  Evidence,
  EvidenceSet,
  Failure,
  MaybePromise,
  RequestEvent,
  RequestInfo,
} from '../types.ts'
import type { CidrSet } from '../util/cidr.ts'
import { isIdentityHeaderName, normalizeHeaderName } from '../util/header-names.ts'
import type { Attribution, Pipeline } from './contract.ts'
import { ReadHeaders } from './read-headers.ts'

export type { Attribution, Pipeline } from './contract.ts'

export interface Evaluation extends Attribution {
  trace: RuleTrace[]
}

export interface PipelineOptions extends SourceContext {
  /** where each request's event goes once the response has ended (the telemetry recorders) */
  recorder?: { record(event: RequestEvent): void }
  /** the credential sources to read (default: all of identity/sources) */
  sources?: readonly CredentialSource[]
  /** `workers: N`: the pod's count of each token's clients (anomalies.tokenSharedPeers) */
  podTokenPeers?: PodTokenPeers
}

interface Reader {
  readonly source: CredentialSource
  readonly extractor: SourceExtractor
}

/** requests that are not explained share one empty, frozen trace instead of allocating their own */
const NO_TRACE = Object.freeze([]) as unknown as RuleTrace[]
const NO_OPTIONS: { trace?: boolean } = Object.freeze({})
/**
 * A request's evidence starts with these shared, frozen empty lists; the first credential or failure replaces
 * its list (addCredential, collect), so a request with one credential and no failure allocates one
 * one-element list instead of two empty ones and a push's 17 reserved slots.
 */
const NO_FINGERPRINTS: RequestEvent['fingerprints'] = Object.freeze({})
const NO_CREDENTIALS = Object.freeze([]) as unknown as EvidenceSet['credentials']
const NO_FAILURES = Object.freeze([]) as unknown as EvidenceSet['failures']

function isFailure(x: Evidence | Failure): x is Failure {
  return (x as Failure).failed === true
}

/**
 * Any incoming x-nhi-* header is a spoofing attempt (only this proxy may set them), and so is another spelling
 * of a header the pipeline reads: both in the one pass over the names every request takes.
 */
function hasSpoofedHeader(headers: RequestInfo['headers'], read: ReadHeaders): boolean {
  for (const name in headers) {
    if (isIdentityHeaderName(name) || read.isVariant(name)) return true
  }
  return false
}

/** the fingerprints of one combination of evidence objects, and the longer combinations it starts */
interface FingerprintNode extends EvidenceTrieNode<FingerprintNode> {
  fingerprints?: RequestEvent['fingerprints']
}
const newFingerprintNode = (): FingerprintNode => ({})

/**
 * Reads the files of secrets the config's sources are created with (`PipelineOptions.secretFiles`). Rejects
 * with a message naming the setting and the file when one cannot serve.
 */
export async function readSecretFiles(
  config: Config,
  sources: readonly CredentialSource[] = CREDENTIAL_SOURCES,
): Promise<Map<string, Uint8Array>> {
  const out = new Map<string, Uint8Array>()
  for (const source of sources) {
    for (const file of source.secretFiles?.(config) ?? []) {
      try {
        out.set(file.setting, await file.read(file.path))
      } catch (e) {
        const err = e as NodeJS.ErrnoException
        throw new Error(
          `${file.setting}: ${err.code ? `cannot read ${file.path} (${err.code})` : err.message}`,
        )
      }
    }
  }
  return out
}

export class AttributionPipeline implements Pipeline {
  readonly config: Config
  readonly service: string
  private readonly readers: readonly Reader[]
  private readonly byName: ReadonlyMap<string, Reader>
  private readonly rules: RuleSet
  private readonly policy: Policy
  private readonly routes: { match(path: string): string }
  private readonly anomalies: AnomalyDetector
  private readonly recorder: PipelineOptions['recorder']
  private readonly fingerprintsByEvidence = new WeakMap<object, FingerprintNode>()
  readonly withheldTrailers: ReadonlySet<string>
  readonly failClosed: boolean
  /** every trustedProxies entry, whatever its certificate format: the peers believed about the client's hop */
  private readonly trustedProxies: CidrSet
  /** the headers read under one name (the user agent, the signature headers, those rules name) */
  private readonly readHeaders: ReadHeaders

  constructor(config: Config, opts: PipelineOptions = {}) {
    this.config = config
    this.service = config.service
    this.failClosed = config.policy.mode === 'enforce'
    this.trustedProxies = trustedProxySet(config.forwardedClientCert)
    this.recorder = opts.recorder
    const readers: Reader[] = []
    for (const source of opts.sources ?? CREDENTIAL_SOURCES) {
      const extractor = source.create(config, opts)
      if (extractor) readers.push({ source, extractor })
    }
    this.readers = readers
    this.readHeaders = ReadHeaders.of(
      config,
      readers.flatMap((r) => r.extractor.readHeaders ?? []),
    )
    this.withheldTrailers = new Set([
      ...readers.flatMap((r) => r.extractor.credentialHeaders ?? []).map(normalizeHeaderName),
      ...this.readHeaders.merged,
    ])
    this.byName = new Map(readers.map((r) => [r.source.name, r]))
    this.rules = compileRules(config)
    this.policy = compilePolicy(config.policy)
    this.routes = compileRoutes(config.metrics.routes)
    this.anomalies = new AnomalyDetector(config.anomalies, opts.now, {
      trustedProxies: this.trustedProxies,
      ...(opts.podTokenPeers ? { pod: opts.podTokenPeers } : {}),
    })
  }

  /**
   * Initial fetches (JWKS…), of the named sources only when given. Never throws: an IdP that is down leaves the
   * pipeline not-ready, not dead.
   */
  async start(only?: readonly string[]): Promise<void> {
    await Promise.all(
      this.readers.map((r) =>
        only === undefined || only.includes(r.source.name) ? r.extractor.start?.() : undefined,
      ),
    )
  }

  /** background checks of earlier requests (a crawler's reverse DNS) have answered */
  async settled(): Promise<void> {
    await Promise.all(this.readers.map((r) => r.extractor.settled?.()))
  }

  ready(): boolean {
    return this.readers.every((r) => r.extractor.ready?.() ?? true)
  }

  /** what /readyz shows about the sources (the JWT issuers' key state) */
  readinessDetail(): Record<string, unknown> {
    const out: Record<string, unknown> = {}
    for (const r of this.readers) Object.assign(out, r.extractor.readinessDetail?.())
    return out
  }

  close(): void {
    for (const r of this.readers) r.extractor.close?.()
  }

  attribute: Pipeline['attribute'] = (req, conn) => this.evaluate(req, conn)

  record: Pipeline['record'] = (event) => this.recorder?.record(event)

  trustedProxy(remoteAddress: string): boolean {
    return this.trustedProxies.has(remoteAddress)
  }

  clientAddress(req: RequestInfo, remoteAddress: string): string {
    // most pods have no proxy in front, or a request that did not come through it
    if (!this.trustedProxies.has(remoteAddress)) return remoteAddress
    return requestClient(req, remoteAddress, this.trustedProxies)
  }

  prepareUpstreamHeaders(
    headers: Record<string, string | string[] | undefined>,
    attribution: Attribution,
    conn: ConnectionInfo,
  ): void {
    for (const r of this.readers) r.extractor.prepareUpstreamHeaders?.(headers, attribution.evidence, conn)
    this.readHeaders.prepareUpstreamHeaders(headers)
  }

  /**
   * Runs every source's reader. Synchronous readers (and cached JWT verifications) never await, and when
   * none has to, neither does the caller: the common request is attributed without a promise.
   */
  identify(req: RequestInfo, conn: ConnectionInfo): MaybePromise<EvidenceSet> {
    const evidence: EvidenceSet = { credentials: NO_CREDENTIALS, failures: NO_FAILURES, anomalies: [] }
    const readers = this.readers
    for (let i = 0; i < readers.length; i++) {
      const reader = readers[i]!
      const result = reader.extractor.extract(req, conn)
      if (result instanceof Promise) return this.identifyAsync(req, conn, evidence, i, result)
      if (result !== undefined) collect(evidence, reader.source, result)
    }
    return this.withHeaderAnomalies(evidence, req, conn)
  }

  /** identify() from the first reader that had to wait (a JWT verification not in the cache) */
  private async identifyAsync(
    req: RequestInfo,
    conn: ConnectionInfo,
    evidence: EvidenceSet,
    from: number,
    pending: Promise<Evidence | Failure | undefined>,
  ): Promise<EvidenceSet> {
    const readers = this.readers
    const first = await pending
    if (first !== undefined) collect(evidence, readers[from]!.source, first)
    for (let i = from + 1; i < readers.length; i++) {
      const extracted = readers[i]!.extractor.extract(req, conn)
      // awaiting a reader that answered synchronously would still cost a turn of the microtask queue
      const result = extracted instanceof Promise ? await extracted : extracted
      if (result !== undefined) collect(evidence, readers[i]!.source, result)
    }
    return this.withHeaderAnomalies(evidence, req, conn)
  }

  /**
   * Headers only this proxy, or a source's trusted peer, may set are spoofed otherwise, and so is another
   * spelling of a header a source or an identity rule reads (user_agent, a rule's x_tenant). Names are
   * compared as an upstream framework would merge them (case, "_" for "-"): X_NHI_IDENTITY and
   * x-nhi-identity are the same header to a CGI/WSGI/Rack app.
   */
  private withHeaderAnomalies(evidence: EvidenceSet, req: RequestInfo, conn: ConnectionInfo): EvidenceSet {
    // the one place a claim meets the client address: verified, or an anomaly (unverified_claim)
    for (const r of this.readers) r.extractor.attest?.(evidence, req, conn)
    let spoofed = hasSpoofedHeader(req.headers, this.readHeaders)
    for (let i = 0; !spoofed && i < this.readers.length; i++) {
      spoofed = this.readers[i]!.extractor.spoofedHeaders?.(req, conn) ?? false
    }
    if (spoofed) evidence.anomalies.push('spoofed_header')
    return evidence
  }

  evaluate(
    req: RequestInfo,
    conn: ConnectionInfo,
    opts: { trace?: boolean } = NO_OPTIONS,
  ): MaybePromise<Evaluation> {
    const evidence = this.identify(req, conn)
    if (evidence instanceof Promise) return evidence.then((ev) => this.decide(ev, req, conn, opts))
    return this.decide(evidence, req, conn, opts)
  }

  /** classify → anomalies → route → policy, on the evidence identify() collected */
  private decide(
    evidence: EvidenceSet,
    req: RequestInfo,
    conn: ConnectionInfo,
    opts: { trace?: boolean },
  ): Evaluation {
    const trace: RuleTrace[] = opts.trace ? [] : NO_TRACE
    const identity = this.rules.classify(evidence, req, conn, opts.trace ? trace : undefined)
    addFailureAnomalies(evidence.failures, evidence.anomalies)
    this.anomalies.inspectInto(evidence, identity, conn, evidence.anomalies, req)
    const route = this.routes.match(req.path)
    const decision = this.policy.decide(identity, req)
    const attribution: Evaluation = {
      identity,
      evidence,
      decision,
      route,
      trace,
      fingerprints: this.fingerprints(evidence),
    }
    // indexed loops here: a for-of iterator over the shared frozen empty lists is not optimised away
    const failures = evidence.failures
    for (let i = 0; i < failures.length; i++) {
      const f = failures[i]!
      const reject = this.byName.get(f.source)?.extractor.reject?.(f)
      if (reject) {
        attribution.reject = reject
        return attribution
      }
    }
    if (decision.decision === 'deny') attribution.reject = denyResponse(identity, decision)
    return attribution
  }

  /**
   * The fingerprints of a request with one credential and no failure are those of its evidence object, which a
   * cached credential (a token, a known user agent) shares with every request that presents it: they are
   * computed once per evidence object and shared, frozen.
   */
  private fingerprints(evidence: EvidenceSet): RequestEvent['fingerprints'] {
    if (evidence.failures.length > 0) return this.collectFingerprints(evidence)
    const credentials = evidence.credentials
    if (credentials.length === 0) return NO_FINGERPRINTS
    const node = evidenceNode(this.fingerprintsByEvidence, credentials, newFingerprintNode)
    node.fingerprints ??= Object.freeze(this.collectFingerprints(evidence))
    return node.fingerprints
  }

  /** the presented credentials' fingerprints; a valid credential's wins over a failed one of the same slot */
  private collectFingerprints(evidence: EvidenceSet): RequestEvent['fingerprints'] {
    const out: RequestEvent['fingerprints'] = {}
    const credentials = evidence.credentials
    for (let i = 0; i < credentials.length; i++) {
      const c = credentials[i]!
      const field = c.source.fingerprintField
      if (field === undefined || out[field] !== undefined) continue
      const fp = c.source.fingerprint?.(c.evidence)
      if (fp !== undefined) out[field] = fp
    }
    const failures = evidence.failures
    for (let i = 0; i < failures.length; i++) {
      const f = failures[i]!
      if (!f.fingerprint) continue
      const field = this.byName.get(f.source)?.source.fingerprintField
      if (field !== undefined) out[field] ??= f.fingerprint
    }
    return out
  }
}

function collect(set: EvidenceSet, source: CredentialSource, result: Evidence | Failure): void {
  if (!isFailure(result)) addCredential(set, source, result)
  else if (set.failures.length === 0) set.failures = [result]
  else set.failures.push(result)
}
