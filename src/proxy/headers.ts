// Header rewriting for both directions of the hop (docs/reference.md "Headers", RFC 9110 §7.6.1).
// Header-name sets are built once; a request costs one pass over its headers.
import type { IncomingHttpHeaders } from 'node:http'
import { isIP } from 'node:net'
import { isForwardedCertHeader } from '../identity/forwarded/headers.ts'
import { METHOD_OVERRIDE_HEADERS } from '../policy/policy.ts'
import type { Identity } from '../types.ts'
import { isIdentityHeaderName, normalizeHeaderName } from '../util/header-names.ts'
import { escapeLoneSurrogates } from '../util/lone-surrogate.ts'
import { answersWithoutContent } from './h1-pool.ts'
import type { TraceContext } from './ids.ts'

/** Hop-by-hop headers that never cross the proxy (in either direction). */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  // RFC 9113 §3.2.1: only meaningful with an h2c upgrade, which the proxy never performs
  'http2-settings',
])

const HOP_BY_HOP_LENGTHS = new Set([...HOP_BY_HOP].map((name) => name.length))

/** A hop-by-hop field name (lower case): never passed on, in either direction, whatever the protocols. */
export function isHopByHop(name: string): boolean {
  return HOP_BY_HOP.has(name)
}

/**
 * Request headers we set ourselves, so incoming copies are dropped (x-forwarded-for is appended to below, and
 * x-forwarded-proto and -host when a trusted proxy sent them).
 */
const SET_BY_PROXY = new Set([
  'x-request-id',
  'traceparent',
  'tracestate',
  'x-forwarded-for',
  'x-forwarded-proto',
  'x-forwarded-host',
  // answered by the proxy's own HTTP server; the upstream client must not repeat it
  'expect',
])

/**
 * Headers by which a proxy tells its upstream the client's address: web frameworks' client-IP middleware and
 * nginx's realip module believe them from their own proxy, this sidecar. From a peer that is not a trusted
 * proxy they are the client's claim about itself and are dropped; a trusted proxy's pass.
 */
const CLIENT_ADDRESS = new Set([
  'x-real-ip',
  'true-client-ip',
  'cf-connecting-ip',
  'x-client-ip',
  'fastly-client-ip',
  'x-cluster-client-ip',
  // Rails' remote_ip and PHP frameworks read HTTP_CLIENT_IP
  'client-ip',
])

/**
 * Headers by which a proxy tells its upstream what the request looked like before it: the scheme and port
 * (Rack, Spring, Symfony, Laravel read x-forwarded-port, -ssl, -scheme, x-url-scheme), the path prefix it
 * stripped (x-forwarded-prefix: Spring, ASP.NET Core, Werkzeug, Symfony; x-forwarded-path: Kong), the URL it
 * rewrote (x-original-url, x-rewrite-url: IIS, Symfony, Zend; x-original-uri) and the method and URI a
 * forward-auth check is asked about (x-forwarded-method, x-forwarded-uri: Traefik's ForwardAuth, read by
 * Authelia and oauth2-proxy; x-original-method: nginx auth_request set-ups). An app believes them from its
 * local proxy, this sidecar: from a client they would let it say it arrived over TLS, or name another path or
 * method than the one the policy decided on. Like CLIENT_ADDRESS, dropped unless a trusted proxy sent them.
 */
const REQUEST_BEFORE_PROXY = new Set([
  'x-forwarded-port',
  'x-forwarded-ssl',
  'x-forwarded-scheme',
  'x-url-scheme',
  'front-end-https',
  'x-forwarded-prefix',
  'x-original-url',
  'x-rewrite-url',
  'x-original-uri',
  'x-forwarded-path',
  'x-forwarded-uri',
  'x-forwarded-method',
  'x-original-method',
])

/**
 * Request headers no upstream gets, though they are not hop-by-hop: `Proxy` is HTTP_PROXY to a CGI, WSGI or
 * Rack app and to Go's net/http/cgi, where HTTP clients take it for their outbound proxy ("httpoxy"); it names
 * nothing standard a client has to send.
 */
