// How finished requests cross from the request thread to the OTLP export thread: written as bytes into one
// buffer per batch, whose memory is then transferred (not copied) with a single postMessage. Measured against
// the earlier hand-off — a 30-field object per request, structured-cloned with its batch, plus the audit line
// formatted as a string — this costs the request thread a fraction: no object, no string and no clone per
// request, only fields copied into bytes.
// - An identity (name, kind, source, rule, the claims the audit line shows) is written once and then referred
//   to by a slot number: the engine hands out the same, never mutated, identity object for every request with
//   the same evidence, so the object itself is the key. The table is bounded (TABLE_SLOTS); when it is full
//   it starts over, and the batch that starts over says so in its header.
// - A text field equal to the same field of the previous record in the batch (method, route, service,
//   decision…) is written as a marker instead of again.
// - The audit line is not formatted here at all: the export thread rebuilds the request's fields and writes
//   the line itself with the same function the audit file uses (otlp-record.ts), so it is byte for byte the
//   line the audit file gets.
// Imports nothing from the SDK.
import type { AnomalyType, Failure, Identity, RequestEvent, UpstreamErrorReason } from '../types.ts'
import { AUDIT_CLAIMS } from './audit-line.ts'

/** identities the two threads remember at once; past it, the table starts over */
export const TABLE_SLOTS = 2048

const OP_IDENTITY = 1
const OP_RECORD = 2

/** string header: the field is absent / the same as in the previous record of this batch */
const ABSENT = 0xffffffff
const SAME = 0xfffffffe
/** length flag: the text is UTF-16LE (lengths stay far below it: a batch is bytes in memory) */
const UTF16 = 0x80000000

interface WellFormed {
  isWellFormed(): boolean
}

// the text fields remembered per batch for SAME; indexes into `previous`
const F_METHOD = 0
const F_ROUTE = 1
const F_CLIENT = 2
const F_SERVICE = 3
const F_DECISION = 4
const F_POLICY_RULE = 5
const F_HOST = 6
const F_TRACE_FLAGS = 7
const FIELDS = 8

/** what the export thread receives: a batch (its bytes transferred), or 'close' */
export interface OtlpBatch {
  bytes: ArrayBuffer
  length: number
  /** requests in the batch */
  records: number
  /** forget every identity slot before reading this batch */
  reset: boolean
}

const INITIAL_BYTES = 64 * 1024

/** The request thread's side: appends requests to the current batch. */
export class OtlpBatchWriter {
  private b: Buffer<ArrayBuffer>
  /**
   * the same bytes for the numbers: Buffer's writeDoubleLE & co. copy byte by byte in JavaScript, a DataView's
   * setters compile to stores
   */
  private v: DataView
  private n = 0
  /** requests in the current batch */
  records = 0
  /** identity object → slot, in slot order (slots are handed out as size at insertion) */
  private readonly slots = new Map<Identity, number>()
  private reset = false
  private readonly previous: (string | undefined)[] = new Array(FIELDS).fill(undefined)
  /** the size the last batch needed: the next one starts there */
  private capacity = INITIAL_BYTES

  constructor() {
    this.b = Buffer.allocUnsafeSlow(this.capacity)
    this.v = new DataView(this.b.buffer)
  }

  private use(b: Buffer<ArrayBuffer>): void {
    this.b = b
    this.v = new DataView(b.buffer, b.byteOffset, b.length)
  }

