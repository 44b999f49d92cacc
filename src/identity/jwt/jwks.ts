// Verification keys for one JWT issuer: a JWKS fetched over HTTP(S) (optionally via OIDC discovery, a custom CA
// and a rotating bearer token), a local JWKS file, and/or an HMAC secret file.
// The last good key set keeps serving through IdP outages; unknown kids, and signatures that fail under a known
// kid or without one (an IdP that re-keyed), trigger a rate-limited refetch; a bad HMAC signature a
// rate-limited re-read of the secret file (a rotated Secret).
import { readFile } from 'node:fs/promises'
import {
  createLocalJWKSet,
  errors,
  type FlattenedJWSInput,
  importJWK,
  type JWK,
  type JWSHeaderParameters,
} from 'jose'
import type { Agent, Dispatcher } from 'undici'
import type { IssuerConfig } from '../../config/schema.ts'
import { ASYMMETRIC_ALGORITHMS } from '../../types.ts'
import { isRecord } from '../../util/is-record.ts'
import { readBounded } from '../../util/read-bounded.ts'

// The HTTP client is loaded with the first key-set fetch: a sidecar whose key sets are files (or that has no
// issuers) never pays for loading it at start-up, which keeps the cold start short.
// undici is CommonJS: only `default` (module.exports) is the same under Node's own loader and in the bundle,
// where the lazily loaded chunk exposes nothing but `default`, so named exports are never read off the module.
type Undici = typeof import('undici').default
let undici: Promise<Undici> | undefined
const loadUndici = (): Promise<Undici> => {
  undici ??= import('undici').then((m) => m.default)
  return undici
}

export interface JwksObserver {
  /**
   * called after every refresh attempt; `at` is unix ms, keyCount the number of keys now in use, `error`
   * why a failed attempt failed (safe to log: no token, no URL query or credentials), `unusable` the
   * signing keys a successful one left out because they cannot verify anything
   */
  refreshed(
    issuer: string,
    result: 'success' | 'failure',
    keyCount: number,
    at: number,
    error?: string,
    unusable?: UnusableKeys,
  ): void
}

/** signing keys of a key set that cannot verify a signature here (they do not import, or are too weak) */
export interface UnusableKeys {
  count: number
  /** why the first of them is unusable (safe to log) */
  reason: string
}

export interface KeySetOptions {
  observer?: JwksObserver
  /** unix ms clock */
  now?: () => number
  /** deadline for one HTTP fetch (discovery or key set) */
  fetchTimeoutMs?: number
  /**
   * minimum gap between refetches triggered by tokens (an unknown kid, a failing signature), and between
   * re-reads of the secret file triggered by a failing HMAC signature; also the least time a Cache-Control
   * max-age can bring the next scheduled refresh forward to
   */
  unknownKidCooldownMs?: number
  /** how soon to retry after a failed refresh (capped by the issuer's refreshInterval) */
  retryMs?: number
  /** Accept header of the key-set fetch (signed agents' key directories have their own media type) */
  accept?: string
  /** a reload took away keys the previous set had (or changed them, or changed the HMAC secret) */
  onWithdrawn?: (withdrawn: WithdrawnKeys) => void
  /** the last keys each source delivered, kept across config reloads */
  memory?: KeyMemory
}

/** What a key set last loaded. */
interface LoadedKeys {
  keys: LocalKeySet | undefined
  keyCount: number
  workerKeys: PublicKeys | undefined
  publicJwks: readonly JWK[]
  secret: Uint8Array | undefined
}

/** at most this many sources remembered: a few per configured issuer, whatever the reload history */
const MAX_REMEMBERED_SOURCES = 256

/**
 * One source's last good public keys as they cross between the processes of a pod (`workers: N`): the JWKS
 * keys only, never an HMAC secret (each process reads its secret files itself or is handed their bytes with
 * the config) and never a private member.
 */
export interface SharedKeySet {
  /** KeyMemory.sourceOf of the issuer or key directory */
  source: string
  jwks: JWK[]
  /**
   * when the fetch that delivered them started, on podClock(): of two fetches around a key rotation, the one
   * that asked the IdP later is the newer answer, whichever of them finished first
   */
  at: number
}

/**
 * Microseconds on the host's monotonic clock (CLOCK_MONOTONIC: one clock for every process of a pod, since
 * boot). The pod's processes compare their fetches' start times on it: the wall clock can be stepped back
 * (an NTP correction, a VM resumed), and a fetch started after the step would then look older than one
 * started before it.
 */
export function podClock(): number {
  return Number(process.hrtime.bigint() / 1000n)
}

