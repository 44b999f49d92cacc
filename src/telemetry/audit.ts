// The audit trail: one JSON line per request (pino's async destination) plus a bounded in-memory ring
// that serves /audit. Lines are sampled by `audit.sample`, except that anything worth investigating
// (status >= 400, credential failures, denials, anomalies) is always written.
import pino, { type DestinationStream } from 'pino'
import type { Config } from '../config/schema.ts'
import type { Identity, Recorder, RequestEvent } from '../types.ts'
import { flattened } from '../util/flat.ts'

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
  client_address: string
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
  requestId?: string
  limit?: number
}

export const DEFAULT_AUDIT_LIMIT = 100
/**
 * Lines are handed to the destination in batches of about this many characters. Every hand-over becomes a
 * write on libuv's thread pool, and on a saturated CPU waking a pool thread costs far more than writing the
 * bytes: 64 KiB batches (≈ 90 lines, one write every ≈ 25 ms at 4,000 req/s) measured cheaper than 8 KiB ones
 * in alternating bench rounds (median 281 → 258 µs of CPU per request).
 */
export const AUDIT_BATCH_CHARS = 64 * 1024
/**
 * Audit bytes that may wait for a slow or stalled output (a log collector that stopped reading stdout);
 * beyond this, lines are dropped and counted instead of growing the sidecar's memory without bound.
 */
export const AUDIT_MAX_PENDING_BYTES = 16 * 1024 * 1024
/** longest time an audit line waits in the batch buffer */
export const AUDIT_FLUSH_MS = 500
export const MAX_AUDIT_LIMIT = 1000

/** Requests that are always audited regardless of sampling. */
export function isNoteworthy(event: RequestEvent): boolean {
  return (
    event.status >= 400 ||
    event.failures.length > 0 ||
    event.anomalies.length > 0 ||
    event.upstreamError !== undefined ||
    (!event.decision.skipped && event.decision.decision !== 'allow')
  )
}

export function toAuditRecord(event: RequestEvent): AuditRecord {
  const id = event.identity
  const attrs = id.attributes
  return {
    time: new Date(event.time).toISOString(),
    trace_id: event.traceId,
    span_id: event.spanId,
    request_id: event.requestId,
    identity: id.name,
    kind: id.kind,
    source: id.source,
    verified: id.verified,
    rule: id.rule,
    team: id.team,
    zone: id.zone,
    fingerprints: event.fingerprints,
    iss: attrs['iss'],
    sub: attrs['sub'],
    jti: attrs['jti'],
    agent_operator: attrs['agent_operator'],
    agent_purpose: attrs['agent_purpose'],
    actor: attrs['actor'],
    on_behalf_of: attrs['on_behalf_of'],
    actor_chain: attrs['actor_chain'],
    signature_agent: attrs['signature_agent'],
    client_address: event.clientAddress,
    method: event.method,
    path: event.path,
    route: event.route,
    service: event.service,
    status: event.status,
    duration_ms: Math.round(event.durationMs * 1000) / 1000,
    upstream_ms: Math.round(event.upstreamMs * 1000) / 1000,
    bytes_in: event.bytesIn,
    bytes_out: event.bytesOut,
    upstream_error: event.upstreamError,
    grpc_status: event.grpcStatus,
    decision: event.decision.skipped ? 'none' : event.decision.decision,
    policy_rule: event.decision.rule,
    failures: event.failures.map((f) => ({ source: f.source, reason: f.reason })),
    anomalies: event.anomalies,
  }
}

const json = JSON.stringify
/** JSON has no NaN or Infinity; JSON.stringify writes null for them, and so do we */
const num = (n: number) => (Number.isFinite(n) ? String(n) : 'null')

/**
 * Milliseconds with three decimals ("12.345", "0.050"): integer formatting only, because shortest
 * round-trip formatting of an arbitrary double is one of the costliest parts of the line.
 */
function millis(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0 || ms >= 1e9) return num(Math.round(ms * 1000) / 1000)
  const us = Math.round(ms * 1000)
  const frac = us % 1000
  return `${(us - frac) / 1000}.${frac < 10 ? '00' : frac < 100 ? '0' : ''}${frac}`
}
const opt = (key: string, value: string | undefined) =>
  value === undefined ? '' : `,"${key}":${json(value)}`

/**
 * The identity's part of a line, escaped once per identity object instead of once per request: the engine
 * hands out the same (never mutated) identity object for every request with the same evidence.
 */
interface IdentityText {
  /** "identity" … "zone" */
  head: string
  /** "iss", "sub", "jti", "agent_operator", "agent_purpose", "actor", "on_behalf_of", "actor_chain", "signature_agent" */
  claims: string
}
const identityTexts = new WeakMap<Identity, IdentityText>()

