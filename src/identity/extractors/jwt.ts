// Authorization: Bearer <JWT> → verified JwtEvidence, or a typed Failure. Results are cached by token hash so the
// hot path (a token seen before) is one sha256 and one LRU lookup, answered synchronously.
import { LRUCache } from 'lru-cache'
import type { Config } from '../../config/schema.ts'
import type {
  ConnectionInfo,
  Failure,
  FailureReason,
  JwtEvidence,
  MaybePromise,
  RequestInfo,
} from '../../types.ts'
import type { CidrSet } from '../../util/cidr.ts'
import { sha256Hex } from '../../util/fingerprint.ts'
import { lruGet } from '../../util/lru-get.ts'
import { SecondSight } from '../../util/second-sight.ts'
import { requestClient } from '../client-address.ts'
import type { IssuerKeySet, JwksObserver, KeyMemory, WithdrawnKeys } from '../jwt/jwks.ts'
import { defaultVerifyWorkers, VerifyPool, type VerifyPoolStats } from '../jwt/pool.ts'
import { bearerToken, peekToken, safeAttributes, tokenCandidate, type UnverifiedToken } from '../jwt/token.ts'
import { IssuerVerifier } from '../jwt/verifier.ts'
import type { SourceExtractor } from '../sources/source.ts'

export interface JwtExtractorOptions {
  observer?: JwksObserver
  /** the issuers' last good keys across reloads (KeyMemory) */
  memory?: KeyMemory
  /** unix ms clock (tests) */
  now?: () => number
  /** [0, 1) source for spreading cache lifetimes (tests) */
  random?: () => number
  fetchTimeoutMs?: number
  unknownKidCooldownMs?: number
  retryMs?: number
  /**
   * forwardedClientCert.trustedProxies: new tokens from behind one of them wait in the queue of the client
   * address it appended to X-Forwarded-For, not all in the proxy's one queue
   */
  trustedProxies?: CidrSet
}

type Result = JwtEvidence | Failure

/** a verification's result and, for a failure, the key set it was found with (its generation before) */
interface Checked {
  result: Result
  keys?: IssuerKeySet
  generation?: number
  /** keys.withdrawals before verifying */
  withdrawals?: number
  /** unix ms from which a not_yet_valid token verifies (nbf less the clock skew) */
  validFrom?: number
  /**
   * a bad signature a later refetch may verify (a new key under the token's kid or, without a kid, any new
   * key of an IdP that re-keyed; a rotated secret file): the failure holds only as long as the token could not
   * make the key set be refetched (`keys`) or the secret file be read again (`secret`)
   */
  refetch?: 'keys' | 'secret'
}

interface CachedFailure {
  failure: Failure
  /** set for key-dependent reasons: the entry holds while keys.generation is unchanged */
  keys: IssuerKeySet | undefined
  generation: number
}

export interface IssuerKeyState {
  issuer: string
  ready: boolean
  keys: number
  lastError?: string
  /** signing keys of the key set in use that were left out because they cannot verify a signature */
  unusableKeys?: number
}

/** a cached verification is redone at least this often (a key may have been withdrawn; tokens without exp) */
const MAX_CACHE_MS = 5 * 60_000
/**
 * Lifetimes are spread over the last minute before MAX_CACHE_MS: tokens first seen together (a warm-up, a
 * restart behind busy clients) would otherwise all be re-verified in the same second, a burst of RSA work
 * that stalled every request for tens of milliseconds.
 */
const CACHE_SPREAD_MS = 60_000
/** failures that say nothing for sure about the token are cached briefly, so a flood of one bad token stays cheap */
const FAILURE_CACHE_MS = 5_000
/**
 * A bad signature stays bad until the issuer's keys change (a reload invalidates the entry); the lifetime only
 * bounds how long a wrong answer could live if the keys changed without a reload being seen. One that other
 * keys could verify (a new key, a rotated secret) is kept no longer than the token could not make the keys be
 * refetched, or the secret file be read again (ttlFor).
 */
