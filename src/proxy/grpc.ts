// gRPC over the proxy (docs/reference.md "HTTP/2 and gRPC"): recognising calls, deadlines, and the answers the
// proxy gives on its own behalf as gRPC statuses a client can read (HTTP 200 + grpc-status), not HTTP errors.
import type { IncomingHttpHeaders, OutgoingHttpHeaders, ServerResponse } from 'node:http'
import type { ServerHttp2Stream } from 'node:http2'
import type { CorsMemory } from './cors.ts'

export const GRPC = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  DEADLINE_EXCEEDED: 4,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  UNIMPLEMENTED: 12,
  UNAUTHENTICATED: 16,
} as const

export function isGrpc(headers: IncomingHttpHeaders): boolean {
  const ct = headers['content-type']
  return typeof ct === 'string' && ct.startsWith('application/grpc')
}

const UNIT_MS: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 0.001, n: 0.000001 }

/** `grpc-timeout` (at most 8 digits and a unit) in ms; undefined when absent or malformed */
export function grpcTimeoutMs(headers: IncomingHttpHeaders): number | undefined {
  const value = headers['grpc-timeout']
  if (typeof value !== 'string') return undefined
  const m = /^(\d{1,8})([HMSmun])$/.exec(value)
  if (!m) return undefined
  return Number(m[1]) * UNIT_MS[m[2]!]!
}

/** gRPC's limit on a `grpc-timeout` value: 8 ASCII digits */
const MAX_TIMEOUT_VALUE = 99_999_999
const COARSE_UNITS = ['S', 'M', 'H'] as const

/**
 * `ms` as a `grpc-timeout` value: in the finest unit whose count fits 8 digits, so that as little as possible is
 * lost, and rounded down, so that the upstream's deadline is never later than the client's. Undefined when
 * less than a nanosecond is left: a deadline of nothing is one that has passed.
 */
export function grpcTimeoutValue(ms: number): string | undefined {
  // nanoseconds and microseconds multiply: an integer factor keeps a whole number of milliseconds exact
  const ns = Math.floor(ms * 1e6)
  if (!(ns >= 1)) return undefined
  if (ns <= MAX_TIMEOUT_VALUE) return `${ns}n`
  const us = Math.floor(ms * 1e3)
  if (us <= MAX_TIMEOUT_VALUE) return `${us}u`
  if (Math.floor(ms) <= MAX_TIMEOUT_VALUE) return `${Math.floor(ms)}m`
  for (const unit of COARSE_UNITS) {
    const count = Math.floor(ms / UNIT_MS[unit]!)
    if (count <= MAX_TIMEOUT_VALUE) return `${count}${unit}`
  }
  // no client can send more than 8 digits of hours
  return `${MAX_TIMEOUT_VALUE}H`
}

/**
 * What a gRPC call forwarded now has left of its `grpc-timeout`, counted from its arrival (`receivedAt`,
 * performance.now()) as its client counts it, as a `grpc-timeout` value: undefined for a request that is no
 * gRPC call or has no valid grpc-timeout, null once the deadline has passed.
 */
export function grpcTimeoutLeft(headers: IncomingHttpHeaders, receivedAt: number): string | null | undefined {
  if (headers['grpc-timeout'] === undefined || !isGrpc(headers)) return undefined
  const ms = grpcTimeoutMs(headers)
  if (ms === undefined) return undefined
  return grpcTimeoutValue(ms - (performance.now() - receivedAt)) ?? null
}

/** The gRPC status for an HTTP status the proxy would otherwise answer with (gRPC's HTTP mapping, plus 504 → 4). */
export function grpcStatusForHttp(status: number): number {
  switch (status) {
    case 401:
      return GRPC.UNAUTHENTICATED
    case 403:
      return GRPC.PERMISSION_DENIED
    case 404:
      return GRPC.UNIMPLEMENTED
    case 429:
      return GRPC.RESOURCE_EXHAUSTED
    case 504:
      return GRPC.DEADLINE_EXCEEDED
    case 502:
    case 503:
      return GRPC.UNAVAILABLE
    default:
      return status < 300 ? GRPC.OK : status < 500 ? GRPC.INTERNAL : GRPC.UNKNOWN
  }
}

/**
 * The status a gRPC client reads from an upstream response that carries no grpc-status: gRPC's HTTP-to-status
 * mapping (a server that is not gRPC, a load balancer's own error), and INTERNAL for a 200 that ended without one.
 */
export function grpcStatusWithoutOne(httpStatus: number): number {
  switch (httpStatus) {
    case 200:
      return GRPC.INTERNAL
    case 400:
      return GRPC.INTERNAL
    case 401:
      return GRPC.UNAUTHENTICATED
    case 403:
      return GRPC.PERMISSION_DENIED
    case 404:
      return GRPC.UNIMPLEMENTED
    case 429:
    case 502:
    case 503:
    case 504:
      return GRPC.UNAVAILABLE
    default:
      return GRPC.UNKNOWN
  }
}

