// The audit line written straight into bytes. Formatting the line as a string cost a tree of string pieces
// per request and a second copy when the batch was joined (≈ 2.9 KB of JavaScript heap per request, the
// largest item only nhi-proxy pays); here a request's line goes into the batch buffer piece by piece,
// constant text and the identity's part are copied from bytes prepared once, and only text that needs JSON
// escaping takes the string path. The output is byte for byte what JSON.stringify would write, key for key.
import { type Identity, type PolicyDecision, type RequestEvent, recordedDecision } from '../types.ts'

const json = JSON.stringify

/**
 * A growable byte buffer lines are written into. `bytes` is replaced, never reused, after `take()`: the
 * destination may still hold the old one while its write is in flight.
 */
export class LineBuffer {
  bytes: Buffer
  length = 0

  constructor(private readonly initial: number) {
    this.bytes = Buffer.allocUnsafe(initial)
  }

  /** room for `n` more bytes */
  reserve(n: number): void {
    const need = this.length + n
    if (need <= this.bytes.length) return
    const grown = Buffer.allocUnsafe(Math.max(need, this.bytes.length * 2))
    this.bytes.copy(grown, 0, 0, this.length)
    this.bytes = grown
  }

  /** the bytes written so far, handed over; the next line starts in a new buffer */
  take(): Buffer {
    const out = this.bytes.subarray(0, this.length)
    this.bytes = Buffer.allocUnsafe(this.initial)
    this.length = 0
    return out
  }

  copy(src: Buffer): void {
    this.reserve(src.length)
    // TypedArray#set: Buffer#copy's argument handling costs more than copying a short fragment
    this.bytes.set(src, this.length)
    this.length += src.length
  }

  /** text known to be ASCII (constant keys, ids we generated, numbers) */
  ascii(s: string): void {
    this.reserve(s.length)
    this.length += this.bytes.write(s, this.length, 'latin1')
  }

  /** any text, UTF-8 */
  utf8(s: string): void {
    this.reserve(s.length * 3)
    this.length += this.bytes.write(s, this.length, 'utf8')
  }

  /**
   * A JSON string literal: printable ASCII without `"` or `\` is copied as is, anything else escaped. The
   * characters are stored as they are checked: Buffer#write's own overhead is several times the cost of
   * the short texts of a line (ids, addresses, paths).
   */
  string(s: string): void {
    const n = s.length
    this.reserve(n + 2)
    const b = this.bytes
    const start = this.length
    b[start] = 0x22
    for (let i = 0; i < n; i++) {
      const c = s.charCodeAt(i)
      if (c < 0x20 || c > 0x7e || c === 0x22 || c === 0x5c) {
        // whatever was stored of it is overwritten
        this.utf8(json(s))
        return
      }
      b[start + 1 + i] = c
    }
    b[start + 1 + n] = 0x22
    this.length = start + n + 2
  }

  /** an optional string member: its key (`,"name":` as bytes) and value, or nothing without a value */
  member(key: Buffer, value: string | undefined): void {
    if (value === undefined) return
    this.copy(key)
    this.string(value)
  }

  /** a JSON number as JSON.stringify writes it (null for NaN and ±Infinity) */
  number(n: number): void {
    if (Number.isSafeInteger(n) && n >= 0) this.digits(n)
    else this.ascii(Number.isFinite(n) ? String(n) : 'null')
  }

  private digits(n: number): void {
    let width = 1
    for (let p = 10; p <= n; p *= 10) width++
    this.reserve(width)
    const b = this.bytes
    let at = this.length + width
    this.length = at
    do {
      const q = Math.floor(n / 10)
      b[--at] = 0x30 + (n - q * 10)
      n = q
    } while (n > 0)
  }

