// Trace and request ids for the hop we add (W3C Trace Context, x-request-id).
// Ids are written as ASCII into small byte templates and become one string each: random bytes come from a
// pooled buffer (no crypto call per request) and are hex-encoded in place, so a request's ids cost a string
// apiece instead of a tree of pieces.
import { randomFillSync } from 'node:crypto'

const POOL_SIZE = 4096
const pool = Buffer.allocUnsafe(POOL_SIZE)
let poolOffset = POOL_SIZE

/** `bytes` random bytes, hex-encoded into `out` from `at` (2 × bytes ASCII digits) */
function writeRandomHex(out: Buffer, at: number, bytes: number): void {
  if (poolOffset + bytes > POOL_SIZE) {
    randomFillSync(pool)
    poolOffset = 0
  }
  for (let i = 0; i < bytes; i++) {
    const b = pool[poolOffset + i]!
    out[at + 2 * i] = HEX[b >> 4]!
    out[at + 2 * i + 1] = HEX[b & 15]!
  }
  poolOffset += bytes
}
const HEX = Buffer.from('0123456789abcdef', 'latin1')

function randomHex(bytes: number): string {
  const out = Buffer.allocUnsafe(2 * bytes)
  writeRandomHex(out, 0, bytes)
  return out.toString('latin1')
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

/**
 * Trace flags as sent on: sampled (01) and random (02) are the only ones defined, and every other bit is
 * reserved and must be sent as zero (W3C Trace Context §3.2.2.5), whatever the caller set.
 */
const KNOWN_FLAGS = ['00', '01', '02', '03'] as const

/**
 * Whether this hop samples its span, as the OpenTelemetry SDK's sampler built from OTEL_TRACES_SAMPLER and
 * OTEL_TRACES_SAMPLER_ARG decides it (the span export builds that one): the `traceparent` sent upstream says the
 * same, so a downstream service records its spans exactly when this hop's span is recorded too (a trace this
 * hop starts marked sampled while a ratio sampler drops its span leaves the downstream spans without their
 * parent). `callerFlags` is undefined for a trace this hop starts. Read once, at start, as the SDK reads it.
 */
type SamplingRule = (traceId: string, callerFlags: number | undefined) => boolean

/** parentbased_always_on, the default: the caller's flag, or sampled for a trace this hop starts */
const PARENT_OR_SAMPLED: SamplingRule = (_traceId, caller) => caller === undefined || (caller & 1) === 1

export function samplingRuleFromEnv(env: NodeJS.ProcessEnv): SamplingRule {
  const raw = env['OTEL_TRACES_SAMPLER']
  // the SDK takes the value as it is, whitespace included: only a blank one is unset
  const name = raw === undefined || raw.trim() === '' ? 'parentbased_always_on' : raw
  const parentOr = (root: (traceId: string) => boolean): SamplingRule => {
    return (traceId, caller) => (caller === undefined ? root(traceId) : (caller & 1) === 1)
  }
  switch (name) {
    case 'always_on':
      return () => true
    case 'always_off':
      return () => false
    case 'parentbased_always_off':
      return parentOr(() => false)
    case 'traceidratio': {
      const bound = ratioBound(env['OTEL_TRACES_SAMPLER_ARG'])
      return (traceId) => traceIdAccumulation(traceId) < bound
    }
    case 'parentbased_traceidratio': {
      const bound = ratioBound(env['OTEL_TRACES_SAMPLER_ARG'])
      return parentOr((traceId) => traceIdAccumulation(traceId) < bound)
    }
    default:
      // parentbased_always_on, and what the SDK replaces with it (a misspelling)
      return PARENT_OR_SAMPLED
  }
}

/** the SDK's TraceIdRatioBasedSampler bound: a blank, non-numeric or out-of-range ratio is 1 there */
function ratioBound(arg: string | undefined): number {
  const n = arg === undefined || arg.trim() === '' ? Number.NaN : Number(arg)
  const ratio = Number.isNaN(n) || n < 0 || n > 1 ? 1 : n
  return ratio === 1 ? 0x100000000 : Math.floor(ratio * 0xffffffff)
}

/** the SDK's ratio sampler's reading of a trace id: its four 32-bit words XORed */
function traceIdAccumulation(traceId: string): number {
  let acc = 0
  for (let i = 0; i < 32; i += 8) acc = (acc ^ Number.parseInt(traceId.slice(i, i + 8), 16)) >>> 0
  return acc
}

const sampling: SamplingRule = samplingRuleFromEnv(process.env)
/** the default rule keeps the caller's flags and samples a new trace: nothing to work out per request */
const defaultSampling = sampling === PARENT_OR_SAMPLED

/** Continues a valid incoming `traceparent` with a new span for our hop, or starts a new trace. */
export function traceContext(incoming: string | undefined): TraceContext {
  const trace: TraceContext = { traceId: '', spanId: '', flags: '01', continued: false, traceparent: '' }
  startTrace(trace, incoming)
  return trace
}

/**
 * traceContext() written into an object the caller already has (the exchange): a request's trace costs no
 * object of its own. `parentSpanId` is set only when the incoming parent was valid.
 */
export function startTrace(into: TraceContext, incoming: string | undefined): void {
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
        const caller = Number.parseInt(m[4]!, 16) & 3
        // the random bit (02) is the caller's word on the trace id; the sampled bit (01) is this hop's decision
        const flags =
          KNOWN_FLAGS[defaultSampling ? caller : (caller & 2) | (sampling(traceId, caller) ? 1 : 0)]!
        into.traceId = traceId
        into.spanId = spanId
        into.parentSpanId = m[3]!
        into.flags = flags
        into.continued = true
        into.traceparent = `00-${traceId}-${spanId}-${flags}`
        return
      }
    }
  }
  newTrace(into)
}

