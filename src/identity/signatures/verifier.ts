// Signed agents: a request signed per HTTP Message Signatures (RFC 9421) as Web Bot Auth profiles it —
// `Signature-Input` with `tag="web-bot-auth"`, `keyid` the JWK thumbprint of a key in the agent's key directory,
// `Signature-Agent` naming that directory — becomes verified evidence of the directory's agent. The signature
// base and the signature itself are the `http-message-signatures` library's; this decides which keys may
// vouch (configured directories only), the time window and replays.
import type { Config } from '../../config/schema.ts'
import type {
  ConnectionInfo,
  Failure,
  FailureReason,
  MaybePromise,
  RequestInfo,
  SignatureEvidence,
} from '../../types.ts'
import type { JwksObserver, KeyMemory } from '../jwt/jwks.ts'
import type { SourceExtractor } from '../sources/source.ts'
import { Authorities } from './authorities.ts'
import { type DirectoryKey, KeyDirectory } from './directory.ts'
import { NonceCache, type NonceStore } from './nonces.ts'

// http-message-signatures is CommonJS. Under Node's own loader and in the bundle's lazily loaded chunk its
// `default` is module.exports; a loader that honours `__esModule` (the TypeScript loader the tests run under)
// makes `default` the package's `exports.default` (its httpbis half) and puts module.exports' members on the
// namespace instead. Take whichever object carries the whole API. It is loaded with the first signed request,
// so a sidecar without signed agents never pays for it.
export type Hms = typeof import('http-message-signatures')
let hms: Promise<Hms> | undefined
const isWholeApi = (m: unknown): m is Hms =>
  typeof m === 'object' && m !== null && 'httpbis' in m && 'ExpiredError' in m && 'createVerifier' in m
export const loadHms = (): Promise<Hms> => {
  hms ??= import('http-message-signatures').then((m) => {
    if (isWholeApi(m.default)) return m.default
    if (isWholeApi(m)) return m
    throw new Error('http-message-signatures: unexpected module shape')
  })
  return hms
}

export const WEB_BOT_AUTH_TAG = 'web-bot-auth'
const MAX_SIGNATURE_AGENT_CHARS = 2048
const MAX_SHOWN_KEYID = 64
/** Web Bot Auth nonces are 64 random bytes (88 base64 characters); longer ones would inflate the nonce cache */
const MAX_NONCE_CHARS = 256
/**
 * Web Bot Auth labels one request may carry (an agent signs once; intermediaries may add their own). Each
 * costs a signature check, and the headers of one unsigned request could otherwise carry some sixty.
 */
const MAX_WEB_BOT_AUTH_LABELS = 4

export interface SignatureVerifierOptions {
  observer?: JwksObserver
  /** unix ms clock */
  now?: () => number
  fetchTimeoutMs?: number
  unknownKeyCooldownMs?: number
  retryMs?: number
  /** the nonces of the process or pod, kept across reloads; default: a cache of this verifier's own */
  nonces?: NonceStore
  /** the directories' last good keys, kept across reloads */
  keyMemory?: KeyMemory
}

type Result = SignatureEvidence | Failure

/**
 * A Web Bot Auth label whose signature verified. `until`: unix ms from which it no longer verifies, whatever
 * it says
 */
interface Verified {
  directory: KeyDirectory
  keyid: string
  nonce?: string
  until: number
}

/** What the key lookup learnt while the library walked the request's signatures. */
interface Walk {
  failure?: Failure
  labels: number
  /**
   * In label order. Every one of them goes upstream with the request and can be lifted out of it: each
   * one's nonce is spent, not just the one the identity is named after.
   */
  verified: Verified[]
}

/**
 * The headers a signature is read from, whose other spellings (Signature_Agent) an upstream that checks
 * signatures again would merge with them (pipeline/read-headers.ts strips and counts those). `signature` has
 * no "-" to spell otherwise: its case variants are one header to Node as to the upstream.
 */
const READ_HEADERS = ['signature-input', 'signature-agent'] as const

export class SignatureVerifier implements SourceExtractor<SignatureEvidence> {
  readonly source = 'signature' as const
  readonly readHeaders = READ_HEADERS
  readonly directories: readonly KeyDirectory[]
  private readonly now: () => number
  private readonly skewSeconds: number
  private readonly maxAgeSeconds: number
  private readonly requireNonce: boolean
  /** signedAgents.authorities; undefined when empty (any @authority) */
  private readonly authorities: Authorities | undefined
  /** keyid + nonce of every accepted signature while it can still verify: a second use is a replay */
  private readonly nonces: NonceStore
  /** the cache this verifier made itself (no store given), forgotten with it */
  private readonly ownNonces: NonceCache | undefined