const NEVER_FORWARDED = new Set(['proxy'])

const DROPPED = 0
const UNLESS_TRUSTED = 1
/** What the request pass does with an exact name: one lookup per header, whatever the outcome. */
const REQUEST_NAME_RULE = new Map<string, typeof DROPPED | typeof UNLESS_TRUSTED>([
  ...[...HOP_BY_HOP, ...SET_BY_PROXY, ...NEVER_FORWARDED].map((name) => [name, DROPPED] as const),
  ...[...CLIENT_ADDRESS, ...REQUEST_BEFORE_PROXY].map((name) => [name, UNLESS_TRUSTED] as const),
])

/**
 * Whether the peer is one of forwardedClientCert.trustedProxies: known outright, or the pipeline that can tell,
 * asked only for a request carrying a header whose fate depends on it.
 */
export type PeerTrust = boolean | { trustedProxy?(remoteAddress: string): boolean } | undefined

function peerTrusted(trust: PeerTrust, peer: string): boolean {
  return typeof trust === 'object' ? trust.trustedProxy?.(peer) === true : trust === true
}

/** Request headers the proxy writes on every forwarded request (lower-case, as sent). */
export const ADDED_REQUEST_HEADERS: readonly string[] = [
  'x-nhi-identity',
  'x-nhi-kind',
  'x-nhi-source',
  'x-nhi-verified',
  ...SET_BY_PROXY,
].filter((name) => name !== 'expect')

const SAFE_VALUE_RE = /^[\x20-\x7e]*$/
// "%" too is encoded: a name holding escapes of its own ("%61dmin", "caf%C3%A9") would otherwise reach the
// upstream as the encoding of another name ("admin", "café"), and the header would not decode to one name.
// So is a name with a space at either end: a field value's leading and trailing whitespace is not part of it
// (RFC 9110 §5.5), every parser drops it, and "admin " would reach the upstream as "admin".
const SAFE_NAME_RE = /^(?! )[\x20-\x24\x26-\x7e]*(?<! )$/

/** Header names listed in a Connection header, lower-cased; undefined for the common single tokens. */
function connectionListed(connection: string | undefined): Set<string> | undefined {
  if (connection === undefined || connection === 'keep-alive' || connection === 'close') return undefined
  const listed = new Set<string>()
  for (const token of connection.split(',')) {
    const name = token.trim().toLowerCase()
    if (name) listed.add(name)
  }
  return listed
}

/**
 * Header values we derive from client-controlled text (token claims, certificate fields) must stay printable
 * ASCII; anything else, any value holding a "%" and any value with a space at either end, is percent-encoded as
 * UTF-8, so that decoding always gives the value back. Never throws: a lone surrogate (a token claim can hold
 * one), which UTF-8 cannot carry, is written as its escape (`\ud800`, sent `%5Cud800`), as the metrics label
 * and the audit line write it; as U+FFFD it would name the identity whose name holds a real U+FFFD.
 */
export function safeHeaderValue(value: string): string {
  if (SAFE_NAME_RE.test(value)) return value
  try {
    return encodeURIComponent(value)
  } catch {
    return encodeURIComponent(escapeLoneSurrogates(value))
  }
}

/**
 * Prepared entries for an upstream engine that writes every header as `name: value\r\n` (undici, see
 * undici-pool.ts): an entry whose name holds whole lines and ends with the last line's name is sent as those
 * same lines, for the cost of one. Only names are prepared; values are the request's.
 */
export interface HeaderBlocks {
  /** `identityHeaderBlock` of the identity, when the engine has it entered; undefined otherwise */
  identity(identity: Identity): string | undefined
  /** `x-forwarded-proto: <proto>\r\nx-forwarded-host`, for a request whose x-forwarded-proto is this hop's alone */
  readonly forwardedProto: { readonly http: string; readonly https: string }
  /**
   * `forwardedBlock(clientIp, proto)` when the engine has it entered, for a client that sent no
   * x-forwarded-for and whose x-forwarded-proto is this hop's alone; undefined otherwise
   */
  forwarded(clientIp: string, proto: 'http' | 'https'): string | undefined
}