const BAD_SIGNATURE_CACHE_MS = 60_000
/** bound on cached failures (at most jwt.cacheSize) */
const MAX_FAILURES_CACHED = 4_096
const FINGERPRINT_CHARS = 16
/** bound on concurrent first-time verifications that share one promise */
const MAX_INFLIGHT = 10_000
/**
 * New tokens waiting for a verification worker, all clients together and per client address. Past either the
 * request is attributed as a failed verification (verification_busy, not cached) rather than queued: at
 * ≈ 0.2 ms per RS256 verification, 256 waiting jobs are ≈ 50 ms of one worker's time. The pool lets a client
 * with fewer waiting into a full queue in place of the one with the most (pool.ts).
 */
const MAX_POOL_QUEUE = 1024
const MAX_POOL_QUEUE_PER_PEER = 256
/** failures that say nothing about the token itself: verify it again next time */
const NOT_CACHED: ReadonlySet<FailureReason> = new Set(['keys_unavailable', 'verification_busy'])
/** failures that hold only for the key set they were found with: a key-set reload drops them */
const KEY_DEPENDENT: ReadonlySet<FailureReason> = new Set(['unknown_kid', 'bad_signature'])
const EMBEDDED_KEY_HEADERS = ['jku', 'x5u', 'jwk', 'x5c'] as const

export class JwtExtractor implements SourceExtractor<JwtEvidence> {
  readonly source = 'jwt' as const
  private readonly verifiers = new Map<string, IssuerVerifier>()
  private readonly cache: LRUCache<string, Result>
  /** failed tokens by hash, apart from the verified ones: a flood of bad tokens cannot evict good entries */
  private readonly failures: LRUCache<string, CachedFailure>
  /** hashes of tokens seen once, not cached yet (either answer) */
  private readonly admission: SecondSight
  private readonly inflight = new Map<string, Promise<Result>>()
  private readonly pool: VerifyPool
  private readonly now: () => number
  private readonly random: () => number
  private readonly clockSkewMs: number
  private readonly trustedProxies: CidrSet | undefined

  constructor(cfg: Config['jwt'], opts: JwtExtractorOptions = {}) {
    this.now = opts.now ?? Date.now
    this.clockSkewMs = cfg.clockSkew
    this.trustedProxies = opts.trustedProxies?.size ? opts.trustedProxies : undefined
    this.random = opts.random ?? Math.random
    const clock = this.now
    this.pool = new VerifyPool({
      size: cfg.verifyWorkers ?? defaultVerifyWorkers(),
      maxQueue: MAX_POOL_QUEUE,
      maxQueuePerPeer: MAX_POOL_QUEUE_PER_PEER,
    })
    for (const issuer of cfg.issuers) {
      this.verifiers.set(
        issuer.issuer,
        new IssuerVerifier(issuer, {
          unknownKidCooldownMs: cfg.unknownKidCooldown,
          ...opts,
          clockSkewMs: cfg.clockSkew,
          pool: this.pool,
          onWithdrawn: (withdrawn) => this.forgetWithdrawn(issuer.issuer, withdrawn),
        }),
      )
    }
    this.cache = new LRUCache<string, Result>({ max: cfg.cacheSize, perf: { now: clock }, ttlResolution: 0 })
    this.failures = new LRUCache<string, CachedFailure>({
      max: Math.min(cfg.cacheSize, MAX_FAILURES_CACHED),
      perf: { now: clock },
      ttlResolution: 0,
    })
    this.admission = new SecondSight(cfg.cacheSize)
  }

  /** Initial key fetch for every issuer. Never throws; an unreachable IdP just leaves ready() false. */
  async start(): Promise<void> {
    await Promise.all([...this.verifiers.values()].map((v) => v.keys.start()))
  }

  /** every configured issuer has had keys at least once (for /readyz) */
  ready(): boolean {
    for (const v of this.verifiers.values()) if (!v.keys.ready()) return false
    return true
  }

  /** per-issuer key state, for diagnostics (/readyz detail) */
  issuers(): IssuerKeyState[] {
    return [...this.verifiers.values()].map((v) => ({
      issuer: v.issuer,
      ready: v.keys.ready(),
      keys: v.keys.size,
      ...(v.keys.lastError ? { lastError: v.keys.lastError } : {}),
      ...(v.keys.unusableKeys > 0 ? { unusableKeys: v.keys.unusableKeys } : {}),
    }))
  }

  /** the verification workers' load, for diagnostics (/readyz detail) */
  verifyPool(): VerifyPoolStats {
    return this.pool.stats()
  }