function identityText(id: Identity): IdentityText {
  let text = identityTexts.get(id)
  if (text === undefined) {
    const attrs = id.attributes
    text = {
      head: flattened(
        `"identity":${json(id.name)},"kind":${json(id.kind)},"source":${json(id.source)},"verified":${id.verified}${opt('rule', id.rule)}${opt('team', id.team)}${opt('zone', id.zone)}`,
      ),
      claims: flattened(
        `${opt('iss', attrs['iss'])}${opt('sub', attrs['sub'])}${opt('jti', attrs['jti'])}${opt('agent_operator', attrs['agent_operator'])}${opt('agent_purpose', attrs['agent_purpose'])}${opt('actor', attrs['actor'])}${opt('on_behalf_of', attrs['on_behalf_of'])}${opt('actor_chain', attrs['actor_chain'])}${opt('signature_agent', attrs['signature_agent'])}`,
      ),
    }
    identityTexts.set(id, text)
  }
  return text
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
 * The audit line of one event: `{"type":"audit", …toAuditRecord(event)}` plus a newline, key for key what
 * JSON.stringify would write, built without the intermediate object (this runs for every request).
 */
export function auditLine(event: RequestEvent): string {
  // every recorder that needs the line (the audit file, OTLP log records) sees the same event in turn:
  // one slot is enough for them to share one serialisation
  if (event === lastLineEvent) return lastLine
  lastLine = formatAuditLine(event)
  lastLineEvent = event
  return lastLine
}
let lastLineEvent: RequestEvent | undefined
let lastLine = ''

function formatAuditLine(event: RequestEvent): string {
  const id = identityText(event.identity)
  const fp = event.fingerprints
  let failures = ''
  for (const f of event.failures) {
    failures += `${failures === '' ? '' : ','}{"source":${json(f.source)},"reason":${json(f.reason)}}`
  }
  let anomalies = ''
  for (const a of event.anomalies) anomalies += `${anomalies === '' ? '' : ','}${json(a)}`
  const d = event.decision
  return `{"type":"audit","time":"${isoTime(event.time)}","trace_id":${json(event.traceId)},"span_id":${json(event.spanId)},"request_id":${json(event.requestId)},${id.head},"fingerprints":{${fp.jwt === undefined ? '' : `"jwt":${json(fp.jwt)}`}${fp.cert === undefined ? '' : `${fp.jwt === undefined ? '' : ','}"cert":${json(fp.cert)}`}${fp.apikey === undefined ? '' : `${fp.jwt === undefined && fp.cert === undefined ? '' : ','}"apikey":${json(fp.apikey)}`}}${id.claims},"client_address":${json(event.clientAddress)},"method":${json(event.method)},"path":${json(event.path)},"route":${json(event.route)},"service":${json(event.service)},"status":${num(event.status)},"duration_ms":${millis(event.durationMs)},"upstream_ms":${millis(event.upstreamMs)},"bytes_in":${num(event.bytesIn)},"bytes_out":${num(event.bytesOut)}${opt('upstream_error', event.upstreamError)}${event.grpcStatus === undefined ? '' : `,"grpc_status":${num(event.grpcStatus)}`},"decision":${json(d.skipped ? 'none' : d.decision)},"policy_rule":${json(d.rule)},"failures":[${failures}],"anomalies":[${anomalies}]}\n`
}

/** Newest-first bounded history of request events; records are formatted only when queried. */
export class AuditRing {
  private buffer: (RequestEvent | undefined)[]
  private next = 0

  constructor(private capacity: number) {
    this.buffer = new Array(capacity)
  }

  push(event: RequestEvent): void {
    this.buffer[this.next] = event
    this.next = (this.next + 1) % this.capacity
  }

  resize(capacity: number): void {
    if (capacity === this.capacity) return
    const kept = [...this.newest()].slice(0, capacity).reverse()
    this.capacity = capacity
    this.buffer = new Array(capacity)
    this.next = 0
    for (const e of kept) this.push(e)
  }

  *newest(): Generator<RequestEvent> {
    for (let i = 1; i <= this.capacity; i++) {
      const e = this.buffer[(this.next - i + this.capacity) % this.capacity]
      if (!e) return
      yield e
    }
  }

  query(q: AuditQuery): AuditRecord[] {
    const limit = Math.min(MAX_AUDIT_LIMIT, Math.max(1, q.limit ?? DEFAULT_AUDIT_LIMIT))
    const out: AuditRecord[] = []
    for (const e of this.newest()) {
      if (q.identity !== undefined && e.identity.name !== q.identity) continue
      if (q.source !== undefined && e.identity.source !== q.source) continue
      if (q.traceId !== undefined && e.traceId !== q.traceId) continue
      if (q.requestId !== undefined && e.requestId !== q.requestId) continue
      out.push(toAuditRecord(e))
      if (out.length >= limit) break
    }
    return out
  }
}

type AuditConfig = Config['audit']

export interface AuditLogOptions {
  /** injectable for tests: returns [0, 1) */
  random?: () => number
  /**
   * Where batches of whole lines go instead of `audit.output` (a worker hands them to the one process that
   * writes the output); returns false when it could not take the batch, which then counts as dropped.
   */
  sink?: (lines: string) => boolean
}

function countLines(data: string): number {
  let lines = 0
  for (let i = data.indexOf('\n'); i !== -1; i = data.indexOf('\n', i + 1)) lines++
  return lines
}

export class AuditLog implements Recorder {
  readonly name = 'audit'
  readonly ring: AuditRing
  private sample: number
  private destination: (DestinationStream & { flushSync?(): void; end?(): void }) | undefined
  private readonly random: () => number
  private readonly sink: ((lines: string) => boolean) | undefined
  private flushTimer: NodeJS.Timeout | undefined
  private written = 0
  private dropped = 0
  /** lines not yet handed to the destination, and their length in characters */
  private batch: string[] = []
  private batchChars = 0

  constructor(config: AuditConfig, opts: AuditLogOptions = {}) {
    this.ring = new AuditRing(config.ringSize)
    this.sample = config.sample
    this.random = opts.random ?? Math.random
    this.sink = opts.sink
    this.open(config.output)
  }

  private open(output: string): void {
    if (output === 'off') return
    if (this.sink) {
      const sink = this.sink
      this.destination = {
        write: (data: string) => {
          if (!sink(data)) this.dropped += countLines(data)
        },
      }
      this.flushTimer = setInterval(() => this.handOver(), AUDIT_FLUSH_MS)
      this.flushTimer.unref()
      return
    }
    const destination = pino.destination({
      dest: output === 'stdout' ? 1 : output,
      sync: false,
      mkdir: output !== 'stdout',
      maxLength: AUDIT_MAX_PENDING_BYTES,
      // batches that pile up while a write is in flight go out together in the next one
      maxWrite: 2 * AUDIT_BATCH_CHARS,
    })
    // A failing disk must not take the proxy down: drop lines rather than crash.
    destination.on('error', () => {})
    destination.on('drop', (data: string) => {
      this.dropped += countLines(data)
    })
    this.destination = destination
    this.flushTimer = setInterval(() => {
      this.handOver()
      try {
        destination.flush()
      } catch {
        // not open yet, or already closed: the next tick or close() flushes
      }
    }, AUDIT_FLUSH_MS)
    this.flushTimer.unref()
  }

  /** lines handed to the destination so far */
  get linesWritten(): number {
    return this.written
  }

  /** lines dropped because the output fell more than AUDIT_MAX_PENDING_BYTES behind */
  get linesDropped(): number {
    return this.dropped
  }

  record(event: RequestEvent): void {
    this.ring.push(event)
    if (!this.destination) return
    if (this.sample < 1 && !isNoteworthy(event) && this.random() >= this.sample) return
    // `type: "audit"` (first key) makes audit lines easy to pick out of a shared stdout.
    const line = auditLine(event)
    this.batch.push(line)
    this.batchChars += line.length
    this.written++
    if (this.batchChars >= AUDIT_BATCH_CHARS) this.handOver()
  }

  /**
   * Lines are batched here and handed to the destination AUDIT_BATCH_CHARS at a time: one write per batch
   * instead of one per request (the destination's own per-write bookkeeping costs more than the line).
   * The flush timer bounds how long a line may wait on a quiet proxy.
   */
  private handOver(): void {
    if (this.batch.length === 0 || !this.destination) return
    const data = this.batch.join('')
    this.batch = []
    this.batchChars = 0
    this.destination.write(data)
  }

  /**
   * Whole lines another process formatted (a worker's batch), written to this output like its own: one
   * writer per output, so lines from different processes never interleave mid-line.
   */
  writeLines(data: string): void {
    if (!this.destination || data === '') return
    this.batch.push(data)
    this.batchChars += data.length
    this.written += countLines(data)
    if (this.batchChars >= AUDIT_BATCH_CHARS) this.handOver()
  }

  /** sample and ring size change in place; a new output path takes effect on restart */
  reconfigure(config: Config): void {
    this.sample = config.audit.sample
    this.ring.resize(config.audit.ringSize)
  }

  async close(): Promise<void> {
    this.handOver()
    const dest = this.destination as unknown as
      | (NodeJS.EventEmitter & { fd?: number; flushSync(): void; end(): void; destroyed?: boolean })
      | undefined
    this.destination = undefined
    clearInterval(this.flushTimer)
    if (!dest || this.sink) return
    await new Promise<void>((resolve) => {
      const finish = () => {
        try {
          dest.flushSync()
        } catch {
          // nothing more we can do for an unwritable destination
        }
        if (dest.fd === 1) return resolve()
        dest.once('close', () => resolve())
        dest.once('error', () => resolve())
        dest.end()
      }
      if (typeof dest.fd === 'number' && dest.fd >= 0) finish()
      else {
        dest.once('ready', finish)
        dest.once('error', () => resolve())
      }
    })
  }
}
