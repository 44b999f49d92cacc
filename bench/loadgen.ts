// Node load generator over undici Pools, optionally presenting client certificates (wrk cannot). Closed loop
// (`connections` concurrent request loops, for throughput): the mTLS configurations, and the fallback when
// wrk is missing; its own ceiling is measured against the upstream directly, over the same TLS. Open loop
// (`rate` set): requests on a fixed schedule over the same connections, for latency below saturation.
// Run as a child process: node --import ./scripts/register-ts.mjs bench/loadgen.ts '<LoadSpec json>'; prints one NHI_JSON line.
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
const ua = spec.userAgent ?? 'nhi-bench'

function requestHeaders(): Record<string, string> {
  const headers: Record<string, string> = { 'user-agent': ua }
  if (tokens.length > 0) headers['authorization'] = tokens[tokenIndex++ % tokens.length]!
  return headers
}

/** one request; latency counts from the hand-over to the pool, so time spent waiting for a free connection counts */
async function once(pool: Pool): Promise<void> {
  const since = process.hrtime.bigint()
  try {
    const res = await pool.request({ origin, path, method: 'GET', headers: requestHeaders() })
    await res.body.dump()
    histogram.record(Number(process.hrtime.bigint() - since) || 1)
    requests++
    if (res.statusCode < 200 || res.statusCode > 299) non2xx++
  } catch {
    errors++
  }
}

/** Closed loop: each connection sends its next request when the previous answer is in (saturation). */
async function closedLoop(pool: Pool, deadline: number): Promise<void> {
  while (performance.now() < deadline) await once(pool)
}

/**
 * Open loop at a fixed rate: requests go out on a fixed schedule whatever the server does (a slow answer
 * never delays the next request, it makes requests queue for a connection), so the latencies are those of a
 * proxy below saturation rather than Little's law at full load. The schedule has the timer's resolution
 * (about a millisecond); sending late because of our own timer is not counted against the server.
 */
async function openLoop(rate: number, durationS: number): Promise<void> {
  const total = Math.max(1, Math.round(rate * durationS))
  const intervalMs = 1000 / rate
  const start = performance.now()
  const inFlight: Promise<void>[] = []
  let sent = 0
  while (sent < total) {
    const due = Math.min(total, Math.floor((performance.now() - start) / intervalMs) + 1)
    for (; sent < due; sent++) inFlight.push(once(pools[sent % pools.length]!))
    if (sent < total) await new Promise((r) => setTimeout(r, 1))
  }
  await Promise.all(inFlight)
}

if (spec.rate !== undefined && spec.warmupS) {
  // connections opened and code warm in the generator too, then forgotten
  await openLoop(spec.rate, spec.warmupS)
  histogram.reset()
  requests = errors = non2xx = 0
}
const started = performance.now()
if (spec.rate !== undefined) {
  await openLoop(spec.rate, spec.durationS)
} else {
  const deadline = started + spec.durationS * 1000
  const loops: Promise<void>[] = []
  for (let i = 0; i < spec.connections; i++) loops.push(closedLoop(pools[i % pools.length]!, deadline))
  await Promise.all(loops)
}
const durationS = (performance.now() - started) / 1000
await Promise.all(pools.map((p) => p.close()))

const result: LoadResult = {
  requests,
  durationS,
  rps: requests / durationS,
  p50Ms: requests ? histogram.percentile(50) / 1e6 : 0,
  p99Ms: requests ? histogram.percentile(99) / 1e6 : 0,
  p999Ms: requests ? histogram.percentile(99.9) / 1e6 : 0,
  errors,
  non2xx,
  tool: 'node',
}
process.stdout.write(`NHI_JSON ${JSON.stringify(result)}\n`)