/** `00-<trace id>-<span id>-01`, filled in place; the ids are slices of the one header string */
const TRACEPARENT = Buffer.from(`00-${'0'.repeat(32)}-${'0'.repeat(16)}-01`, 'latin1')

function newTrace(into: TraceContext): void {
  writeRandomHex(TRACEPARENT, 3, 16)
  writeRandomHex(TRACEPARENT, 36, 8)
  const traceparent = TRACEPARENT.toString('latin1')
  const traceId = traceparent.slice(3, 35)
  const spanId = traceparent.slice(36, 52)
  // all-zero ids are invalid (a chance of 2^-64 at most): draw again
  if (traceId === ZERO_TRACE || spanId === ZERO_SPAN) {
    newTrace(into)
    return
  }
  into.traceId = traceId
  into.spanId = spanId
  into.continued = false
  if (defaultSampling || sampling(traceId, undefined)) {
    into.flags = '01'
    into.traceparent = traceparent
  } else {
    into.flags = '00'
    into.traceparent = `${traceparent.slice(0, 53)}00`
  }
}

const REQUEST_ID_RE = /^[\x21-\x7e]{1,128}$/

/**
 * Created request ids have the shape of a UUID (8-4-4-4-12 lowercase hex): a random prefix of 80 bits drawn
 * when the process starts, then a 48-bit counter. Unique across restarts and workers (each draws its own
 * prefix) without a random draw per request; a new prefix is drawn if the counter ever runs out.
 */
const REQUEST_ID = Buffer.alloc(36)
const COUNTER_AT = 24
let counterLeft = 0

function newPrefix(): void {
  writeRandomHex(REQUEST_ID, 0, 4)
  writeRandomHex(REQUEST_ID, 9, 2)
  writeRandomHex(REQUEST_ID, 14, 2)
  writeRandomHex(REQUEST_ID, 19, 2)
  REQUEST_ID[8] = REQUEST_ID[13] = REQUEST_ID[18] = REQUEST_ID[23] = 0x2d
  REQUEST_ID.fill(0x30, COUNTER_AT)
  counterLeft = 2 ** 48 - 1
}

function nextRequestId(): string {
  if (counterLeft === 0) newPrefix()
  counterLeft--
  // increments the hex counter in place, carrying from the last digit
  for (let i = REQUEST_ID.length - 1; i >= COUNTER_AT; i--) {
    const c = REQUEST_ID[i]!
    if (c === 0x66) {
      REQUEST_ID[i] = 0x30
      continue
    }
    REQUEST_ID[i] = c === 0x39 ? 0x61 : c + 1
    break
  }
  return REQUEST_ID.toString('latin1')
}

/** Keeps a printable incoming x-request-id of at most 128 characters, else creates one. */
export function requestId(incoming: string | undefined): string {
  return incoming !== undefined && REQUEST_ID_RE.test(incoming) ? incoming : nextRequestId()
}