  constructor(cfg: Config['signedAgents'], opts: SignatureVerifierOptions = {}) {
    this.now = opts.now ?? Date.now
    this.skewSeconds = Math.ceil(cfg.clockSkew / 1000)
    this.maxAgeSeconds = Math.ceil(cfg.maxAge / 1000)
    this.requireNonce = cfg.requireNonce
    this.authorities = cfg.authorities.length > 0 ? new Authorities(cfg.authorities) : undefined
    const keySetOptions = {
      observer: opts.observer,
      now: this.now,
      fetchTimeoutMs: opts.fetchTimeoutMs,
      unknownKidCooldownMs: opts.unknownKeyCooldownMs,
      retryMs: opts.retryMs,
      memory: opts.keyMemory,
    }
    this.directories = cfg.directories.map((d) => new KeyDirectory(d, keySetOptions))
    this.ownNonces = opts.nonces ? undefined : new NonceCache(cfg.nonceCacheSize)
    this.nonces = opts.nonces ?? this.ownNonces!
  }

  /** Initial fetch of every directory. Never throws: a directory that is down leaves its keys unavailable. */
  async start(): Promise<void> {
    await Promise.all(this.directories.map((d) => d.keys.start()))
  }

  close(): void {
    for (const d of this.directories) d.keys.close()
    this.ownNonces?.clear()
  }

  extract(req: RequestInfo, conn: ConnectionInfo): MaybePromise<Result | undefined> {
    if (req.headers['signature-input'] === undefined) return undefined
    return this.verify(req, conn)
  }

  /** evidence, a failure, or undefined for signatures that are not Web Bot Auth (the service's own business) */
  async verify(req: RequestInfo, conn: ConnectionInfo): Promise<Result | undefined> {
    try {
      return await this.check(req, conn)
    } catch {
      // defensive: client input must never surface as an exception
      return failure('signature_invalid', 'signature could not be processed')
    }
  }

