// Flood mode (`npm run bench -- --flood`): the cache-miss flood on its own, against the cached case and the
// bare engine in the same interleaved rounds, with verification in the worker pool (jwt.verifyWorkers
// default) and inline on the event loop (verifyWorkers: 0) side by side — two nhi-proxy processes with their
// own caches, so one slice of never-seen tokens is new to both. It also measures the latency of cached
// callers at a fixed rate while a flood runs, the number a flood's bystanders feel.
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { floodTarget, type Target } from './harness.ts'
import { ensureWrk, type LoadResult, type LoadSpec, runLoad } from './load.ts'
import { startBareUndici, startNhi, startPlainUpstream } from './nhi.ts'
import { cpuMicros, freePort, mainThreadCpuMicros, type ServerProcess, stopAll } from './procs.ts'
import { targetLine } from './report.ts'
import { median } from './stats.ts'
import { tokenSet } from './tokens.ts'

export interface FloodOptions {
  rounds: number
  durationS: number
  connections: number
  /** requests per second of the cached callers during a flood */
  rate: number
  dist: boolean
  log: (line: string) => void
}

interface Sample extends LoadResult {
  proxyCpuUs?: number
  /** the event loop's thread alone: what the flood takes from everyone else's requests */
  proxyMainCpuUs?: number
  /** the flood sent more requests than its slice had tokens: the rest were cache hits */
  wrapped?: boolean
}

export interface FloodResult {
  startedAt: string
  options: Omit<FloodOptions, 'log'>
  sliceTokens: number
  rows: { id: string; label: string; rounds: Sample[] }[]
  ratios: Record<string, number>
  /** flood-pool/b against ≥ 0.5×, with each round's ratio and their spread (the run-to-run noise) */
  target: Target
}

const LABELS: Record<string, string> = {
  b: 'bare proxy (same engine), 1,000 rotating tokens',
  'c-pool': 'nhi-proxy, cached tokens (verifyWorkers default)',
  'flood-pool': 'nhi-proxy, every RS256 token new, verifyWorkers default (pool)',
  'flood-inline': 'nhi-proxy, every RS256 token new, verifyWorkers: 0 (inline)',
  'quiet-pool': `cached callers at a fixed rate, no flood (pool)`,
  'quiet+flood-pool': 'cached callers at a fixed rate during a flood (pool)',
  'quiet+flood-inline': 'cached callers at a fixed rate during a flood (inline)',
}

const FLOOD_RATE_CEILING = 8_000

