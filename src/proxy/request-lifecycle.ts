// The exchange, in stages named after fastify's lifecycle (docs/reference.md "Request pipeline"):
// onRequest (connection facts, request id, trace) → preHandler (identify + decide, one Pipeline.attribute
// call) → forward → onResponse (one record per exchange, once the response is closed). Requests and
// websocket upgrades go through the same `serve`; only the transport (HTTP forward or tunnel) differs.
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import type { TLSSocket } from 'node:tls'
import type { Config } from '../config/schema.ts'
import type { Attribution, Pipeline } from '../pipeline/index.ts'
import type { CertEvidence, ConnectionInfo, Failure, MaybePromise } from '../types.ts'
import { normaliseAddress } from '../util/cidr.ts'
import { expectsContinue, releaseContinue } from './continue.ts'
import type { CorsMemory } from './cors.ts'
import { CLIENT_CLOSED, Exchange, FAIL_CLOSED_ATTRIBUTION, FALLBACK_ATTRIBUTION } from './exchange.ts'
import {
  clientStreamGone,
  cutResponse,
  type Forwarder,
  type ForwardResult,
  type ForwardTarget,
  responseClosed,
} from './forwarder.ts'
import {
  answeredTrailersOnly,
  GRPC,
  grpcStatusForHttp,
  grpcTimeoutLeft,
  isGrpc,
  sendGrpcStatus,
} from './grpc.ts'
import { type UpstreamHeaders, upstreamHeaders } from './headers.ts'
import { streamMalformed, streamTimedOut } from './http2-listener.ts'
import { listenerAnswer } from './listeners.ts'
import { absoluteFormAuthority, requestTarget } from './path.ts'
import {
  BAD_AUTHORITY,
  BAD_AUTHORITY_SYNTAX,
  BAD_HOST,
  BAD_HOST_SYNTAX,
  BAD_METHOD,
  BAD_REQUEST,
  BAD_TARGET_AUTHORITY,
  CONNECT_NOT_SUPPORTED,
  DEADLINE_PASSED,
  EXPECTATION_FAILED,
  INTERNAL_ERROR,
  NOT_IMPLEMENTED,
  sendJson,
  UPSTREAM_ERRORS,
} from './respond.ts'
import type { Upstream } from './upstream-url.ts'

const kConn = Symbol('nhi.connection')
const kExchange = Symbol('nhi.exchange')
/** while draining: the newest response of an HTTP/1.1 connection */
const kNewest = Symbol('nhi.newestResponse')
/** a response the drain made say `Connection: close` */
const kDrainClose = Symbol('nhi.drainClose')
type TaggedSocket = Socket & { [kConn]?: ConnectionInfo; [kNewest]?: TaggedResponse }
type TaggedRequest = IncomingMessage & { [kExchange]?: Exchange }
type TaggedResponse = ServerResponse & { [kExchange]?: Exchange; [kDrainClose]?: boolean }

/**
 * The drain: the newest response of an HTTP/1.1 connection says `Connection: close` once its head goes out.
 * Only the newest: node:http closes the connection after a response that says close, and the answers to the
 * requests pipelined behind it, forwarded already, would be lost. A response marked before is kept alive
 * again when a request comes behind it while its head has not gone out. False when it has: the connection
 * closes after that answer, and the request behind it will never be answered (RFC 9112 §9.6: not processed).
 */
function closeAfterNewest(res: TaggedResponse, socket: TaggedSocket | null): boolean {
  const prev = socket?.[kNewest]
  if (prev !== undefined && prev !== res && prev[kDrainClose] === true) {
    if (prev.headersSent) return false
    prev.shouldKeepAlive = true
    prev[kDrainClose] = false
  }
  if (socket) socket[kNewest] = res
  if (res.shouldKeepAlive && !res.headersSent) {
    res.shouldKeepAlive = false
    res[kDrainClose] = true
  }
  return true
}

export interface LifecycleOptions {
  getPipeline: () => Pipeline
  forwarder: Forwarder
  upstream: () => Upstream
  /**
   * the CORS fields the upstream answered each Origin with so far (one per upstream and config: server.ts): the
   * forward learns them, the proxy's own answers carry them
   */
  cors?: (() => CorsMemory) | undefined
  /** called once per TLS connection; the result lands in ConnectionInfo.peerCert */
  parsePeerCert?: ((socket: TLSSocket) => CertEvidence | Failure | undefined) | undefined
  timeouts: Config['timeouts']
  /**
   * the pipeline threw or rejected for a request (a bug): `refused` when it was answered 500 (the policy is
   * enforced), else it was forwarded as anonymous. Called once per such request: for counting and logging.
   */
  onAttributionError?: ((error: unknown, refused: boolean) => void) | undefined
}