  private async check(req: RequestInfo, conn: ConnectionInfo): Promise<Result | undefined> {
    const headers = req.headers
    // an RFC 9421 signature is declared by Signature-Input: a Signature header alone is the older draft-cavage
    // scheme ActivityPub servers sign every inbox delivery with, the service's own business like any signature
    // that is not Web Bot Auth
    if (headers['signature-input'] === undefined) return undefined
    if (typeof headers['signature'] !== 'string' || typeof headers['signature-input'] !== 'string') {
      return failure('signature_invalid', 'Signature and Signature-Input must both be present, once')
    }
    // HTTP/2 names the host in :authority (RFC 9113 §8.3.1), as the upstream request does (proxy/headers.ts)
    const host = headers.host ?? headers[':authority']
    if (typeof host !== 'string' || host === '') return failure('signature_invalid', 'no Host to check')
    const agentHeader = headers['signature-agent']
    let candidates: readonly KeyDirectory[] = this.directories
    // what Signature-Agent names fails a Web Bot Auth label only: beside the service's own signatures (another
    // tag) it is the service's business too
    let agentFailure: Failure | undefined
    if (agentHeader !== undefined) {
      const named = namedDirectories(agentHeader, this.directories)
      if (named === 'malformed')
        agentFailure = failure('signature_invalid', 'Signature-Agent is not a URL string')
      else if (named.length === 0) {
        agentFailure = failure(
          'signature_unknown_key',
          'Signature-Agent names a directory that is not configured',
        )
      } else candidates = named
    }
    // the target as sent, not as normalized for rules and the upstream: the agent signed what it sent
    // (/x;p=1, /%7Euser), and its normalized form is a function of that
    const url = `${conn.tls ? 'https' : 'http'}://${host}${req.sentTarget ?? req.url}`
    const foreign = this.authorities !== undefined && !authorityAllowed(url, this.authorities)
    const lib = await loadHms()
    const walk: Walk = { labels: 0, verified: [] }
    const keyLookup = async (params: Record<string, unknown>) => {
      if (params['tag'] !== WEB_BOT_AUTH_TAG) return null
      if (++walk.labels > MAX_WEB_BOT_AUTH_LABELS) return null
      // the named server is never contacted, nor any configured directory searched in its place
      if (agentFailure) {
        walk.failure ??= agentFailure
        return null
      }
      // refused before any key lookup: a signature made for another site never costs a directory fetch
      if (foreign) {
        walk.failure ??= failure('signature_invalid', '@authority is not one of signedAgents.authorities')
        return null
      }
      const found = await this.lookup(params, candidates)
      if ('failed' in found) {
        walk.failure ??= found
        return null
      }
      return {
        id: found.keyid,
        algs: [found.key.alg],
        verify: async (data: Buffer, signature: Buffer) => {
          // the library looks every label up before it checks any: too many are refused without a check
          if (walk.labels > MAX_WEB_BOT_AUTH_LABELS) return false
          // header strings read off the wire are latin1 (rawHeaders says so); explain's -H values are text
          const base = req.rawHeaders === undefined ? data : receivedBytes(data)
          const ok = await lib.createVerifier(found.key.key, found.key.alg)(base, signature)
          if (ok) walk.verified.push(found.accepted)
          return ok
        },
      }
    }
    const requiredFields = ['@authority']
    // the directory named in Signature-Agent is only believed when the signature covers the header
    if (agentHeader !== undefined) requiredFields.push('signature-agent')
    let result: boolean | null = null
    let thrown = false
    let error: unknown
    try {
      result = await lib.httpbis.verifyMessage(
        {
          keyLookup,
          tolerance: this.skewSeconds,
          maxAge: this.maxAgeSeconds,
          notAfter: Math.floor(this.now() / 1000),
          requiredParams: ['created', 'expires', 'keyid'],
          requiredFields,
          componentParser: fieldFromLines,
        },
        {
          method: req.method,
          url,
          headers: headers as Record<string, string | string[]>,
          rawHeaders: req.rawHeaders,
        } as SignedRequest,
      )
    } catch (err) {
      thrown = true
      error = err
    }
    // The first label that verified names the request, whatever became of the others (an intermediary's
    // whose directory is not configured here, one altered on the way): the library answers for the last
    // label it checked, and throws for any label, so its answer alone would make the verdict depend on
    // the labels' order
    const first = walk.verified[0]
    let outcome: Result | undefined
    if (walk.labels > MAX_WEB_BOT_AUTH_LABELS) outcome = tooManyLabels()
    else if (first) outcome = evidenceOf(first)
    else if (thrown) {
      outcome =
        error instanceof lib.ExpiredError
          ? failure('signature_expired', 'signature has expired')
          : error instanceof lib.UnacceptableSignatureError
            ? failure('signature_invalid', 'signature does not cover @authority and Signature-Agent')
            : (walk.failure ?? failure('signature_invalid', 'signature headers are malformed'))
    } else if (walk.failure) outcome = walk.failure
    else if (result === null) outcome = undefined
    else outcome = failure('signature_invalid', 'signature does not verify')
    // a label that verified was presented here whatever becomes of the request (which goes upstream all the
    // same when it is only observed): its nonce is spent, and a replay of any label outranks other failures
    const refused = await this.spend(walk.verified)
    if (refused?.reason === 'signature_replayed') return refused
    // a nonce the cache could not take refuses only a request that would verify
    const verifies = outcome !== undefined && !('failed' in outcome)
    return verifies && refused ? refused : outcome
  }

