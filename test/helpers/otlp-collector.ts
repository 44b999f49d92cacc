// An OTLP/HTTP receiver for tests: `POST /v1/traces` and `/v1/logs` with export requests in protobuf, decoded
// with code generated from the official opentelemetry-proto definitions (the protobufjs root that
// @opentelemetry/otlp-transformer 0.210 shipped, installed under the alias `otlp-proto-root`), never with the
// code that encoded it. Keeps every span it received, flattened with its resource's service.name.
import { once } from 'node:events'
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http'
import { createRequire } from 'node:module'
import type { AddressInfo } from 'node:net'
import { gunzipSync } from 'node:zlib'

const require = createRequire(import.meta.url)

interface AnyValue {
  stringValue?: string | null
  boolValue?: boolean | null
  intValue?: number | { toNumber(): number } | null
  doubleValue?: number | null
  arrayValue?: { values?: AnyValue[] | null } | null
  kvlistValue?: { values?: KeyValue[] | null } | null
}
interface KeyValue {
  key: string
  value?: AnyValue | null
}
interface ProtoSpan {
  traceId: Uint8Array
  spanId: Uint8Array
  parentSpanId?: Uint8Array | null
  name: string
  kind: number
  startTimeUnixNano: number | { toString(): string }
  endTimeUnixNano: number | { toString(): string }
  attributes?: KeyValue[] | null
  events?: { name: string; attributes?: KeyValue[] | null }[] | null
  status?: { code?: number | null } | null
}
interface ExportTraceServiceRequest {
  resourceSpans?: {
    resource?: { attributes?: KeyValue[] | null } | null
    scopeSpans?: { scope?: { name?: string } | null; spans?: ProtoSpan[] | null }[] | null
  }[]
}
interface ProtoLogRecord {
  timeUnixNano: number | { toString(): string }
  severityText?: string | null
  eventName?: string | null
  body?: AnyValue | null
  attributes?: KeyValue[] | null
  traceId?: Uint8Array | null
  spanId?: Uint8Array | null
}
interface ExportLogsServiceRequest {
  resourceLogs?: {
    resource?: { attributes?: KeyValue[] | null } | null
    scopeLogs?: { logRecords?: ProtoLogRecord[] | null }[] | null
  }[]
}
interface Decoder<T> {
  decode(bytes: Uint8Array): T
}

const root = require('otlp-proto-root/build/src/generated/root.js') as {
  opentelemetry: {
    proto: {
      collector: {
        trace: { v1: { ExportTraceServiceRequest: Decoder<ExportTraceServiceRequest> } }
        logs: { v1: { ExportLogsServiceRequest: Decoder<ExportLogsServiceRequest> } }
      }
    }
  }
}
const ExportTraceServiceRequest = root.opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest
const ExportLogsServiceRequest = root.opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest

/** env for a sidecar under test: none of the runner's own OTEL_* settings (an empty value counts as unset) */
export const CLEAN_OTEL_ENV = {
  OTEL_EXPORTER_OTLP_ENDPOINT: '',
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: '',
  OTEL_EXPORTER_OTLP_LOGS_ENDPOINT: '',
  OTEL_LOGS_EXPORTER: '',
  OTEL_SERVICE_NAME: '',
  OTEL_RESOURCE_ATTRIBUTES: '',
  OTEL_TRACES_SAMPLER: '',
  OTEL_TRACES_EXPORTER: '',
  OTEL_SDK_DISABLED: '',
}

export interface ReceivedLogRecord {
  service: string
  traceId: string
  spanId: string
  severityText: string
  eventName: string
  body: AttrValue | Record<string, AttrValue>
  attributes: Record<string, AttrValue>
}

export type AttrValue = string | number | boolean | AttrValue[] | { [key: string]: AttrValue } | undefined

export interface ReceivedSpan {
  service: string
  scope: string
  traceId: string
  spanId: string
  /** '' for a root span */
  parentSpanId: string
  name: string
  /** 2 = SERVER */
  kind: number
  startNanos: bigint
  endNanos: bigint
  attributes: Record<string, AttrValue>
  events: { name: string; attributes: Record<string, AttrValue> }[]
  /** 0 unset, 1 ok, 2 error */
  statusCode: number
}

export interface TestCollector {
  /** base URL for OTEL_EXPORTER_OTLP_ENDPOINT / otlp.endpoint */
  url: string
  spans: ReceivedSpan[]
  /** log records received on /v1/logs */
  logs: ReceivedLogRecord[]
  /** export requests received */
  requests: number
  /** every accepted export request: its path, headers and the trace ids of what it carried */
  exports: { path: string; headers: IncomingHttpHeaders; traceIds: string[] }[]
  close(): Promise<void>
}

