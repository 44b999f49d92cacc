// Soak: mixed identities and faults at a steady rate through nhi-proxy for a long time, watching RSS and
// event-loop delay (bench/lag-probe.ts inside the proxy process) for growth.
import { createHash } from 'node:crypto'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Pool } from 'undici'
import { BROWSER_UA, type MachineInfo, machineInfo } from './harness.ts'
import { startNhiWithUpstream } from './nhi.ts'
import { rssBytes, type ServerProcess, stopAll } from './procs.ts'
import { tokenSet } from './tokens.ts'

export interface SoakOptions {
  seconds: number
  /** requests per second offered (open loop) */
  rate: number
  /** seconds per table row */
  rowSeconds: number
  log: (line: string) => void
}

export interface SoakRow {
  t: number
  requests: number
  /** status class counts in this row's interval */
  ok: number
  clientErrors: number
  serverErrors: number
  failed: number
  rssMB: number
  heapMB: number
  lagP50Ms: number
  lagP99Ms: number
  lagMaxMs: number
}

export interface SoakResult {
  startedAt: string
  machine: MachineInfo
  options: Omit<SoakOptions, 'log'>
  mix: string[]
  rows: SoakRow[]
  /** completed requests per second: below the offered rate when the load generator itself was starved */
  achievedRate: number
  /** median of the second half against the first half (after the first row), in % */
  rssGrowthPct: number
  lagP99GrowthMs: number
  flat: boolean
}

const BOTS = [
  'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)',
  'Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)',
  'Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; ClaudeBot/1.0; +claudebot@anthropic.com)',
  'curl/8.5.0',
  'python-requests/2.32.3',
]

type Shot = { path: string; headers: Record<string, string>; abortAfterMs?: number }

/** Weighted traffic mix; each entry builds one request from a running counter. */
function trafficMix(tokens: string[], fresh: string[]): [number, string, (n: number) => Shot][] {
  const xfcc = (n: number) => {
    const uri = `spiffe://bench.local/ns/mesh-${n % 7}/sa/client-${n % 500}`
    return `By=spiffe://bench.local/ns/mesh/sa/gateway;Hash=${createHash('sha256').update(uri).digest('hex')};URI=${uri}`
  }
  return [
    [
      35,
      'JWT service accounts (1,000 tokens, cached)',
      (n) => ({
        path: `/api/v1/orders/${n % 977}`,
        headers: { authorization: `Bearer ${tokens[n % tokens.length]}` },
      }),
    ],
    [
      5,
      'JWT never seen before (cache misses)',
      (n) => ({ path: '/api/v1/orders', headers: { authorization: `Bearer ${fresh[n % fresh.length]}` } }),
    ],
    [
      15,
      'anonymous browsers',
      (n) => ({ path: `/docs/page-${n % 50}`, headers: { 'user-agent': BROWSER_UA } }),
    ],
    [
      10,
      'crawlers, AI agents, HTTP libraries',
      (n) => ({ path: '/docs/intro', headers: { 'user-agent': BOTS[n % BOTS.length]! } }),
    ],
    [
      10,
      'XFCC from a trusted mesh peer (500 workloads)',
      (n) => ({ path: '/api/v1/inventory', headers: { 'x-forwarded-client-cert': xfcc(n) } }),
    ],
    [
      5,
      'invalid tokens (garbage, tampered signature)',
      (n) => ({
        path: '/api/v1/orders',
        headers: {
          authorization: n % 2 ? 'Bearer not.a.jwt' : `Bearer ${tokens[n % tokens.length]!.slice(0, -4)}AAAA`,
        },
      }),
    ],
    [5, 'upstream 500/503', (n) => ({ path: n % 2 ? '/status/500' : '/status/503', headers: {} })],
    [5, 'slow upstream (200 ms)', () => ({ path: '/slow/200', headers: {} })],
    [3, 'client aborts mid-request', () => ({ path: '/slow/1000', headers: {}, abortAfterMs: 50 })],
    [
      5,
      'spoofed x-nhi-identity headers',
      () => ({ path: '/admin/users', headers: { 'x-nhi-identity': 'ops/root', 'x-nhi-verified': 'true' } }),
    ],
    [
      2,
      'policy: /admin/** from machines',
      (n) => ({ path: '/admin/users', headers: { authorization: `Bearer ${tokens[n % tokens.length]}` } }),
    ],
  ]
}

interface LagLine {
  t: number
  p50: number
  p99: number
  max: number
  rssMB: number
  heapMB: number
}