/** RFC 3986 unreserved and a few printable characters stay; the rest is percent-encoded (gRPC's grpc-message). */
export function grpcMessage(text: string): string {
  return text.replace(/[^\x20-\x24\x26-\x7e]/g, (c) => encodeURIComponent(c))
}

/** HTTP/2 streams answered Trailers-Only: complete with their one HEADERS frame, no trailers step to come */
const trailersOnly = new WeakSet<object>()

/**
 * Sends a Trailers-Only answer on an HTTP/2 stream (`stream.respond` ending the stream) and remembers it: such an
 * answer never reaches node:http2's 'wantTrailers' step, by which the compatibility layer's answers end.
 */
export function respondTrailersOnly(stream: ServerHttp2Stream, headers: OutgoingHttpHeaders): void {
  stream.respond(headers, { endStream: true })
  trailersOnly.add(stream)
}

/** the stream was answered Trailers-Only (respondTrailersOnly): its answer is complete once sent */
export function answeredTrailersOnly(stream: object): boolean {
  return trailersOnly.has(stream)
}

function h2Stream(res: ServerResponse): ServerHttp2Stream | undefined {
  return (res as unknown as { stream?: ServerHttp2Stream }).stream
}

const GRPC_WEB_TYPE = /^application\/grpc-web(-text)?(\+[A-Za-z0-9][A-Za-z0-9._-]{0,31})?[\t ]*(?:;|$)/
/** the types gRPC-Web clients send, answered without a regular expression */
const WEB_TYPES = new Set([
  'application/grpc-web',
  'application/grpc-web+proto',
  'application/grpc-web+json',
  'application/grpc-web-text',
  'application/grpc-web-text+proto',
  'application/grpc-web-text+json',
])

/**
 * The content type of the proxy's own answer to a call sent as `requestType`: `application/grpc`, or for a
 * gRPC-Web call its own variant (`-text`: a base64 body) and message format (`+proto`, `+json`), since
 * gRPC-Web clients refuse an answer in another type, or in another format than they asked for, as a protocol
 * error and never read its status.
 */
export function grpcAnswerType(requestType: unknown): string {
  if (typeof requestType !== 'string' || !requestType.startsWith('application/grpc-web'))
    return 'application/grpc'
  if (WEB_TYPES.has(requestType)) return requestType
  const m = GRPC_WEB_TYPE.exec(requestType)
  if (m !== null) return `application/grpc-web${m[1] ?? ''}${(m[2] ?? '').toLowerCase()}`
  return requestType.startsWith('application/grpc-web-text')
    ? 'application/grpc-web-text'
    : 'application/grpc-web'
}

/**
 * Answers a gRPC call with a status only ("Trailers-Only": one HEADERS frame ending the stream). On HTTP/1.1
 * the status goes into the header section: gRPC-Web's trailers-only form, which its clients read (a plain
 * gRPC client does not speak HTTP/1.1, but a misdirected one gets something readable). A gRPC-Web call is
 * answered in its own content type (grpcAnswerType), and with `cors`, with the CORS fields the upstream
 * answers its Origin with (cors.ts): a browser's client reads `grpc-status` only where the upstream exposes
 * it. Returns false when the response already started.
 */
export function sendGrpcStatus(
  res: ServerResponse,
  code: number,
  message: string,
  cors?: CorsMemory,
): boolean {
  if (res.headersSent || res.destroyed) return false
  const headers: Record<string, string> = {
    'content-type': grpcAnswerType(res.req?.headers['content-type']),
    'grpc-status': String(code),
    'grpc-message': grpcMessage(message),
  }
  const corsFields = cors?.answerFields(res.req?.headers.origin)
  if (corsFields !== undefined) Object.assign(headers, corsFields)
  const stream = h2Stream(res)
  try {
    if (stream) respondTrailersOnly(stream, { ':status': 200, ...headers })
    else {
      // no body: framed by its length, so the connection goes on (chunked framing would do it in more bytes)
      res.writeHead(200, { ...headers, 'content-length': '0' })
      res.end()
    }
    return true
  } catch {
    return false
  }
}

/**
 * Ends a gRPC response that already sent its headers with a status in trailers (the upstream failed or the
 * deadline passed mid-call).
 */
export function endGrpcWithStatus(res: ServerResponse, code: number, message: string): void {
  if (res.writableEnded || res.destroyed) return
  try {
    res.addTrailers({ 'grpc-status': String(code), 'grpc-message': grpcMessage(message) })
    res.end()
  } catch {
    res.destroy()
  }
}
