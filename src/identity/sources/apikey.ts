// API keys (apiKeys): only sha256 hashes are configured; the presented key is hashed and looked up, and the
// hit is confirmed with a constant-time comparison of the digests. A key's fingerprint is keyed (HMAC of that
// digest), never its plain sha256 prefix: a person may have chosen the key. Everything about api keys is in
// this file: its config section, reader, evidence and what the pipeline makes of it.
import { createHash, timingSafeEqual } from 'node:crypto'
import * as z from 'zod/mini'
import type { Config } from '../../config/schema.ts'
import { type ConnectionInfo, type Failure, KINDS, type Kind, type RequestInfo } from '../../types.ts'
import {
  keyedFingerprint,
  podFingerprintKey,
  readFingerprintKeyFile,
  sha256Hex,
} from '../../util/fingerprint.ts'
import type { CredentialSource, SourceExtractor } from './source.ts'

/** The `apiKeys` config section. */
export const apiKeysConfigSchema = z.prefault(
  z.strictObject({
    // a name HTTP cannot carry (empty, a space, a colon) would leave every key silently unused
    header: z._default(
      z
        .string()
        .check(z.regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/, 'expected an HTTP header name, such as x-api-key')),
      'x-api-key',
    ),
    keys: z._default(
      z.array(
        z.strictObject({
          name: z.string().check(z.minLength(1)),
          kind: z.optional(z.enum(KINDS)),
          team: z.optional(z.string()),
          sha256: z
            .string()
            .check(z.regex(/^[0-9a-fA-F]{64}$/, 'expected 64 hex characters (sha256 of the key)')),
        }),
      ),
      [],
    ),
    // the key of the fingerprints, shared by the replicas whose fingerprints must agree; without it each pod
    // makes its own at start
    fingerprintKeyFile: z.optional(z.string().check(z.minLength(1))),
  }),
  {},
)

const FINGERPRINT_KEY_SETTING = 'apiKeys.fingerprintKeyFile'

export interface ApiKeyEvidence {
  source: 'apikey'
  verified: true
  name: string
  kind?: Kind
  team?: string
  fingerprint: string
}

interface KeyEntry {
  name: string
  kind?: Kind
  team?: string
  digest: Buffer
  fingerprint: string
}

export class ApiKeyExtractor implements SourceExtractor<ApiKeyEvidence> {
  readonly source = 'apikey' as const
  readonly header: string
  readonly credentialHeaders: readonly string[]
  /**
   * The key header, while keys are configured: its other spellings (x_api_key for x-api-key) are never read
   * here but are the same header to an upstream framework, which would authenticate a key the proxy did not
   * attribute; the pipeline strips and counts them (pipeline/read-headers.ts). Without keys no spelling of the
   * header is a credential here, and none is guarded.
   */
  readonly readHeaders: readonly string[]
  private readonly byHash = new Map<string, KeyEntry>()
  private readonly fingerprintKey: Uint8Array

  /**
   * `fingerprintKey`: the bytes of `fingerprintKeyFile`, read with the config (required when the config names
   * one); without a file, the pod's own key.
   */
  constructor(cfg: Config['apiKeys'], fingerprintKey?: Uint8Array) {
    if (cfg.fingerprintKeyFile !== undefined && fingerprintKey === undefined)
      throw new Error('apiKeys.fingerprintKeyFile is configured but its key was not read')
    this.fingerprintKey = fingerprintKey ?? podFingerprintKey()
    this.header = cfg.header.toLowerCase()
    this.credentialHeaders = [this.header]
    for (const k of cfg.keys) {
      const hex = k.sha256.toLowerCase()
      const digest = Buffer.from(hex, 'hex')
      this.byHash.set(hex, {
        name: k.name,
        digest,
        fingerprint: keyedFingerprint(this.fingerprintKey, digest),
        ...(k.kind ? { kind: k.kind } : {}),
        ...(k.team ? { team: k.team } : {}),
      })
    }
    this.readHeaders = this.byHash.size === 0 ? [] : [this.header]
  }

