// Workers mode (`npm run bench -- --workers`): what `workers: 2` buys on this machine. nhi-proxy with one
// process and with two workers, and nginx with one and two worker processes as the reference for what a
// second core can give here, same JWT load (1,000 rotating tokens), interleaved rounds; ratios are taken
// within each round and their spread over the rounds is reported as the run-to-run noise. The load
// generator and the upstream share the same cores, so the ceiling is below 2× for every proxy.
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Target } from './harness.ts'
import { type LoadResult, runLoad } from './load.ts'
import { nginxBinary, startNginx } from './nginx.ts'
import { spawnPlainUpstream, startNhi } from './nhi.ts'
import { freePort, type ServerProcess, stopAll, treeCpuMicros } from './procs.ts'
import { median } from './stats.ts'
import { rotatingTokens } from './tokens.ts'

export interface WorkersBenchOptions {
  rounds: number
  durationS: number
  connections: number
  dist: boolean
  /** drive the load with wrk (else the Node load generator) */
  useWrk: boolean
  log: (line: string) => void
}

interface Sample extends LoadResult {
  /** CPU of the proxy's processes (primary and workers) per request */
  proxyCpuUs: number
}

export interface WorkersBenchResult {
  startedAt: string
  options: Omit<WorkersBenchOptions, 'log'>
  rows: { id: string; label: string; rounds: Sample[] }[]
  /** median over rounds of the within-round ratio, with the smallest and largest round */
  ratios: Record<string, { median: number; min: number; max: number }>
  targets: Target[]
}

const LABELS: Record<string, string> = {
  'nhi-1': 'nhi-proxy, JWT RS256, workers: 1 (one process)',
  'nhi-2': 'nhi-proxy, JWT RS256, workers: 2',
  'nginx-1': 'nginx, 1 worker process',
  'nginx-2': 'nginx, 2 worker processes',
}

