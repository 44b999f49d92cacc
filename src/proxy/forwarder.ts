// Forwarders carry one request to the upstream and stream the answer back (docs/reference.md "Request pipeline" "forward").
// The HTTP/1.1 forwarder drives an engine's `dispatch` with a handler that writes straight into the client's
// response: no intermediate streams, no buffering, backpressure through the engine's pause/resume.
// Requests go through our own connection pool (h1-pool.ts), websocket upgrades through undici's.
import { createHash } from 'node:crypto'
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import type { ConnectionOptions } from 'node:tls'
import type { Dispatcher, buildConnector as UndiciBuildConnector } from 'undici'
import connectModule from 'undici/lib/core/connect.js'
import type { TunnelProtocol } from '../telemetry/metrics.ts'
import type { UpstreamErrorReason } from '../types.ts'
import { MAX_TIMER_MS } from '../util/duration.ts'
import type { CorsMemory } from './cors.ts'
import { endGrpcWithStatus, GRPC, grpcTimeoutMs, sendGrpcStatus } from './grpc.ts'
import { endGrpcWebWithStatus, type GrpcWebStatusReader, grpcWebResponse, isGrpcWeb } from './grpc-web.ts'
import { H1Pool, type UpstreamHandler } from './h1-pool.ts'
import {
  downstreamHeaders,
  downstreamTrailers,
  type HeaderBlocks,
  singleValued,
  type UpstreamHeaders,
} from './headers.ts'
import { resetByProxy } from './http2-listener.ts'
import { hasBody } from './request-lifecycle.ts'
import { clearHeaders, endAnswered } from './respond.ts'
import { Pool, UNDICI_HEADER_BLOCKS } from './undici-pool.ts'
import { parseUpstream, type Upstream, upstreamTlsFor } from './upstream-url.ts'

const buildConnector = connectModule as typeof UndiciBuildConnector
type UndiciConnector = UndiciBuildConnector.connector

/** Where a request goes: the upstream origin and the full request target (base path + client path + query). */
export interface ForwardTarget {
  origin: string
  path: string
  /** how to reach the origin (protocol, TLS, socket path); absent means plain HTTP/1.1 to `origin` */
  upstream?: Upstream
  /**
   * Request trailers never forwarded beyond the proxy's own list (normalized names): the headers the serving
   * config reads credentials from or its identity rules match, so a value sent after the body cannot stand in
   * for the attributed one.
   */
  withheldTrailers?: ReadonlySet<string> | undefined
  /**
   * performance.now() when the request arrived: a gRPC call's `grpc-timeout` counts from there, as its client's
   * did, not from the forward, which identification (a key set fetched on a first token) may have delayed
   */
  receivedAt?: number
  /** where the upstream's CORS answers are learnt, for the proxy's own answers (cors.ts) */
  cors?: CorsMemory | undefined
}

export interface ForwardResult {
  /** upstream status, or 0 when no response headers arrived */
  status: number
  /** from dispatch until the upstream response ended or failed */
  upstreamMs: number
  /** response body bytes written to the client (for upgrades: bytes sent to the client after the 101) */
  bytesOut: number
  /** upgrades only: bytes the client sent through the tunnel */
  bytesIn?: number
  upstreamError?: UpstreamErrorReason
  /** the client went away before the response was complete */
  clientAborted?: boolean
  /** gRPC calls: the status from the upstream's trailers (or the one the proxy ended the call with) */
  grpcStatus?: number
}

/**
 * timeouts.tunnelIdle: an exchange that no longer has a deadline of its own (an established websocket tunnel,
 * an HTTP/2 upstream stream once answered) is cut when no byte moved either way for `ms`.
 */
export interface TunnelIdle {
  /** 0: never */
  readonly ms: number
  /** told after each cut, for counting and logging */
  readonly closed?: ((protocol: TunnelProtocol) => void) | undefined
}

/** Told once when a forward is finished: the promise-free form of `Forwarder.forward`'s result. */
export interface ForwardListener {
  forwarded(result: ForwardResult): void
  /**
   * true when the listener's owner already listens for the response's `close` and passes it on through
   * `responseClosed`: the forward then adds no `close` listener of its own (a second one turns the
   * response's listener slot into an array, per request)
   */
  readonly relaysClose?: boolean
}

/** the client's response closed: a forward still running on it stops (see ForwardListener.relaysClose) */
export function responseClosed(res: ServerResponse): void {
  ;(res as Tagged<ServerResponse>)[kCall]?.clientClosed()
}

