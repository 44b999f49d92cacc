// The benchmark baseline: the same Forwarder contract on the classic http-proxy library.
// Not part of the proxy or its package; it exists so the benchmark compares engines, not feature sets.
import { Agent, type ClientRequest, type IncomingMessage, type ServerResponse } from 'node:http'
import type { Duplex } from 'node:stream'
import httpProxy from 'http-proxy'
import type { Forwarder, ForwardResult, ForwardTarget } from '../../src/proxy/forwarder.ts'
import type { UpstreamHeaders } from '../../src/proxy/headers.ts'
import type { UpstreamErrorReason } from '../../src/types.ts'

const kHeaders = Symbol('nhi.upstreamHeaders')
type Tagged = IncomingMessage & { [kHeaders]?: UpstreamHeaders }

/** http-proxy copies the client's headers; replace them with the proxy's computed list. */
function replaceHeaders(proxyReq: ClientRequest, req: Tagged): void {
  const headers = req[kHeaders]
  if (headers === undefined) return
  for (const name of proxyReq.getHeaderNames()) proxyReq.removeHeader(name)
  for (const name in headers) {
    const value = headers[name]
    if (value !== undefined) proxyReq.setHeader(name, value)
  }
}

function classify(err: NodeJS.ErrnoException): UpstreamErrorReason {
  if (err.code === 'ECONNREFUSED' || err.code === 'ENOTFOUND' || err.code === 'EHOSTUNREACH') return 'connect'
  if (err.code === 'ETIMEDOUT' || err.message.includes('timed out')) return 'timeout'
  return 'reset'
}

export class HttpProxyForwarder implements Forwarder {
  private readonly agent = new Agent({ keepAlive: true, maxSockets: Number.POSITIVE_INFINITY })
  private readonly proxy: httpProxy

  constructor(options: { headersTimeout: number }) {
    this.proxy = httpProxy.createProxyServer({
      agent: this.agent,
      ignorePath: true,
      xfwd: false,
      proxyTimeout: options.headersTimeout,
    })
    this.proxy.on('proxyReq', (proxyReq, req) => replaceHeaders(proxyReq, req as Tagged))
    this.proxy.on('proxyReqWs', (proxyReq, req) => replaceHeaders(proxyReq, req as Tagged))
  }

  forward(
    req: IncomingMessage,
    res: ServerResponse,
    target: ForwardTarget,
    headers: UpstreamHeaders,
  ): Promise<ForwardResult> {
    return new Promise((resolve) => {
      const started = performance.now()
      let status = 0
      let bytesOut = 0
      let settled = false
      const settle = (upstreamError?: UpstreamErrorReason, clientAborted?: boolean) => {
        if (settled) return
        settled = true
        const result: ForwardResult = { status, upstreamMs: performance.now() - started, bytesOut }
        if (upstreamError) result.upstreamError = upstreamError
        if (clientAborted) result.clientAborted = true
        resolve(result)
      }
      ;(req as Tagged)[kHeaders] = headers
      res.once('close', () => settle(undefined, !res.writableFinished))
      this.proxy.web(
        req,
        res,
        {
          target: target.origin + target.path,
          selfHandleResponse: false,
        },
        (err) => {
          if (res.headersSent) res.destroy()
          settle(classify(err as NodeJS.ErrnoException))
        },
      )
      res.once('pipe', (src: IncomingMessage) => {
        status = src.statusCode ?? 0
        src.on('data', (c: Buffer) => {
          bytesOut += c.length
        })
      })
    })
  }

  upgrade(
    req: IncomingMessage,
    socket: Duplex,
    head: Buffer,
    target: ForwardTarget,
    headers: UpstreamHeaders,
  ): Promise<ForwardResult> {
    return new Promise((resolve) => {
      const started = performance.now()
      ;(req as Tagged)[kHeaders] = headers
      let failed: UpstreamErrorReason | undefined
      socket.once('close', () => {
        const result: ForwardResult = {
          status: failed ? 0 : 101,
          upstreamMs: performance.now() - started,
          bytesOut: 0,
        }
        if (failed) result.upstreamError = failed
        resolve(result)
      })
      this.proxy.ws(req, socket, head, { target: target.origin + target.path }, (err) => {
        failed = classify(err as NodeJS.ErrnoException)
        socket.destroy()
      })
    })
  }

  prune(): void {}

  async close(): Promise<void> {
    this.proxy.close()
    this.agent.destroy()
  }
}
