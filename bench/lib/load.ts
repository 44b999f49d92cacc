// Load generators: wrk (plain HTTP, fastest) and our Node load generator (bench/loadgen.ts, which can
// present client certificates). Both report the same LoadResult.
import { execFile, execFileSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { spawnProcess, TS_NODE_FLAGS } from './procs.ts'

export interface LoadResult {
  requests: number
  durationS: number
  rps: number
  p50Ms: number
  p99Ms: number
  /** open-loop runs only */
  p999Ms?: number
  /** socket errors (connect/read/write/timeouts) */
  errors: number
  /** responses with status ≥ 400 (wrk) or outside 2xx (loadgen) */
  non2xx: number
  tool: 'wrk' | 'node'
}

export interface LoadSpec {
  url: string
  connections: number
  durationS: number
  path?: string
  userAgent?: string
  /** file with one bearer token per line */
  tokensFile?: string
  /** open loop: this many requests per second on a fixed schedule (Node load generator only) */
  rate?: number
  /** open loop: seconds at the same rate before measuring, not counted */
  warmupS?: number
  /** mTLS: client cert/key pairs spread over the connections, and the CA that signed the server */
  tls?: { ca: string; clients: { cert: string; key: string }[] }
}

const WRK_SCRIPT = fileURLToPath(new URL('../wrk/requests.lua', import.meta.url))
const LOADGEN = fileURLToPath(new URL('../loadgen.ts', import.meta.url))
const WRK_THREADS = 2

export function hasCommand(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

/** wrk when present; as root, try to install the Debian package once. */
export function ensureWrk(log: (s: string) => void): boolean {
  if (hasCommand('wrk')) return true
  if (process.getuid?.() === 0 && hasCommand('apt-get')) {
    log('wrk not found; trying apt-get install wrk')
    try {
      execFileSync('apt-get', ['install', '-y', '--no-install-recommends', 'wrk'], {
        stdio: 'ignore',
        timeout: 120_000,
        env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
      })
    } catch {}
  }
  return hasCommand('wrk')
}

export function runWrk(spec: LoadSpec): Promise<LoadResult> {
  const connections = Math.max(spec.connections, WRK_THREADS)
  const args = [
    `-t${WRK_THREADS}`,
    `-c${connections}`,
    `-d${Math.max(1, Math.round(spec.durationS))}s`,
    '--timeout',
    '5s',
    '-s',
    WRK_SCRIPT,
    spec.url,
  ]
  const env = {
    ...process.env,
    NHI_BENCH_TOKENS: spec.tokensFile ?? '',
    NHI_BENCH_THREADS: String(WRK_THREADS),
    NHI_BENCH_PATH: spec.path ?? '/',
    NHI_BENCH_UA: spec.userAgent ?? 'nhi-bench',
  }
  return new Promise((resolve, reject) => {
    const child = execFile(
      'wrk',
      args,
      { env, timeout: (spec.durationS + 30) * 1000, maxBuffer: 1 << 20 },
      (err, stdout, stderr) => {
        const line = stdout.split('\n').find((l) => l.startsWith('NHI_JSON '))
        if (!line) {
          reject(new Error(`wrk produced no result: ${err?.message ?? ''} ${stderr}`))
          return
        }
        const r = JSON.parse(line.slice(9)) as Record<string, number>
        const durationS = (r['durationUs'] ?? 1) / 1e6
        const requests = r['requests'] ?? 0
        resolve({
          requests,
          durationS,
          rps: requests / durationS,
          p50Ms: (r['p50Us'] ?? 0) / 1000,
          p99Ms: (r['p99Us'] ?? 0) / 1000,
          errors:
            (r['connectErrors'] ?? 0) +
            (r['readErrors'] ?? 0) +
            (r['writeErrors'] ?? 0) +
            (r['timeouts'] ?? 0),
          non2xx: r['non2xx'] ?? 0,
          tool: 'wrk',
        })
      },
    )
    child.stdin?.end()
  })
}

/** Runs bench/loadgen.ts in its own process (so its CPU is not the harness's) and parses its JSON line. */
export function runNodeLoad(spec: LoadSpec): Promise<LoadResult> {
  const proc = spawnProcess('loadgen', process.execPath, [...TS_NODE_FLAGS, LOADGEN, JSON.stringify(spec)], {
    stdout: 'pipe',
  })
  let out = ''
  proc.child.stdout?.setEncoding('utf8')
  proc.child.stdout?.on('data', (s: string) => {
    out += s
  })
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => void proc.stop(), (spec.durationS + 30) * 1000)
    proc.child.once('exit', () => {
      clearTimeout(timer)
      const line = out.split('\n').find((l) => l.startsWith('NHI_JSON '))
      if (!line) reject(new Error(`loadgen produced no result:\n${proc.stderrTail()}`))
      else resolve(JSON.parse(line.slice(9)) as LoadResult)
    })
  })
}

export function runLoad(spec: LoadSpec, useWrk: boolean): Promise<LoadResult> {
  return useWrk && !spec.tls && spec.rate === undefined ? runWrk(spec) : runNodeLoad(spec)
}
