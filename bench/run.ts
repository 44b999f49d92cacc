// npm run bench [-- --duration 10s --rounds 3 --connections 64 --rate 1000 | --quick | --cold-start-only | --memory | --memory-quick | --flood | --otlp | --h2 | --prom | --workers | --pod-scrape | --alloc [--xfcc] | --alloc-sites]
// Throughput/latency/CPU of nhi-proxy against baselines, (memory modes) RSS and series under identity
// cardinality floods, or (flood mode) the cache-miss flood alone. Writes bench/results/latest.{md,json,svg}
// (memory: memory.{md,json}; flood: flood.{md,json}; alloc: alloc.{md,json}; alloc-sites: alloc-sites.{md,json}).
import { writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Command, InvalidArgumentError } from 'commander'
import { parseDuration } from '../src/util/duration.ts'
import { allocMarkdown, allocSitesMarkdown, runAlloc, runAllocSites } from './lib/alloc.ts'
import { coldStartMarkdown, runColdStart } from './lib/cold-start.ts'
import { floodMarkdown, runFlood } from './lib/flood.ts'
import { type H2Options, h2Markdown, runH2 } from './lib/h2.ts'
import { runBench } from './lib/harness.ts'
import { ensureWrk } from './lib/load.ts'
import { memoryMarkdown, runMemory, writeMemoryResults } from './lib/memory.ts'
import { buildDist, freshDist } from './lib/nhi.ts'
import { otlpCostMarkdown, runOtlpCost } from './lib/otlp-cost.ts'
import { podScrapeMarkdown, runPodScrape } from './lib/pod-scrape.ts'
import { promCostMarkdown, runPromCost } from './lib/prom-cost.ts'
import { markdown, targetLine, writeResults } from './lib/report.ts'
import { runWorkersBench, workersMarkdown } from './lib/workers.ts'

const positive = (v: string) => {
  const n = Number(v)
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError('expected a positive number')
  return n
}

/** seconds, from a duration as config files write them (10s, 2m) or a bare number of seconds */
const seconds = (v: string) => {
  const text = v.trim()
  const ms = parseDuration(/^\d+(\.\d+)?$/.test(text) ? Number(text) : text)
  if (ms === undefined || ms <= 0) throw new InvalidArgumentError('expected a duration such as 10s or 2m')
  return ms / 1000
}

const nonNegative = (v: string) => {
  const n = Number(v)
  if (!Number.isFinite(n) || n < 0) throw new InvalidArgumentError('expected a number ≥ 0')
  return n
}

const program = new Command()
  .name('bench')
  .option('--duration <duration>', 'per configuration per round, e.g. 10s or 1m (or seconds)', seconds, 10)
  .option('--rounds <n>', 'interleaved rounds', positive, 3)
  .option('--connections <n>', 'concurrent connections', positive, 64)
  .option(
    '--rate <n>',
    'req/s of the open-loop latency rounds (a, b, c, nginx at a fixed rate below saturation; 0 skips them); otlp mode: every row at this rate (open loop) instead of wrk',
    nonNegative,
    1000,
  )
  .option('--quick', '1 round of 2 s, fewer flood tokens, no build for the cold start')
  .option('--no-h2-rounds', 'throughput mode: leave out the h2c (gRPC) rounds that follow the HTTP/1.1 ones')
  .option('--no-warmup', 'skip the warm-up pass')
  .option('--no-write', 'print only; do not write bench/results')
  .option('--audit <output>', 'nhi-proxy audit output (off | /dev/null | file)', '/dev/null')
  .option(
    '--cold-start <how>',
    'build (npm run build, dist) | sources (the TypeScript sources; `tsx` is accepted, its former name) | skip',
    'build',
  )
  .option(
    '--cold-start-only',
    'cold start mode: N starts of the bundle (--starts, default 15) to the first proxied 200, wall clock and CPU time',
  )
  .option('--starts <n>', 'cold start mode: recorded starts', positive, 15)
  .option(
    '--cold-start-baseline <bundle>',
    'cold start mode: another build of dist/nhi-proxy.mjs to start alternately with this one, for before/after',
  )
  .option('--memory', 'memory mode: 1,000,000 tokens + 100,000 XFCC identities, each sent twice')
  .option('--memory-quick', 'memory mode with 100,000 tokens + 10,000 XFCC identities, each sent twice')
  .option(
    '--verify-workers <n>',
    'memory mode: jwt.verifyWorkers of the proxy (default: its default)',
    nonNegative,
  )
  .option(
    '--flood',
    'flood mode: the cache-miss flood alone, pool vs inline verification, cached callers during it (2 rounds × 4 s unless given)',
  )
  .option(
    '--otlp',
    'OTLP mode: export off vs on (live collector) vs on with the collector down, same JWT load (2 rounds × 4 s unless given)',
  )
  .option(
    '--h2',
    'h2c mode: nhi-proxy vs a bare node:http2 proxy vs nginx grpc_pass vs direct, unary gRPC calls',
  )
  .option(
    '--prom',
    'prom-client mode: per-request update and scrape cost of the nhi_* families, hand-rendered vs prom-client, 1,000 identities in-process (5 rounds unless given)',
  )
  .option(
    '--prom-traffic <mix>',
    "prom-client mode: bench (one route per identity, the bench's request) | routes (three routes, four method/status pairs)",
    'bench',
  )
  .option(
    '--workers',
    'workers mode: nhi-proxy workers: 1 vs workers: 2 vs nginx with 1 and 2 workers, JWT load (2 rounds × 5 s unless given)',
  )
  .option(
    '--pod-scrape',
    "pod scrape mode: CPU of a workers: 2 primary's event loop per /metrics at 1,000 identities, every series changed and idle, both formats (60 scrapes per row; --quick 10)",
  )
  .option(
    '--entry <file>',
    'pod scrape mode: measure this nhi-proxy bundle (an earlier build) instead of dist/; otlp mode: run this build with export on and with the collector down beside the others (c-otlp-base, c-otlp-down-base)',
  )
  .option(
    '--alloc',
    'allocation mode: JavaScript heap bytes per request from the GC trace, bare engine vs nhi-proxy JWT vs browser, and CPU per request (3 rounds × ≥ 200,000 requests; --quick 1 round × 20,000)',
  )
  .option(
    '--alloc-sites',
    'allocation sites of the JWT configuration: a sampling heap profile, top 10 per request (100,000 requests; --quick 20,000)',
  )
  .option(
    '--xfcc',
    'allocation mode with configuration x too: nhi-proxy behind a trusted mesh ingress, 300 rotating XFCC identities (implies --alloc)',
  )
  .option('--requests <n>', 'allocation mode: requests per measured window, at least', positive)
  .parse()