export interface Forwarder {
  /**
   * Streams `req` to the target and the response into `res`. Never rejects. When the upstream fails before
   * answering, nothing is written to `res` (status 0 + upstreamError) so the caller answers 502/504;
   * after headers were sent, a failure destroys `res`.
   */
  forward(
    req: IncomingMessage,
    res: ServerResponse,
    target: ForwardTarget,
    headers: UpstreamHeaders,
  ): Promise<ForwardResult>
  /**
   * `forward` without a promise: the result goes to `listener`, once (synchronously when the request is
   * refused before it is sent). The request path uses it so that its forward step costs no promise and no
   * closure.
   */
  dispatch?(
    req: IncomingMessage,
    res: ServerResponse,
    target: ForwardTarget,
    headers: UpstreamHeaders,
    listener: ForwardListener,
  ): void
  /**
   * Forwards an `Upgrade` request; on 101 pipes both sockets until either side closes, then resolves.
   * On a failure before any response, resolves with status 0 and writes nothing to `socket`.
   */
  upgrade(
    req: IncomingMessage,
    socket: Duplex,
    head: Buffer,
    target: ForwardTarget,
    headers: UpstreamHeaders,
  ): Promise<ForwardResult>
  /**
   * Prepared header entries (headers.ts HeaderBlocks) when the engine that will carry this request writes
   * them as the same lines; undefined otherwise.
   */
  headerBlocks?(req: IncomingMessage, target: ForwardTarget): HeaderBlocks | undefined
  /** Releases connections to origins other than `keep` (after a config reload changed the upstream). */
  prune(keep: string): void
  /**
   * Rotated upstreamTls material: connections opened from now on use it. Open connections are let go as
   * with `prune` (their in-flight requests finish), so no new request rides on the old certificate and no
   * TLS session made with it is resumed.
   */
  setTls?(tls: ConnectionOptions | undefined): void
  /**
   * The end of the drain: the gRPC calls still in flight end with a status their clients can retry (HTTP/2
   * upstreams); resolves once those answers have gone out.
   */
  endCalls?(): Promise<void>
  /** Closes all upstream connections. */
  close(): Promise<void>
}

/**
 * The upstream connect deadline both forwarders use: the configured one, else the headers deadline capped at
 * 10 s, so an unreachable upstream fails fast even when slow responses are allowed.
 */
function onResponseStalled(this: ServerResponse): void {
  cutResponse(this)
}

/** the reason an HTTP/2 response is reset with when the proxy cuts it: any error resets with INTERNAL_ERROR */
const RESPONSE_CUT = Object.assign(new Error('response cut short'), { code: 'ERR_RESPONSE_CUT' })

/**
 * Ends a response that is under way but will not be completed (the upstream failed mid-body, the client stalled).
 * On HTTP/1.1 the connection is closed, which a client reads as a truncated body. On HTTP/2 a plain destroy()
 * resets the stream with NO_ERROR, which node:http2 and curl clients take for the body's normal end (RFC 9113
 * §8.1 uses NO_ERROR after a complete response): the stream is reset with INTERNAL_ERROR instead.
 */
export function cutResponse(res: ServerResponse): void {
  const stream = (res as unknown as { stream?: Duplex }).stream
  if (stream !== undefined) {
    if (!stream.destroyed) {
      resetByProxy(stream)
      stream.destroy(RESPONSE_CUT)
    }
  } else if (res.socket === null && !res.destroyed) {
    // pipelined behind an answer still under way: node:http hands this response the connection in its turn,
    // and destroy() would close it the moment it does, before any of this answer went out. The client would
    // see the connection close with no sign that this request was served (one it may then send again). What
    // was passed on of it (the upstream's head, the body so far) goes out in its turn, then the connection closes.
    res.once('socket', closeAfterFlush)
  } else res.destroy()
}

/** a cut response's socket: node:http writes what the response holds right after its 'socket' event */
function closeAfterFlush(socket: Socket): void {
  process.nextTick(closeWhenWritten, socket)
}

function closeWhenWritten(socket: Socket): void {
  socket.destroySoon()
}

/** the status message of a gRPC call the proxy ends at its own `grpc-timeout` */
export const DEADLINE_MESSAGE = 'deadline exceeded'
/** the status message of a gRPC call whose upstream failed after its response started */
export const UPSTREAM_RESET_MESSAGE = 'upstream reset the call'

/**
 * The `grpc-timeout` of a gRPC-Web call, ms, which the HTTP/1.1 forwarders end themselves (an HTTP/1.1
 * upstream has no stream to cancel at the deadline); undefined for any other request or a malformed value.
 */
export function webCallDeadline(headers: IncomingHttpHeaders): number | undefined {
  return headers['grpc-timeout'] !== undefined && isGrpcWeb(headers) ? grpcTimeoutMs(headers) : undefined
}

/**
 * Starts the timer of a gRPC call's own deadline: `ms` (its `grpc-timeout`) counted from `receivedAt`, its
 * arrival, as its client counts it. A deadline past what a timer holds (about 24.8 days) would fire at once:
 * it is left to the client and the upstream, as if none were set (undefined).
 */
export function callDeadlineTimer<A>(
  ms: number,
  receivedAt: number,
  passed: (arg: A) => void,
  arg: A,
): NodeJS.Timeout | undefined {
  const left = ms - (performance.now() - receivedAt)
  return left <= MAX_TIMER_MS ? setTimeout(passed, Math.max(0, left), arg) : undefined
}

/**
 * The status a gRPC call is recorded with when its client went away before the response ended. A gRPC-Web
 * client has its status once the body's trailer frame (or a trailers-only header section) went by, and may
 * let go of the response before its end (Connect's client does): that status. Otherwise the call was
 * cancelled, and a cancel within the last tenth (at most 100 ms) of its `grpc-timeout` (`deadline`, ms,
 * counted from `deadlineFrom`) is the client's timer at that deadline, which it counted from before the
 * proxy saw the call.
 */
