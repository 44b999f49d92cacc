// Allocation mode (`npm run bench -- --alloc`): bytes allocated on the JavaScript heap per request, for the
// bare engine (b), nhi-proxy with JWT attribution (c, 1,000 cached RS256 tokens) and nhi-proxy with an
// anonymous browser (e), against the issue's "c within 1.2× b", with the proxy's CPU per request from the
// same runs; `--xfcc` adds nhi-proxy behind a trusted mesh ingress (x, 300 rotating XFCC identities).
//
// Method. Every proxy runs with `--trace-gc --trace-gc-nvp`: V8 prints one line per collection to stdout
// with the bytes `allocated` (`allocated=N` up to Node 24, `"allocated":N` in Node 26's JSON), the heap's
// object size at the start of this collection minus at the end of the previous one, i.e. what the mutator
// allocated in between (new space, pretenured and large objects alike; Buffer backing stores live outside
// the heap and are not counted). Nothing is forced. The harness drives the load itself (an undici Pool with
// N concurrent request loops) so it can read each GC line the moment it is printed and note how many
// responses had completed by then. The measured window runs from one collection G0 to a later one Gk of the
// proxy's main isolate: bytes = Σ allocated of G1..Gk (exactly the mutator time between the end of G0 and
// the start of Gk), requests = responses completed between reading G0 and reading Gk. Why this is not
// biased: both ends are collections, so no young-generation bytes "not yet collected" are left out at
// either end (summing over a fixed request count would leave out up to a whole semi-space); with a fixed
// number of request loops the requests in flight — allocated for but not yet counted — are as many at Gk as
// at G0 on average, and the pipe's delay from the print to our read is the same at both ends, so both
// errors cancel instead of accumulating. The window is at least `requests` responses and `minGcs`
// collections long, which makes the residual (≤ connections requests at each end) small. GC lines of other
// isolates (the token-verification worker, a loader thread) are not the request path; they are counted and
// reported but not added.
import { existsSync } from 'node:fs'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { Pool } from 'undici'
import { BROWSER_UA, spreadText, type Target, target } from './harness.ts'
import { xfccIdentity } from './memory.ts'
import { nhiCommand, nhiConfigYaml, REPO_ROOT, spawnPlainUpstream } from './nhi.ts'
import {
  cpuMicros,
  freePort,
  type ServerProcess,
  spawnProcess,
  stopAll,
  TS_NODE_FLAGS,
  waitForPorts,
} from './procs.ts'
import { median } from './stats.ts'
import { rotatingTokens } from './tokens.ts'

export type AllocId = 'b' | 'c' | 'e' | 'x'

export interface AllocOptions {
  rounds: number
  /** responses per measured window, at least */
  requests: number
  /** collections of the main isolate per measured window, at least */
  minGcs: number
  /** requests per configuration before the first round (JIT, pools, token cache) */
  warmup: number
  connections: number
  /** nhi-proxy from dist/nhi-proxy.mjs (else the TypeScript sources) */
  dist: boolean
  /** a window that has not reached `minGcs` collections by then ends with what it has */
  maxWindowS?: number
  /** also configuration x: XFCC from a trusted peer */
  xfcc?: boolean
  log: (line: string) => void
}

export interface AllocSample {
  /** responses completed inside the window (first to last collection) */
  requests: number
  /** collections inside the window (allocation summed over them) */
  gcs: number
  bytes: number
  bytesPerRequest: number
  /** proxy CPU (utime+stime) over the whole measured phase divided by its responses */
  cpuUsPerRequest: number
  rps: number
  errors: number
  non2xx: number
  /** collections of other isolates of the proxy process during the phase (not counted) */
  otherIsolateGcs: number
  /** collection kinds (`gc`) seen in the window, e.g. { s: 52, mc: 1 } */
  kinds: Record<string, number>
}

export interface AllocRow {
  id: AllocId
  label: string
  rounds: AllocSample[]
  bytesPerRequest: number
  cpuUsPerRequest: number
}

export interface AllocResult {
  startedAt: string
  node: string
  loadAvg: number[]
  options: Omit<AllocOptions, 'log'>
  rows: AllocRow[]
  /** within each round, then the median over rounds */
  ratios: Record<string, { median: number; rounds: number[] }>
  targets: Target[]
}