  close(): void {
    this.pool.close()
    for (const v of this.verifiers.values()) v.keys.close()
    this.cache.clear()
    this.failures.clear()
    this.admission.clear()
    this.inflight.clear()
  }

  extract(req: RequestInfo, conn: ConnectionInfo): MaybePromise<Result | undefined> {
    const auth = req.headers.authorization
    if (typeof auth !== 'string') return undefined
    // Only tokens that passed the Authorization grammar are ever cached, so a hit on the bytes after
    // "Bearer " proves they passed it: the common request skips the grammar's scans of an 800-byte token.
    const candidate = tokenCandidate(auth)
    const seen = candidate === undefined ? undefined : sha256Hex(candidate)
    if (seen !== undefined) {
      const cached = lruGet(this.cache, seen) ?? this.failed(seen)
      if (cached) return cached
    }
    const bearer = bearerToken(auth)
    if (!bearer) return undefined
    if ('malformed' in bearer) return failure('malformed', bearer.malformed)
    const token = bearer.token
    // a well-formed header's token is exactly the bytes after "Bearer ", already hashed above
    const hash = seen ?? sha256Hex(token)
    const failed = seen === undefined ? this.failed(hash) : undefined
    if (failed) return failed
    const pending = this.inflight.get(hash)
    if (pending) return pending
    // a token's answer is kept from its second request on (util/second-sight.ts): tokens that are never sent
    // again, a flood of them or one per request, stay out of both caches
    const keep = this.admission.seen(hash)
    const peer =
      this.trustedProxies === undefined
        ? conn.remoteAddress
        : requestClient(req, conn.remoteAddress, this.trustedProxies)
    const verification = this.verify(token, hash.slice(0, FINGERPRINT_CHARS), peer).then((checked) => {
      this.inflight.delete(hash)
      const result = checked.result
      // verified with keys a reload has withdrawn since: the answer stands for this request only
      const stale = checked.keys !== undefined && checked.keys.withdrawals !== checked.withdrawals
      const ttl = keep && !stale ? this.ttlFor(checked) : 0
      if (ttl > 0) {
        if ('failed' in result) {
          const dependent = KEY_DEPENDENT.has(result.reason as FailureReason) ? checked.keys : undefined
          this.failures.set(
            hash,
            { failure: result, keys: dependent, generation: checked.generation ?? 0 },
            { ttl },
          )
        } else this.cache.set(hash, result, { ttl })
      }
      return result
    })
    if (this.inflight.size < MAX_INFLIGHT) this.inflight.set(hash, verification)
    return verification
  }

  /**
   * The issuer no longer publishes some keys (retired, or compromised): the tokens verified with them must not
   * go on verifying from the cache while a new token signed with the same key is refused. Keys are withdrawn
   * seldom, so the cache is walked then rather than checked on every hit.
   */
  private forgetWithdrawn(issuer: string, withdrawn: WithdrawnKeys): void {
    const forget: string[] = []
    this.cache.forEach((result, hash) => {
      if ('failed' in result || result.issuer !== issuer) return
      const gone = result.alg.startsWith('HS')
        ? withdrawn.secret
        : result.kid === undefined
          ? withdrawn.anyKey
          : withdrawn.kids.has(result.kid)
      if (gone) forget.push(hash)
    })
    for (const hash of forget) this.cache.delete(hash)
  }

  /** a cached failure, unless the key set it was found with has been reloaded since */
  private failed(hash: string): Failure | undefined {
    const entry = this.failures.get(hash)
    if (!entry) return undefined
    if (entry.keys && entry.keys.generation !== entry.generation) {
      this.failures.delete(hash)
      return undefined
    }
    return entry.failure
  }

  /** never rejects: client input must never surface as an exception */
  private verify(token: string, fp: string, peer: string): Promise<Checked> {
    return this.check(token, fp, peer).catch(() => ({
      result: failure('malformed', 'token could not be processed', fp),
    }))
  }