export async function runFlood(opts: FloodOptions): Promise<FloodResult> {
  const log = opts.log
  const dir = await mkdtemp(join(tmpdir(), 'nhi-flood-'))
  const procs: ServerProcess[] = []
  try {
    const useWrk = ensureWrk(log)
    // one slice per round for the flood alone and one for the flood under the cached callers; each slice is
    // sent to both nhi-proxy processes (separate caches), so it is new to each
    // Enough tokens that a round never runs out: past its slice wrk starts the slice again, and those requests
    // are second sights (verified again and kept), not never-seen tokens. 8,000 a second is above any flood
    // rate measured here (≈ 3,000–6,200 req/s).
    const sliceTokens = Math.max(16_000, Math.ceil(opts.durationS * FLOOD_RATE_CEILING))
    const slices = opts.rounds * 2
    log(`preparing tokens (${(sliceTokens * slices).toLocaleString('en')} RS256 for the floods)`)
    const [rotating, flood] = await Promise.all([
      tokenSet('rotating', 'RS256', 1_000, 100),
      tokenSet('flood-mode', 'RS256', sliceTokens * slices, 100),
    ])
    const tokensFile = join(dir, 'tokens.txt')
    await writeFile(tokensFile, `${rotating.tokens.join('\n')}\n`)
    const sliceFiles: string[] = []
    for (let i = 0; i < slices; i++) {
      const f = join(dir, `flood-${i}.txt`)
      await writeFile(f, `${flood.tokens.slice(i * sliceTokens, (i + 1) * sliceTokens).join('\n')}\n`)
      sliceFiles.push(f)
    }
    const jwksFile = join(dir, 'jwks.json')
    await writeFile(jwksFile, JSON.stringify({ keys: [rotating.key.publicJwk, flood.key.publicJwk] }))

    const upstreamUrl = await startPlainUpstream(procs)
    const bare = await startBareUndici(procs, upstreamUrl)
    const start = async (name: string, verifyWorkers?: number) => {
      const port = await freePort()
      const adminPort = await freePort()
      const p = await startNhi(
        name,
        dir,
        {
          port,
          adminPort,
          upstream: upstreamUrl,
          jwksFile,
          ...(verifyWorkers === undefined ? {} : { verifyWorkers }),
        },
        { dist: opts.dist },
      )
      procs.push(p)
      return { proc: p, url: `http://127.0.0.1:${port}` }
    }
    const pool = await start('nhi-pool')
    const inline = await start('nhi-inline', 0)

    const base = { connections: opts.connections, path: '/api/v1/orders/42' }
    const spec = (url: string, file: string): LoadSpec => ({
      ...base,
      url,
      tokensFile: file,
      durationS: opts.durationS,
    })
    log('warm-up (JIT, keep-alive pools, token cache)')
    for (const url of [bare.url, pool.url, inline.url])
      await runLoad({ ...spec(url, tokensFile), durationS: 3 }, useWrk)

    const rows = new Map<string, Sample[]>(Object.keys(LABELS).map((id) => [id, []]))
    const measure = async (
      id: string,
      run: () => Promise<LoadResult>,
      proxy?: ServerProcess,
      slice?: number,
    ) => {
      const before = proxy ? await cpuMicros(proxy.pid) : 0
      const mainBefore = proxy ? await mainThreadCpuMicros(proxy.pid) : 0
      const r: Sample = await run()
      if (proxy) {
        r.proxyCpuUs = ((await cpuMicros(proxy.pid)) - before) / Math.max(1, r.requests)
        r.proxyMainCpuUs = ((await mainThreadCpuMicros(proxy.pid)) - mainBefore) / Math.max(1, r.requests)
      }
      if (slice !== undefined) r.wrapped = r.requests > slice
      rows.get(id)!.push(r)
      log(
        `  ${id.padEnd(20)} ${r.rps.toFixed(0).padStart(6)} req/s  p50 ${r.p50Ms.toFixed(2)} ms  p99 ${r.p99Ms.toFixed(2)} ms` +
          (r.proxyCpuUs === undefined
            ? ''
            : `  ${r.proxyCpuUs.toFixed(0)} µs CPU/req (${r.proxyMainCpuUs?.toFixed(0)} main thread)`) +
          (r.wrapped ? '  (tokens wrapped)' : '') +
          (r.errors || r.non2xx ? `  errors ${r.errors} non-2xx ${r.non2xx}` : ''),
      )
      return r
    }
    // cached callers: the rotating tokens on a fixed schedule over 8 connections of their own
    const quiet = (url: string) =>
      runLoad(
        {
          url,
          path: base.path,
          connections: 8,
          durationS: opts.durationS,
          rate: opts.rate,
          warmupS: 0,
          tokensFile,
        },
        useWrk,
      )
    for (let round = 1; round <= opts.rounds; round++) {
      log(`round ${round}`)
      const alone = sliceFiles[(round - 1) * 2]!
      const under = sliceFiles[(round - 1) * 2 + 1]!
      await measure('b', () => runLoad(spec(bare.url, tokensFile), useWrk), bare.proc)
      await measure('c-pool', () => runLoad(spec(pool.url, tokensFile), useWrk), pool.proc)
      await measure('flood-pool', () => runLoad(spec(pool.url, alone), useWrk), pool.proc, sliceTokens)
      await measure('flood-inline', () => runLoad(spec(inline.url, alone), useWrk), inline.proc, sliceTokens)
      await measure('quiet-pool', () => quiet(pool.url))
      for (const [id, target] of [
        ['pool', pool],
        ['inline', inline],
      ] as const) {
        const floodRun = runLoad(spec(target.url, under), useWrk)
        await measure(`quiet+flood-${id}`, () => quiet(target.url))
        await floodRun
      }
    }
    // ratios within each round (the machine's load moves all configurations of a round together), then
    // the median over rounds
    const perRound = (f: (round: number) => number) =>
      median(Array.from({ length: opts.rounds }, (_, i) => f(i)))
    const rps = (id: string, i: number) => rows.get(id)![i]!.rps
    const ratio = (a: string, b: string) => perRound((i) => rps(a, i) / rps(b, i))
    const p = (id: string, key: 'p50Ms' | 'p99Ms') => perRound((i) => rows.get(id)![i]![key])
    const ratios: Record<string, number> = {
      'flood-pool/b': ratio('flood-pool', 'b'),
      'flood-inline/b': ratio('flood-inline', 'b'),
      'flood-pool/c-pool': ratio('flood-pool', 'c-pool'),
      'flood-inline/c-pool': ratio('flood-inline', 'c-pool'),
      'flood-pool/flood-inline': ratio('flood-pool', 'flood-inline'),
      'p50 ms cached callers, no flood': p('quiet-pool', 'p50Ms'),
      'p50 ms cached callers during a flood, pool': p('quiet+flood-pool', 'p50Ms'),
      'p50 ms cached callers during a flood, inline': p('quiet+flood-inline', 'p50Ms'),
      'p99 ms cached callers, no flood': p('quiet-pool', 'p99Ms'),
      'p99 ms cached callers during a flood, pool': p('quiet+flood-pool', 'p99Ms'),
      'p99 ms cached callers during a flood, inline': p('quiet+flood-inline', 'p99Ms'),
    }
    const floodRounds = Array.from({ length: opts.rounds }, (_, i) => rps('flood-pool', i) / rps('b', i))
    const { log: _log, ...options } = opts
    return {
      startedAt: new Date().toISOString(),
      options,
      sliceTokens,
      rows: [...rows].map(([id, rounds]) => ({ id, label: LABELS[id]!, rounds })),
      ratios,
      target: floodTarget(
        'cache-miss flood ≥ 0.5× b (pool, within each round)',
        floodRounds,
        rows.get('flood-pool')!.some((r) => r.wrapped) ? 'tokens wrapped' : undefined,
      ),
    }
  } finally {
    await stopAll(procs)
    await rm(dir, { recursive: true, force: true }).catch(() => {})
  }
}

