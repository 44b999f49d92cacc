// One signed agents' key directory (Web Bot Auth: `/.well-known/http-message-signatures-directory`, a JWKS of
// the agent's public keys). Fetching, the last good key set through outages, retries and the rate-limited
// refetch for an unknown key are the JWKS key set's (src/identity/jwt/jwks.ts); this adds the lookup by JWK
// thumbprint, which is what a Web Bot Auth `keyid` is.
import { createPublicKey, type KeyObject } from 'node:crypto'
import { calculateJwkThumbprint, type JWK } from 'jose'
import { urlLabel } from '../../config/redact.ts'
import type { Config, IssuerConfig } from '../../config/schema.ts'
import type { Kind, SignatureEvidence } from '../../types.ts'
import { IssuerKeySet, type KeySetOptions } from '../jwt/jwks.ts'

type DirectoryConfig = Config['signedAgents']['directories'][number]

/** RFC 9421 algorithm names of the keys Web Bot Auth signs with */
export type SignatureAlgorithm = 'ed25519' | 'rsa-pss-sha512'

export interface DirectoryKey {
  alg: SignatureAlgorithm
  key: KeyObject
}

export const DIRECTORY_PATH = '/.well-known/http-message-signatures-directory'
const DIRECTORY_MEDIA_TYPE = 'application/http-message-signatures-directory+json'

/**
 * A directory as the key set that fetches it: named by its URL in the nhi_jwks_* labels and the logs, without
 * the credentials a URL may carry (userinfo, a token in the query), as /config shows it. Also what the
 * runtime's KeyMemory knows the directory by, across reloads.
 */
export function directoryKeySource(cfg: DirectoryConfig, url = new URL(cfg.url)): IssuerConfig {
  return {
    issuer: urlLabel(cfg.url, url),
    jwksUri: cfg.url,
    caFile: cfg.caFile,
    refreshInterval: cfg.refreshInterval,
  }
}

export class KeyDirectory {
  readonly url: string
  /** origin of the directory URL */
  readonly origin: string
  /** the directory is at the origin's well-known path: a Signature-Agent naming just the origin names it */
  readonly wellKnown: boolean
  /** the URL as the URL parser writes it, for comparing with a Signature-Agent URL */
  readonly href: string
  readonly name: string
  readonly kind: Kind
  readonly operator: string | undefined
  readonly purpose: SignatureEvidence['purpose']
  readonly keys: IssuerKeySet
  private indexedFrom: readonly JWK[] | undefined
  private index: Promise<Map<string, DirectoryKey>> | undefined

  constructor(cfg: DirectoryConfig, opts: KeySetOptions) {
    const url = new URL(cfg.url)
    this.url = cfg.url
    this.origin = url.origin
    this.wellKnown = url.pathname === DIRECTORY_PATH && url.search === ''
    this.href = url.href
    this.name = cfg.name ?? url.host
    this.kind = cfg.kind
    this.operator = cfg.operator
    this.purpose = cfg.purpose
    this.keys = new IssuerKeySet(directoryKeySource(cfg, url), {
      ...opts,
      accept: `${DIRECTORY_MEDIA_TYPE}, application/json`,
    })
  }

  /** the directory has been fetched at least once */
  loaded(): boolean {
    return this.keys.ready()
  }

  /** The key whose thumbprint is `keyid`, among the keys this directory has now. */
  async key(keyid: string): Promise<DirectoryKey | undefined> {
    return (await this.indexed()).get(keyid)
  }

  /**
   * The key whose thumbprint is `keyid` after one refetch of the directory (rate limited by the key set, so
   * random keyids cannot hammer the agent's server), for a keyid it does not have now. Waits for a refetch
   * already under way, which lasts as long as the directory's server takes (up to the fetch timeout).
   */
  async refetchedKey(keyid: string): Promise<DirectoryKey | undefined> {
    const refetch = this.keys.refreshOnDemand()
    if (!refetch || !(await refetch)) return undefined
    return this.key(keyid)
  }

  private indexed(): Promise<Map<string, DirectoryKey>> {
    const jwks = this.keys.publicJwks
    if (this.index === undefined || this.indexedFrom !== jwks) {
      this.indexedFrom = jwks
      this.index = indexKeys(jwks)
    }
    return this.index
  }
}

async function indexKeys(jwks: readonly JWK[]): Promise<Map<string, DirectoryKey>> {
  const out = new Map<string, DirectoryKey>()
  for (const jwk of jwks) {
    const alg = algorithmOf(jwk)
    if (!alg) continue
    try {
      out.set(await calculateJwkThumbprint(jwk, 'sha256'), {
        alg,
        key: createPublicKey({ key: jwk as import('node:crypto').JsonWebKey, format: 'jwk' }),
      })
    } catch {
      // a malformed entry is skipped; the directory's other keys still serve
    }
  }
  return out
}

/** Web Bot Auth keys: Ed25519, or RSA for RSASSA-PSS with SHA-512 (a JWK `alg` other than PS512 is not one) */
function algorithmOf(jwk: JWK): SignatureAlgorithm | undefined {
  if (jwk.kty === 'OKP' && jwk.crv === 'Ed25519') return 'ed25519'
  if (jwk.kty === 'RSA' && (jwk.alg === undefined || jwk.alg === 'PS512')) return 'rsa-pss-sha512'
  return undefined
}