function value(v: AnyValue | null | undefined): AttrValue | Record<string, AttrValue> {
  if (!v) return undefined
  if (v.stringValue !== undefined && v.stringValue !== null) return v.stringValue
  if (v.boolValue !== undefined && v.boolValue !== null) return v.boolValue
  if (v.intValue !== undefined && v.intValue !== null)
    return typeof v.intValue === 'number' ? v.intValue : v.intValue.toNumber()
  if (v.doubleValue !== undefined && v.doubleValue !== null) return v.doubleValue
  if (v.arrayValue) return (v.arrayValue.values ?? []).map(value) as AttrValue[]
  if (v.kvlistValue) return attrs(v.kvlistValue.values) as Record<string, AttrValue>
  return undefined
}

function attrs(list: KeyValue[] | null | undefined): Record<string, AttrValue> {
  const out: Record<string, AttrValue> = {}
  for (const kv of list ?? []) out[kv.key] = value(kv.value) as AttrValue
  return out
}

const hex = (b: Uint8Array | null | undefined) => (b ? Buffer.from(b).toString('hex') : '')

/** Flattens one decoded export request. */
export function flatten(req: ExportTraceServiceRequest): ReceivedSpan[] {
  const out: ReceivedSpan[] = []
  for (const rs of req.resourceSpans ?? []) {
    const service = String(attrs(rs.resource?.attributes)['service.name'] ?? '')
    for (const ss of rs.scopeSpans ?? []) {
      for (const s of ss.spans ?? []) {
        out.push({
          service,
          scope: ss.scope?.name ?? '',
          traceId: hex(s.traceId),
          spanId: hex(s.spanId),
          parentSpanId: hex(s.parentSpanId),
          name: s.name,
          kind: s.kind,
          startNanos: BigInt(s.startTimeUnixNano.toString()),
          endNanos: BigInt(s.endTimeUnixNano.toString()),
          attributes: attrs(s.attributes),
          events: (s.events ?? []).map((e) => ({ name: e.name, attributes: attrs(e.attributes) })),
          statusCode: s.status?.code ?? 0,
        })
      }
    }
  }
  return out
}

/** Flattens one decoded logs export request. */
export function flattenLogs(req: ExportLogsServiceRequest): ReceivedLogRecord[] {
  const out: ReceivedLogRecord[] = []
  for (const rl of req.resourceLogs ?? []) {
    const service = String(attrs(rl.resource?.attributes)['service.name'] ?? '')
    for (const sl of rl.scopeLogs ?? []) {
      for (const r of sl.logRecords ?? []) {
        out.push({
          service,
          traceId: hex(r.traceId),
          spanId: hex(r.spanId),
          severityText: r.severityText ?? '',
          eventName: r.eventName ?? '',
          body: value(r.body),
          attributes: attrs(r.attributes),
        })
      }
    }
  }
  return out
}

/** Listens on 127.0.0.1 (ephemeral port); answers 200 with an empty ExportTraceServiceResponse. */
export async function startCollector(): Promise<TestCollector> {
  const spans: ReceivedSpan[] = []
  const logs: ReceivedLogRecord[] = []
  const state = { requests: 0 }
  const exports: TestCollector['exports'] = []
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      if (req.method !== 'POST' || (req.url !== '/v1/traces' && req.url !== '/v1/logs')) {
        res.statusCode = 404
        res.end()
        return
      }
      try {
        let body = Buffer.concat(chunks)
        if (req.headers['content-encoding'] === 'gzip') body = gunzipSync(body)
        if (req.headers['content-type'] !== 'application/x-protobuf') throw new Error('not protobuf')
        const received =
          req.url === '/v1/logs'
            ? flattenLogs(ExportLogsServiceRequest.decode(body))
            : flatten(ExportTraceServiceRequest.decode(body))
        if (req.url === '/v1/logs') logs.push(...(received as ReceivedLogRecord[]))
        else spans.push(...(received as ReceivedSpan[]))
        exports.push({ path: req.url, headers: req.headers, traceIds: received.map((r) => r.traceId) })
        state.requests++
        res.setHeader('content-type', 'application/x-protobuf')
        res.end()
      } catch {
        res.statusCode = 400
        res.end()
      }
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    spans,
    logs,
    exports,
    get requests() {
      return state.requests
    },
    async close() {
      server.closeAllConnections()
      await new Promise<void>((done) => server.close(() => done()))
    },
  }
}
