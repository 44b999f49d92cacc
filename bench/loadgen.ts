// Closed-loop Node load generator: `connections` concurrent request loops over undici Pools, optionally
// presenting client certificates (wrk cannot). Used for the mTLS configurations and as the fallback when
// wrk is missing. Its own ceiling is measured against the upstream directly, over the same TLS.
// Run as a child process: node --import tsx bench/loadgen.ts '<LoadSpec json>'; prints one NHI_JSON line.
import './orphan-guard.mjs'
import { readFileSync } from 'node:fs'
import { createHistogram } from 'node:perf_hooks'
import { Pool } from 'undici'
import type { LoadResult, LoadSpec } from './lib/load.ts'

const spec = JSON.parse(process.argv[2] ?? '{}') as LoadSpec
const origin = new URL(spec.url).origin
const path = spec.path ?? '/'
const tokens = spec.tokensFile
  ? readFileSync(spec.tokensFile, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((t) => `Bearer ${t}`)
  : []
const ca = spec.tls ? readFileSync(spec.tls.ca) : undefined
const clients = spec.tls?.clients.map((c) => ({ cert: readFileSync(c.cert), key: readFileSync(c.key) })) ?? [
  undefined,
]

// one pool per client identity; connections spread evenly over them
const perPool = Math.max(1, Math.ceil(spec.connections / clients.length))
const pools = clients.map(
  (c) =>
    new Pool(origin, {
      connections: perPool,
      pipelining: 1,
      connect: c
        ? { ca, cert: c.cert, key: c.key, rejectUnauthorized: true, servername: 'localhost' }
        : undefined,
    }),
)

const histogram = createHistogram()
let requests = 0
let errors = 0
let non2xx = 0
let tokenIndex = 0
const deadline = performance.now() + spec.durationS * 1000
const ua = spec.userAgent ?? 'nhi-bench'

async function loop(pool: Pool): Promise<void> {
  while (performance.now() < deadline) {
    const headers: Record<string, string> = { 'user-agent': ua }
    if (tokens.length > 0) headers['authorization'] = tokens[tokenIndex++ % tokens.length]!
    const started = process.hrtime.bigint()
    try {
      const res = await pool.request({ origin, path, method: 'GET', headers })
      await res.body.dump()
      histogram.record(Number(process.hrtime.bigint() - started) || 1)
      requests++
      if (res.statusCode < 200 || res.statusCode > 299) non2xx++
    } catch {
      errors++
    }
  }
}

const started = performance.now()
const loops: Promise<void>[] = []
for (let i = 0; i < spec.connections; i++) loops.push(loop(pools[i % pools.length]!))
await Promise.all(loops)
const durationS = (performance.now() - started) / 1000
await Promise.all(pools.map((p) => p.close()))

const result: LoadResult = {
  requests,
  durationS,
  rps: requests / durationS,
  p50Ms: requests ? histogram.percentile(50) / 1e6 : 0,
  p99Ms: requests ? histogram.percentile(99) / 1e6 : 0,
  errors,
  non2xx,
  tool: 'node',
}
process.stdout.write(`NHI_JSON ${JSON.stringify(result)}\n`)
