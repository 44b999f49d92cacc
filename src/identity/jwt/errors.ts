// jose's errors → the auth-failure reasons of docs/reference.md "Metrics". Details are fixed strings: never echo token content.
import { errors } from 'jose'
import type { FailureReason } from '../../types.ts'

export interface FailureCause {
  reason: FailureReason
  detail: string
  /**
   * a bad signature that a change of keys could have verified, so the failure holds only until the token
   * could make them be fetched again: the issuer's key set (`keys`), or its secret file (`secret`)
   */
  refetch?: 'keys' | 'secret'
}

const CLAIM_REASON: Record<string, FailureCause> = {
  nbf: { reason: 'not_yet_valid', detail: 'token is not valid yet (nbf)' },
  aud: { reason: 'wrong_audience', detail: 'audience not accepted' },
  iss: { reason: 'wrong_issuer', detail: 'issuer not accepted' },
}

export function failureCause(err: unknown): FailureCause {
  if (err instanceof errors.JWTExpired) return { reason: 'expired', detail: 'token expired (exp)' }
  if (err instanceof errors.JWTClaimValidationFailed) {
    return CLAIM_REASON[err.claim] ?? { reason: 'malformed', detail: `invalid "${err.claim}" claim` }
  }
  if (err instanceof errors.JOSEAlgNotAllowed)
    return { reason: 'alg_not_allowed', detail: 'algorithm not allowed' }
  if (err instanceof errors.JWSSignatureVerificationFailed) {
    return { reason: 'bad_signature', detail: 'signature does not verify' }
  }
  if (err instanceof errors.JWKSNoMatchingKey)
    return { reason: 'unknown_kid', detail: 'no key matches the token kid/alg' }
  if (err instanceof errors.JWKSMultipleMatchingKeys) {
    return { reason: 'bad_signature', detail: 'no candidate key verifies the signature' }
  }
  if (err instanceof errors.JOSENotSupported)
    return { reason: 'malformed', detail: 'unsupported token feature' }
  if (err instanceof errors.JWSInvalid || err instanceof errors.JWTInvalid) {
    return { reason: 'malformed', detail: 'not a valid JWS/JWT' }
  }
  // key import problems (a JWKS entry that does not fit the alg) and anything unexpected: the token did not verify
  return { reason: 'bad_signature', detail: 'token could not be verified with the issuer keys' }
}