/**
 * The identity headers' first three lines and the fourth's name, `x-nhi-identity: <name>\r\n…x-nhi-verified`:
 * sent with the verified flag as its value, it is the same four lines. Undefined when a part is not printable
 * ASCII.
 */
export function identityHeaderBlock(identity: Identity): string | undefined {
  const name = safeHeaderValue(identity.name)
  if (!SAFE_VALUE_RE.test(identity.kind) || !SAFE_VALUE_RE.test(identity.source)) return undefined
  return `x-nhi-identity: ${name}\r\nx-nhi-kind: ${identity.kind}\r\nx-nhi-source: ${identity.source}\r\nx-nhi-verified`
}

/** the x-forwarded-for and -proto lines and x-forwarded-host's name; undefined for an address not printable */
export function forwardedBlock(clientIp: string, proto: 'http' | 'https'): string | undefined {
  if (!SAFE_VALUE_RE.test(clientIp)) return undefined
  return `x-forwarded-for: ${clientIp}\r\n${forwardedProtoBlock(proto)}`
}

/** the x-forwarded-proto line and the x-forwarded-host line's name, sent with the forwarded host as value */
export function forwardedProtoBlock(proto: 'http' | 'https'): string {
  return `x-forwarded-proto: ${proto}\r\nx-forwarded-host`
}

function appendChain(existing: string | string[] | undefined, value: string): string {
  if (existing === undefined || existing === '') return value
  return `${Array.isArray(existing) ? existing.join(', ') : existing}, ${value}`
}

const TOKEN_RE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/

/**
 * A TE list with the element `trailers` (RFC 9110 §10.1.4): the client takes trailer fields, and so does the
 * proxy, which passes them on, so the upstream is told so. An element that merely contains the word
 * (`x-trailers`, `gzip;q=trailers`) is another coding.
 */
const TE_TRAILERS = /(?:^|,)[ \t]*trailers[ \t]*(?:,|$)/i

/** `value` as an RFC 7239 value: a token as is, anything else a quoted-string */
function forwardedValue(value: string): string {
  return TOKEN_RE.test(value) ? value : `"${value.replace(/["\\]/g, '\\$&')}"`
}

/**
 * This hop's RFC 7239 element (§4 and §6: an IPv6 address bracketed and quoted): appended to a trusted
 * proxy's Forwarded, as the client address is to X-Forwarded-For, and in place of anyone else's, since an
 * upstream reading the list from either end would take a client's own `for=`, `proto=` and `host=` for a
 * proxy's word.
 */
function forwardedElement(clientIp: string, proto: 'http' | 'https', host: string | undefined): string {
  const node = isIP(clientIp) === 6 ? `"[${clientIp}]"` : isIP(clientIp) === 4 ? clientIp : 'unknown'
  return `for=${node};proto=${proto}${host === undefined ? '' : `;host=${forwardedValue(host)}`}`
}

/** HTTP/2 carries the Host in :authority (RFC 9113 §8.3.1) */
export function authority(headers: IncomingHttpHeaders): string | undefined {
  const value = headers[':authority']
  return typeof value === 'string' ? value : undefined
}

/** Headers for the upstream request; a stage may delete or overwrite entries before it is sent. */
export type UpstreamHeaders = Record<string, string | string[] | undefined>

/**
 * The headers sent upstream: the client's end-to-end headers, minus hop-by-hop and incoming x-nhi-* (in any
 * spelling an upstream framework would read as one, e.g. x_nhi_identity),
 * plus identity, request id, trace context and forwarded-*.
 *
 * x-forwarded-proto and -host, and Forwarded when the client sent one, are this hop's own unless the peer is a
 * configured trusted proxy, whose values are then kept in front of ours: Express and Spring read the first
 * value, so a client's own would be taken for the scheme and host the request arrived with. Client-address
 * headers (CLIENT_ADDRESS) are dropped unless the peer is a trusted proxy.
 */