export function clientLeftStatus(
  web: GrpcWebStatusReader | undefined,
  httpStatus: number,
  deadline: number | undefined,
  deadlineFrom: number,
): number {
  if (web?.position() === 'ended') return web.result(httpStatus)
  const elapsed = performance.now() - deadlineFrom
  return deadline !== undefined && elapsed >= deadline - Math.min(100, deadline / 10)
    ? GRPC.DEADLINE_EXCEEDED
    : GRPC.CANCELLED
}

/**
 * Ends a gRPC call whose response already started with `code`: in trailers, or for a gRPC-Web call
 * (`web`: its response's reader) in the body, as its clients read a status (grpc-web.ts). A gRPC-Web body
 * that stopped inside a frame cannot take one: the response is cut, which its client reads as a failed call.
 * Returns the status the call is recorded with.
 */
export function endCallWithStatus(
  res: ServerResponse,
  web: GrpcWebStatusReader | undefined,
  code: number,
  message: string,
  httpStatus: number,
): number {
  if (web === undefined && !isGrpcWeb(res.req?.headers ?? {})) {
    endGrpcWithStatus(res, code, message)
    return code
  }
  const read = endGrpcWebWithStatus(res, web, code, message, httpStatus)
  if (read !== undefined) return read
  if (!res.writableEnded) cutResponse(res)
  return code
}

/**
 * Whether the client's HTTP/2 stream can no longer be answered, releasing it if so. A stream reset with
 * NO_ERROR after its writable side had ended (node:http2 ends a HEAD request's at once) is closed without an
 * 'aborted' and without its response closing: respond() on it throws, and the exchange would stay in flight
 * until the connection goes. Destroying it closes the response, so the exchange is recorded as the client's
 * cancellation.
 */
export function clientStreamGone(res: ServerResponse): boolean {
  const stream = (res as unknown as { stream?: Duplex & { closed?: boolean } }).stream
  if (stream === undefined || !(stream.closed === true || stream.destroyed)) return false
  if (!stream.destroyed) stream.destroy()
  return true
}

/**
 * The client took none of the response for a while (a full socket buffer, an HTTP/2 window it never opens):
 * from now on, a response that takes no bytes for `ms` is cut. Without it a client that stops reading holds
 * its connection, the upstream request and an in-flight exchange for as long as it likes: the upstream body
 * deadline does not run while the upstream is paused for the client. `first`: the first backpressure of this
 * response (the listener is added once). The socket's (HTTP/1.1) or stream's (HTTP/2) timeout is activity
 * based, so a slow reader that keeps taking bytes is not cut.
 */
export function responseBlocked(res: ServerResponse, ms: number, first: boolean): void {
  if (ms <= 0 || res.destroyed) return
  if (first) res.on('timeout', onResponseStalled)
  res.setTimeout(ms)
}

/** the client reads again: a response that then goes quiet is the upstream's, and its own deadlines apply */
export function responseDrained(res: ServerResponse): void {
  if (!res.destroyed) res.setTimeout(0)
}

export function connectTimeoutMs(o: { connectTimeout?: number | undefined; headersTimeout: number }): number {
  return o.connectTimeout ?? Math.min(o.headersTimeout, 10_000)
}

/**
 * The timer of an upstream deadline of `ms` (connecting, a response head, a session's PING), or none: a
 * deadline of 0 is no deadline (`timeouts.upstream: 0`), as undici and the HTTP/1.1 engine read it, not an
 * immediate one.
 */
export function upstreamDeadline(ms: number, expired: () => void): NodeJS.Timeout | undefined {
  return ms > 0 ? setTimeout(expired, ms) : undefined
}

/**
 * An upstream exchange failed (`reason` as counted in nhi_upstream_errors_total; never for a client that
 * left): the error, so that the operator's log can say why (a TLS certificate refused, a connection refused).
 */
export type UpstreamFailed = (reason: UpstreamErrorReason, err: unknown) => void

export interface Http1ForwarderOptions {
  /** response headers deadline, ms (→ 504) */
  headersTimeout: number
  /**
   * longest pause between response body chunks while the client is reading, ms; also how long a client may
   * take none of a response the proxy has bytes of (then it is disconnected)
   */
  bodyTimeout: number
  /** TCP connect deadline, ms (→ 502) */
  connectTimeout?: number
  /** idle keep-alive of upstream connections, ms */
  keepAliveTimeout?: number
  /** TLS to https: upstreams: CA bundle, client certificate (mTLS origination), server name */
  tls?: ConnectionOptions
  /** when an established websocket tunnel counts as abandoned */
  tunnelIdle?: TunnelIdle
  /**
   * how long a client whose upgrade the upstream answered without a switch may keep the connection open
   * after that answer, ms (timeouts.idle; unset or 0: until it closes it)
   */
  answeredLinger?: number
  /** every request through undici's Pool too: the benchmark's baseline of the engine h1-pool.ts replaced */
  undiciOnly?: boolean
  failed?: UpstreamFailed
  /**
   * the engine closed a connection on bytes no response framed (after a complete response, or while idle): an
   * upstream error no request failed on, for counting and logging
   */
  unframedBytes?: (err: Error) => void
}