/** A proxy answer: a refusal, or an upstream failure translated. */
export interface ProxyAnswer {
  status: number
  body: string
  headers?: Record<string, string> | undefined
}

/**
 * Where `serve` sends its answers and what its forward step is: a ServerResponse, or an upgraded socket.
 * One transport serves every exchange of its kind; what differs per exchange is the context `C` (the
 * response, or the socket), so the hot path allocates no closures per request.
 */
export interface Transport<C> {
  /** a refusal before identification (a request the proxy cannot pass on as sent, the proxy shutting down) */
  refusal?(ex: Exchange, req: IncomingMessage, ctx: C): ProxyAnswer | undefined
  /**
   * A refusal of what the request asks the proxy to do besides forwarding it (a tunnel it does not open: an
   * upgrade that is not a websocket handshake, a CONNECT), once it was identified and let through: asking must
   * change neither who the request is in the audit trail nor what the policy says, so one the policy denies
   * gets that denial, as the same request without the ask would.
   */
  refusalWhenAllowed?(req: IncomingMessage, ctx: C): ProxyAnswer | undefined
  /** the client went away while the preHandler waited */
  clientGone?(ctx: C): boolean
  /** answers on the proxy's behalf and sets the recorded status; false when nothing could be sent */
  answer(ex: Exchange, req: IncomingMessage, ctx: C, answer: ProxyAnswer): boolean
  forward(
    req: IncomingMessage,
    ctx: C,
    target: ForwardTarget,
    headers: UpstreamHeaders,
  ): Promise<ForwardResult>
  /**
   * `forward` without a promise, where the forwarder offers it: the result comes back through
   * `RequestLifecycle.forwarded`, which finishes the exchange (HTTP exchanges, whose `ex.req`/`ex.res` are set)
   */
  dispatch?(ex: Exchange, req: IncomingMessage, ctx: C, target: ForwardTarget, headers: UpstreamHeaders): void
  /** an internal error that could not be answered */
  abort?(ctx: C): void
}

function countRequestBytes(this: TaggedRequest, chunk: Buffer): void {
  const ex = this[kExchange]
  if (ex) ex.bytesIn += chunk.length
}

export function requestHasBody(headers: IncomingHttpHeaders): boolean {
  if (headers['transfer-encoding'] !== undefined) return true
  const cl = headers['content-length']
  return cl !== undefined && cl !== '0'
}

/**
 * Whether a request has a body to forward. An HTTP/2 stream has one unless its HEADERS frame ended it: gRPC
 * and most h2 clients send no content-length.
 */
export function hasBody(req: IncomingMessage): boolean {
  if (req.httpVersionMajor === 2) {
    const stream = (req as unknown as { stream?: { endAfterHeaders?: boolean } }).stream
    return stream?.endAfterHeaders !== true
  }
  return requestHasBody(req.headers)
}

/**
 * An HTTP/2 request answered (by the proxy, or by an upstream that did not read it all) before its body ended:
 * RFC 9113 §8.1 lets the server ask the client to stop sending with RST_STREAM(NO_ERROR) once the response is
 * complete. Without it the stream stays half-open for as long as the client keeps sending or simply never ends
 * it, and the exchange is never recorded: an answer missing from metrics and audit, and in flight until
 * shutdown. node:http2's compatibility layer ends every response with a trailers frame (where a gRPC status
 * lives), handed to nghttp2 in its 'wantTrailers' handler: a reset submitted before that would drop it, one
 * submitted after it goes out after it.
 */
function stopUnreadRequest(req: IncomingMessage): void {
  // a request without a body (END_STREAM on its HEADERS) has nothing left to stop, though no one read its end
  if (req.httpVersionMajor !== 2 || req.complete || !hasBody(req)) return
  const stream = (req as unknown as { stream?: H2ServerStream }).stream
  if (stream === undefined || stream.destroyed) return
  // destroy(), not close(NO_ERROR): close waits for the writable side's 'finish', and once that has passed (the
  // response flushed before the reset) it would wait forever; destroy resets at once, with NO_ERROR
  const reset = () => {
    if (!stream.destroyed && !req.complete) stream.destroy()
  }
  if (stream.sentTrailers !== undefined) reset()
  // a Trailers-Only answer (a gRPC status) has no trailers step: reset once its HEADERS frame had a turn to go
  else if (answeredTrailersOnly(stream)) setImmediate(reset)
  else stream.once('wantTrailers', () => setImmediate(reset))
}

/**
 * RFC 9112 §6.1: Node's parser decodes `chunked` only. A body in another transfer coding (`gzip, chunked`) would
 * reach the upstream still coded, and with no header left to say so (transfer-encoding is hop-by-hop): refused.
 */
function unsupportedTransferCoding(req: IncomingMessage): boolean {
  const te = req.headers['transfer-encoding']
  return te !== undefined && !/^[\t ]*chunked[\t ]*$/i.test(te)
}

