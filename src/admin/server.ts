// The admin port: metrics, health, the identities/audit/events APIs, the live web view and the effective
// config. Separate from the proxy port so it can stay private to the cluster.
import { createHash, timingSafeEqual } from 'node:crypto'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import { type AddressInfo, isIP } from 'node:net'
import { redactConfig } from '../config/redact.ts'
import {
  type AuditQuery,
  type AuditRecord,
  IDENTITY_SORTS,
  type IdentitiesView,
  type IdentitySort,
  type Scrape,
  type Telemetry,
} from '../telemetry/index.ts'
import { withListenAddress } from '../util/listen-problem.ts'
import { negotiateMetricsFormat } from './metrics-format.ts'
import { UI_PAGE } from './ui/page.ts'
import { UI_SCRIPT } from './ui/script.ts'

/**
 * The admin port is often open to the pod network (Prometheus, the kubelet) and has no config of its own
 * for limits: fixed bounds keep a flood of connections or slow requests there from taking the process's file
 * descriptors. Its clients are a scraper, probes and a few live views; a request is one GET.
 */
export const ADMIN_MAX_CONNECTIONS = 256
/**
 * An answer its client has not taken within this long closes the connection: one that asks for /metrics
 * (megabytes at metrics.maxIdentities) and never reads held the unsent body, and the connection, for ever.
 * The /events streams have the live feed's own write timeout instead.
 */
export const ADMIN_SEND_TIMEOUT_MS = 30_000
/**
 * /metrics answers being rendered or sent at once: each holds its body until the client has taken it, so a
 * client that opens a connection per slot and reads nothing would hold ADMIN_MAX_CONNECTIONS bodies.
 * Prometheus scrapes one at a time per server; the ones past this are answered 503.
 */
export const ADMIN_MAX_SCRAPES = 8
const ADMIN_SERVER_OPTIONS = {
  headersTimeout: 10_000,
  requestTimeout: 15_000,
  // how often those deadlines are checked (Node's default is every 30 s)
  connectionsCheckingInterval: 1_000,
}

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
  /**
   * /healthz when the process being up is not the whole answer (workers: N, whose primary stays up while no
   * worker serves); without it, /healthz is 200 while the process runs
   */
  health?: () => { ok: boolean; error?: string }
  /** served through redactConfig here, whatever the caller already masked */
  effectiveConfig: () => unknown
  /** who may read the operator endpoints beyond loopback peers; read per request (reload changes it) */
  access?: () => AdminAccess
  /** test seam: is this peer address on this host? (default: loopback addresses) */
  isLocalPeer?: (address: string) => boolean
  /** test seam: ADMIN_SEND_TIMEOUT_MS */
  sendTimeoutMs?: number
  /** /metrics when it is not this process's telemetry alone (workers: N aggregates every worker's) */
  scrape?: (openMetrics: boolean) => Promise<Scrape>
  /** /identities and /audit likewise */
  identities?: (sort: IdentitySort | undefined) => Promise<IdentitiesView>
  auditQuery?: (q: AuditQuery) => Promise<AuditRecord[]>
}

export interface AdminAccess {
  /** the current bearer token (e.g. from adminAccess.tokenFile); undefined: loopback peers only */
  token(): Promise<string | undefined> | string | undefined
  /** Host names accepted besides IP literals and localhost */
  allowedHosts: readonly string[]
}

/** Scraped from the pod network by Prometheus and the kubelet: no Host check, no token. */
const PUBLIC_PATHS = new Set(['/metrics', '/healthz', '/readyz', '/'])

/**
 * A peer on this host as `kubectl port-forward` and a process in the pod connect: from 127.0.0.1 or ::1.
 * Not the rest of 127.0.0.0/8: a mesh sidecar in the pod forwards every client of the mesh from one of
 * those (Istio's from 127.0.0.6), which would make each of them a local peer.
 */
export function isLoopback(address: string | undefined): boolean {
  return address === '127.0.0.1' || address === '::1' || address === '::ffff:127.0.0.1'
}

