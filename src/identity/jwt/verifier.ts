// Verifies a token for one configured issuer: algorithm allowlist, audiences, clock skew, and keys from its
// IssuerKeySet, with one refetch when the token names a kid we have not seen (key rotation) or its signature
// fails under a kid we have or without a kid (an IdP that re-keyed under the same kid, or names no kid), and
// one re-read of the secret file when an HMAC signature fails (a rotated secret).
import { decodeJwt, decodeProtectedHeader, errors, type JWTPayload } from 'jose'
import type { IssuerConfig } from '../../config/schema.ts'
import { ASYMMETRIC_ALGORITHMS, HMAC_ALGORITHMS, type JwtEvidence } from '../../types.ts'
import { type FailureCause, failureCause } from './errors.ts'
import { IssuerKeySet, type KeySetOptions, keysNamed, type PublicKeys } from './jwks.ts'
import { type JwtCheckOptions, verifyJwtWithKeySet } from './jws.ts'
import { POOL_BUSY, type VerifyPool, WORKER_GONE, type WorkerReply } from './pool.ts'
import type { UnverifiedToken } from './token.ts'

export interface VerifierOptions extends KeySetOptions {
  clockSkewMs: number
  /** worker threads for asymmetric signatures; without one (or while it cannot run) verification is inline */
  pool?: VerifyPool
}

/** the pool refused the job (its queue for this peer, or all peers, is full), at once or after it waited */
const BUSY: FailureCause = {
  reason: 'verification_busy',
  detail: 'too many new tokens are waiting for verification',
}
class PoolBusy extends Error {}

// jose's error classes by their code, to raise in the main thread what a worker's verifyJwt raised there,
// so that failure causes and the unknown-kid refetch see the same errors either way (the worker runs the
// multiple-key loop itself)
const JOSE_ERRORS = new Map<string, new (...args: never[]) => Error>()
for (const cls of Object.values(errors) as unknown as { code?: unknown }[]) {
  if (typeof cls.code === 'string')
    JOSE_ERRORS.set(cls.code, cls as unknown as new (...args: never[]) => Error)
}

function joseError(code: string, claim: string | undefined): Error {
  const cls = JOSE_ERRORS.get(code) as
    | (new (
        message: string,
        payload: object,
        claim: string,
      ) => Error)
    | undefined
  if (!cls) return new Error('verification failed')
  return new cls('verification failed in a worker', {}, claim ?? 'unspecified')
}

/** Allowed algorithms: the configured list (default: every asymmetric one); HS* only with a secretFile; never none. */
export function allowedAlgorithms(cfg: IssuerConfig): string[] {
  const hmac: readonly string[] = HMAC_ALGORITHMS
  const configured: readonly string[] = cfg.algorithms ?? [
    ...ASYMMETRIC_ALGORITHMS,
    ...(cfg.secretFile ? HMAC_ALGORITHMS : []),
  ]
  return configured.filter((alg) => (hmac.includes(alg) ? Boolean(cfg.secretFile) : alg !== 'none'))
}

/** what a failed signature may be verified with once the issuer's keys are fetched again */
type Refetch = NonNullable<FailureCause['refetch']>

type Verified = {
  payload: JWTPayload
  protectedHeader: { alg: string; kid?: string | undefined }
}

function isHmac(alg: unknown): boolean {
  return typeof alg === 'string' && alg.startsWith('HS')
}

function headerAlg(token: string, peeked: UnverifiedToken | undefined): unknown {
  if (peeked) return peeked.header['alg']
  try {
    return decodeProtectedHeader(token).alg
  } catch {
    return undefined
  }
}

function headerKid(token: string, peeked: UnverifiedToken | undefined): string | undefined {
  let kid: unknown
  if (peeked) kid = peeked.header['kid']
  else {
    try {
      kid = decodeProtectedHeader(token).kid
    } catch {
      return undefined
    }
  }
  return typeof kid === 'string' ? kid : undefined
}

/**
 * Whether a failed verification is a bad signature that other keys of the issuer could verify: under the
 * HMAC secret (a rotated secret file), or under the key set without a kid or under a kid the verification
 * held (an IdP that re-keyed; a kid it did not hold fails as an unknown kid instead).
 */