/**
 * An expectation the proxy cannot meet (RFC 9110 §10.1.1: 417): any but 100-continue, which it answers itself
 * (continue.ts).
 */
function unmetExpectation(req: IncomingMessage): boolean {
  const expect = req.headers.expect
  return expect !== undefined && !expectsContinue(expect)
}

/**
 * An HTTP/2 method with a lower-case letter (`get`, `Delete`): methods are case-sensitive (RFC 9110 §9.1), so
 * Go's router takes `get` for an unknown method while Django and Flask upper-case it, and rules decide on
 * the upper-case one. No two servers agree on it, and HTTP/1.1 clients cannot send it (the parser accepts
 * upper-case methods only): refused.
 */
function caseFoldedMethod(req: IncomingMessage): boolean {
  return req.httpVersionMajor === 2 && hasLowerCaseLetter(req.method ?? '')
}

/** a method the proxy refuses with 400 (caseFoldedMethod); `explain` refuses it the same way */
export function hasLowerCaseLetter(method: string): boolean {
  for (let i = 0; i < method.length; i++) {
    const c = method.charCodeAt(i)
    if (c >= 0x61 && c <= 0x7a) return true
  }
  return false
}

/** a method is a token (RFC 9110 §9.1): neither HTTP/1.1's parser nor HTTP/2's framing lets anything else through */
const METHOD_TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/

/**
 * Why the live proxy answers a request of this method and target before identification or policy see it
 * (400, or 501 for CONNECT), or undefined when it does not: what `explain` and rule tests say instead of
 * deciding a request the proxy never decides.
 */
export function requestLineRefusal(method: string, target: string): string | undefined {
  if (requestTarget(target) === undefined)
    return 'the proxy refuses this request target with 400 (not origin- or absolute-form, or an ambiguous path)'
  if (hasLowerCaseLetter(method))
    return 'the proxy refuses this request method with 400 (methods are case-sensitive: an HTTP/2 method with a lower-case letter is refused, and HTTP/1.1 cannot send one)'
  if (!METHOD_TOKEN.test(method))
    return "the proxy refuses this request method with 400 (a method is a token: letters, digits and !#$%&'*+-.^_`|~ only)"
  if (method === 'CONNECT') return 'the proxy answers CONNECT with 501 (a reverse proxy, not a tunnel)'
  return undefined
}

/**
 * What hostRefusal answers of a request's Host lines alone (`explain`'s -H): two of them, or one that is not a
 * host[:port], are refused with 400.
 */
export function hostLinesRefusal(hosts: readonly string[]): string | undefined {
  if (hosts.length > 1)
    return 'the proxy refuses a request with two Host lines with 400 (a proxy in front may have routed on the other)'
  if (hosts.length === 1 && !HOST_SYNTAX.test(hosts[0]!))
    return 'the proxy refuses this Host with 400 (not a host[:port])'
  return undefined
}

/** a header name that is `host` in any letter case, compared without allocating */
function isHostName(name: string): boolean {
  return (
    name.length === 4 &&
    (name.charCodeAt(0) | 0x20) === 0x68 &&
    (name.charCodeAt(1) | 0x20) === 0x6f &&
    (name.charCodeAt(2) | 0x20) === 0x73 &&
    (name.charCodeAt(3) | 0x20) === 0x74
  )
}

/** uri-host [":" port]: an IP-literal, or a reg-name of unreserved, pct-encoded and sub-delims bytes */
const HOST_SYNTAX = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(?::[0-9]*)?$/

/**
 * A request that names its host ambiguously (RFC 9112 §3.2): two Host lines (Node keeps the first, while a
 * proxy in front may have routed on the last, and rules, policy, signatures and the upstream would all read
 * the first), an HTTP/1.1 request with none, or an
 * absolute-form target naming another authority than Host. Over
 * HTTP/2 a `host` next to `:authority` must name the same authority (RFC 9113 §8.3.1): the upstream gets
 * `host`, a front proxy may have routed on `:authority`. On either protocol the Host the upstream gets must
 * be a host[:port].
 */
