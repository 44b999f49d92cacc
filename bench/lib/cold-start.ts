// Cold start: from spawning `nhi-proxy run -c FILE` until the first request through it answers 200, with the
// bench's JWT configuration (a JWKS file, one identity rule, audit to /dev/null). Besides the wall clock it
// reads the process's CPU time (user + sys, all threads) at that first 200 — on a machine shared with other
// work the wall clock mostly measures the other work, the CPU time what nhi-proxy itself spends to start.
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { request } from 'node:http'
import { loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Target } from './harness.ts'
import { nhiCommand, nhiConfigYaml, spawnPlainUpstream } from './nhi.ts'
import { freePort, type ServerProcess, sleep, spawnProcess, stopAll } from './procs.ts'
import { median } from './stats.ts'
import { newSigningMaterial } from './tokens.ts'

export const COLD_START_TARGET_MS = 400

export interface ColdStartSample {
  /** spawn → the first connection the proxy accepted (its listener is up) */
  listenMs: number
  /** spawn → the first 200 through it */
  firstOkMs: number
  /** the process's CPU time (user + sys, every thread) when the first 200 arrived */
  cpuMs: number
}

/**
 * CPU time (user + sys) of every thread of a process so far, in ms, from /proc/<pid>/task/<tid>/schedstat
 * (nanoseconds; /proc/<pid>/stat counts 10 ms ticks, too coarse for a start of a few hundred ms).
 */
