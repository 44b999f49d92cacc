// `nhi-proxy fleet --prometheus URL --serve ADDR`: the fleet picture as a page for people who will not open
// one /ui per pod. The page runs the same Prometheus queries as `fleet`, shared by the loads of a few
// seconds (nothing is stored here, Prometheus stays the only store); `/fleet.json` is the `--json` document.
import { once } from 'node:events'
import { createServer, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { hostAllowed } from '../admin/server.ts'
import { redactUrl } from '../config/redact.ts'
import { listenProblem } from '../util/listen-problem.ts'
import type { Out } from './check.ts'
import { buildFleet, type Fleet, type FleetOptions, printFleet } from './fleet.ts'
import { PromError, prometheusBase } from './prometheus-api.ts'

const HTML_ESCAPES: Record<string, string> = {
  '&': '&amp;',
  '<': '&lt;',
  '>': '&gt;',
  '"': '&quot;',
  "'": '&#39;',
}
/** identity names and labels come from clients: never markup */
const escapeHtml = (s: string) => s.replace(/[&<>"']/g, (c) => HTML_ESCAPES[c]!)

/** `host:port`, `[v6]:port`, `:port` (every interface) or `port` (loopback only) */
export function parseServeAddress(value: string): { host: string | undefined; port: number } {
  const bare = /^(\d+)$/.exec(value)
  if (bare) return { host: '127.0.0.1', port: checkPort(Number(bare[1]), value) }
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(value)
  if (!m) throw new Error(`--serve must be HOST:PORT, :PORT or PORT, got "${value}"`)
  return { host: m[1] || m[2] || undefined, port: checkPort(Number(m[3]), value) }
}

function checkPort(port: number, value: string): number {
  if (port > 65_535) throw new Error(`--serve must be HOST:PORT, :PORT or PORT, got "${value}"`)
  return port
}

/** how long one answer of the queries serves further loads */
export const FLEET_FRESH_MS = 5_000

/**
 * Loads share one run of the queries: every load while one runs waits for it, and its answer serves the
 * loads of the next `freshMs`. The page refreshes itself every 30 s, so a wall of screens showing it, or a
 * script polling fleet.json, would otherwise cost Prometheus ten queries per load with no bound on how many
 * run at once. A failure is not kept: the load after it asks again, one run at a time.
 */
export function sharedLoads(
  load: () => Promise<Fleet>,
  freshMs = FLEET_FRESH_MS,
  now: () => number = () => performance.now(),
): () => Promise<Fleet> {
  let running: Promise<Fleet> | undefined
  let last: { fleet: Fleet; at: number } | undefined
  return () => {
    if (last !== undefined && now() - last.at < freshMs) return Promise.resolve(last.fleet)
    running ??= load().then(
      (fleet) => {
        last = { fleet, at: now() }
        running = undefined
        return fleet
      },
      (e: unknown) => {
        running = undefined
        throw e
      },
    )
    return running
  }
}

function page(body: string, refreshSeconds: number): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="${refreshSeconds}">
<title>nhi-proxy fleet</title>
<style>body{font-family:system-ui,sans-serif;margin:1.5rem}pre{font-size:13px;line-height:1.35}</style>
</head><body><h1>nhi-proxy fleet</h1>
<p><a href="fleet.json">fleet.json</a> · refreshes every ${refreshSeconds}s</p>
${body}
</body></html>
`
}

function send(res: ServerResponse, status: number, type: string, body: string): void {
  res.writeHead(status, {
    'content-type': type,
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
    'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'",
  })
  res.end(body)
}

/** Serves until the process is signalled; resolves with the exit code once the server has closed. */
export async function serveFleet(
  o: FleetOptions,
  serve: { address: string; allowHosts: readonly string[] },
  out: Out,
  err: Out,
): Promise<number> {
  const { address, allowHosts } = serve
  let host: string | undefined
  let port: number
  try {
    ;({ host, port } = parseServeAddress(address))
    // a URL no load could ever use is the same bad flag as without --serve: refused before serving a page
    // that would answer 502 forever
    prometheusBase(o.prometheus)
  } catch (e) {
    err(`nhi-proxy: ${(e as Error).message}`)
    return 1
  }
  const fleetNow = sharedLoads(() => buildFleet(o))
  // a page elsewhere could otherwise read the fleet by pointing its own name at this address (DNS rebinding):
  // only names that cannot be rebound (IP literals, localhost) and those the operator gave are answered
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, 'text/plain', 'GET only\n')
    if (!hostAllowed(req.headers.host, allowHosts))
      return send(
        res,
        403,
        'text/plain',
        'host not allowed: use an IP address or localhost, or name it with --allow-host\n',
      )
    if (path !== '/' && path !== '/ui' && path !== '/fleet.json')
      return send(res, 404, 'text/plain', 'not found\n')
    fleetNow().then(
      (fleet) => {
        if (path === '/fleet.json')
          return send(res, 200, 'application/json', `${JSON.stringify(fleet, null, 2)}\n`)
        const lines: string[] = []
        printFleet(fleet, (line) => lines.push(line))
        send(res, 200, 'text/html; charset=utf-8', page(`<pre>${escapeHtml(lines.join('\n'))}</pre>`, 30))
      },
      (e: unknown) => {
        // Prometheus down or rejecting a query: the page says so and the server stays up for the next load
        const message = e instanceof PromError ? e.message : 'internal error'
        if (!(e instanceof PromError)) err(`nhi-proxy: fleet page failed: ${String(e)}`)
        if (path === '/fleet.json')
          return send(res, 502, 'application/json', `${JSON.stringify({ error: message })}\n`)
        send(res, 502, 'text/html; charset=utf-8', page(`<p>${escapeHtml(message)}</p>`, 30))
      },
    )
  })
  server.listen(port, host)
  try {
    await once(server, 'listening')
  } catch (e) {
    // the words `run` and `demo` use for the same failures
    err(`nhi-proxy: cannot listen on ${address}: ${listenProblem(e)}`)
    // a listener that cannot start is a runtime failure, as for `run` (docs/reference.md "Command line")
    return 2
  }
  const a = server.address() as AddressInfo
  const shown = a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`
  out(`fleet view of ${redactUrl(o.prometheus)} on http://${shown}/`)
  await new Promise<void>((resolve) => {
    const stop = () => {
      process.off('SIGTERM', stop)
      process.off('SIGINT', stop)
      server.close(() => resolve())
      server.closeAllConnections()
    }
    process.on('SIGTERM', stop)
    process.on('SIGINT', stop)
  })
  return 0
}