/** The host name of a Host header (port and IPv6 brackets removed), lower-cased; undefined when malformed. */
export function hostName(header: string | undefined): string | undefined {
  if (!header) return undefined
  const h = header.trim().toLowerCase()
  if (h.startsWith('[')) {
    const end = h.indexOf(']')
    return end > 0 ? h.slice(1, end) : undefined
  }
  const colon = h.indexOf(':')
  return colon === -1 ? h : h.slice(0, colon)
}

/**
 * DNS-rebinding guard: a page on evil.example that resolves its name to 127.0.0.1 sends Host: evil.example.
 * IP literals and localhost cannot be rebound; other names must be configured.
 */
export function hostAllowed(header: string | undefined, allowed: readonly string[]): boolean {
  const name = hostName(header)
  if (!name) return false
  if (isIP(name) !== 0 || name === 'localhost' || name.endsWith('.localhost')) return true
  return allowed.some((a) => a.toLowerCase() === name)
}

function digest(s: string): Buffer {
  return createHash('sha256').update(s).digest()
}

/** constant-time: both sides hashed to the same length first */
export function tokenMatches(presented: string, expected: string): boolean {
  return timingSafeEqual(digest(presented), digest(expected))
}

/**
 * The admin token a client presents: `Bearer <token>` (curl, scripts), or the password of HTTP Basic auth (any
 * user name). Basic is for browsers: a page can't attach a bearer token to its own navigation or to an
 * EventSource, but a browser answers a Basic challenge once and then sends the credentials with every request
 * to the origin, `/events` included.
 */
function presentedToken(req: IncomingMessage): string | undefined {
  const auth = req.headers.authorization
  if (typeof auth !== 'string') return undefined
  const m = /^(Bearer|Basic)[ \t]+(\S+)[ \t]*$/i.exec(auth)
  const scheme = m?.[1]
  const value = m?.[2]
  if (scheme === undefined || value === undefined) return undefined
  if (scheme.length === 6) return value
  const credentials = Buffer.from(value, 'base64').toString('utf8')
  const colon = credentials.indexOf(':')
  return colon < 0 ? undefined : credentials.slice(colon + 1)
}

const CHALLENGES = ['Bearer realm="nhi-proxy admin"', 'Basic realm="nhi-proxy admin", charset="UTF-8"']

export interface AdminServer {
  listen(): Promise<AddressInfo>
  close(): Promise<void>
}

function wantsOpenMetrics(req: IncomingMessage): boolean {
  return negotiateMetricsFormat(req.headers.accept) === 'openmetrics'
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body)
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'cache-control': 'no-store',
    // the JSON carries what clients sent (identity names, paths): never to be taken for a page
    'x-content-type-options': 'nosniff',
    'content-length': Buffer.byteLength(text),
  })
  res.end(text)
}

function param(url: URL, name: string): string | undefined {
  const v = url.searchParams.get(name)
  return v === null || v === '' ? undefined : v
}

/**
 * The page's one script, allowed by its hash: should an escape of what clients chose (identity names, paths)
 * ever be missed, an event-handler attribute in the markup does not run. Styles stay inline-allowed: the
 * page sets colours in style attributes.
 */
const UI_SCRIPT_HASH = createHash('sha256').update(UI_SCRIPT).digest('base64')

const UI_HEADERS = {
  'content-type': 'text/html; charset=utf-8',
  'cache-control': 'no-store',
  'content-security-policy': `default-src 'self'; script-src 'sha256-${UI_SCRIPT_HASH}'; style-src 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'`,
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
}

const HEALTHY = { ok: true }
const NO_ACCESS: AdminAccess = { token: () => undefined, allowedHosts: [] }

