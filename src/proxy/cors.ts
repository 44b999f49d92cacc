// The CORS fields the upstream answers each browser origin with, learnt from its own responses, for the answers
// the proxy gives on its own behalf (docs/reference.md "Errors"). A page on another origin reads a response only
// when it carries Access-Control-Allow-Origin: without it, a policy deny or an upstream failure reaches the
// page as an opaque network error (fetch() rejects, a gRPC-Web client reports "Http response at 400 or 500
// level") though the upstream serves that origin. The proxy has no CORS policy of its own and invents none:
// an origin gets on the proxy's answers what the upstream last answered it with, or nothing.
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http'
import type { IncomingHttpHeaders as H2Headers } from 'node:http2'
import { LRUCache } from 'lru-cache'
import { lruGet, lruSet } from '../util/lru-get.ts'

/** origins remembered per upstream: the key is client input, so the map is bounded (LRU) */
export const MAX_CORS_ORIGINS = 256
/** how long a grant is believed after the upstream last answered the origin with it */
export const CORS_GRANT_TTL_MS = 10 * 60_000
/**
 * longer origins or expose lists are not learnt (a serialized origin is a scheme, a host of at most 253
 * characters and a port): each entry stays small however the Origin header is stretched
 */
const MAX_FIELD_LENGTH = 1024

/**
 * a serialized origin (RFC 6454 §6.2: scheme, host, port; no path) or `null`, in visible ASCII: what a browser
 * sends, safe to answer with
 */
const ORIGIN = /^(?:null|[A-Za-z][A-Za-z0-9+.-]*:\/\/[!-.0-~]+)$/
/** a field the upstream sent more than once, or not as one string: no grant from it (a browser refuses it) */
const REPEATED = '\n'
/** a list of header names (RFC 9110 §5.6.1), or `*` */
const NAME_LIST =
  /^[\t ]*(?:\*|[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:[\t ]*,[\t ]*[!#$%&'*+.^_`|~0-9A-Za-z-]+)*)[\t ]*$/

/** The upstream's CORS answer to one origin, with the fields the proxy's own answers to it carry. */
interface CorsGrant {
  /** the upstream allowed any origin (`*`): never with credentials */
  readonly wildcard: boolean
  readonly credentials: boolean
  /** access-control-expose-headers as the upstream sent it */
  readonly expose: string | undefined
  /** made once per grant, added to every answer to its origin */
  readonly fields: Readonly<Record<string, string>>
}

/**
 * The grants of one upstream (server.ts makes one per upstream and config: a reload starts with none, so no
 * grant outlives the upstream that gave it). Learning costs nothing for a request without an Origin, and a
 * response without access-control-allow-origin is not looked at; an answer that confirms a known grant
 * allocates nothing.
 */
export class CorsMemory {
  private readonly grants: LRUCache<string, CorsGrant>

  constructor(max = MAX_CORS_ORIGINS, ttlMs = CORS_GRANT_TTL_MS, now?: () => number) {
    // ttlResolution 0: no timer per lookup to cache the clock
    this.grants = new LRUCache<string, CorsGrant>({
      max,
      ttl: ttlMs,
      ttlResolution: 0,
      ...(now ? { perf: { now } } : {}),
    })
  }

  /** origins remembered now */
  get size(): number {
    return this.grants.size
  }

  /** the upstream's response head to `req` as [name, value, …] pairs (the HTTP/1.1 paths) */
  learnFromPairs(req: IncomingMessage, fields: readonly string[]): void {
    const origin = req.headers.origin
    if (origin === undefined) return
    let allow: string | undefined
    let credentials: string | undefined
    let expose: string | undefined
    for (let i = 0; i + 1 < fields.length; i += 2) {
      const name = fields[i]!
      // the three names are 27 characters or more and start with "a": most fields are passed over at once
      if (name.length < 27 || (name.charCodeAt(0) | 0x20) !== 0x61) continue
      const lower = name.toLowerCase()
      if (lower === 'access-control-allow-origin') allow = allow === undefined ? fields[i + 1] : REPEATED
      else if (lower === 'access-control-allow-credentials')
        credentials = credentials === undefined ? fields[i + 1] : REPEATED
      else if (lower === 'access-control-expose-headers')
        expose = expose === undefined ? fields[i + 1] : `${expose}, ${fields[i + 1]}`
    }
    if (allow !== undefined) this.learn(req, origin, allow, credentials, expose)
  }

  /** an HTTP/2 upstream's response head to `req` (node:http2 joins a repeated field with ", ") */
  learnFromHeaders(req: IncomingMessage, fields: H2Headers): void {
    const origin = req.headers.origin
    if (origin === undefined) return
    const allow = fields['access-control-allow-origin']
    if (allow === undefined) return
    const credentials = fields['access-control-allow-credentials']
    const expose = fields['access-control-expose-headers']
    this.learn(
      req,
      origin,
      typeof allow === 'string' ? allow : REPEATED,
      typeof credentials === 'string' ? credentials : undefined,
      typeof expose === 'string' ? expose : undefined,
    )
  }

  /**
   * The upstream answered `origin` with access-control-allow-origin `allow`: a grant when that is the origin
   * itself or `*`, and the end of any grant when it is something else. A preflight's answer carries no expose
   * list as a rule: it keeps the one the upstream's actual responses gave.
   */
  private learn(
    req: IncomingMessage,
    origin: string,
    allow: string,
    credentials: string | undefined,
    expose: string | undefined,
  ): void {
    const wildcard = allow === '*'
    if (!wildcard && allow !== origin) {
      this.grants.delete(origin)
      return
    }
    const known = lruGet(this.grants, origin)
    const preflight = req.method === 'OPTIONS' && req.headers['access-control-request-method'] !== undefined
    // the Fetch standard reads only a case-sensitive `true`, and never with `*`
    const withCredentials = !wildcard && credentials === 'true'
    let exposed =
      expose !== undefined && expose.length <= MAX_FIELD_LENGTH && NAME_LIST.test(expose) ? expose : undefined
    if (preflight && expose === undefined) exposed = known?.expose
    if (
      known !== undefined &&
      known.wildcard === wildcard &&
      known.credentials === withCredentials &&
      known.expose === exposed
    ) {
      // confirmed: believed for another ttl from now
      lruSet(this.grants, origin, known)
      return
    }
    if (origin.length > MAX_FIELD_LENGTH || !ORIGIN.test(origin)) return
    const fields: Record<string, string> = { 'access-control-allow-origin': wildcard ? '*' : origin }
    if (withCredentials) fields['access-control-allow-credentials'] = 'true'
    if (exposed !== undefined) fields['access-control-expose-headers'] = exposed
    // whether the answer carries them depends on the Origin: a cache must not hand it to another origin
    fields['vary'] = 'Origin'
    lruSet(this.grants, origin, {
      wildcard,
      credentials: withCredentials,
      expose: exposed,
      fields: Object.freeze(fields),
    })
  }

  /**
   * The CORS fields for the proxy's own answer to a request with this Origin (and `Vary: Origin`), as the
   * upstream last answered that origin; undefined when it never allowed it (or not within the ttl).
   */
  answerFields(origin: IncomingHttpHeaders['origin']): Readonly<Record<string, string>> | undefined {
    if (origin === undefined) return undefined
    return lruGet(this.grants, origin)?.fields
  }
}