class ClientGoneError extends Error {
  override readonly name = 'ClientGoneError'
}

/** the call's own deadline passed: the proxy answered the client, the upstream request is let go */
class DeadlinePassedError extends Error {
  override readonly name = 'DeadlinePassedError'
}

function callDeadlinePassed(call: ResponseCall): void {
  call.deadlinePassed()
}

function classify(err: unknown, connected: boolean): UpstreamErrorReason {
  const code = (err as { code?: unknown } | null)?.code
  if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') return 'timeout'
  if (code === 'UND_ERR_CONNECT_TIMEOUT') return 'connect'
  return connected ? 'reset' : 'connect'
}

/** the reason an engine's error counts as, told to `failed` with the error; none for a client that left */
function upstreamFailure(
  err: unknown,
  connected: boolean,
  clientAborted: boolean,
  failed: UpstreamFailed | undefined,
): UpstreamErrorReason | undefined {
  if (clientAborted) return undefined
  const reason = classify(err, connected)
  failed?.(reason, err)
  return reason
}

/** trailers for node:http's addTrailers: pairs keep each line as the upstream sent it */
function trailerPairs(kept: string[]): [string, string][] {
  const pairs: [string, string][] = []
  for (let i = 0; i + 1 < kept.length; i += 2) pairs.push([kept[i]!, kept[i + 1]!])
  return pairs
}

/**
 * trailers for node:http2's addTrailers, which reads an object's keys only: pairs would reach the client as
 * fields named 0, 1, …. A repeated field goes as its list of values, a repeated single-value one as its first
 * (node:http2 throws on it when the trailers are sent, past any catch here)
 */
function trailerFields(kept: string[]): Record<string, string | string[]> {
  const fields: Record<string, string | string[]> = {}
  const single = singleValued(kept)
  for (let i = 0; i + 1 < single.length; i += 2) {
    const name = single[i]!.toLowerCase()
    const value = single[i + 1]!
    const known = fields[name]
    if (known === undefined) fields[name] = value
    else if (typeof known === 'string') fields[name] = [known, value]
    else known.push(value)
  }
  return fields
}

const kCall = Symbol('nhi.forwardCall')
type Tagged<T> = T & { [kCall]?: ResponseCall }

function onResponseDrain(this: Tagged<ServerResponse>): void {
  responseDrained(this)
  this[kCall]?.resumeUpstream()
}
function onResponseClose(this: Tagged<ServerResponse>): void {
  this[kCall]?.clientClosed()
}

/**
 * One in-flight request: undici's legacy handler interface is the lowest-overhead one. Once settled it is also
 * the request's ForwardResult, so a forward allocates no result object.
 */
class ResponseCall implements Dispatcher.DispatchHandler, UpstreamHandler, ForwardResult {
  status = 0
  bytesOut = 0
  upstreamMs = 0
  upstreamError: UpstreamErrorReason | undefined
  clientAborted: boolean | undefined
  private connected = false
  private settled = false
  private clientGone = false
  private abortUpstream: ((err?: Error) => void) | undefined
  private resume: (() => void) | undefined
  grpcStatus: number | undefined
  /** gRPC-Web calls: reads the status from the response body's trailer frame */
  private grpcWeb: GrpcWebStatusReader | undefined
  /** the response head as the engine handed it: its Connection names also leave the trailers */
  private rawHead: readonly (Buffer | string)[] = []
  /** the drain listener is added at the first backpressure only; most responses never see one */
  private drainListening = false
  private readonly started = performance.now()
  /** a gRPC-Web call's `grpc-timeout` (watchDeadline) */
  private deadline: NodeJS.Timeout | undefined
  private deadlineMs: number | undefined
  private deadlineFrom = 0

  constructor(
    private readonly res: Tagged<ServerResponse>,
    private readonly done: ForwardListener,
    private readonly stallMs: number,
    private readonly failed: UpstreamFailed | undefined,
    private readonly cors: CorsMemory | undefined,
  ) {
    res[kCall] = this
    if (done.relaysClose !== true) res.on('close', onResponseClose)
  }

  resumeUpstream(): void {
    this.resume?.()
  }

  /**
   * A gRPC-Web call with a `grpc-timeout` of `ms` (`receivedAt`: its arrival, which the deadline counts from, as its
   * client counts it) is ended at that deadline, as an HTTP/2 upstream's call is (http2-forwarder.ts). A
   * deadline past what a timer holds is left to the client and the upstream.
   */
  watchDeadline(ms: number, receivedAt: number): void {
    this.deadlineMs = ms
    this.deadlineFrom = receivedAt
    this.deadline = callDeadlineTimer(ms, receivedAt, callDeadlinePassed, this)
  }

