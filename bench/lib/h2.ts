// The h2c configuration of the bench: a node:http2 load client against the h2c upstream directly, a bare
// node:http2 proxy, nginx grpc_pass (when installed) and nhi-proxy with an h2c:// upstream, in interleaved
// rounds, loopback only. Every request is a unary gRPC call (grpc_pass carries nothing else), the same for
// every configuration. Numbers are indicative: client, proxy and upstream share the machine's cores.
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { connect } from 'node:http2'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createHistogram } from 'node:perf_hooks'
import { spreadText, type Target, target } from './harness.ts'
import { startNginxGrpc } from './nginx.ts'
import { nhiCommand, REPO_ROOT } from './nhi.ts'
import {
  cpuMicros,
  freePort,
  type ServerProcess,
  spawnProcess,
  stopAll,
  TS_NODE_FLAGS,
  treeCpuMicros,
  waitForPorts,
} from './procs.ts'
import { median as medianOf } from './stats.ts'

export interface H2Options {
  durationS: number
  rounds: number
  /** h2 connections of the load client */
  sessions: number
  /** concurrent streams per connection */
  streams: number
  /** run nhi-proxy from dist/nhi-proxy.mjs rather than the TypeScript sources */
  dist: boolean
  log: (s: string) => void
}

export interface H2Result {
  id: 'h2-direct' | 'h2-bare' | 'h2-nginx' | 'h2-nhi'
  label: string
  requests: number
  errors: number
  non2xx: number
  rps: number
  p50Ms: number
  p99Ms: number
  /**
   * the proxy's CPU (utime+stime; nginx: master + worker) per call, µs; absent for h2-direct. /proc charges
   * it by the clock tick (10 ms): a short round of a light proxy (nginx, ≈ 35 µs a call) can show 0.
   */
  proxyCpuUs?: number
}

/** the request message of every call: a 5-byte gRPC prefix (uncompressed, length 2) and 2 bytes */
const GRPC_MESSAGE = Buffer.from([0, 0, 0, 0, 2, 0x08, 0x2a])

/**
 * closed loop: each of sessions × streams slots sends its next unary gRPC call when the previous one ended;
 * a call that does not end with `grpc-status: 0` counts as non-2xx
 */
export async function h2Load(url: string, o: Pick<H2Options, 'durationS' | 'sessions' | 'streams'>) {
  const hist = createHistogram()
  let requests = 0
  let errors = 0
  let non2xx = 0
  const deadline = performance.now() + o.durationS * 1000
  const one = (session: ReturnType<typeof connect>) =>
    new Promise<void>((resolve) => {
      const started = process.hrtime.bigint()
      const stream = session.request({
        ':method': 'POST',
        ':path': '/bench.Orders/Get',
        'content-type': 'application/grpc',
        te: 'trailers',
        'user-agent': 'bench-h2/1.0',
      })
      let ok = false
      stream.on('response', (h) => {
        if (Number(h[':status']) >= 300) non2xx++
        // trailers-only answers carry grpc-status in the headers
        else if (h['grpc-status'] !== undefined) ok = h['grpc-status'] === '0'
      })
      stream.on('trailers', (h) => {
        ok = h['grpc-status'] === '0'
      })
      let failed = false
      stream.on('error', () => {
        failed = true
        errors++
      })
      stream.on('close', () => {
        if (failed) return resolve()
        if (!ok) non2xx++
        requests++
        hist.record(Number(process.hrtime.bigint() - started) || 1)
        resolve()
      })
      stream.resume()
      stream.end(GRPC_MESSAGE)
    })
  const sessions = Array.from({ length: o.sessions }, () => {
    const s = connect(url)
    s.on('error', () => {})
    return s
  })
  const started = performance.now()
  await Promise.all(
    sessions.flatMap((s) =>
      Array.from({ length: o.streams }, async () => {
        while (performance.now() < deadline && !s.closed && !s.destroyed) await one(s)
      }),
    ),
  )
  const elapsedS = (performance.now() - started) / 1000
  for (const s of sessions) s.destroy()
  return {
    requests,
    errors,
    non2xx,
    rps: requests / elapsedS,
    p50Ms: hist.percentile(50) / 1e6,
    p99Ms: hist.percentile(99) / 1e6,
  }
}

function h2Server(role: 'upstream' | 'bare-proxy', port: number, upstream?: string): ServerProcess {
  return spawnProcess(`h2-${role}`, process.execPath, [
    ...TS_NODE_FLAGS,
    join(REPO_ROOT, 'bench/h2-servers.ts'),
    JSON.stringify({ role, port, ...(upstream ? { upstream } : {}) }),
  ])
}

