// HTTP/2 on the proxy's listeners (docs/reference.md "HTTP/2 and gRPC"): h2c with prior knowledge next to
// HTTP/1.1 on the plain port, ALPN `h2` next to `http/1.1` on the TLS port. One Http2Server that never
// listens itself takes the connections the HTTP/1.1 servers hand over; every stream then runs the same
// request lifecycle as an HTTP/1.1 request.

import type { Server } from 'node:http'
import {
  constants,
  createServer as createHttp2Server,
  type Http2Server,
  type Http2ServerRequest,
  type Http2ServerResponse,
  type IncomingHttpHeaders,
  type OutgoingHttpHeaders,
  type ServerHttp2Session,
  type ServerHttp2Stream,
  type ServerOptions,
} from 'node:http2'
import type { Socket } from 'node:net'
import type { Config } from '../config/schema.ts'
import type { Http2AbuseReason } from '../telemetry/metrics.ts'
import type { ConnectionInfo } from '../types.ts'
import { expectsContinue, holdContinue } from './continue.ts'
import { GRPC, grpcAnswerType, isGrpc } from './grpc.ts'

/** RFC 9113 §3.4: what a client with prior knowledge sends first */
const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1')

/**
 * nghttp2's NGHTTP2_ERR_FLOODED (not in http2.constants): more PING/SETTINGS acknowledgements queued than
 * its fixed bound (1000) because the peer keeps sending without reading. Node then ends the session with
 * GOAWAY INTERNAL_ERROR (not nghttp2's ENHANCE_YOUR_CALM) and emits this errno on the session's 'error'.
 */
const NGHTTP2_ERR_FLOODED = -904
/** nghttp2's NGHTTP2_ERR_FATAL: an error code at or below it ends the nghttp2 session (nghttp2_is_fatal) */
const NGHTTP2_ERR_FATAL = -900

/**
 * The errors node:http2 destroys a session with from inside nghttp2's parse: ERR_HTTP2_ERROR for an nghttp2
 * error, ERR_HTTP2_SESSION_ERROR for the peer's GOAWAY with an error code (the only place it raises that one)
 */
const DESTROYED_INSIDE_THE_READ = new Set(['ERR_HTTP2_ERROR', 'ERR_HTTP2_SESSION_ERROR'])

/**
 * Moves node:http2's own destroy of a session from inside nghttp2's parse out of the read that found it. Node
 * 22.23 destroys the session there when one stream is malformed (DATA past its content-length, a stream error
 * of RFC 9113 §8.1.1) or when the client sends GOAWAY with an error code; the parse goes on, a later stream's
 * HEADERS in the same read get no JS side (the session is gone), and that stream's DATA then aborts the
 * process on an internal assertion (`onread->IsFunction()`, nodejs/node#64850): one packet from any client.
 * A turn later the session ends as Node decided. Node 24 and 26 destroy it there too and survive, but the
 * streams of that read and the stream's own RST_STREAM go with it; a turn later they are answered.
 */
function destroyOutsideTheRead(session: ServerHttp2Session): void {
  const destroy = session.destroy
  session.destroy = (error?: Error, code?: number) => {
    const { code: errorCode, errno } = (error ?? {}) as NodeJS.ErrnoException
    // a fatal nghttp2 error (NGHTTP2_ERR_FATAL and below: a callback's failure, flooding) is raised once the
    // parse has stopped, and nghttp2 takes no more input on that session: destroyed at once, as Node does
    if (
      errorCode === undefined ||
      !DESTROYED_INSIDE_THE_READ.has(errorCode) ||
      (errno !== undefined && errno <= NGHTTP2_ERR_FATAL)
    )
      destroy.call(session, error, code)
    else setImmediate(() => destroy.call(session, error, code))
  }
}