  /**
   * The call's deadline passed: its client gets DEADLINE_EXCEEDED as a gRPC-Web answer (trailers-only, or a
   * trailer frame once the upstream answered) and the upstream request is aborted. The deadline is the
   * client's: no upstream error, the call is recorded with grpc_status 4.
   */
  deadlinePassed(): void {
    this.deadline = undefined
    if (this.settled) return
    const res = this.res
    if (this.clientGone || res.destroyed || clientStreamGone(res)) {
      this.clientClosed()
      return
    }
    this.grpcStatus = GRPC.DEADLINE_EXCEEDED
    if (!res.headersSent) {
      if (!sendGrpcStatus(res, GRPC.DEADLINE_EXCEEDED, DEADLINE_MESSAGE, this.cors)) {
        this.clientClosed()
        return
      }
      this.status = 200
    } else
      this.grpcStatus = endCallWithStatus(
        res,
        this.grpcWeb,
        GRPC.DEADLINE_EXCEEDED,
        DEADLINE_MESSAGE,
        this.status,
      )
    const abort = this.abortUpstream
    this.settle(undefined)
    // after the answer is settled: the engine reports the abort through onError, which a settled call ignores
    abort?.(new DeadlinePassedError('deadline exceeded'))
  }

  clientClosed(): void {
    // writableEnded, not writableFinished: an HTTP/2 response reports the latter true once its stream was
    // reset, and the upstream request would run on (and shutdown wait for it)
    if (this.settled || this.res.writableEnded) return
    this.clientGone = true
    this.abortUpstream?.(new ClientGoneError('client closed the connection'))
  }

  onConnect(abort: (err?: Error) => void): void {
    this.connected = true
    this.abortUpstream = abort
    if (this.clientGone) abort(new ClientGoneError('client closed the connection'))
    // answered at its deadline while the upstream connection was being made
    else if (this.settled) abort(new DeadlinePassedError('deadline exceeded'))
  }

  onHeaders(statusCode: number, rawHeaders: readonly (Buffer | string)[], resume: () => void): boolean {
    if (statusCode < 200) return true
    this.resume = resume
    if (!this.clientGone && clientStreamGone(this.res)) this.clientClosed()
    if (this.clientGone) {
      this.status = statusCode
      return false
    }
    const req = this.res.req
    const headers = downstreamHeaders(rawHeaders, statusCode, req?.method === 'HEAD')
    this.rawHead = rawHeaders
    if (req !== undefined) this.grpcWeb = grpcWebResponse(req.headers, headers)
    try {
      // node:http2 refuses a repeated single-value field (HTTP/1.1 clients get it as sent)
      this.res.writeHead(statusCode, this.res.req?.httpVersionMajor === 2 ? singleValued(headers) : headers)
    } catch (err) {
      // nothing was sent: status 0, so the caller answers 502 instead of leaving the response open forever
      clearHeaders(this.res)
      throw err
    }
    this.status = statusCode
    if (req !== undefined && req.headers.origin !== undefined) this.cors?.learnFromPairs(req, headers)
    return true
  }

  onData(chunk: Buffer): boolean {
    this.bytesOut += chunk.length
    this.grpcWeb?.push(chunk)
    const flowing = this.res.write(chunk)
    if (!flowing) {
      responseBlocked(this.res, this.stallMs, !this.drainListening)
      if (!this.drainListening) {
        this.drainListening = true
        this.res.on('drain', onResponseDrain)
      }
    }
    return flowing
  }

  onComplete(trailers: (Buffer | string)[] | null): void {
    if (trailers && trailers.length > 0 && !this.res.writableEnded) {
      // HTTP/1.1 trailers (TE: trailers) go on as trailers; hop-by-hop names are dropped as in headers, and
      // so are the names the response head's Connection listed
      const kept = downstreamTrailers(
        trailers.map((x) => (typeof x === 'string' ? Buffer.from(x, 'latin1') : x)),
        this.rawHead,
      )
      try {
        this.res.addTrailers(this.res.req?.httpVersionMajor === 2 ? trailerFields(kept) : trailerPairs(kept))
      } catch {
        // an invalid trailer is dropped, the response still ends
      }
    }
    this.res.end()
    if (this.grpcWeb) this.grpcStatus = this.grpcWeb.result(this.status)
    this.settle(undefined)
  }

  onError(err: Error): void {
    // the call was answered without the upstream (its deadline passed), which was then let go
    if (this.settled) return
    if (
      (this.status === 304 || this.status === 204) &&
      (err as { code?: string }).code === 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH' &&
      !this.res.writableEnded
    ) {
      // a 304 may carry the representation's Content-Length (RFC 9110 §8.6) and has no content: undici counts
      // that as a truncated body, but the response is complete
      this.onComplete(null)
      return
    }
    const clientAborted =
      this.clientGone ||
      err instanceof ClientGoneError ||
      (err as { code?: string }).code === 'UND_ERR_ABORTED'
    if (this.res.headersSent && !this.res.writableFinished) {
      // a gRPC-Web call the upstream cut ends with a status its client reads, as one from an HTTP/2 upstream
      if (!clientAborted && this.grpcWeb !== undefined)
        this.grpcStatus = endCallWithStatus(
          this.res,
          this.grpcWeb,
          GRPC.UNAVAILABLE,
          UPSTREAM_RESET_MESSAGE,
          this.status,
        )
      else cutResponse(this.res)
    }
    if (clientAborted && isGrpcWeb(this.res.req?.headers ?? {}))
      this.grpcStatus = clientLeftStatus(this.grpcWeb, this.status, this.deadlineMs, this.deadlineFrom)
    this.settle(upstreamFailure(err, this.connected, clientAborted, this.failed), clientAborted)
  }

