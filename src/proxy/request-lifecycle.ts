// The per-request exchange, in stages named after fastify's lifecycle (docs/reference.md "Request pipeline"):
// onRequest (connection facts, request id, trace) → identify + decide (one Pipeline.attribute call, the
// preHandler) → forward → onResponse (one record per request, once the response is closed).
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { TLSSocket } from 'node:tls'
import type { Config } from '../config/schema.ts'
import type { Attribution, Pipeline } from '../pipeline/index.ts'
import type { CertEvidence, ConnectionInfo, Failure, MaybePromise, RequestInfo } from '../types.ts'
import { normaliseAddress } from '../util/cidr.ts'
import { CLIENT_CLOSED, Exchange, FALLBACK_ATTRIBUTION } from './exchange.ts'
import type { Forwarder, ForwardTarget } from './forwarder.ts'
import { GRPC, grpcStatusForHttp, isGrpc, sendGrpcStatus } from './grpc.ts'
import { type UpstreamHeaders, upstreamHeaders } from './headers.ts'
import { requestTarget } from './path.ts'
import { BAD_REQUEST, INTERNAL_ERROR, sendJson, UPSTREAM_ERRORS } from './respond.ts'
import type { Upstream } from './upstream-url.ts'

const kConn = Symbol('nhi.connection')
const kExchange = Symbol('nhi.exchange')
type TaggedSocket = Socket & { [kConn]?: ConnectionInfo }
type TaggedRequest = IncomingMessage & { [kExchange]?: Exchange }
type TaggedResponse = ServerResponse & { [kExchange]?: Exchange }

export interface LifecycleOptions {
  getPipeline: () => Pipeline
  forwarder: Forwarder
  upstream: () => Upstream
  /** called once per TLS connection; the result lands in ConnectionInfo.peerCert */
  parsePeerCert?: ((socket: TLSSocket) => CertEvidence | Failure | undefined) | undefined
  timeouts: Config['timeouts']
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

/** Shared state of all exchanges: the in-flight count drain waits for, and the drain/close flags. */
export class RequestLifecycle {
  inFlight = 0
  draining = false
  closing = false
  private drained: (() => void) | undefined

  constructor(readonly opts: LifecycleOptions) {}

  /** resolves when no counted exchange is in flight, or after `ms` */
  async settled(ms: number): Promise<void> {
    if (this.inFlight === 0) return
    let timer: NodeJS.Timeout | undefined
    await new Promise<void>((resolve) => {
      this.drained = resolve
      timer = setTimeout(resolve, ms)
    })
    clearTimeout(timer)
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

  /** onRequest: the exchange starts, counted in flight until recorded */
  onRequest(conn: ConnectionInfo, req: IncomingMessage, path: string): Exchange {
    const ex = new Exchange(conn, req.method ?? 'GET', path, req.headers)
    ex.owner = this
    this.inFlight++
    return ex
  }

  /** onResponse: one record per exchange, once it was handled and its response closed */
  record(ex: Exchange): void {
    if (ex.recorded || !ex.handled || !ex.responseClosed) return
    ex.recorded = true
    if (ex.counted) this.inFlight--
    try {
      ex.pipeline?.record(ex.event())
    } catch {
      // recorders must not throw; if one does, the request is still done
    }
    if (this.inFlight === 0 && this.drained) this.drained()
  }

  /**
   * identify → classify → decide in one Pipeline call; a failing stage makes the request anonymous. Returns a
   * promise only when a stage had to wait, so the common request is attributed without a microtask hop.
   */
  identify(
    ex: Exchange,
    parsed: { target: string; path: string },
    req: IncomingMessage,
  ): Promise<void> | undefined {
    let result: MaybePromise<Attribution>
    try {
      const pipeline = this.opts.getPipeline()
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

  /** the request headers for the upstream hop, after the pipeline had its last word */
  hopHeaders(ex: Exchange, req: IncomingMessage): UpstreamHeaders {
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

  target(parsedTarget: string): ForwardTarget {
    const upstream = this.opts.upstream()
    return { origin: upstream.origin, path: upstream.basePath + parsedTarget, upstream }
  }

  /** An answer on the proxy's behalf; a gRPC call gets it as a gRPC status its client can read. */
  answer(
    ex: Exchange,
    req: IncomingMessage,
    res: ServerResponse,
    status: number,
    body: string,
    headers?: Record<string, string>,
  ): boolean {
    ex.status = status
    if (!isGrpc(req.headers)) return sendJson(res, status, body, headers)
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
    return sendGrpcStatus(res, ex.grpcStatus, message)
  }

  /** The whole exchange of a request/response pair (HTTP/1.1 request or HTTP/2 stream). */
  async handle(req: TaggedRequest, res: TaggedResponse, conn: ConnectionInfo): Promise<void> {
    const parsed = requestTarget(req.url ?? '/')
    const ex = this.onRequest(conn, req, parsed?.path ?? '')
    req[kExchange] = ex
    res[kExchange] = ex
    res.on('close', onResponseClose)
    if (this.draining || this.closing) res.shouldKeepAlive = false
    try {
      if (parsed === undefined) {
        ex.pipeline = this.opts.getPipeline()
        this.answer(ex, req, res, BAD_REQUEST.status, BAD_REQUEST.body)
        return
      }
      if (hasBody(req)) {
        // paused first so counting does not start the flow before the forwarder consumes the body
        req.pause()
        req.on('data', countRequestBytes)
      }
      const identifying = this.identify(ex, parsed, req)
      if (identifying) await identifying
      if (res.destroyed) {
        ex.status = CLIENT_CLOSED
        return
      }
      // decide (preHandler): a rejecting stage answers on the proxy's behalf
      const reject = ex.attribution.reject
      if (reject) {
        this.answer(ex, req, res, reject.status, reject.body, reject.headers)
        return
      }
      const result = await this.opts.forwarder.forward(
        req,
        res,
        this.target(parsed.target),
        this.hopHeaders(ex, req),
      )
      ex.applyForward(result)
      if (result.status === 0 && result.upstreamError) {
        const answer = UPSTREAM_ERRORS[result.upstreamError]
        this.answer(ex, req, res, answer.status, answer.body)
      }
    } catch {
      if (!this.answer(ex, req, res, INTERNAL_ERROR.status, INTERNAL_ERROR.body) && !res.writableFinished)
        res.destroy()
    } finally {
      ex.handled = true
      this.record(ex)
    }
  }
}

function onResponseClose(this: TaggedResponse): void {
  const ex = this[kExchange]
  if (!ex) return
  ex.responseClosed = true
  ex.owner?.record(ex)
}