export interface Http2Handlers {
  connectionInfo: (socket: Socket) => ConnectionInfo
  request: (req: Http2ServerRequest, res: Http2ServerResponse, conn: ConnectionInfo) => void
  /** a connection was closed for abuse (rapid reset, flooding); for counting */
  abuse?: (reason: Http2AbuseReason) => void
}

export interface Http2Limits {
  maxConcurrentStreams: number
  /** streams a client may reset per second on one connection before it is closed (CVE-2023-44487) */
  maxResetsPerSecond: number
}

/** performance.now() by which a stream's request must have been received (timeouts.request) */
const kDeadline = Symbol('nhi.requestDeadline')
/** the stream was answered 408 and reset because its request was not received in time */
const kTimedOut = Symbol('nhi.requestTimedOut')
/** a gRPC call: its client reads a grpc-status, not an HTTP status */
const kGrpc = Symbol('nhi.grpcCall')
type TimedStream = ServerHttp2Stream & {
  [kDeadline]?: number
  [kTimedOut]?: true
  /** a gRPC call's: the content type its answer takes (grpcAnswerType) */
  [kGrpc]?: string | undefined
  [kOwnReset]?: true
  [kMalformed]?: true
  _readableState?: { ended?: boolean }
}

/** the proxy reset this stream itself (a response cut short, an idle stream): not the client's reset */
const kOwnReset = Symbol('nhi.ownReset')
/** the stream was reset with PROTOCOL_ERROR, its connection still up: a malformed request (streamMalformed) */
const kMalformed = Symbol('nhi.malformed')

/**
 * Fields node:http2 keeps the first line of (its kSingleValueHeaders) while Node's HTTP/1.1 server joins their
 * lines with `, ` (RFC 9110 §5.3), as the proxy forwards every field it does not read as one value (docs
 * "Headers"). Lists among them (If-Match, If-None-Match, Content-Encoding, Content-Language) would lose
 * elements: a precondition failing on the entity tag it was not shown, a body coded twice decoded once. The
 * rest are no lists (a client must not repeat them), but one sent twice all the same must read alike on both
 * protocols: an identity rule naming `dnt` or `upgrade-insecure-requests`, and the upstream, would otherwise
 * see one value from an HTTP/2 client and another from an HTTP/1.1 client sending the same lines. Their lines
 * are joined here too, before the pipeline and the upstream read the request. The value is the bit of the name
 * in joinCutLines' `seen`.
 */
const CUT_TO_ONE_LINE = new Map(
  [
    'if-match',
    'if-none-match',
    'content-encoding',
    'content-language',
    'content-location',
    'content-md5',
    'content-range',
    'date',
    'dnt',
    'if-range',
    'range',
    'tk',
    'upgrade-insecure-requests',
    'x-content-type-options',
    'access-control-allow-credentials',
    'access-control-max-age',
    'access-control-request-method',
  ].map((name, i) => [name, 1 << i]),
)

/**
 * By name length, one bit per first letter (a-z) of the names joinCutLines looks at (CUT_TO_ONE_LINE and
 * `server`): two reads pass over the fields of most requests, which none of those names share a length and a
 * first letter with (user-agent, accept, authorization, content-type, traceparent…), without hashing them.
 */
const CANDIDATES = new Uint32Array(64)
for (const name of [...CUT_TO_ONE_LINE.keys(), 'server'])
  CANDIDATES[name.length]! |= 1 << (name.charCodeAt(0) - 0x61)

/** whether `name` may be one of the names joinCutLines looks at */
function candidate(name: string): boolean {
  const letter = name.charCodeAt(0) - 0x61
  return name.length < 64 && letter >= 0 && letter < 26 && (CANDIDATES[name.length]! & (1 << letter)) !== 0
}

/**
 * Puts back the lines of CUT_TO_ONE_LINE node:http2 dropped, and cuts a repeated `server` to its first line
 * (node:http2 joins it, Node's HTTP/1.1 server keeps the first).
 */
