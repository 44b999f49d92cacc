// The audit line written straight into bytes. Formatting the line as a string cost a tree of string pieces
// per request and a second copy when the batch was joined (≈ 2.9 KB of JavaScript heap per request, the
// largest item only nhi-proxy pays); here a request's line goes into the batch buffer piece by piece,
// constant text and the identity's part are copied from bytes prepared once, and only text that needs JSON
// escaping takes the string path. The output is byte for byte what JSON.stringify would write, key for key.
import type { Identity, RequestEvent } from '../types.ts'

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
    this.length += src.copy(this.bytes, this.length)
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

  /** a JSON string literal: printable ASCII without `"` or `\` is copied as is, anything else escaped */
  string(s: string): void {
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i)
      if (c < 0x20 || c > 0x7e || c === 0x22 || c === 0x5c) {
        this.utf8(json(s))
        return
      }
    }
    this.reserve(s.length + 2)
    const b = this.bytes
    b[this.length++] = 0x22
    this.length += b.write(s, this.length, 'latin1')
    b[this.length++] = 0x22
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
const TRACE = lit('","trace_id":')
const SPAN = lit(',"span_id":')
const REQUEST = lit(',"request_id":')
const FINGERPRINTS = lit(',"fingerprints":{')
const FP_JWT = lit('"jwt":')
const FP_CERT = lit('"cert":')
const FP_APIKEY = lit('"apikey":')
const CLIENT_KEY = lit('"client_address":')
const METHOD = lit(',"method":')
const PATH = lit(',"path":')
const ROUTE = lit(',"route":')
const SERVICE = lit(',"service":')
const STATUS = lit(',"status":')
const DURATION = lit(',"duration_ms":')
const UPSTREAM = lit(',"upstream_ms":')
const BYTES_IN = lit(',"bytes_in":')
const BYTES_OUT = lit(',"bytes_out":')
const UPSTREAM_ERROR = lit(',"upstream_error":')
const GRPC_STATUS = lit(',"grpc_status":')
const DECISION = lit(',"decision":')
const POLICY_RULE = lit(',"policy_rule":')
const FAILURES = lit(',"failures":[')
const FAILURE_SOURCE = lit('{"source":')
const FAILURE_REASON = lit(',"reason":')
const ANOMALIES = lit('],"anomalies":[')
const END = lit(']}\n')
const COMMA_BYTES = lit(',')
const CLOSE_BRACE = lit('}')

const opt = (key: string, value: string | undefined) =>
  value === undefined ? '' : `,"${key}":${json(value)}`

/**
 * The identity's part of a line as UTF-8 bytes, escaped once per identity object instead of once per
 * request: the engine hands out the same (never mutated) identity object for every request with the same
 * evidence, and a reload that changes what an identity looks like (rules, team, zone) builds new objects,
 * so a cached fragment can never describe a different identity.
 */
interface IdentityBytes {
  /** ,"identity" … "zone" */
  head: Buffer
  /** "iss", "sub", "jti", "agent_operator", "agent_purpose", "actor", "on_behalf_of", "actor_chain", "signature_agent" */
  claims: Buffer
}
const identityFragments = new WeakMap<Identity, IdentityBytes>()

export function identityBytes(id: Identity): IdentityBytes {
  let bytes = identityFragments.get(id)
  if (bytes === undefined) {
    const attrs = id.attributes
    bytes = {
      head: Buffer.from(
        `,"identity":${json(id.name)},"kind":${json(id.kind)},"source":${json(id.source)},"verified":${id.verified}${opt('rule', id.rule)}${opt('team', id.team)}${opt('zone', id.zone)}`,
      ),
      claims: Buffer.from(
        `${opt('iss', attrs['iss'])}${opt('sub', attrs['sub'])}${opt('jti', attrs['jti'])}${opt('agent_operator', attrs['agent_operator'])}${opt('agent_purpose', attrs['agent_purpose'])}${opt('actor', attrs['actor'])}${opt('on_behalf_of', attrs['on_behalf_of'])}${opt('actor_chain', attrs['actor_chain'])}${opt('signature_agent', attrs['signature_agent'])}`,
      ),
    }
    identityFragments.set(id, bytes)
  }
  return bytes
}

// Several requests finish within the same millisecond under load: format each millisecond once.
let lastTimeMs = Number.NaN
let lastTimeText = ''
function isoTime(ms: number): string {
  if (ms !== lastTimeMs) {
    lastTimeText = new Date(ms).toISOString()
    lastTimeMs = ms
  }
  return lastTimeText
}

/**
 * Appends the audit line of one event: `{"type":"audit", …toAuditRecord(event)}` plus a newline, key for
 * key what JSON.stringify would write.
 */
export function writeAuditLine(out: LineBuffer, event: RequestEvent): void {
  const id = identityBytes(event.identity)
  out.copy(START)
  out.ascii(isoTime(event.time))
  out.copy(TRACE)
  out.string(event.traceId)
  out.copy(SPAN)
  out.string(event.spanId)
  out.copy(REQUEST)
  out.string(event.requestId)
  out.copy(id.head)
  out.copy(FINGERPRINTS)
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
  // "}" closes the fingerprints; the claims start with their own comma
  out.copy(CLOSE_BRACE)
  out.copy(id.claims)
  out.copy(COMMA_BYTES)
  out.copy(CLIENT_KEY)
  out.string(event.clientAddress)
  out.copy(METHOD)
  out.string(event.method)
  out.copy(PATH)
  out.string(event.path)
  out.copy(ROUTE)
  out.string(event.route)
  out.copy(SERVICE)
  out.string(event.service)
  out.copy(STATUS)
  out.number(event.status)
  out.copy(DURATION)
  out.millis(event.durationMs)
  out.copy(UPSTREAM)
  out.millis(event.upstreamMs)
  out.copy(BYTES_IN)
  out.number(event.bytesIn)
  out.copy(BYTES_OUT)
  out.number(event.bytesOut)
  if (event.upstreamError !== undefined) {
    out.copy(UPSTREAM_ERROR)
    out.string(event.upstreamError)
  }
  if (event.grpcStatus !== undefined) {
    out.copy(GRPC_STATUS)
    out.number(event.grpcStatus)
  }
  const d = event.decision
  out.copy(DECISION)
  out.string(d.skipped ? 'none' : d.decision)
  out.copy(POLICY_RULE)
  out.string(d.rule)
  out.copy(FAILURES)
  const failures = event.failures
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
  const anomalies = event.anomalies
  for (let i = 0; i < anomalies.length; i++) {
    if (i > 0) out.copy(COMMA_BYTES)
    out.string(anomalies[i]!)
  }
  out.copy(END)
}