  private settle(upstreamError: UpstreamErrorReason | undefined, clientAborted = false): void {
    if (this.settled) return
    this.settled = true
    if (this.deadline !== undefined) clearTimeout(this.deadline)
    if (!clientAborted) releaseUnreadBody(this.res.req)
    if (this.drainListening) this.res.off('drain', onResponseDrain)
    if (this.done.relaysClose !== true) this.res.off('close', onResponseClose)
    this.res[kCall] = undefined
    this.upstreamMs = performance.now() - this.started
    if (upstreamError) this.upstreamError = upstreamError
    if (clientAborted) this.clientAborted = true
    this.done.forwarded(this)
  }
}

/**
 * The forward is over while an HTTP/1.1 client is still sending its body (the upstream answered, or failed,
 * without reading all of it). The engine stops reading the body (undici also destroys the stream), so nothing
 * would take the rest off the connection: it would stall, the uploading client with it, until timeouts.idle
 * and then be reset. The rest is read and discarded instead, as Node does for a body no one reads, and the
 * connection goes on. (HTTP/2 streams: see the lifecycle's afterForward.)
 */
function releaseUnreadBody(req: IncomingMessage | undefined): void {
  if (req === undefined || req.complete || req.httpVersionMajor !== 1) return
  const dump = (req as unknown as { _dump?: () => void })._dump
  if (typeof dump === 'function') dump.call(req)
  else req.socket?.destroy()
}

const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'

/**
 * RFC 6455 §4.1: a 101 counts only when it switches to websocket and proves it read this handshake's key.
 * An upstream that switches to anything it is asked for never gets a raw tunnel out of the proxy.
 */
function isWebSocketAccept(rawHeaders: Buffer[] | string[] | null, key: string | undefined): boolean {
  if (!key) return false
  const expected = createHash('sha1').update(`${key}${WS_GUID}`).digest('base64')
  let upgrade = false
  let accept = false
  const raw = rawHeaders ?? []
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!.toString().toLowerCase()
    const value = raw[i + 1]!.toString().trim()
    if (name === 'upgrade') upgrade = value.toLowerCase() === 'websocket'
    else if (name === 'sec-websocket-accept') accept = value === expected
  }
  return upgrade && accept
}

/** Upgrade (websocket) tunnel: answers non-101 responses like a normal response on the raw socket. */
class UpgradeCall implements Dispatcher.DispatchHandler {
  private status = 0
  private bytesIn = 0
  private bytesOut = 0
  private connected = false
  private settled = false
  private upstreamMs = 0
  private readonly started = performance.now()
  private abort: ((err?: Error) => void) | undefined
  /** what the client sent while the upstream had not answered: the tunnel's first bytes after `head` */
  private early: Buffer[] = []
  private earlyBytes = 0

  constructor(
    private readonly client: Duplex,
    private readonly head: Buffer,
    private readonly key: string | undefined,
    private readonly done: (result: ForwardResult) => void,
    private readonly idle: TunnelIdle | undefined,
    private readonly linger: number,
    private readonly failed: UpstreamFailed | undefined,
  ) {
    // node:http hands an upgrade's socket over not reading: a client that left (FIN or RST) while the
    // upstream takes its time was seen only once something was written to it, at the upstream deadline.
    // Read it while waiting, as node:http reads a request's socket, keeping what comes for the tunnel.
    client.on('data', this.onEarlyData)
    client.on('end', this.onClientEnd)
    client.on('close', this.onClientClose)
  }

  private readonly onEarlyData = (chunk: Buffer): void => {
    this.early.push(chunk)
    this.earlyBytes += chunk.length
    // no more held than the socket's own buffer held unread before: past it, the client waits for the answer
    if (this.earlyBytes >= this.client.readableHighWaterMark) this.client.pause()
  }

  /** a client that ends its side before the answer is gone, as node:http takes a request's client to be */
  private readonly onClientEnd = (): void => {
    this.client.destroy()
  }

  private readonly onClientClose = (): void => {
    this.abort?.(new ClientGoneError('client closed the connection'))
  }

  /** the answer came or the call ended: the tunnel (or nothing) reads the client from now on */
  private stopWatching(): void {
    this.client.off('data', this.onEarlyData)
    this.client.off('end', this.onClientEnd)
    this.client.off('close', this.onClientClose)
  }

  onConnect(abort: (err?: Error) => void): void {
    this.connected = true
    if (this.client.destroyed) abort(new ClientGoneError('client closed the connection'))
    else this.abort = abort
  }