function joinCutLines(headers: IncomingHttpHeaders, raw: readonly string[]): void {
  // one bit per name: its first line is the one node:http2 kept
  let seen = 0
  let firstServer = -1
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!
    if (!candidate(name)) continue
    const bit = CUT_TO_ONE_LINE.get(name)
    if (bit === undefined) {
      if (name !== 'server') continue
      if (firstServer === -1) firstServer = i + 1
      else headers.server = raw[firstServer]
    } else if ((seen & bit) === 0) seen |= bit
    else headers[name] = `${headers[name]}, ${raw[i + 1]}`
  }
}

/**
 * Marks a stream the proxy is about to reset on its own behalf. node:http2 emits 'aborted' for any reset of a
 * stream whose response is unfinished, the proxy's as well as the client's: unmarked, a client whose responses
 * the upstream cuts short would be disconnected and counted as a rapid reset attack.
 */
export function resetByProxy(stream: object): void {
  ;(stream as TimedStream)[kOwnReset] = true
}

/** RFC 9113 §6.5.2: a header list's size, the octets of each field's name and value plus 32 for each field */
function headerListSize(raw: readonly string[]): number {
  let size = (raw.length / 2) * 32
  for (const text of raw) size += text.length
  return size
}

/**
 * Answers a request whose header list is over limits.maxHeaderBytes 431, as the HTTP/1.1 listener answers
 * such a head, and ends its stream: a body still coming is not read (RFC 9113 §8.1, RST_STREAM NO_ERROR).
 */
function answerHeadersTooLarge(stream: ServerHttp2Stream): void {
  resetByProxy(stream)
  try {
    stream.respond({ ':status': 431 }, { endStream: true })
  } catch {
    // the stream closed under us: nothing to answer
  }
  if (!stream.endAfterHeaders) stream.close(constants.NGHTTP2_NO_ERROR)
}

/** the answer to a stream cut at timeouts.request; a gRPC call gets its status as its client reads one */
function requestTimeoutHeaders(grpcType: string | undefined): OutgoingHttpHeaders {
  if (grpcType === undefined) return { ':status': 408 }
  return {
    ':status': 200,
    'content-type': grpcType,
    'grpc-status': String(GRPC.DEADLINE_EXCEEDED),
    'grpc-message': 'request not received within timeouts.request',
  }
}

/** an HTTP/2 request the listener cut at timeouts.request (answered 408, or DEADLINE_EXCEEDED, and reset) */
export function streamTimedOut(req: { stream?: unknown }): boolean {
  return (req.stream as TimedStream | undefined)?.[kTimedOut] === true
}

/**
 * An HTTP/2 request reset as malformed (see the 'aborted' listener in onSession): answered nothing, its
 * client's fault as a body that does not parse is on HTTP/1.1, not a client that gave up.
 */
export function streamMalformed(req: { stream?: unknown }): boolean {
  return (req.stream as TimedStream | undefined)?.[kMalformed] === true
}

interface SessionState {
  conn: ConnectionInfo
  windowStart: number
  resets: number
  /**
   * the kind of the last PING or SETTINGS frame the peer sent: the flood error does not say which queue
   * overflowed, the frame that overflowed it is the last one received
   */
  lastControl: 'ping' | 'settings' | undefined
  /** the connection is being closed for rapid reset: the GOAWAY is out, the destroy a turn away */
  cut: boolean
  /** the session's streams not yet closed */
  streams: Set<ServerHttp2Stream>
}

