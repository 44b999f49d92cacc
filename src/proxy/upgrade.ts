// HTTP/1.1 `Upgrade` requests: websocket tunnels are attributed and forwarded; any other protocol (h2c above
// all) is never switched to, since a raw tunnel would carry requests that attribution, policy and audit never see.
import { type IncomingMessage, ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import { requestTarget } from './path.ts'
import { type RequestLifecycle, requestHasBody, type Transport } from './request-lifecycle.ts'
import { sendJsonRaw } from './respond.ts'

/** True when the Upgrade header offers `websocket` (any case, anywhere in a token list). */
function offersWebSocket(upgrade: string | undefined): boolean {
  if (upgrade === undefined) return false
  for (const token of upgrade.split(',')) if (token.trim().toLowerCase() === 'websocket') return true
  return false
}

/**
 * RFC 6455 §4.1: a GET with a Sec-WebSocket-Key; anything else is not a handshake a websocket server takes. A
 * body (Content-Length, chunked) makes it none either: node:http hands the socket over with the body unread,
 * and its bytes would reach the upstream as the tunnel's first, where the client framed them as HTTP.
 */
function isWebSocketHandshake(req: IncomingMessage): boolean {
  const key = req.headers['sec-websocket-key']
  return req.method === 'GET' && typeof key === 'string' && key.length > 0 && !requestHasBody(req.headers)
}

const UNAVAILABLE = Object.freeze({ status: 503, body: '{"error":"unavailable"}' })

const NOT_WEBSOCKET = Object.freeze({
  status: 400,
  body: JSON.stringify({ error: 'bad_request', message: 'only websocket upgrades are supported' }),
})

/**
 * A websocket upgrade to an h2c:// or h2:// upstream: the upstream speaks HTTP/2 only, where websockets need
 * RFC 8441's extended CONNECT, which the proxy does not speak; an HTTP/1.1 handshake sent there would fail.
 */
const WEBSOCKET_NEEDS_HTTP1_UPSTREAM = Object.freeze({
  status: 501,
  body: JSON.stringify({
    error: 'not_implemented',
    message: 'websocket upgrades need an http:// or https:// upstream',
  }),
})

/** what differs per upgrade: the client's socket, the bytes read past the header block, the handshake kind */
interface UpgradeContext {
  socket: Duplex
  head: Buffer
  websocket: boolean
}

/** the response that owns the socket (node:http's `assignSocket`), one that ended by 'close' included */
export function responseHolding(socket: Duplex): ServerResponse | undefined {
  return (socket as { _httpMessage?: ServerResponse | null })._httpMessage ?? undefined
}

/**
 * Runs `then` once no response to a request pipelined ahead of this one is still being written to `socket`.
 * Node emits 'upgrade' and 'connect' as soon as it parses the request and hands over the socket, while a
 * response to an earlier request on the same connection may still own it (`_httpMessage`, set by
 * `assignSocket`, the next queued one assigned synchronously when it finishes): answering at once would put
 * this answer on the wire ahead of that one's (the client reads it as the earlier request's answer, or a 101
 * starts a tunnel that the earlier body is then written into), and a `ServerResponse` for a socket another
 * one holds throws. With `stopAt`, `then` runs as soon as the response holding the socket is one it picks.
 */
export function afterEarlierResponses(
  socket: Duplex,
  then: () => void,
  stopAt?: (holding: ServerResponse) => boolean,
): void {
  const current = responseHolding(socket)
  if (current === undefined || socket.destroyed || stopAt?.(current)) {
    then()
    return
  }
  const next = (): void => {
    current.off('finish', next)
    current.off('close', next)
    afterEarlierResponses(socket, then, stopAt)
  }
  current.on('finish', next)
  current.on('close', next)
}

export class UpgradeHandler {
  /** long-lived tunnels, destroyed at close (drain does not wait for them) */
  readonly tunnels = new Set<Duplex>()

  /** the forward step of every upgrade: a tunnel, answers written raw to the socket */
  private readonly tunnel: Transport<UpgradeContext>

  constructor(private readonly lifecycle: RequestLifecycle) {
    const forwarder = lifecycle.opts.forwarder
    this.tunnel = {
      refusal: () => (lifecycle.closing ? UNAVAILABLE : undefined),
      // after the decision: an upgrade the policy denies is denied as the same request without it would be
      refusalWhenAllowed: (req, ctx) =>
        !ctx.websocket || !isWebSocketHandshake(req)
          ? NOT_WEBSOCKET
          : lifecycle.opts.upstream().protocol === 'h2'
            ? WEBSOCKET_NEEDS_HTTP1_UPSTREAM
            : undefined,
      // gone while earlier answers on its connection were written, or while attribution waited
      clientGone: (ctx) => ctx.socket.destroyed,
      answer: (ex, _req, ctx, a) => {
        ex.status = a.status
        sendJsonRaw(ctx.socket, a.status, a.body, a.headers, lifecycle.opts.timeouts.idle)
        return true
      },
      forward: (req, ctx, target, headers) => forwarder.upgrade(req, ctx.socket, ctx.head, target, headers),
    }
  }

  /**
   * A request that asked for an upgrade other than websocket: served as a plain request (Upgrade,
   * HTTP2-Settings and the Connection tokens are hop-by-hop and never forwarded) on a connection that is
   * closed after the answer. Bytes the client sent after the header block are dropped with it.
   */
  private serveWithoutUpgrade(req: IncomingMessage, socket: Duplex): void {
    const res = new ServerResponse(req)
    res.shouldKeepAlive = false
    // The connection died while earlier responses were written (one that ended with 'close' still holds the
    // socket): nothing can be sent, so no socket is assigned, and the request is recorded as the client's
    // cancellation
    if (socket.destroyed || responseHolding(socket) !== undefined) {
      process.nextTick(() => res.emit('close'))
      void this.lifecycle.handle(req, res, this.lifecycle.connectionInfo(req.socket))
      return
    }
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

  /**
   * An HTTP/1.1 CONNECT: never tunnelled (a reverse proxy has no business opening connections a client names),
   * answered and recorded as a plain request on a connection closed after the answer.
   */
  handleConnect(req: IncomingMessage, socket: Duplex): void {
    socket.on('error', () => socket.destroy())
    afterEarlierResponses(socket, () => this.serveWithoutUpgrade(req, socket))
  }

  /** An upgrade request: the same stages as any request, with a tunnel as the forward step. */
  handle(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => socket.destroy())
    afterEarlierResponses(socket, () => void this.serveUpgrade(req, socket, head))
  }

  private async serveUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const lifecycle = this.lifecycle
    const websocket = offersWebSocket(req.headers.upgrade)
    if (!websocket && !lifecycle.closing && !requestHasBody(req.headers)) {
      this.serveWithoutUpgrade(req, socket)
      return
    }
    const parsed = requestTarget(req.url ?? '/')
    const ex = lifecycle.onRequest(lifecycle.connectionInfo(req.socket), req, parsed?.path ?? '', false)
    // no ServerResponse to wait for: the answer or the tunnel is the response
    ex.responseClosed = true
    this.tunnels.add(socket)
    try {
      await lifecycle.serve(ex, req, parsed, this.tunnel, {
        socket,
        head,
        websocket,
      })
    } finally {
      this.tunnels.delete(socket)
    }
  }

  destroyAll(): void {
    for (const t of this.tunnels) t.destroy()
  }
}