/**
 * The last keys each key source delivered, owned by the runtime rather than by one pipeline. A reload builds
 * new key sets; one whose first fetch fails (the IdP is down at that moment) starts from the keys the running
 * config had, as a failed refresh keeps the last good keys, instead of from none: a config change must not
 * turn an IdP outage into an outage for every token caller. Keyed by everything that decides what a fetch
 * returns, so an issuer whose key source changed starts afresh.
 *
 * A worker of `workers: N` reports every key set it fetches (`onFetched`) to its primary, and starts from
 * the pod's last good ones (`seed`): a worker that starts while the IdP is down (one replacing a crashed
 * worker) must not fail every token its siblings verify.
 */
export class KeyMemory {
  private readonly loaded = new Map<string, LoadedKeys>()

  constructor(
    private readonly onFetched?: (keys: SharedKeySet) => void,
    private readonly now: () => number = podClock,
  ) {}

  static sourceOf(cfg: IssuerConfig): string {
    return JSON.stringify([
      cfg.issuer,
      cfg.jwksUri,
      cfg.jwksFile,
      cfg.discovery,
      cfg.secretFile,
      cfg.caFile,
      cfg.bearerTokenFile,
    ])
  }

  get(source: string): LoadedKeys | undefined {
    return this.loaded.get(source)
  }

  /**
   * A secret file read again on demand (IssuerKeySet.rereadSecretOnDemand) changed: a reload starts from it.
   * Nothing is reported to the pod: secrets never leave the process, and the public keys did not change.
   */
  rememberSecret(source: string, secret: Uint8Array): void {
    const known = this.loaded.get(source)
    if (known) known.secret = secret
  }

  /**
   * Forgets the sources a newly applied config no longer has: an issuer removed and later added again starts
   * with no keys, not with the keys it had before its removal (which may have been revoked since).
   */
  retain(sources: ReadonlySet<string>): void {
    for (const source of this.loaded.keys()) if (!sources.has(source)) this.loaded.delete(source)
  }

  /** the time a fetch starts, on this memory's clock: what `set` is then given as `fetchStartedAt` */
  stamp(): number {
    return this.now()
  }

  /** what a successful fetch delivered; `fetchStartedAt` (stamp()) orders it against the pod's other fetches */
  set(source: string, keys: LoadedKeys, fetchStartedAt: number = this.now()): void {
    this.put(source, keys)
    // a source with only a secretFile has no public keys to share
    if (this.onFetched && keys.workerKeys)
      this.onFetched({ source, jwks: publicOnly(keys.workerKeys.jwks), at: fetchStartedAt })
  }

  /**
   * Starts sources this memory knows nothing of from key sets another process of the pod fetched. They are
   * built as a fetched key set is (buildKeySet), so what came over the channel is held to the same rules as
   * what came from the IdP. Only a fallback: the key set's own first fetch still runs, and replaces them when
   * it succeeds. Not reported back (`onFetched`): the pod has them already.
   */
  async seed(shared: readonly SharedKeySet[]): Promise<void> {
    for (const { source, jwks } of shared) {
      if (this.loaded.has(source)) continue
      let built: Awaited<ReturnType<typeof buildKeySet>>
      try {
        built = await buildKeySet({ keys: jwks })
      } catch {
        continue
      }
      this.put(source, {
        keys: built.set,
        keyCount: built.keys.length,
        workerKeys: publicKeysOf(built.keys, 1),
        publicJwks: built.keys,
        secret: undefined,
      })
    }
  }

  private put(source: string, keys: LoadedKeys): void {
    this.loaded.delete(source)
    this.loaded.set(source, keys)
    if (this.loaded.size > MAX_REMEMBERED_SOURCES) {
      const oldest = this.loaded.keys().next().value
      if (oldest !== undefined) this.loaded.delete(oldest)
    }
  }
}

/**
 * The pod's last good public keys per key source, kept by the primary of `workers: N` from what its workers
 * report, for the workers it starts later. The newest fetch of a source wins whichever worker made it, so a
 * key the IdP has withdrawn since is not handed out again; a source the config no longer has is forgotten,
 * as KeyMemory forgets it.
 */
export class PodKeySets {
  private readonly latest = new Map<string, SharedKeySet>()

  /**
   * Keeps a worker's report if `configured` (the key sources of the pod's config, and of a reload under way)
   * has its source. A report of any other source is a late one from a key set the config has dropped (a
   * worker that missed a reload and is being replaced): kept, it would outlive retain() and be handed out
   * should a later reload add the source again, which is then to start with no keys.
   */
  learn(keys: SharedKeySet, configured?: ReadonlySet<string>): void {
    if (configured !== undefined && !configured.has(keys.source)) return
    const known = this.latest.get(keys.source)
    if (known && known.at > keys.at) return
    this.latest.delete(keys.source)
    this.latest.set(keys.source, { source: keys.source, jwks: publicOnly(keys.jwks), at: keys.at })
    if (this.latest.size > MAX_REMEMBERED_SOURCES) {
      const oldest = this.latest.keys().next().value
      if (oldest !== undefined) this.latest.delete(oldest)
    }
  }