  /**
   * Appends one request; false (nothing written) when its identity is new and the table is full: the caller
   * hands over or drops the batch, calls startOver() and writes again.
   */
  write(event: RequestEvent): boolean {
    const identity = event.identity
    let slot = this.slots.get(identity)
    if (slot === undefined) {
      if (this.slots.size >= TABLE_SLOTS) return false
      slot = this.slots.size
      this.slots.set(identity, slot)
      this.identity(slot, identity)
    }
    const fp = event.fingerprints
    const failures = event.failures
    const anomalies = event.anomalies
    const d = event.decision
    let flags = 0
    if (d.skipped) flags |= 1
    if (event.parentSpanId !== undefined) flags |= 2
    if (event.upstreamError !== undefined) flags |= 4
    if (event.grpcStatus !== undefined) flags |= 8
    if (fp.jwt !== undefined) flags |= 16
    if (fp.cert !== undefined) flags |= 32
    if (fp.apikey !== undefined) flags |= 64
    if (event.peerAddress !== undefined) flags |= 128
    this.reserve(64)
    const b = this.b
    const v = this.v
    let n = this.n
    b[n++] = OP_RECORD
    b[n++] = flags
    v.setUint16(n, slot, true)
    v.setFloat64(n + 2, event.time, true)
    v.setFloat64(n + 10, event.durationMs, true)
    v.setFloat64(n + 18, event.upstreamMs, true)
    v.setFloat64(n + 26, event.bytesIn, true)
    v.setFloat64(n + 34, event.bytesOut, true)
    v.setUint16(n + 42, event.status, true)
    v.setInt32(n + 44, event.grpcStatus ?? 0, true)
    n += 48
    b[n++] = Math.min(failures.length, 255)
    b[n++] = Math.min(anomalies.length, 255)
    this.n = n
    this.text(event.traceId)
    this.text(event.spanId)
    if (event.parentSpanId !== undefined) this.text(event.parentSpanId)
    this.text(event.requestId)
    this.text(event.path)
    this.field(F_TRACE_FLAGS, event.traceFlags)
    this.field(F_HOST, event.host)
    this.field(F_METHOD, event.method)
    this.field(F_ROUTE, event.route)
    this.field(F_CLIENT, event.clientAddress)
    this.field(F_SERVICE, event.service)
    this.field(F_DECISION, d.decision)
    this.field(F_POLICY_RULE, d.rule)
    if (event.upstreamError !== undefined) this.text(event.upstreamError)
    if (fp.jwt !== undefined) this.text(fp.jwt)
    if (fp.cert !== undefined) this.text(fp.cert)
    if (fp.apikey !== undefined) this.text(fp.apikey)
    // the audit line names the trusted proxy the client came through: the log record's body is that line
    if (event.peerAddress !== undefined) this.text(event.peerAddress)
    for (let i = 0; i < failures.length && i < 255; i++) {
      this.text(failures[i]!.source)
      this.text(failures[i]!.reason)
    }
    for (let i = 0; i < anomalies.length && i < 255; i++) this.text(anomalies[i]!)
    this.records++
    return true
  }

  /** bytes written so far in this batch */
  get length(): number {
    return this.n
  }

  /** the batch so far, ready to transfer; the next one starts in a new buffer */
  take(): OtlpBatch {
    const batch: OtlpBatch = {
      bytes: this.b.buffer,
      length: this.n,
      records: this.records,
      reset: this.reset,
    }
    // the next batch starts with room for this one and a quarter more: one large batch does not stay the size
    this.capacity = Math.max(INITIAL_BYTES, this.n + (this.n >> 2))
    this.use(Buffer.allocUnsafeSlow(this.capacity))
    this.n = 0
    this.records = 0
    this.reset = false
    this.previous.fill(undefined)
    return batch
  }

  /**
   * Drops what is written (the caller counts the records): its identity definitions go with it, so the table
   * starts over too.
   */
  discard(): void {
    this.n = 0
    this.records = 0
    this.previous.fill(undefined)
    this.startOver()
  }

  /** forgets every identity; only between batches (the reset is read before the batch's records) */
  startOver(): void {
    this.slots.clear()
    this.reset = true
  }

  /**
   * For a new export thread, which knows no identity yet: a batch defining every identity the table holds,
   * to be sent before anything else (records written earlier refer to them). undefined when there is none.
   */
  prelude(): OtlpBatch | undefined {
    if (this.slots.size === 0) return undefined
    const main = { b: this.b, n: this.n }
    this.use(Buffer.allocUnsafeSlow(256 * this.slots.size))
    this.n = 0
    for (const [identity, slot] of this.slots) this.identity(slot, identity)
    const batch: OtlpBatch = { bytes: this.b.buffer, length: this.n, records: 0, reset: true }
    this.use(main.b)
    this.n = main.n
    // the records already written need no reset of their own: the prelude brings their identities
    this.reset = false
    return batch
  }

