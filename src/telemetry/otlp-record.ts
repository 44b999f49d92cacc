// The fields the span and the audit log record of one request are built from (otlp.ts), taken in the export
// thread from the request as read back from its batch (otlp-batch.ts).
// Imports nothing from the SDK.
import { type RequestEvent, recordedDecision } from '../types.ts'
import { LineBuffer, writeAuditLine } from './audit-line.ts'

export interface OtlpRecord {
  traceId: string
  spanId: string
  parentSpanId: string | undefined
  traceFlags: string | undefined
  /** unix ms */
  time: number
  durationMs: number
  method: string
  path: string
  route: string
  host: string | undefined
  status: number
  grpcStatus: number | undefined
  upstreamError: string | undefined
  upstreamMs: number
  clientAddress: string
  bytesIn: number
  bytesOut: number
  requestId: string
  identity: string
  kind: string
  source: string
  verified: boolean
  rule: string | undefined
  team: string | undefined
  zone: string | undefined
  decision: string
  policyRule: string
  /** `source:reason` per credential failure */
  failures: string[]
  anomalies: string[]
  /** the audit line without its newline, when log records are exported: the audit file shares it */
  line: string | undefined
}

export function otlpRecord(event: RequestEvent, withLine: boolean): OtlpRecord {
  const { identity, decision } = event
  const failures: string[] = []
  for (const f of event.failures) failures.push(`${f.source}:${f.reason}`)
  return {
    traceId: event.traceId,
    spanId: event.spanId,
    parentSpanId: event.parentSpanId,
    traceFlags: event.traceFlags,
    time: event.time,
    durationMs: event.durationMs,
    method: event.method,
    path: event.path,
    route: event.route,
    host: event.host,
    status: event.status,
    grpcStatus: event.grpcStatus,
    upstreamError: event.upstreamError,
    upstreamMs: event.upstreamMs,
    clientAddress: event.clientAddress,
    bytesIn: event.bytesIn,
    bytesOut: event.bytesOut,
    requestId: event.requestId,
    identity: identity.name,
    kind: identity.kind,
    source: identity.source,
    verified: identity.verified,
    rule: identity.rule,
    team: identity.team,
    zone: identity.zone,
    decision: recordedDecision(decision),
    policyRule: decision.rule,
    failures,
    anomalies: event.anomalies.length === 0 ? [] : [...event.anomalies],
    line: withLine ? lineOf(event) : undefined,
  }
}

/** the audit line without its newline, written by the function that writes the audit file's lines */
function lineOf(event: RequestEvent): string {
  scratch.length = 0
  writeAuditLine(scratch, event)
  return scratch.bytes.toString('utf8', 0, scratch.length - 1)
}
const scratch = new LineBuffer(4096)
