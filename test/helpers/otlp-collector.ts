// An OTLP/HTTP receiver for tests: `POST /v1/traces` with an ExportTraceServiceRequest in protobuf, decoded
// with code generated from the official opentelemetry-proto definitions (the protobufjs root that
// @opentelemetry/otlp-transformer 0.210 shipped, installed under the alias `otlp-proto-root`), never with the
// code that encoded it. Keeps every span it received, flattened with its resource's service.name.
import { once } from 'node:events'
import { createServer, type Server } from 'node:http'
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
interface Decoder {
  decode(bytes: Uint8Array): ExportTraceServiceRequest
}

const root = require('otlp-proto-root/build/src/generated/root.js') as {
  opentelemetry: {
    proto: { collector: { trace: { v1: { ExportTraceServiceRequest: Decoder } } } }
  }
}
const ExportTraceServiceRequest = root.opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest

export type AttrValue = string | number | boolean | AttrValue[] | undefined

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
  /** export requests received */
  requests: number
  close(): Promise<void>
}

function value(v: AnyValue | null | undefined): AttrValue {
  if (!v) return undefined
  if (v.stringValue !== undefined && v.stringValue !== null) return v.stringValue
  if (v.boolValue !== undefined && v.boolValue !== null) return v.boolValue
  if (v.intValue !== undefined && v.intValue !== null)
    return typeof v.intValue === 'number' ? v.intValue : v.intValue.toNumber()
  if (v.doubleValue !== undefined && v.doubleValue !== null) return v.doubleValue
  if (v.arrayValue) return (v.arrayValue.values ?? []).map(value)
  return undefined
}

function attrs(list: KeyValue[] | null | undefined): Record<string, AttrValue> {
  const out: Record<string, AttrValue> = {}
  for (const kv of list ?? []) out[kv.key] = value(kv.value)
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

/** Listens on 127.0.0.1 (ephemeral port); answers 200 with an empty ExportTraceServiceResponse. */
export async function startCollector(): Promise<TestCollector> {
  const spans: ReceivedSpan[] = []
  const state = { requests: 0 }
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      if (req.method !== 'POST' || req.url !== '/v1/traces') {
        res.statusCode = 404
        res.end()
        return
      }
      try {
        let body = Buffer.concat(chunks)
        if (req.headers['content-encoding'] === 'gzip') body = gunzipSync(body)
        if (req.headers['content-type'] !== 'application/x-protobuf') throw new Error('not protobuf')
        spans.push(...flatten(ExportTraceServiceRequest.decode(body)))
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
    get requests() {
      return state.requests
    },
    async close() {
      server.closeAllConnections()
      await new Promise<void>((done) => server.close(() => done()))
    },
  }
}
