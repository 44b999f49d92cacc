// Bearer JWTs (jwt.issuers): verification against each issuer's keys is in identity/jwt/ and the caching
// reader in identity/extractors/jwt.ts; this is what the pipeline makes of a verified token. A token's IdP
// profile (identity/profiles.ts) names the caller and gives its kind, ahead of a certificate's names.
import type { Config } from '../../config/schema.ts'
import type { ConnectionInfo, Failure, JwtEvidence, Kind, RequestInfo } from '../../types.ts'
import { trustedProxySet } from '../client-address.ts'
import { JwtExtractor } from '../extractors/jwt.ts'
import { type ProfileIdentity, profileIdentity } from '../profiles.ts'
import type { CredentialSource, Rejection, SourceContext } from './source.ts'

/**
 * Verified tokens are cached objects (the reader's verification cache), so their profile is worked out once
 * per token, not once per request; entries go with the token.
 */
const profiles = new WeakMap<JwtEvidence, ProfileIdentity>()
export function profileOf(jwt: JwtEvidence): ProfileIdentity {
  let p = profiles.get(jwt)
  if (p === undefined) {
    p = profileIdentity(jwt)
    profiles.set(jwt, p)
  }
  return p
}

const JWT_CLAIM_ATTRIBUTES = ['sub', 'client_id', 'azp', 'jti'] as const

const INVALID_TOKEN_HEADERS = Object.freeze({
  'content-type': 'application/json',
  'www-authenticate': 'Bearer error="invalid_token"',
})

/** The token reader, answering 401 for a token that did not verify when jwt.onInvalid is reject. */
class JwtReader extends JwtExtractor {
  private readonly rejectInvalid: boolean
  private readonly hasIssuers: boolean
  constructor(config: Config, ctx: SourceContext) {
    const cfg = config.jwt
    super(cfg, {
      observer: ctx.jwksObserver,
      memory: ctx.keyMemory,
      now: ctx.now,
      trustedProxies: trustedProxySet(config.forwardedClientCert),
    })
    this.rejectInvalid = cfg.onInvalid === 'reject'
    this.hasIssuers = cfg.issuers.length > 0
  }

  override extract(req: RequestInfo, conn: ConnectionInfo): ReturnType<JwtExtractor['extract']> {
    // Without configured issuers a bearer token is the service's own business (opaque tokens, sessions):
    // there is nothing to verify it against, so it is neither evidence nor an auth failure.
    return this.hasIssuers ? super.extract(req, conn) : undefined
  }

  reject(failure: Failure): Rejection | undefined {
    if (!this.rejectInvalid) return undefined
    return {
      status: 401,
      body: JSON.stringify({ error: 'invalid_token', reason: failure.reason }),
      headers: INVALID_TOKEN_HEADERS,
    }
  }

  readinessDetail(): Record<string, unknown> {
    return { issuers: this.issuers(), verifyPool: this.verifyPool() }
  }
}

export const jwtSource: CredentialSource<JwtEvidence> = {
  name: 'jwt',
  precedence: 30,
  namingPrecedence: 0,
  fingerprintField: 'jwt',
  create: (config, ctx) => new JwtReader(config, ctx),
  fingerprint: (jwt) => jwt.fingerprint,
  attributes(jwt, a) {
    a['iss'] = jwt.issuer
    const c = jwt.claims
    for (const k of JWT_CLAIM_ATTRIBUTES) {
      const v = c[k]
      if (typeof v === 'string') a[k] = v
    }
    const aud = c['aud']
    if (typeof aud === 'string') a['aud'] = aud
    else if (Array.isArray(aud)) a['aud'] = aud.filter((x) => typeof x === 'string').join(',')
    a['jwt_fingerprint'] = jwt.fingerprint
    // the profile's attributes (ns, sa, pod, repository…) apply whichever rule matches, and are what the
    // IdP means by the token: they win over what a certificate said
    Object.assign(a, profileOf(jwt).attributes)
  },
  expiresAt(jwt) {
    const p = profileOf(jwt).expiresAt
    if (jwt.exp === undefined) return p
    return p === undefined ? jwt.exp : Math.min(jwt.exp, p)
  },
  issuer: (jwt) => jwt.issuer,
  defaultKind: (jwt): Kind => profileOf(jwt).kind,
  builtinIdentity(jwt) {
    const p = profileOf(jwt)
    return { name: p.name, kind: p.kind, rule: p.rule }
  },
  cacheKey: (jwt) => jwt.fingerprint,
  describe(jwt) {
    const sub = typeof jwt.claims['sub'] === 'string' ? ` sub=${jwt.claims['sub']}` : ''
    const profile = jwt.profile ? ` profile=${jwt.profile}` : ''
    return `verified iss=${jwt.issuer}${sub} alg=${jwt.alg}${profile} fingerprint=${jwt.fingerprint}`
  },
}