export class Http2Front {
  readonly server: Http2Server
  private readonly sessions = new Map<ServerHttp2Session, SessionState>()
  /** set while a handed-over socket becomes a session (synchronously, inside emit('connection')) */
  private pending: ConnectionInfo | undefined
  /**
   * `delay`: the drain delay, the listeners still accept; a connection gets GOAWAY once it has brought its
   * first streams. `closing`: accepting has stopped; every connection gets GOAWAY at once.
   */
  private draining: 'no' | 'delay' | 'closing' = 'no'
  /**
   * Streams whose request body is still coming, oldest first (one timeouts.request for all, so insertion
   * order is deadline order). node:http2 has no counterpart of the HTTP/1.1 server's requestTimeout: without
   * this a stream opened and never ended, or fed a byte now and then, holds its connection (even past the
   * idle GOAWAY, which waits for open streams), an upstream connection and an in-flight exchange forever.
   */
  private readonly uploading = new Set<TimedStream>()
  private readonly forget: (this: TimedStream) => void
  private sweeper: NodeJS.Timeout | undefined
  private readonly requestTimeout: number
  private readonly sweepEvery: number
  private readonly idleTimeout: number

  constructor(
    private readonly handlers: Http2Handlers,
    private readonly limits: Http2Limits,
    timeouts: Config['timeouts'],
    maxHeaderBytes: number,
  ) {
    const uploading = this.uploading
    this.forget = function (this: TimedStream) {
      uploading.delete(this)
    }
    this.requestTimeout = timeouts.request
    this.idleTimeout = timeouts.idle
    // the HTTP/1.1 listener's granularity (serverOptions' connectionsCheckingInterval)
    this.sweepEvery = Math.max(100, Math.min(30_000, Math.floor(timeouts.request / 4)))
    // maxOutstandingSettings is read by node:http2 but missing from its type definitions
    const options: ServerOptions & { maxOutstandingSettings: number } = {
      settings: {
        maxConcurrentStreams: limits.maxConcurrentStreams,
        maxHeaderListSize: maxHeaderBytes,
        enablePush: false,
      },
      maxHeaderListPairs: 256,
      // our own PINGs and SETTINGS left unacknowledged (we send one SETTINGS and no PINGs): a peer that
      // stops acknowledging is not given more. Floods in the other direction are bounded by nghttp2's
      // queue of acknowledgements, see onSession.
      maxOutstandingPings: 10,
      maxOutstandingSettings: 10,
      maxSessionInvalidFrames: 100,
      maxSessionRejectedStreams: 100,
    }
    this.server = createHttp2Server(options)
    this.server.setTimeout(timeouts.idle)
    this.server.on('session', (session: ServerHttp2Session) => this.onSession(session))
    const onRequest = (req: Http2ServerRequest, res: Http2ServerResponse) => {
      const state = this.sessions.get(req.stream.session as ServerHttp2Session)
      if (state === undefined) {
        req.stream.close(constants.NGHTTP2_REFUSED_STREAM)
        return
      }
      // node:http2 holds a stream to the maxHeaderListSize it announces only once the client has acknowledged
      // the SETTINGS frame that carries it: HEADERS sent before (those of a connection's first requests, all of
      // them for a client that never acknowledges) are taken whatever their size, so the limit is held here
      if (headerListSize(req.rawHeaders) > maxHeaderBytes) {
        answerHeadersTooLarge(req.stream)
        return
      }
      joinCutLines(req.headers, req.rawHeaders)
      this.handlers.request(req, res, state.conn)
    }
    this.server.on('request', onRequest)
    // `expect: 100-continue`: unheard, node:http2 writes the 100 itself at once, before anything is known of
    // the caller, and that write throws (out of a nextTick, so it ends the process) on a stream the client
    // reset in the same read as its HEADERS. The 100 is held until the request is let through, and then goes
    // only to a stream still open (continue.ts).
    this.server.on('checkContinue', (req: Http2ServerRequest, res: Http2ServerResponse) => {
      holdContinue(req)
      onRequest(req, res)
    })
    // the compat layer emits CONNECT streams apart; unheard, it answers 405 itself and nothing records them
    this.server.on('connect', onRequest)
    // an `expect` other than exactly `100-continue`: unheard, the compat layer answers 417 itself and nothing
    // records it. Another spelling of 100-continue (`100-Continue`, or among other tokens) is one to node:http,
    // so its 100 is held here as above: forwarded without it, a client waiting for the 100 before its body
    // would stall. The proxy answers any other expectation 417 (unmetExpectation).
    this.server.on('checkExpectation', (req: Http2ServerRequest, res: Http2ServerResponse) => {
      if (expectsContinue(req.headers.expect)) holdContinue(req)
      onRequest(req, res)
    })
    // the compat layer answers stream errors itself; an error here must not take the process down
    this.server.on('sessionError', () => {})
    // an idle connection gets GOAWAY and closes once its streams are done (a silent long-lived stream is
    // not cut: close() waits for it)
    this.server.on('timeout', (session: ServerHttp2Session) => this.closeSession(session))
  }