  extract(req: RequestInfo, _conn?: ConnectionInfo): ApiKeyEvidence | Failure | undefined {
    // without keys the header is the service's own business (as a bearer token without jwt.issuers): no key
    // it carries can be unknown here, nor its every request a failure audited whatever the sampling
    if (this.byHash.size === 0) return undefined
    const raw = req.headers[this.header]
    const key = Array.isArray(raw) ? raw[0] : raw
    if (!key) return undefined
    const hex = keyDigestHex(key)
    const entry = this.byHash.get(hex)
    const digest = Buffer.from(hex, 'hex')
    if (!entry || !timingSafeEqual(digest, entry.digest)) {
      const fingerprint = keyedFingerprint(this.fingerprintKey, digest)
      return { failed: true, source: 'apikey', reason: 'apikey_unknown', fingerprint }
    }
    return apiKeyEvidence(entry, entry.fingerprint)
  }
}

/**
 * The sha256 of a presented key, in hex. Node hands header bytes over one latin1 character per byte: hashing
 * the string as UTF-8 would hash other bytes than the client sent for a key outside ASCII, and the configured
 * sha256 would never match. An ASCII key is the same bytes either way, and takes the one-shot hash of the
 * string (≈ 0.5 µs, against ≈ 1.4 µs for a Hash object and its digest Buffer, on every request with a key).
 */
export function keyDigestHex(key: string): string {
  for (let i = 0; i < key.length; i++)
    if (key.charCodeAt(i) > 0x7f) return createHash('sha256').update(key, 'latin1').digest('hex')
  return sha256Hex(key)
}

export function createApiKeyExtractor(cfg: Config['apiKeys'], fingerprintKey?: Uint8Array): ApiKeyExtractor {
  return new ApiKeyExtractor(cfg, fingerprintKey)
}

/** Evidence for a configured key (`nhi-proxy test` builds it from the key's name). */
export function apiKeyEvidence(
  key: { name: string; kind?: Kind | undefined; team?: string | undefined },
  fp: string,
): ApiKeyEvidence {
  const ev: ApiKeyEvidence = { source: 'apikey', verified: true, name: key.name, fingerprint: fp }
  if (key.kind) ev.kind = key.kind
  if (key.team) ev.team = key.team
  return ev
}

export const apiKeySource: CredentialSource<ApiKeyEvidence> = {
  name: 'apikey',
  precedence: 40,
  fingerprintField: 'apikey',
  failureReasons: ['apikey_unknown'],
  create: (config, ctx) => new ApiKeyExtractor(config.apiKeys, ctx.secretFiles?.get(FINGERPRINT_KEY_SETTING)),
  secretFiles: (config) =>
    config.apiKeys.fingerprintKeyFile === undefined
      ? []
      : [
          {
            setting: FINGERPRINT_KEY_SETTING,
            path: config.apiKeys.fingerprintKeyFile,
            read: readFingerprintKeyFile,
          },
        ],
  fingerprint: (ev) => ev.fingerprint,
  attributes(ev, a) {
    a['api_key'] ??= ev.name
    a['api_key_fingerprint'] ??= ev.fingerprint
  },
  defaultKind: (ev) => ev.kind ?? 'service',
  builtinIdentity(ev) {
    return {
      name: ev.name,
      kind: ev.kind ?? 'service',
      rule: 'builtin:apikey',
      ...(ev.team !== undefined ? { team: ev.team } : {}),
    }
  },
  cacheKey: (ev) => ev.fingerprint,
  describe: (ev) => `verified name=${ev.name} fingerprint=${ev.fingerprint}`,
  checkConfig(config, error) {
    const hashAt = new Map<string, number>()
    config.apiKeys.keys.forEach((k, i) => {
      const hash = k.sha256.toLowerCase()
      const first = hashAt.get(hash)
      if (first !== undefined) {
        error(
          ['apiKeys', 'keys', i, 'sha256'],
          `the same key as apiKeys.keys[${first}]: only one of the two names would be used`,
          'list each key once',
        )
      } else hashAt.set(hash, i)
      if (k.name === 'anonymous' || k.name.startsWith('ua:')) {
        error(
          ['apiKeys', 'keys', i, 'name'],
          `api key name "${k.name}" is reserved for unverified callers`,
          '"anonymous" and names starting with "ua:" name requests that verified nothing',
        )
      }
    })
  },
}