function hostRefusal(req: IncomingMessage): ProxyAnswer | undefined {
  const raw = req.rawHeaders
  let hosts = 0
  for (let i = 0; i < raw.length; i += 2) {
    if (isHostName(raw[i]!) && ++hosts > 1) return BAD_HOST
  }
  if (req.httpVersionMajor === 2) {
    const authority = req.headers[':authority']
    const host = req.headers.host
    // nghttp2 checks only for characters an RFC 3986 authority may hold, user info and stray colons or
    // brackets included (RFC 9113 §8.3.1 forbids user info): either would be the upstream's Host
    if (typeof authority === 'string' && !HOST_SYNTAX.test(authority)) return BAD_AUTHORITY_SYNTAX
    if (hosts === 0) return undefined
    if (host !== undefined && !HOST_SYNTAX.test(host)) return BAD_HOST_SYNTAX
    if (typeof authority !== 'string' || host === undefined || host === authority) return undefined
    return sameAuthority(host, authority, req.headers[':scheme']) ? undefined : BAD_AUTHORITY
  }
  if (hosts === 0) return req.httpVersionMinor >= 1 ? BAD_HOST : undefined
  // RFC 9112 §3.2 / RFC 3986 §3.2.2: an HTTP/2 upstream's framing layer refuses any other byte in its
  // :authority, which would make a client's malformed Host an upstream failure in metrics and alerts
  const host = req.headers.host
  if (host !== undefined && !HOST_SYNTAX.test(host)) return BAD_HOST_SYNTAX
  // RFC 9112 §3.2.2: an absolute-form target's authority is the request's host, and a proxy in front routes
  // on it, while rules, signatures and the upstream here read Host: the two must agree
  const target = absoluteFormAuthority(req.url ?? '/')
  if (target === undefined) return undefined
  return host !== undefined && sameAuthority(host, target.authority, target.scheme)
    ? undefined
    : BAD_TARGET_AUTHORITY
}

/**
 * RFC 9113 §8.3.1 has intermediaries compare `host` and `:authority` after scheme-based normalisation
 * (RFC 3986 §6.2.3): the host in any case, an empty or default port the same as none.
 */
function sameAuthority(a: string, b: string, scheme: unknown): boolean {
  const defaultPort = scheme === 'https' ? ':443' : scheme === 'http' ? ':80' : undefined
  const normalise = (v: string) => {
    const lower = v.toLowerCase()
    if (lower.endsWith(':')) return lower.slice(0, -1)
    if (defaultPort !== undefined && lower.endsWith(defaultPort)) return lower.slice(0, -defaultPort.length)
    return lower
  }
  return normalise(a) === normalise(b)
}

/**
 * What a CONNECT's authority-form target (or HTTP/2 `:authority` alone) is read as: no path, which no route
 * matches. It is never forwarded (CONNECT_NOT_SUPPORTED once let through).
 */
const CONNECT_TARGET = Object.freeze({ target: '', path: '' })

const REQUEST_TIMEOUT = 408
const MALFORMED_REQUEST = 400

/**
 * The status the listener itself answered a request it cut with, in place of the proxy's answer: on HTTP/1.1
 * Node's parser gave up on the connection while the request held it (its body slower than timeouts.request:
 * 408; bytes in its body that do not parse: 400…) and the listener wrote that answer and closed it; on HTTP/2
 * the listener answered the stream 408 at its deadline and reset it, or the HTTP/2 layer reset a malformed
 * request (400, as the body HTTP/1.1 cannot parse: the client's fault, not its leaving). Undefined when it
 * answered nothing: the client left.
 */
function listenerStatus(req: IncomingMessage, res: ServerResponse | undefined): number | undefined {
  if (req.httpVersionMajor === 2) {
    const h2 = req as IncomingMessage & { stream?: unknown }
    return streamTimedOut(h2) ? REQUEST_TIMEOUT : streamMalformed(h2) ? MALFORMED_REQUEST : undefined
  }
  return listenerAnswer(res)
}

/** an exchange cut on the client's side: recorded with what the listener answered in its place, if anything */
function recordCut(ex: Exchange, req: IncomingMessage): void {
  const answered = listenerStatus(req, ex.res)
  if (answered === undefined) return
  ex.status = answered
  // the HTTP/2 listener answers a gRPC call's timeout as DEADLINE_EXCEEDED
  if (answered === REQUEST_TIMEOUT && req.httpVersionMajor === 2 && isGrpc(req.headers)) {
    ex.status = 200
    ex.grpcStatus = GRPC.DEADLINE_EXCEEDED
  }
}

/** what stopUnreadRequest uses of a server-side Http2Stream (IncomingMessage's `stream` on HTTP/2) */
interface H2ServerStream {
  destroyed: boolean
  sentTrailers: object | undefined
  destroy(): void
  once(event: 'wantTrailers', listener: () => void): unknown
}

/** Shared state of all exchanges: the in-flight count drain waits for, and the drain/close flags. */
export class RequestLifecycle {
  inFlight = 0
  draining = false
  closing = false
  /**
   * every exchange not recorded yet, tunnels included: shutdown records what it cut before telemetry closes,
   * and a tunnel is never counted in inFlight
   */
  private readonly open = new Set<Exchange>()
  /** told of every record while shutdown waits (settled, recorded) */
  private drained: (() => void) | undefined

