// Verifies a token for one configured issuer: algorithm allowlist, audiences, clock skew, and keys from its
// IssuerKeySet, with one refetch when the token names a kid we have not seen (key rotation) or its signature
// fails under a kid we have (an IdP that re-keyed under the same kid).
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
    try {
      let verified: Verified
      // the keys the verification runs with: a failure is retried only with other keys than these
      const held = this.keys.publicKeys
      try {
        verified = await this.verifyOnce(token, peer, peeked)
      } catch (err) {
        if (!(await this.keysChanged(err, token, peeked, held))) throw err
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
      return failureCause(err)
    }
  }

  /**
   * After a failed verification: whether the issuer's keys may now verify the token, after one refetch
   * (rate limited by the key set: a flood of random kids or forged signatures makes at most one per cooldown).
   * A kid the key set does not have: the issuer may have rotated to a new kid. A signature that fails under a
   * kid it has: the issuer may have put a new key under the same kid; worth verifying again only when the
   * keys under that kid are no longer those the verification used (a refetch that brought the same key, or
   * none allowed, leaves a forged signature as it was).
   */
  private async keysChanged(
    err: unknown,
    token: string,
    peeked: UnverifiedToken | undefined,
    held: PublicKeys | undefined,
  ): Promise<boolean> {
    if (err instanceof errors.JWKSNoMatchingKey) {
      const refetch = this.keys.refreshOnDemand()
      return refetch !== undefined && (await refetch)
    }
    if (
      !(
        err instanceof errors.JWSSignatureVerificationFailed || err instanceof errors.JWKSMultipleMatchingKeys
      )
    )
      return false
    const kid = headerKid(token, peeked)
    if (kid === undefined || !held?.kids.has(kid) || isHmac(headerAlg(token, peeked))) return false
    const refetch = this.keys.refreshOnDemand()
    if (refetch) await refetch
    // no refetch allowed and none landed meanwhile: the cheap answer a flood of forged signatures gets
    const current = this.keys.publicKeys
    if (current === held) return false
    const after = keysNamed(current, kid)
    return after !== undefined && after !== keysNamed(held, kid)
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
