// HTTP/1.1 `Upgrade` requests: websocket tunnels are attributed and forwarded; any other protocol (h2c above
// all) is never switched to, since a raw tunnel would carry requests that attribution, policy and audit never see.
import { type IncomingMessage, ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import { Exchange } from './exchange.ts'
import { requestTarget } from './path.ts'
import { type RequestLifecycle, requestHasBody } from './request-lifecycle.ts'
import { BAD_REQUEST, INTERNAL_ERROR, sendJsonRaw, UPSTREAM_ERRORS } from './respond.ts'

/** True when the Upgrade header offers `websocket` (any case, anywhere in a token list). */
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

export class UpgradeHandler {
  /** long-lived tunnels, destroyed at close (drain does not wait for them) */
  readonly tunnels = new Set<Duplex>()

  constructor(private readonly lifecycle: RequestLifecycle) {}

  /**
   * A request that asked for an upgrade other than websocket: served as a plain request (Upgrade,
   * HTTP2-Settings and the Connection tokens are hop-by-hop and never forwarded) on a connection that is
   * closed after the answer. Bytes the client sent after the header block are dropped with it.
   */
  private serveWithoutUpgrade(req: IncomingMessage, socket: Duplex): void {
    const res = new ServerResponse(req)
    res.shouldKeepAlive = false
    res.assignSocket(socket as Socket)
    // the HTTP server's timeouts no longer watch a detached socket
    ;(socket as Socket).setTimeout?.(this.lifecycle.opts.timeouts.idle, () => socket.destroy())
    res.once('finish', () => {
      res.detachSocket(socket as Socket)
      socket.end()
      process.nextTick(() => res.emit('close'))
    })
    void this.lifecycle.handle(req, res, this.lifecycle.connectionInfo(req.socket))
  }

  async handle(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const lifecycle = this.lifecycle
    socket.on('error', () => socket.destroy())
    const websocket = offersWebSocket(req.headers.upgrade)
    if (!websocket && !lifecycle.closing && !requestHasBody(req.headers)) {
      this.serveWithoutUpgrade(req, socket)
      return
    }
    const conn = lifecycle.connectionInfo(req.socket)
    const parsed = requestTarget(req.url ?? '/')
    const ex = new Exchange(conn, req.method ?? 'GET', parsed?.path ?? '', req.headers)
    ex.counted = false
    this.tunnels.add(socket)
    ex.responseClosed = true
    try {
      if (lifecycle.closing || parsed === undefined || !websocket || !isWebSocketHandshake(req)) {
        ex.pipeline = lifecycle.opts.getPipeline()
        const answer = lifecycle.closing
          ? { status: 503, body: '{"error":"unavailable"}' }
          : parsed === undefined
            ? BAD_REQUEST
            : NOT_WEBSOCKET
        ex.status = answer.status
        sendJsonRaw(socket, answer.status, answer.body)
        return
      }
      const identifying = lifecycle.identify(ex, parsed, req)
      if (identifying) await identifying
      const reject = ex.attribution.reject
      if (reject) {
        ex.status = reject.status
        sendJsonRaw(socket, reject.status, reject.body, reject.headers)
        return
      }
      const target = lifecycle.target(parsed.target)
      const result = await lifecycle.opts.forwarder.upgrade(
        req,
        socket,
        head,
        target,
        lifecycle.hopHeaders(ex, req),
      )
      ex.applyForward(result)
      if (result.status === 0 && result.upstreamError) {
        const answer = UPSTREAM_ERRORS[result.upstreamError]
        sendJsonRaw(socket, answer.status, answer.body)
      }
    } catch {
      ex.status = INTERNAL_ERROR.status
      sendJsonRaw(socket, INTERNAL_ERROR.status, INTERNAL_ERROR.body)
    } finally {
      this.tunnels.delete(socket)
      ex.handled = true
      lifecycle.record(ex)
    }
  }

  destroyAll(): void {
    for (const t of this.tunnels) t.destroy()
  }
}