  /** the forward step of every HTTP request and HTTP/2 stream: the context is the client's response */
  private readonly http: Transport<ServerResponse>

  constructor(readonly opts: LifecycleOptions) {
    const forwarder = opts.forwarder
    this.http = {
      refusal: (_ex, req) =>
        unsupportedTransferCoding(req)
          ? NOT_IMPLEMENTED
          : caseFoldedMethod(req)
            ? BAD_METHOD
            : unmetExpectation(req)
              ? EXPECTATION_FAILED
              : undefined,
      // a CONNECT is a request like any other but for the tunnel it asks for: identified and decided first
      refusalWhenAllowed: (req) => (req.method === 'CONNECT' ? CONNECT_NOT_SUPPORTED : undefined),
      // an HTTP/2 response has no `destroyed` (Node 20): a stream the client reset while the request was
      // being attributed is known by its 'close' only; forwarded anyway, the exchange would never finish and
      // shutdown would wait out timeouts.drain for it
      clientGone: (res) => res.destroyed || (res as TaggedResponse)[kExchange]?.responseClosed === true,
      answer: (ex, req, res, a) => {
        if (clientStreamGone(res)) {
          ex.status = CLIENT_CLOSED
          return false
        }
        const sent = this.answer(ex, req, res, a.status, a.body, a.headers)
        stopUnreadRequest(req)
        return sent
      },
      forward: (req, res, target, headers) => forwarder.forward(req, res, target, headers),
      // cutResponse, not destroy(): on HTTP/2 a plain destroy resets with NO_ERROR, which the client takes for
      // the end of a complete response
      abort: (res) => {
        if (!res.writableFinished) cutResponse(res)
      },
    }
    if (forwarder.dispatch) {
      this.http.dispatch = (ex, req, res, target, headers) =>
        forwarder.dispatch?.(req, res, target, headers, ex)
    }
  }

  /**
   * The drain begins (`closing`: accepting stops): every HTTP/1.1 response from now on carries `Connection:
   * close`, those of the requests already in flight included, as long as their head has not gone out. A client
   * told `keep-alive` would send its next request on a connection the end of the drain closes under it.
   */
  drain(closing = false): void {
    this.draining = true
    if (closing) this.closing = true
    // in request order, so that on each connection the newest is marked last and the ones before it let go
    for (const ex of this.open) {
      const req = ex.req
      if (ex.res !== undefined && req?.httpVersionMajor === 1) closeAfterNewest(ex.res, req.socket)
    }
  }

  /** resolves when no counted exchange is in flight, or after `ms` */
  settled(ms: number): Promise<void> {
    return this.until(() => this.inFlight === 0, ms)
  }

  /** resolves when every exchange, tunnels included, was recorded, or after `ms` */
  recorded(ms: number): Promise<void> {
    return this.until(() => this.open.size === 0, ms)
  }

  private async until(done: () => boolean, ms: number): Promise<void> {
    if (done()) return
    let timer: NodeJS.Timeout | undefined
    await new Promise<void>((resolve) => {
      this.drained = () => {
        if (done()) resolve()
      }
      timer = setTimeout(resolve, ms)
    })
    clearTimeout(timer)
    this.drained = undefined
  }

  /**
   * Records, as they stand, the exchanges that have not recorded themselves by the end of shutdown (one still
   * waiting for its identification, say): the caller closes telemetry next, and a record after that is lost.
   * Whatever the exchange's own path does later finds it recorded.
   */
  recordOpen(): void {
    for (const ex of this.open) {
      ex.handled = true
      ex.responseClosed = true
      this.onResponse(ex)
    }
  }

  /** Connection facts, computed once per socket (a TLS peer certificate is parsed once for all requests). */
  connectionInfo(socket: Socket): ConnectionInfo {
    const tagged = socket as TaggedSocket
    const cached = tagged[kConn]
    if (cached) return cached
    const tls = (socket as TLSSocket).encrypted === true
    const info: ConnectionInfo = {
      remoteAddress: normaliseAddress(socket.remoteAddress ?? ''),
      remotePort: socket.remotePort ?? 0,
      tls,
    }
    if (tls && this.opts.parsePeerCert) {
      try {
        const peerCert = this.opts.parsePeerCert(socket as TLSSocket)
        if (peerCert) info.peerCert = peerCert
      } catch {
        // a certificate the parser chokes on leaves the connection without cert evidence
      }
    }
    tagged[kConn] = info
    return info
  }

  /**
   * onRequest: the exchange starts, counted in flight until recorded unless it is a long-lived tunnel
   * (drain does not wait for those)
   */
  onRequest(conn: ConnectionInfo, req: IncomingMessage, path: string, counted = true): Exchange {
    const ex = new Exchange(conn, req.method ?? 'GET', path, req.headers)
    ex.owner = this
    ex.counted = counted
    if (counted) this.inFlight++
    this.open.add(ex)
    return ex
  }

