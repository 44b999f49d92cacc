// OTLP trace export (docs/reference.md "OpenTelemetry export"): one SERVER span per finished request, built
// from its OtlpRecord with the OpenTelemetry SDK and sent in batches over OTLP/HTTP (protobuf).
// The span is our hop: its trace id and span id are the ones the upstream receives in `traceparent`, its
// parent is the caller's span from the incoming `traceparent`. Runs only inside the export thread
// (otlp-worker.ts), one instance per set of settings: the SDK's span building, batching and protobuf
// encoding cost the request thread nothing.
// Spans wait in the batch processor's bounded queue, which drops (and counts) when the collector is slow or
// down; while it is full, record() counts the drop without building what would be dropped. The exporter
// retries with backoff within its timeout.
import {
  type Attributes,
  type Counter,
  createNoopMeter,
  type MeterProvider,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  TraceFlags,
  trace,
} from '@opentelemetry/api'
import { type Logger, SeverityNumber } from '@opentelemetry/api-logs'
import { OTLPLogExporter } from '@opentelemetry/exporter-logs-otlp-proto'
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto'
import {
  defaultResource,
  detectResources,
  envDetector,
  resourceFromAttributes,
} from '@opentelemetry/resources'
import { BatchLogRecordProcessor, LoggerProvider } from '@opentelemetry/sdk-logs'
import { BasicTracerProvider, BatchSpanProcessor, type IdGenerator } from '@opentelemetry/sdk-trace-base'
import {
  ATTR_CLIENT_ADDRESS,
  ATTR_ERROR_TYPE,
  ATTR_HTTP_REQUEST_METHOD,
  ATTR_HTTP_RESPONSE_STATUS_CODE,
  ATTR_HTTP_ROUTE,
  ATTR_SERVER_ADDRESS,
  ATTR_SERVER_PORT,
  ATTR_SERVICE_NAME,
  ATTR_SERVICE_VERSION,
  ATTR_URL_PATH,
} from '@opentelemetry/semantic-conventions'
import type { RequestEvent } from '../types.ts'
import { type OtlpRecord, otlpRecord } from './otlp-record.ts'
import type { OtlpSettings } from './otlp-settings.ts'

export interface OtlpCounts {
  /** spans the collector accepted */
  exported: number
  /** spans dropped because the queue was full (collector slow or down) */
  queueFull: number
  /** spans dropped because their export failed after the exporter's retries */
  exportFailed: number
}

export const zeroCounts = (): OtlpCounts => ({ exported: 0, queueFull: 0, exportFailed: 0 })

// the SDK's own self-observability counters (semantic conventions for OTel SDK metrics)
const SPANS_PROCESSED = 'otel.sdk.processor.span.processed'
const LOGS_PROCESSED = 'otel.sdk.processor.log.processed'

/** The ids of the request being recorded: the SDK asks for them while the span starts. */
class EventIds implements IdGenerator {
  traceId = ''
  spanId = ''
  generateTraceId(): string {
    return this.traceId
  }
  generateSpanId(): string {
    return this.spanId
  }
}

/**
 * One batch processor's records in flight: handed to it, and settled (exported or dropped) as its meter
 * reports them. The difference is what its queue and the batch on its way hold.
 */
interface Backlog {
  handed: number
  settled: number
  /** what the collector's answer to the batch on its way said it rejected (a partial success) */
  rejected: number
}

type ResponseField = 'rejectedSpans' | 'rejectedLogRecords'

/**
 * A collector that accepts an export only in part answers 200 with `partial_success` saying how many records
 * it rejected. The SDK takes that for a success and only logs it, so the rejected records would be counted
 * as exported; here the answer is read for their number, which the processor's count of the batch (made
 * right after the answer is handled) then counts as export_failed.
 */