  private identity(slot: number, id: Identity): void {
    this.reserve(8)
    this.b[this.n++] = OP_IDENTITY
    this.v.setUint16(this.n, slot, true)
    this.n += 2
    this.b[this.n++] = id.verified ? 1 : 0
    this.claim(id.name)
    this.text(id.kind)
    this.text(id.source)
    this.claim(id.rule)
    this.claim(id.team)
    this.claim(id.zone)
    const attrs = id.attributes
    for (const claim of AUDIT_CLAIMS) this.claim(attrs[claim])
  }

  /**
   * Text from a token's claims (JSON, so possibly with lone surrogates, which UTF-8 cannot carry: the audit
   * line escapes them as \uXXXX) goes as UTF-16 when it is not well-formed, so it arrives unchanged.
   */
  private claim(s: string | undefined): void {
    if (s === undefined || (s as unknown as WellFormed).isWellFormed()) {
      this.optional(s)
      return
    }
    this.reserve(4 + 2 * s.length)
    const at = this.n + 4
    const written = this.b.write(s, at, 'utf16le')
    this.v.setUint32(this.n, (written | UTF16) >>> 0, true)
    this.n = at + written
  }

  /** a text field that often repeats from one record to the next */
  private field(f: number, s: string | undefined): void {
    if (s !== undefined && s === this.previous[f]) {
      this.reserve(4)
      this.v.setUint32(this.n, SAME, true)
      this.n += 4
      return
    }
    this.previous[f] = s
    this.optional(s)
  }

  private optional(s: string | undefined): void {
    if (s === undefined) {
      this.reserve(4)
      this.v.setUint32(this.n, ABSENT, true)
      this.n += 4
    } else this.text(s)
  }

  /** UTF-8 text after its byte length */
  private text(s: string): void {
    this.reserve(4 + 3 * s.length)
    const at = this.n + 4
    const written = this.b.write(s, at)
    this.v.setUint32(this.n, written, true)
    this.n = at + written
  }

  private reserve(bytes: number): void {
    const need = this.n + bytes
    if (need <= this.b.length) return
    const grown = Buffer.allocUnsafeSlow(Math.max(need, 2 * this.b.length))
    this.b.copy(grown, 0, 0, this.n)
    this.use(grown)
  }
}

/**
 * The export thread's side: turns batches back into the request fields the span and the audit log record
 * are built from. The identity table lives as long as the thread.
 */
export class OtlpBatchReader {
  private readonly identities: Identity[] = []
  /**
   * the previous record's decision, handed out again while it is unchanged: as on the request path, where the
   * engine hands out one object per outcome, the audit line writer caches its bytes per object (a new object
   * per record cost the export thread a string and a Buffer per line)
   */
  private decision: RequestEvent['decision'] | undefined

