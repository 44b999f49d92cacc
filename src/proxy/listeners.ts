// The proxy's listening sockets: a plain and a TLS listener, their Node server options and shutdown.

import { constants as tlsConstants } from 'node:crypto'
import { once } from 'node:events'
import {
  createServer,
  type IncomingMessage,
  type Server,
  type ServerOptions,
  type ServerResponse,
  STATUS_CODES,
} from 'node:http'
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https'
import type { AddressInfo, Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import type { Config } from '../config/schema.ts'
import { withListenAddress } from '../util/listen-problem.ts'
import { holdContinue } from './continue.ts'
import {
  Http2Front,
  type Http2Handlers,
  routeTlsConnections,
  sniffPlainConnections,
} from './http2-listener.ts'
import { afterEarlierResponses, responseHolding } from './upgrade.ts'

export interface HttpsListenOptions {
  host: string
  port: number
  /** PEM strings */
  cert: string
  key: string
  ca?: string
  clientCert: 'optional' | 'required'
}

/**
 * No renegotiation on the https listener, for its start and every rotation (setSecureContext forgets
 * secureOptions it is not given). A TLS 1.2 client could otherwise renegotiate with another client
 * certificate after the first handshake: Node keeps `authorized` from that handshake, and the connection's
 * certificate, parsed once, would be the new one. HTTP/2 forbids renegotiation and TLS 1.3 has none.
 */
const LISTENER_SECURE_OPTIONS = tlsConstants.SSL_OP_NO_RENEGOTIATION

/**
 * TLS options of the https listener. Client certificates are requested only when a client CA is given, and
 * then verified against that CA alone: without `ca`, Node would verify them against its default store
 * (public roots and NODE_EXTRA_CA_CERTS), making any such certificate a verified identity.
 */
export function httpsOptions(https: HttpsListenOptions, base: ServerOptions) {
  if (!https.ca && https.clientCert === 'required') {
    throw new Error('listen.https.clientCert: required needs listen.https.clientCA')
  }
  const handshakeTimeout = base.headersTimeout
  const common = {
    ...base,
    cert: https.cert,
    key: https.key,
    handshakeTimeout,
    secureOptions: LISTENER_SECURE_OPTIONS,
    // http/1.0 too: a client that offers only it (curl --http1.0) would otherwise get a fatal
    // no_application_protocol alert, where the plain listener serves it
    ALPNProtocols: ['h2', 'http/1.1', 'http/1.0'],
  }
  if (!https.ca) return { ...common, requestCert: false, rejectUnauthorized: false }
  return {
    ...common,
    ca: https.ca,
    requestCert: true,
    rejectUnauthorized: https.clientCert === 'required',
  }
}

/** Node server options from the timeouts and limits settings. */
export function serverOptions(timeouts: Config['timeouts'], limits: Config['limits']): ServerOptions {
  const headersTimeout =
    timeouts.request > 0 ? Math.min(timeouts.headers, timeouts.request) : timeouts.headers
  return {
    maxHeaderSize: limits.maxHeaderBytes,
    headersTimeout,
    requestTimeout: timeouts.request,
    keepAliveTimeout: timeouts.idle,
    // header/request deadlines are only enforced at this interval
    connectionsCheckingInterval: Math.max(100, Math.min(30_000, Math.floor(headersTimeout / 4))),
    insecureHTTPParser: false,
    // node:http would answer an HTTP/1.1 request without Host itself (400, the connection closed) and read on:
    // a request pipelined behind it reached the proxy, and the upstream, with no answer to come. The proxy
    // refuses it instead (hostRefusal), recorded like any request it answers
    requireHostHeader: false,
  }
}

/**
 * Requests node:http parses and hands over that the listener refuses as it refuses bytes its parser cannot read
 * (the answer once those ahead of it have theirs, the connection closed, nothing behind it read as a request):
 * - llhttp takes `HTTP/2.0` (and `HTTP/0.9`) in a request line, and node:http hands that request over as any
 *   other, with `httpVersionMajor` 2: everything that tells an HTTP/2 stream by its version would read it as
 *   one (no Host required, no check of an absolute-form target's authority against Host). HTTP/2 has no such
 *   request line (RFC 9113 §3), and RFC 9112 §2.3 has a server answer a version it does not speak with 505.
 * - an HTTP/1.0 request with Transfer-Encoding: RFC 9112 §6.1 has its framing treated as faulty (an HTTP/1.0
 *   hop in front may have read the body by Content-Length, or to the close), which llhttp does not.
 */
const UNSUPPORTED_VERSION = 'NHI_UNSUPPORTED_VERSION'
const FAULTY_FRAMING = 'NHI_FAULTY_FRAMING'
const refusedRequest = (message: string, code: string) => Object.assign(new Error(message), { code })
const unsupportedVersion = refusedRequest('HTTP version not supported on HTTP/1.1', UNSUPPORTED_VERSION)
const faultyFraming = refusedRequest('Transfer-Encoding in an HTTP/1.0 request', FAULTY_FRAMING)

const closingAnswer = (status: number) =>
  Buffer.from(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nConnection: close\r\n\r\n`, 'latin1')
/** node:http's answers to what it cannot read, by the parser's error code; any other is a 400 */
const PARSE_ERROR_STATUS = new Map([
  ['HPE_HEADER_OVERFLOW', 431],
  ['HPE_CHUNK_EXTENSIONS_OVERFLOW', 413],
  ['ERR_HTTP_REQUEST_TIMEOUT', 408],
  [UNSUPPORTED_VERSION, 505],
])
const CLOSING_ANSWERS = new Map([400, 408, 413, 431, 505].map((status) => [status, closingAnswer(status)]))

/** set once the listener gave up reading a connection (its parser failed, or a request deadline passed) */
const kUnreadable = Symbol('nhi.unreadable')
const kLingering = Symbol('nhi.lingering')
/** on the response whose place the listener's own answer took: the status it wrote */
const kListenerAnswer = Symbol('nhi.listenerAnswer')
const kRefused = Symbol('nhi.refusedByListener')
type HoldingResponse = ServerResponse & {
  /** set once its head went out */
  _headerSent?: boolean
  [kListenerAnswer]?: number
  /** set on the response of a request the listener refused (refusedByListener) */
  [kRefused]?: true
}
type ClientSocket = Duplex & {
  /** node:http's parser of the connection (llhttp), until the connection closes */
  parser?: { pause(): void } | null
  [kUnreadable]?: true
  /** set once its answers are out and it is closing (closeLingering) */
  [kLingering]?: true
}

/**
 * The status the HTTP/1.1 listener wrote on the connection in place of `res` (onClientError): its client reads
 * it as that request's answer, so its record says it. Undefined when the listener wrote none there.
 */
export function listenerAnswer(res: ServerResponse | undefined): number | undefined {
  return (res as HoldingResponse | undefined)?.[kListenerAnswer]
}

/**
 * What a client sends that node:http cannot read is answered as node:http does by itself (the answer above,
 * then the connection closed), but only once every request the client pipelined ahead of it has had its
 * answer, in order, as nginx does: node:http's answer, written at once, would reach the client in place of
 * theirs (or cut one under way), for requests the upstream may be carrying out. Bytes that break a request's
 * body cut that request, and the answer is its own, after those ahead of it (and its record says so:
 * listenerAnswer). After a request that closes its connection (`Connection: close`, HTTP/1.0 without
 * keep-alive) llhttp refuses whatever follows (HPE_CLOSED_CONNECTION): that request's answer closes the
 * connection and nothing is added (RFC 9112 §9.6).
 * The connection is read no further until those answers are out (its parser would refuse every byte, and a
 * client must not keep the proxy reading), then only to close it without a reset (closeLingering). The answers
 * waited for keep their own deadlines (timeouts.upstream, a client that stops reading); the headers deadline
 * node:http still runs for the refused bytes no longer applies. A request deadline that passes (408: a head not
 * received within timeouts.headers, a request within timeouts.request) is answered the same way, after the
 * requests ahead of the late one: it bounds the late request, not the answers the upstream still gives to those.
 *
 * A client that ends its side of the connection (FIN) short of a request's body (HPE_INVALID_EOF_STATE)
 * cancelled that request, as one that resets the connection does: once the answers ahead of it are out, the
 * connection closes without one for it (RFC 9112 §8 lets a server close the connection of an incomplete request
 * without an answer), and the exchange is recorded as its client's, 499. A connection that broke under us (a
 * system call failed: ECONNRESET, EPIPE) has no one to answer.
 */
function onClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
  const connection = socket as ClientSocket
  // node:http reports again each time its failed parser is handed bytes, and its deadline check still fires
  if (connection[kUnreadable]) return
  connection[kUnreadable] = true
  if (err.syscall !== undefined) {
    socket.destroy(err)
    return
  }
  const status = PARSE_ERROR_STATUS.get(err.code ?? '') ?? 400
  // a deadline (or a request in a version refused) leaves the parser sound: paused, it refuses what follows as a
  // failed one does, so that nothing the client sends past it (the rest of a late head, a request pipelined
  // behind) is read as a request
  if (
    err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ||
    err.code === UNSUPPORTED_VERSION ||
    err.code === FAULTY_FRAMING
  )
    connection.parser?.pause()
  // in a later turn: the plain listener reads a connection's first bytes through the stream (looking for the
  // HTTP/2 preface), and a stream paused in the turn that delivered them starts reading again in the next tick
  setImmediate(pauseSocket, socket)
  afterEarlierResponses(
    socket,
    () => {
      // not writable: node:http is closing the connection after an answer that said close
      if (!socket.writable) return
      // a request still holding the connection here is one whose body the client's FIN cut short
      if (err.code === 'HPE_INVALID_EOF_STATE' && responseHolding(socket)) {
        socket.destroy(err)
        return
      }
      answerInPlace(connection, status)
      closeLingering(socket, err)
    },
    cutByRefusedBytes,
  )
}

/**
 * The listener's answer, written unless the answer of the request holding the connection has started (it is
 * not written into); when a request holds it, that request's client reads this answer as its own.
 */
function answerInPlace(connection: ClientSocket, status: number): void {
  const holding = responseHolding(connection) as HoldingResponse | undefined
  if (!connection.writable || holding?._headerSent) return
  connection.write(CLOSING_ANSWERS.get(status))
  if (holding) holding[kListenerAnswer] = status
}

/** how long, and how many bytes, a refused connection is still read (and dropped) after its last answer */
const LINGER_MS = 2000
const LINGER_BYTES = 256 * 1024

/**
 * Closed with a FIN after the answers, the client's bytes still read and dropped for a while: a connection
 * closed with unread bytes in its receive buffer is reset, and a client's TCP stack may discard on a reset the
 * answers it has received but not yet read (nginx's lingering close, for the same reason). Bounded by time and
 * bytes; a client that closes its side ends it at once.
 */
function closeLingering(socket: Duplex, err: Error): void {
  ;(socket as ClientSocket)[kLingering] = true
  socket.end()
  let left = LINGER_BYTES
  const close = () => {
    clearTimeout(timer)
    socket.destroy(err)
  }
  const timer = setTimeout(close, LINGER_MS)
  timer.unref()
  socket.on('data', (chunk: Buffer) => {
    left -= chunk.length
    if (left <= 0) close()
  })
  socket.once('end', close)
  socket.once('close', () => clearTimeout(timer))
  socket.resume()
}

function pauseSocket(socket: Duplex): void {
  // its answers may all be out already (none was pending): it is then read until it closes
  if (!(socket as ClientSocket)[kLingering]) socket.pause()
}

/**
 * the response to a request whose body the refused bytes cut, or to a request the listener refused
 * (refusedByListener): it never ends, and the refusal is its answer
 */
function cutByRefusedBytes(holding: ServerResponse): boolean {
  return !holding.req.complete || (holding as HoldingResponse)[kRefused] === true
}

/** whether the proxy is handed a request node:http parsed: not one the listener refuses, nor one behind it */
function admitted(req: IncomingMessage, res: ServerResponse): boolean {
  // parsed from the same read as a request the listener refused: its parser, paused from within node:http's
  // callback, stops only at the end of that read, and what it parsed past the refusal is no request
  if ((req.socket as ClientSocket)[kUnreadable]) return false
  return !refusedByListener(req, res)
}

/** a request the listener refuses itself (see unsupportedVersion), never handed to the proxy */
function refusedByListener(req: IncomingMessage, res: ServerResponse): boolean {
  const refusal = listenerRefusal(req)
  if (refusal === undefined) return false
  ;(res as HoldingResponse)[kRefused] = true
  onClientError(refusal, req.socket)
  return true
}

/** the same for an upgrade request or a CONNECT, which node:http hands over with the socket and no response */
function handoverRefused(req: IncomingMessage, socket: Duplex): boolean {
  const refusal = listenerRefusal(req)
  if (refusal === undefined) return false
  // handed over, the socket has no listener of node:http's left for its errors, and its close destroys it with
  // the refusal: unheard, that error would end the process
  socket.on('error', ignoreSocketError)
  onClientError(refusal, socket)
  return true
}

function ignoreSocketError(): void {}

function listenerRefusal(req: IncomingMessage): Error | undefined {
  if (req.httpVersionMajor !== 1) return unsupportedVersion
  if (req.httpVersionMinor === 0 && req.headers['transfer-encoding'] !== undefined) return faultyFraming
  return undefined
}

export interface ListenerHandlers {
  request: (req: IncomingMessage, res: ServerResponse) => void
  upgrade: (req: IncomingMessage, socket: Duplex, head: Buffer) => void
  /** an HTTP/1.1 CONNECT: Node hands it over with the raw socket, like an upgrade */
  connect: (req: IncomingMessage, socket: Duplex) => void
  http2: Http2Handlers
}

/**
 * The HTTP/1.1 servers of both listeners, with connection limits, keep-alive and graceful shutdown, and the
 * HTTP/2 front they hand h2 connections to.
 */
export class Listeners {
  readonly servers: Server[] = []
  readonly http: Server | undefined
  readonly https: Server | undefined
  private readonly tlsServer: HttpsServer | undefined
  readonly h2: Http2Front
  /**
   * every accepted socket until it closes (bounded by limits.maxConnections per server): the HTTP/1.1
   * servers only know the connections their parser took, not those still being sniffed for the HTTP/2
   * preface or handed to HTTP/2, and server.close() waits for all of them
   */
  private readonly sockets = new Set<Socket>()
  /** sockets that have not yet sent a byte (no request started): idle, closed when accepting stops */
  private readonly silent = new Set<Socket>()

  constructor(
    private readonly opts: {
      http?: { host: string; port: number } | undefined
      https?: HttpsListenOptions | undefined
      timeouts: Config['timeouts']
      limits: Config['limits']
    },
    handlers: ListenerHandlers,
  ) {
    const base = serverOptions(opts.timeouts, opts.limits)
    const setup = (server: Server): Server => {
      server.maxConnections = opts.limits.maxConnections
      // node:http keeps the first 2,000 header lines and silently drops the rest, so a second Host (or any
      // field a check counts) could hide past them: every line is kept, maxHeaderBytes bounds them all
      server.maxHeadersCount = 0
      server.keepAliveTimeout = opts.timeouts.idle
      const onRequest = (req: IncomingMessage, res: ServerResponse) => {
        if (admitted(req, res)) handlers.request(req, res)
      }
      server.on('request', onRequest)
      // an Expect other than 100-continue: node:http would answer 417 itself, a request nothing recorded; the
      // proxy answers it (unmetExpectation)
      server.on('checkExpectation', onRequest)
      // the 100 Continue waits for the request to be let through (continue.ts)
      server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => {
        if (!admitted(req, res)) return
        holdContinue(req)
        handlers.request(req, res)
      })
      server.on('clientError', onClientError)
      server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
        if (!handoverRefused(req, socket)) handlers.upgrade(req, socket, head)
      })
      // without a listener Node closes a CONNECT's connection without a word, and nothing records it
      server.on('connect', (req: IncomingMessage, socket: Duplex) => {
        if (!handoverRefused(req, socket)) handlers.connect(req, socket)
      })
      this.servers.push(server)
      return server
    }
    this.http = opts.http ? setup(createServer(base)) : undefined
    this.tlsServer = opts.https ? createHttpsServer(httpsOptions(opts.https, base)) : undefined
    this.https = this.tlsServer ? setup(this.tlsServer) : undefined
    this.h2 = new Http2Front(
      handlers.http2,
      {
        maxConcurrentStreams: opts.limits.http2MaxConcurrentStreams,
        maxResetsPerSecond: opts.limits.http2MaxResetsPerSecond,
      },
      opts.timeouts,
      opts.limits.maxHeaderBytes,
    )
    if (this.http) sniffPlainConnections(this.http, this.h2, base.headersTimeout ?? opts.timeouts.headers)
    if (this.https) routeTlsConnections(this.https, this.h2)
    // after the routing above, which holds back the HTTP/1.1 server's own 'connection' listeners
    // a TLS socket's bytes go to the TLSSocket wrapping it, not to its own 'data': only the plain listener
    // can tell a connection that never sent a byte
    this.http?.prependListener('connection', (socket: Socket) => this.track(socket, true))
    this.https?.prependListener('connection', (socket: Socket) => this.track(socket, false))
  }

  /**
   * New certificate, key and client CA for TLS connections accepted from now on; established connections
   * keep theirs. requestCert/rejectUnauthorized stay as started (see httpsOptions).
   */
  setTls(material: { cert: string; key: string; ca?: string | undefined }): void {
    this.tlsServer?.setSecureContext({
      cert: material.cert,
      key: material.key,
      ...(material.ca ? { ca: material.ca } : {}),
      secureOptions: LISTENER_SECURE_OPTIONS,
    })
  }

  async listen(): Promise<{ http?: AddressInfo; https?: AddressInfo }> {
    const out: { http?: AddressInfo; https?: AddressInfo } = {}
    const { http, https } = this.opts
    if (this.http && http) out.http = await listenOn(this.http, http.host, http.port)
    if (this.https && https) out.https = await listenOn(this.https, https.host, https.port)
    return out
  }

  private track(socket: Socket, watchSilence: boolean): void {
    this.sockets.add(socket)
    if (watchSilence) {
      this.silent.add(socket)
      socket.once('data', () => this.silent.delete(socket))
    }
    socket.once('close', () => {
      this.sockets.delete(socket)
      this.silent.delete(socket)
    })
  }

  /** stops accepting and closes idle connections; resolves when the servers are closed */
  async stopAccepting(): Promise<void> {
    const closed = this.servers.map((s) =>
      s.listening ? new Promise<void>((resolve) => s.close(() => resolve())) : Promise.resolve(),
    )
    for (const s of this.servers) s.closeIdleConnections()
    for (const socket of this.silent) socket.destroy()
    this.h2.drain(true)
    await Promise.all(closed)
  }

  /**
   * after the drain: whatever is still open carries no request the drain waits for. The HTTP/1.1 servers'
   * own closeAllConnections() is not needed: each of their connections is a tracked socket or, on the TLS
   * listener, the TLSSocket over one, which is destroyed when the socket under it closes (upgraded ones too)
   */
  closeAllConnections(): void {
    this.h2.destroyAll()
    for (const socket of this.sockets) socket.destroy()
  }
}

async function listenOn(server: Server, host: string, port: number): Promise<AddressInfo> {
  server.listen(port, host)
  await Promise.race([
    once(server, 'listening'),
    once(server, 'error').then(([err]) => {
      throw withListenAddress(err, host, port)
    }),
  ])
  return server.address() as AddressInfo
}