function refetchFor(
  err: unknown,
  token: string,
  peeked: UnverifiedToken | undefined,
  held: PublicKeys | undefined,
): Refetch | undefined {
  if (
    !(err instanceof errors.JWSSignatureVerificationFailed || err instanceof errors.JWKSMultipleMatchingKeys)
  )
    return undefined
  if (isHmac(headerAlg(token, peeked))) return 'secret'
  if (held === undefined) return undefined
  const kid = headerKid(token, peeked)
  return kid === undefined || held.kids.has(kid) ? 'keys' : undefined
}

export class IssuerVerifier {
  readonly issuer: string
  readonly keys: IssuerKeySet
  private readonly profile: string | undefined
  private readonly algorithms: ReadonlySet<string>
  /** jwtVerify's checks for this issuer, less the clock (verifyJwt, here and in the workers) */
  private readonly checks: Omit<JwtCheckOptions, 'now'>
  private readonly algorithmList: string[]
  private readonly now: () => number
  private readonly pool: VerifyPool | undefined
  /** the last answer of brought(): every token that failed before one refetch asks about the same two sets */
  private compared: { held: PublicKeys; current: PublicKeys; brought: boolean } | undefined

  constructor(cfg: IssuerConfig, opts: VerifierOptions) {
    this.issuer = cfg.issuer
    this.pool = opts.pool
    this.profile = cfg.profile
    this.keys = new IssuerKeySet(cfg, opts)
    this.now = opts.now ?? Date.now
    const algorithms = allowedAlgorithms(cfg)
    this.algorithms = new Set(algorithms)
    this.algorithmList = algorithms
    this.checks = {
      issuer: cfg.issuer,
      algorithms: this.algorithms,
      clockTolerance: opts.clockSkewMs / 1000,
      // The audience check is on unless the issuer says `audiences: any`; a config that names no audience
      // (only possible without the loader, which refuses it) accepts no token at all (wrong_audience).
      audience: cfg.audiences === 'any' ? undefined : (cfg.audiences ?? []),
    }
  }

  allows(alg: unknown): boolean {
    return typeof alg === 'string' && this.algorithms.has(alg)
  }

  /**
   * Never throws: a verified token becomes evidence, anything else a failure cause. `peer` (the client
   * address) is the unit of fairness in the worker pool's queue. `peeked` is the caller's decoding of the
   * same bytes (peekToken): a new token's header and payload are then decoded once on the main thread, not
   * three times, which is most of what a miss costs here besides the hand-off to a worker.
   */
  async verify(
    token: string,
    fingerprint: string,
    peer = '',
    peeked?: UnverifiedToken,
  ): Promise<JwtEvidence | FailureCause> {
    let refetch: Refetch | undefined
    try {
      let verified: Verified
      // the keys the verification runs with: a failure is retried only with other keys than these
      const held = this.keys.publicKeys
      const heldSecret = this.keys.secretVersion
      try {
        verified = await this.verifyOnce(token, peer, peeked)
      } catch (err) {
        if (err instanceof errors.JWKSNoMatchingKey) {
          const refetched = this.keys.refreshOnDemand()
          if (!refetched || !(await refetched)) throw err
        } else {
          refetch = refetchFor(err, token, peeked, held)
          if (refetch === undefined || !(await this.keysChanged(refetch, token, peeked, held, heldSecret)))
            throw err
        }
        verified = await this.verifyOnce(token, peer, peeked)
      }
      const { payload, protectedHeader } = verified
      const evidence: JwtEvidence = {
        source: 'jwt',
        verified: true,
        issuer: this.issuer,
        claims: payload,
        alg: protectedHeader.alg,
        fingerprint,
      }
      if (this.profile) evidence.profile = this.profile
      if (typeof protectedHeader.kid === 'string') evidence.kid = protectedHeader.kid
      if (typeof payload.exp === 'number') evidence.exp = payload.exp
      return evidence
    } catch (err) {
      if (err instanceof PoolBusy) return BUSY
      // no key because none was ever fetched (IdP unreachable since start), not because the kid is unknown
      if (err instanceof errors.JWKSNoMatchingKey && !this.keys.hasKeysFor(headerAlg(token, peeked))) {
        return { reason: 'keys_unavailable', detail: "the issuer's keys have not been fetched yet" }
      }
      const cause = failureCause(err)
      if (refetch !== undefined && cause.reason === 'bad_signature') cause.refetch = refetch
      return cause
    }
  }