function noteRejected(exporter: object, field: ResponseField, backlog: Backlog): void {
  const delegate = (exporter as { _delegate?: { _responseHandler?: unknown } })._delegate
  if (delegate === undefined || delegate._responseHandler === undefined) return
  delegate._responseHandler = {
    handleResponse(response: { partialSuccess?: Partial<Record<ResponseField, unknown>> } | undefined) {
      const rejected = Number(response?.partialSuccess?.[field] ?? 0)
      if (Number.isFinite(rejected) && rejected > 0) backlog.rejected += rejected
    },
  }
}

/**
 * A meter that keeps a batch processor's counts (spans or log records) and ignores every other instrument;
 * what it counts also settles the processor's own `backlog`.
 */
function countingMeterProvider(processed: string, counts: OtlpCounts, backlog: Backlog): MeterProvider {
  const meter = createNoopMeter()
  const noopCounter = meter.createCounter.bind(meter)
  meter.createCounter = ((name: string, options?: object) => {
    if (name !== processed) return noopCounter(name, options)
    const counter: Counter = {
      add(value: number, attributes?: Attributes) {
        backlog.settled += value
        const error = attributes?.[ATTR_ERROR_TYPE]
        if (error === undefined) {
          // one batch is exported at a time: what its answer rejected is part of it
          const rejected = Math.min(backlog.rejected, value)
          backlog.rejected = 0
          counts.exported += value - rejected
          counts.exportFailed += rejected
        } else if (error === 'queue_full') counts.queueFull += value
        else counts.exportFailed += value
      },
    }
    return counter
  }) as typeof meter.createCounter
  return { getMeter: () => meter }
}

function hostAndPort(host: string): { address: string; port?: number } {
  const m = /^(\[[^\]]*\]|[^:]*)(?::(\d{1,5}))?$/.exec(host)
  if (!m) return { address: host }
  const address = m[1]!.startsWith('[') ? m[1]!.slice(1, -1) : m[1]!
  return m[2] === undefined ? { address } : { address, port: Number(m[2]) }
}

/**
 * Whether the sampler the SDK builds from OTEL_TRACES_SAMPLER samples a span, known before it is built for
 * the samplers that decide by the parent alone: default (unset) and parentbased_always_on follow the caller's
 * sampled flag, always_on and always_off decide alone. Undefined for every other sampler (a ratio, a
 * misspelling the SDK replaces with its default): only the SDK can tell.
 */
type SampledBy = (parentSpanId: string | undefined, traceFlags: string | undefined) => boolean | undefined

/** the caller's trace flags as the span's parent context carries them: sampled when the caller sent none */
function callerTraceFlags(traceFlags: string | undefined): number {
  return traceFlags === undefined ? TraceFlags.SAMPLED : Number.parseInt(traceFlags, 16) & 0xff
}

function sampledByEnv(value: string | undefined): SampledBy {
  // the SDK takes the value as it is, whitespace included (" always_off" is a misspelling there): only a blank
  // one is unset
  const name = value === undefined || value.trim() === '' ? '' : value
  if (name === '' || name === 'parentbased_always_on') {
    return (parent, flags) =>
      parent === undefined || (callerTraceFlags(flags) & TraceFlags.SAMPLED) === TraceFlags.SAMPLED
  }
  if (name === 'always_on') return () => true
  if (name === 'always_off') return () => false
  return () => undefined
}

/**
 * gRPC statuses that mark a SERVER span as an error (RPC semantic conventions): the server's own faults.
 * A status the caller caused (NOT_FOUND, PERMISSION_DENIED, …) is the call's answer, not a server failure;
 * it stays visible in `rpc.grpc.status_code`.
 */
const GRPC_SERVER_ERRORS = new Set([2, 4, 12, 13, 14, 15]) // UNKNOWN DEADLINE_EXCEEDED UNIMPLEMENTED INTERNAL UNAVAILABLE DATA_LOSS

/** `/pkg.Service/Method` → its parts; undefined for any other shape (no invented rpc.* values) */
function grpcMethod(path: string): { service: string; method: string } | undefined {
  const m = /^\/([^/]+)\/([^/]+)$/.exec(path)
  return m ? { service: m[1]!, method: m[2]! } : undefined
}