export async function runSoak(opts: SoakOptions): Promise<SoakResult> {
  const log = opts.log
  const dir = await mkdtemp(join(tmpdir(), 'nhi-soak-'))
  const procs: ServerProcess[] = []
  try {
    const [cached, fresh] = await Promise.all([
      tokenSet('rotating', 'RS256', 1_000, 100),
      tokenSet('soak-fresh', 'RS256', 20_000, 100),
    ])
    const lagFile = join(dir, 'lag.jsonl')
    const { nhi, port } = await startNhiWithUpstream(
      'nhi-soak',
      dir,
      procs,
      [cached.key.publicJwk, fresh.key.publicJwk],
      {},
      { lagFile },
    )

    const mix = trafficMix(cached.tokens, fresh.tokens)
    const wheel: ((n: number) => Shot)[] = []
    for (const [weight, , make] of mix) for (let i = 0; i < weight; i++) wheel.push(make)
    const pool = new Pool(`http://127.0.0.1:${port}`, { connections: 64 })
    const started = Date.now()
    const rows: SoakRow[] = []
    let counter = 0
    let row = { requests: 0, ok: 0, clientErrors: 0, serverErrors: 0, failed: 0 }
    let inFlight = 0
    const MAX_IN_FLIGHT = 2_000

    const fire = (shot: Shot) => {
      inFlight++
      const ctl = shot.abortAfterMs ? new AbortController() : undefined
      const timer = ctl ? setTimeout(() => ctl.abort(), shot.abortAfterMs) : undefined
      pool
        .request({ path: shot.path, method: 'GET', headers: shot.headers, signal: ctl?.signal })
        .then(async (res) => {
          await res.body.dump()
          row.requests++
          if (res.statusCode < 400) row.ok++
          else if (res.statusCode < 500) row.clientErrors++
          else row.serverErrors++
        })
        .catch(() => {
          row.requests++
          row.failed++
        })
        .finally(() => {
          clearTimeout(timer)
          inFlight--
        })
    }

    let lagOffset = 0
    const closeRow = async () => {
      const text = await readFile(lagFile, 'utf8').catch(() => '')
      const lines = text
        .slice(lagOffset)
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as LagLine)
      lagOffset = text.length
      const mean = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0)
      const r: SoakRow = {
        t: Math.round((Date.now() - started) / 1000),
        ...row,
        rssMB: (await rssBytes(nhi.pid).catch(() => 0)) / 1048576,
        heapMB: lines.at(-1)?.heapMB ?? 0,
        lagP50Ms: mean(lines.map((l) => l.p50)),
        lagP99Ms: Math.max(0, ...lines.map((l) => l.p99)),
        lagMaxMs: Math.max(0, ...lines.map((l) => l.max)),
      }
      rows.push(r)
      row = { requests: 0, ok: 0, clientErrors: 0, serverErrors: 0, failed: 0 }
      log(formatRow(r))
    }

    log(`soak: ${opts.rate} req/s for ${opts.seconds} s, a row every ${opts.rowSeconds} s`)
    log(HEADER)
    const tickMs = 20
    const perTick = opts.rate / (1000 / tickMs)
    let budget = 0
    let nextRow = started + opts.rowSeconds * 1000
    const end = started + opts.seconds * 1000
    while (Date.now() < end) {
      budget += perTick
      while (budget >= 1) {
        budget--
        // open loop, but bounded: if the proxy stalls, shed load instead of queueing without limit
        if (inFlight < MAX_IN_FLIGHT) fire(wheel[counter % wheel.length]!(counter))
        counter++
      }
      if (Date.now() >= nextRow) {
        nextRow += opts.rowSeconds * 1000
        await closeRow()
      }
      await new Promise((r) => setTimeout(r, tickMs))
    }
    const drainUntil = Date.now() + 5_000
    while (inFlight > 0 && Date.now() < drainUntil) await new Promise((r) => setTimeout(r, 50))
    await closeRow()
    await pool.destroy()

    // compare halves, not single rows: one noisy interval must not decide; the first row is warm-up
    const steady = rows.length > 2 ? rows.slice(1) : rows
    const half = Math.max(1, Math.floor(steady.length / 2))
    const early = steady.slice(0, half)
    const late = steady.slice(-half)
    const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1] ?? 0
    const earlyRss = med(early.map((r) => r.rssMB))
    const rssGrowthPct = earlyRss > 0 ? ((med(late.map((r) => r.rssMB)) - earlyRss) / earlyRss) * 100 : 0
    const lagP99GrowthMs = med(late.map((r) => r.lagP99Ms)) - med(early.map((r) => r.lagP99Ms))
    const { log: _log, ...options } = opts
    return {
      startedAt: new Date(started).toISOString(),
      machine: machineInfo(),
      options,
      mix: mix.map(([w, label]) => `${w}% ${label}`),
      rows,
      achievedRate: rows.reduce((n, r) => n + r.requests, 0) / Math.max(1, (Date.now() - started) / 1000),
      rssGrowthPct,
      lagP99GrowthMs,
      flat: rssGrowthPct < 15 && lagP99GrowthMs < 20,
    }
  } finally {
    await stopAll(procs)
    await rm(dir, { recursive: true, force: true }).catch(() => {})
  }
}

const HEADER =
  '|  t s | requests |   2xx/3xx |  4xx |  5xx | failed | RSS MB | heap MB | lag p50 ms | lag p99 ms | lag max ms |'
const pad = (v: string | number, n: number) => String(v).padStart(n)
function formatRow(r: SoakRow): string {
  return `| ${pad(r.t, 4)} | ${pad(r.requests, 8)} | ${pad(r.ok, 9)} | ${pad(r.clientErrors, 4)} | ${pad(r.serverErrors, 4)} | ${pad(r.failed, 6)} | ${pad(r.rssMB.toFixed(1), 6)} | ${pad(r.heapMB.toFixed(1), 7)} | ${pad(r.lagP50Ms.toFixed(2), 10)} | ${pad(r.lagP99Ms.toFixed(2), 10)} | ${pad(r.lagMaxMs.toFixed(1), 10)} |`
}

export function soakMarkdown(r: SoakResult): string {
  return `${[
    `# nhi-proxy soak — ${r.startedAt}`,
    '',
    `${r.options.rate} req/s offered (${r.achievedRate.toFixed(0)} completed per second) for ${Math.round(r.options.seconds / 60)} min on ${r.machine.nproc} × ${r.machine.cpu}, Node ${r.machine.node}.`,
    `Mix: ${r.mix.join(', ')}.`,
    '',
    HEADER,
    '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...r.rows.map(formatRow),
    '',
    `RSS growth, second half vs first half (medians, first row excluded): ${r.rssGrowthPct.toFixed(1)} %; event-loop p99 change: ${r.lagP99GrowthMs.toFixed(2)} ms → ${r.flat ? 'FLAT' : 'NOT FLAT'} (flat = RSS growth < 15 % and p99 lag growth < 20 ms).`,
  ].join('\n')}\n`
}