export function upstreamHeaders(
  headers: IncomingHttpHeaders,
  identity: Identity,
  trace: TraceContext,
  requestId: string,
  clientIp: string,
  proto: 'http' | 'https',
  /** prepared entries, for an engine that takes them (see HeaderBlocks) */
  blocks?: HeaderBlocks,
  /** whether the peer, `clientIp`, is one of forwardedClientCert.trustedProxies */
  peerTrust: PeerTrust = false,
): UpstreamHeaders {
  const host = headers.host ?? authority(headers)
  // the peer is looked up only for the few requests that carry a header the answer decides about
  let trustedPeer: boolean | undefined
  if (headers['x-forwarded-proto'] !== undefined || headers['x-forwarded-host'] !== undefined)
    trustedPeer = peerTrusted(peerTrust, clientIp)
  const forwardedProto = trustedPeer ? headers['x-forwarded-proto'] : undefined
  const forwardedHost = trustedPeer ? headers['x-forwarded-host'] : undefined
  const verified = identity.verified ? 'true' : 'false'
  // The proxy's own headers come first, as one literal: the object is created with a slot for each of them,
  // instead of growing its property store as a dozen names are added one by one. A client's copy of any of
  // them is skipped below, so none is overwritten.
  const identityBlock = blocks?.identity(identity)
  let out: UpstreamHeaders
  if (identityBlock !== undefined && host !== undefined && forwardedProto === undefined) {
    out = withForwardedBlock(
      headers,
      forwardedHost,
      identityBlock,
      verified,
      trace,
      requestId,
      clientIp,
      proto,
      host,
      blocks!,
    )
  } else {
    out =
      identityBlock === undefined
        ? {
            'x-nhi-identity': safeHeaderValue(identity.name),
            'x-nhi-kind': identity.kind,
            'x-nhi-source': identity.source,
            'x-nhi-verified': verified,
            'x-request-id': requestId,
            traceparent: trace.traceparent,
            'x-forwarded-for': appendChain(headers['x-forwarded-for'], clientIp),
            'x-forwarded-proto': appendChain(forwardedProto, proto),
          }
        : {
            [identityBlock]: verified,
            'x-request-id': requestId,
            traceparent: trace.traceparent,
            'x-forwarded-for': appendChain(headers['x-forwarded-for'], clientIp),
            'x-forwarded-proto': appendChain(forwardedProto, proto),
          }
    if (host !== undefined) out['x-forwarded-host'] = appendChain(forwardedHost, host)
    else if (forwardedHost !== undefined) out['x-forwarded-host'] = String(forwardedHost)
  }
  const tracestate = headers.tracestate
  if (trace.continued && tracestate !== undefined && tracestate !== '') out.tracestate = String(tracestate)
  const listed = connectionListed(headers.connection)
  for (const name in headers) {
    // HTTP/2 pseudo-headers (:method, :path, :authority, :scheme) describe this hop; the upstream request has its own
    if (name.charCodeAt(0) === 58) continue
    const rule = REQUEST_NAME_RULE.get(name)
    if (rule === DROPPED || (rule === undefined && isIdentityHeaderName(name))) {
      if (name === 'te' && TE_TRAILERS.test(String(headers.te))) out.te = 'trailers'
      continue
    }
    if (listed?.has(name)) continue
    let unlessTrusted = rule === UNLESS_TRUSTED
    if (name.indexOf('_') !== -1) {
      // x_forwarded_for is HTTP_X_FORWARDED_FOR to a CGI/WSGI/Rack app, like the one we set; x_real_ip is
      // HTTP_X_REAL_IP, as x-real-ip is; transfer_encoding or content_length is HTTP_TRANSFER_ENCODING or
      // HTTP_CONTENT_LENGTH, what a framework consults about the body's framing, and the proxy framed it
      const normalized = normalizeHeaderName(name)
      if (
        SET_BY_PROXY.has(normalized) ||
        HOP_BY_HOP.has(normalized) ||
        normalized === 'content-length' ||
        listed?.has(normalized)
      )
        continue
      unlessTrusted = CLIENT_ADDRESS.has(normalized) || REQUEST_BEFORE_PROXY.has(normalized)
    }
    if (unlessTrusted) {
      trustedPeer ??= peerTrusted(peerTrust, clientIp)
      if (!trustedPeer) continue
    }
    const value = headers[name]
    if (value === undefined) continue
    if (name === 'forwarded') {
      // Spring takes the scheme and host from the first element, ahead of any x-forwarded-*: a client's
      // own first element would be the forged x-forwarded-proto and -host this hop replaces
      trustedPeer ??= peerTrusted(peerTrust, clientIp)
      const own = forwardedElement(clientIp, proto, host)
      out[name] = trustedPeer ? `${value}, ${own}` : own
    } else out[name] = value
  }
  if (host !== undefined && out.host === undefined) out.host = host
  return out
}

