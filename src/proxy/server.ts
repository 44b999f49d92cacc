// The accept → forward half of the pipeline (docs/reference.md "Request pipeline", "Headers", "Errors"):
// composes the listeners, the per-request lifecycle, websocket upgrades and the upstream readiness probe.
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { ConnectionOptions, TLSSocket } from 'node:tls'
import type { Config } from '../config/schema.ts'
import type { Pipeline } from '../pipeline/index.ts'
import type { Http2AbuseReason, TunnelProtocol } from '../telemetry/metrics.ts'
import type { CertEvidence, Failure } from '../types.ts'
import { CorsMemory } from './cors.ts'
import { type Forwarder, Http1Forwarder, type UpstreamFailed } from './forwarder.ts'
import { Http2Forwarder, ProtocolForwarder } from './http2-forwarder.ts'
import { type HttpsListenOptions, Listeners } from './listeners.ts'
import { NodeHttpForwarder } from './node-http-forwarder.ts'
import { UpstreamProbe } from './readiness.ts'
import { RequestLifecycle } from './request-lifecycle.ts'
import { UpgradeHandler } from './upgrade.ts'
import { parseUpstream } from './upstream-url.ts'

export { httpsOptions } from './listeners.ts'
export { parseUpstream } from './upstream-url.ts'

export interface ProxyOptions {
  getPipeline: () => Pipeline
  /** http://host:port[/base]; the request target is appended to the base path */
  upstream: string
  http?: { host: string; port: number }
  https?: HttpsListenOptions
  /** called once per TLS connection; the result lands in ConnectionInfo.peerCert */
  parsePeerCert?: (socket: TLSSocket) => CertEvidence | Failure | undefined
  timeouts: Config['timeouts']
  limits: Config['limits']
  /** TLS options for https:/h2: upstreams: CA bundle, client certificate and key (PEM), server name */
  upstreamTls?: ConnectionOptions
  /**
   * default: the HTTP/1.1 engine for HTTP/1.1 upstreams (our own pools for http:, https: and unix:, undici's
   * for upgrades; node:http for requests that announce trailers), node:http2 sessions for h2c:/h2: upstreams
   */
  forwarder?: Forwarder
  /** an HTTP/2 connection was closed for abuse (rapid reset, PING/SETTINGS flood); for counting */
  onHttp2Abuse?: (reason: Http2AbuseReason) => void
  /** the pipeline failed to attribute a request (see LifecycleOptions); for counting and logging */
  onAttributionError?: (error: unknown, refused: boolean) => void
  /** a tunnel was closed after timeouts.tunnelIdle without a byte either way; for counting and logging */
  onTunnelIdle?: (protocol: TunnelProtocol) => void
  /** an upstream exchange failed, with the error: for the operator's log (the metric counts every one) */
  onUpstreamFailed?: UpstreamFailed
  /**
   * an HTTP/1.1 upstream sent bytes no response framed (after a complete response, or on an idle connection):
   * its connection was closed, no request failed; for counting and logging as the upstream's error
   */
  onUpstreamUnframedBytes?: (err: Error) => void
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
  /** the https listener's new certificate, key and client CA (PEM), for connections accepted from now on */
  setListenerTls(material: { cert: string; key: string; ca?: string | undefined }): void
  /** rotated upstreamTls material, for upstream connections opened from now on */
  setUpstreamTls(tls: ConnectionOptions): void
  /** for /readyz: a TCP connect to the upstream, cached for a second */
  upstreamReachable(): Promise<boolean>
}

/**
 * how long shutdown waits for the exchanges it cut to record themselves: a socket's close takes a loop turn or
 * two, so this is only reached by one waiting on something else
 */
const CUT_RECORD_MS = 1_000

async function waitAtMost(done: Promise<void> | undefined, ms: number): Promise<void> {
  if (done === undefined) return
  let timer: NodeJS.Timeout | undefined
  await Promise.race([done, new Promise<void>((resolve) => (timer = setTimeout(resolve, ms)))])
  clearTimeout(timer)
}

