// Pod scrape mode (`npm run bench -- --pod-scrape`): what one /metrics costs the primary of a `workers: 2`
// pod at 1,000 identities. nhi-proxy runs as users run it (the bundle, `workers: 2`); 1,000 user-agent
// callers send requests over keep-alive connections spread over both workers, so most identities have
// series in both and the primary merges them. Each scrape is timed by the on-CPU time of the primary's
// event-loop thread (from the scheduler's account, /proc/<pid>/task/<pid>/schedstat: the time the pod's
// admin port and connection hand-off are blocked), after every identity sent a request since the last
// scrape (every series changed) and after none did (idle), in both formats. The workers' event-loop CPU
// per scrape is reported beside it: what rendering and exporting their series costs them.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { Agent, request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Target } from './harness.ts'
import { nhiCommand, spawnPlainUpstream } from './nhi.ts'
import { childPids, freePort, type ServerProcess, spawnProcess, stopAll, waitForPorts } from './procs.ts'

export const POD_SCRAPE_BUDGET_MS = 50

export interface PodScrapeOptions {
  identities: number
  /** scrapes per scenario and format */
  scrapes: number
  dist: boolean
  /** another bundle to measure the same way (an earlier build), instead of this checkout's */
  entry?: string
  log: (s: string) => void
}

export interface PodScrapeRow {
  scenario: 'changed' | 'idle'
  openMetrics: boolean
  scrapes: number
  /** the primary's event-loop thread, ms per scrape */
  primaryP50Ms: number
  primaryP99Ms: number
  /** both workers' event-loop threads together, ms per scrape */
  workersP50Ms: number
  workersP99Ms: number
  wallP50Ms: number
  bytes: number
  samples: number
}

export interface PodScrapeResult {
  startedAt: string
  options: Omit<PodScrapeOptions, 'log'>
  rows: PodScrapeRow[]
  target: Target
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!
}

async function threadNs(pid: number): Promise<number> {
  return Number((await readFile(`/proc/${pid}/task/${pid}/schedstat`, 'utf8')).split(' ')[0])
}

function get(agent: Agent | false, url: string, headers: Record<string, string>): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request(url, { agent, headers }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () =>
        res.statusCode === 200
          ? resolve(Buffer.concat(chunks).toString('utf8'))
          : reject(new Error(`${url}: ${res.statusCode}`)),
      )
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}

