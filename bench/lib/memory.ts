// Memory mode: floods nhi-proxy with identity cardinality — N distinct valid ES256 tokens (one service
// account each) plus N/10 distinct client identities forwarded in XFCC by a trusted peer — and samples the
// proxy's RSS, the nhi_requests_total identity series and the /metrics scrape time as it goes. Each credential
// is sent twice in a row: the caches keep a credential from its second request on (util/second-sight.ts), so
// this is what fills them to their bounds, as callers that repeat their credentials do.
import { createHash } from 'node:crypto'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Pool } from 'undici'
import { parseMetrics } from '../../test/helpers/metrics.ts'
import { type MachineInfo, machineInfo, type Target } from './harness.ts'
import { startNhiWithUpstream } from './nhi.ts'
import { rssBytes, type ServerProcess, stopAll } from './procs.ts'
import { median } from './stats.ts'
import { Minter, newSigningMaterial } from './tokens.ts'

export interface MemoryOptions {
  quick: boolean
  /** jwt.verifyWorkers of the proxy (unset: its default) */
  verifyWorkers?: number
  log: (line: string) => void
  /** run the bundle (dist/nhi-proxy.mjs, as shipped) instead of the TypeScript sources */
  dist?: boolean
  /** overrides for tests */
  tokens?: number
  xfccIdentities?: number
  maxIdentities?: number
  timeLimitS?: number
  sampleEveryMs?: number
}

export interface MemorySample {
  t: number
  tokensSent: number
  xfccSent: number
  rssMB: number
  /** the main thread's V8 heap, committed and used, and memory outside it that V8 tracks (Buffers, ...) */
  heapTotalMB?: number
  heapUsedMB?: number
  externalMB?: number
  series: number
  scrapeMs: number
}

export interface MemoryResult {
  startedAt: string
  machine: MachineInfo
  tokens: number
  xfccIdentities: number
  maxIdentities: number
  minting: string
  samples: MemorySample[]
  requests: number
  failures: number
  completed: boolean
  targets: Target[]
}

/**
 * The XFCC header a trusted mesh ingress sets for client workload `i` (Envoy's form: By, Hash, URI), as the
 * memory and allocation modes send it.
 */
export function xfccIdentity(i: number): string {
  const ns = `tenant-${i % 101}`
  const uri = `spiffe://bench.local/ns/${ns}/sa/client-${i}`
  const hash = createHash('sha256').update(uri).digest('hex')
  return `By=spiffe://bench.local/ns/mesh/sa/gateway;Hash=${hash};URI=${uri}`
}

const CONCURRENCY = 32
const CHUNK = 5_000

function t(name: string, value: number, goal: number, unit: string, note?: string): Target {
  const r: Target = {
    name,
    value,
    target: goal,
    unit,
    direction: 'max',
    pass: value <= goal,
    margin: goal - value,
  }
  if (note) r.note = note
  return r
}

async function sample(
  pid: number,
  adminUrl: string,
): Promise<Omit<MemorySample, 't' | 'tokensSent' | 'xfccSent'>> {
  const started = performance.now()
  const text = await (await fetch(`${adminUrl}/metrics`)).text()
  const scrapeMs = performance.now() - started
  const identities = new Set<string>()
  // where the RSS is: the main thread's heap from the process metrics (a worker thread's heap is not in them,
  // so RSS minus these is node itself, native memory and any worker)
  const mb: Record<string, number> = {}
  for (const s of parseMetrics(text)) {
    if (s.name === 'nhi_requests_total') identities.add(s.labels['identity'] ?? '')
    else if (HEAP_METRICS[s.name]) mb[HEAP_METRICS[s.name]!] = s.value / 1024 / 1024
  }
  return { rssMB: (await rssBytes(pid)) / 1024 / 1024, ...mb, series: identities.size, scrapeMs }
}

const HEAP_METRICS: Record<string, 'heapTotalMB' | 'heapUsedMB' | 'externalMB'> = {
  nodejs_heap_size_total_bytes: 'heapTotalMB',
  nodejs_heap_size_used_bytes: 'heapUsedMB',
  nodejs_external_memory_bytes: 'externalMB',
}