const o = program.opts<{
  duration: number
  rounds: number
  connections: number
  rate: number
  quick?: boolean
  h2Rounds: boolean
  warmup: boolean
  write: boolean
  audit: string
  coldStart: string
  coldStartOnly?: boolean
  coldStartBaseline?: string
  starts: number
  memory?: boolean
  memoryQuick?: boolean
  flood?: boolean
  otlp?: boolean
  h2?: boolean
  prom?: boolean
  promTraffic: string
  workers?: boolean
  podScrape?: boolean
  entry?: string
  verifyWorkers?: number
  alloc?: boolean
  xfcc?: boolean
  allocSites?: boolean
  requests?: number
}>()
const results = fileURLToPath(new URL('./results/', import.meta.url))
const log = (s: string) => process.stderr.write(`${s}\n`)

async function memoryMode(): Promise<void> {
  log('npm run build (nhi-proxy runs from dist/nhi-proxy.mjs)')
  const dist = buildDist()
  if (!dist) log('npm run build failed: nhi-proxy runs from the TypeScript sources')
  const r = await runMemory({
    quick: o.memoryQuick === true,
    log,
    dist,
    ...(o.verifyWorkers === undefined ? {} : { verifyWorkers: Math.round(o.verifyWorkers) }),
  })
  process.stdout.write(memoryMarkdown(r))
  for (const t of r.targets) log(targetLine(t))
  if (o.write) log(`wrote ${(await writeMemoryResults(results, r)).join(', ')}`)
}

async function throughputMode(): Promise<void> {
  const quick = o.quick === true
  const coldStart =
    o.coldStart === 'sources' || o.coldStart === 'tsx' ? 'sources' : o.coldStart === 'skip' ? 'skip' : 'build'
  const r = await runBench({
    durationS: quick ? Math.min(o.duration, 2) : o.duration,
    rounds: quick ? 1 : Math.round(o.rounds),
    connections: Math.round(o.connections),
    rate: o.rate,
    quick,
    warmup: o.warmup,
    installWrk: true,
    coldStart: quick && coldStart === 'build' ? 'sources' : coldStart,
    audit: o.audit,
    log,
  })
  if (o.h2Rounds) {
    // the h2c (gRPC) configuration is judged by the same run, on the bundle the throughput rounds measured
    log('h2c rounds: direct, bare node:http2 proxy, nginx grpc_pass, nhi-proxy')
    r.h2 = await runH2(h2Options(quick, freshDist()))
    r.targets.push(...r.h2.targets)
  }
  process.stdout.write(markdown(r))
  log('')
  for (const t of r.targets) log(targetLine(t))
  if (o.write) log(`wrote ${(await writeResults(results, r)).join(', ')}`)
}