  /** The key a Web Bot Auth signature names, after its time window and nonce rules; never throws. */
  private async lookup(
    params: Record<string, unknown>,
    candidates: readonly KeyDirectory[],
  ): Promise<
    | Failure
    | {
        keyid: string
        key: DirectoryKey
        accepted: Verified
      }
  > {
    const keyid = params['keyid']
    if (typeof keyid !== 'string' || keyid === '') return failure('signature_invalid', 'no keyid')
    const now = Math.floor(this.now() / 1000)
    const created = params['created'] instanceof Date ? params['created'].getTime() / 1000 : Number.NaN
    const expires = typeof params['expires'] === 'number' ? params['expires'] : Number.NaN
    // RFC 9421 §2.3: both are Integers. A string the library turns into an Invalid Date (NaN) would pass
    // every comparison below and the library's own, and take the signature out of maxAge.
    if (!Number.isSafeInteger(created) || !Number.isSafeInteger(expires)) {
      return failure('signature_invalid', 'created and expires must be integers', keyid)
    }
    if (created - this.skewSeconds > now) return failure('not_yet_valid', 'created is in the future', keyid)
    // maxAge caps expires: the last second in which this signature verifies
    const lastSecond = Math.min(expires, created + this.maxAgeSeconds) + this.skewSeconds
    if (now > lastSecond) return failure('signature_expired', 'signature has expired', keyid)
    const nonce = params['nonce']
    if (nonce !== undefined && (typeof nonce !== 'string' || nonce.length > MAX_NONCE_CHARS)) {
      return failure('signature_invalid', 'nonce is not a string of at most 256 characters', keyid)
    }
    if (nonce === undefined && this.requireNonce) {
      return failure('signature_invalid', 'a nonce is required', keyid)
    }
    const until = (lastSecond + 1) * 1000
    const found = (directory: KeyDirectory, key: DirectoryKey) => ({
      keyid,
      key,
      accepted: { directory, keyid, nonce, until },
    })
    // the keys every directory has now come first, and in config order: any client can send a keyid no
    // directory has, and the refetch that starts must not hold up the signatures of a directory that has
    // its key while another directory's server hangs
    const held = await Promise.all(candidates.map((d) => d.key(keyid)))
    for (const [i, key] of held.entries()) if (key) return found(candidates[i]!, key)
    // then each directory refetched side by side (each at most once per cooldown, up to the fetch timeout),
    // and the first to have the key answers, without waiting for a slower one
    const refetched = await firstOf(
      candidates.map(async (d) => {
        const key = await d.refetchedKey(keyid)
        return key && found(d, key)
      }),
    )
    if (refetched) return refetched
    return candidates.some((d) => d.loaded())
      ? failure('signature_unknown_key', 'no configured key directory has this keyid', keyid)
      : failure('keys_unavailable', 'the key directory has not been fetched yet', keyid)
  }

  /**
   * The nonces of the verified labels, each remembered while its signature can verify: a failure when any was
   * seen before. When the cache is full of nonces that can all still verify, the signature is refused:
   * forgetting one of them would let its signature be replayed. A store that cannot be asked refuses it for
   * the same reason.
   */
  private async spend(verified: readonly Verified[]): Promise<Failure | undefined> {
    const keys = new Map<string, Verified>()
    // one nonce under two labels is one use of it, remembered while the longer-lived of them can verify
    for (const v of verified) {
      if (v.nonce === undefined) continue
      const key = `${v.keyid} ${v.nonce}`
      const seen = keys.get(key)
      if (seen === undefined || seen.until < v.until) keys.set(key, v)
    }
    if (keys.size === 0) return undefined
    const now = this.now()
    const admitted = await Promise.all(
      [...keys].map(async ([key, v]) => ({ v, answer: await this.nonces.admit(key, v.until, now) })),
    )
    const replayed = admitted.find((a) => a.answer === 'replayed')
    if (replayed) return failure('signature_replayed', 'nonce was already used', replayed.v.keyid)
    const full = admitted.find((a) => a.answer === 'full')
    if (full) return failure('replay_cache_full', 'the nonce cache is full of live nonces', full.v.keyid)
    const unanswered = admitted.find((a) => a.answer === 'unanswered')
    if (unanswered) {
      return failure('replay_cache_full', "the pod's nonce cache did not answer in time", unanswered.v.keyid)
    }
    return undefined
  }
}

/** The request as the library reads it, with the header lines as received. */
interface SignedRequest {
  method: string
  url: string
  headers: Record<string, string | string[]>
  rawHeaders: readonly string[] | undefined
}

/**
 * A field's value as RFC 9421 §2.1 has it: each of its lines stripped of whitespace at either end, then
 * joined with ", " (or, with `;bs`, each line a byte sequence, §2.1.3), where Node joined the lines before
 * stripping the value: an empty last line (`v` and ``: "v, ") lost its ", ". The lines are read from the raw
 * header lines. A field Node keeps one line of (User-Agent, Content-Type…) or joins otherwise (Cookie) is
 * Node's value, the one forwarded. Bytes past ASCII are the bytes received (see receivedBytes). null: the
 * library's own derivation (a derived component, a structured field, `;req`).
 */
