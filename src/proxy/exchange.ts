// One request's facts from accept to record: what the RequestEvent is built from.
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http'
import type { Attribution, Pipeline } from '../pipeline/index.ts'
import type { ConnectionInfo, RequestEvent, RequestInfo } from '../types.ts'
import type { ForwardListener, ForwardResult } from './forwarder.ts'
import { authority } from './headers.ts'
import { requestId, type TraceContext, traceContext } from './ids.ts'
import { UPSTREAM_ERRORS } from './respond.ts'

export const FALLBACK_ATTRIBUTION: Attribution = Object.freeze({
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
export const CLIENT_CLOSED = 499

/** What an exchange reports back to: the lifecycle that serves it. */
export interface ExchangeOwner {
  onResponse(ex: Exchange): void
  forwarded(ex: Exchange, result: ForwardResult): void
}

/**
 * The exchange is also the request as the pipeline sees it (RequestInfo: method, path, url, headers), so
 * identification allocates no second request object.
 */
export class Exchange implements ForwardListener, RequestInfo {
  readonly time = Date.now()
  readonly started = performance.now()
  bytesIn = 0
  bytesOut = 0
  upstreamMs = 0
  status = 0
  upstreamError: RequestEvent['upstreamError']
  grpcStatus: number | undefined
  attribution: Attribution = FALLBACK_ATTRIBUTION
  pipeline: Pipeline | undefined
  responseClosed = false
  handled = false
  /** counted in inFlight (long-lived upgrade tunnels are not, so drain does not wait for them) */
  counted = true
  recorded = false
  /** records the exchange when its response closes (a shared listener function has no closure) */
  owner: ExchangeOwner | undefined
  /** an HTTP exchange's request and response, for the steps after its forward */
  req: IncomingMessage | undefined
  res: ServerResponse | undefined
  readonly trace: TraceContext
  readonly requestId: string
  readonly host: string | undefined
  /** the raw request target (path + query), once it was parsed */
  url = ''

  constructor(
    readonly conn: ConnectionInfo,
    readonly method: string,
    readonly path: string,
    readonly headers: IncomingHttpHeaders,
  ) {
    const tp = headers.traceparent
    this.trace = traceContext(typeof tp === 'string' ? tp : undefined)
    const rid = headers['x-request-id']
    this.requestId = requestId(typeof rid === 'string' ? rid : undefined)
    this.host = headers.host ?? authority(headers)
  }

  /** the lifecycle's response `close` listener passes the close on to the forward (`responseClosed`) */
  get relaysClose(): boolean {
    return true
  }

  /** the forwarder is done: the exchange itself is the listener, so a forward needs no closure */
  forwarded(result: ForwardResult): void {
    this.owner?.forwarded(this, result)
  }

  applyForward(result: ForwardResult): void {
    this.upstreamMs = result.upstreamMs
    this.bytesOut = result.bytesOut
    if (result.bytesIn !== undefined) this.bytesIn = result.bytesIn
    if (result.upstreamError) this.upstreamError = result.upstreamError
    if (result.grpcStatus !== undefined) this.grpcStatus = result.grpcStatus
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
      // in the literal (undefined when the client named no host): nearly every request has one, and a
      // property added afterwards costs the event a second, out-of-object property store
      host: this.host,
    }
    if (this.upstreamError) event.upstreamError = this.upstreamError
    if (this.grpcStatus !== undefined) event.grpcStatus = this.grpcStatus
    if (this.trace.parentSpanId !== undefined) event.parentSpanId = this.trace.parentSpanId
    if (this.trace.flags !== '01') event.traceFlags = this.trace.flags
    return event
  }
}