export class OtlpExport {
  private readonly loggerProvider: LoggerProvider | undefined
  private readonly logger: Logger | undefined
  private readonly ids = new EventIds()
  private readonly provider: BasicTracerProvider
  private readonly tracer: ReturnType<BasicTracerProvider['getTracer']>
  private readonly shutdownTimeoutMs: number
  private readonly counts: { spans: OtlpCounts; logs: OtlpCounts }
  private readonly sampledBy: SampledBy
  /**
   * A processor's queue is surely full when this many of its records are neither exported nor dropped: the
   * queue's size plus one batch, the most that is on its way to the collector (a processor exports one batch
   * at a time, and the exporter answers within otlp.timeout, before the processor's own export deadline).
   */
  private readonly fullAt: number
  private readonly spanBacklog: Backlog = { handed: 0, settled: 0, rejected: 0 }
  private readonly logBacklog: Backlog = { handed: 0, settled: 0, rejected: 0 }
  /** spans the sampler did not record: they never reach the processor, so no other count sees them */
  unsampled = 0
  /** spans and log records counted as queue_full without being built: their processor's queue was full */
  readonly skipped = { spans: 0, logs: 0 }

  /**
   * `counts` outlive this instance: a reload that changes the settings replaces the export, the counters go
   * on (and this instance's last batches, flushed on close, are counted there too).
   */
  constructor(settings: OtlpSettings, version: string, counts: { spans: OtlpCounts; logs: OtlpCounts }) {
    this.counts = counts
    this.sampledBy = sampledByEnv(process.env.OTEL_TRACES_SAMPLER)
    const batchSize = Math.min(settings.maxExportBatchSize, settings.maxQueueSize)
    this.fullAt = settings.maxQueueSize + batchSize
    const exporter = new OTLPTraceExporter({
      ...(settings.url !== undefined ? { url: settings.url } : {}),
      ...(settings.headers !== undefined ? { headers: settings.headers } : {}),
      ...(settings.timeoutMillis !== undefined ? { timeoutMillis: settings.timeoutMillis } : {}),
    })
    noteRejected(exporter, 'rejectedSpans', this.spanBacklog)
    const processor = new BatchSpanProcessor(exporter, {
      maxQueueSize: settings.maxQueueSize,
      maxExportBatchSize: batchSize,
      scheduledDelayMillis: settings.scheduledDelayMillis,
      exportTimeoutMillis: (settings.timeoutMillis ?? 10_000) + 1_000,
      selfObsMeterProvider: countingMeterProvider(SPANS_PROCESSED, counts.spans, this.spanBacklog),
    } as ConstructorParameters<typeof BatchSpanProcessor>[1])
    // service.name: the config's service, unless OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES name one
    const resource = defaultResource()
      .merge(
        resourceFromAttributes({
          [ATTR_SERVICE_NAME]: settings.serviceName,
          [ATTR_SERVICE_VERSION]: version,
        }),
      )
      .merge(detectResources({ detectors: [envDetector] }))
    // the sampler comes from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (default parentbased_always_on)
    this.provider = new BasicTracerProvider({
      resource,
      idGenerator: this.ids,
      spanProcessors: [processor],
    })
    this.tracer = this.provider.getTracer('nhi-proxy', version)
    if (settings.logs) {
      const logExporter = new OTLPLogExporter({
        ...(settings.logs.url !== undefined ? { url: settings.logs.url } : {}),
        ...(settings.headers !== undefined ? { headers: settings.headers } : {}),
        ...(settings.timeoutMillis !== undefined ? { timeoutMillis: settings.timeoutMillis } : {}),
      })
      noteRejected(logExporter, 'rejectedLogRecords', this.logBacklog)
      this.loggerProvider = new LoggerProvider({
        resource,
        processors: [
          new BatchLogRecordProcessor({
            exporter: logExporter,
            maxQueueSize: settings.maxQueueSize,
            maxExportBatchSize: batchSize,
            scheduledDelayMillis: settings.scheduledDelayMillis,
            exportTimeoutMillis: (settings.timeoutMillis ?? 10_000) + 1_000,
            selfObsMeterProvider: countingMeterProvider(LOGS_PROCESSED, counts.logs, this.logBacklog),
          }),
        ],
      })
      this.logger = this.loggerProvider.getLogger('nhi-proxy.audit', version)
    }
    this.shutdownTimeoutMs = Math.min(settings.timeoutMillis ?? 10_000, 5_000)
  }