export function createAdminServer(opts: AdminServerOptions): AdminServer {
  const { telemetry } = opts
  const page = Buffer.from(UI_PAGE)
  const isLocalPeer = opts.isLocalPeer ?? isLoopback
  let scrapes = 0

  /** Operator endpoints: a permitted Host, and a loopback peer or the bearer token. Answers when refused. */
  async function admitted(req: IncomingMessage, res: ServerResponse): Promise<boolean> {
    const access = opts.access?.() ?? NO_ACCESS
    if (!hostAllowed(req.headers.host, access.allowedHosts)) {
      sendJson(res, 403, {
        error:
          'host not allowed: use an IP address or localhost, or list the name in adminAccess.allowedHosts',
      })
      return false
    }
    if (isLocalPeer(req.socket.remoteAddress ?? '')) return true
    const expected = await access.token()
    const presented = presentedToken(req)
    if (expected && presented !== undefined && tokenMatches(presented, expected)) return true
    if (!expected) {
      sendJson(res, 403, {
        error: 'served to loopback peers only (kubectl port-forward), or set adminAccess.tokenFile',
      })
    } else {
      res.setHeader('www-authenticate', CHALLENGES)
      sendJson(res, 401, { error: 'bearer token required' })
    }
    return false
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://admin.invalid')
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('allow', 'GET, HEAD')
      return sendJson(res, 405, { error: 'method not allowed' })
    }
    if (!PUBLIC_PATHS.has(url.pathname) && !(await admitted(req, res))) return
    switch (url.pathname) {
      case '/metrics': {
        if (scrapes >= ADMIN_MAX_SCRAPES) {
          res.setHeader('retry-after', '5')
          return sendJson(res, 503, { error: 'too many scrapes in progress' })
        }
        scrapes++
        res.once('close', () => scrapes--)
        const om = wantsOpenMetrics(req)
        const scrape = await (opts.scrape ? opts.scrape(om) : telemetry.scrape(om))
        res.writeHead(200, {
          'content-type': scrape.contentType,
          'cache-control': 'no-store',
          'x-content-type-options': 'nosniff',
        })
        res.end(scrape.body)
        return
      }
      case '/healthz': {
        if (!opts.health) return sendJson(res, 200, HEALTHY)
        const state = opts.health()
        return sendJson(res, state.ok ? 200 : 503, state)
      }
      case '/readyz': {
        const state = await opts.ready()
        return sendJson(res, state.ok ? 200 : 503, { ok: state.ok, checks: state.checks, ...state.detail })
      }
      case '/identities': {
        const sort = param(url, 'sort')
        if (sort !== undefined && !IDENTITY_SORTS.includes(sort as IdentitySort)) {
          return sendJson(res, 400, { error: `sort must be one of ${IDENTITY_SORTS.join(', ')}` })
        }
        const by = sort as IdentitySort | undefined
        return sendJson(res, 200, opts.identities ? await opts.identities(by) : telemetry.identities(by))
      }
      case '/audit': {
        const limitText = param(url, 'limit')
        // digits only: parseInt took `1e3` for 1 and `2abc` for 2
        const limit =
          limitText === undefined ? undefined : /^\d{1,9}$/.test(limitText) ? Number(limitText) : Number.NaN
        if (limit !== undefined && !(limit > 0))
          return sendJson(res, 400, { error: 'limit must be a positive integer' })
        const query: AuditQuery = {
          identity: param(url, 'identity'),
          source: param(url, 'source'),
          traceId: param(url, 'trace_id'),
          spanId: param(url, 'span_id'),
          requestId: param(url, 'request_id'),
          limit,
        }
        const events = opts.auditQuery ? await opts.auditQuery(query) : telemetry.auditQuery(query)
        return sendJson(res, 200, { events })
      }
      case '/events':
        req.socket.setTimeout(0)
        telemetry.live.subscribe(req, res, param(url, 'identity'), param(url, 'source'))
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
        return sendJson(res, 200, redactConfig(opts.effectiveConfig()))
      default:
        return sendJson(res, 404, { error: 'not found' })
    }
  }

  const server = createServer(ADMIN_SERVER_OPTIONS, (req, res) => {
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
  server.maxConnections = ADMIN_MAX_CONNECTIONS
  // idle keep-alive connections have keepAliveTimeout, a request being received the deadlines above
  server.setTimeout(opts.sendTimeoutMs ?? ADMIN_SEND_TIMEOUT_MS)

  return {
    listen: () =>
      new Promise<AddressInfo>((resolve, reject) => {
        const failed = (err: unknown) => reject(withListenAddress(err, opts.host, opts.port))
        server.once('error', failed)
        server.listen(opts.port, opts.host, () => {
          server.off('error', failed)
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
