// identify → classify → decide for one request. One Engine per loaded config; a reload builds a new one and
// swaps it in between requests, so every request sees exactly one consistent config.
import type { Config } from './config/schema.ts'
import { AnomalyDetector, addFailureAnomalies } from './identity/anomalies.ts'
import { type BotRangesObserver, BotVerifier } from './identity/bots/verify.ts'
import { ApiKeyExtractor } from './identity/extractors/apikey.ts'
import { JwtExtractor } from './identity/extractors/jwt.ts'
import { mtlsExtractor } from './identity/extractors/mtls.ts'
import { useragentExtractor } from './identity/extractors/useragent.ts'
import { XfccExtractor } from './identity/extractors/xfcc.ts'
import { hasForeignForwardedCertHeader } from './identity/forwarded/headers.ts'
import type { JwksObserver } from './identity/jwt/jwks.ts'
import { SignatureVerifier } from './identity/signatures/verifier.ts'
import type { Attribution } from './pipeline.ts'
import { compilePolicy, denyResponse, type Policy } from './policy/policy.ts'
import { compileRules, type RuleSet, type RuleTrace } from './rules/engine.ts'
import { compileRoutes } from './rules/routes.ts'
import type {
  ConnectionInfo,
  Evidence,
  EvidenceSet,
  Extractor,
  Failure,
  MaybePromise,
  RequestInfo,
} from './types.ts'
import { isIdentityHeaderName } from './util/header-names.ts'

export interface Evaluation extends Attribution {
  trace: RuleTrace[]
}

export interface EngineOptions {
  jwksObserver?: JwksObserver
  botRangesObserver?: BotRangesObserver
  now?: () => number
}

/** requests that are not explained share one empty, frozen trace instead of allocating their own */
const NO_TRACE = Object.freeze([]) as unknown as RuleTrace[]
const NO_OPTIONS: { trace?: boolean } = Object.freeze({})

const INVALID_TOKEN_HEADERS = Object.freeze({
  'content-type': 'application/json',
  'www-authenticate': 'Bearer error="invalid_token"',
})

function isFailure(x: Evidence | Failure): x is Failure {
  return (x as Failure).failed === true
}

/** Any incoming x-nhi-* header is a spoofing attempt: only this proxy may set them. */
function hasSpoofedIdentityHeader(headers: RequestInfo['headers']): boolean {
  for (const name in headers) {
    if (isIdentityHeaderName(name)) return true
  }
  return false
}

export class Engine {
  readonly config: Config
  readonly jwt: JwtExtractor
  readonly xfcc: XfccExtractor
  /** signed agents (Web Bot Auth); a key directory counts as a key set in the nhi_jwks_* families */
  readonly signatures: SignatureVerifier
  readonly bots: BotVerifier
  private readonly extractors: readonly Extractor[]
  private readonly rules: RuleSet
  private readonly policy: Policy
  private readonly routes: { match(path: string): string }
  private readonly anomalies: AnomalyDetector

  constructor(config: Config, opts: EngineOptions = {}) {
    this.config = config
    this.jwt = new JwtExtractor(config.jwt, { observer: opts.jwksObserver, now: opts.now })
    this.xfcc = new XfccExtractor(config.forwardedClientCert)
    this.signatures = new SignatureVerifier(config.signedAgents, {
      observer: opts.jwksObserver,
      now: opts.now,
    })
    this.bots = new BotVerifier(config.bots.verify, config.forwardedClientCert, {
      observer: opts.botRangesObserver,
    })
    // Order is irrelevant for precedence (the rules engine applies docs/reference.md "Identity model" precedence); cheap ones first.
    // Without configured issuers a bearer token is the service's own business (opaque tokens, sessions):
    // there is nothing to verify it against, so it is neither evidence nor an auth failure.
    this.extractors = [
      mtlsExtractor,
      this.xfcc,
      new ApiKeyExtractor(config.apiKeys),
      useragentExtractor,
      ...(config.jwt.issuers.length > 0 ? [this.jwt] : []),
      // like tokens without issuers: without configured directories a signature is the service's business
      ...(config.signedAgents.directories.length > 0 ? [this.signatures] : []),
    ]
    this.rules = compileRules(config)
    this.policy = compilePolicy(config.policy)
    this.routes = compileRoutes(config.metrics.routes)
    this.anomalies = new AnomalyDetector(config.anomalies, opts.now)
  }