  retain(sources: ReadonlySet<string>): void {
    for (const source of this.latest.keys()) if (!sources.has(source)) this.latest.delete(source)
  }

  /** the key sets of these sources the pod has */
  of(sources: ReadonlySet<string>): SharedKeySet[] {
    return [...this.latest.values()].filter((k) => sources.has(k.source))
  }
}

/**
 * A fetched key set has no symmetric or private key in it (buildKeySet); checked again wherever keys leave a
 * process, so that no later change to what a key set holds can send a private key over the channel.
 */
function publicOnly(jwks: readonly JWK[]): JWK[] {
  return jwks.filter((k) => k.kty !== 'oct' && !PRIVATE_MEMBERS.some((m) => m in k))
}

function publicKeysOf(keys: JWK[], version: number): PublicKeys {
  return {
    version,
    jwks: keys,
    kids: new Set(keys.flatMap((k) => (typeof k.kid === 'string' ? [k.kid] : []))),
  }
}

/**
 * The keys a key set holds under `kid`, serialized to compare two key sets by (undefined when it has none):
 * the key set is small and this runs only for a signature that failed.
 */
export function keysNamed(keys: PublicKeys | undefined, kid: string): string | undefined {
  if (!keys?.kids.has(kid)) return undefined
  return JSON.stringify(keys.jwks.filter((k) => k.kid === kid))
}

/** what a reload took away: tokens verified with these keys must not keep verifying from a cache */
export interface WithdrawnKeys {
  /** kids of JWKS keys gone or changed */
  kids: ReadonlySet<string>
  /** some JWKS key is gone or changed (a token without kid may have been verified with it) */
  anyKey: boolean
  /** the HMAC secret changed */
  secret: boolean
}

export const DEFAULT_REFRESH_MS = 10 * 60_000
export const DEFAULT_FETCH_TIMEOUT_MS = 5_000
export const DEFAULT_UNKNOWN_KID_COOLDOWN_MS = 30_000
/** the shortest gap between two fetches of a key set that is not waiting out a failure */
const MIN_REFRESH_MS = 1000
const MAX_DOCUMENT_BYTES = 512 * 1024
const MAX_KEYS = 100
// what a key set's keys are checked against: the algorithms verifyJwt (jws.ts) verifies with; RSA below
// 2048 bits it refuses, as jose does
const SIGNATURE_ALGORITHMS: ReadonlySet<string> = new Set([...ASYMMETRIC_ALGORITHMS, 'Ed25519'])
const EC_CURVE_ALGORITHM: Readonly<Record<string, string>> = {
  'P-256': 'ES256',
  'P-384': 'ES384',
  'P-521': 'ES512',
}
const MIN_RSA_BITS = 2048
// private-key members: a JWKS that carries them is misconfigured; never hold private keys in memory
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'] as const

export type VerificationKey = CryptoKey | Uint8Array

export interface PublicKeys {
  /** increases with every new key set */
  version: number
  jwks: JWK[]
  /** the key ids in jwks */
  kids: ReadonlySet<string>
}

type LocalKeySet = ReturnType<typeof createLocalJWKSet>

export class IssuerKeySet {
  readonly issuer: string
  private readonly cfg: IssuerConfig
  private readonly observer: JwksObserver | undefined
  private readonly now: () => number
  private readonly fetchTimeoutMs: number
  private readonly cooldownMs: number
  private readonly refreshMs: number
  private readonly retryMs: number
  private readonly accept: string
  private readonly onWithdrawn: ((withdrawn: WithdrawnKeys) => void) | undefined
  private readonly memory: KeyMemory | undefined
  private readonly source: string
  private keys: LocalKeySet | undefined
  private keyCount = 0
  /** the public keys behind `keys`, for verification workers; a new version with every new key set */
  private workerKeys: PublicKeys | undefined
  /** the public keys in use, as served (signed agents look keys up by their JWK thumbprint) */
  publicJwks: readonly JWK[] = []
  private secret: Uint8Array | undefined
  private discoveredJwksUri: string | undefined
  private lastAttemptAt = Number.NEGATIVE_INFINITY
  private inflight: Promise<boolean> | undefined
  /** when the secret file was last read (by a refresh or on demand), for rereadSecretOnDemand's cooldown */
  private lastSecretReadAt = Number.NEGATIVE_INFINITY
  private secretInflight: Promise<boolean> | undefined
  private timer: NodeJS.Timeout | undefined
  private closed = false
  private agent: Agent | undefined
  private agentCa: string | undefined
  /** how long after the last refresh attempt the next scheduled one runs (ms) */
  nextRefreshInMs = 0
  /** why the last refresh failed (safe to log), undefined after a success */
  lastError: string | undefined
  /** signing keys the key set in use left out as unusable (0 when none) */
  unusableKeys = 0
  /** one more with every successful load: a failure cached against older keys is no longer the answer */
  generation = 0
  /** one more with every load that withdrew keys: a verification begun before it is not to be cached */
  withdrawals = 0
  /** one more whenever the HMAC secret in use changes: tells a verifier whether a re-read brought another */
  secretVersion = 0

