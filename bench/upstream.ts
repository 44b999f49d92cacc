// The bench upstream: the smallest useful node HTTP server (fixed 2-byte body, keep-alive), optionally
// also over TLS asking for a client certificate, so the mTLS load generator's ceiling can be measured
// without a proxy in between. Run as a child process: node --import ./scripts/register-ts.mjs bench/upstream.ts '<json>'.
import './orphan-guard.mjs'
import { readFileSync } from 'node:fs'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import { createServer as createTlsServer } from 'node:https'

interface UpstreamArgs {
  http: number
  https?: { port: number; cert: string; key: string; ca: string }
}

const args = JSON.parse(process.argv[2] ?? '{}') as UpstreamArgs
const body = Buffer.from('ok')

function handle(req: IncomingMessage, res: ServerResponse): void {
  // drain any request body before answering so keep-alive connections stay usable
  req.resume()
  if (req.url?.startsWith('/status/')) res.statusCode = Number(req.url.slice(8, 11)) || 500
  if (req.url?.startsWith('/slow/')) {
    const t = setTimeout(() => res.end(body), Math.min(Number(req.url.slice(6)) || 0, 10_000))
    res.on('close', () => clearTimeout(t))
    return
  }
  res.setHeader('content-type', 'text/plain')
  res.setHeader('content-length', body.length)
  res.end(body)
}

const server = createServer({ keepAliveTimeout: 65_000 }, handle)
server.listen(args.http, '127.0.0.1')

if (args.https) {
  const tls = createTlsServer(
    {
      cert: readFileSync(args.https.cert),
      key: readFileSync(args.https.key),
      ca: readFileSync(args.https.ca),
      requestCert: true,
      rejectUnauthorized: true,
      keepAliveTimeout: 65_000,
    },
    handle,
  )
  tls.listen(args.https.port, '127.0.0.1')
}

process.on('SIGTERM', () => process.exit(0))