/** Growth over the last third of the run, relative to the value at its start. */
function tailGrowth(values: number[]): number {
  if (values.length < 3) return 0
  const from = values[Math.floor((values.length * 2) / 3)]!
  const to = values[values.length - 1]!
  return from > 0 ? (to - from) / from : 0
}

export async function runMemory(opts: MemoryOptions): Promise<MemoryResult> {
  const log = opts.log
  const tokenCount = opts.tokens ?? (opts.quick ? 100_000 : 1_000_000)
  const xfccCount = opts.xfccIdentities ?? Math.round(tokenCount / 10)
  const maxIdentities = opts.maxIdentities ?? 1000
  const timeLimitMs = (opts.timeLimitS ?? (opts.quick ? 300 : 1800)) * 1000
  const dir = await mkdtemp(join(tmpdir(), 'nhi-bench-mem-'))
  const procs: ServerProcess[] = []
  const key = newSigningMaterial('ES256', 'bench-memory')
  const minter = new Minter(key, { identities: tokenCount, exp: Math.floor(Date.now() / 1000) + 86_400 }, 1)
  try {
    const { nhi, port, adminPort } = await startNhiWithUpstream(
      'nhi-memory',
      dir,
      procs,
      [key.publicJwk],
      { maxIdentities, ...(opts.verifyWorkers === undefined ? {} : { verifyWorkers: opts.verifyWorkers }) },
      { dist: opts.dist === true },
    )
    const adminUrl = `http://127.0.0.1:${adminPort}`
    const pool = new Pool(`http://127.0.0.1:${port}`, { connections: CONCURRENCY })

    const started = performance.now()
    const samples: MemorySample[] = []
    let tokensSent = 0
    let xfccSent = 0
    let failures = 0
    const takeSample = async () => {
      const s = await sample(nhi.pid, adminUrl)
      const row = { t: (performance.now() - started) / 1000, tokensSent, xfccSent, ...s }
      samples.push(row)
      log(
        `  ${row.t.toFixed(0).padStart(5)} s  tokens ${tokensSent.toLocaleString('en').padStart(9)}  xfcc ${xfccSent.toLocaleString('en').padStart(7)}  RSS ${row.rssMB.toFixed(1)} MB  heap ${mb(row.heapTotalMB)} / ${mb(row.heapUsedMB)} MB  external ${mb(row.externalMB)} MB  series ${row.series}  scrape ${row.scrapeMs.toFixed(1)} ms`,
      )
    }
    const interval = opts.sampleEveryMs ?? (opts.quick ? 3_000 : 5_000)
    let sampling = Promise.resolve()
    const sampler = setInterval(() => {
      sampling = sampling.then(takeSample, takeSample).catch(() => {})
    }, interval)

    const send = async (headers: Record<string, string>) => {
      try {
        const res = await pool.request({ path: '/api/v1/orders/7', method: 'GET', headers })
        await res.body.dump()
        if (res.statusCode !== 200) failures++
      } catch {
        failures++
      }
    }
    // pre-sign the next chunk while the current one is being sent
    let next = minter.mint(0, Math.min(CHUNK, tokenCount))
    let completed = true
    const xfccEvery = Math.max(1, Math.round(tokenCount / Math.max(1, xfccCount)))
    log(
      `memory mode: ${tokenCount.toLocaleString('en')} ES256 tokens, ${xfccCount.toLocaleString('en')} XFCC identities, each sent twice`,
    )
    for (let start = 0; start < tokenCount; start += CHUNK) {
      const chunk = await next
      const following = start + CHUNK
      if (following < tokenCount) next = minter.mint(following, Math.min(CHUNK, tokenCount - following))
      let i = 0
      const lane = async () => {
        while (i < chunk.length) {
          const token = chunk[i++]!
          const authorization = { authorization: `Bearer ${token}` }
          await send(authorization)
          await send(authorization)
          tokensSent++
          if (tokensSent % xfccEvery === 0 && xfccSent < xfccCount) {
            const xfcc = { 'x-forwarded-client-cert': xfccIdentity(xfccSent++) }
            await send(xfcc)
            await send(xfcc)
          }
        }
      }
      await Promise.all(Array.from({ length: CONCURRENCY }, lane))
      if (performance.now() - started > timeLimitMs) {
        completed = false
        log(`  time limit reached after ${tokensSent} tokens`)
        break
      }
    }
    while (xfccSent < xfccCount && completed) {
      const xfcc = { 'x-forwarded-client-cert': xfccIdentity(xfccSent++) }
      await send(xfcc)
      await send(xfcc)
    }
    // a few more samples after the flood: does memory come back down or at least stay flat?
    const settleUntil = performance.now() + interval * 3
    while (performance.now() < settleUntil) await new Promise((r) => setTimeout(r, 250))
    clearInterval(sampler)
    await sampling
    await takeSample()
    await pool.close()

    const final = samples[samples.length - 1]!
    const rss = samples.map((s) => s.rssMB)
    const series = samples.map((s) => s.series)
    const targets = [
      t(`RSS after ${tokensSent.toLocaleString('en')} tokens`, final.rssMB, 120, 'MB'),
      t(
        'identity series',
        Math.max(...series),
        maxIdentities + 1,
        '',
        `maxIdentities ${maxIdentities} + __overflow__`,
      ),
      t(
        '/metrics scrape at full cardinality (median)',
        median(
          samples.filter((s) => s.series >= final.series).map((s) => s.scrapeMs),
          0,
        ),
        50,
        'ms',
        `slowest ${Math.max(...samples.map((s) => s.scrapeMs)).toFixed(0)} ms`,
      ),
      t('RSS growth over the last third of the run', tailGrowth(rss) * 100, 10, '%', 'levels off'),
    ]
    return {
      startedAt: new Date(Date.now() - (performance.now() - started)).toISOString(),
      machine: machineInfo(),
      tokens: tokensSent,
      xfccIdentities: xfccSent,
      maxIdentities,
      minting: `ES256, one P-256 key, node:crypto sign in ${minter.threads} worker thread, ${CHUNK}-token chunks signed ahead of sending`,
      samples,
      requests: 2 * (tokensSent + xfccSent),
      failures,
      completed,
      targets,
    }
  } finally {
    await minter.close()
    await stopAll(procs)
    await rm(dir, { recursive: true, force: true }).catch(() => {})
  }
}

