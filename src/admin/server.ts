// The admin port: metrics, health, the identities/audit/events APIs, the live web view and the effective
// config. Separate from the proxy port so it can stay private to the cluster.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { IDENTITY_SORTS, type IdentitySort, type Telemetry } from '../telemetry/index.ts'
import { UI_PAGE } from './ui/page.ts'

export interface ReadyState {
  ok: boolean
  checks: Record<string, boolean>
  /** more for humans: which checks gate readiness, per-issuer key state */
  detail?: Record<string, unknown>
}

export interface AdminServerOptions {
  host: string
  port: number
  telemetry: Telemetry
  ready: () => Promise<ReadyState>
  /** already redacted by the caller; secret-named fields are masked again here */
  effectiveConfig: () => unknown
}

export interface AdminServer {
  listen(): Promise<AddressInfo>
  close(): Promise<void>
}

const SECRET_NAME =
  /^(key|secret|token|password|passphrase)$|(?:Key|Secret|Token|Password|Passphrase)$|[_-](?:key|secret|token|password)$/
const REDACTED = '<redacted>'

/** Masks any field named like a secret, whatever the caller already did. */
export function maskSecrets(value: unknown, depth = 0): unknown {
  if (depth > 32) return null
  if (Array.isArray(value)) return value.map((v) => maskSecrets(v, depth + 1))
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {}
    for (const [k, v] of Object.entries(value)) {
      out[k] =
        SECRET_NAME.test(k) && v !== null && typeof v !== 'object' ? REDACTED : maskSecrets(v, depth + 1)
    }
    return out
  }
  return value
}

function wantsOpenMetrics(req: IncomingMessage): boolean {
  return (req.headers.accept ?? '').includes('application/openmetrics-text')
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body)
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'cache-control': 'no-store',
    'content-length': Buffer.byteLength(text),
  })
  res.end(text)
}

function param(url: URL, name: string): string | undefined {
  const v = url.searchParams.get(name)
  return v === null || v === '' ? undefined : v
}

const UI_HEADERS = {
  'content-type': 'text/html; charset=utf-8',
  'cache-control': 'no-store',
  'content-security-policy':
    "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; connect-src 'self'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
}

export function createAdminServer(opts: AdminServerOptions): AdminServer {
  const { telemetry } = opts
  const page = Buffer.from(UI_PAGE)

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://admin.invalid')
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('allow', 'GET, HEAD')
      return sendJson(res, 405, { error: 'method not allowed' })
    }
    switch (url.pathname) {
      case '/metrics': {
        const scrape = await telemetry.scrape(wantsOpenMetrics(req))
        res.writeHead(200, { 'content-type': scrape.contentType, 'cache-control': 'no-store' })
        res.end(scrape.body)
        return
      }
      case '/healthz':
        return sendJson(res, 200, { ok: true })
      case '/readyz': {
        const state = await opts.ready()
        return sendJson(res, state.ok ? 200 : 503, { ok: state.ok, checks: state.checks, ...state.detail })
      }
      case '/identities': {
        const sort = param(url, 'sort')
        if (sort !== undefined && !IDENTITY_SORTS.includes(sort as IdentitySort)) {
          return sendJson(res, 400, { error: `sort must be one of ${IDENTITY_SORTS.join(', ')}` })
        }
        return sendJson(res, 200, telemetry.identities(sort as IdentitySort | undefined))
      }
      case '/audit': {
        const limitText = param(url, 'limit')
        const limit = limitText === undefined ? undefined : Number.parseInt(limitText, 10)
        if (limit !== undefined && !(limit > 0))
          return sendJson(res, 400, { error: 'limit must be a positive integer' })
        const events = telemetry.auditQuery({
          identity: param(url, 'identity'),
          traceId: param(url, 'trace_id'),
          requestId: param(url, 'request_id'),
          limit,
        })
        return sendJson(res, 200, { events })
      }
      case '/events':
        telemetry.live.subscribe(req, res, param(url, 'identity'))
        return
      case '/':
        res.writeHead(302, { location: '/ui' })
        res.end()
        return
      case '/ui':
        res.writeHead(200, { ...UI_HEADERS, 'content-length': page.length })
        res.end(req.method === 'HEAD' ? undefined : page)
        return
      case '/config':
        return sendJson(res, 200, maskSecrets(opts.effectiveConfig()))
      default:
        return sendJson(res, 404, { error: 'not found' })
    }
  }

  const server = createServer((req, res) => {
    handle(req, res).catch(() => {
      // never a stack trace: the failure is reported as a bare 500
      if (!res.headersSent) sendJson(res, 500, { error: 'internal error' })
      else res.destroy()
    })
  })
  server.on('clientError', (_err, socket) => {
    if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n')
    else socket.destroy()
  })

  return {
    listen: () =>
      new Promise<AddressInfo>((resolve, reject) => {
        server.once('error', reject)
        server.listen(opts.port, opts.host, () => {
          server.off('error', reject)
          resolve(server.address() as AddressInfo)
        })
      }),
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve())
        server.closeAllConnections()
      }),
  }
}