/**
 * The proxy's headers in block form (HeaderBlocks), for a request whose x-forwarded-proto is this hop's alone
 * and that named a host: the forwarded-* lines end in one entry whose value is x-forwarded-host's — the
 * address and scheme lines included when the client sent no x-forwarded-for either, else the scheme line only.
 */
function withForwardedBlock(
  headers: IncomingHttpHeaders,
  /** a trusted proxy's x-forwarded-host, undefined otherwise */
  trustedForwardedHost: string | string[] | undefined,
  identityBlock: string,
  verified: string,
  trace: TraceContext,
  requestId: string,
  clientIp: string,
  proto: 'http' | 'https',
  host: string,
  blocks: HeaderBlocks,
): UpstreamHeaders {
  const forwardedHost = appendChain(trustedForwardedHost, host)
  const chain = headers['x-forwarded-for']
  const forwarded = chain === undefined ? blocks.forwarded(clientIp, proto) : undefined
  if (forwarded !== undefined) {
    return {
      [identityBlock]: verified,
      'x-request-id': requestId,
      traceparent: trace.traceparent,
      [forwarded]: forwardedHost,
    }
  }
  return {
    [identityBlock]: verified,
    'x-request-id': requestId,
    traceparent: trace.traceparent,
    'x-forwarded-for': appendChain(chain, clientIp),
    [blocks.forwardedProto[proto]]: forwardedHost,
  }
}

/** `listed` with the header names of one more Connection line added (undefined while none is named) */
function addListed(listed: Set<string> | undefined, connection: string): Set<string> | undefined {
  const more = connectionListed(connection)
  if (listed === undefined || more === undefined) return listed ?? more
  for (const name of more) listed.add(name)
  return listed
}

/**
 * Response headers from the upstream's raw [name, value, …] buffers, minus hop-by-hop ones. With `status` 204,
 * minus Content-Length too: a 204 has no body and must not carry one (RFC 9110 §8.6); HTTP/2 clients reset the
 * stream over it and HTTP/1.1 clients may wait for bytes that never come. Trailers pass no status. `toHead`:
 * the response answers a HEAD request.
 */
export function downstreamHeaders(
  raw: readonly (Buffer | string)[],
  status?: number,
  toHead = false,
): string[] {
  // a response without content (to HEAD, a 204 or 304) may name the coding its content would have had
  // (RFC 9112 §6.1): no coded bytes reach the client, so the coding is no reason to refuse it
  const content = status !== undefined && !answersWithoutContent(status, toHead)
  const out = withoutHopByHop(raw, content, undefined)
  return status === 204 ? withoutContentLength(out) : out
}

/**
 * Response trailers from the upstream's raw [name, value, …] pairs, minus hop-by-hop ones and minus the names
 * the response head's Connection listed: the upstream declared those fields its own hop's, wherever in the
 * message they come (RFC 9110 §7.6.1). Minus Content-Length too: framing is no trailer's (RFC 9110 §6.5.1),
 * and clients refuse the whole response over one (llhttp as Content-Length with Transfer-Encoding, nghttp2
 * with a stream reset) that the proxy would record as served.
 */