export function createProxy(opts: ProxyOptions): ProxyServer {
  let upstream = parseUpstream(opts.upstream)
  const { timeouts } = opts
  const tunnelIdle = { ms: timeouts.tunnelIdle, closed: opts.onTunnelIdle }
  const failed = opts.onUpstreamFailed ? { failed: opts.onUpstreamFailed } : {}
  const forwarder: Forwarder =
    opts.forwarder ??
    new ProtocolForwarder(
      new Http1Forwarder({
        headersTimeout: timeouts.upstream,
        // a stalled upstream body is cut after the keep-alive idle time (paused time, waiting for the client,
        // is not counted by either engine)
        bodyTimeout: timeouts.idle,
        tunnelIdle,
        answeredLinger: timeouts.idle,
        ...(opts.upstreamTls ? { tls: opts.upstreamTls } : {}),
        ...failed,
        ...(opts.onUpstreamUnframedBytes ? { unframedBytes: opts.onUpstreamUnframedBytes } : {}),
      }),
      new Http2Forwarder({
        headersTimeout: timeouts.upstream,
        stallTimeout: timeouts.idle,
        tunnelIdle,
        ...(opts.upstreamTls ? { tls: opts.upstreamTls } : {}),
        ...failed,
      }),
      new NodeHttpForwarder({
        headersTimeout: timeouts.upstream,
        bodyTimeout: timeouts.idle,
        ...(opts.upstreamTls ? { tls: opts.upstreamTls } : {}),
        ...failed,
      }),
    )
  // what the upstream answers browsers' origins with (cors.ts), learnt anew for every config: a reload may
  // point the same URL at another service, and no grant outlives the upstream that gave it
  let cors = new CorsMemory()
  const lifecycle = new RequestLifecycle({
    getPipeline: opts.getPipeline,
    forwarder,
    upstream: () => upstream,
    cors: () => cors,
    parsePeerCert: opts.parsePeerCert,
    timeouts,
    onAttributionError: opts.onAttributionError,
  })
  const upgrades = new UpgradeHandler(lifecycle)
  const listeners = new Listeners(
    { http: opts.http, https: opts.https, timeouts, limits: opts.limits },
    {
      request: (req, res) => void lifecycle.handle(req, res, lifecycle.connectionInfo(req.socket)),
      upgrade: (req, socket, head) => upgrades.handle(req, socket, head),
      connect: (req, socket) => upgrades.handleConnect(req, socket),
      http2: {
        connectionInfo: (socket) => lifecycle.connectionInfo(socket),
        request: (req, res, conn) =>
          void lifecycle.handle(req as unknown as IncomingMessage, res as unknown as ServerResponse, conn),
        ...(opts.onHttp2Abuse ? { abuse: opts.onHttp2Abuse } : {}),
      },
    },
  )
  const probe = new UpstreamProbe(upstream)

  async function shutdown(drainMs: number): Promise<void> {
    lifecycle.drain(true)
    const closed = listeners.stopAccepting()
    await lifecycle.settled(drainMs)
    // a gRPC call still open (a stream, a bidirectional call) ends with UNAVAILABLE before its connection
    // goes, bounded like the records below
    await waitAtMost(forwarder.endCalls?.(), CUT_RECORD_MS)
    listeners.closeAllConnections()
    upgrades.destroyAll()
    // An exchange cut here records itself when its response or tunnel reports the close, a loop turn or two
    // later: awaited before the upstream connections go, so a cut request is the client's 499 (or the
    // status already sent, 101 for a tunnel) and not an upstream failure, and before the caller closes
    // telemetry, after which a record is lost. Bounded: what is still waiting (an identification, an
    // upstream connect) is recorded as it stands.
    await lifecycle.recorded(CUT_RECORD_MS)
    await forwarder.close()
    await closed
    lifecycle.recordOpen()
  }

  let closePromise: Promise<void> | undefined

  return {
    listen: () => listeners.listen(),
    drain() {
      lifecycle.drain()
      listeners.h2.drain()
    },
    close(drainMs = timeouts.drain) {
      closePromise ??= shutdown(drainMs)
      return closePromise
    },
    inFlight: () => lifecycle.inFlight,
    setListenerTls: (material) => listeners.setTls(material),
    setUpstreamTls: (tls) => forwarder.setTls?.(tls),
    setUpstream(url: string) {
      const next = parseUpstream(url)
      upstream = next
      cors = new CorsMemory()
      probe.retarget(next)
      forwarder.prune(next.origin)
    },
    upstreamReachable: () => probe.reachable(),
  }
}
