// Baseline (b2): the classic node reverse proxy, http-proxy 1.18 with a keep-alive agent to the upstream.
// Run as a child process: node --import ./scripts/register-ts.mjs bench/bare-http-proxy.ts '<json>'.
import './orphan-guard.mjs'
import { Agent, createServer } from 'node:http'
import httpProxy from 'http-proxy'

interface BareArgs {
  port: number
  upstream: string
}

const args = JSON.parse(process.argv[2] ?? '{}') as BareArgs
const agent = new Agent({ keepAlive: true, maxSockets: 256 })
const proxy = httpProxy.createProxyServer({ target: args.upstream, agent, xfwd: true })
proxy.on('error', (_err, _req, res) => {
  if ('writeHead' in res && !res.headersSent) {
    res.writeHead(502)
    res.end()
  }
})
const server = createServer({ keepAliveTimeout: 65_000 }, (req, res) => proxy.web(req, res))
server.listen(args.port, '127.0.0.1')
process.on('SIGTERM', () => {
  server.close()
  agent.destroy()
  process.exit(0)
})