const mb = (v: number | undefined) => (v === undefined ? '—' : v.toFixed(1))

export function memoryMarkdown(r: MemoryResult): string {
  const lines = [
    `# nhi-proxy memory bench — ${r.startedAt}`,
    '',
    `${r.tokens.toLocaleString('en')} distinct valid tokens and ${r.xfccIdentities.toLocaleString('en')} distinct XFCC client identities (trusted peer 127.0.0.1/32), each sent twice (the caches keep a credential from its second request on), metrics.maxIdentities ${r.maxIdentities}; ${r.requests.toLocaleString('en')} requests, ${r.failures} failed${r.completed ? '' : ' (stopped at the time limit)'}.`,
    `Tokens: ${r.minting}.`,
    '',
    '| t (s) | tokens sent | XFCC sent | RSS MB | main heap MB (committed / used) | external MB | identity series | scrape ms |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...r.samples.map(
      (s) =>
        `| ${s.t.toFixed(0)} | ${s.tokensSent.toLocaleString('en')} | ${s.xfccSent.toLocaleString('en')} | ${s.rssMB.toFixed(1)} | ${mb(s.heapTotalMB)} / ${mb(s.heapUsedMB)} | ${mb(s.externalMB)} | ${s.series} | ${s.scrapeMs.toFixed(1)} |`,
    ),
    '',
    '```',
    ...r.targets.map(
      (x) =>
        `${x.pass ? 'PASS' : 'MISS'}  ${x.name}: ${x.value.toFixed(1)} ${x.unit} (target ≤ ${x.target} ${x.unit})${x.note ? ` — ${x.note}` : ''}`,
    ),
    '```',
  ]
  return `${lines.join('\n')}\n`
}

export async function writeMemoryResults(dir: string, r: MemoryResult): Promise<string[]> {
  const name = r.tokens >= 1_000_000 ? 'memory' : 'memory-quick'
  const files = [join(dir, `${name}.md`), join(dir, `${name}.json`)]
  await writeFile(files[0]!, memoryMarkdown(r))
  await writeFile(files[1]!, `${JSON.stringify(r, null, 2)}\n`)
  return files
}