export function floodMarkdown(r: FloodResult): string {
  const lines = [
    `# nhi-proxy cache-miss flood (${r.startedAt})`,
    '',
    `${r.options.rounds} interleaved rounds × ${r.options.durationS} s, ${r.options.connections} connections; floods send ${r.sliceTokens.toLocaleString('en')} never-seen RS256 tokens per round; cached callers ${r.options.rate} req/s open loop over 8 connections.`,
    '',
    '| id | configuration | req/s per round | p50 ms per round | p99 ms per round | proxy CPU µs/req per round | of it main thread |',
    '|---|---|---|---|---|---|---|',
  ]
  for (const row of r.rows) {
    const cpu = row.rounds.map((s) => s.proxyCpuUs).filter((x): x is number => x !== undefined)
    const main = row.rounds.map((s) => s.proxyMainCpuUs).filter((x): x is number => x !== undefined)
    lines.push(
      `| ${row.id} | ${row.label} | ${row.rounds.map((s) => s.rps.toFixed(0)).join(' / ')} | ${row.rounds.map((s) => s.p50Ms.toFixed(1)).join(' / ')} | ${row.rounds.map((s) => s.p99Ms.toFixed(1)).join(' / ')} | ${cpu.length ? cpu.map((c) => c.toFixed(0)).join(' / ') : '—'} | ${main.length ? main.map((c) => c.toFixed(0)).join(' / ') : '—'} |`,
    )
  }
  lines.push('', '| ratio (within each round, median over rounds) | value |', '|---|---:|')
  for (const [k, v] of Object.entries(r.ratios)) lines.push(`| ${k} | ${v.toFixed(2)} |`)
  lines.push('', '```', targetLine(r.target), '```', '')
  return lines.join('\n')
}