function fieldFromLines(
  name: string,
  params: Map<string, string | number | boolean>,
  message: unknown,
): string[] | null {
  if (name.charCodeAt(0) === 64 /* @ */ || params.has('sf') || params.has('key') || params.has('req')) {
    return null
  }
  const { headers, rawHeaders } = message as SignedRequest
  const value = headers[name]
  if (typeof value !== 'string') return null
  let lines: string[] = []
  if (rawHeaders !== undefined) {
    for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
      if (rawHeaders[i]!.toLowerCase() === name) lines.push(rawHeaders[i + 1]!.trim())
    }
  }
  if (lines.join(', ') !== value) lines = [value.trim()]
  if (!params.has('bs')) return [lines.join(', ')]
  let out = ''
  for (const line of lines)
    out += `${out === '' ? '' : ', '}:${Buffer.from(line, 'latin1').toString('base64')}:`
  return [out]
}

/**
 * The signature base as the bytes the client sent. Node reads header bytes as latin1, one character a byte,
 * and the library encodes the base as UTF-8: a field value with a byte past ASCII (an agent's "é", sent as
 * UTF-8) would be checked as other bytes than were signed. A base with a character no byte stands for is left
 * as it is (and does not verify).
 */
function receivedBytes(base: Buffer): Buffer {
  let i = 0
  while (i < base.length && base[i]! < 0x80) i++
  if (i === base.length) return base
  const text = base.toString('utf8')
  for (let c = 0; c < text.length; c++) if (text.charCodeAt(c) > 0xff) return base
  return Buffer.from(text, 'latin1')
}

/** The evidence a verified label gives: its directory's agent. */
function evidenceOf(v: Verified): SignatureEvidence {
  const d = v.directory
  const ev: SignatureEvidence = {
    source: 'signature',
    verified: true,
    name: d.name,
    kind: d.kind,
    directory: d.url,
    keyid: v.keyid,
  }
  if (d.operator !== undefined) ev.operator = d.operator
  if (d.purpose !== undefined) ev.purpose = d.purpose
  return ev
}

/**
 * The configured directories a Signature-Agent names: an sf-string (`"https://agent.example"`), the members of
 * a dictionary (`sig1="https://agent.example"`, later drafts) or a bare URL. A value naming an origin names
 * a directory configured at that origin's well-known path; one naming a URL, the directory with exactly that URL.
 */
export function namedDirectories(
  header: string | string[],
  directories: readonly KeyDirectory[],
): KeyDirectory[] | 'malformed' {
  const value = Array.isArray(header) ? header.join(', ') : header
  if (value.length > MAX_SIGNATURE_AGENT_CHARS) return 'malformed'
  const urls: string[] = []
  const trimmed = value.trim()
  if (/^https?:\/\/[^\s",]+$/.test(trimmed)) urls.push(trimmed)
  else {
    for (const member of trimmed.split(',')) {
      const m = /^\s*(?:[a-z*][a-z0-9_.*-]*=)?"([^"\\]*)"\s*$/.exec(member)
      if (!m) return 'malformed'
      urls.push(m[1]!)
    }
  }
  const out: KeyDirectory[] = []
  for (const raw of urls) {
    let url: URL
    try {
      url = new URL(raw)
    } catch {
      return 'malformed'
    }
    const originOnly = url.pathname === '/' && url.search === '' && !raw.endsWith('/?')
    for (const d of directories) {
      if (out.includes(d)) continue
      if (originOnly ? d.wellKnown && url.origin === d.origin : url.href === d.href) out.push(d)
    }
  }
  return out
}

/** The first of `pending` to resolve to a value; undefined once all have resolved without one. Never rejects. */
function firstOf<T>(pending: Promise<T | undefined>[]): Promise<T | undefined> {
  return new Promise((resolve) => {
    let left = pending.length
    if (left === 0) resolve(undefined)
    for (const p of pending) {
      p.then(
        (value) => {
          if (value !== undefined) resolve(value)
          else if (--left === 0) resolve(undefined)
        },
        () => {
          if (--left === 0) resolve(undefined)
        },
      )
    }
  })
}

/** The URL's authority is listed: the library derives the covered `@authority` from this same URL. */
function authorityAllowed(url: string, authorities: Authorities): boolean {
  try {
    return authorities.allows(new URL(url))
  } catch {
    return false
  }
}

const tooManyLabels = (): Failure =>
  failure('signature_invalid', `more than ${MAX_WEB_BOT_AUTH_LABELS} Web Bot Auth signatures in one request`)

function failure(reason: FailureReason, detail: string, keyid?: string): Failure {
  const f: Failure = { failed: true, source: 'signature', reason, detail }
  if (keyid !== undefined) f.attributes = { keyid: keyid.slice(0, MAX_SHOWN_KEYID) }
  return f
}