  /** onResponse: one record per exchange, once it was handled and its response closed */
  onResponse(ex: Exchange): void {
    if (ex.recorded || !ex.handled || !ex.responseClosed) return
    ex.recorded = true
    if (ex.counted) this.inFlight--
    this.open.delete(ex)
    try {
      ex.pipeline?.record(ex.event())
    } catch {
      // recorders must not throw; if one does, the request is still done
    }
    this.drained?.()
  }

  /**
   * preHandler: identify → classify → decide in one Pipeline call; a failing stage makes the request
   * anonymous, or refused where the policy is enforced. Returns a promise only when a stage had to wait, so
   * the common request is attributed without a microtask hop. The decision is `ex.attribution.reject`.
   */
  preHandler(ex: Exchange, parsed: { target: string; path: string }): Promise<void> | undefined {
    let result: MaybePromise<Attribution>
    try {
      const pipeline = this.opts.getPipeline()
      ex.pipeline = pipeline
      // the exchange is the request info: its method, path and headers are the request's
      ex.url = parsed.target
      result = pipeline.attribute(ex, ex.conn)
    } catch (error) {
      this.attributionFailed(ex, error)
      return undefined
    }
    if (!(result instanceof Promise)) {
      ex.attribution = result
      return undefined
    }
    return result.then(
      (attribution) => {
        ex.attribution = attribution
      },
      (error: unknown) => this.attributionFailed(ex, error),
    )
  }

  /**
   * Attribution failed (attribute() must not throw, so this is a bug): without an enforced policy the request
   * goes on as anonymous, as identification is best effort; with one it is refused, since forwarding it would
   * skip the policy
   */
  private attributionFailed(ex: Exchange, error: unknown): void {
    const refused = ex.pipeline?.failClosed === true
    ex.attribution = refused ? FAIL_CLOSED_ATTRIBUTION : FALLBACK_ATTRIBUTION
    try {
      this.opts.onAttributionError?.(error, refused)
    } catch {
      // reporting must not take the request down with it
    }
  }

  /** the request headers for the upstream hop, after the pipeline had its last word */
  hopHeaders(ex: Exchange, req: IncomingMessage, target: ForwardTarget): UpstreamHeaders {
    const identity = ex.attribution.identity
    const headers = upstreamHeaders(
      req.headers,
      identity,
      ex,
      ex.requestId,
      ex.conn.remoteAddress,
      ex.conn.tls ? 'https' : 'http',
      this.opts.forwarder.headerBlocks?.(req, target),
      ex.pipeline,
    )
    // the pipeline has the last word (e.g. forwarded-certificate headers from untrusted peers)
    ex.pipeline?.prepareUpstreamHeaders?.(headers, ex.attribution, ex.conn)
    return headers
  }

  target(ex: Exchange, parsedTarget: string): ForwardTarget {
    const upstream = this.opts.upstream()
    return {
      origin: upstream.origin,
      path: upstream.basePath + parsedTarget,
      upstream,
      withheldTrailers: ex.pipeline?.withheldTrailers,
      receivedAt: ex.started,
      cors: this.opts.cors?.(),
    }
  }

  /**
   * An answer on the proxy's behalf; a gRPC call gets it as a gRPC status its client can read. Either carries
   * the CORS fields the upstream answers the request's Origin with, so a page on that origin can read it.
   */
  answer(
    ex: Exchange,
    req: IncomingMessage,
    res: ServerResponse,
    status: number,
    body: string,
    headers?: Record<string, string>,
  ): boolean {
    ex.status = status
    const cors = this.opts.cors?.()
    if (!isGrpc(req.headers)) return sendJson(res, status, body, headers, cors)
    ex.status = 200
    ex.grpcStatus = ex.upstreamError === 'timeout' ? GRPC.DEADLINE_EXCEEDED : grpcStatusForHttp(status)
    let message = 'request refused by the proxy'
    try {
      const parsed = JSON.parse(body) as { message?: unknown; error?: unknown }
      const text = parsed.message ?? parsed.error
      if (typeof text === 'string') message = text
    } catch {
      // a non-JSON body from a rejecting stage keeps the generic message
    }
    return sendGrpcStatus(res, ex.grpcStatus, message, cors)
  }