async function floodMode(): Promise<void> {
  log('npm run build (nhi-proxy runs from dist/nhi-proxy.mjs)')
  const dist = buildDist()
  if (!dist) log('npm run build failed: nhi-proxy runs from the TypeScript sources')
  const given = (name: string) => program.getOptionValueSource(name) === 'cli'
  const r = await runFlood({
    rounds: given('rounds') ? Math.round(o.rounds) : 2,
    durationS: given('duration') ? o.duration : 4,
    connections: Math.round(o.connections),
    rate: given('rate') && o.rate > 0 ? o.rate : 200,
    dist,
    log,
  })
  const md = floodMarkdown(r)
  process.stdout.write(md)
  if (o.write) {
    await writeFile(join(results, 'flood.md'), md)
    await writeFile(join(results, 'flood.json'), `${JSON.stringify(r, null, 2)}\n`)
    log(`wrote ${join(results, 'flood.md')}, flood.json`)
  }
}

async function otlpMode(): Promise<void> {
  log('npm run build (nhi-proxy runs from dist/nhi-proxy.mjs)')
  const dist = buildDist()
  if (!dist) log('npm run build failed: nhi-proxy runs from the TypeScript sources')
  const given = (name: string) => program.getOptionValueSource(name) === 'cli'
  const r = await runOtlpCost({
    rounds: given('rounds') ? Math.round(o.rounds) : 2,
    durationS: given('duration') ? o.duration : 4,
    connections: Math.round(o.connections),
    dist,
    ...(o.entry ? { baseline: o.entry } : {}),
    ...(given('rate') && o.rate > 0 ? { rate: Math.round(o.rate) } : {}),
    log,
  })
  const md = otlpCostMarkdown(r)
  process.stdout.write(md)
  if (o.write) {
    await writeFile(join(results, 'otlp.md'), md)
    await writeFile(join(results, 'otlp.json'), `${JSON.stringify(r, null, 2)}\n`)
    log(`wrote ${join(results, 'otlp.md')}, otlp.json`)
  }
}

async function h2Mode(): Promise<void> {
  const quick = o.quick === true
  const dist = quick ? freshDist() : buildDist()
  const run = await runH2(h2Options(quick, dist))
  const md = h2Markdown(run, targetLine)
  process.stdout.write(md)
  for (const t of run.targets) log(targetLine(t))
  if (o.write) {
    await writeFile(join(results, 'h2.md'), md)
    await writeFile(join(results, 'h2.json'), `${JSON.stringify(run, null, 2)}\n`)
    log(`wrote ${join(results, 'h2.md')}, h2.json`)
  }
}

/** the h2c rounds with the run's duration, rounds and connections (8 streams on each 8th of them) */
function h2Options(quick: boolean, dist: boolean): H2Options {
  return {
    durationS: quick ? Math.min(o.duration, 2) : o.duration,
    rounds: quick ? 1 : Math.round(o.rounds),
    sessions: Math.max(1, Math.round(o.connections / 8)),
    streams: 8,
    dist,
    log,
  }
}

async function workersMode(): Promise<void> {
  log('npm run build (nhi-proxy runs from dist/nhi-proxy.mjs)')
  const dist = buildDist()
  if (!dist) log('npm run build failed: nhi-proxy runs from the TypeScript sources')
  const given = (name: string) => program.getOptionValueSource(name) === 'cli'
  const r = await runWorkersBench({
    rounds: given('rounds') ? Math.round(o.rounds) : 2,
    durationS: given('duration') ? o.duration : 5,
    connections: Math.round(o.connections),
    dist,
    useWrk: ensureWrk(log),
    log,
  })
  const md = workersMarkdown(r)
  process.stdout.write(md)
  for (const t of r.targets) log(targetLine(t))
  if (o.write) {
    await writeFile(join(results, 'workers.md'), md)
    await writeFile(join(results, 'workers.json'), `${JSON.stringify(r, null, 2)}\n`)
    log(`wrote ${join(results, 'workers.md')}, workers.json`)
  }
}

async function podScrapeMode(): Promise<void> {
  const quick = o.quick === true
  const dist = o.entry !== undefined || (quick ? freshDist() : buildDist())
  if (!dist) log('no up-to-date bundle: nhi-proxy runs from the TypeScript sources')
  const r = await runPodScrape({
    identities: 1000,
    scrapes: quick ? 10 : 60,
    dist,
    ...(o.entry ? { entry: o.entry } : {}),
    log,
  })
  const md = podScrapeMarkdown(r, targetLine)
  process.stdout.write(md)
  log(targetLine(r.target))
  if (o.write) {
    await writeFile(join(results, 'pod-scrape.md'), md)
    await writeFile(join(results, 'pod-scrape.json'), `${JSON.stringify(r, null, 2)}\n`)
    log(`wrote ${join(results, 'pod-scrape.md')}, pod-scrape.json`)
  }
}