  /**
   * Initial JWKS, crawler-range and key-directory fetches. Never throws: an IdP that is down leaves the engine
   * not-ready, not dead; a range file that cannot be fetched leaves the shipped snapshot serving; a key
   * directory that is down leaves its signatures keys_unavailable.
   */
  start(): Promise<void> {
    return Promise.all([this.jwt.start(), this.bots.start(), this.signatures.start()]).then(() => {})
  }

  ready(): boolean {
    return this.jwt.ready()
  }

  close(): void {
    this.jwt.close()
    this.bots.close()
    this.signatures.close()
  }

  /**
   * Runs every extractor. Synchronous extractors (and cached JWT verifications) never await, and when none
   * has to, neither does the caller: the common request is attributed without a promise.
   */
  identify(req: RequestInfo, conn: ConnectionInfo): MaybePromise<EvidenceSet> {
    const evidence: EvidenceSet = { failures: [], anomalies: [] }
    const extractors = this.extractors
    for (let i = 0; i < extractors.length; i++) {
      const result = extractors[i]!.extract(req, conn)
      if (result instanceof Promise) return this.identifyAsync(req, conn, evidence, i, result)
      if (result !== undefined) collect(evidence, result)
    }
    return this.withHeaderAnomalies(evidence, req, conn)
  }

  /** identify() from the first extractor that had to wait (a JWT verification not in the cache) */
  private async identifyAsync(
    req: RequestInfo,
    conn: ConnectionInfo,
    evidence: EvidenceSet,
    from: number,
    pending: Promise<Evidence | Failure | undefined>,
  ): Promise<EvidenceSet> {
    const first = await pending
    if (first !== undefined) collect(evidence, first)
    const extractors = this.extractors
    for (let i = from + 1; i < extractors.length; i++) {
      const result = await extractors[i]!.extract(req, conn)
      if (result !== undefined) collect(evidence, result)
    }
    return this.withHeaderAnomalies(evidence, req, conn)
  }

  /**
   * Headers only this proxy, or the one format of the trusted front proxy, may set are spoofed otherwise.
   * Names are compared as an upstream framework would merge them (case, "_" for "-"): X_NHI_IDENTITY and
   * x-nhi-identity are the same header to a CGI/WSGI/Rack app.
   */
  private withHeaderAnomalies(evidence: EvidenceSet, req: RequestInfo, conn: ConnectionInfo): EvidenceSet {
    // the one place a crawler claim meets the client address: verified, or an unverified_claim anomaly
    this.bots.attest(evidence, req, conn)
    if (
      hasSpoofedIdentityHeader(req.headers) ||
      hasForeignForwardedCertHeader(req.headers, () => this.xfcc.formatFor(conn.remoteAddress))
    ) {
      evidence.anomalies.push('spoofed_header')
    }
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
    this.anomalies.inspectInto(evidence, identity, conn, evidence.anomalies)
    const route = this.routes.match(req.path)
    const decision = this.policy.decide(identity, req)
    const attribution: Evaluation = { identity, evidence, decision, route, trace }
    const jwtFailure = evidence.failures.find((f) => f.source === 'jwt')
    if (jwtFailure && this.config.jwt.onInvalid === 'reject') {
      attribution.reject = {
        status: 401,
        body: JSON.stringify({ error: 'invalid_token', reason: jwtFailure.reason }),
        headers: INVALID_TOKEN_HEADERS,
      }
    } else if (decision.decision === 'deny') {
      attribution.reject = denyResponse(identity, decision)
    }
    return attribution
  }
}

function collect(set: EvidenceSet, result: Evidence | Failure): void {
  if (isFailure(result)) set.failures.push(result)
  else addEvidence(set, result)
}

function addEvidence(set: EvidenceSet, ev: Evidence): void {
  switch (ev.source) {
    case 'jwt':
      set.jwt = ev
      break
    case 'mtls':
      set.mtls = ev
      break
    case 'xfcc':
      set.xfcc = ev
      break
    case 'apikey':
      set.apikey = ev
      break
    case 'signature':
      set.signature = ev
      break
    case 'useragent':
      set.useragent = ev
      break
  }
}
