// Cold start: from spawning `nhi-proxy run -c FILE` until the first request through it answers 200, with the
// bench's JWT configuration (a JWKS file, one identity rule, audit to /dev/null). Besides the wall clock it
// reads the process's CPU time (user + sys, all threads) at that first 200 — on a machine shared with other
// work the wall clock mostly measures the other work, the CPU time what nhi-proxy itself spends to start.

import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Target } from './harness.ts'
import { nhiCommand, nhiConfigYaml, startPlainUpstream } from './nhi.ts'
import { cpuMicros, freePort, type ServerProcess, sleep, spawnProcess, stopAll } from './procs.ts'
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
): Promise<ColdStartSample> {
  const port = await freePort()
  const adminPort = await freePort()
  const file = join(dir, `cold-${port}.yaml`)
  await writeFile(file, nhiConfigYaml({ port, adminPort, upstream, jwksFile }))
  const { command, args } = nhiCommand(file, { dist, orphanGuard: false })
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
        const cpuMs = (await cpuMicros(proc.pid)) / 1000
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

export interface ColdStartResult {
  date: string
  how: string
  starts: number
  loadAvg: number
  samples: ColdStartSample[]
  medianMs: number
  listenMedianMs: number
  cpuMedianMs: number
  targets: Target[]
}

const spread = (xs: readonly number[]) => `${Math.min(...xs).toFixed(0)}–${Math.max(...xs).toFixed(0)}`

/**
 * `npm run bench -- --cold-start-only`: `starts` cold starts one after the other (after one unrecorded start
 * that warms the page cache), against one upstream and one JWKS file; the ≤ 400 ms target on the median of
 * the wall clock to the first 200, with the CPU time beside it.
 */
export async function runColdStart(opts: {
  starts: number
  dist: boolean
  log: (s: string) => void
}): Promise<ColdStartResult> {
  const dir = await mkdtemp(join(tmpdir(), 'nhi-cold-'))
  const procs: ServerProcess[] = []
  try {
    const keys = [newSigningMaterial('RS256', 'cold-1'), newSigningMaterial('RS256', 'cold-2')]
    const jwksFile = join(dir, 'jwks.json')
    await writeFile(jwksFile, JSON.stringify({ keys: keys.map((k) => k.publicJwk) }))
    const upstream = await startPlainUpstream(procs)
    const loadAvg = (await import('node:os')).loadavg()[0] ?? 0
    await coldStartOnce(dir, upstream, jwksFile, opts.dist)
    const samples: ColdStartSample[] = []
    for (let i = 0; i < opts.starts; i++) {
      const s = await coldStartOnce(dir, upstream, jwksFile, opts.dist)
      opts.log(
        `  start ${i + 1}: listening ${s.listenMs.toFixed(0)} ms, first 200 ${s.firstOkMs.toFixed(0)} ms, CPU ${s.cpuMs.toFixed(0)} ms`,
      )
      samples.push(s)
    }
    const ok = samples.map((s) => s.firstOkMs)
    const cpu = samples.map((s) => s.cpuMs)
    const how = dist(opts.dist)
    const medianMs = median(ok)
    const cpuMedianMs = median(cpu)
    const t: Target = {
      name: `cold start to first proxied 200 ≤ ${COLD_START_TARGET_MS} ms`,
      value: medianMs,
      target: COLD_START_TARGET_MS,
      unit: 'ms',
      direction: 'max',
      pass: medianMs <= COLD_START_TARGET_MS,
      margin: COLD_START_TARGET_MS - medianMs,
      note: `median of ${ok.length}, spread ${spread(ok)} ms; CPU median ${cpuMedianMs.toFixed(0)} ms (${spread(cpu)})`,
    }
    return {
      date: new Date().toISOString(),
      how,
      starts: samples.length,
      loadAvg,
      samples,
      medianMs,
      listenMedianMs: median(samples.map((s) => s.listenMs)),
      cpuMedianMs,
      targets: [t],
    }
  } finally {
    await stopAll(procs)
    await rm(dir, { recursive: true, force: true })
  }
}

function dist(bundle: boolean): string {
  return bundle ? 'node dist/nhi-proxy.mjs run -c FILE' : 'node --import tsx src/cli/main.ts run -c FILE'
}

export function coldStartMarkdown(r: ColdStartResult, targetLine: (t: Target) => string): string {
  const row = (name: string, xs: number[]) =>
    `| ${name} | ${median(xs).toFixed(0)} | ${spread(xs)} | ${xs.map((x) => x.toFixed(0)).join(' / ')} |`
  return `${[
    `# Cold start (${r.date})`,
    '',
    `\`${r.how}\`, ${r.starts} starts after one unrecorded one, load average ${r.loadAvg.toFixed(1)} at the start.`,
    '',
    '| ms from spawn | median | spread | every start |',
    '|---|---:|---:|---|',
    row(
      'listening (first accepted connection)',
      r.samples.map((s) => s.listenMs),
    ),
    row(
      'first proxied 200',
      r.samples.map((s) => s.firstOkMs),
    ),
    row(
      'CPU time (user + sys) at the first 200',
      r.samples.map((s) => s.cpuMs),
    ),
    '',
    '```',
    ...r.targets.map(targetLine),
    '```',
  ].join('\n')}\n`
}
