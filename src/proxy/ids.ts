// Trace and request ids for the hop we add (W3C Trace Context, x-request-id).
// Random bytes come from a pooled buffer so a request costs no crypto call of its own.
import { randomFillSync, randomUUID } from 'node:crypto'

const POOL_SIZE = 4096
const pool = Buffer.allocUnsafe(POOL_SIZE)
let poolOffset = POOL_SIZE

function randomHex(bytes: number): string {
  if (poolOffset + bytes > POOL_SIZE) {
    randomFillSync(pool)
    poolOffset = 0
  }
  const hex = pool.toString('hex', poolOffset, poolOffset + bytes)
  poolOffset += bytes
  return hex
}

const ZERO_TRACE = '00000000000000000000000000000000'
const ZERO_SPAN = '0000000000000000'

/** 32 lowercase hex, never all zeros */
export function newTraceId(): string {
  const id = randomHex(16)
  return id === ZERO_TRACE ? newTraceId() : id
}

/** 16 lowercase hex, never all zeros */
export function newSpanId(): string {
  const id = randomHex(8)
  return id === ZERO_SPAN ? newSpanId() : id
}

export interface TraceContext {
  traceId: string
  /** the span id we send upstream (our hop) */
  spanId: string
  /** the caller's span id from a valid incoming `traceparent` (the parent of our hop) */
  parentSpanId?: string
  flags: string
  /** the incoming parent was valid, so `tracestate` may be kept */
  continued: boolean
  /** the header value to send upstream */
  traceparent: string
}

// version-traceid-parentid-flags; versions after 00 may append fields after another dash
const TRACEPARENT_RE = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/

/** Continues a valid incoming `traceparent` with a new span for our hop, or starts a new trace. */
export function traceContext(incoming: string | undefined): TraceContext {
  if (incoming !== undefined && incoming.length >= 55 && incoming.length <= 512) {
    const m = TRACEPARENT_RE.exec(incoming)
    if (m) {
      const version = m[1]!
      const traceId = m[2]!
      const valid =
        version !== 'ff' &&
        (version !== '00' || m[5] === undefined) &&
        traceId !== ZERO_TRACE &&
        m[3] !== ZERO_SPAN
      if (valid) {
        const spanId = newSpanId()
        const flags = m[4]!
        return {
          traceId,
          spanId,
          parentSpanId: m[3]!,
          flags,
          continued: true,
          traceparent: `00-${traceId}-${spanId}-${flags}`,
        }
      }
    }
  }
  const traceId = newTraceId()
  const spanId = newSpanId()
  return { traceId, spanId, flags: '01', continued: false, traceparent: `00-${traceId}-${spanId}-01` }
}

const REQUEST_ID_RE = /^[\x21-\x7e]{1,128}$/

/** Keeps a printable incoming x-request-id of at most 128 characters, else creates one. */
export function requestId(incoming: string | undefined): string {
  return incoming !== undefined && REQUEST_ID_RE.test(incoming) ? incoming : randomUUID()
}
