// HTTP/1.1 forwarding for the one kind of request the HTTP/1.1 engine does not carry: a chunked request body
// with a trailer section. The engine (h1-pool.ts) ends a chunked body with a bare `0\r\n\r\n`, node:http's
// ClientRequest can add trailers. Only requests that announce trailers come
// here (`announcesTrailers`); every other request keeps the engine. Observable behaviour follows Http1Forwarder: the same headers upstream, streaming with
// backpressure both ways, the same deadlines and error reasons, response trailers, client aborts.
import {
  type ClientRequest,
  Agent as HttpAgent,
  type IncomingMessage,
  request,
  type ServerResponse,
} from 'node:http'
import { Agent as HttpsAgent } from 'node:https'
import type { Socket } from 'node:net'
import type { ConnectionOptions, TLSSocket } from 'node:tls'
import type { UpstreamErrorReason } from '../types.ts'
import {
  callDeadlineTimer,
  clientLeftStatus,
  connectTimeoutMs,
  cutResponse,
  DEADLINE_MESSAGE,
  endCallWithStatus,
  type ForwardResult,
  type ForwardTarget,
  responseBlocked,
  responseDrained,
  UPSTREAM_RESET_MESSAGE,
  type UpstreamFailed,
  upstreamDeadline,
  webCallDeadline,
} from './forwarder.ts'
import { GRPC, sendGrpcStatus } from './grpc.ts'
import { type GrpcWebStatusReader, grpcWebResponse, isGrpcWeb } from './grpc-web.ts'
import { answersWithoutContent, UpstreamError } from './h1-pool.ts'
import {
  announcedTrailers,
  downstreamHeaders,
  downstreamTrailers,
  type UpstreamHeaders,
  upstreamTrailers,
} from './headers.ts'
import { clearHeaders } from './respond.ts'
import { endedWithoutCloseNotify, TLS_CUT_CODE, TLS_CUT_MESSAGE, watchTlsEnd } from './tls-end.ts'
import { upstreamTlsFor } from './upstream-url.ts'

/**
 * Whether a request goes through this forwarder: an HTTP/1.x request with a chunked body that announces a
 * trailer section in a `Trailer` header. Other bodies cannot carry trailers (content-length framing), and
 * unannounced trailers stay on the HTTP/1.1 engine's path, which drops them.
 */
export function announcesTrailers(req: IncomingMessage): boolean {
  if (req.headers.trailer === undefined || req.httpVersionMajor !== 1) return false
  const te = req.headers['transfer-encoding']
  return typeof te === 'string' && /(?:^|,)\s*chunked\s*$/i.test(te)
}

export interface NodeHttpForwarderOptions {
  /** response headers deadline, ms (→ 504) */
  headersTimeout: number
  /** longest pause between response body chunks while the client is reading, ms */
  bodyTimeout: number
  /** TCP/TLS connect deadline, ms (→ 502) */
  connectTimeout?: number
  /** idle keep-alive of upstream connections, ms */
  keepAliveTimeout?: number
  /** TLS to https: upstreams: CA bundle, client certificate (mTLS origination), server name */
  tls?: ConnectionOptions
  failed?: UpstreamFailed
}

/** a response body framed by neither Content-Length nor chunked: its end is its connection's */
function endsWithConnection(upRes: IncomingMessage): boolean {
  if (upRes.headers['content-length'] !== undefined) return false
  const te = upRes.headers['transfer-encoding']
  return te === undefined || !/(?:^|,)\s*chunked\s*$/i.test(te)
}

/** Connections per origin on this path; requests beyond it wait in the agent's queue (within the headers deadline). */
const MAX_SOCKETS = 64
const MAX_FREE_SOCKETS = 8

class ConnectTimeoutError extends Error {
  override readonly name = 'ConnectTimeoutError'
}

export class NodeHttpForwarder {
  private readonly agents = new Map<string, HttpAgent>()
  private tls: ConnectionOptions | undefined

  constructor(private readonly options: NodeHttpForwarderOptions) {
    this.tls = options.tls
  }