  constructor(cfg: IssuerConfig, opts: KeySetOptions = {}) {
    this.issuer = cfg.issuer
    this.cfg = cfg
    this.observer = opts.observer
    this.now = opts.now ?? Date.now
    this.fetchTimeoutMs = opts.fetchTimeoutMs ?? DEFAULT_FETCH_TIMEOUT_MS
    this.cooldownMs = opts.unknownKidCooldownMs ?? DEFAULT_UNKNOWN_KID_COOLDOWN_MS
    this.refreshMs = Math.max(MIN_REFRESH_MS, cfg.refreshInterval ?? DEFAULT_REFRESH_MS)
    // a cooldown of 0 (refetch on every unknown kid) must not make a failing IdP a fetch loop
    this.retryMs = Math.min(this.refreshMs, opts.retryMs ?? Math.max(MIN_REFRESH_MS, this.cooldownMs))
    this.accept = opts.accept ?? 'application/json'
    this.onWithdrawn = opts.onWithdrawn
    this.memory = opts.memory
    this.source = opts.memory ? KeyMemory.sourceOf(cfg) : ''
    const remembered = this.memory?.get(this.source)
    if (remembered) {
      this.keys = remembered.keys
      this.keyCount = remembered.keyCount
      this.workerKeys = remembered.workerKeys
      this.publicJwks = remembered.publicJwks
      this.secret = remembered.secret
      // not where discovery pointed: the first fetch discovers again, as a start does, so an IdP that moved its
      // keys to another jwks_uri is followed at a reload and not only once the old one stops answering
    }
  }

  private get hasKeySource(): boolean {
    return Boolean(this.cfg.jwksUri || this.cfg.jwksFile || this.cfg.discovery)
  }

  /** Initial load; never throws. Schedules periodic refreshes. */
  async start(): Promise<void> {
    await this.refresh()
  }

  /** every configured source has delivered keys at least once */
  ready(): boolean {
    return (
      (!this.hasKeySource || this.keys !== undefined) && (!this.cfg.secretFile || this.secret !== undefined)
    )
  }

  /** keys for this algorithm have been loaded at least once (HS*: the secret; otherwise the key set) */
  hasKeysFor(alg: unknown): boolean {
    if (typeof alg === 'string' && alg.startsWith('HS')) return this.secret !== undefined
    return this.keys !== undefined
  }

  /** the current public key set (undefined before the first fetch), for verification off the main thread */
  get publicKeys(): PublicKeys | undefined {
    return this.workerKeys
  }

  get size(): number {
    return this.keyCount + (this.secret ? 1 : 0)
  }

  /**
   * Refetch now (shares an in-flight refresh). Resolves true when the key set (or the secret) was updated,
   * even if the issuer's other source failed.
   */
  refresh(): Promise<boolean> {
    if (this.closed) return Promise.resolve(false)
    if (!this.inflight) {
      this.lastAttemptAt = this.now()
      this.inflight = this.load().finally(() => {
        this.inflight = undefined
      })
    }
    return this.inflight
  }

  /**
   * A token named a kid we do not have, or its signature failed under a kid we have (the IdP may have put a
   * new key under the same kid): refetch, unless one happened within the cooldown (so a flood of random kids
   * or forged signatures cannot hammer the IdP). Returns undefined when no refetch is allowed.
   */
  refreshOnDemand(): Promise<boolean> | undefined {
    if (this.inflight) return this.inflight
    if (!this.hasKeySource || this.now() - this.lastAttemptAt < this.cooldownMs) return undefined
    return this.refresh()
  }

  /**
   * A signature failed under the HMAC secret (the secret file may have been rotated: a mounted Secret the
   * kubelet updated): read the file again, unless it was read within the cooldown (so a flood of forged
   * HMAC tokens makes at most one read per cooldown). Only the file: the IdP is not asked for keys an HMAC
   * token does not use. Resolves true when the secret changed; a file that cannot be read keeps the last
   * good secret (the next scheduled refresh reports it). undefined when no re-read is allowed.
   */
  rereadSecretOnDemand(): Promise<boolean> | undefined {
    if (!this.cfg.secretFile || this.closed) return undefined
    // a refresh under way reads the file too
    if (this.inflight) return this.inflight
    if (this.secretInflight) return this.secretInflight
    if (this.now() - this.lastSecretReadAt < this.cooldownMs) return undefined
    this.lastSecretReadAt = this.now()
    this.secretInflight = this.rereadSecret().finally(() => {
      this.secretInflight = undefined
    })
    return this.secretInflight
  }