async function processCpuMs(pid: number): Promise<number> {
  let ns = 0
  for (const tid of await readdir(`/proc/${pid}/task`)) {
    const text = await readFile(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').catch(() => '0')
    ns += Number(text.split(' ')[0])
  }
  return ns / 1e6
}

/** GET / once; the status, or 0 when no connection was accepted */
function probe(port: number): Promise<number> {
  return new Promise<number>((resolve) => {
    const req = request({ host: '127.0.0.1', port, path: '/', agent: false }, (res) => {
      res.resume()
      resolve(res.statusCode ?? 0)
    })
    req.on('error', () => resolve(0))
    req.end()
  })
}

/** One cold start of nhi-proxy in front of `upstream`, polling every 5 ms. */
export async function coldStartOnce(
  dir: string,
  upstream: string,
  jwksFile: string,
  dist: boolean,
  /** another bundle to start instead of dist/nhi-proxy.mjs (a baseline build) */
  bundle?: string,
): Promise<ColdStartSample> {
  const port = await freePort()
  const adminPort = await freePort()
  const file = join(dir, `cold-${port}.yaml`)
  await writeFile(file, nhiConfigYaml({ port, adminPort, upstream, jwksFile }))
  const { command, args } = bundle
    ? { command: process.execPath, args: [bundle, 'run', '-c', file] }
    : nhiCommand(file, { dist, orphanGuard: false })
  const started = performance.now()
  const proc = spawnProcess('cold-start', command, args, { env: { NHI_LOG_LEVEL: 'warn' } })
  try {
    const deadline = started + 15_000
    let listenMs: number | undefined
    while (performance.now() < deadline) {
      const status = await probe(port)
      const at = performance.now() - started
      if (status !== 0) listenMs ??= at
      if (status === 200) {
        const cpuMs = await processCpuMs(proc.pid)
        return { listenMs: listenMs ?? at, firstOkMs: at, cpuMs }
      }
      if (proc.child.exitCode !== null)
        throw new Error(`nhi-proxy exited during cold start:\n${proc.stderrTail()}`)
      await sleep(5)
    }
    throw new Error('nhi-proxy did not answer within 15 s of starting')
  } finally {
    await proc.stop()
  }
}

export interface ColdStartVariant {
  how: string
  samples: ColdStartSample[]
  medianMs: number
  listenMedianMs: number
  cpuMedianMs: number
}

export interface ColdStartResult {
  date: string
  starts: number
  /** unrecorded starts of each before them */
  warmStarts: number
  loadAvg: number
  /** this build first, then the baseline when one was given */
  variants: ColdStartVariant[]
  targets: Target[]
}

const spread = (xs: readonly number[]) => `${Math.min(...xs).toFixed(0)}–${Math.max(...xs).toFixed(0)}`

/**
 * `npm run bench -- --cold-start-only`: `starts` cold starts one after the other (after one unrecorded start
 * that warms the page cache), against one upstream and one JWKS file; the ≤ 400 ms target on the median of
 * the wall clock to the first 200, with the CPU time beside it. With a baseline bundle (another build of
 * nhi-proxy) the two alternate start by start, so both see the same machine.
 */
export async function runColdStart(opts: {
  starts: number
  dist: boolean
  baseline?: string
  /** unrecorded starts of each before the recorded ones (default 1; a smoke test whose files are cached may skip it) */
  warmStarts?: number
  log: (s: string) => void
}): Promise<ColdStartResult> {
  const warmStarts = opts.warmStarts ?? 1
  const dir = await mkdtemp(join(tmpdir(), 'nhi-cold-'))
  const procs: ServerProcess[] = []
  try {
    // the upstream starts while the keys are generated
    const { url: upstream, listening } = await spawnPlainUpstream(procs)
    const keys = [newSigningMaterial('RS256', 'cold-1'), newSigningMaterial('RS256', 'cold-2')]
    const jwksFile = join(dir, 'jwks.json')
    await writeFile(jwksFile, JSON.stringify({ keys: keys.map((k) => k.publicJwk) }))
    await listening
    const loadAvg = loadavg()[0] ?? 0
    const runs: { how: string; bundle?: string; samples: ColdStartSample[] }[] = [
      { how: command(opts.dist), samples: [] },
    ]
    // named by its role, not by its path: the results are committed
    if (opts.baseline)
      runs.push({ how: 'baseline build: node BASELINE run -c FILE', bundle: opts.baseline, samples: [] })
    for (let i = 0; i < warmStarts; i++)
      for (const r of runs) await coldStartOnce(dir, upstream, jwksFile, opts.dist, r.bundle)
    for (let i = 0; i < opts.starts; i++) {
      for (const r of runs) {
        const s = await coldStartOnce(dir, upstream, jwksFile, opts.dist, r.bundle)
        opts.log(
          `  start ${i + 1}${r.bundle ? ' (baseline)' : ''}: listening ${s.listenMs.toFixed(0)} ms, first 200 ${s.firstOkMs.toFixed(0)} ms, CPU ${s.cpuMs.toFixed(0)} ms`,
        )
        r.samples.push(s)
      }
    }
    const variants = runs.map(
      (r): ColdStartVariant => ({
        how: r.how,
        samples: r.samples,
        medianMs: median(r.samples.map((s) => s.firstOkMs)),
        listenMedianMs: median(r.samples.map((s) => s.listenMs)),
        cpuMedianMs: median(r.samples.map((s) => s.cpuMs)),
      }),
    )
    const current = variants[0]!
    const ok = current.samples.map((s) => s.firstOkMs)
    const cpu = current.samples.map((s) => s.cpuMs)
    const t: Target = {
      name: `cold start to first proxied 200 ≤ ${COLD_START_TARGET_MS} ms`,
      value: current.medianMs,
      target: COLD_START_TARGET_MS,
      unit: 'ms',
      direction: 'max',
      pass: current.medianMs <= COLD_START_TARGET_MS,
      margin: COLD_START_TARGET_MS - current.medianMs,
      note: `median of ${ok.length}, spread ${spread(ok)} ms; CPU median ${current.cpuMedianMs.toFixed(0)} ms (${spread(cpu)})`,
    }
    return {
      date: new Date().toISOString(),
      starts: opts.starts,
      warmStarts,
      loadAvg,
      variants,
      targets: [t],
    }
  } finally {
    await stopAll(procs)
    await rm(dir, { recursive: true, force: true })
  }
}

function command(bundle: boolean): string {
  return bundle
    ? 'node dist/nhi-proxy.mjs run -c FILE'
    : 'node --import ./scripts/register-ts.mjs src/cli/main.ts run -c FILE'
}

export function coldStartMarkdown(r: ColdStartResult, targetLine: (t: Target) => string): string {
  const row = (name: string, xs: number[]) =>
    `| ${name} | ${median(xs).toFixed(0)} | ${spread(xs)} | ${xs.map((x) => x.toFixed(0)).join(' / ')} |`
  const lines = [
    `# Cold start (${r.date})`,
    '',
    `${r.starts} starts of each after ${r.warmStarts === 1 ? 'one unrecorded one' : `${r.warmStarts} unrecorded ones`}${r.variants.length > 1 ? ', alternating' : ''}; load average ${r.loadAvg.toFixed(1)} at the start. CPU time is user + sys of every thread of the process, from spawn to the first 200.`,
  ]
  for (const v of r.variants) {
    lines.push(
      '',
      `\`${v.how}\``,
      '',
      '| ms from spawn | median | spread | every start |',
      '|---|---:|---:|---|',
      row(
        'listening (first accepted connection)',
        v.samples.map((s) => s.listenMs),
      ),
      row(
        'first proxied 200',
        v.samples.map((s) => s.firstOkMs),
      ),
      row(
        'CPU time at the first 200',
        v.samples.map((s) => s.cpuMs),
      ),
    )
  }
  lines.push('', '```', ...r.targets.map(targetLine), '```')
  return `${lines.join('\n')}\n`
}
