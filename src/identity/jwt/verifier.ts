// Verifies a token for one configured issuer: algorithm allowlist, audiences, clock skew, and keys from its
// IssuerKeySet, with one refetch when the token names a kid we have not seen (key rotation).
import {
  decodeProtectedHeader,
  errors,
  type JWTPayload,
  type JWTVerifyOptions,
  type JWTVerifyResult,
  jwtVerify,
} from 'jose'
import type { IssuerConfig } from '../../config/schema.ts'
import { ASYMMETRIC_ALGORITHMS, HMAC_ALGORITHMS, type JwtEvidence } from '../../types.ts'
import { type FailureCause, failureCause } from './errors.ts'
import { IssuerKeySet, type KeySetOptions, type VerificationKey } from './jwks.ts'

export interface VerifierOptions extends KeySetOptions {
  clockSkewMs: number
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

function headerAlg(token: string): unknown {
  try {
    return decodeProtectedHeader(token).alg
  } catch {
    return undefined
  }
}

export class IssuerVerifier {
  readonly issuer: string
  readonly keys: IssuerKeySet
  private readonly profile: string | undefined
  private readonly algorithms: ReadonlySet<string>
  private readonly baseOptions: JWTVerifyOptions
  private readonly now: () => number

  constructor(cfg: IssuerConfig, opts: VerifierOptions) {
    this.issuer = cfg.issuer
    this.profile = cfg.profile
    this.keys = new IssuerKeySet(cfg, opts)
    this.now = opts.now ?? Date.now
    const algorithms = allowedAlgorithms(cfg)
    this.algorithms = new Set(algorithms)
    this.baseOptions = {
      issuer: cfg.issuer,
      algorithms,
      clockTolerance: opts.clockSkewMs / 1000,
      // The audience check is on unless the issuer says `audiences: any`; a config that names no audience
      // (only possible without the loader, which refuses it) accepts no token at all (wrong_audience).
      ...(cfg.audiences === 'any' ? {} : { audience: cfg.audiences ?? [] }),
    }
  }

  allows(alg: unknown): boolean {
    return typeof alg === 'string' && this.algorithms.has(alg)
  }

  /** Never throws: a verified token becomes evidence, anything else a failure cause. */
  async verify(token: string, fingerprint: string): Promise<JwtEvidence | FailureCause> {
    try {
      const { payload, protectedHeader } = await this.verifyRotating(token)
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
      // no key because none was ever fetched (IdP unreachable since start), not because the kid is unknown
      if (err instanceof errors.JWKSNoMatchingKey && !this.keys.hasKeysFor(headerAlg(token))) {
        return { reason: 'keys_unavailable', detail: "the issuer's keys have not been fetched yet" }
      }
      return failureCause(err)
    }
  }

  private async verifyRotating(token: string): Promise<JWTVerifyResult<JWTPayload>> {
    try {
      return await this.verifyOnce(token)
    } catch (err) {
      if (!(err instanceof errors.JWKSNoMatchingKey)) throw err
      const refetch = this.keys.refreshForUnknownKid()
      if (!refetch || !(await refetch)) throw err
      return this.verifyOnce(token)
    }
  }

  private async verifyOnce(token: string): Promise<JWTVerifyResult<JWTPayload>> {
    const options = { ...this.baseOptions, currentDate: new Date(this.now()) }
    try {
      return await jwtVerify(token, this.keys.getKey, options)
    } catch (err) {
      // a token without kid may match several keys: try each, the first that verifies wins
      if (!(err instanceof errors.JWKSMultipleMatchingKeys)) throw err
      for await (const key of err as unknown as AsyncIterable<VerificationKey>) {
        try {
          return await jwtVerify(token, key, options)
        } catch (inner) {
          if (!(inner instanceof errors.JWSSignatureVerificationFailed)) throw inner
        }
      }
      throw err
    }
  }
}