  private async check(token: string, fp: string, peer: string): Promise<Checked> {
    const peeked = peekToken(token)
    if (typeof peeked === 'string') return { result: failure('malformed', peeked, fp) }
    const fail = (reason: FailureReason, detail: string) => ({ result: failure(reason, detail, fp, peeked) })
    const { header, claims } = peeked
    if (typeof header['alg'] !== 'string' || header['alg'].toLowerCase() === 'none') {
      return fail('alg_not_allowed', 'unsigned token (alg none) is never accepted')
    }
    // keys named or carried by the token itself are attacker-controlled: refuse rather than ignore
    if (EMBEDDED_KEY_HEADERS.some((h) => h in header)) {
      return fail('bad_signature', 'token header carries its own key reference (jku/x5u/jwk/x5c)')
    }
    if ('crit' in header) return fail('malformed', 'critical header extensions are not supported')
    if ('kid' in header && typeof header['kid'] !== 'string') return fail('malformed', 'kid is not a string')
    const iss = claims['iss']
    const verifier = typeof iss === 'string' ? this.verifiers.get(iss) : undefined
    if (!verifier)
      return fail('wrong_issuer', typeof iss === 'string' ? 'issuer not configured' : 'no iss claim')
    if (!verifier.allows(header['alg']))
      return fail('alg_not_allowed', 'algorithm not allowed for this issuer')
    // taken before verifying: a reload during the verification must invalidate what it finds
    const keys = verifier.keys
    const generation = keys.generation
    const withdrawals = keys.withdrawals
    const result = await verifier.verify(token, fp, peer, peeked)
    const checked: Checked = {
      result: 'source' in result ? result : fail(result.reason, result.detail).result,
      keys,
      generation,
      withdrawals,
    }
    const nbf = claims['nbf']
    if (!('source' in result) && result.reason === 'not_yet_valid' && typeof nbf === 'number')
      checked.validFrom = nbf * 1000 - this.clockSkewMs
    if (!('source' in result) && result.refetch !== undefined) checked.refetch = result.refetch
    return checked
  }

  /**
   * Cache lifetime in ms. Verified: never past exp, 4–5 min at most. Failed: an expired token stays expired
   * (as long as a verified one is kept); an unknown kid, and a bad signature other keys of the issuer could
   * verify (at most 1 min), for as long as it could not make the issuer's keys be refetched (or its secret
   * file be read again) anyway; any other bad signature 1 min (both reasons also dropped by a key-set reload,
   * see failed()); other failures 5 s; failures that say nothing about the token (no keys yet, queue full)
   * not at all.
   */
  private ttlFor(checked: Checked): number {
    const result = checked.result
    if ('failed' in result) {
      const reason = result.reason as FailureReason
      if (NOT_CACHED.has(reason)) return 0
      if (reason === 'expired') return MAX_CACHE_MS
      if (reason === 'bad_signature') {
        if (!checked.keys || checked.refetch === undefined) return BAD_SIGNATURE_CACHE_MS
        const blocked =
          checked.refetch === 'secret'
            ? checked.keys.secretRereadBlockedForMs()
            : checked.keys.onDemandBlockedForMs()
        return Math.min(holdingFor(blocked), BAD_SIGNATURE_CACHE_MS)
      }
      // never at the moment the token becomes valid
      if (reason === 'not_yet_valid' && checked.validFrom !== undefined)
        return Math.min(FAILURE_CACHE_MS, holdingFor(checked.validFrom - this.now()))
      if (reason === 'unknown_kid')
        return checked.keys ? Math.min(holdingFor(checked.keys.onDemandBlockedForMs()), MAX_CACHE_MS) : 0
      return FAILURE_CACHE_MS
    }
    const cap = MAX_CACHE_MS - Math.floor(this.random() * CACHE_SPREAD_MS)
    if (result.exp === undefined) return cap
    // never at exp, when a token has expired unless there is clock skew
    return Math.min(holdingFor(result.exp * 1000 - this.now()), cap)
  }
}

/**
 * The cache lifetime of an answer that holds for the next `ms` and no longer. lru-cache still answers an entry
 * at the millisecond its lifetime runs out (it is stale only past it), the very one at which such an answer
 * stops holding (a token not valid yet verifies at nbf less the skew; without skew a token has expired at exp;
 * a refetch of the keys is allowed once the cooldown is over): the lifetime ends a millisecond before it.
 */
function holdingFor(ms: number): number {
  return ms - 1
}

function failure(
  reason: FailureReason,
  detail: string,
  fingerprint?: string,
  token?: UnverifiedToken,
): Failure {
  const f: Failure = { failed: true, source: 'jwt', reason, detail }
  if (fingerprint) f.fingerprint = fingerprint
  const attributes = safeAttributes(token)
  if (attributes) f.attributes = attributes
  return f
}