  /** how long from now a bad HMAC signature cannot make the secret file be read again (0: the next one would) */
  secretRereadBlockedForMs(): number {
    if (!this.cfg.secretFile) return Number.POSITIVE_INFINITY
    if (this.inflight || this.secretInflight) return 0
    return Math.max(0, this.lastSecretReadAt + this.cooldownMs - this.now())
  }

  private async rereadSecret(): Promise<boolean> {
    let secret: Uint8Array
    try {
      secret = await readSecret(this.cfg.secretFile!)
    } catch {
      return false
    }
    if (this.closed || (this.secret && Buffer.from(secret).equals(this.secret))) return false
    const replaced = this.secret !== undefined
    this.secret = secret
    this.secretVersion++
    this.generation++
    this.memory?.rememberSecret(this.source, secret)
    if (replaced) {
      this.withdrawals++
      this.onWithdrawn?.({ kids: new Set(), anyKey: false, secret: true })
    }
    return true
  }

  /** how long from now a token cannot trigger a refetch (refreshOnDemand; 0: the next one would) */
  onDemandBlockedForMs(): number {
    if (!this.hasKeySource) return Number.POSITIVE_INFINITY
    if (this.inflight) return 0
    return Math.max(0, this.lastAttemptAt + this.cooldownMs - this.now())
  }

  /** Key for a token header. Throws jose's JWKSNoMatchingKey / JWKSMultipleMatchingKeys like a jose key set. */
  getKey = async (header: JWSHeaderParameters, token: FlattenedJWSInput): Promise<VerificationKey> => {
    if (typeof header.alg === 'string' && header.alg.startsWith('HS')) {
      if (!this.secret) throw new errors.JWKSNoMatchingKey()
      return this.secret
    }
    if (!this.keys) throw new errors.JWKSNoMatchingKey()
    return this.keys(header, token)
  }

  close(): void {
    this.closed = true
    if (this.timer) clearTimeout(this.timer)
    this.timer = undefined
    void this.agent?.close().catch(() => {})
    this.agent = undefined
  }

  private async load(): Promise<boolean> {
    const startedAt = this.memory?.stamp()
    // the secret file and the key set are loaded apart: one that fails (a secret file emptied by a botched
    // rotation, the IdP down) must not keep the other from being refreshed
    let secretOk = true
    let keysOk = true
    let detail: unknown
    let withdrawn: WithdrawnKeys | undefined
    let unusable: UnusableKeys | undefined
    let maxAgeMs: number | undefined
    if (this.cfg.secretFile) {
      this.lastSecretReadAt = this.now()
      try {
        const secret = await readSecret(this.cfg.secretFile)
        const changed = !this.secret || !Buffer.from(secret).equals(this.secret)
        if (this.secret && changed) withdrawn = { kids: new Set(), anyKey: false, secret: true }
        if (changed) {
          this.secret = secret
          this.secretVersion++
        }
      } catch (err) {
        secretOk = false
        detail = err
      }
    }
    if (this.hasKeySource) {
      try {
        const fetched = await this.fetchKeySet()
        maxAgeMs = fetched.maxAgeMs
        const built = await buildKeySet(fetched.body)
        const { set, keys } = built
        unusable = built.unusable
        if (this.workerKeys) {
          const gone = withdrawnKeys(this.workerKeys.jwks, keys)
          if (gone) withdrawn = { ...gone, secret: withdrawn?.secret ?? false }
        }
        this.keys = set
        this.keyCount = keys.length
        this.workerKeys = publicKeysOf(keys, (this.workerKeys?.version ?? 0) + 1)
        this.publicJwks = keys
        this.unusableKeys = unusable?.count ?? 0
      } catch (err) {
        keysOk = false
        detail ??= err
      }
    }
    if (this.closed) return false
    const ok = secretOk && keysOk
    const updated = (Boolean(this.cfg.secretFile) && secretOk) || (this.hasKeySource && keysOk)
    if (updated) this.generation++
    // what the memory (and the pod) is told is the newest key set only when the key set was fetched now
    if (updated && keysOk) {
      this.memory?.set(
        this.source,
        {
          keys: this.keys,
          keyCount: this.keyCount,
          workerKeys: this.workerKeys,
          publicJwks: this.publicJwks,
          secret: this.secret,
        },
        startedAt,
      )
    }
    if (withdrawn) {
      this.withdrawals++
      this.onWithdrawn?.(withdrawn)
    }
    this.lastError = ok ? undefined : describeFetchError(detail)
    this.observer?.refreshed(
      this.issuer,
      ok ? 'success' : 'failure',
      this.size,
      this.now(),
      this.lastError,
      ok ? unusable : undefined,
    )
    this.schedule(
      ok ? refreshDelay(this.refreshMs, maxAgeMs, Math.max(MIN_REFRESH_MS, this.cooldownMs)) : this.retryMs,
    )
    return updated
  }

