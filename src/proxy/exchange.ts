// One request's facts from accept to record: what the RequestEvent is built from.
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http'
import type { Attribution, Pipeline } from '../pipeline/index.ts'
import type { ConnectionInfo, RequestEvent, RequestInfo } from '../types.ts'
import type { ForwardListener, ForwardResult } from './forwarder.ts'
import { authority } from './headers.ts'
import { requestId, startTrace, type TraceContext } from './ids.ts'
import { INTERNAL_ERROR, UPSTREAM_ERRORS } from './respond.ts'

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

/**
 * A request the pipeline failed to attribute while the policy is enforced: answered 500, never forwarded
 * unchecked (an authorization sidecar refuses when its check fails, as Envoy's ext_authz does by default).
 */
export const FAIL_CLOSED_ATTRIBUTION: Attribution = Object.freeze({
  ...FALLBACK_ATTRIBUTION,
  reject: Object.freeze({ status: INTERNAL_ERROR.status, body: INTERNAL_ERROR.body }),
}) as Attribution

/** nginx's "client closed request": recorded when the client left before an answer */
export const CLIENT_CLOSED = 499

/** What an exchange reports back to: the lifecycle that serves it. */
export interface ExchangeOwner {
  onResponse(ex: Exchange): void
  forwarded(ex: Exchange, result: ForwardResult): void
}

const NO_FINGERPRINTS: RequestEvent['fingerprints'] = Object.freeze({})
const RESPONSE_CLOSED = 1
const HANDLED = 2
const COUNTED = 4
const RECORDED = 8
const UNANSWERED = 16
const NO_HEADERS: IncomingHttpHeaders = Object.freeze({}) as IncomingHttpHeaders

/**
 * One record per request, from accept to record. The exchange is the request as the pipeline sees it
 * (RequestInfo: method, path, url, headers), its trace context (the fields are its own) and, once recorded,
 * the request event the recorders get (RequestEvent): a request allocates neither a second request object,
 * nor a trace object, nor an event. The attribution's parts are read through getters, so they take no slot.
 */
export class Exchange implements ForwardListener, RequestInfo, TraceContext, RequestEvent {
  readonly time = Date.now()
  readonly started = performance.now()
  bytesIn = 0
  bytesOut = 0
  upstreamMs = 0
  /** 0 until known; a request recorded without one is recorded as CLIENT_CLOSED */
  status = 0
  /** set when the exchange is recorded */
  durationMs = 0
  upstreamError: RequestEvent['upstreamError']
  grpcStatus: number | undefined
  attribution: Attribution = FALLBACK_ATTRIBUTION
  pipeline: Pipeline | undefined
  /** set when the exchange is recorded (the pipeline reference is dropped then) */
  service = ''
  /** the lifecycle flags below, as bits of one field (four fields would be four slots per request) */
  private state = COUNTED
  /** records the exchange when its response closes (a shared listener function has no closure) */
  owner: ExchangeOwner | undefined
  /** an HTTP exchange's request and response, for the steps after its forward */
  req: IncomingMessage | undefined
  res: ServerResponse | undefined
  // the trace context (startTrace writes every field; parentSpanId only for a continued trace)
  traceId = ''
  spanId = ''
  parentSpanId: string | undefined
  /**
   * the address the request comes from, once worked out: by the first stage that needed it (RequestInfo),
   * and when recorded, the client a trusted-proxy peer forwarded for (X-Forwarded-For) or the peer
   */
  client: string | undefined = undefined
  flags = '01'
  continued = false
  traceparent = ''
  readonly requestId: string
  readonly host: string | undefined
  /** the request target (path + query), its path normalized, once it was parsed */
  url = ''
  /** the request's headers; emptied when the exchange is recorded (a recorder may keep the event) */
  headers: IncomingHttpHeaders

  constructor(
    readonly conn: ConnectionInfo,
    readonly method: string,
    readonly path: string,
    headers: IncomingHttpHeaders,
  ) {
    this.headers = headers
    const tp = headers.traceparent
    startTrace(this, typeof tp === 'string' ? tp : undefined)
    const rid = headers['x-request-id']
    this.requestId = requestId(typeof rid === 'string' ? rid : undefined)
    this.host = headers.host ?? authority(headers)
  }

  /** the target as the client sent it (RequestInfo.sentTarget): a getter, so no slot per request */
  get sentTarget(): string | undefined {
    const sent = this.req?.url
    return sent !== undefined && sent.charCodeAt(0) === 47 /* / */ ? sent : undefined
  }

  /** the header lines as received (RequestInfo.rawHeaders) */
  get rawHeaders(): readonly string[] | undefined {
    return this.req?.rawHeaders
  }