  private onSession(session: ServerHttp2Session): void {
    const conn = this.pending
    this.pending = undefined
    if (conn === undefined) {
      session.destroy()
      return
    }
    destroyOutsideTheRead(session)
    const state: SessionState = {
      conn,
      windowStart: performance.now(),
      resets: 0,
      lastControl: undefined,
      cut: false,
      streams: new Set(),
    }
    const forgetStream = function (this: ServerHttp2Stream) {
      state.streams.delete(this)
    }
    this.sessions.set(session, state)
    session.once('close', () => this.sessions.delete(session))
    session.on('ping', () => {
      state.lastControl = 'ping'
    })
    session.on('remoteSettings', () => {
      state.lastControl = 'settings'
    })
    // SETTINGS/PING flood: Node has already sent GOAWAY INTERNAL_ERROR and destroys the session
    session.on('error', (err: NodeJS.ErrnoException) => {
      if (err.errno !== NGHTTP2_ERR_FLOODED) return
      this.handlers.abuse?.(state.lastControl === 'settings' ? 'settings_flood' : 'ping_flood')
    })
    session.on('stream', (stream: TimedStream, headers: IncomingHttpHeaders) => {
      state.streams.add(stream)
      stream.once('close', forgetStream)
      // node:http2 announces a stream on the next tick. Bytes it takes in one go outside an I/O callback (those
      // the plain listener read to find the preface, handed over with it) are all parsed before that tick:
      // a stream the client reset in them has already emitted its 'aborted', to no one. Its reset counts all
      // the same, or HEADERS + RST_STREAM pairs behind the preface were a rapid reset the budget never saw.
      if (stream.aborted) this.countReset(session, state)
      else
        stream.once('aborted', () => {
          if (stream[kOwnReset] === true) return
          // nghttp2 resets so, without a word to node:http2, a request it finds malformed (RFC 9113 §8.1.1: DATA
          // short of, or past, its content-length). A GOAWAY with that code has already destroyed the session
          // when its streams go; the proxy never resets with it; a client that resets its own stream with it
          // (not told apart) says the same: the request broke on a protocol error. Still counted below: a
          // malformed request costs what a reset one does
          if (stream.rstCode === constants.NGHTTP2_PROTOCOL_ERROR && !session.destroyed)
            stream[kMalformed] = true
          this.countReset(session, state)
        })
      // node:http2 ends a HEAD stream's writable side at once, and then emits no 'aborted' for a reset of it
      // (whatever its code): a HEAD closed before its response was sent, and not by the proxy, is the
      // client's reset. Uncounted, HEAD + RST_STREAM was the rapid reset no budget saw.
      if (headers[':method'] === 'HEAD') {
        stream.once('close', () => {
          if (!stream.headersSent && stream[kOwnReset] !== true && stream[kTimedOut] !== true)
            this.countReset(session, state)
        })
      }
      if (this.requestTimeout > 0 && !stream.endAfterHeaders)
        this.watchUpload(stream, isGrpc(headers) ? grpcAnswerType(headers['content-type']) : undefined)
      // GOAWAY naming the streams received so far: they are served, as an HTTP/1.1 request that comes during
      // the drain is answered with `Connection: close`
      if (this.draining !== 'no') this.closeSession(session)
    })
    // A connection opened during the drain delay is kept until its first stream: a GOAWAY now would name no
    // stream and refuse every request it brings, and a client sent here again (the endpoint is still
    // listed) would get nothing served for the whole delay.
    if (this.draining === 'closing') this.closeSession(session)
  }

