// OTLP mode (`npm run bench -- --otlp`): what exporting one span and one audit log record per request costs.
// Three nhi-proxy processes with the same JWT configuration — export off, export on to a live collector, and
// export on to a collector that is down (a closed port) — and the bare engine, measured in interleaved rounds;
// ratios are taken within each round. The live collector is a sink in this process that reads each export and
// answers 200 with an empty OTLP response: it does no decoding, so the proxy's own cost is what is measured.
import { mkdtemp, rm } from 'node:fs/promises'
import { createServer, type Server } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Target } from './harness.ts'
import { ensureWrk, type LoadResult, runLoad } from './load.ts'
import { startBareUndici, startNhi, startPlainUpstream } from './nhi.ts'
import {
  cpuMicros,
  freePort,
  mainThreadCpuMicros,
  otherThreadsCpuMicros,
  rssBytes,
  type ServerProcess,
  stopAll,
} from './procs.ts'
import { targetLine } from './report.ts'
import { median } from './stats.ts'
import { rotatingTokens } from './tokens.ts'

export interface OtlpCostOptions {
  rounds: number
  durationS: number
  connections: number
  dist: boolean
  /** another build (its nhi-proxy.mjs) run with export on beside the others, interleaved: before/after */
  baseline?: string
  /**
   * open loop at this many req/s (the Node load generator) instead of wrk's closed loop: every row then
   * serves the same throughput, so CPU per request is compared at one operating point. A closed loop
   * compares rows at whatever throughput each reached, and the request thread's CPU per request depends on
   * it (fewer requests per event-loop wake-up cost more each).
   */
  rate?: number
  log: (line: string) => void
}

interface Sample extends LoadResult {
  proxyCpuUs?: number
  /** the main (request) thread's share: export runs in a thread of its own */
  requestThreadCpuUs?: number
  /**
   * CPU of the busiest other thread: with export on, the export thread (the others — V8's helpers, the
   * token-verification pool with a warm cache — stay at a few µs)
   */
  busiestThreadCpuUs?: number
  /** resident set size after the round */
  rssMb?: number
}

export interface OtlpCostResult {
  startedAt: string
  options: Omit<OtlpCostOptions, 'log'>
  rows: { id: string; label: string; rounds: Sample[] }[]
  ratios: Record<string, number>
  /** export requests and bytes the live sink received */
  sink: { requests: number; bytes: number }
  /**
   * with `rate`: the performance issue's latency budget at a fixed rate (p50 added ≤ 1 ms, p99 added ≤ 3 ms
   * over the bare engine) judged with export on and with the collector down
   */
  budget?: Target[]
}

/** added latency over the bare engine, median of the per-round differences, against a ≤ budget in ms */
function addedLatency(name: string, value: number, target: number, spread: string): Target {
  return {
    name,
    value,
    target,
    unit: 'ms',
    direction: 'max',
    pass: value <= target,
    margin: target - value,
    note: `rounds ${spread}`,
  }
}

const LABELS: Record<string, string> = {
  b: 'bare proxy (same engine), 1,000 rotating tokens',
  c: 'nhi-proxy, JWT RS256 (1,000 tokens, cache warm), OTLP export off',
  'c-otlp': 'the same, OTLP spans + audit log records to a live collector',
  'c-otlp-down': 'the same, OTLP export on, collector down',
  'c-otlp-handoff':
    'the same, OTLP export on, every span left out by the sampler and no log records: the hand-off alone',
  'c-otlp-base': 'the same as c-otlp, with the baseline build (--entry)',
  'c-otlp-down-base': 'the same as c-otlp-down, with the baseline build (--entry)',
}

function startSink(): Promise<{ server: Server; port: number; stats: { requests: number; bytes: number } }> {
  const stats = { requests: 0, bytes: 0 }
  const server = createServer((req, res) => {
    req.on('data', (chunk: Buffer) => {
      stats.bytes += chunk.length
    })
    req.on('end', () => {
      stats.requests++
      res.writeHead(200, { 'content-type': 'application/x-protobuf', 'content-length': 0 })
      res.end()
    })
  })
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      resolve({ server, port: typeof address === 'object' && address ? address.port : 0, stats })
    }),
  )
}