export async function runPodScrape(opts: PodScrapeOptions): Promise<PodScrapeResult> {
  const { log } = opts
  const startedAt = new Date().toISOString()
  const dir = await mkdtemp(join(tmpdir(), 'nhi-pod-scrape-'))
  const procs: ServerProcess[] = []
  // eight keep-alive connections: the primary hands them to the workers in turn, and each caller's
  // requests take whichever is free, so over a few rounds most callers reach both workers
  const agent = new Agent({ keepAlive: true, maxSockets: 8 })
  try {
    const { url: upstream, listening } = await spawnPlainUpstream(procs)
    const port = await freePort()
    const adminPort = await freePort()
    const file = join(dir, 'pod-scrape.yaml')
    await writeFile(
      file,
      `service: bench
listen:
  http: 127.0.0.1:${port}
admin: 127.0.0.1:${adminPort}
upstream: ${upstream}
workers: 2
audit:
  output: 'off'
# nothing here measures the drain: a stop exits at once instead of waiting out the drain delay
timeouts:
  drainDelay: 0s
metrics:
  maxIdentities: ${opts.identities * 2}
  maxUnverifiedIdentities: ${opts.identities * 2}
`,
    )
    const launch = nhiCommand(file, { dist: opts.dist })
    const args = opts.entry
      ? launch.args.map((a) => (a.endsWith('nhi-proxy.mjs') || a.endsWith('main.ts') ? opts.entry! : a))
      : launch.args
    const proc = spawnProcess('nhi-pod', launch.command, args, { env: { NHI_LOG_LEVEL: 'warn' } })
    procs.push(proc)
    await Promise.all([waitForPorts(proc, [port, adminPort], 30_000), listening])
    const pid = proc.pid
    const workers = await childPids(pid)
    const proxy = `http://127.0.0.1:${port}`
    const admin = `http://127.0.0.1:${adminPort}/metrics`
    const round = async () => {
      let next = 0
      const lane = async () => {
        while (next < opts.identities) {
          const i = next++
          await get(agent, `${proxy}/api/v1/orders/${i}`, { 'user-agent': `bench-caller-${i}/1.0` })
        }
      }
      await Promise.all(Array.from({ length: 16 }, lane))
    }
    log(`pod scrape: ${opts.identities} callers, warm-up`)
    for (let i = 0; i < 4; i++) {
      await round()
      await get(false, admin, {})
      await get(false, admin, { accept: 'application/openmetrics-text' })
    }

    const rows: PodScrapeRow[] = []
    for (const scenario of ['changed', 'idle'] as const) {
      const by = new Map<boolean, { primary: number[]; workers: number[]; wall: number[]; body: string }>([
        [false, { primary: [], workers: [], wall: [], body: '' }],
        [true, { primary: [], workers: [], wall: [], body: '' }],
      ])
      for (let i = 0; i < opts.scrapes; i++) {
        for (const openMetrics of [false, true]) {
          if (scenario === 'changed') await round()
          const m = by.get(openMetrics)!
          const workersBefore = await Promise.all(workers.map(threadNs))
          const before = await threadNs(pid)
          const wallBefore = performance.now()
          m.body = await get(false, admin, openMetrics ? { accept: 'application/openmetrics-text' } : {})
          const wall = performance.now() - wallBefore
          const after = await threadNs(pid)
          const workersAfter = await Promise.all(workers.map(threadNs))
          m.primary.push((after - before) / 1e6)
          m.workers.push(workersAfter.reduce((sum, ns, w) => sum + ns - workersBefore[w]!, 0) / 1e6)
          m.wall.push(wall)
        }
      }
      for (const [openMetrics, m] of by) {
        const sorted = (xs: number[]) => [...xs].sort((a, b) => a - b)
        const primary = sorted(m.primary)
        const workerCpu = sorted(m.workers)
        const row: PodScrapeRow = {
          scenario,
          openMetrics,
          scrapes: primary.length,
          primaryP50Ms: percentile(primary, 50),
          primaryP99Ms: percentile(primary, 99),
          workersP50Ms: percentile(workerCpu, 50),
          workersP99Ms: percentile(workerCpu, 99),
          wallP50Ms: percentile(sorted(m.wall), 50),
          bytes: Buffer.byteLength(m.body),
          samples: m.body.split('\n').filter((l) => l !== '' && !l.startsWith('#')).length,
        }
        rows.push(row)
        log(
          `  ${scenario.padEnd(7)} ${openMetrics ? 'OpenMetrics' : 'text       '} primary p50 ${row.primaryP50Ms.toFixed(1)} ms p99 ${row.primaryP99Ms.toFixed(1)} ms, workers p50 ${row.workersP50Ms.toFixed(1)} ms, ${(row.bytes / 1e6).toFixed(2)} MB`,
        )
      }
    }
    const worst = Math.max(...rows.map((r) => r.primaryP99Ms))
    const target: Target = {
      name: `workers: 2 /metrics p99 ≤ ${POD_SCRAPE_BUDGET_MS} ms at ${opts.identities.toLocaleString('en')} identities (CPU of the primary's event-loop thread, both formats, changed and idle)`,
      value: worst,
      target: POD_SCRAPE_BUDGET_MS,
      unit: 'ms',
      direction: 'max',
      pass: worst <= POD_SCRAPE_BUDGET_MS,
      margin: POD_SCRAPE_BUDGET_MS - worst,
      note: `median ${Math.max(...rows.map((r) => r.primaryP50Ms)).toFixed(1)} ms in the dearest row, ${opts.scrapes} scrapes per row`,
    }
    const { log: _log, ...options } = opts
    return { startedAt, options, rows, target }
  } finally {
    agent.destroy()
    await stopAll(procs)
    await rm(dir, { recursive: true, force: true })
  }
}

export function podScrapeMarkdown(r: PodScrapeResult, targetLine: (t: Target) => string): string {
  const ms = (n: number) => n.toFixed(1)
  return [
    `# /metrics of a workers: 2 pod (${r.startedAt})`,
    '',
    `${r.options.identities.toLocaleString('en')} user-agent callers over keep-alive connections spread over both workers; ${r.options.scrapes} scrapes per row. CPU is the on-CPU time of the event-loop thread (scheduler account), ms per scrape.`,
    '',
    '| scenario | format | primary p50 | primary p99 | workers p50 | workers p99 | wall p50 | samples | body MB |',
    '|---|---|---:|---:|---:|---:|---:|---:|---:|',
    ...r.rows.map(
      (x) =>
        `| ${x.scenario} | ${x.openMetrics ? 'OpenMetrics' : 'text'} | ${ms(x.primaryP50Ms)} | ${ms(x.primaryP99Ms)} | ${ms(x.workersP50Ms)} | ${ms(x.workersP99Ms)} | ${ms(x.wallP50Ms)} | ${x.samples.toLocaleString('en')} | ${(x.bytes / 1e6).toFixed(2)} |`,
    ),
    '',
    '```',
    targetLine(r.target),
    '```',
    '',
  ].join('\n')
}