  onUpgrade(statusCode: number, rawHeaders: Buffer[] | string[] | null, upstream: Duplex): void {
    this.status = statusCode
    this.upstreamMs = performance.now() - this.started
    this.stopWatching()
    const client = this.client
    if (client.destroyed) {
      upstream.destroy()
      this.settle(undefined, true)
      return
    }
    if (!isWebSocketAccept(rawHeaders, this.key)) {
      // not a websocket answer: no tunnel; the caller answers 502
      upstream.destroy()
      this.status = 0
      this.settle('reset')
      return
    }
    // the upstream's hop-by-hop fields stay on its hop, as in any response; the switch itself is this hop's.
    // Bytes as sent: a value is latin1 on the wire, not UTF-8
    const raw = rawHeaders ?? []
    const headers = downstreamHeaders(raw.map((x) => (typeof x === 'string' ? Buffer.from(x, 'latin1') : x)))
    let head = `HTTP/1.1 ${statusCode} Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n`
    for (let i = 0; i + 1 < headers.length; i += 2) head += `${headers[i]}: ${headers[i + 1]}\r\n`
    client.write(`${head}\r\n`, 'latin1')
    this.bytesIn = this.head.length + this.earlyBytes
    if (this.head.length > 0) upstream.write(this.head)
    for (const chunk of this.early) upstream.write(chunk)
    this.early = []
    let open = 2
    const closed = () => {
      if (--open === 0) this.settle(undefined)
    }
    client.on('data', (c: Buffer) => {
      this.bytesIn += c.length
    })
    upstream.on('data', (c: Buffer) => {
      this.bytesOut += c.length
    })
    client.on('error', () => upstream.destroy())
    upstream.on('error', () => client.destroy())
    client.once('close', () => {
      upstream.destroy()
      closed()
    })
    upstream.once('close', () => {
      client.destroy()
      closed()
    })
    upstream.pipe(client)
    client.pipe(upstream)
    const idle = this.idle
    if (idle !== undefined && idle.ms > 0) {
      // every byte of the tunnel is read from or written to the client's socket, so that socket's own
      // activity timer is the tunnel's: one timer, restarted by the socket, nothing done per chunk
      const watched =
        typeof (client as Socket).setTimeout === 'function' ? (client as Socket) : (upstream as Socket)
      watched.setTimeout(idle.ms, () => {
        idle.closed?.('websocket')
        client.destroy()
        upstream.destroy()
      })
    }
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[]): boolean {
    if (statusCode < 200) return true
    this.status = statusCode
    this.upstreamMs = performance.now() - this.started
    const headers = downstreamHeaders(rawHeaders)
    let head = `HTTP/1.1 ${statusCode} \r\n`
    for (let i = 0; i + 1 < headers.length; i += 2) head += `${headers[i]}: ${headers[i + 1]}\r\n`
    this.client.write(`${head}connection: close\r\n\r\n`, 'latin1')
    return true
  }

  onData(chunk: Buffer): boolean {
    this.bytesOut += chunk.length
    return this.client.write(chunk)
  }

  onComplete(): void {
    endAnswered(this.client, this.linger)
    this.settle(undefined)
  }

  onError(err: Error): void {
    const clientAborted = err instanceof ClientGoneError || this.client.destroyed
    if (this.status !== 0) this.client.destroy()
    this.settle(upstreamFailure(err, this.connected, clientAborted, this.failed), clientAborted)
  }

  private settle(upstreamError: UpstreamErrorReason | undefined, clientAborted = false): void {
    if (this.settled) return
    this.settled = true
    this.stopWatching()
    this.early = []
    // no tunnel (or one that has ended): what the client still sends is read and dropped, so that its
    // leaving is seen and the socket closes, one paused for holding too much included
    this.client.resume()
    const result: ForwardResult = {
      status: this.status,
      upstreamMs: this.upstreamMs || performance.now() - this.started,
      bytesOut: this.bytesOut,
      bytesIn: this.bytesIn,
    }
    if (upstreamError) result.upstreamError = upstreamError
    if (clientAborted) result.clientAborted = true
    this.done(result)
  }
}

/**
 * undici's TLS connector with the server name pinned (upstreamTlsFor): undici takes a request's server
 * name from its Host header, which the client sets, before the configured one.
 */
function tlsConnector(host: string, options: ConnectionOptions & { timeout: number }): UndiciConnector {
  const tls = upstreamTlsFor(host, options)
  const connector = buildConnector({ ...tls, servername: tls.servername || undefined })
  // without a server name (an IP address), no host either: undici would make the origin's host the SNI
  if (tls.servername === '')
    return (opts, callback) => connector({ ...opts, servername: undefined, host: '' }, callback)
  return (opts, callback) => connector({ ...opts, servername: undefined }, callback)
}

/**
 * The production HTTP/1.1 forwarder: per upstream origin, our own keep-alive pool for requests (http:,
 * https:, unix:), undici's Pool for websocket upgrades.
 */
export class Http1Forwarder implements Forwarder {
  private readonly pools = new Map<string, Pool>()
  private readonly engine = new Map<string, H1Pool>()
  private tls: ConnectionOptions | undefined

  constructor(private readonly options: Http1ForwarderOptions) {
    this.tls = options.tls
  }