  /**
   * Milliseconds with three decimals ("12.345", "0.050"): integer arithmetic only, because shortest
   * round-trip formatting of an arbitrary double is one of the costliest parts of the line.
   */
  millis(ms: number): void {
    if (!Number.isFinite(ms) || ms < 0 || ms >= 1e9) {
      this.number(Math.round(ms * 1000) / 1000)
      return
    }
    const us = Math.round(ms * 1000)
    let frac = us % 1000
    this.digits((us - frac) / 1000)
    this.reserve(4)
    const b = this.bytes
    const at = this.length
    b[at] = 0x2e
    b[at + 3] = 0x30 + (frac % 10)
    frac = Math.floor(frac / 10)
    b[at + 2] = 0x30 + (frac % 10)
    b[at + 1] = 0x30 + Math.floor(frac / 10)
    this.length = at + 4
  }

  toString(): string {
    return this.bytes.toString('utf8', 0, this.length)
  }
}

/** constant pieces of the line, as bytes once */
const lit = (s: string) => Buffer.from(s, 'latin1')
const START = lit('{"type":"audit","time":"')
const TIME_END_TRACE = lit('Z","trace_id":')
const TRACE = lit('","trace_id":')
const SPAN = lit(',"span_id":')
const REQUEST = lit(',"request_id":')
const FP_JWT = lit('"jwt":')
const FP_CERT = lit('"cert":')
const FP_APIKEY = lit('"apikey":')
const DURATION = lit(',"duration_ms":')
const UPSTREAM = lit(',"upstream_ms":')
const BYTES_IN = lit(',"bytes_in":')
const BYTES_OUT = lit(',"bytes_out":')
const UPSTREAM_ERROR = lit(',"upstream_error":')
const GRPC_STATUS = lit(',"grpc_status":')
const FAILURE_SOURCE = lit('{"source":')
const FAILURE_REASON = lit(',"reason":')
const ANOMALIES = lit('],"anomalies":[')
const END = lit(']}\n')
/** the usual end of a line: no failures, no anomalies */
const NOTHING_NOTEWORTHY_END = lit('],"anomalies":[]}\n')
const COMMA_BYTES = lit(',')
const CLOSE_BRACE = lit('}')

/**
 * The identity's part of a line as UTF-8 bytes, escaped once per identity object instead of once per
 * request: the engine hands out the same (never mutated) identity object for every request with the same
 * evidence, and a reload that changes what an identity looks like (rules, team, zone) builds new objects,
 * so a cached fragment can never describe a different identity.
 */
interface IdentityBytes {
  /** ,"identity" … "zone", then `,"fingerprints":{` */
  head: Buffer
  /** `}` closing the fingerprints, "iss" … "cert_subject", then `,"client_address":` */
  claims: Buffer
}
/** the identity's claims an audit line shows, in this order (the OTLP batch carries the same ones) */
export const AUDIT_CLAIMS = [
  'iss',
  'sub',
  'jti',
  'agent_operator',
  'agent_purpose',
  'actor',
  'on_behalf_of',
  'actor_chain',
  'signature_agent',
  'cert_subject',
] as const

const identityFragments = new WeakMap<Identity, IdentityBytes>()

const IDENTITY = lit(',"identity":')
const KIND = lit(',"kind":')
const SOURCE = lit(',"source":')
const VERIFIED = lit(',"verified":true')
const UNVERIFIED = lit(',"verified":false')
const RULE = lit(',"rule":')
const TEAM = lit(',"team":')
const ZONE = lit(',"zone":')
const FINGERPRINTS = lit(',"fingerprints":{')
const CLAIM_KEYS = AUDIT_CLAIMS.map((claim) => lit(`,"${claim}":`))
const CLIENT_ADDRESS = lit(',"client_address":')
const PEER_ADDRESS = lit(',"peer_address":')
/**
 * Where an identity's fragments are written before they are copied out at their own size. Every never-seen
 * token's identity is written once: as template strings, the pieces, the JSON-escaped values and the joined
 * text were ≈ 1.5 KB of heap per new token.
 */
const fragment = new LineBuffer(512)

function takeFragment(): Buffer {
  const out = Buffer.allocUnsafe(fragment.length)
  fragment.bytes.copy(out, 0, 0, fragment.length)
  fragment.length = 0
  return out
}

