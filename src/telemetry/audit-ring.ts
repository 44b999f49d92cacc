// The recent request events behind /audit and the live view's click-through, kept as their audit lines in
// one buffer outside the JavaScript heap. A ring of event objects kept every request's record alive for
// about a second: each one outlived a young-generation collection, was copied and promoted, and the old
// generation then needed a full mark-compact about once a second at saturation (5–9 ms pauses that landed
// in the tail latency). Bytes in a preallocated buffer are never traced, copied or promoted; the cost moves
// to the rare query, which parses the lines it returns.
import type { RequestEvent } from '../types.ts'
import { LineBuffer, writeAuditLine } from './audit-line.ts'

export interface AuditRecord {
  time: string
  trace_id: string
  span_id: string
  request_id: string
  identity: string
  kind: string
  source: string
  verified: boolean
  rule?: string
  team?: string
  zone?: string
  fingerprints: RequestEvent['fingerprints']
  iss?: string
  sub?: string
  jti?: string
  /** a known AI agent's operator and purpose (from its user agent) */
  agent_operator?: string
  agent_purpose?: string
  /** RFC 8693 delegation: the actor (e.g. an AI agent) acting on behalf of the identity, and earlier actors */
  actor?: string
  on_behalf_of?: string
  actor_chain?: string
  /** a signed agent's key directory (URL) */
  signature_agent?: string
  /** the client certificate's subject (the identity's cert_subject attribute) */
  cert_subject?: string
  client_address: string
  /** the trusted proxy the request came through, when client_address is the client it forwarded for */
  peer_address?: string
  method: string
  path: string
  route: string
  service: string
  status: number
  duration_ms: number
  upstream_ms: number
  bytes_in: number
  bytes_out: number
  upstream_error?: string
  grpc_status?: number
  decision: string
  policy_rule: string
  failures: { source: string; reason: string }[]
  anomalies: string[]
}

export interface AuditQuery {
  identity?: string
  /** with identity: one of the identities that share a name under different sources */
  source?: string
  traceId?: string
  spanId?: string
  requestId?: string
  limit?: number
}

export const DEFAULT_AUDIT_LIMIT = 100
export const MAX_AUDIT_LIMIT = 1000

/**
 * Bytes of line storage per event of `audit.ringSize`. A typical line is 500–900 bytes; when lines run
 * longer (long paths, many failures) the ring keeps fewer than ringSize events rather than more memory.
 */
export const AUDIT_RING_BYTES_PER_EVENT = 2048
/**
 * The smallest line store: even a small ring keeps lines up to half of it (128 KiB), far beyond what the
 * default `limits.maxHeaderBytes` lets a request's path and credentials add to a line.
 */
export const AUDIT_RING_MIN_BYTES = 256 * 1024

const json = JSON.stringify

/**
 * Newest-first bounded history of audit lines: at most `capacity` lines in a store of
 * `capacity × AUDIT_RING_BYTES_PER_EVENT` bytes. Lines are written one after another and the store wraps
 * around; a line that does not fit before the end starts again at offset 0, and every older line it (or
 * the skipped end) would overlap leaves the ring first, oldest first.
 */
export class AuditRing {
  private store: Buffer
  /** line slots, a circular queue: offset and length of each line in `store` */
  private starts: Int32Array
  private lengths: Int32Array
  /** slot of the oldest line, and how many lines are held */
  private oldest = 0
  private count = 0
  /** where the next line is written in `store` */
  private writeAt = 0
  private capacity: number
  /** a line for the ring alone (the audit output is off or sampled the request out) */
  private readonly scratch = new LineBuffer(4096)

  constructor(capacity: number) {
    this.capacity = capacity
    this.store = Buffer.allocUnsafeSlow(storeBytes(capacity))
    this.starts = new Int32Array(capacity)
    this.lengths = new Int32Array(capacity)
  }

  /** lines held now */
  get size(): number {
    return this.count
  }

  /** the audit line of `event`, written here */
  pushEvent(event: RequestEvent): void {
    const line = this.scratch
    line.length = 0
    writeAuditLine(line, event)
    this.pushLine(line.bytes, 0, line.length)
  }