export async function runOtlpCost(opts: OtlpCostOptions): Promise<OtlpCostResult> {
  const log = opts.log
  const dir = await mkdtemp(join(tmpdir(), 'nhi-otlp-bench-'))
  const procs: ServerProcess[] = []
  const sink = await startSink()
  try {
    const useWrk = ensureWrk(log)
    const { tokensFile, jwksFile } = await rotatingTokens(dir)

    const upstreamUrl = await startPlainUpstream(procs)
    const bare = await startBareUndici(procs, upstreamUrl)
    // a port that was free a moment ago and that nothing listens on: every export is refused at once
    const downPort = await freePort()
    const start = async (
      name: string,
      otlpEndpoint?: string,
      entry?: string,
      env?: Record<string, string>,
    ) => {
      const port = await freePort()
      const adminPort = await freePort()
      const p = await startNhi(
        name,
        dir,
        { port, adminPort, upstream: upstreamUrl, jwksFile, ...(otlpEndpoint ? { otlpEndpoint } : {}) },
        { dist: opts.dist, ...(entry ? { entry } : {}), ...(env ? { env } : {}) },
      )
      procs.push(p)
      return { proc: p, url: `http://127.0.0.1:${port}` }
    }
    const targets = {
      c: await start('nhi-otlp-off'),
      'c-otlp': await start('nhi-otlp-live', `http://127.0.0.1:${sink.port}`),
      'c-otlp-down': await start('nhi-otlp-down', `http://127.0.0.1:${downPort}`),
      // the request thread hands every request over as with c-otlp, while the export thread has next to
      // nothing to do: the difference to c-otlp is what the export thread's CPU costs the request thread on
      // shared cores, the difference to c is the hand-off itself
      'c-otlp-handoff': await start('nhi-otlp-handoff', `http://127.0.0.1:${sink.port}`, undefined, {
        OTEL_TRACES_SAMPLER: 'always_off',
        OTEL_LOGS_EXPORTER: 'none',
      }),
      ...(opts.baseline
        ? {
            'c-otlp-base': await start('nhi-otlp-base', `http://127.0.0.1:${sink.port}`, opts.baseline),
            'c-otlp-down-base': await start(
              'nhi-otlp-down-base',
              `http://127.0.0.1:${downPort}`,
              opts.baseline,
            ),
          }
        : {}),
    }

    // Open loop: the load generator opens its connections and runs at the rate for a while before it
    // measures, as the main bench's fixed-rate rounds do; otherwise the first requests of every round wait
    // for 64 new connections, ≈ 1 % of a round's requests at 1,000 req/s, and that lands on the p99.
    const warmupS = opts.rate ? 2 : 0
    const warmupRequests = opts.rate ? Math.round(opts.rate * warmupS) : 0
    const spec = (url: string, durationS: number) => ({
      url,
      path: '/api/v1/orders/42',
      connections: opts.connections,
      tokensFile,
      durationS,
      ...(opts.rate ? { rate: opts.rate, warmupS } : {}),
    })
    log('warm-up (JIT, keep-alive pools, token cache, exporter start)')
    for (const url of [bare.url, ...Object.values(targets).map((t) => t.url)])
      await runLoad(spec(url, 3), useWrk)

    const rows = new Map<string, Sample[]>(['b', ...Object.keys(targets)].map((id) => [id, []]))
    const measure = async (id: string, url: string, proxy: ServerProcess) => {
      const before = await cpuMicros(proxy.pid)
      const mainBefore = await mainThreadCpuMicros(proxy.pid)
      const othersBefore = await otherThreadsCpuMicros(proxy.pid)
      const r: Sample = await runLoad(spec(url, opts.durationS), useWrk)
      // the CPU readings span the warm-up's requests too (a fixed number at a fixed rate)
      const served = Math.max(1, r.requests + warmupRequests)
      r.proxyCpuUs = ((await cpuMicros(proxy.pid)) - before) / served
      r.requestThreadCpuUs = ((await mainThreadCpuMicros(proxy.pid)) - mainBefore) / served
      let busiest = 0
      for (const [tid, us] of await otherThreadsCpuMicros(proxy.pid))
        busiest = Math.max(busiest, us - (othersBefore.get(tid) ?? 0))
      r.busiestThreadCpuUs = busiest / served
      r.rssMb = (await rssBytes(proxy.pid)) / 1e6
      rows.get(id)!.push(r)
      log(
        `  ${id.padEnd(12)} ${r.rps.toFixed(0).padStart(6)} req/s  p50 ${r.p50Ms.toFixed(2)} ms  p99 ${r.p99Ms.toFixed(2)} ms  ${r.proxyCpuUs.toFixed(0)} µs CPU/req (request thread ${r.requestThreadCpuUs.toFixed(0)}, busiest other ${r.busiestThreadCpuUs.toFixed(0)})  RSS ${r.rssMb.toFixed(0)} MB` +
          (r.errors || r.non2xx ? `  errors ${r.errors} non-2xx ${r.non2xx}` : ''),
      )
    }
    for (let round = 1; round <= opts.rounds; round++) {
      log(`round ${round}`)
      await measure('b', bare.url, bare.proc)
      for (const [id, t] of Object.entries(targets)) await measure(id, t.url, t.proc)
    }
    const perRound = (f: (i: number) => number) => median(Array.from({ length: opts.rounds }, (_, i) => f(i)))
    const rps = (id: string, i: number) => rows.get(id)![i]!.rps
    const ratio = (a: string, b: string) => perRound((i) => rps(a, i) / rps(b, i))
    const cpu = (id: string) => perRound((i) => rows.get(id)![i]!.proxyCpuUs ?? Number.NaN)
    const mainCpu = (id: string) => perRound((i) => rows.get(id)![i]!.requestThreadCpuUs ?? Number.NaN)
    const exportCpu = (id: string) => perRound((i) => rows.get(id)![i]!.busiestThreadCpuUs ?? Number.NaN)
    const rss = (id: string) => perRound((i) => rows.get(id)![i]!.rssMb ?? Number.NaN)
    const ratios: Record<string, number> = {
      'c/b': ratio('c', 'b'),
      'c-otlp/b': ratio('c-otlp', 'b'),
      'c-otlp/c': ratio('c-otlp', 'c'),
      'c-otlp-down/c': ratio('c-otlp-down', 'c'),
      'proxy CPU µs/req, export off': cpu('c'),
      'proxy CPU µs/req, export on': cpu('c-otlp'),
      'proxy CPU µs/req, collector down': cpu('c-otlp-down'),
      'request-thread CPU µs/req, export off': mainCpu('c'),
      'request-thread CPU µs/req, export on': mainCpu('c-otlp'),
      'request-thread CPU µs/req, collector down': mainCpu('c-otlp-down'),
      'request-thread CPU µs/req, hand-off alone': mainCpu('c-otlp-handoff'),
      'export-thread CPU µs/req, export on': exportCpu('c-otlp'),
      'export-thread CPU µs/req, collector down': exportCpu('c-otlp-down'),
      'export-thread CPU µs/req, hand-off alone': exportCpu('c-otlp-handoff'),
      'proxy CPU µs/req, hand-off alone': cpu('c-otlp-handoff'),
      'RSS MB, export off': rss('c'),
      'RSS MB, export on': rss('c-otlp'),
      'RSS MB, collector down': rss('c-otlp-down'),
    }
    if (opts.baseline) {
      ratios['c-otlp/c-otlp-base'] = ratio('c-otlp', 'c-otlp-base')
      ratios['proxy CPU µs/req, baseline build export on'] = cpu('c-otlp-base')
      ratios['request-thread CPU µs/req, baseline build export on'] = mainCpu('c-otlp-base')
      ratios['RSS MB, baseline build export on'] = rss('c-otlp-base')
      ratios['c-otlp-down/c-otlp-down-base'] = ratio('c-otlp-down', 'c-otlp-down-base')
      ratios['proxy CPU µs/req, baseline build collector down'] = cpu('c-otlp-down-base')
      ratios['request-thread CPU µs/req, baseline build collector down'] = mainCpu('c-otlp-down-base')
      ratios['export-thread CPU µs/req, baseline build collector down'] = exportCpu('c-otlp-down-base')
      ratios['export-thread CPU µs/req, baseline build export on'] = exportCpu('c-otlp-base')
    }
    let budget: Target[] | undefined
    if (opts.rate) {
      budget = []
      const short: Record<string, string> = {
        c: 'export off',
        'c-otlp': 'export on',
        'c-otlp-down': 'export on, collector down',
      }
      for (const id of ['c', 'c-otlp', 'c-otlp-down']) {
        for (const [q, target] of [
          ['p50', 1],
          ['p99', 3],
        ] as const) {
          const added = Array.from({ length: opts.rounds }, (_, i) => {
            const mine = rows.get(id)![i]!
            const bare = rows.get('b')![i]!
            return q === 'p50' ? mine.p50Ms - bare.p50Ms : mine.p99Ms - bare.p99Ms
          })
          budget.push(
            addedLatency(
              `${q} added ≤ ${target} ms at ${opts.rate} req/s, ${short[id]} (${id} − b)`,
              median(added),
              target,
              added.map((x) => x.toFixed(2)).join(' / '),
            ),
          )
        }
      }
    }
    const { log: _log, ...options } = opts
    return {
      ...(budget ? { budget } : {}),
      startedAt: new Date().toISOString(),
      options,
      rows: [...rows].map(([id, rounds]) => ({ id, label: LABELS[id]!, rounds })),
      ratios,
      sink: { ...sink.stats },
    }
  } finally {
    await stopAll(procs)
    sink.server.close()
    await rm(dir, { recursive: true, force: true }).catch(() => {})
  }
}