export interface H2Run {
  /** the median round of each configuration */
  results: H2Result[]
  /** every round of each configuration, in run order */
  rounds: Partial<Record<H2Result['id'], H2Result[]>>
  /** nhi-proxy against the bare node:http2 proxy and nginx grpc_pass, judged within each round */
  targets: Target[]
  /** configurations left out, and why (nginx not installed) */
  notes: string[]
}

/** the h1 targets' counterparts: against a bare proxy on the same engine (node:http2), and against nginx */
export const H2_TARGETS = [
  { of: 'h2-bare', goal: 0.9, name: 'h2c: nhi ≥ 0.9× a bare node:http2 proxy (gRPC unary calls)' },
  { of: 'h2-nginx', goal: 0.6, name: 'h2c: nhi ≥ 0.6× nginx grpc_pass' },
] as const

/**
 * Each target from the ratio within every round (configurations of one round run seconds apart, so the ratio
 * sees less of the machine's drift than medians would), their median against the goal, and the rounds with
 * half their range: the noise a MISS's margin is judged against; the same per CPU-second when measured.
 */
export function h2Targets(rounds: H2Run['rounds']): Target[] {
  const nhi = rounds['h2-nhi'] ?? []
  const out: Target[] = []
  for (const t of H2_TARGETS) {
    const other = rounds[t.of] ?? []
    const n = Math.min(nhi.length, other.length)
    if (n === 0) continue
    const throughput: number[] = []
    const perCpu: number[] = []
    for (let i = 0; i < n; i++) {
      const x = nhi[i]!
      const y = other[i]!
      throughput.push(x.rps / y.rps)
      // a round whose CPU stayed under one clock tick (0) has no ratio: the note then leaves it out
      if (x.proxyCpuUs && y.proxyCpuUs) perCpu.push(y.proxyCpuUs / x.proxyCpuUs)
    }
    const note =
      n > 1
        ? `rounds ${spreadText(throughput)}${perCpu.length === n ? `; per CPU-second ${spreadText(perCpu)}` : ''}`
        : `one round${perCpu.length === 1 ? `; per CPU-second ${perCpu[0]!.toFixed(2)}` : ''}`
    out.push(target(t.name, medianOf(throughput), t.goal, 'min', '×', note))
  }
  return out
}

export async function runH2(o: H2Options): Promise<H2Run> {
  const procs: ServerProcess[] = []
  const dir = await mkdtemp(join(tmpdir(), 'nhi-bench-h2-'))
  try {
    // every server starts at once: none needs another to be listening to start
    const upPort = await freePort()
    const up = h2Server('upstream', upPort)
    procs.push(up)
    const upstream = `http://127.0.0.1:${upPort}`
    const barePort = await freePort()
    const bare = h2Server('bare-proxy', barePort, upstream)
    procs.push(bare)
    const nhiPort = await freePort()
    const adminPort = await freePort()
    const file = join(dir, 'h2.yaml')
    await writeFile(
      file,
      `service: bench-h2\nlisten:\n  http: 127.0.0.1:${nhiPort}\nupstream: h2c://127.0.0.1:${upPort}\n` +
        `admin: 127.0.0.1:${adminPort}\naudit:\n  output: /dev/null\nmetrics:\n  routes: [/bench.Orders/Get]\n` +
        // nothing here measures the drain: a stop exits at once instead of waiting out the drain delay
        'timeouts:\n  drainDelay: 0s\n',
    )
    const { command, args } = nhiCommand(file, { dist: o.dist })
    const nhi = spawnProcess('nhi-proxy-h2', command, args, { env: { NHI_LOG_LEVEL: 'warn' } })
    procs.push(nhi)
    const notes: string[] = []
    const nginxPort = await freePort()
    let nginx: ServerProcess | undefined
    const nginxStart = startNginxGrpc(dir, nginxPort, upPort).then(
      (p) => {
        nginx = p
        procs.push(p)
      },
      (err) => {
        notes.push(`nginx grpc_pass skipped: ${(err as Error).message.split('\n')[0]}`)
      },
    )
    const starting = await Promise.allSettled([
      waitForPorts(up, [upPort]),
      waitForPorts(bare, [barePort]),
      waitForPorts(nhi, [nhiPort, adminPort], 30_000),
      nginxStart,
    ])
    const failed = starting.find((s) => s.status === 'rejected')
    if (failed) throw failed.reason
    const targets: {
      id: H2Result['id']
      label: string
      url: string
      cpu?: () => Promise<number>
    }[] = [
      { id: 'h2-direct', label: 'h2c direct to the upstream', url: upstream },
      {
        id: 'h2-bare',
        label: 'bare node:http2 proxy',
        url: `http://127.0.0.1:${barePort}`,
        cpu: () => cpuMicros(bare.pid),
      },
      ...(nginx
        ? [
            {
              id: 'h2-nginx' as const,
              label: 'nginx grpc_pass, 1 worker',
              url: `http://127.0.0.1:${nginxPort}`,
              cpu: () => treeCpuMicros((nginx as ServerProcess).pid),
            },
          ]
        : []),
      {
        id: 'h2-nhi',
        label: 'nhi-proxy, h2c in and out',
        url: `http://127.0.0.1:${nhiPort}`,
        cpu: () => cpuMicros(nhi.pid),
      },
    ]
    const runs: H2Run['rounds'] = {}
    for (let round = 0; round < o.rounds; round++) {
      for (const t of targets) {
        const before = await t.cpu?.()
        const r: H2Result = { id: t.id, label: t.label, ...(await h2Load(t.url, o)) }
        const after = await t.cpu?.()
        if (before !== undefined && after !== undefined && r.requests > 0)
          r.proxyCpuUs = (after - before) / r.requests
        o.log(`${t.id} round ${round + 1}: ${r.requests} requests, ${r.rps.toFixed(0)} req/s`)
        runs[t.id] = [...(runs[t.id] ?? []), r]
      }
    }
    for (const n of notes) o.log(n)
    return {
      results: targets.map((t) => median(runs[t.id] ?? [])),
      rounds: runs,
      targets: h2Targets(runs),
      notes,
    }
  } finally {
    await stopAll(procs)
    await rm(dir, { recursive: true, force: true })
  }
}