  /**
   * The stages every exchange goes through, requests and upgrades alike: refusal, preHandler, the decision,
   * the transport's forward, upstream failures translated, onResponse. A request whose identification and
   * forward need no promise (cached credentials, an HTTP/1.1 upstream) returns undefined and allocates none:
   * the forwarder reports back through `forwarded`. Otherwise the promise settles when the exchange is done.
   */
  serve<C>(
    ex: Exchange,
    req: IncomingMessage,
    parsed: { target: string; path: string } | undefined,
    transport: Transport<C>,
    ctx: C,
  ): Promise<void> | undefined {
    try {
      const refusal =
        transport.refusal?.(ex, req, ctx) ?? (parsed === undefined ? BAD_REQUEST : hostRefusal(req))
      if (refusal || parsed === undefined) {
        ex.pipeline = this.opts.getPipeline()
        transport.answer(ex, req, ctx, refusal ?? BAD_REQUEST)
        this.finish(ex)
        return undefined
      }
      const identifying = this.preHandler(ex, parsed)
      if (identifying) return this.serveIdentified(identifying, ex, req, parsed, transport, ctx)
      return this.decideAndForward(ex, req, parsed, transport, ctx)
    } catch {
      this.failed(ex, req, transport, ctx)
      return undefined
    }
  }

  /** serve() after an identification that had to wait */
  private async serveIdentified<C>(
    identifying: Promise<void>,
    ex: Exchange,
    req: IncomingMessage,
    parsed: { target: string; path: string },
    transport: Transport<C>,
    ctx: C,
  ): Promise<void> {
    try {
      await identifying
      // undefined when the forward reports back by itself (an HTTP/1.1 upstream): nothing to wait for
      const forwarding = this.decideAndForward(ex, req, parsed, transport, ctx)
      if (forwarding) await forwarding
    } catch {
      this.failed(ex, req, transport, ctx)
    }
  }

  /** decide (a rejecting stage answers on the proxy's behalf), then forward; finishes the exchange */
  private decideAndForward<C>(
    ex: Exchange,
    req: IncomingMessage,
    parsed: { target: string; path: string },
    transport: Transport<C>,
    ctx: C,
  ): Promise<void> | undefined {
    if (transport.clientGone?.(ctx)) {
      ex.status = CLIENT_CLOSED
      recordCut(ex, req)
      this.finish(ex)
      return undefined
    }
    const reject = ex.attribution.reject ?? transport.refusalWhenAllowed?.(req, ctx)
    if (reject) {
      transport.answer(ex, req, ctx, reject)
      // the body held paused for the forwarder is discarded: an HTTP/2 stream whose body is never read
      // never closes, so the exchange would stay in flight and shutdown would wait out timeouts.drain
      if (req.readableFlowing === false) req.resume()
      this.finish(ex)
      return undefined
    }
    // a gRPC call goes on with the time its deadline has left: identification may have taken some of it
    const deadline = grpcTimeoutLeft(req.headers, ex.started)
    if (deadline === null) {
      // the client has given up on the call by now: the upstream is not asked to start it
      transport.answer(ex, req, ctx, DEADLINE_PASSED)
      if (req.readableFlowing === false) req.resume()
      this.finish(ex)
      return undefined
    }
    const target = this.target(ex, parsed.target)
    const headers = this.hopHeaders(ex, req, target)
    if (deadline !== undefined) headers['grpc-timeout'] = deadline
    // let through: a client waiting for its 100 Continue may send the body now (continue.ts)
    releaseContinue(req, ex.res)
    if (transport.dispatch) {
      transport.dispatch(ex, req, ctx, target, headers)
      return undefined
    }
    return this.forwardAndFinish(ex, req, transport, ctx, target, headers)
  }

  /** the forward step through the transport's promise (tunnels, forwarders without `dispatch`) */
  private async forwardAndFinish<C>(
    ex: Exchange,
    req: IncomingMessage,
    transport: Transport<C>,
    ctx: C,
    target: ForwardTarget,
    headers: UpstreamHeaders,
  ): Promise<void> {
    try {
      const result = await transport.forward(req, ctx, target, headers)
      // recorded as it stood when shutdown gave up waiting for it: the event is out, and stays as it was
      if (ex.recorded) return
      this.afterForward(ex, req, transport, ctx, result)
    } catch {
      this.failed(ex, req, transport, ctx)
    }
  }

  /** the forwarder's answer (the promise-free path): upstream failures translated, then onResponse */
  forwarded(ex: Exchange, result: ForwardResult): void {
    const req = ex.req
    const res = ex.res
    if (req === undefined || res === undefined) return
    try {
      this.afterForward(ex, req, this.http, res, result)
    } catch {
      this.failed(ex, req, this.http, res)
    }
  }

  private afterForward<C>(
    ex: Exchange,
    req: IncomingMessage,
    transport: Transport<C>,
    ctx: C,
    result: ForwardResult,
  ): void {
    ex.applyForward(result)
    if (result.clientAborted) recordCut(ex, req)
    if (result.status === 0 && result.upstreamError)
      transport.answer(ex, req, ctx, UPSTREAM_ERRORS[result.upstreamError])
    // the upstream answered before the client ended its body: nothing reads the rest, and an HTTP/2 stream
    // would stay open (unrecorded, in flight) for as long as the client waits for its flow-control window
    else if (!result.clientAborted) stopUnreadRequest(req)
    this.finish(ex)
  }