export function otlpCostMarkdown(r: OtlpCostResult): string {
  const lines = [
    `# nhi-proxy OTLP export cost (${r.startedAt})`,
    '',
    `${r.options.rounds} interleaved rounds × ${r.options.durationS} s, ${r.options.connections} connections${r.options.rate ? `, open loop at ${r.options.rate} req/s` : ', closed loop (wrk)'}; the live collector received ${r.sink.requests.toLocaleString('en')} export requests (${(r.sink.bytes / 1e6).toFixed(1)} MB).`,
    '',
    '| id | configuration | req/s per round | p50 ms per round | p99 ms per round | proxy CPU µs/req per round | of which request thread | busiest other thread | RSS MB |',
    '|---|---|---|---|---|---|---|---|---|',
  ]
  for (const row of r.rows) {
    lines.push(
      `| ${row.id} | ${row.label} | ${row.rounds.map((s) => s.rps.toFixed(0)).join(' / ')} | ${row.rounds.map((s) => s.p50Ms.toFixed(1)).join(' / ')} | ${row.rounds.map((s) => s.p99Ms.toFixed(1)).join(' / ')} | ${row.rounds.map((s) => (s.proxyCpuUs ?? Number.NaN).toFixed(0)).join(' / ')} | ${row.rounds.map((s) => (s.requestThreadCpuUs ?? Number.NaN).toFixed(0)).join(' / ')} | ${row.rounds.map((s) => (s.busiestThreadCpuUs ?? Number.NaN).toFixed(0)).join(' / ')} | ${row.rounds.map((s) => (s.rssMb ?? Number.NaN).toFixed(0)).join(' / ')} |`,
    )
  }
  lines.push('', '| ratio (within each round, median over rounds) | value |', '|---|---:|')
  for (const [k, v] of Object.entries(r.ratios)) lines.push(`| ${k} | ${v.toFixed(2)} |`)
  if (r.budget) lines.push('', '```', ...r.budget.map(targetLine), '```')
  lines.push('')
  return lines.join('\n')
}