  /** our own engine for an HTTP/1.1 origin; undefined when undici carries every request (undiciOnly) */
  private enginePool(target: ForwardTarget): H1Pool | undefined {
    const known = this.engine.get(target.origin)
    if (known !== undefined) return known
    const o = this.options
    // a target without its Upstream (an embedding program's, the bench's bare proxy) is HTTP/1.1 to `origin`
    const upstream = target.upstream ?? parseUpstream(target.origin)
    if (upstream.protocol !== 'http1' || o.undiciOnly === true) return undefined
    const pool = new H1Pool({
      host: upstream.host,
      port: upstream.port,
      socketPath: upstream.socketPath,
      // as undici names the origin: its host and port as in the URL (unix sockets: localhost)
      hostHeader: upstream.socketPath
        ? upstream.host
        : upstream.origin.slice(upstream.origin.indexOf('//') + 2),
      connectTimeout: connectTimeoutMs(o),
      headersTimeout: o.headersTimeout,
      bodyTimeout: o.bodyTimeout,
      keepAliveTimeout: o.keepAliveTimeout ?? 4_000,
      tls: upstream.tls ? (this.tls ?? {}) : undefined,
      unframedBytes: o.unframedBytes,
    })
    this.engine.set(target.origin, pool)
    return pool
  }

  private pool(target: ForwardTarget): Pool {
    const origin = target.origin
    let pool = this.pools.get(origin)
    if (pool === undefined) {
      const o = this.options
      // a target without its Upstream (an embedding program's, the bench's bare proxy) is HTTP/1.1 to `origin`
      const upstream = target.upstream ?? parseUpstream(origin)
      const timeout = connectTimeoutMs(o)
      pool = new Pool(upstream.socketPath ? 'http://localhost' : origin, {
        headersTimeout: o.headersTimeout,
        bodyTimeout: o.bodyTimeout,
        keepAliveTimeout: o.keepAliveTimeout ?? 4_000,
        connect: upstream.tls
          ? tlsConnector(upstream.host, { timeout, ...this.tls })
          : { timeout, ...(upstream.socketPath ? { socketPath: upstream.socketPath } : {}) },
      })
      this.pools.set(origin, pool)
    }
    return pool
  }

  forward(
    req: IncomingMessage,
    res: ServerResponse,
    target: ForwardTarget,
    headers: UpstreamHeaders,
  ): Promise<ForwardResult> {
    return new Promise((resolve) => this.dispatch(req, res, target, headers, { forwarded: resolve }))
  }

  dispatch(
    req: IncomingMessage,
    res: ServerResponse,
    target: ForwardTarget,
    headers: UpstreamHeaders,
    listener: ForwardListener,
  ): void {
    const call = new ResponseCall(res, listener, this.options.bodyTimeout, this.options.failed, target.cors)
    const deadline = webCallDeadline(req.headers)
    if (deadline !== undefined) call.watchDeadline(deadline, target.receivedAt ?? performance.now())
    const body = hasBody(req) ? req : null
    const engine = this.enginePool(target)
    if (engine !== undefined) {
      engine.dispatch({ method: req.method ?? 'GET', path: target.path, headers, body }, call)
      return
    }
    this.pool(target).dispatch(
      { path: target.path, method: req.method as Dispatcher.HttpMethod, headers, body },
      call,
    )
  }

  upgrade(
    req: IncomingMessage,
    socket: Duplex,
    head: Buffer,
    target: ForwardTarget,
    headers: UpstreamHeaders,
  ): Promise<ForwardResult> {
    return new Promise((resolve) => {
      const key = req.headers['sec-websocket-key']
      const call = new UpgradeCall(
        socket,
        head,
        typeof key === 'string' ? key : undefined,
        resolve,
        this.options.tunnelIdle,
        this.options.answeredLinger ?? 0,
        this.options.failed,
      )
      // RFC 9110 §10.1.4 has a sender of TE name it in Connection, and undici writes `connection: upgrade` alone.
      // Nor would the promise hold: an answer without a switch reaches the client without its trailers
      // (UpgradeCall), and after a switch there is no HTTP to carry any. TE stays on this hop.
      if (headers.te !== undefined) headers.te = undefined
      this.pool(target).dispatch(
        {
          path: target.path,
          method: req.method as Dispatcher.HttpMethod,
          headers,
          // only websocket is ever offered upstream, whatever else the client listed
          upgrade: 'websocket',
        },
        call,
      )
    })
  }

  headerBlocks(): HeaderBlocks | undefined {
    return UNDICI_HEADER_BLOCKS
  }

  prune(keep: string | undefined): void {
    for (const [origin, pool] of this.engine) {
      if (origin === keep) continue
      this.engine.delete(origin)
      void pool.close()
    }
    for (const [origin, pool] of this.pools) {
      if (origin === keep) continue
      this.pools.delete(origin)
      // in-flight requests on the old origin finish; the pool closes after them
      pool.close().catch(() => {})
    }
  }

  setTls(tls: ConnectionOptions | undefined): void {
    this.tls = tls
    // a pool keeps the options and TLS sessions it was made with: the next request makes a new one
    this.prune(undefined)
  }

  async close(): Promise<void> {
    const pools = [...this.pools.values()]
    this.pools.clear()
    const engine = [...this.engine.values()]
    this.engine.clear()
    await Promise.all([...pools.map((p) => p.destroy().catch(() => {})), ...engine.map((p) => p.destroy())])
  }
}