  /**
   * GOAWAY; the session closes once its streams are done (a silent long-lived stream is not cut). nghttp2
   * itself ends a session on some connection errors of the peer's (DATA on a stream the peer had ended, say)
   * with a GOAWAY node:http2 is not told of: from then on nothing is read or sent, no stream closes, and the
   * session would wait for them for ever, holding its connection, its exchanges (answered, never recorded) and
   * the drain. A session that stays silent for timeouts.idle after its GOAWAY while every response of its
   * streams has been ended has nothing left to wait for, and is destroyed.
   */
  private closeSession(session: ServerHttp2Session): void {
    if (session.closed || session.destroyed) return
    session.close()
    if (this.idleTimeout > 0) session.setTimeout(this.idleTimeout, () => this.afterGoaway(session))
  }

  private afterGoaway(session: ServerHttp2Session): void {
    const state = this.sessions.get(session)
    if (state === undefined || session.destroyed) return
    for (const stream of state.streams) {
      // a HEAD stream's writable side ends at once: its answer is not ended before it was sent
      if (!stream.headersSent || !stream.writableEnded) {
        // a response still to come: waited for, as before the GOAWAY
        session.setTimeout(this.idleTimeout, () => this.afterGoaway(session))
        return
      }
    }
    session.destroy()
  }

  private watchUpload(stream: TimedStream, grpcType: string | undefined): void {
    stream[kDeadline] = performance.now() + this.requestTimeout
    stream[kGrpc] = grpcType
    this.uploading.add(stream)
    stream.once('close', this.forget)
    if (this.sweeper === undefined) {
      this.sweeper = setInterval(() => this.sweep(), this.sweepEvery)
      this.sweeper.unref()
    }
  }

  /**
   * timeouts.request on HTTP/2, as the HTTP/1.1 listener applies it: a request not received whole by its
   * deadline is answered 408 and its stream reset. A stream already being answered is left alone: the
   * upstream took the call while the client still sends (a gRPC client or bidirectional stream), which is
   * a duplex exchange and not a request waiting for its body.
   */
  private sweep(): void {
    const now = performance.now()
    for (const stream of this.uploading) {
      if ((stream[kDeadline] ?? 0) > now) break
      this.uploading.delete(stream)
      // END_STREAM received (what is left may still be buffered, unread by a slow upstream)
      if (stream.destroyed || stream.headersSent || stream._readableState?.ended === true) continue
      stream[kTimedOut] = true
      try {
        stream.respond(requestTimeoutHeaders(stream[kGrpc]), { endStream: true })
      } catch {
        // the stream closed under us: the reset below is all there is to do
      }
      stream.destroy()
    }
    if (this.uploading.size === 0 && this.sweeper !== undefined) {
      clearInterval(this.sweeper)
      this.sweeper = undefined
    }
  }

  /**
   * Rapid reset (CVE-2023-44487): streams the client opens and resets at once cost the proxy work without
   * counting against maxConcurrentStreams. Past the per-second budget the connection is closed.
   */
  private countReset(session: ServerHttp2Session, state: SessionState): void {
    const now = performance.now()
    if (now - state.windowStart >= 1000) {
      state.windowStart = now
      state.resets = 0
    }
    if (++state.resets <= this.limits.maxResetsPerSecond || session.destroyed || state.cut) return
    state.cut = true
    this.handlers.abuse?.('rapid_reset')
    session.goaway(constants.NGHTTP2_ENHANCE_YOUR_CALM)
    // 'aborted' can come from inside nghttp2's parse (over TLS): a destroy there lets a later stream's DATA
    // in the same read abort Node 22.23 (destroyOutsideTheRead). Past the GOAWAY nghttp2 opens no new stream.
    setImmediate(() => session.destroy())
  }