  /** an internal error: answered if the response is still open, else the response is aborted */
  private failed<C>(ex: Exchange, req: IncomingMessage, transport: Transport<C>, ctx: C): void {
    if (ex.handled) return
    try {
      if (!transport.answer(ex, req, ctx, INTERNAL_ERROR)) transport.abort?.(ctx)
    } catch {
      transport.abort?.(ctx)
    }
    this.finish(ex)
  }

  private finish(ex: Exchange): void {
    ex.handled = true
    this.onResponse(ex)
  }

  /** A request/response pair (HTTP/1.1 request or HTTP/2 stream), forwarded over HTTP. */
  handle(req: TaggedRequest, res: TaggedResponse, conn: ConnectionInfo): Promise<void> | undefined {
    const parsed = req.method === 'CONNECT' ? CONNECT_TARGET : requestTarget(req.url ?? '/')
    const ex = this.onRequest(conn, req, parsed?.path ?? '')
    req[kExchange] = ex
    res[kExchange] = ex
    ex.req = req
    ex.res = res
    res.on('close', onResponseClose)
    if (req.httpVersionMajor === 2 && req.method === 'HEAD') closeWithStream(res)
    // pipelined behind an answer still under way: node:http has given its response no socket yet
    else if (res.socket === null && req.httpVersionMajor === 1) closeWithConnection(res, req.socket)
    if ((this.draining || this.closing) && req.httpVersionMajor === 1 && !closeAfterNewest(res, req.socket)) {
      // behind an answer that said close: never answered, so not forwarded; its response never closes
      req.resume()
      ex.pipeline = this.opts.getPipeline()
      ex.status = CLIENT_CLOSED
      ex.responseClosed = true
      this.finish(ex)
      return undefined
    }
    if (parsed !== undefined && hasBody(req)) {
      // paused first so counting does not start the flow before the forwarder consumes the body
      req.pause()
      req.on('data', countRequestBytes)
    }
    return this.serve(ex, req, parsed, this.http, res)
  }
}

/**
 * node:http2's compatibility layer closes the response of a HEAD stream only once the response was ended: a
 * HEAD stream the client reset before that (any error code) closes without its response ever emitting
 * 'close', and the exchange would stay in flight, unrecorded, until shutdown gave up on it. The stream's own
 * 'close' closes the response then. (HEAD only, and only over HTTP/2: a closure per such request is cheap.)
 */
function closeWithStream(res: TaggedResponse): void {
  const stream = (res as unknown as { stream?: Duplex }).stream
  stream?.once('close', () => {
    if (res[kExchange]?.responseClosed !== true) res.emit('close')
  })
}

/** the responses pipelined on a connection that have not closed yet, closed by the connection's one listener */
const kPipelined = Symbol('nhi.pipelinedResponses')
type PipelinedSocket = Socket & { [kPipelined]?: Set<TaggedResponse> }

/**
 * A request pipelined behind another's answer: node:http holds its response until the answers before it are
 * done, and when the connection closes first (the client reset it or left) it closes only the response on the
 * socket, never those waiting behind it ("Abort socket._httpMessage ?" in its socketOnClose). Each would stay
 * in flight, unrecorded and holding its buffered answer, until shutdown gave up on it, as many as a client
 * pipelines before it leaves. The connection's 'close' closes them then: one listener per connection for all
 * of them (a client pipelining dozens must not add a listener each, which Node warns about past ten), each
 * response leaving the set as it closes. (Pipelined requests only.)
 */
function closeWithConnection(res: TaggedResponse, socket: Socket): void {
  const connection = socket as PipelinedSocket
  let waiting = connection[kPipelined]
  if (waiting === undefined) {
    const responses = new Set<TaggedResponse>()
    waiting = responses
    connection[kPipelined] = responses
    socket.once('close', () => {
      // a response's own 'close' takes it out of the set, which for…of allows
      for (const r of responses) {
        const ex = r[kExchange]
        if (ex === undefined || ex.responseClosed) continue
        // never handed the connection: not a byte of it went out, though the upstream may have answered it whole
        if (r.socket === null && !r.writableFinished) ex.unanswered = true
        r.emit('close')
      }
      responses.clear()
    })
  }
  const responses = waiting
  responses.add(res)
  res.once('close', () => responses.delete(res))
}

function onResponseClose(this: TaggedResponse): void {
  const ex = this[kExchange]
  if (!ex) return
  ex.responseClosed = true
  ex.owner?.onResponse(ex)
  // the forward's own close handling, in the order two listeners had (this one was added first)
  responseClosed(this)
}