  get responseClosed(): boolean {
    return (this.state & RESPONSE_CLOSED) !== 0
  }
  set responseClosed(on: boolean) {
    this.state = on ? this.state | RESPONSE_CLOSED : this.state & ~RESPONSE_CLOSED
  }
  get handled(): boolean {
    return (this.state & HANDLED) !== 0
  }
  set handled(on: boolean) {
    this.state = on ? this.state | HANDLED : this.state & ~HANDLED
  }
  /** counted in inFlight (long-lived upgrade tunnels are not, so drain does not wait for them) */
  get counted(): boolean {
    return (this.state & COUNTED) !== 0
  }
  set counted(on: boolean) {
    this.state = on ? this.state | COUNTED : this.state & ~COUNTED
  }
  get recorded(): boolean {
    return (this.state & RECORDED) !== 0
  }
  set recorded(on: boolean) {
    this.state = on ? this.state | RECORDED : this.state & ~RECORDED
  }
  /**
   * the connection closed while the response waited behind another's answer (HTTP/1.1 pipelining): none of it
   * reached the client, whatever the upstream had answered, so it is recorded as CLIENT_CLOSED
   */
  get unanswered(): boolean {
    return (this.state & UNANSWERED) !== 0
  }
  set unanswered(on: boolean) {
    this.state = on ? this.state | UNANSWERED : this.state & ~UNANSWERED
  }

  /** the lifecycle's response `close` listener passes the close on to the forward (`responseClosed`) */
  get relaysClose(): boolean {
    return true
  }

  // the request event's attribution fields
  get identity(): RequestEvent['identity'] {
    return this.attribution.identity
  }
  get fingerprints(): RequestEvent['fingerprints'] {
    return this.attribution.fingerprints ?? NO_FINGERPRINTS
  }
  get failures(): RequestEvent['failures'] {
    return this.attribution.evidence.failures
  }
  get anomalies(): RequestEvent['anomalies'] {
    return this.attribution.evidence.anomalies
  }
  get decision(): RequestEvent['decision'] {
    return this.attribution.decision
  }
  get route(): string {
    return this.attribution.route
  }
  get clientAddress(): string {
    return this.client ?? this.conn.remoteAddress
  }
  /** the direct peer, when it is a trusted proxy that named another client */
  get peerAddress(): string | undefined {
    const peer = this.conn.remoteAddress
    return this.client === undefined || this.client === peer ? undefined : peer
  }
  /** W3C trace flags sent upstream, when not the default "01" */
  get traceFlags(): string | undefined {
    return this.flags === '01' ? undefined : this.flags
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

  /**
   * The exchange as the request event, once: its last facts are settled, and what only the request path
   * needed (request, response, headers, raw target, pipeline) is let go, since a recorder may keep the event
   * (the built-in ones copy what they need: the audit ring its line, the OTLP export its bytes).
   */
  event(): RequestEvent {
    if (this.unanswered) {
      this.status = CLIENT_CLOSED
      this.bytesOut = 0
    } else if (this.status === 0) this.status = CLIENT_CLOSED
    this.durationMs = performance.now() - this.started
    const pipeline = this.pipeline
    this.service = pipeline?.service ?? ''
    this.client = pipeline?.clientAddress?.(this, this.conn.remoteAddress)
    this.pipeline = undefined
    this.req = undefined
    this.res = undefined
    this.headers = NO_HEADERS
    // the raw target's query can carry a client's secret (?api_key=…): the event has the path only
    this.url = ''
    return this
  }

  /** the request event's fields only (what `JSON.stringify` of an event shows an embedding recorder) */
  toJSON(): RequestEvent {
    const event: RequestEvent = {
      time: this.time,
      traceId: this.traceId,
      spanId: this.spanId,
      requestId: this.requestId,
      identity: this.identity,
      fingerprints: this.fingerprints,
      failures: this.failures,
      anomalies: this.anomalies,
      decision: this.decision,
      clientAddress: this.clientAddress,
      method: this.method,
      path: this.path,
      route: this.route,
      status: this.status || CLIENT_CLOSED,
      durationMs: this.durationMs,
      upstreamMs: this.upstreamMs,
      bytesIn: this.bytesIn,
      bytesOut: this.bytesOut,
      service: this.service,
    }
    if (this.host !== undefined) event.host = this.host
    const peer = this.peerAddress
    if (peer !== undefined) event.peerAddress = peer
    if (this.upstreamError) event.upstreamError = this.upstreamError
    if (this.grpcStatus !== undefined) event.grpcStatus = this.grpcStatus
    if (this.parentSpanId !== undefined) event.parentSpanId = this.parentSpanId
    if (this.traceFlags !== undefined) event.traceFlags = this.traceFlags
    return event
  }
}