  /** calls `each` with every request of the batch, in order */
  read(batch: OtlpBatch, each: (event: RequestEvent) => void): void {
    if (batch.reset) this.identities.length = 0
    const b = Buffer.from(batch.bytes, 0, batch.length)
    // Buffer's readDoubleLE & co. copy byte by byte in JavaScript; a DataView's getters compile to loads
    const v = new DataView(batch.bytes, 0, batch.length)
    const previous: (string | undefined)[] = new Array(FIELDS).fill(undefined)
    let n = 0
    const text = (): string => {
      const header = v.getUint32(n, true)
      n += 4
      const len = header & ~UTF16
      const s = b.toString(header & UTF16 ? 'utf16le' : 'utf8', n, n + len)
      n += len
      return s
    }
    const optional = (): string | undefined => {
      if (v.getUint32(n, true) === ABSENT) {
        n += 4
        return undefined
      }
      return text()
    }
    const field = (f: number): string | undefined => {
      if (v.getUint32(n, true) === SAME) {
        n += 4
        return previous[f]
      }
      const s = optional()
      previous[f] = s
      return s
    }
    while (n < batch.length) {
      const op = b[n++]
      if (op === OP_IDENTITY) {
        const slot = v.getUint16(n, true)
        const verified = b[n + 2] === 1
        n += 3
        const name = text()
        const kind = text() as Identity['kind']
        const source = text() as Identity['source']
        const identity: Identity = { name, kind, source, verified, attributes: {} }
        const rule = optional()
        const team = optional()
        const zone = optional()
        if (rule !== undefined) identity.rule = rule
        if (team !== undefined) identity.team = team
        if (zone !== undefined) identity.zone = zone
        for (const claim of AUDIT_CLAIMS) {
          const v = optional()
          if (v !== undefined) identity.attributes[claim] = v
        }
        this.identities[slot] = identity
        continue
      }
      if (op !== OP_RECORD) throw new Error(`OTLP batch: unknown op ${op} at ${n - 1}`)
      const flags = b[n]!
      const identity = this.identities[v.getUint16(n + 1, true)]
      if (identity === undefined)
        throw new Error(`OTLP batch: identity slot ${v.getUint16(n + 1, true)} unknown`)
      n += 3
      const time = v.getFloat64(n, true)
      const durationMs = v.getFloat64(n + 8, true)
      const upstreamMs = v.getFloat64(n + 16, true)
      const bytesIn = v.getFloat64(n + 24, true)
      const bytesOut = v.getFloat64(n + 32, true)
      const status = v.getUint16(n + 40, true)
      const grpcStatus = v.getInt32(n + 42, true)
      const failureCount = b[n + 46]!
      const anomalyCount = b[n + 47]!
      n += 48
      const traceId = text()
      const spanId = text()
      const parentSpanId = flags & 2 ? text() : undefined
      const requestId = text()
      const path = text()
      const traceFlags = field(F_TRACE_FLAGS)
      const host = field(F_HOST)
      const method = field(F_METHOD)!
      const route = field(F_ROUTE)!
      const clientAddress = field(F_CLIENT)!
      const service = field(F_SERVICE)!
      const decision = field(F_DECISION)! as RequestEvent['decision']['decision']
      const rule = field(F_POLICY_RULE)!
      const upstreamError = flags & 4 ? (text() as UpstreamErrorReason) : undefined
      const fingerprints: RequestEvent['fingerprints'] = {}
      if (flags & 16) fingerprints.jwt = text()
      if (flags & 32) fingerprints.cert = text()
      if (flags & 64) fingerprints.apikey = text()
      const peerAddress = flags & 128 ? text() : undefined
      const failures: Failure[] = []
      for (let i = 0; i < failureCount; i++) {
        const source = text() as Failure['source']
        failures.push({ failed: true, source, reason: text() })
      }
      const anomalies: AnomalyType[] = []
      for (let i = 0; i < anomalyCount; i++) anomalies.push(text() as AnomalyType)
      const event: RequestEvent = {
        time,
        traceId,
        spanId,
        requestId,
        identity,
        fingerprints,
        failures,
        anomalies,
        decision: this.decisionOf(decision, rule, (flags & 1) === 1),
        clientAddress,
        method,
        path,
        route,
        status,
        durationMs,
        upstreamMs,
        bytesIn,
        bytesOut,
        service,
      }
      if (parentSpanId !== undefined) event.parentSpanId = parentSpanId
      if (traceFlags !== undefined) event.traceFlags = traceFlags
      if (host !== undefined) event.host = host
      if (peerAddress !== undefined) event.peerAddress = peerAddress
      if (upstreamError !== undefined) event.upstreamError = upstreamError
      if (flags & 8) event.grpcStatus = grpcStatus
      each(event)
    }
  }

  private decisionOf(
    decision: RequestEvent['decision']['decision'],
    rule: string,
    skipped: boolean,
  ): RequestEvent['decision'] {
    const d = this.decision
    if (d !== undefined && d.decision === decision && d.rule === rule && (d.skipped === true) === skipped)
      return d
    this.decision = skipped ? { decision, rule, skipped: true } : { decision, rule }
    return this.decision
  }
}