export function identityBytes(id: Identity): IdentityBytes {
  let bytes = identityFragments.get(id)
  if (bytes === undefined) {
    // whatever an identity that could not be written (a field that is not text) left here is not this one's
    fragment.length = 0
    fragment.copy(IDENTITY)
    fragment.string(id.name)
    fragment.copy(KIND)
    fragment.string(id.kind)
    fragment.copy(SOURCE)
    fragment.string(id.source)
    fragment.copy(id.verified ? VERIFIED : UNVERIFIED)
    fragment.member(RULE, id.rule)
    fragment.member(TEAM, id.team)
    fragment.member(ZONE, id.zone)
    fragment.copy(FINGERPRINTS)
    const head = takeFragment()
    fragment.copy(CLOSE_BRACE)
    const attrs = id.attributes
    for (let i = 0; i < AUDIT_CLAIMS.length; i++) fragment.member(CLAIM_KEYS[i]!, attrs[AUDIT_CLAIMS[i]!])
    fragment.copy(CLIENT_ADDRESS)
    bytes = { head, claims: takeFragment() }
    identityFragments.set(id, bytes)
  }
  return bytes
}

/**
 * Text that repeats across requests without being the identity's — the method, the route with the
 * service, the policy decision — escaped once and kept as bytes. Keyed by the text itself, so a reload
 * needs no invalidation; bounded because a method is client input (HTTP/2 allows any token): a full map
 * starts over.
 */
const MAX_FRAGMENTS = 256
const methodFragments = new Map<string, Buffer>()
interface RouteBytes {
  service: string
  bytes: Buffer
}
const routeFragments = new Map<string, RouteBytes>()

/** `,"method":…,"path":` */
function methodBytes(method: string): Buffer {
  let bytes = methodFragments.get(method)
  if (bytes === undefined) {
    if (methodFragments.size >= MAX_FRAGMENTS) methodFragments.clear()
    bytes = Buffer.from(`,"method":${json(method)},"path":`)
    methodFragments.set(method, bytes)
  }
  return bytes
}

/** `,"route":…,"service":…,"status":` */
function routeBytes(route: string, service: string): Buffer {
  let entry = routeFragments.get(route)
  if (entry === undefined || entry.service !== service) {
    if (routeFragments.size >= MAX_FRAGMENTS) routeFragments.clear()
    entry = { service, bytes: Buffer.from(`,"route":${json(route)},"service":${json(service)},"status":`) }
    routeFragments.set(route, entry)
  }
  return entry.bytes
}

/**
 * `,"decision":…,"policy_rule":…,"failures":[`. Decisions are constant objects per policy rule; their
 * fields are compared anyway, so an embedder that reuses and changes a decision object still gets its text.
 */
interface DecisionBytes {
  decision: string
  rule: string
  bytes: Buffer
}
const decisionFragments = new WeakMap<PolicyDecision, DecisionBytes>()

function decisionBytes(d: PolicyDecision): Buffer {
  const decision = recordedDecision(d)
  let entry = decisionFragments.get(d)
  if (entry === undefined || entry.decision !== decision || entry.rule !== d.rule) {
    entry = {
      decision,
      rule: d.rule,
      bytes: Buffer.from(`,"decision":${json(decision)},"policy_rule":${json(d.rule)},"failures":[`),
    }
    decisionFragments.set(d, entry)
  }
  return entry.bytes
}

/**
 * The line's start up to the time's milliseconds (`{"type":"audit","time":"2026-12-04T00:54:46.`), formatted
 * once per second: under load nearly every request has a millisecond of its own, so caching whole
 * timestamps per millisecond still cost a Date and a toISOString per line.
 */
let lastSecond = Number.NaN
let lastSecondBytes: Buffer = START
/** 0000-01-01 up to 10000-01-01: the years toISOString writes with four digits */
const MIN_TIME_MS = -62_167_219_200_000
const MAX_TIME_MS = 253_402_300_800_000