  private schedule(delayMs: number): void {
    if (this.closed) return
    this.nextRefreshInMs = delayMs
    if (this.timer) clearTimeout(this.timer)
    this.timer = setTimeout(() => void this.refresh(), delayMs)
    this.timer.unref()
  }

  private async fetchKeySet(): Promise<FetchedJson> {
    if (this.cfg.jwksUri) return this.fetchJson(this.cfg.jwksUri)
    if (this.cfg.jwksFile)
      return { body: JSON.parse(await readFile(this.cfg.jwksFile, 'utf8')), maxAgeMs: undefined }
    // discovery: re-discover only when we have no jwks_uri yet or the last refresh failed
    if (!this.discoveredJwksUri || this.lastError) this.discoveredJwksUri = await this.discover()
    // the bearer token is a credential of this cluster: it goes where the operator pointed (the issuer, a
    // configured jwksUri), never to another origin a discovery document names, as a browser drops
    // Authorization on a cross-origin redirect
    return this.fetchJson(this.discoveredJwksUri, sameOrigin(this.discoveredJwksUri, this.issuer))
  }

  private async discover(): Promise<string> {
    const base = this.issuer.endsWith('/') ? this.issuer.slice(0, -1) : this.issuer
    const doc = (await this.fetchJson(`${base}/.well-known/openid-configuration`)).body
    if (!isRecord(doc)) throw new Error('discovery document is not a JSON object')
    if (doc['issuer'] !== this.issuer)
      throw new Error('discovery document issuer does not match the configured issuer')
    const uri = doc['jwks_uri']
    if (typeof uri !== 'string' || !/^https?:\/\//.test(uri))
      throw new Error('discovery document has no http(s) jwks_uri')
    // the keys are what every token's trust rests on: a document read over TLS cannot have them fetched in
    // the clear, where anyone on the path could answer with keys of their own
    if (/^https:\/\//i.test(base) && !uri.startsWith('https://'))
      throw new Error('discovery document of an https issuer names a jwks_uri that is not https')
    return uri
  }

  private async fetchJson(url: string, sendToken = true): Promise<FetchedJson> {
    const headers: Record<string, string> = { accept: this.accept }
    // projected service-account tokens rotate: read the file on every fetch
    if (this.cfg.bearerTokenFile && sendToken) {
      headers['authorization'] = `Bearer ${(await readFile(this.cfg.bearerTokenFile, 'utf8')).trim()}`
    }
    return fetchJsonResponse(url, {
      timeoutMs: this.fetchTimeoutMs,
      maxBytes: MAX_DOCUMENT_BYTES,
      headers,
      dispatcher: await this.dispatcher(),
    })
  }

  /** A dispatcher trusting caFile (re-read on each refresh, as cluster CAs rotate), else the global one. */
  private async dispatcher(): Promise<Dispatcher | undefined> {
    if (!this.cfg.caFile) return undefined
    const { Agent } = await loadUndici()
    const ca = await readFile(this.cfg.caFile, 'utf8')
    if (!this.agent || ca !== this.agentCa) {
      void this.agent?.close().catch(() => {})
      this.agent = new Agent({ connect: { ca } })
      this.agentCa = ca
    }
    return this.agent
  }
}

function sameOrigin(a: string, b: string): boolean {
  try {
    return new URL(a).origin === new URL(b).origin
  } catch {
    return false
  }
}

export interface FetchJsonOptions {
  /** deadline for the whole fetch, headers and body */
  timeoutMs: number
  /** a larger body is refused */
  maxBytes: number
  headers?: Record<string, string>
  dispatcher?: Dispatcher | undefined
}

/**
 * GET one JSON document with a deadline and a size cap; throws with a message safe to log (no query string, no
 * credentials). Shared by every fetcher of published documents (key sets, crawler IP ranges).
 */
export async function fetchJsonDocument(url: string, opts: FetchJsonOptions): Promise<unknown> {
  return (await fetchJsonResponse(url, opts)).body
}

export interface FetchedJson {
  body: unknown
  /** how long the answer is fresh by its Cache-Control (less its Age); undefined when it does not say */
  maxAgeMs: number | undefined
}

/** fetchJsonDocument, with how long the server says the document stays fresh */
export async function fetchJsonResponse(url: string, opts: FetchJsonOptions): Promise<FetchedJson> {
  const { request } = await loadUndici()
  const basic = userinfoAuthorization(url)
  const res = await request(url, {
    method: 'GET',
    headers: { accept: 'application/json', ...(basic ? { authorization: basic } : {}), ...opts.headers },
    ...(opts.dispatcher ? { dispatcher: opts.dispatcher } : {}),
    signal: AbortSignal.timeout(opts.timeoutMs),
    headersTimeout: opts.timeoutMs,
    bodyTimeout: opts.timeoutMs,
  })
  if (res.statusCode !== 200) {
    await res.body.dump().catch(() => {})
    throw new Error(`GET ${safeUrl(url)} answered HTTP ${res.statusCode}`)
  }
  const body = await readBounded(res.body, opts.maxBytes)
  if (body === undefined) throw new Error(`GET ${safeUrl(url)} answered more than ${opts.maxBytes} bytes`)
  return {
    body: JSON.parse(body.toString('utf8')),
    maxAgeMs: freshForMs(res.headers['cache-control'], res.headers['age']),
  }
}

/**
 * The freshness lifetime a response's Cache-Control gives it, less the Age a cache in front of the server
 * has held it for (RFC 9111 4.2): `no-store` and a bare `no-cache` are 0, a `max-age` that is not a number of
 * seconds says nothing. undefined when the server says nothing.
 */
export function freshForMs(
  cacheControl: string | string[] | undefined,
  age: string | string[] | undefined,
): number | undefined {
  if (cacheControl === undefined) return undefined
  let maxAge: number | undefined
  for (const directive of (Array.isArray(cacheControl) ? cacheControl.join(',') : cacheControl).split(',')) {
    const eq = directive.indexOf('=')
    const name = (eq === -1 ? directive : directive.slice(0, eq)).trim().toLowerCase()
    // no-cache="field" only keeps those fields from being reused: it says nothing of the keys
    if (name === 'no-store' || (name === 'no-cache' && eq === -1)) return 0
    if (name !== 'max-age' || eq === -1) continue
    const value = directive
      .slice(eq + 1)
      .trim()
      .replace(/^"(.*)"$/, '$1')
    if (/^\d{1,10}$/.test(value)) maxAge = Math.min(maxAge ?? Number.POSITIVE_INFINITY, Number(value))
  }
  if (maxAge === undefined) return undefined
  const held = Array.isArray(age) ? age[0] : age
  const heldFor = held !== undefined && /^\d{1,10}$/.test(held.trim()) ? Number(held.trim()) : 0
  return Math.max(0, maxAge - heldFor) * 1000
}

/**
 * When the next refresh after a successful one runs: at refreshInterval, or sooner when the key set's answer
 * says it goes stale sooner (an IdP that announces a rotation through a short max-age), never sooner than
 * `floorMs`, so that a `max-age=0` or `no-store` cannot have the key set fetched in a loop.
 */
export function refreshDelay(refreshMs: number, maxAgeMs: number | undefined, floorMs: number): number {
  if (maxAgeMs === undefined) return refreshMs
  return Math.min(refreshMs, Math.max(maxAgeMs, floorMs))
}

/**
 * The key set's public signing keys, each imported as a verification would import it: a key that parses as
 * JSON but cannot verify anything (a truncated modulus, a point off its curve, a 1024-bit RSA key) must not
 * replace the last good keys as if the refresh had succeeded, which would fail every token as
 * bad_signature while the issuer looks healthy. Such keys are left out and reported; a set left with none
 * fails like an empty one, so the last good keys keep serving.
 */
async function buildKeySet(
  doc: unknown,
): Promise<{ set: LocalKeySet; keys: JWK[]; unusable: UnusableKeys | undefined }> {
  if (!isRecord(doc) || !Array.isArray(doc['keys']))
    throw new Error('key set is not a JWKS ({"keys": [...]})')
  const keys: JWK[] = []
  let unusable: UnusableKeys | undefined
  for (const k of doc['keys'].slice(0, MAX_KEYS)) {
    // symmetric keys never come from a JWKS (algorithm confusion); private members mean a leaked private key
    if (!isRecord(k) || typeof k['kty'] !== 'string' || k['kty'] === 'oct') continue
    if (PRIVATE_MEMBERS.some((m) => m in k)) continue
    // encryption keys (Keycloak and Entra ID publish them next to the signing keys) are no one's to verify with
    if (!forSignatures(k)) continue
    const why = await whyUnusable(k)
    if (why === undefined) keys.push(k as JWK)
    else if (unusable) unusable.count++
    else unusable = { count: 1, reason: `${describeKey(k)}: ${why}` }
  }
  if (keys.length === 0)
    throw new Error(
      `key set has no usable public signing keys${unusable ? ` (${unusable.count} unusable; ${unusable.reason})` : ''}`,
    )
  return { set: createLocalJWKSet({ keys }), keys, unusable }
}

// JWE key-management algorithms: a key with one of these is for encryption
const ENCRYPTION_ALGORITHM = /^(?:RSA1_5|RSA-OAEP|ECDH-ES|A\d+(?:GCM)?KW$|dir$|PBES2-)/

/** what jose's key selection would ever pick for a signature: not a key marked for encryption */
function forSignatures(k: Record<string, unknown>): boolean {
  if (typeof k['use'] === 'string' && k['use'] !== 'sig') return false
  if (Array.isArray(k['key_ops']) && !k['key_ops'].includes('verify')) return false
  return typeof k['alg'] !== 'string' || !ENCRYPTION_ALGORITHM.test(k['alg'])
}

/** undefined when the key imports for an algorithm it can verify, else why not (safe to log) */
async function whyUnusable(k: Record<string, unknown>): Promise<string | undefined> {
  const alg = typeof k['alg'] === 'string' ? k['alg'] : importAlgorithm(k)
  if (alg === undefined || !SIGNATURE_ALGORITHMS.has(alg))
    return `no supported signature algorithm for a ${short(k['kty'])} key (alg ${short(k['alg'])}, crv ${short(k['crv'])})`
  let key: CryptoKey | Uint8Array
  try {
    key = await importJWK(k as JWK, alg)
  } catch {
    return `does not import as a ${alg} key`
  }
  if (key instanceof Uint8Array) return 'not a public key'
  const { modulusLength, publicExponent } = key.algorithm as {
    modulusLength?: number
    publicExponent?: Uint8Array
  }
  if (modulusLength !== undefined && modulusLength < MIN_RSA_BITS)
    return `an RSA modulus of ${modulusLength} bits (at least ${MIN_RSA_BITS})`
  // an even exponent, or 1, is no RSA key's: no signature verifies with it
  if (publicExponent !== undefined) {
    const e = BigInt(`0x0${Buffer.from(publicExponent).toString('hex')}`)
    if (e < 3n || e % 2n === 0n) return 'an RSA public exponent no RSA key has'
  }
  return undefined
}

function short(v: unknown): string {
  return typeof v === 'string' ? JSON.stringify(v.slice(0, 16)) : 'none'
}

/** the algorithm a key without `alg` is imported for: any its type and curve can verify */
function importAlgorithm(k: Record<string, unknown>): string | undefined {
  switch (k['kty']) {
    case 'RSA':
      return 'RS256'
    case 'EC':
      return typeof k['crv'] === 'string' ? EC_CURVE_ALGORITHM[k['crv']] : undefined
    case 'OKP':
      return k['crv'] === 'Ed25519' ? 'Ed25519' : undefined
    default:
      return undefined
  }
}

/** which key, for the log: its kid, cut short */
function describeKey(k: Record<string, unknown>): string {
  return typeof k['kid'] === 'string' ? `kid ${JSON.stringify(k['kid'].slice(0, 64))}` : 'a key without kid'
}

/** the keys of `before` that `after` no longer holds as they were, or undefined when none */
function withdrawnKeys(
  before: readonly JWK[],
  after: readonly JWK[],
): Omit<WithdrawnKeys, 'secret'> | undefined {
  const kept = new Set(after.map((k) => JSON.stringify(k)))
  const kids = new Set<string>()
  let anyKey = false
  for (const k of before) {
    if (kept.has(JSON.stringify(k))) continue
    anyKey = true
    if (typeof k.kid === 'string') kids.add(k.kid)
  }
  return anyKey ? { kids, anyKey } : undefined
}

async function readSecret(path: string): Promise<Uint8Array> {
  const text = (await readFile(path, 'utf8')).replace(/\r?\n$/, '')
  if (text.length === 0) throw new Error('secretFile is empty')
  return new TextEncoder().encode(text)
}

/**
 * The Basic credentials a URL's userinfo names (`https://user:secret@idp/keys`), as curl and Go's client send
 * them: the HTTP client drops the userinfo, so without this a key set behind Basic auth would fail with a 401
 * that names no cause. The fetcher's own Authorization (a bearerTokenFile) wins; `check` refuses the two together.
 */
function userinfoAuthorization(url: string): string | undefined {
  let u: URL
  try {
    u = new URL(url)
  } catch {
    return undefined
  }
  if (u.username === '' && u.password === '') return undefined
  return `Basic ${Buffer.from(`${percentDecoded(u.username)}:${percentDecoded(u.password)}`).toString('base64')}`
}

function percentDecoded(text: string): string {
  try {
    return decodeURIComponent(text)
  } catch {
    return text
  }
}

function safeUrl(url: string): string {
  try {
    const u = new URL(url)
    return `${u.origin}${u.pathname}`
  } catch {
    return '<invalid url>'
  }
}

/** Why a fetch failed, safe to log. */
export function describeFetchError(err: unknown): string {
  if (err instanceof SyntaxError) return 'response is not valid JSON'
  if (err instanceof Error)
    return err.name === 'TimeoutError' || err.name === 'AbortError' ? 'timed out' : err.message
  return String(err)
}