export function downstreamTrailers(raw: readonly Buffer[], head: readonly (Buffer | string)[]): string[] {
  let listed: Set<string> | undefined
  for (let i = 0; i + 1 < head.length; i += 2) {
    const name = head[i]!
    if (name.length === 10 && name.toString().toLowerCase() === 'connection')
      listed = addListed(listed, head[i + 1]!.toString().toLowerCase())
  }
  return withoutContentLength(withoutHopByHop(raw, false, listed))
}

/**
 * A response in a transfer coding other than plain `chunked` (`gzip`, `gzip, chunked`): the HTTP/1.1 client
 * decodes `chunked` only, so its body would reach the client still coded with nothing saying so. Answered 502,
 * as nginx does.
 */
export class UnsupportedResponseCoding extends Error {
  override readonly name = 'UnsupportedResponseCoding'
  // a code of the response parser's family: the operator's log leaves out the message, which quotes the upstream
  readonly code = 'UND_ERR_RESPONSE_CODING'
  constructor(coding: string) {
    super(`upstream response in a transfer coding other than chunked (${coding.slice(0, 64)})`)
  }
}

const ONLY_CHUNKED = /^[\t ]*chunked[\t ]*$/i

function withoutContentLength(headers: string[]): string[] {
  const kept: string[] = []
  for (let i = 0; i < headers.length; i += 2) {
    if (headers[i]!.toLowerCase() !== 'content-length') kept.push(headers[i]!, headers[i + 1]!)
  }
  return kept
}

function withoutHopByHop(
  raw: readonly (Buffer | string)[],
  /** a response with content: a transfer coding other than chunked refuses it */
  withContent: boolean,
  headListed: Set<string> | undefined,
): string[] {
  const out: string[] = []
  let listed = headListed
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const nameBuf = raw[i]!
    const name = nameBuf.toString('latin1')
    // only names as long as a hop-by-hop one need the case-insensitive check
    if (HOP_BY_HOP_LENGTHS.has(nameBuf.length)) {
      const lower = name.toLowerCase()
      if (lower === 'connection') {
        // every Connection line counts: a field sent as several lines is one list (RFC 9110 §5.3)
        listed = addListed(listed, raw[i + 1]!.toString('latin1').toLowerCase())
        continue
      }
      if (HOP_BY_HOP.has(lower)) {
        if (withContent && lower === 'transfer-encoding') {
          const coding = raw[i + 1]!.toString('latin1')
          if (!ONLY_CHUNKED.test(coding)) throw new UnsupportedResponseCoding(coding)
        }
        continue
      }
    }
    out.push(name, raw[i + 1]!.toString('latin1'))
  }
  if (listed === undefined) return out
  const kept: string[] = []
  for (let i = 0; i < out.length; i += 2) {
    if (!listed.has(out[i]!.toLowerCase())) kept.push(out[i]!, out[i + 1]!)
  }
  return kept
}

/** Fields node:http2 sends at most once (its kSingleValueHeaders): a response repeating one is refused whole. */
const SINGLE_VALUE = new Set([
  'access-control-allow-credentials',
  'access-control-max-age',
  'access-control-request-method',
  'age',
  'authorization',
  'content-encoding',
  'content-language',
  'content-length',
  'content-location',
  'content-md5',
  'content-range',
  'content-type',
  'date',
  'dnt',
  'etag',
  'expires',
  'from',
  'host',
  'if-match',
  'if-modified-since',
  'if-none-match',
  'if-range',
  'if-unmodified-since',
  'last-modified',
  'location',
  'max-forwards',
  'proxy-authorization',
  'range',
  'referer',
  'retry-after',
  'tk',
  'upgrade-insecure-requests',
  'user-agent',
  'x-content-type-options',
])

