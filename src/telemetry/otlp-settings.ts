// Whether spans are exported over OTLP, and with what settings: the `otlp` config block and the standard
// OTEL_* environment variables, which win (docs/reference.md "OpenTelemetry export"). Imports nothing
// from the SDK, so a sidecar with export off never loads it.
import type { Config } from '../config/schema.ts'

export interface OtlpSettings {
  /** full traces URL; undefined when an OTEL_EXPORTER_OTLP_* endpoint is set (the exporter reads it) */
  url?: string
  /** what the log line shows */
  target: string
  /** undefined when OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT is set (the exporter reads it) */
  timeoutMillis?: number
  maxQueueSize: number
  maxExportBatchSize: number
  scheduledDelayMillis: number
  /** the audit record as OTLP log records too; url undefined when the exporter reads it from OTEL_* */
  logs?: { url?: string }
  /** service.name unless OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES say otherwise */
  serviceName: string
  /** otlp.headers, without the names OTEL_EXPORTER_OTLP_*HEADERS set (the exporter reads those) */
  headers?: Record<string, string>
}

type Env = Record<string, string | undefined>

function set(env: Env, name: string): string | undefined {
  const v = env[name]?.trim()
  return v ? v : undefined
}

function positive(env: Env, name: string): number | undefined {
  const v = set(env, name)
  if (v === undefined) return undefined
  const n = Number(v)
  return Number.isInteger(n) && n > 0 ? n : undefined
}

/**
 * `<endpoint>/v1/traces` or `/v1/logs`: the signal's path after the endpoint's own path, its query kept after
 * it (a collector may take its key there), where appending to the text put the path inside the query value
 */
function signalUrl(endpoint: string, signal: 'traces' | 'logs'): string {
  let u: URL
  try {
    u = new URL(endpoint)
  } catch {
    // the schema refuses such an endpoint; the exporter will say so
    return `${endpoint.replace(/\/+$/, '')}/v1/${signal}`
  }
  u.pathname = `${u.pathname.replace(/\/+$/, '')}/v1/${signal}`
  return u.href
}

/** undefined when export is off: no endpoint anywhere, OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none */
export function otlpSettings(config: Config, env: Env = process.env): OtlpSettings | undefined {
  if (set(env, 'OTEL_SDK_DISABLED')?.toLowerCase() === 'true') return undefined
  const exporters = set(env, 'OTEL_TRACES_EXPORTER')
  if (exporters?.split(',').every((e) => e.trim() !== 'otlp')) return undefined
  const fromEnv = set(env, 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT') ?? set(env, 'OTEL_EXPORTER_OTLP_ENDPOINT')
  const o = config.otlp
  if (fromEnv === undefined && o.endpoint === undefined) return undefined
  const url = fromEnv === undefined ? signalUrl(o.endpoint!, 'traces') : undefined
  const envTimeout =
    set(env, 'OTEL_EXPORTER_OTLP_TRACES_TIMEOUT') !== undefined ||
    set(env, 'OTEL_EXPORTER_OTLP_TIMEOUT') !== undefined
  const settings: OtlpSettings = {
    target: url ?? fromEnv!,
    maxQueueSize: positive(env, 'OTEL_BSP_MAX_QUEUE_SIZE') ?? o.maxQueueSize,
    maxExportBatchSize: positive(env, 'OTEL_BSP_MAX_EXPORT_BATCH_SIZE') ?? o.maxExportBatchSize,
    scheduledDelayMillis: positive(env, 'OTEL_BSP_SCHEDULE_DELAY') ?? o.scheduledDelay,
    serviceName: config.service,
  }
  if (url !== undefined) settings.url = url
  const logExporters = set(env, 'OTEL_LOGS_EXPORTER')
  const logs = logExporters === undefined ? o.logs : logExporters.split(',').some((e) => e.trim() === 'otlp')
  if (logs) {
    const logsFromEnv =
      set(env, 'OTEL_EXPORTER_OTLP_LOGS_ENDPOINT') ?? set(env, 'OTEL_EXPORTER_OTLP_ENDPOINT')
    settings.logs =
      logsFromEnv === undefined && o.endpoint !== undefined ? { url: signalUrl(o.endpoint, 'logs') } : {}
  }
  if (!envTimeout) settings.timeoutMillis = o.timeout
  if (o.headers) {
    const fromEnvHeaders = new Set(
      ['OTEL_EXPORTER_OTLP_HEADERS', 'OTEL_EXPORTER_OTLP_TRACES_HEADERS', 'OTEL_EXPORTER_OTLP_LOGS_HEADERS']
        .flatMap((name) => (set(env, name) ?? '').split(','))
        .map((pair) => pair.split('=')[0]!.trim().toLowerCase())
        .filter(Boolean),
    )
    const headers = Object.entries(o.headers).filter(([name]) => !fromEnvHeaders.has(name.toLowerCase()))
    if (headers.length > 0) settings.headers = Object.fromEntries(headers)
  }
  return settings
}