async function promMode(): Promise<void> {
  const quick = o.quick === true
  const r = await runPromCost({
    identities: 1000,
    requests: quick ? 50_000 : 200_000,
    rounds: program.getOptionValueSource('rounds') === 'cli' ? Math.round(o.rounds) : quick ? 3 : 5,
    scrapes: quick ? 10 : 30,
    // one of the four stages every request pays for beyond the engine: identify, decide, metrics, audit
    share: 0.25,
    traffic: o.promTraffic === 'routes' ? 'routes' : 'bench',
    log,
  })
  const md = promCostMarkdown(r, targetLine)
  process.stdout.write(md)
  if (o.write) {
    await writeFile(join(results, 'prom.md'), md)
    await writeFile(join(results, 'prom.json'), `${JSON.stringify(r, null, 2)}\n`)
    log(`wrote ${join(results, 'prom.md')}, prom.json`)
  }
}

async function allocMode(): Promise<void> {
  const quick = o.quick === true
  // quick runs take an up-to-date bundle as it is, like the h2 mode; full runs build it first
  const dist = quick ? freshDist() : buildDist()
  if (!dist) log('no up-to-date bundle: nhi-proxy runs from the TypeScript sources')
  const given = (name: string) => program.getOptionValueSource(name) === 'cli'
  const r = await runAlloc({
    rounds: given('rounds') ? Math.round(o.rounds) : quick ? 1 : 3,
    requests: Math.round(o.requests ?? (quick ? 20_000 : 200_000)),
    minGcs: quick ? 10 : 50,
    warmup: quick ? 5_000 : 20_000,
    maxWindowS: 120,
    connections: Math.round(o.connections),
    dist,
    xfcc: o.xfcc === true,
    log,
  })
  const md = allocMarkdown(r, targetLine)
  process.stdout.write(md)
  for (const t of r.targets) log(targetLine(t))
  if (o.write) {
    await writeFile(join(results, 'alloc.md'), md)
    await writeFile(join(results, 'alloc.json'), `${JSON.stringify(r, null, 2)}\n`)
    log(`wrote ${join(results, 'alloc.md')}, alloc.json`)
  }
}

async function coldStartMode(): Promise<void> {
  const quick = o.quick === true
  // --quick takes an up-to-date bundle as it is (like the h2 mode); otherwise the bundle is built first
  const dist = quick ? freshDist() : buildDist()
  if (!dist) log('no up-to-date bundle: nhi-proxy runs from the TypeScript sources')
  const r = await runColdStart({
    starts: Math.round(o.starts),
    dist,
    log,
    ...(o.coldStartBaseline ? { baseline: resolve(o.coldStartBaseline) } : {}),
  })
  const md = coldStartMarkdown(r, targetLine)
  process.stdout.write(md)
  for (const t of r.targets) log(targetLine(t))
  if (o.write) {
    await writeFile(join(results, 'cold-start.md'), md)
    await writeFile(join(results, 'cold-start.json'), `${JSON.stringify(r, null, 2)}\n`)
    log(`wrote ${join(results, 'cold-start.md')}, cold-start.json`)
  }
}

async function allocSitesMode(): Promise<void> {
  const quick = o.quick === true
  const r = await runAllocSites({
    requests: Math.round(o.requests ?? (quick ? 20_000 : 100_000)),
    warmup: quick ? 5_000 : 20_000,
    connections: Math.round(o.connections),
    top: 10,
    log,
  })
  const md = allocSitesMarkdown(r)
  process.stdout.write(md)
  if (o.write) {
    await writeFile(join(results, 'alloc-sites.md'), md)
    await writeFile(join(results, 'alloc-sites.json'), `${JSON.stringify(r, null, 2)}\n`)
    log(`wrote ${join(results, 'alloc-sites.md')}, alloc-sites.json`)
  }
}

await (o.coldStartOnly
  ? coldStartMode()
  : o.allocSites
    ? allocSitesMode()
    : o.alloc || o.xfcc
      ? allocMode()
      : o.workers
        ? workersMode()
        : o.memory || o.memoryQuick
          ? memoryMode()
          : o.flood
            ? floodMode()
            : o.otlp
              ? otlpMode()
              : o.h2
                ? h2Mode()
                : o.prom
                  ? promMode()
                  : o.podScrape
                    ? podScrapeMode()
                    : throughputMode())