  /**
   * The span and log record of one request. While a processor's queue is full (collector slow or down) its
   * record is counted as queue_full without being built, as the processor would have dropped it: an outage
   * costs the export thread next to nothing. A span only when the sampler's answer is known beforehand (see
   * sampledByEnv); with any other sampler it is built, and dropped by the processor.
   */
  record(event: RequestEvent): void {
    const sampled = this.sampledBy(event.parentSpanId, event.traceFlags)
    const spanFull = sampled === true && this.isFull(this.spanBacklog)
    const logFull = this.logger !== undefined && this.isFull(this.logBacklog)
    if (spanFull) {
      this.counts.spans.queueFull++
      this.skipped.spans++
    }
    if (logFull) {
      this.counts.logs.queueFull++
      this.skipped.logs++
    }
    if (spanFull && (this.logger === undefined || logFull)) return
    const record = otlpRecord(event, this.logger !== undefined && !logFull)
    if (spanFull) {
      // a sampled span: the log record is in a sampled trace
      this.emitAudit(this.logger!, record, TraceFlags.SAMPLED)
      return
    }
    this.recordSpan(record, logFull)
  }

  private isFull(backlog: Backlog): boolean {
    return backlog.handed - backlog.settled >= this.fullAt
  }

  private recordSpan(event: OtlpRecord, logFull: boolean): void {
    const attributes: Attributes = {
      [ATTR_HTTP_REQUEST_METHOD]: event.method,
      [ATTR_URL_PATH]: event.path,
      [ATTR_HTTP_RESPONSE_STATUS_CODE]: event.status,
      [ATTR_CLIENT_ADDRESS]: event.clientAddress,
      'http.request.body.size': event.bytesIn,
      'http.response.body.size': event.bytesOut,
      'nhi.identity': event.identity,
      'nhi.kind': event.kind,
      'nhi.source': event.source,
      'nhi.verified': event.verified,
      'nhi.decision': event.decision,
      'nhi.policy_rule': event.policyRule,
      'nhi.request_id': event.requestId,
      'nhi.upstream_ms': event.upstreamMs,
    }
    if (event.rule !== undefined) attributes['nhi.rule'] = event.rule
    if (event.team !== undefined) attributes['nhi.team'] = event.team
    if (event.zone !== undefined) attributes['nhi.zone'] = event.zone
    if (event.failures.length > 0) attributes['nhi.credential_failures'] = event.failures
    if (event.host !== undefined) {
      const { address, port } = hostAndPort(event.host)
      attributes[ATTR_SERVER_ADDRESS] = address
      if (port !== undefined) attributes[ATTR_SERVER_PORT] = port
    }
    let name = event.method
    if (event.route !== 'other') {
      attributes[ATTR_HTTP_ROUTE] = event.route
      name = `${event.method} ${event.route}`
    }
    const rpc = event.grpcStatus === undefined ? undefined : grpcMethod(event.path)
    if (event.grpcStatus !== undefined) {
      attributes['rpc.system'] = 'grpc'
      attributes['rpc.grpc.status_code'] = event.grpcStatus
      if (rpc) {
        attributes['rpc.service'] = rpc.service
        attributes['rpc.method'] = rpc.method
        name = `${rpc.service}/${rpc.method}`
      }
    }
    const grpcFailed = event.grpcStatus !== undefined && GRPC_SERVER_ERRORS.has(event.grpcStatus)
    if (event.upstreamError !== undefined) attributes[ATTR_ERROR_TYPE] = event.upstreamError
    else if (event.status >= 500) attributes[ATTR_ERROR_TYPE] = String(event.status)
    else if (grpcFailed) attributes[ATTR_ERROR_TYPE] = String(event.grpcStatus)

    const flags = callerTraceFlags(event.traceFlags)
    const parent =
      event.parentSpanId === undefined
        ? ROOT_CONTEXT
        : trace.setSpanContext(ROOT_CONTEXT, {
            traceId: event.traceId,
            spanId: event.parentSpanId,
            traceFlags: flags,
            isRemote: true,
          })
    this.ids.traceId = event.traceId
    this.ids.spanId = event.spanId
    const span = this.tracer.startSpan(
      name,
      { kind: SpanKind.SERVER, startTime: event.time, attributes },
      parent,
    )
    if (this.logger && !logFull) this.emitAudit(this.logger, event, span.spanContext().traceFlags)
    if (!span.isRecording() || (span.spanContext().traceFlags & 1) === 0) {
      this.unsampled++
      if (!span.isRecording()) return
    } else {
      this.spanBacklog.handed++
    }
    for (const type of event.anomalies) span.addEvent('nhi.anomaly', { 'nhi.anomaly.type': type }, event.time)
    for (const f of event.failures) {
      const colon = f.indexOf(':')
      span.addEvent(
        'nhi.credential_failure',
        { 'nhi.source': f.slice(0, colon), 'nhi.failure.reason': f.slice(colon + 1) },
        event.time,
      )
    }
    if (event.status >= 500 || event.upstreamError !== undefined || grpcFailed)
      span.setStatus({ code: SpanStatusCode.ERROR })
    span.end(event.time + event.durationMs)
  }