function writeTime(out: LineBuffer, ms: number): void {
  if (!(ms >= MIN_TIME_MS && ms < MAX_TIME_MS)) {
    // a six-digit year, or no valid time at all (toISOString throws and the recorder counts the failure)
    out.copy(START)
    out.ascii(new Date(ms).toISOString())
    out.copy(TRACE)
    return
  }
  // the Date constructor truncates a fractional time towards zero
  const whole = Math.trunc(ms)
  const second = Math.floor(whole / 1000)
  if (second !== lastSecond) {
    const iso = new Date(second * 1000).toISOString()
    // "…T00:54:46.000Z" without its "000Z"
    lastSecondBytes = Buffer.from(`{"type":"audit","time":"${iso.slice(0, -4)}`, 'latin1')
    lastSecond = second
  }
  out.copy(lastSecondBytes)
  out.reserve(3)
  const b = out.bytes
  const at = out.length
  const milli = whole - second * 1000
  b[at] = 0x30 + Math.floor(milli / 100)
  b[at + 1] = 0x30 + (Math.floor(milli / 10) % 10)
  b[at + 2] = 0x30 + (milli % 10)
  out.length = at + 3
  out.copy(TIME_END_TRACE)
}

/**
 * Appends the audit line of one event: `{"type":"audit", …toAuditRecord(event)}` plus a newline, key for
 * key what JSON.stringify would write (milliseconds always with three decimals).
 */
export function writeAuditLine(out: LineBuffer, event: RequestEvent): void {
  const id = identityBytes(event.identity)
  writeTime(out, event.time)
  out.string(event.traceId)
  out.copy(SPAN)
  out.string(event.spanId)
  out.copy(REQUEST)
  out.string(event.requestId)
  out.copy(id.head)
  const fp = event.fingerprints
  let first = true
  if (fp.jwt !== undefined) {
    out.copy(FP_JWT)
    out.string(fp.jwt)
    first = false
  }
  if (fp.cert !== undefined) {
    if (!first) out.copy(COMMA_BYTES)
    out.copy(FP_CERT)
    out.string(fp.cert)
    first = false
  }
  if (fp.apikey !== undefined) {
    if (!first) out.copy(COMMA_BYTES)
    out.copy(FP_APIKEY)
    out.string(fp.apikey)
  }
  out.copy(id.claims)
  out.string(event.clientAddress)
  if (event.peerAddress !== undefined) {
    out.copy(PEER_ADDRESS)
    out.string(event.peerAddress)
  }
  out.copy(methodBytes(event.method))
  out.string(event.path)
  out.copy(routeBytes(event.route, event.service))
  out.number(event.status)
  out.copy(DURATION)
  out.millis(event.durationMs)
  out.copy(UPSTREAM)
  out.millis(event.upstreamMs)
  out.copy(BYTES_IN)
  out.number(event.bytesIn)
  out.copy(BYTES_OUT)
  out.number(event.bytesOut)
  out.member(UPSTREAM_ERROR, event.upstreamError)
  if (event.grpcStatus !== undefined) {
    out.copy(GRPC_STATUS)
    out.number(event.grpcStatus)
  }
  out.copy(decisionBytes(event.decision))
  const failures = event.failures
  const anomalies = event.anomalies
  if (failures.length === 0 && anomalies.length === 0) {
    out.copy(NOTHING_NOTEWORTHY_END)
    return
  }
  for (let i = 0; i < failures.length; i++) {
    const f = failures[i]!
    if (i > 0) out.copy(COMMA_BYTES)
    out.copy(FAILURE_SOURCE)
    out.string(f.source)
    out.copy(FAILURE_REASON)
    out.string(f.reason)
    out.copy(CLOSE_BRACE)
  }
  out.copy(ANOMALIES)
  for (let i = 0; i < anomalies.length; i++) {
    if (i > 0) out.copy(COMMA_BYTES)
    out.string(anomalies[i]!)
  }
  out.copy(END)
}