const LABELS: Record<AllocId, string> = {
  b: 'bare proxy (the engine alone), 1,000 rotating tokens forwarded',
  c: 'nhi-proxy, JWT RS256 (1,000 rotating tokens, cache warm)',
  e: 'nhi-proxy, anonymous browser user agent',
  x: 'nhi-proxy, XFCC from a trusted peer (300 rotating identities, cache warm)',
}

/** the XFCC identities configuration x rotates through: a few hundred workloads behind one ingress */
const XFCC_IDENTITIES = 300

export const ALLOC_TARGET = 1.2
const PATH = '/api/v1/orders/42'

interface GcEvent {
  isolate: string
  kind: string
  allocated: number
  /** responses completed when the line was read */
  done: number
}

// `[pid:0xisolate]` (Node 20/22) or `[pid:0xisolate:thread]` (Node 24 and 26), then name=value pairs,
// `N ms: pause=… gc=s … allocated=N` (Node 20 to 24), or one JSON object,
// `N ms: GC: {"pause":…,"gc":"s",…,"allocated":N,…}` (Node 26)
const GC_LINE = /^\[\d+:(0x[0-9a-f]+)[^\]]*\].*?\bgc(?:=|":")([^\s"]+).*?\ballocated(?:=|":)(\d+)/

/** One line of V8's `--trace-gc-nvp` output: the collection it reports, or undefined for any other line. */
export function parseGcLine(line: string): { isolate: string; kind: string; allocated: number } | undefined {
  const m = GC_LINE.exec(line)
  return m ? { isolate: m[1]!, kind: m[2]!, allocated: Number(m[3]) } : undefined
}

/** A proxy process whose stdout carries V8's GC trace; `onGc` sees every collection as it is printed. */
interface Traced {
  proc: ServerProcess
  url: string
  onGc?: (e: Omit<GcEvent, 'done'>) => void
}

function traceGc(proc: ServerProcess, url: string): Traced {
  const t: Traced = { proc, url }
  let pending = ''
  proc.child.stdout?.setEncoding('utf8')
  proc.child.stdout?.on('data', (chunk: string) => {
    pending += chunk
    let nl = pending.indexOf('\n')
    while (nl >= 0) {
      const gc = parseGcLine(pending.slice(0, nl))
      pending = pending.slice(nl + 1)
      nl = pending.indexOf('\n')
      if (gc) t.onGc?.(gc)
    }
    // a proxy that logs a very long line without a newline must not grow this without bound
    if (pending.length > 1 << 16) pending = ''
  })
  return t
}

const TRACE_FLAGS = ['--trace-gc', '--trace-gc-nvp']

async function startTracedBare(procs: ServerProcess[], upstream: string): Promise<Traced> {
  const port = await freePort()
  const proc = spawnProcess(
    'bare-undici',
    process.execPath,
    [
      ...TRACE_FLAGS,
      ...TS_NODE_FLAGS,
      join(REPO_ROOT, 'bench/bare-proxy.ts'),
      JSON.stringify({ port, upstream }),
    ],
    { stdout: 'pipe' },
  )
  procs.push(proc)
  const traced = traceGc(proc, `http://127.0.0.1:${port}`)
  await waitForPorts(proc, [port])
  return traced
}

async function startTracedNhi(
  name: string,
  dir: string,
  procs: ServerProcess[],
  upstream: string,
  jwksFile: string,
  dist: boolean,
  extra: { nodeArgs?: string[]; env?: Record<string, string>; trustedProxies?: string[] } = {},
): Promise<Traced> {
  const port = await freePort()
  const adminPort = await freePort()
  const file = join(dir, `${name}.yaml`)
  const trustedProxies = extra.trustedProxies
  await writeFile(
    file,
    nhiConfigYaml({ port, adminPort, upstream, jwksFile, ...(trustedProxies ? { trustedProxies } : {}) }),
  )
  const { command, args } = nhiCommand(file, { dist })
  const proc = spawnProcess(name, command, [...TRACE_FLAGS, ...(extra.nodeArgs ?? []), ...args], {
    env: { NHI_LOG_LEVEL: 'warn', ...extra.env },
    stdout: 'pipe',
  })
  procs.push(proc)
  const traced = traceGc(proc, `http://127.0.0.1:${port}`)
  await waitForPorts(proc, [port, adminPort], 30_000)
  return traced
}

/** Closed-loop load from this process, counting completed responses as they come in. */
class Driver {
  done = 0
  errors = 0
  non2xx = 0
  private readonly pool: Pool
  private sent = 0

  constructor(
    url: string,
    private readonly connections: number,
    /** headers of the n-th request */
    private readonly headers: (n: number) => Record<string, string>,
  ) {
    this.pool = new Pool(url, { connections, pipelining: 1 })
  }

  /** runs `connections` request loops until `stop()` is true (checked after every response) */
  async run(stop: () => boolean): Promise<void> {
    const lane = async () => {
      while (!stop()) {
        try {
          const res = await this.pool.request({
            path: PATH,
            method: 'GET',
            headers: this.headers(this.sent++),
          })
          await res.body.dump()
          if (res.statusCode < 200 || res.statusCode > 299) this.non2xx++
        } catch {
          this.errors++
          // a refused connection fails at once: do not spin on it
          await new Promise((r) => setTimeout(r, 10))
        }
        this.done++
      }
    }
    await Promise.all(Array.from({ length: this.connections }, lane))
  }

  close(): Promise<void> {
    return this.pool.close()
  }
}

async function measure(
  t: Traced,
  driver: Driver,
  opts: Pick<AllocOptions, 'requests' | 'minGcs' | 'maxWindowS'>,
): Promise<AllocSample> {
  const events: GcEvent[] = []
  t.onGc = (e) => events.push({ ...e, done: driver.done })
  const startDone = driver.done
  const startErrors = driver.errors
  const startNon2xx = driver.non2xx
  const cpuBefore = await cpuMicros(t.proc.pid)
  const started = performance.now()
  const deadline = started + (opts.maxWindowS ?? 120) * 1000
  // the busiest isolate is the one serving the requests; it is known once collections come in
  const mainEvents = () => {
    const counts = new Map<string, number>()
    for (const e of events) counts.set(e.isolate, (counts.get(e.isolate) ?? 0) + 1)
    let best = ''
    let most = -1
    for (const [iso, n] of counts)
      if (n > most) {
        best = iso
        most = n
      }
    return events.filter((e) => e.isolate === best)
  }
  let checked = 0
  let enough = false
  await driver.run(() => {
    // sticky: every request loop must see it, not only the one that asked when it turned true
    if (enough) return true
    if (performance.now() > deadline) enough = true
    // the events are scanned only every few hundred responses
    else if (driver.done - checked >= 256) {
      checked = driver.done
      const main = mainEvents()
      const first = main[0]
      const last = main.at(-1)
      // the window ends at a collection, so it is long enough once the last one is far enough from the first
      enough =
        first !== undefined &&
        last !== undefined &&
        main.length > opts.minGcs &&
        last.done - first.done >= opts.requests
    }
    return enough
  })
  const elapsedS = (performance.now() - started) / 1000
  const cpuAfter = await cpuMicros(t.proc.pid)
  t.onGc = undefined
  const main = mainEvents()
  const phaseRequests = driver.done - startDone
  const window = main.slice(1)
  const requests = main.length >= 2 ? main.at(-1)!.done - main[0]!.done : 0
  const bytes = window.reduce((s, e) => s + e.allocated, 0)
  const kinds: Record<string, number> = {}
  for (const e of window) kinds[e.kind] = (kinds[e.kind] ?? 0) + 1
  return {
    requests,
    gcs: window.length,
    bytes,
    bytesPerRequest: requests > 0 ? bytes / requests : Number.NaN,
    cpuUsPerRequest: (cpuAfter - cpuBefore) / Math.max(1, phaseRequests),
    rps: phaseRequests / elapsedS,
    errors: driver.errors - startErrors,
    non2xx: driver.non2xx - startNon2xx,
    otherIsolateGcs: events.length - main.length,
    kinds,
  }
}

export async function runAlloc(opts: AllocOptions): Promise<AllocResult> {
  const log = opts.log
  const startedAt = new Date().toISOString()
  const loadAvg = loadavg().map((x) => Math.round(x * 100) / 100)
  const dir = await mkdtemp(join(tmpdir(), 'nhi-alloc-bench-'))
  const procs: ServerProcess[] = []
  const drivers: Driver[] = []
  try {
    const { tokens, jwksFile } = await rotatingTokens(dir)
    const bearer = tokens.map((x) => `Bearer ${x}`)

    const { url: upstream, listening } = await spawnPlainUpstream(procs)
    const ids: AllocId[] = opts.xfcc ? ['b', 'c', 'e', 'x'] : ['b', 'c', 'e']
    const start = (id: AllocId) =>
      id === 'b'
        ? startTracedBare(procs, upstream)
        : startTracedNhi(`nhi-alloc-${id}`, dir, procs, upstream, jwksFile, opts.dist, {
            ...(id === 'x' ? { trustedProxies: ['127.0.0.1/32'] } : {}),
          })
    const started = await Promise.all(ids.map(start))
    await listening
    const traced = Object.fromEntries(ids.map((id, i) => [id, started[i]!])) as Record<AllocId, Traced>
    // b gets the tokens too, as in the throughput bench: it forwards the same request bytes as c
    const withToken = (n: number) => ({
      'user-agent': 'nhi-bench',
      authorization: bearer[n % bearer.length]!,
    })
    const browser = () => ({ 'user-agent': BROWSER_UA })
    const identities = Array.from({ length: XFCC_IDENTITIES }, (_, i) => xfccIdentity(i))
    const withXfcc = (n: number) => ({
      'user-agent': 'nhi-bench',
      'x-forwarded-client-cert': identities[n % identities.length]!,
    })
    const headersOf = { b: withToken, c: withToken, e: browser, x: withXfcc }
    const make = (id: AllocId): Driver => {
      const d = new Driver(traced[id].url, opts.connections, headersOf[id])
      drivers.push(d)
      return d
    }
    const driver = Object.fromEntries(ids.map((id) => [id, make(id)])) as Record<AllocId, Driver>

    log(`warm-up: ${opts.warmup.toLocaleString('en')} requests each (JIT, keep-alive pools, token cache)`)
    for (const id of ids) {
      const d = driver[id]
      const until = d.done + opts.warmup
      await d.run(() => d.done >= until)
      if (d.errors > 0 || d.non2xx > 0)
        throw new Error(
          `${id}: ${d.errors} errors, ${d.non2xx} non-2xx in the warm-up\n${traced[id].proc.stderrTail()}`,
        )
    }

    const rows = new Map<AllocId, AllocSample[]>(ids.map((id) => [id, []]))
    for (let round = 1; round <= opts.rounds; round++) {
      log(`round ${round}`)
      for (const id of ids) {
        const s = await measure(traced[id], driver[id], opts)
        rows.get(id)!.push(s)
        log(
          `  ${id}  ${(s.bytesPerRequest / 1024).toFixed(2).padStart(7)} KB/req over ${s.requests.toLocaleString('en')} requests and ${s.gcs} GCs  ${s.cpuUsPerRequest.toFixed(0)} µs CPU/req  ${s.rps.toFixed(0)} req/s` +
            (s.errors || s.non2xx ? `  errors ${s.errors} non-2xx ${s.non2xx}` : ''),
        )
      }
    }

    const perRound = (f: (i: number) => number) => Array.from({ length: opts.rounds }, (_, i) => f(i))
    const bpr = (id: AllocId, i: number) => rows.get(id)![i]!.bytesPerRequest
    const ratio = (a: AllocId, over: AllocId = 'b') => {
      const rounds = perRound((i) => bpr(a, i) / bpr(over, i))
      return { median: median(rounds), rounds }
    }
    const ratios: Record<string, { median: number; rounds: number[] }> = {
      'c/b': ratio('c'),
      'e/b': ratio('e'),
      ...(opts.xfcc ? { 'x/b': ratio('x'), 'x/c': ratio('x', 'c') } : {}),
    }
    const targets = (['c', 'e'] as const).map((id): Target => {
      const r = ratios[`${id}/b`]!
      return target(
        `allocation per request ${id} ≤ ${ALLOC_TARGET}× b`,
        r.median,
        ALLOC_TARGET,
        'max',
        '×',
        `rounds ${spreadText(r.rounds)}`,
      )
    })
    const { log: _log, ...options } = opts
    return {
      startedAt,
      node: process.version,
      loadAvg,
      options,
      rows: ids.map((id) => {
        const samples = rows.get(id)!
        return {
          id,
          label: LABELS[id],
          rounds: samples,
          bytesPerRequest: median(samples.map((s) => s.bytesPerRequest)),
          cpuUsPerRequest: median(samples.map((s) => s.cpuUsPerRequest)),
        }
      }),
      ratios,
      targets,
    }
  } finally {
    await Promise.all(drivers.map((d) => d.close().catch(() => {})))
    await stopAll(procs)
    await rm(dir, { recursive: true, force: true }).catch(() => {})
  }
}

const kb = (x: number) => (Number.isFinite(x) ? (x / 1024).toFixed(2) : '—')

export function allocMarkdown(r: AllocResult, targetLine: (t: Target) => string): string {
  const o = r.options
  const lines = [
    `# nhi-proxy allocation per request (${r.startedAt})`,
    '',
    `Node ${r.node}, load average ${r.loadAvg.join(' / ')} at start. ${o.rounds} interleaved round(s); each window ≥ ${o.requests.toLocaleString('en')} requests and > ${o.minGcs} collections of the proxy's main isolate (or ${o.maxWindowS ?? 120} s, whichever comes first), ${o.connections} concurrent request loops, after ${o.warmup.toLocaleString('en')} warm-up requests per configuration. nhi-proxy ran ${o.dist ? 'from the bundle (dist/nhi-proxy.mjs)' : 'from the TypeScript sources'}.`,
    '',
    'Bytes = Σ `allocated` of the `--trace-gc-nvp` lines between two collections, divided by the responses completed between them (JavaScript heap only; Buffer backing stores are outside it).',
    '',
    '| id | configuration | KB/req (median) | KB/req per round | requests / GCs per round | proxy CPU µs/req (median) | … per round | req/s per round |',
    '|---|---|---:|---|---|---:|---|---|',
  ]
  for (const row of r.rows) {
    lines.push(
      `| ${row.id} | ${row.label} | ${kb(row.bytesPerRequest)} | ${row.rounds.map((s) => kb(s.bytesPerRequest)).join(' / ')} | ${row.rounds.map((s) => `${s.requests.toLocaleString('en')} / ${s.gcs}`).join(', ')} | ${row.cpuUsPerRequest.toFixed(0)} | ${row.rounds.map((s) => s.cpuUsPerRequest.toFixed(0)).join(' / ')} | ${row.rounds.map((s) => s.rps.toFixed(0)).join(' / ')} |`,
    )
  }
  lines.push('', '| ratio (within each round) | median | per round |', '|---|---:|---|')
  for (const [k, v] of Object.entries(r.ratios))
    lines.push(`| ${k} | ${v.median.toFixed(2)} | ${v.rounds.map((x) => x.toFixed(2)).join(' / ')} |`)
  lines.push('', '```', ...r.targets.map(targetLine), '```', '')
  return lines.join('\n')
}

export interface AllocSite {
  /** function (file:line) */
  site: string
  bytesPerRequest: number
  /** of everything sampled */
  share: number
}

export interface AllocSitesResult {
  startedAt: string
  node: string
  requests: number
  /** the profile's estimate of all bytes allocated per request (compare with the GC trace's) */
  sampledBytesPerRequest: number
  /** where the bytes are allocated (the allocating function itself, often inside Node or a library) */
  self: AllocSite[]
  /** the same bytes charged to the innermost nhi-proxy function on the stack: what our code causes */
  nhi: AllocSite[]
}

interface ProfileNode {
  callFrame: { functionName: string; url: string; lineNumber: number }
  selfSize: number
  children: ProfileNode[]
}

const SRC_URL = `${pathToFileURL(join(REPO_ROOT, 'src')).href}/`

function frameName(f: ProfileNode['callFrame']): string {
  const file = f.url.startsWith(SRC_URL)
    ? `src/${f.url.slice(SRC_URL.length)}`
    : f.url.startsWith('node:')
      ? f.url
      : (f.url.split('/node_modules/').at(-1) ?? f.url)
  // the type-stripped output does not keep the source lines, so our own files are named without one
  const line = f.url && !f.url.startsWith(SRC_URL) ? `:${f.lineNumber + 1}` : ''
  return `${f.functionName || '(anonymous)'} (${file || 'native'}${line})`
}

/**
 * Allocation sites of configuration c: nhi-proxy from the TypeScript sources (readable names, unlike the
 * minified bundle), sampled while `requests` cached-token requests go through it. Indicative, as any sampling
 * profile: it is the guide to where the bytes go, the GC-trace numbers of `runAlloc` are the measurement.
 */
export async function runAllocSites(opts: {
  requests: number
  warmup: number
  connections: number
  top: number
  log: (line: string) => void
}): Promise<AllocSitesResult> {
  const dir = await mkdtemp(join(tmpdir(), 'nhi-alloc-sites-'))
  const procs: ServerProcess[] = []
  let driver: Driver | undefined
  try {
    const { tokens, jwksFile } = await rotatingTokens(dir)
    const bearer = tokens.map((x) => `Bearer ${x}`)
    const { url: upstream, listening } = await spawnPlainUpstream(procs)
    const profileFile = join(dir, 'heap.json')
    const c = await startTracedNhi('nhi-alloc-sites', dir, procs, upstream, jwksFile, false, {
      nodeArgs: ['--import', join(REPO_ROOT, 'bench/heap-sample.mjs')],
      env: { NHI_HEAP_SAMPLE_FILE: profileFile },
    })
    await listening
    driver = new Driver(c.url, opts.connections, (n) => ({
      'user-agent': 'nhi-bench',
      authorization: bearer[n % bearer.length]!,
    }))
    const d = driver
    const run = async (n: number) => {
      const until = d.done + n
      await d.run(() => d.done >= until)
    }
    opts.log(`warm-up: ${opts.warmup.toLocaleString('en')} requests`)
    await run(opts.warmup)
    const waitFor = async (file: string) => {
      const deadline = Date.now() + 30_000
      while (!existsSync(file)) {
        if (Date.now() > deadline) throw new Error(`no ${file}:\n${c.proc.stderrTail()}`)
        await new Promise((r) => setTimeout(r, 20))
      }
    }
    c.proc.child.kill('SIGUSR2')
    await waitFor(`${profileFile}.started`)
    const from = d.done
    opts.log(`sampling over ${opts.requests.toLocaleString('en')} requests`)
    await run(opts.requests)
    const requests = d.done - from
    c.proc.child.kill('SIGUSR2')
    await waitFor(profileFile)
    // the file is written in one call; a partial read would fail to parse, so retry briefly
    let head: ProfileNode | undefined
    for (let i = 0; i < 50 && !head; i++) {
      try {
        head = (JSON.parse(await readFile(profileFile, 'utf8')) as { head: ProfileNode }).head
      } catch {
        await new Promise((r) => setTimeout(r, 50))
      }
    }
    if (!head) throw new Error('heap profile unreadable')
    const self = new Map<string, number>()
    const nhi = new Map<string, number>()
    let total = 0
    const walk = (n: ProfileNode, ours: string | undefined) => {
      const name = frameName(n.callFrame)
      const mine = n.callFrame.url.startsWith(SRC_URL) ? name : ours
      if (n.selfSize > 0) {
        total += n.selfSize
        self.set(name, (self.get(name) ?? 0) + n.selfSize)
        const key = mine ?? '(no nhi-proxy frame on the stack)'
        nhi.set(key, (nhi.get(key) ?? 0) + n.selfSize)
      }
      for (const child of n.children) walk(child, mine)
    }
    walk(head, undefined)
    const top = (m: Map<string, number>) =>
      [...m]
        .sort((a, b) => b[1] - a[1])
        .slice(0, opts.top)
        .map(([site, bytes]) => ({ site, bytesPerRequest: bytes / requests, share: bytes / total }))
    return {
      startedAt: new Date().toISOString(),
      node: process.version,
      requests,
      sampledBytesPerRequest: total / requests,
      self: top(self),
      nhi: top(nhi),
    }
  } finally {
    await driver?.close().catch(() => {})
    await stopAll(procs)
    await rm(dir, { recursive: true, force: true }).catch(() => {})
  }
}

export function allocSitesMarkdown(r: AllocSitesResult): string {
  const table = (sites: AllocSite[]) => [
    '| # | site | bytes/req | share |',
    '|---:|---|---:|---:|',
    ...sites.map(
      (s, i) =>
        `| ${i + 1} | \`${s.site}\` | ${s.bytesPerRequest.toFixed(0)} | ${(s.share * 100).toFixed(1)} % |`,
    ),
  ]
  return [
    `# nhi-proxy allocation sites, configuration c (${r.startedAt})`,
    '',
    `Node ${r.node}; sampling heap profile (collected objects included) over ${r.requests.toLocaleString('en')} cached-token requests, nhi-proxy from the TypeScript sources; the profile estimates ${(r.sampledBytesPerRequest / 1024).toFixed(1)} KB per request in all.`,
    '',
    '## By the innermost nhi-proxy function on the stack',
    '',
    ...table(r.nhi),
    '',
    '## By the allocating function',
    '',
    ...table(r.self),
    '',
  ].join('\n')
}