  /** one audit line already written (bytes `from`..`to` of `source`, its newline included) */
  pushLine(source: Buffer, from: number, to: number): void {
    const length = to - from
    const store = this.store
    // a line longer than half the store would wipe out the rest of the history; it stays in the audit output
    if (length > store.length >>> 1) return
    let at = this.writeAt
    if (at + length > store.length) {
      // the lines between here and the end are the oldest; starting over at 0 abandons them
      while (this.count > 0 && this.starts[this.oldest]! >= at) this.dropOldest()
      at = 0
    }
    const end = at + length
    while (this.count > 0) {
      const start = this.starts[this.oldest]!
      if (start < at || start >= end) break
      this.dropOldest()
    }
    if (this.count === this.capacity) this.dropOldest()
    // Buffer#copy rather than set(subarray()): the same speed for a line, without a view object per request
    source.copy(store, at, from, to)
    const slot = (this.oldest + this.count) % this.capacity
    this.starts[slot] = at
    this.lengths[slot] = length
    this.count++
    this.writeAt = end
  }

  private dropOldest(): void {
    this.oldest = (this.oldest + 1) % this.capacity
    this.count--
  }

  /** the held lines, newest first, as bytes (views into the store: copy before the next push) */
  *lines(): Generator<Buffer> {
    for (let i = this.count - 1; i >= 0; i--) {
      const slot = (this.oldest + i) % this.capacity
      const start = this.starts[slot]!
      yield this.store.subarray(start, start + this.lengths[slot]!)
    }
  }

  resize(capacity: number): void {
    if (capacity === this.capacity) return
    const kept = [...this.lines()].slice(0, capacity).map((line) => Buffer.from(line))
    this.capacity = capacity
    this.store = Buffer.allocUnsafeSlow(storeBytes(capacity))
    this.starts = new Int32Array(capacity)
    this.lengths = new Int32Array(capacity)
    this.oldest = 0
    this.count = 0
    this.writeAt = 0
    for (let i = kept.length - 1; i >= 0; i--) this.pushLine(kept[i]!, 0, kept[i]!.length)
  }

  query(q: AuditQuery): AuditRecord[] {
    const limit = Math.min(MAX_AUDIT_LIMIT, Math.max(1, q.limit ?? DEFAULT_AUDIT_LIMIT))
    // Each filter's key and value as the line spells them (the line is what JSON.stringify writes): a line
    // without them is skipped unparsed. The parsed record is checked again, because `"source":` also
    // appears inside `failures`.
    const needles: Buffer[] = []
    if (q.identity !== undefined) needles.push(Buffer.from(`"identity":${json(q.identity)}`))
    if (q.source !== undefined) needles.push(Buffer.from(`"source":${json(q.source)}`))
    if (q.traceId !== undefined) needles.push(Buffer.from(`"trace_id":${json(q.traceId)}`))
    if (q.spanId !== undefined) needles.push(Buffer.from(`"span_id":${json(q.spanId)}`))
    if (q.requestId !== undefined) needles.push(Buffer.from(`"request_id":${json(q.requestId)}`))
    const out: AuditRecord[] = []
    for (const line of this.lines()) {
      if (!needles.every((needle) => line.includes(needle))) continue
      const { type: _type, ...record } = JSON.parse(line.toString('utf8')) as AuditRecord & { type: string }
      if (q.identity !== undefined && record.identity !== q.identity) continue
      if (q.source !== undefined && record.source !== q.source) continue
      if (q.traceId !== undefined && record.trace_id !== q.traceId) continue
      if (q.spanId !== undefined && record.span_id !== q.spanId) continue
      if (q.requestId !== undefined && record.request_id !== q.requestId) continue
      out.push(record)
      if (out.length >= limit) break
    }
    return out
  }
}

/** the bytes of line storage a ring of `capacity` lines allocates */
export function storeBytes(capacity: number): number {
  return Math.max(AUDIT_RING_MIN_BYTES, capacity * AUDIT_RING_BYTES_PER_EVENT)
}