  /**
   * The audit record of the request as one log record (event name `nhi.audit`), in the request's trace
   * (trace id and our hop's span id), with the identity attributes the span has. Every request, whatever
   * audit.sample says: sampling belongs to the log pipeline here.
   */
  private emitAudit(logger: Logger, event: OtlpRecord, traceFlags: number): void {
    this.logBacklog.handed++
    const noteworthy = event.status >= 500 || event.upstreamError !== undefined || event.anomalies.length > 0
    const attributes: Attributes = {
      'nhi.identity': event.identity,
      'nhi.kind': event.kind,
      'nhi.source': event.source,
      'nhi.verified': event.verified,
      'nhi.decision': event.decision,
      [ATTR_HTTP_REQUEST_METHOD]: event.method,
      [ATTR_URL_PATH]: event.path,
      [ATTR_HTTP_RESPONSE_STATUS_CODE]: event.status,
    }
    if (event.rule !== undefined) attributes['nhi.rule'] = event.rule
    logger.emit({
      eventName: 'nhi.audit',
      timestamp: event.time,
      severityNumber: noteworthy ? SeverityNumber.WARN : SeverityNumber.INFO,
      severityText: noteworthy ? 'WARN' : 'INFO',
      // the audit line itself (JSON text, as in the audit file): a string body costs a fraction of the same
      // record as a nested OTLP map to build and to encode, and log backends parse JSON bodies
      body: event.line ?? '',
      attributes,
      context: trace.setSpanContext(ROOT_CONTEXT, {
        traceId: event.traceId,
        spanId: event.spanId,
        traceFlags,
      }),
    })
  }

  /** how long close() may take */
  get closeTimeoutMs(): number {
    return this.shutdownTimeoutMs
  }

  /** sends what is queued, bounded: a collector that is down must not hold up the shutdown */
  async close(): Promise<void> {
    let timer: NodeJS.Timeout | undefined
    await Promise.race([
      Promise.all([
        this.provider.shutdown().catch(() => {}),
        this.loggerProvider?.shutdown().catch(() => {}),
      ]),
      new Promise<void>((done) => {
        timer = setTimeout(done, this.shutdownTimeoutMs)
        timer.unref()
      }),
    ])
    clearTimeout(timer)
  }
}
