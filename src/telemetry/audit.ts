// The audit trail: one JSON line per request (written by AuditWriter) plus the bounded ring of recent lines
// that serves /audit. Lines are sampled by `audit.sample`, except that anything worth investigating
// (status >= 400, credential failures, denials, anomalies) is always written.
import { fstatSync, mkdirSync, openSync, statSync } from 'node:fs'
import { dirname } from 'node:path'
import type { Config } from '../config/schema.ts'
import { type Recorder, type RequestEvent, recordedDecision } from '../types.ts'
import { LineBuffer, writeAuditLine } from './audit-line.ts'
import { type AuditRecord, AuditRing } from './audit-ring.ts'
import { AuditWriter, countLines } from './audit-writer.ts'

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
/**
 * At exit, the longest wait for the output to take what is queued (a stalled log collector, a full disk);
 * what it has not taken by then is counted as dropped, and the process exits.
 */
export const AUDIT_CLOSE_MS = 3_000

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
    cert_subject: attrs['cert_subject'],
    client_address: event.clientAddress,
    peer_address: event.peerAddress,
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
    decision: recordedDecision(event.decision),
    policy_rule: event.decision.rule,
    failures: event.failures.map((f) => ({ source: f.source, reason: f.reason })),
    anomalies: event.anomalies,
  }
}

/**
 * The audit line of one event as a string: `{"type":"audit", …toAuditRecord(event)}` plus a newline, for
 * outputs that need it as text (OTLP log records). The audit file gets the same bytes without the string.
 */
export function auditLine(event: RequestEvent): string {
  // every recorder that needs the line sees the same event in turn: one slot is enough for them to share
  if (event === lastLineEvent) return lastLine
  scratch.length = 0
  writeAuditLine(scratch, event)
  lastLine = scratch.toString()
  lastLineEvent = event
  return lastLine
}
const scratch = new LineBuffer(4096)
let lastLineEvent: RequestEvent | undefined
let lastLine = ''

type AuditConfig = Config['audit']

export interface AuditLogOptions {
  /** injectable for tests: returns [0, 1) */
  random?: () => number
  /**
   * Where batches of whole lines go instead of `audit.output` (a worker hands them to the one process that
   * writes the output); returns false when it could not take the batch, which then counts as dropped.
   */
  sink?: (lines: string) => boolean
  /** a write to the output failed (once per run of failures; the lines are dropped and counted) */
  onWriteError?: (err: NodeJS.ErrnoException) => void
}

export class AuditLog implements Recorder {
  readonly name = 'audit'
  readonly ring: AuditRing
  private sample: number
  private destination: { write(data: Buffer): void } | undefined
  /** the output's writer (not a worker's sink) */
  private writer: AuditWriter | undefined
  private output: string | undefined
  private readonly onWriteError: ((err: NodeJS.ErrnoException) => void) | undefined
  private readonly random: () => number
  private readonly sink: ((lines: string) => boolean) | undefined
  private flushTimer: NodeJS.Timeout | undefined
  private written = 0
  private dropped = 0
  /** lines not yet handed to the destination, as the bytes that will be written */
  private readonly batch = new LineBuffer(AUDIT_BATCH_CHARS + 16 * 1024)

  constructor(config: AuditConfig, opts: AuditLogOptions = {}) {
    this.ring = new AuditRing(config.ringSize)
    this.sample = config.sample
    this.random = opts.random ?? Math.random
    this.sink = opts.sink
    this.onWriteError = opts.onWriteError
    this.open(config.output)
  }

  private open(output: string): void {
    if (output === 'off') return
    if (this.sink) {
      const sink = this.sink
      this.destination = {
        write: (data: Buffer) => {
          // a worker's batch crosses to the primary as text: one string per batch, not per line
          const lines = data.toString('utf8')
          if (!sink(lines)) this.dropped += countLines(lines)
        },
      }
      this.flushTimer = setInterval(() => this.handOver(), AUDIT_FLUSH_MS)
      this.flushTimer.unref()
      return
    }
    // Opened here, synchronously: a path that cannot be opened (read-only filesystem, no permission, a parent
    // that is a file) stops the start with one line naming it, instead of a write on fd -1 crashing the
    // process under its first traffic.
    let fd = 1
    if (output !== 'stdout') {
      try {
        mkdirSync(dirname(output), { recursive: true })
        fd = openSync(output, 'a')
      } catch (e) {
        throw new Error(`cannot open audit.output "${output}": ${(e as Error).message}`)
      }
    }
    const writer = new AuditWriter(
      fd,
      AUDIT_MAX_PENDING_BYTES,
      {
        dropped: (lines) => {
          this.dropped += lines
        },
        failed: (err) => this.onWriteError?.(err),
      },
      fd !== 1,
    )
    this.writer = writer
    this.output = output
    this.destination = writer
    this.flushTimer = setInterval(() => this.handOver(), AUDIT_FLUSH_MS)
    this.flushTimer.unref()
  }

  /**
   * The output file was rotated (renamed away, as logrotate does, then a reload or SIGHUP): lines go to a new
   * file at the configured path from now on, instead of on into the renamed one. A path that can't be opened
   * now keeps the old file.
   */
  private reopenIfRotated(): void {
    const writer = this.writer
    const output = this.output
    if (!writer || output === undefined || output === 'stdout') return
    let rotated: boolean
    try {
      const now = statSync(output)
      const open = fstatSync(writer.fd)
      rotated = now.ino !== open.ino || now.dev !== open.dev
    } catch {
      rotated = true
    }
    if (!rotated) return
    try {
      mkdirSync(dirname(output), { recursive: true })
      writer.switchTo(openSync(output, 'a'))
    } catch (e) {
      this.onWriteError?.(e as NodeJS.ErrnoException)
    }
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
    if (!this.destination || (this.sample < 1 && !isNoteworthy(event) && this.random() >= this.sample)) {
      this.ring.pushEvent(event)
      return
    }
    // `type: "audit"` (first key) makes audit lines easy to pick out of a shared stdout.
    const batch = this.batch
    const from = batch.length
    try {
      writeAuditLine(batch, event)
    } catch (err) {
      // the line's beginning must not stay in the batch: the next line would be written onto it (the
      // facade counts the failure)
      batch.length = from
      throw err
    }
    this.ring.pushLine(batch.bytes, from, batch.length)
    this.written++
    if (batch.length >= AUDIT_BATCH_CHARS) this.handOver()
  }

  /**
   * Lines are batched here and handed to the destination AUDIT_BATCH_CHARS at a time: one write per batch
   * instead of one per request (the destination's own per-write bookkeeping costs more than the line).
   * The flush timer bounds how long a line may wait on a quiet proxy.
   */
  private handOver(): void {
    if (this.batch.length === 0 || !this.destination) return
    this.destination.write(this.batch.take())
  }

  /**
   * Whole lines another process formatted (a worker's batch), written to this output like its own: one
   * writer per output, so lines from different processes never interleave mid-line.
   */
  writeLines(data: string): void {
    if (!this.destination || data === '') return
    this.batch.utf8(data)
    this.written += countLines(data)
    if (this.batch.length >= AUDIT_BATCH_CHARS) this.handOver()
  }

  /** sample and ring size change in place; a new output path takes effect on restart */
  reconfigure(config: Config): void {
    this.sample = config.audit.sample
    this.ring.resize(config.audit.ringSize)
    this.reopenIfRotated()
  }

  async close(): Promise<void> {
    this.handOver()
    this.destination = undefined
    clearInterval(this.flushTimer)
    await this.writer?.close(AUDIT_CLOSE_MS)
  }
}
