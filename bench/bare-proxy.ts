// Baselines b and b3: a reverse proxy on exactly nhi-proxy's forwarding engine (Http1Forwarder: our own
// keep-alive pool for plain HTTP, same keep-alive and timeout settings) and nothing else — no identity, no telemetry, no header
// rewriting beyond dropping hop-by-hop headers. The gap between this and nhi-proxy is the cost of
// attribution. Run as a child process: node --import ./scripts/register-ts.mjs bench/bare-proxy.ts '<json>'.
import './orphan-guard.mjs'
import { readFileSync } from 'node:fs'
import { createServer } from 'node:http'
import { Http1Forwarder } from '../src/proxy/forwarder.ts'
import type { UpstreamHeaders } from '../src/proxy/headers.ts'

interface BareArgs {
  port: number
  upstream: string
  /** b3: the same forwarder on undici's Pool, the engine the proxy used for plain HTTP before its own */
  undici?: boolean
  /** an https: upstream's CA bundle and the client certificate it asks for (PEM files) */
  tls?: { ca: string; cert: string; key: string }
}

const args = JSON.parse(process.argv[2] ?? '{}') as BareArgs
const origin = new URL(args.upstream).origin
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'te',
  'trailer',
  'upgrade',
  'host',
])

// the same deadlines nhi-proxy derives from its default config (timeouts.upstream 30 s)
const forwarder = new Http1Forwarder({
  headersTimeout: 30_000,
  bodyTimeout: 30_000,
  ...(args.undici === true ? { undiciOnly: true } : {}),
  ...(args.tls
    ? {
        tls: {
          ca: readFileSync(args.tls.ca),
          cert: readFileSync(args.tls.cert),
          key: readFileSync(args.tls.key),
          servername: 'localhost',
        },
      }
    : {}),
})

const server = createServer({ keepAliveTimeout: 65_000 }, (req, res) => {
  const headers: UpstreamHeaders = {}
  for (const name in req.headers) {
    if (!HOP_BY_HOP.has(name)) headers[name] = req.headers[name]
  }
  void forwarder.forward(req, res, { origin, path: req.url ?? '/' }, headers).then((r) => {
    if (r.status === 0 && !res.headersSent) {
      res.statusCode = r.upstreamError === 'timeout' ? 504 : 502
      res.end()
    }
  })
})
server.listen(args.port, '127.0.0.1')
process.on('SIGTERM', () => {
  server.close()
  void forwarder.close().then(() => process.exit(0))
})
