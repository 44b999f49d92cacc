// The accept → forward half of the pipeline (docs/reference.md "Request pipeline", "Headers", "Errors"): listeners, per-connection facts,
// attribution through the swappable Pipeline, header rewriting, forwarding, and one record per request.
import { once } from 'node:events'
import {
  createServer,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type Server,
  type ServerOptions,
  ServerResponse,
} from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import { type AddressInfo, connect, type Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import type { TLSSocket } from 'node:tls'
import type { Config } from '../config/schema.ts'
import type { Attribution, Pipeline } from '../pipeline/index.ts'
import type {
  CertEvidence,
  ConnectionInfo,
  Failure,
  MaybePromise,
  RequestEvent,
  RequestInfo,
} from '../types.ts'
import { normaliseAddress } from '../util/cidr.ts'
import { type Forwarder, type ForwardResult, UndiciForwarder } from './forwarder.ts'
import { type UpstreamHeaders, upstreamHeaders } from './headers.ts'
import { requestId, type TraceContext, traceContext } from './ids.ts'
import { requestTarget } from './path.ts'
import { BAD_REQUEST, INTERNAL_ERROR, sendJson, sendJsonRaw, UPSTREAM_ERRORS } from './respond.ts'

export interface ProxyOptions {
  getPipeline: () => Pipeline
  /** http://host:port[/base]; the request target is appended to the base path */
  upstream: string
  http?: { host: string; port: number }
  /** PEM strings */
  https?: {
    host: string
    port: number
    cert: string
    key: string
    ca?: string
    clientCert: 'optional' | 'required'
  }
  /** called once per TLS connection; the result lands in ConnectionInfo.peerCert */
  parsePeerCert?: (socket: TLSSocket) => CertEvidence | Failure | undefined
  timeouts: Config['timeouts']
  limits: Config['limits']
  /** default: undici Pool forwarder */
  forwarder?: Forwarder
}

export interface ProxyServer {
  listen(): Promise<{ http?: AddressInfo; https?: AddressInfo }>
  /**
   * Drain phase before close: keep accepting, but every response from now on carries `Connection: close`
   * so clients reconnect (to another endpoint once this one is out of rotation).
   */
  drain(): void
  /** stop accepting, let in-flight requests finish up to drainMs, then close everything; resolves when done */
  close(drainMs?: number): Promise<void>
  inFlight(): number
  /** config reload may change it; throws on an invalid URL */
  setUpstream(url: string): void
  /** for /readyz: a TCP connect to the upstream, cached for a second */
  upstreamReachable(): Promise<boolean>
}

interface Upstream {
  origin: string
  /** base path without trailing slash ('' for '/') */
  basePath: string
  host: string
  port: number
}

/** Parses and checks an upstream URL; throws with a readable message when it is not usable. */
export function parseUpstream(url: string): Upstream {
  let u: URL
  try {
    u = new URL(url)
  } catch {
    throw new Error(`invalid upstream URL "${url}"`)
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') {
    throw new Error(`invalid upstream URL "${url}": only http: and https: are supported`)
  }
  if (u.search || u.hash || u.username || u.password) {
    throw new Error(`invalid upstream URL "${url}": no query, fragment or credentials allowed`)
  }
  const basePath = u.pathname === '/' ? '' : u.pathname.replace(/\/+$/, '')
  const port = u.port ? Number(u.port) : u.protocol === 'https:' ? 443 : 80
  return { origin: u.origin, basePath, host: u.hostname.replace(/^\[|\]$/g, ''), port }
}

const kConn = Symbol('nhi.connection')
const kExchange = Symbol('nhi.exchange')
type TaggedSocket = Socket & { [kConn]?: ConnectionInfo }
type TaggedRequest = IncomingMessage & { [kExchange]?: Exchange }
type TaggedResponse = ServerResponse & { [kExchange]?: Exchange }

const FALLBACK_ATTRIBUTION: Attribution = Object.freeze({
  identity: Object.freeze({
    name: 'anonymous',
    kind: 'unknown',
    source: 'anonymous',
    verified: false,
    attributes: Object.freeze({}) as Record<string, string>,
  }),
  evidence: Object.freeze({ credentials: [], failures: [], anomalies: [] }),
  decision: Object.freeze({ decision: 'allow', rule: 'default', skipped: true }),
  route: 'other',
}) as Attribution

/** nginx's "client closed request": recorded when the client left before an answer */
const CLIENT_CLOSED = 499

/** All we need to build the RequestEvent; lives from accept to record. */
class Exchange {
  readonly time = Date.now()
  readonly started = performance.now()
  bytesIn = 0
  bytesOut = 0
  upstreamMs = 0
  status = 0
  upstreamError: RequestEvent['upstreamError']
  attribution: Attribution = FALLBACK_ATTRIBUTION
  pipeline: Pipeline | undefined
  responseClosed = false
  handled = false
  /** counted in inFlight (long-lived upgrade tunnels are not, so drain does not wait for them) */
  counted = true
  recorded = false
  readonly trace: TraceContext
  readonly requestId: string
  readonly host: string | undefined

  constructor(
    readonly conn: ConnectionInfo,
    readonly method: string,
    readonly path: string,
    headers: IncomingHttpHeaders,
  ) {
    const tp = headers.traceparent
    this.trace = traceContext(typeof tp === 'string' ? tp : undefined)
    const rid = headers['x-request-id']
    this.requestId = requestId(typeof rid === 'string' ? rid : undefined)
    this.host = headers.host
  }

  applyForward(result: ForwardResult): void {
    this.upstreamMs = result.upstreamMs
    this.bytesOut = result.bytesOut
    if (result.bytesIn !== undefined) this.bytesIn = result.bytesIn
    if (result.upstreamError) this.upstreamError = result.upstreamError
    if (result.status !== 0) this.status = result.status
    else if (result.upstreamError) this.status = UPSTREAM_ERRORS[result.upstreamError].status
    else if (result.clientAborted) this.status = CLIENT_CLOSED
  }

  event(): RequestEvent {
    const { identity, evidence, decision, route } = this.attribution
    const fingerprints = this.attribution.fingerprints ?? {}
    const event: RequestEvent = {
      time: this.time,
      traceId: this.trace.traceId,
      spanId: this.trace.spanId,
      requestId: this.requestId,
      identity,
      fingerprints,
      failures: evidence.failures,
      anomalies: evidence.anomalies,
      decision,
      clientAddress: this.conn.remoteAddress,
      method: this.method,
      path: this.path,
      route,
      status: this.status || CLIENT_CLOSED,
      durationMs: performance.now() - this.started,
      upstreamMs: this.upstreamMs,
      bytesIn: this.bytesIn,
      bytesOut: this.bytesOut,
      service: this.pipeline?.service ?? '',
    }
    if (this.upstreamError) event.upstreamError = this.upstreamError
    if (this.trace.parentSpanId !== undefined) event.parentSpanId = this.trace.parentSpanId
    if (this.trace.flags !== '01') event.traceFlags = this.trace.flags
    if (this.host !== undefined) event.host = this.host
    return event
  }
}

function countRequestBytes(this: TaggedRequest, chunk: Buffer): void {
  const ex = this[kExchange]
  if (ex) ex.bytesIn += chunk.length
}

function requestHasBody(headers: IncomingHttpHeaders): boolean {
  if (headers['transfer-encoding'] !== undefined) return true
  const cl = headers['content-length']
  return cl !== undefined && cl !== '0'
}

/**
 * True when the Upgrade header offers `websocket` (any case, anywhere in a token list). Every other
 * protocol (h2c above all) is never switched to: a raw tunnel would carry requests that attribution,
 * policy and audit never see.
 */
function offersWebSocket(upgrade: string | undefined): boolean {
  if (upgrade === undefined) return false
  for (const token of upgrade.split(',')) if (token.trim().toLowerCase() === 'websocket') return true
  return false
}

/** RFC 6455 §4.1: a GET with a Sec-WebSocket-Key; anything else is not a handshake a websocket server takes. */
function isWebSocketHandshake(req: IncomingMessage): boolean {
  const key = req.headers['sec-websocket-key']
  return req.method === 'GET' && typeof key === 'string' && key.length > 0
}

const NOT_WEBSOCKET = Object.freeze({
  status: 400,
  body: JSON.stringify({ error: 'bad_request', message: 'only websocket upgrades are supported' }),
})

/**
 * TLS options of the https listener. Client certificates are requested only when a client CA is given, and
 * then verified against that CA alone: without `ca`, Node would verify them against its default store
 * (public roots and NODE_EXTRA_CA_CERTS), making any such certificate a verified identity.
 */
export function httpsOptions(https: NonNullable<ProxyOptions['https']>, base: ServerOptions) {
  if (!https.ca && https.clientCert === 'required') {
    throw new Error('listen.https.clientCert: required needs listen.https.clientCA')
  }
  const handshakeTimeout = base.headersTimeout
  const common = { ...base, cert: https.cert, key: https.key, handshakeTimeout }
  if (!https.ca) return { ...common, requestCert: false, rejectUnauthorized: false }
  return {
    ...common,
    ca: https.ca,
    requestCert: true,
    rejectUnauthorized: https.clientCert === 'required',
  }
}

export function createProxy(opts: ProxyOptions): ProxyServer {
  let upstream = parseUpstream(opts.upstream)
  const { timeouts, limits } = opts
  const forwarder: Forwarder =
    opts.forwarder ??
    new UndiciForwarder({
      headersTimeout: timeouts.upstream,
      // a stalled upstream body is cut after the keep-alive idle time (undici does not count paused time)
      bodyTimeout: timeouts.idle,
    })
  const servers: Server[] = []
  const tunnels = new Set<Duplex>()
  let inFlight = 0
  let closing = false
  let draining = false
  let drained: (() => void) | undefined

  function connectionInfo(socket: TaggedSocket): ConnectionInfo {
    const cached = socket[kConn]
    if (cached) return cached
    const tls = (socket as TLSSocket).encrypted === true
    const info: ConnectionInfo = {
      remoteAddress: normaliseAddress(socket.remoteAddress ?? ''),
      remotePort: socket.remotePort ?? 0,
      tls,
    }
    if (tls && opts.parsePeerCert) {
      try {
        const peerCert = opts.parsePeerCert(socket as TLSSocket)
        if (peerCert) info.peerCert = peerCert
      } catch {
        // a certificate the parser chokes on leaves the connection without cert evidence
      }
    }
    socket[kConn] = info
    return info
  }

  function finish(ex: Exchange): void {
    if (ex.recorded || !ex.handled || !ex.responseClosed) return
    ex.recorded = true
    if (ex.counted) inFlight--
    try {
      ex.pipeline?.record(ex.event())
    } catch {
      // recorders must not throw; if one does, the request is still done
    }
    if (inFlight === 0 && drained) drained()
  }

  function onResponseClose(this: TaggedResponse): void {
    const ex = this[kExchange]
    if (!ex) return
    ex.responseClosed = true
    finish(ex)
  }

  /**
   * Runs the identify → classify → decide stages; a failing stage makes the request anonymous. Returns a
   * promise only when a stage had to wait, so the common request is attributed without a microtask hop.
   */
  function attribute(
    ex: Exchange,
    parsed: { target: string; path: string },
    req: IncomingMessage,
  ): Promise<void> | undefined {
    let result: MaybePromise<Attribution>
    try {
      const pipeline = opts.getPipeline()
      ex.pipeline = pipeline
      const info: RequestInfo = {
        method: ex.method,
        path: parsed.path,
        url: parsed.target,
        headers: req.headers,
      }
      result = pipeline.attribute(info, ex.conn)
    } catch {
      ex.attribution = FALLBACK_ATTRIBUTION
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
      () => {
        ex.attribution = FALLBACK_ATTRIBUTION
      },
    )
  }

  function hopHeaders(ex: Exchange, req: IncomingMessage): UpstreamHeaders {
    const headers = upstreamHeaders(req.headers, {
      identity: ex.attribution.identity,
      trace: ex.trace,
      requestId: ex.requestId,
      clientIp: ex.conn.remoteAddress,
      proto: ex.conn.tls ? 'https' : 'http',
    })
    // the pipeline has the last word (e.g. forwarded-certificate headers from untrusted peers)
    ex.pipeline?.prepareUpstreamHeaders?.(headers, ex.attribution, ex.conn)
    return headers
  }

  async function handleRequest(req: TaggedRequest, res: TaggedResponse): Promise<void> {
    const conn = connectionInfo(req.socket as TaggedSocket)
    const method = req.method ?? 'GET'
    const parsed = requestTarget(req.url ?? '/')
    const ex = new Exchange(conn, method, parsed?.path ?? '', req.headers)
    inFlight++
    req[kExchange] = ex
    res[kExchange] = ex
    res.on('close', onResponseClose)
    if (draining || closing) res.shouldKeepAlive = false
    try {
      if (parsed === undefined) {
        ex.pipeline = opts.getPipeline()
        ex.status = BAD_REQUEST.status
        sendJson(res, BAD_REQUEST.status, BAD_REQUEST.body)
        return
      }
      if (requestHasBody(req.headers)) {
        // paused first so counting does not start the flow before the forwarder consumes the body
        req.pause()
        req.on('data', countRequestBytes)
      }
      const attributing = attribute(ex, parsed, req)
      if (attributing) await attributing
      if (res.destroyed) {
        ex.status = CLIENT_CLOSED
        return
      }
      const reject = ex.attribution.reject
      if (reject) {
        ex.status = reject.status
        sendJson(res, reject.status, reject.body, reject.headers)
        return
      }
      const target = { origin: upstream.origin, path: upstream.basePath + parsed.target }
      const result = await forwarder.forward(req, res, target, hopHeaders(ex, req))
      ex.applyForward(result)
      if (result.status === 0 && result.upstreamError) {
        const answer = UPSTREAM_ERRORS[result.upstreamError]
        sendJson(res, answer.status, answer.body)
      }
    } catch {
      ex.status = INTERNAL_ERROR.status
      if (!sendJson(res, INTERNAL_ERROR.status, INTERNAL_ERROR.body) && !res.writableFinished) res.destroy()
    } finally {
      ex.handled = true
      finish(ex)
    }
  }

  /**
   * A request that asked for an upgrade other than websocket: served as a plain request (Upgrade,
   * HTTP2-Settings and the Connection tokens are hop-by-hop and never forwarded) on a connection that is
   * closed after the answer. Bytes the client sent after the header block are dropped with it.
   */
  function serveWithoutUpgrade(req: TaggedRequest, socket: Duplex): void {
    const res = new ServerResponse(req) as TaggedResponse
    res.shouldKeepAlive = false
    res.assignSocket(socket as Socket)
    // the HTTP server's timeouts no longer watch a detached socket
    ;(socket as Socket).setTimeout?.(timeouts.idle, () => socket.destroy())
    res.once('finish', () => {
      res.detachSocket(socket as Socket)
      socket.end()
      process.nextTick(() => res.emit('close'))
    })
    void handleRequest(req, res)
  }

  async function handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    socket.on('error', () => socket.destroy())
    const websocket = offersWebSocket(req.headers.upgrade)
    if (!websocket && !closing && !requestHasBody(req.headers)) {
      serveWithoutUpgrade(req, socket)
      return
    }
    const conn = connectionInfo(req.socket as TaggedSocket)
    const method = req.method ?? 'GET'
    const parsed = requestTarget(req.url ?? '/')
    const ex = new Exchange(conn, method, parsed?.path ?? '', req.headers)
    ex.counted = false
    tunnels.add(socket)
    ex.responseClosed = true
    try {
      if (closing || parsed === undefined || !websocket || !isWebSocketHandshake(req)) {
        ex.pipeline = opts.getPipeline()
        const answer = closing
          ? { status: 503, body: '{"error":"unavailable"}' }
          : parsed === undefined
            ? BAD_REQUEST
            : NOT_WEBSOCKET
        ex.status = answer.status
        sendJsonRaw(socket, answer.status, answer.body)
        return
      }
      const attributing = attribute(ex, parsed, req)
      if (attributing) await attributing
      const reject = ex.attribution.reject
      if (reject) {
        ex.status = reject.status
        sendJsonRaw(socket, reject.status, reject.body, reject.headers)
        return
      }
      const target = { origin: upstream.origin, path: upstream.basePath + parsed.target }
      const result = await forwarder.upgrade(req, socket, head, target, hopHeaders(ex, req))
      ex.applyForward(result)
      if (result.status === 0 && result.upstreamError) {
        const answer = UPSTREAM_ERRORS[result.upstreamError]
        sendJsonRaw(socket, answer.status, answer.body)
      }
    } catch {
      ex.status = INTERNAL_ERROR.status
      sendJsonRaw(socket, INTERNAL_ERROR.status, INTERNAL_ERROR.body)
    } finally {
      tunnels.delete(socket)
      ex.handled = true
      finish(ex)
    }
  }

  const headersTimeout =
    timeouts.request > 0 ? Math.min(timeouts.headers, timeouts.request) : timeouts.headers
  const serverOptions: ServerOptions = {
    maxHeaderSize: limits.maxHeaderBytes,
    headersTimeout,
    requestTimeout: timeouts.request,
    keepAliveTimeout: timeouts.idle,
    // header/request deadlines are only enforced at this interval
    connectionsCheckingInterval: Math.max(100, Math.min(30_000, Math.floor(headersTimeout / 4))),
    insecureHTTPParser: false,
  }

  function setup(server: Server): Server {
    server.maxConnections = limits.maxConnections
    server.keepAliveTimeout = timeouts.idle
    server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      void handleRequest(req, res)
    })
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      void handleUpgrade(req, socket, head)
    })
    servers.push(server)
    return server
  }

  const httpServer = opts.http ? setup(createServer(serverOptions)) : undefined
  const httpsServer = opts.https
    ? setup(createHttpsServer(httpsOptions(opts.https, serverOptions)))
    : undefined

  let reachability: { at: number; result: Promise<boolean> } | undefined

  function probeUpstream(): Promise<boolean> {
    const { host, port } = upstream
    return new Promise((resolve) => {
      const socket = connect({ host, port })
      const done = (ok: boolean) => {
        socket.destroy()
        resolve(ok)
      }
      socket.setTimeout(1000, () => done(false))
      socket.once('connect', () => done(true))
      socket.once('error', () => done(false))
    })
  }

  async function listenOn(server: Server, host: string, port: number): Promise<AddressInfo> {
    server.listen(port, host)
    await Promise.race([
      once(server, 'listening'),
      once(server, 'error').then(([err]) => {
        throw err
      }),
    ])
    return server.address() as AddressInfo
  }

  async function shutdown(drainMs: number): Promise<void> {
    closing = true
    const closed = servers.map((s) =>
      s.listening ? new Promise<void>((resolve) => s.close(() => resolve())) : Promise.resolve(),
    )
    for (const s of servers) s.closeIdleConnections()
    if (inFlight > 0) {
      let timer: NodeJS.Timeout | undefined
      await new Promise<void>((resolve) => {
        drained = resolve
        timer = setTimeout(resolve, drainMs)
      })
      clearTimeout(timer)
    }
    for (const s of servers) s.closeAllConnections()
    for (const t of tunnels) t.destroy()
    await forwarder.close()
    await Promise.all(closed)
  }

  let closePromise: Promise<void> | undefined

  return {
    async listen() {
      const out: { http?: AddressInfo; https?: AddressInfo } = {}
      if (httpServer && opts.http) out.http = await listenOn(httpServer, opts.http.host, opts.http.port)
      if (httpsServer && opts.https) out.https = await listenOn(httpsServer, opts.https.host, opts.https.port)
      return out
    },

    drain() {
      draining = true
    },

    close(drainMs = timeouts.drain) {
      closePromise ??= shutdown(drainMs)
      return closePromise
    },

    inFlight: () => inFlight,

    setUpstream(url: string) {
      const next = parseUpstream(url)
      upstream = next
      reachability = undefined
      forwarder.prune(next.origin)
    },

    upstreamReachable() {
      const now = Date.now()
      if (reachability === undefined || now - reachability.at > 1000) {
        reachability = { at: now, result: probeUpstream() }
      }
      return reachability.result
    },
  }
}