export async function runWorkersBench(opts: WorkersBenchOptions): Promise<WorkersBenchResult> {
  const log = opts.log
  const dir = await mkdtemp(join(tmpdir(), 'nhi-workers-bench-'))
  const procs: ServerProcess[] = []
  try {
    const { tokensFile, jwksFile } = await rotatingTokens(dir)
    const { url: upstreamUrl, listening } = await spawnPlainUpstream(procs)
    const upstreamPort = Number(new URL(upstreamUrl).port)

    const nhi = async (workers: number) => {
      const port = await freePort()
      const adminPort = await freePort()
      const p = await startNhi(
        `nhi-${workers}w`,
        dir,
        { port, adminPort, upstream: upstreamUrl, jwksFile, workers },
        { dist: opts.dist },
      )
      procs.push(p)
      return { proc: p, url: `http://127.0.0.1:${port}` }
    }
    const nginx = async (workers: number) => {
      const port = await freePort()
      const p = await startNginx(dir, port, upstreamPort, workers)
      procs.push(p)
      return { proc: p, url: `http://127.0.0.1:${port}` }
    }
    // every server starts at once (each joins `procs` as soon as it runs, so a failure stops them all)
    const withNginx = nginxBinary() !== undefined
    if (!withNginx) log('nginx is not installed: the nginx reference rows are left out')
    const starting = await Promise.allSettled([
      nhi(1),
      nhi(2),
      ...(withNginx ? [nginx(1), nginx(2)] : []),
      listening,
    ])
    const failed = starting.find((s) => s.status === 'rejected')
    if (failed) throw failed.reason
    const up = (i: number) =>
      (starting[i] as PromiseFulfilledResult<{ proc: ServerProcess; url: string }>).value
    const targets: Record<string, { proc: ServerProcess; url: string }> = { 'nhi-1': up(0), 'nhi-2': up(1) }
    if (withNginx) {
      targets['nginx-1'] = up(2)
      targets['nginx-2'] = up(3)
    }

    const spec = (url: string, durationS: number) => ({
      url,
      path: '/api/v1/orders/42',
      connections: opts.connections,
      tokensFile,
      durationS,
    })
    log('warm-up (JIT, keep-alive pools, token caches of every worker)')
    for (const t of Object.values(targets))
      await runLoad(spec(t.url, Math.min(3, opts.durationS)), opts.useWrk)

    const rows = new Map<string, Sample[]>(Object.keys(targets).map((id) => [id, []]))
    for (let round = 1; round <= opts.rounds; round++) {
      log(`round ${round}`)
      for (const [id, t] of Object.entries(targets)) {
        const before = await treeCpuMicros(t.proc.pid)
        const r = await runLoad(spec(t.url, opts.durationS), opts.useWrk)
        const sample: Sample = {
          ...r,
          proxyCpuUs: ((await treeCpuMicros(t.proc.pid)) - before) / Math.max(1, r.requests),
        }
        rows.get(id)!.push(sample)
        log(
          `  ${id.padEnd(8)} ${r.rps.toFixed(0).padStart(6)} req/s  p50 ${r.p50Ms.toFixed(2)} ms  p99 ${r.p99Ms.toFixed(2)} ms  ${sample.proxyCpuUs.toFixed(0)} µs CPU/req` +
            (r.errors || r.non2xx ? `  errors ${r.errors} non-2xx ${r.non2xx}` : ''),
        )
      }
    }

    const ratio = (a: string, b: string) => {
      const per = Array.from({ length: opts.rounds }, (_, i) => rows.get(a)![i]!.rps / rows.get(b)![i]!.rps)
      return { median: median(per), min: Math.min(...per), max: Math.max(...per) }
    }
    const ratios: WorkersBenchResult['ratios'] = { 'nhi-2/nhi-1': ratio('nhi-2', 'nhi-1') }
    if (rows.has('nginx-2')) {
      ratios['nginx-2/nginx-1'] = ratio('nginx-2', 'nginx-1')
      ratios['nhi-2/nginx-2'] = ratio('nhi-2', 'nginx-2')
    }
    const scaling = ratios['nhi-2/nhi-1']!
    const noise = (scaling.max - scaling.min) / 2
    const nginxScaling = ratios['nginx-2/nginx-1']
    const target: Target = {
      name: 'workers: 2 ≥ 1.7× workers: 1 (2 cores)',
      value: scaling.median,
      target: 1.7,
      unit: '×',
      direction: 'min',
      pass: scaling.median >= 1.7,
      margin: scaling.median - 1.7,
      note:
        `rounds ${scaling.min.toFixed(2)}–${scaling.max.toFixed(2)} (noise ±${noise.toFixed(2)})` +
        (nginxScaling
          ? `; nginx 2 vs 1 workers on the same machine: ${nginxScaling.median.toFixed(2)}×`
          : ''),
    }
    const { log: _log, ...options } = opts
    return {
      startedAt: new Date().toISOString(),
      options,
      rows: [...rows].map(([id, rounds]) => ({ id, label: LABELS[id]!, rounds })),
      ratios,
      targets: [target],
    }
  } finally {
    await stopAll(procs)
    await rm(dir, { recursive: true, force: true }).catch(() => {})
  }
}

export function workersMarkdown(r: WorkersBenchResult): string {
  const lines = [
    `# nhi-proxy workers mode (${r.startedAt})`,
    '',
    `${r.options.rounds} interleaved rounds × ${r.options.durationS} s, ${r.options.connections} connections, ${r.options.useWrk ? 'wrk' : 'the Node load generator'}; the load generator and the upstream run on the same cores as the proxies.`,
    '',
    '| id | configuration | req/s per round | p50 ms per round | p99 ms per round | proxy CPU µs/req per round |',
    '|---|---|---|---|---|---|',
  ]
  for (const row of r.rows) {
    lines.push(
      `| ${row.id} | ${row.label} | ${row.rounds.map((s) => s.rps.toFixed(0)).join(' / ')} | ${row.rounds.map((s) => s.p50Ms.toFixed(1)).join(' / ')} | ${row.rounds.map((s) => s.p99Ms.toFixed(1)).join(' / ')} | ${row.rounds.map((s) => s.proxyCpuUs.toFixed(0)).join(' / ')} |`,
    )
  }
  lines.push('', '| ratio (within each round) | median | min | max |', '|---|---:|---:|---:|')
  for (const [k, v] of Object.entries(r.ratios))
    lines.push(`| ${k} | ${v.median.toFixed(2)} | ${v.min.toFixed(2)} | ${v.max.toFixed(2)} |`)
  lines.push('')
  return lines.join('\n')
}