/** the round with the median throughput, with every round's errors summed so none is hidden */
function median(rs: H2Result[]): H2Result {
  const sorted = [...rs].sort((a, b) => a.rps - b.rps)
  const mid = sorted[Math.floor(sorted.length / 2)] as H2Result
  return {
    ...mid,
    errors: rs.reduce((n, r) => n + r.errors, 0),
    non2xx: rs.reduce((n, r) => n + r.non2xx, 0),
  }
}

/** the h2c table, its targets (as `targetLine` writes them) and the configurations left out */
export function h2Markdown(run: H2Run, targetLine: (t: Target) => string): string {
  const perRound = (
    id: H2Result['id'],
    pick: (r: H2Result) => number | undefined,
    format: (v: number) => string,
  ) => {
    const values = (run.rounds[id] ?? []).map(pick)
    return values.length > 1 && values.every((v) => v !== undefined)
      ? values.map((v) => format(v!)).join(' / ')
      : '—'
  }
  const int = (v: number) => v.toFixed(0)
  // 0 is a round under one clock tick of CPU in all, not a proxy that costs nothing
  const cpu = (digits: number) => (us: number) => (us > 0 ? us.toFixed(digits) : '< 1 tick')
  const lines = [
    '| id | configuration | req/s | … per round | p50 ms | p99 ms | proxy CPU µs/call | … per round | errors |',
    '|---|---|---:|---:|---:|---:|---:|---:|---|',
    ...run.results.map(
      (r) =>
        `| ${r.id} | ${r.label} | ${r.rps.toFixed(0)} | ${perRound(r.id, (x) => x.rps, int)} | ${r.p50Ms.toFixed(2)} | ${r.p99Ms.toFixed(2)} | ${r.proxyCpuUs === undefined ? '—' : cpu(1)(r.proxyCpuUs)} | ${perRound(r.id, (x) => x.proxyCpuUs, cpu(0))} | ${r.errors + r.non2xx} |`,
    ),
    '',
    'Medians over rounds (the round of median throughput). Unary gRPC calls over h2c with prior knowledge;',
    'the load client, the proxies and the upstream share the machine’s cores. CPU is utime+stime from',
    '/proc/<pid>/stat over each round divided by its calls (nginx: master + worker); `< 1 tick`: a round',
    'that used less than one clock tick of CPU in all, left out of the per CPU-second ratios.',
  ]
  if (run.targets.length) lines.push('', '```', ...run.targets.map(targetLine), '```')
  if (run.notes.length) lines.push('', ...run.notes.map((n) => `- ${n}`))
  return `${lines.join('\n')}\n`
}
