// The demo's built-in upstream: a small "checkout" API with realistic latency, sizes and a flaky export job.
import { once } from 'node:events'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'

const DOC_PAGE = `<!doctype html><title>Checkout API docs</title><h1>Checkout API</h1>${'<p>lorem ipsum dolor sit amet</p>'.repeat(60)}`

export async function startDemoUpstream(
  host = '127.0.0.1',
): Promise<{ server: Server; url: string; close(): Promise<void> }> {
  let exports = 0
  const server = createServer((req, res) => {
    req.resume()
    const url = req.url ?? '/'
    const delay = url.startsWith('/api/v1/reports') ? 40 + Math.random() * 120 : 2 + Math.random() * 25
    setTimeout(() => {
      if (url === '/healthz') {
        res.end('ok')
      } else if (url.startsWith('/api/v1/reports/export')) {
        // the nightly export fails in streaks, so the job metrics show a failing job
        exports++
        const failing = exports % 40 >= 32
        res.statusCode = failing ? 500 : 200
        res.setHeader('content-type', 'application/json')
        res.end(
          failing
            ? '{"error":"warehouse timeout"}'
            : JSON.stringify({ rows: 5000, data: 'x'.repeat(50_000) }),
        )
      } else if (url.startsWith('/api/')) {
        res.setHeader('content-type', 'application/json')
        res.end(
          JSON.stringify({ ok: true, path: url, items: Array.from({ length: 20 }, (_, i) => ({ id: i })) }),
        )
      } else if (url.startsWith('/admin')) {
        res.setHeader('content-type', 'application/json')
        res.end('{"settings":{"maintenance":false}}')
      } else {
        res.setHeader('content-type', 'text/html')
        res.end(DOC_PAGE)
      }
    }, delay)
  })
  server.keepAliveTimeout = 70_000
  server.listen(0, host)
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  return {
    server,
    url: `http://${host}:${port}`,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}