  /** hands a connection whose first bytes are the HTTP/2 preface (or that chose h2 by ALPN) to HTTP/2 */
  accept(socket: Socket): void {
    // The HTTP/1.1 servers accepted this socket allowHalfOpen (node:http's choice); an Http2Server's own sockets
    // are not, and a session relies on that: with a stream still open when the client goes away (FIN), a
    // half-open socket is never closed, and the stream, its exchange and the connection stay forever.
    socket.allowHalfOpen = false
    this.pending = this.handlers.connectionInfo(socket)
    try {
      this.server.emit('connection', socket)
    } finally {
      this.pending = undefined
    }
  }

  /**
   * The HTTP/2 counterpart of `Connection: close`: GOAWAY, in-flight streams finish. `closing`: accepting has
   * stopped, so a connection handed over from now on gets GOAWAY at once rather than after its first stream.
   */
  drain(closing = false): void {
    if (closing || this.draining === 'no') this.draining = closing ? 'closing' : 'delay'
    for (const session of this.sessions.keys()) this.closeSession(session)
  }

  destroyAll(): void {
    clearInterval(this.sweeper)
    this.sweeper = undefined
    for (const session of this.sessions.keys()) session.destroy()
  }
}

/**
 * Routes each plain connection by its first bytes: the HTTP/2 preface goes to `h2`, anything else to the
 * HTTP/1.1 server's own connection handling, each given the bytes read so far.
 */
export function sniffPlainConnections(http1: Server, h2: Http2Front, headersTimeout: number): void {
  const http1Connection = http1.listeners('connection') as ((socket: Socket) => void)[]
  http1.removeAllListeners('connection')
  const toHttp1 = (socket: Socket) => {
    for (const listener of http1Connection) listener.call(http1, socket)
  }
  http1.on('connection', (socket: Socket) => {
    let seen: Buffer = Buffer.alloc(0)
    const timer = setTimeout(() => socket.destroy(), headersTimeout)
    const onData = (chunk: Buffer) => {
      seen = seen.length === 0 ? chunk : Buffer.concat([seen, chunk])
      const n = Math.min(seen.length, PREFACE.length)
      const prefix = seen.subarray(0, n).equals(PREFACE.subarray(0, n))
      if (prefix && seen.length < PREFACE.length) return
      clearTimeout(timer)
      socket.off('data', onData)
      socket.off('error', onError)
      if (prefix) {
        // the HTTP/2 session reads data left in the socket's buffer before taking over the handle
        socket.pause()
        socket.unshift(seen)
        h2.accept(socket)
      } else {
        // the HTTP/1.1 parser reads straight from the handle once attached; the bytes seen so far go in as
        // the 'data' event it also listens to
        toHttp1(socket)
        socket.emit('data', seen)
      }
    }
    const onError = () => {
      clearTimeout(timer)
      socket.destroy()
    }
    socket.on('data', onData)
    socket.on('error', onError)
    socket.once('close', () => clearTimeout(timer))
  })
}

/** On the TLS listener, connections that negotiated `h2` by ALPN go to HTTP/2, the rest stay HTTP/1.1. */
export function routeTlsConnections(https: Server, h2: Http2Front): void {
  const http1SecureConnection = https.listeners('secureConnection') as ((socket: Socket) => void)[]
  https.removeAllListeners('secureConnection')
  https.on('secureConnection', (socket: Socket & { alpnProtocol?: string | false }) => {
    if (socket.alpnProtocol === 'h2') h2.accept(socket)
    else for (const listener of http1SecureConnection) listener.call(https, socket)
  })
}