/** `downstreamHeaders` output for an HTTP/2 response: of a repeated single-value field, the first is kept. */
export function singleValued(headers: string[]): string[] {
  let seen: Set<string> | undefined
  let out: string[] | undefined
  for (let i = 0; i + 1 < headers.length; i += 2) {
    const lower = headers[i]!.toLowerCase()
    if (SINGLE_VALUE.has(lower)) {
      seen ??= new Set()
      if (seen.has(lower)) {
        out ??= headers.slice(0, i)
        continue
      }
      seen.add(lower)
    }
    out?.push(headers[i]!, headers[i + 1]!)
  }
  return out ?? headers
}

/**
 * Fields that never travel in a request trailer section: RFC 9110 §6.5.1 keeps framing, routing,
 * authentication, request modifiers and content format out of trailers, and the credentials the proxy
 * identifies callers by are read from the header section only. An upstream that merges trailers into headers
 * must not see a second, unverified credential or identity there.
 */
const NOT_IN_TRAILERS = new Set([
  'host',
  'content-length',
  'content-type',
  'content-encoding',
  'content-range',
  'authorization',
  'cookie',
  'expect',
  'max-forwards',
  'range',
  'cache-control',
  'pragma',
  'user-agent',
  'x-api-key',
  'signature',
  'signature-input',
  'signature-agent',
  // (forwarded client certificate headers too: isForwardedCertHeader, below, knows every ALB name)
  // a proxy names the client's address in the header section; one in a trailer is the client's own claim
  ...CLIENT_ADDRESS,
  ...REQUEST_BEFORE_PROXY,
  'forwarded',
  // the policy decides on the method these name in the header section; it never sees a trailer
  ...METHOD_OVERRIDE_HEADERS,
])

/**
 * Whether a client's request trailer field may go on to the upstream: not dropped by the header rule
 * (hop-by-hop, listed in Connection, set by the proxy, x-nhi-* in any spelling), not a field trailers may not
 * carry, and not a field of the request's header section (its value is the one the proxy attributed).
 * Names are compared the way an upstream framework would merge them ("_" ≡ "-", any case).
 */
function trailerAllowed(
  name: string,
  headers: IncomingHttpHeaders,
  listed: Set<string> | undefined,
  withheld: ReadonlySet<string> | undefined,
): boolean {
  const n = normalizeHeaderName(name)
  if (n.length === 0 || n.charCodeAt(0) === 58) return false
  if (
    HOP_BY_HOP.has(n) ||
    SET_BY_PROXY.has(n) ||
    NEVER_FORWARDED.has(n) ||
    NOT_IN_TRAILERS.has(n) ||
    isForwardedCertHeader(n) ||
    isIdentityHeaderName(n)
  )
    return false
  if (withheld?.has(n)) return false
  if (listed?.has(n) || headers[n] !== undefined) return false
  // the header section under another spelling (x_api_key sent as a header, x-api-key as a trailer)
  for (const h in headers) if (h.indexOf('_') !== -1 && normalizeHeaderName(h) === n) return false
  return true
}

/**
 * The client's request trailers for the upstream, as [name, value] pairs from Node's rawTrailers. `withheld`:
 * normalized names the serving config reads credentials from (ForwardTarget.withheldTrailers).
 */
export function upstreamTrailers(
  raw: readonly string[],
  headers: IncomingHttpHeaders,
  withheld?: ReadonlySet<string>,
): [string, string][] {
  const listed = connectionListed(headers.connection)
  const out: [string, string][] = []
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if (trailerAllowed(raw[i]!, headers, listed, withheld)) out.push([raw[i]!, raw[i + 1]!])
  }
  return out
}

/** The `Trailer` header for the upstream: the fields the client announced that may be forwarded. */
export function announcedTrailers(
  headers: IncomingHttpHeaders,
  withheld?: ReadonlySet<string>,
): string | undefined {
  const value = headers.trailer
  if (typeof value !== 'string') return undefined
  const listed = connectionListed(headers.connection)
  const kept: string[] = []
  for (const token of value.split(',')) {
    const name = token.trim().toLowerCase()
    if (name && /^[!#$%&'*+.^_`|~0-9a-z-]+$/.test(name) && trailerAllowed(name, headers, listed, withheld))
      kept.push(name)
  }
  return kept.length > 0 ? kept.join(', ') : undefined
}