  private agent(target: ForwardTarget): HttpAgent {
    let agent = this.agents.get(target.origin)
    if (agent === undefined) {
      const common = {
        keepAlive: true,
        maxSockets: MAX_SOCKETS,
        maxFreeSockets: MAX_FREE_SOCKETS,
        // an idle kept-alive socket is closed after this (the agent only times out free sockets)
        timeout: this.options.keepAliveTimeout ?? 4_000,
      }
      if (target.upstream?.tls === true) {
        // the server name is upstreamTls.servername, else the URL host, none for an IP address (as on the
        // engine): node:https would otherwise take it from the Host header, the client's
        const host = target.upstream.host
        agent = new HttpsAgent({ ...common, ...upstreamTlsFor(host, this.tls ?? {}) })
      } else agent = new HttpAgent(common)
      this.agents.set(target.origin, agent)
    }
    return agent
  }

  forward(
    req: IncomingMessage,
    res: ServerResponse,
    target: ForwardTarget,
    headers: UpstreamHeaders,
  ): Promise<ForwardResult> {
    return new Promise((resolve) => {
      const o = this.options
      const started = performance.now()
      const upstream = target.upstream
      let status = 0
      let bytesOut = 0
      let connected = false
      let settled = false
      let bodySent = false
      let clientGone = false
      let headersTimer: NodeJS.Timeout | undefined
      let bodyTimer: NodeJS.Timeout | undefined
      let connectTimer: NodeJS.Timeout | undefined
      let deadlineTimer: NodeJS.Timeout | undefined
      let grpcStatus: number | undefined
      /** gRPC-Web calls: reads the status from the response body's trailer frame */
      let grpcWeb: GrpcWebStatusReader | undefined

      // explicit: node:http frames a GET or DELETE body by connection close unless told to chunk it
      const out: UpstreamHeaders = { ...headers, 'transfer-encoding': 'chunked' }
      // RFC 9110 §10.1.4: a sender of TE names it in Connection (node:http keeps the connection alive unless
      // the line says close)
      if (out.te !== undefined) out.connection = 'keep-alive, te'
      const announced = announcedTrailers(req.headers, target.withheldTrailers)
      if (announced !== undefined) out.trailer = announced

      const settle = (upstreamError?: UpstreamErrorReason, clientAborted = false) => {
        if (settled) return
        settled = true
        clearTimeout(headersTimer)
        clearTimeout(bodyTimer)
        clearTimeout(connectTimer)
        clearTimeout(deadlineTimer)
        res.off('close', onClientClose)
        // a body the upstream no longer takes is read and discarded, so the client connection is not left
        // stalled: also when the upstream answered before it ended, since node:http never signals 'drain' on a
        // request whose response is complete, and a body paused for one would wait forever. The upstream
        // connection, left mid-body, cannot carry another request (undici drops such a body the same way).
        if (!bodySent && !clientAborted) {
          up?.destroy()
          req.resume()
        }
        const result: ForwardResult = { status, upstreamMs: performance.now() - started, bytesOut }
        if (upstreamError) result.upstreamError = upstreamError
        if (clientAborted) result.clientAborted = true
        if (grpcStatus !== undefined) result.grpcStatus = grpcStatus
        resolve(result)
      }

      /**
       * before response headers nothing was written and the caller answers 502/504; after, the response is
       * cut, or a gRPC-Web call ends with UNAVAILABLE its client reads, as on the HTTP/1.1 engine. `err`, why,
       * goes to the operator's log (`failed`)
       */
      const fail = (reason: UpstreamErrorReason, err?: unknown) => {
        if (settled) return
        if (err !== undefined) o.failed?.(reason, err)
        if (up && !up.destroyed) up.destroy()
        if (status !== 0 && !res.writableFinished) {
          if (grpcWeb !== undefined)
            grpcStatus = endCallWithStatus(res, grpcWeb, GRPC.UNAVAILABLE, UPSTREAM_RESET_MESSAGE, status)
          else cutResponse(res)
        }
        settle(reason)
      }

      const onClientClose = () => {
        if (settled || res.writableFinished) return
        clientGone = true
        if (up && !up.destroyed) up.destroy()
        if (isGrpcWeb(req.headers))
          grpcStatus = clientLeftStatus(
            grpcWeb,
            status,
            webCallDeadline(req.headers),
            target.receivedAt ?? started,
          )
        settle(undefined, true)
      }

      /**
       * A gRPC-Web call's own `grpc-timeout` passed, as on the HTTP/1.1 engine (forwarder.ts ResponseCall): its
       * client gets DEADLINE_EXCEEDED as a gRPC-Web answer (trailers-only, or a trailer frame once the upstream
       * answered) and the upstream request is let go. The deadline is the client's: no upstream error.
       */
      const deadlinePassed = () => {
        deadlineTimer = undefined
        if (settled) return
        if (clientGone || res.destroyed) {
          onClientClose()
          return
        }
        if (!res.headersSent) {
          if (!sendGrpcStatus(res, GRPC.DEADLINE_EXCEEDED, DEADLINE_MESSAGE, target.cors)) {
            onClientClose()
            return
          }
          status = 200
          grpcStatus = GRPC.DEADLINE_EXCEEDED
        } else grpcStatus = endCallWithStatus(res, grpcWeb, GRPC.DEADLINE_EXCEEDED, DEADLINE_MESSAGE, status)
        if (up && !up.destroyed) up.destroy()
        settle()
      }

      let up: ClientRequest | undefined
      try {
        up = request({
          method: req.method ?? 'GET',
          path: target.path,
          headers: out,
          agent: this.agent(target),
          ...(upstream?.socketPath
            ? { socketPath: upstream.socketPath }
            : {
                host: upstream?.host ?? new URL(target.origin).hostname.replace(/^\[|\]$/g, ''),
                port: upstream?.port,
              }),
          ...(upstream?.tls ? { protocol: 'https:' } : {}),
        })
      } catch {
        // a header node:http refuses: undici refuses it too, before connecting
        settle('connect')
        return
      }
      const upReq = up
      res.on('close', onClientClose)
      const deadline = webCallDeadline(req.headers)
      if (deadline !== undefined)
        deadlineTimer = callDeadlineTimer(deadline, target.receivedAt ?? started, deadlinePassed, undefined)

      // undici's headers deadline: counted from dispatch, restarted when the upstream stops reading the
      // body and when the body is complete; a client still uploading at its own pace does not trip it
      const onHeadersTimeout = () => {
        if (settled || status !== 0) return
        if (!bodySent && !upReq.writableNeedDrain) {
          headersTimer = setTimeout(onHeadersTimeout, o.headersTimeout)
          return
        }
        fail('timeout', new UpstreamError('headers timeout', 'UND_ERR_HEADERS_TIMEOUT'))
      }
      headersTimer = upstreamDeadline(o.headersTimeout, onHeadersTimeout)

      let upSocket: Socket | undefined
      upReq.on('socket', (socket: Socket) => {
        upSocket = socket
        if (upstream?.tls) watchTlsEnd(socket as TLSSocket)
        if (!socket.connecting) {
          connected = true
          return
        }
        connectTimer = upstreamDeadline(connectTimeoutMs(o), () => {
          if (!connected) upReq.destroy(new ConnectTimeoutError('connect timeout'))
        })
        socket.once(upstream?.tls ? 'secureConnect' : 'connect', () => {
          connected = true
          clearTimeout(connectTimer)
        })
      })
      upReq.on('error', (err) => {
        if (settled) return
        if (clientGone) settle(undefined, true)
        else fail(err instanceof ConnectTimeoutError || !connected ? 'connect' : 'reset', err)
      })
      // closed without an error and without a response: an unsolicited 101, whose connection node:http drops
      // when nobody asked for the upgrade. Not a timeout: the upstream answered, with something unusable
      upReq.on('close', () => {
        if (!settled && status === 0 && !clientGone) fail('reset')
      })

      // the request body, chunk by chunk: the client is paused while the upstream socket is full
      const onUpstreamDrain = () => req.resume()
      function onRequestData(chunk: Buffer) {
        // after a failure the rest of the body is only read off the client connection
        if (upReq.destroyed) return
        if (!upReq.write(chunk)) {
          req.pause()
          headersTimer?.refresh()
          upReq.once('drain', onUpstreamDrain)
        }
      }
      function onRequestEnd() {
        bodySent = true
        if (upReq.destroyed) return
        // complete only now: Node fills req.rawTrailers when the chunked body has ended
        const trailers = upstreamTrailers(req.rawTrailers, req.headers, target.withheldTrailers)
        if (trailers.length > 0) upReq.addTrailers(trailers)
        upReq.end()
        headersTimer?.refresh()
      }
      req.on('data', onRequestData)
      req.on('end', onRequestEnd)
      req.resume()

      upReq.on('response', (upRes: IncomingMessage) => {
        if (settled) {
          upRes.destroy()
          return
        }
        clearTimeout(headersTimer)
        let headers: string[]
        try {
          headers = downstreamHeaders(
            upRes.rawHeaders.map((x) => Buffer.from(x, 'latin1')),
            upRes.statusCode ?? 0,
            req.method === 'HEAD',
          )
        } catch {
          // a response the client could not read (see UnsupportedResponseCoding): nothing sent, so 502
          upRes.destroy()
          fail('reset')
          return
        }
        try {
          res.writeHead(upRes.statusCode ?? 0, headers)
        } catch {
          // a status node:http won't send (below 100, above 999): nothing went out, so 502
          clearHeaders(res)
          upRes.destroy()
          fail('reset')
          return
        }
        status = upRes.statusCode ?? 0
        if (req.headers.origin !== undefined) target.cors?.learnFromPairs(req, headers)
        // no body by definition (RFC 9110 §6.4.1): answered now. Bytes an upstream sends after such a head
        // anyway are a framing error on its connection, which must not cut the answer the client already has
        if (answersWithoutContent(status, req.method === 'HEAD')) {
          res.end()
          settle()
          upRes.resume()
          return
        }
        grpcWeb = grpcWebResponse(req.headers, headers)
        // undici's body deadline: the longest silence of the upstream while the client is reading
        const onBodyTimeout = () => fail('timeout', new UpstreamError('body timeout', 'UND_ERR_BODY_TIMEOUT'))
        bodyTimer = setTimeout(onBodyTimeout, o.bodyTimeout)
        let blocked = false
        const onResponseDrain = () => {
          responseDrained(res)
          if (settled) return
          bodyTimer = setTimeout(onBodyTimeout, o.bodyTimeout)
          upRes.resume()
        }
        upRes.on('data', (chunk: Buffer) => {
          if (settled) return
          bytesOut += chunk.length
          grpcWeb?.push(chunk)
          clearTimeout(bodyTimer)
          if (res.write(chunk)) bodyTimer = setTimeout(onBodyTimeout, o.bodyTimeout)
          else {
            upRes.pause()
            responseBlocked(res, o.bodyTimeout, !blocked)
            blocked = true
            res.once('drain', onResponseDrain)
          }
        })
        upRes.on('end', () => {
          if (settled) return
          // a body that ended with its connection is whole over TLS only after the upstream's close_notify
          if (
            upstream?.tls &&
            upSocket !== undefined &&
            endsWithConnection(upRes) &&
            endedWithoutCloseNotify(upSocket as TLSSocket)
          ) {
            fail('reset', new UpstreamError(TLS_CUT_MESSAGE, TLS_CUT_CODE))
            return
          }
          const trailers = downstreamTrailers(
            upRes.rawTrailers.map((x) => Buffer.from(x, 'latin1')),
            upRes.rawHeaders,
          )
          if (trailers.length > 0) {
            const pairs: [string, string][] = []
            for (let i = 0; i + 1 < trailers.length; i += 2) pairs.push([trailers[i]!, trailers[i + 1]!])
            try {
              res.addTrailers(pairs)
            } catch {
              // an invalid trailer is dropped, the response still ends
            }
          }
          res.end()
          if (grpcWeb) grpcStatus = grpcWeb.result(status)
          settle()
        })
        upRes.on('error', () => fail('reset'))
        upRes.on('close', () => {
          // closed before its end: the upstream cut the response
          if (!upRes.complete) fail('reset')
        })
      })
    })
  }

  prune(keep: string | undefined): void {
    for (const [origin, agent] of this.agents) {
      if (origin === keep) continue
      this.agents.delete(origin)
      // in-flight requests finish; their sockets are closed instead of kept, idle ones now
      agent.maxFreeSockets = 0
      for (const sockets of Object.values(agent.freeSockets)) for (const s of sockets ?? []) s.destroy()
    }
  }

  /** rotated upstreamTls: a new agent (and so new sockets and TLS sessions) for the next request */
  setTls(tls: ConnectionOptions | undefined): void {
    this.tls = tls
    this.prune(undefined)
  }

  async close(): Promise<void> {
    const agents = [...this.agents.values()]
    this.agents.clear()
    for (const agent of agents) agent.destroy()
  }
}