  /**
   * After a bad signature that a change of keys could verify (refetchFor): whether the issuer's keys may now
   * verify the token, after one refetch of the key set or re-read of the secret file (each rate limited by
   * the key set: a flood of forged signatures makes at most one per cooldown). Worth verifying again only
   * when the keys the signature could be checked with are no longer those the verification used (a refetch
   * that brought the same keys, or none allowed, leaves a forged signature as it was): the secret; the keys
   * under the token's kid; for a token without kid, any key the held set did not have.
   */
  private async keysChanged(
    refetch: Refetch,
    token: string,
    peeked: UnverifiedToken | undefined,
    held: PublicKeys | undefined,
    heldSecret: number,
  ): Promise<boolean> {
    if (refetch === 'secret') {
      const reread = this.keys.rereadSecretOnDemand()
      if (reread) await reread
      return this.keys.secretVersion !== heldSecret
    }
    const refetched = this.keys.refreshOnDemand()
    if (refetched) await refetched
    // no refetch allowed and none landed meanwhile: the cheap answer a flood of forged signatures gets
    const current = this.keys.publicKeys
    if (current === undefined || held === undefined || current === held) return false
    const kid = headerKid(token, peeked)
    if (kid === undefined) return this.brought(held, current)
    const after = keysNamed(current, kid)
    return after !== undefined && after !== keysNamed(held, kid)
  }

  /**
   * Whether `current` has a key `held` had not, which a token without kid may have been signed with. Every
   * token that failed before a refetch asks this of the same two sets: answered once per refetch.
   */
  private brought(held: PublicKeys, current: PublicKeys): boolean {
    const last = this.compared
    if (last?.held === held && last.current === current) return last.brought
    const before = new Set(held.jwks.map((k) => JSON.stringify(k)))
    const brought = current.jwks.some((k) => !before.has(JSON.stringify(k)))
    this.compared = { held, current, brought }
    return brought
  }

  private async verifyOnce(token: string, peer: string, peeked?: UnverifiedToken): Promise<Verified> {
    const now = this.now()
    const keys = this.keys.publicKeys
    // HMAC is cheap and its secret never leaves the main thread. No key set yet, or a kid the key set does
    // not have, fails without any signature work: inline, so the unknown-kid refetch runs as it always did.
    if (this.pool?.usable && keys && this.forPool(token, keys, peeked)) {
      const reply = this.pool.verify(
        {
          token,
          issuer: this.issuer,
          algorithms: this.algorithmList,
          audience: this.checks.audience as string[] | undefined,
          clockTolerance: this.checks.clockTolerance,
          now,
        },
        keys,
        peer,
      )
      if (!reply) throw new PoolBusy()
      const r: WorkerReply = await reply
      // the worker verified these exact bytes: their payload is the one verifyJwt would return
      if ('header' in r)
        return {
          payload: (peeked?.claims as JWTPayload | undefined) ?? decodeJwt(token),
          protectedHeader: r.header,
        }
      if (r.code === POOL_BUSY) throw new PoolBusy()
      if (r.code !== WORKER_GONE && JOSE_ERRORS.has(r.code)) throw joseError(r.code, r.claim)
      // the worker is gone or did not hold these keys: verify here, as without a pool
    }
    return this.verifyInline(token, now)
  }

  private forPool(token: string, keys: PublicKeys, peeked: UnverifiedToken | undefined): boolean {
    let header: { alg?: unknown; kid?: unknown }
    if (peeked) header = peeked.header
    else {
      try {
        header = decodeProtectedHeader(token)
      } catch {
        return false
      }
    }
    return !isHmac(header.alg) && (typeof header.kid !== 'string' || keys.kids.has(header.kid))
  }

  private verifyInline(token: string, now: number): Promise<Verified> {
    return verifyJwtWithKeySet(token, this.keys.getKey, { ...this.checks, now })
  }
}
