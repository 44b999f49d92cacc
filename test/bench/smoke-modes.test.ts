// The bench's measurement modes in their quickest form (the throughput, h2 and memory modes are in
// smoke.test.ts; two files so the runner can run them side by side): each must measure real traffic and
// leave no process behind.
import t from 'tap'
import {
  ALLOC_TARGET,
  allocMarkdown,
  allocSitesMarkdown,
  runAlloc,
  runAllocSites,
} from '../../bench/lib/alloc.ts'
import { hasCommand } from '../../bench/lib/load.ts'
import { POD_SCRAPE_BUDGET_MS, podScrapeMarkdown, runPodScrape } from '../../bench/lib/pod-scrape.ts'
import { childPids } from '../../bench/lib/procs.ts'
import { promCostMarkdown, runPromCost } from '../../bench/lib/prom-cost.ts'
import { targetLine } from '../../bench/lib/report.ts'
import { runWorkersBench } from '../../bench/lib/workers.ts'
import { skipWithoutNginx } from '../helpers/nginx.ts'

// each mode is a few seconds on an idle 2-core machine; the margin is for CI hosts running other files
t.setTimeout(300_000)

t.test('prom-client mode, tiny: both ways measured on the same series, budgets judged', async (t) => {
  const r = await runPromCost({
    identities: 40,
    requests: 2_000,
    rounds: 2,
    scrapes: 3,
    share: 0.25,
    traffic: 'routes',
    log: () => {},
  })
  t.same(
    r.update.map((u) => u.id),
    ['hand', 'prom-om', 'prom-text'],
    'update cost measured for hand-rendered and prom-client with and without exemplars',
  )
  for (const u of r.update) {
    t.equal(u.rounds.length, 2, `${u.id}: one value per round`)
    t.ok(u.nsPerRequest > 0, `${u.id}: ${u.nsPerRequest.toFixed(0)} ns per request`)
  }
  t.equal(r.scrape.length, 8, 'two formats × two ways × changed and idle')
  for (const s of r.scrape) {
    t.ok(s.bytes > 0 && s.cpuP99Ms >= s.cpuP50Ms && s.wallP99Ms >= s.wallP50Ms, `${s.label}, ${s.scenario}`)
    t.ok(
      Number.isFinite(s.gcP50Ms) && Number.isFinite(s.gcOfSlowestMs) && s.gcOfSlowestMs <= s.wallP99Ms,
      `${s.label}, ${s.scenario}: GC pauses inside the scrapes read (child process)`,
    )
  }
  for (const p of r.parity) {
    t.ok(p.hand > 0, `${p.family}: rendered (${p.hand} samples)`)
    t.equal(p.prom, p.hand, `${p.family}: prom-client renders the same series`)
  }
  t.ok(r.budget.attributionUs > 0 && r.budget.metricsUs > 0, 'per-request budget derived from b')
  t.same(
    r.targets.map((x) => x.name.split(' ')[0]),
    ['prom-client', 'prom-client', 'hand-rendered', 'hand-rendered'],
    'update and scrape budgets judged both ways',
  )
  t.equal(
    r.promClientMeetsBudgets,
    r.targets[0]!.pass && r.targets[1]!.pass,
    'the decision follows the prom-client targets',
  )
  const md = promCostMarkdown(r, targetLine)
  t.match(md, /^(PASS|MISS) {2}prom-client update ≤ /m, 'PASS/MISS line for the per-request budget')
  t.match(md, /^(PASS|MISS) {2}prom-client scrape p99 ≤ 50 ms/m, 'PASS/MISS line for the scrape budget')
  t.match(md, /Decision rule "hand-rendered stays only if prom-client misses a budget"/)
})

t.test('workers mode, tiny: workers: 1 and workers: 2 (and nginx 1 and 2) serve the JWT load', async (t) => {
  const before = new Set(await childPids(process.pid))
  const r = await runWorkersBench({
    rounds: 1,
    durationS: 1,
    connections: 8,
    dist: false,
    useWrk: hasCommand('wrk'),
    log: () => {},
  })
  const ids = r.rows.map((row) => row.id)
  t.same(
    ids.filter((id) => !id.startsWith('nginx')),
    ['nhi-1', 'nhi-2'],
  )
  t.test('the nginx reference rows ran', { skip: skipWithoutNginx }, async (t) => {
    t.same(ids.slice(2), ['nginx-1', 'nginx-2'])
  })
  for (const row of r.rows) {
    const s = row.rounds[0]!
    t.ok(s.requests > 0, `${row.id} served ${s.requests} requests`)
    t.equal(s.errors + s.non2xx, 0, `${row.id}: no socket errors or non-2xx answers`)
    t.ok(s.proxyCpuUs > 0, `${row.id}: CPU of every proxy process measured`)
  }
  t.ok(r.ratios['nhi-2/nhi-1']!.median > 0, 'the scaling ratio is measured')
  t.equal(r.targets[0]?.target, 1.7, 'and evaluated against its target')
  const after = (await childPids(process.pid)).filter((p) => !before.has(p))
  t.same(after, [], 'no child process outlives the run')
})

t.test('allocation mode, tiny: heap bytes and CPU per request of b, c and e from the GC trace', async (t) => {
  const before = new Set(await childPids(process.pid))
  const r = await runAlloc({
    rounds: 1,
    requests: 1_500,
    minGcs: 3,
    warmup: 300,
    connections: 8,
    dist: false,
    maxWindowS: 30,
    log: () => {},
  })
  t.same(
    r.rows.map((row) => row.id),
    ['b', 'c', 'e'],
    'bare engine, JWT and browser measured in order',
  )
  for (const row of r.rows) {
    const s = row.rounds[0]!
    t.ok(s.gcs >= 3 && s.requests >= 1_500, `${row.id}: a window of ${s.requests} requests and ${s.gcs} GCs`)
    t.equal(s.errors + s.non2xx, 0, `${row.id}: no socket errors or non-2xx answers`)
    // a request through any proxy allocates at least its parsed headers; far below 1 KB would mean the
    // GC lines or the request count are misread
    t.ok(
      Number.isFinite(row.bytesPerRequest) && row.bytesPerRequest > 1024,
      `${row.id}: ${(row.bytesPerRequest / 1024).toFixed(1)} KB per request`,
    )
    t.ok(Number.isFinite(row.cpuUsPerRequest) && row.cpuUsPerRequest > 0, `${row.id}: CPU per request`)
  }
  for (const k of ['c/b', 'e/b'] as const) {
    const v = r.ratios[k]!.median
    t.ok(Number.isFinite(v) && v > 0, `${k} = ${v.toFixed(2)}`)
  }
  t.same(
    r.targets.map((x) => [x.target, x.pass, x.direction]),
    r.targets.map((x) => [ALLOC_TARGET, x.value <= ALLOC_TARGET, 'max']),
    'both ratios judged against ≤ 1.2×',
  )
  t.match(
    allocMarkdown(r, targetLine),
    /^(PASS|MISS) {2}allocation per request c ≤ 1\.2× b: /m,
    'PASS/MISS line in the report',
  )
  const after = (await childPids(process.pid)).filter((p) => !before.has(p))
  t.same(after, [], 'no child process outlives the run')
})

t.test('allocation sites, tiny: a sampling heap profile of c names nhi-proxy functions', async (t) => {
  const before = new Set(await childPids(process.pid))
  const r = await runAllocSites({ requests: 1_500, warmup: 300, connections: 8, top: 5, log: () => {} })
  t.ok(r.requests >= 1_500, `sampled over ${r.requests} requests`)
  // collected objects are kept in the profile: a survivors-only profile would show almost nothing per request
  t.ok(
    r.sampledBytesPerRequest > 1024,
    `${(r.sampledBytesPerRequest / 1024).toFixed(1)} KB per request sampled`,
  )
  t.equal(r.self.length, 5, 'top sites by allocating function')
  t.ok(
    r.nhi.some((s) => s.site.includes('(src/')),
    'bytes are charged to nhi-proxy functions from the sources',
  )
  for (const s of [...r.self, ...r.nhi]) t.ok(s.share > 0 && s.share <= 1, `${s.site}: a share of the total`)
  t.match(allocSitesMarkdown(r), /By the innermost nhi-proxy function on the stack/)
  const after = (await childPids(process.pid)).filter((p) => !before.has(p))
  t.same(after, [], 'no child process outlives the run')
})

t.test('pod scrape mode, tiny: the primary of workers: 2 timed per /metrics, both formats', async (t) => {
  const before = new Set(await childPids(process.pid))
  const r = await runPodScrape({ identities: 20, scrapes: 3, dist: false, log: () => {} })
  t.same(
    r.rows.map((row) => `${row.scenario} ${row.openMetrics ? 'om' : 'text'}`),
    ['changed text', 'changed om', 'idle text', 'idle om'],
  )
  for (const row of r.rows) {
    const name = `${row.scenario}, ${row.openMetrics ? 'OpenMetrics' : 'text'}`
    t.equal(row.scrapes, 3, `${name}: every scrape timed`)
    t.ok(row.primaryP50Ms > 0 && row.primaryP99Ms >= row.primaryP50Ms, `${name}: primary CPU read`)
    t.ok(row.workersP50Ms > 0, `${name}: the workers' CPU read`)
    // 20 callers: their requests, duration buckets and last-seen lines at least
    t.ok(row.samples > 20 * 3, `${name}: ${row.samples} samples in the pod's /metrics`)
  }
  t.equal(r.target.target, POD_SCRAPE_BUDGET_MS)
  t.match(
    podScrapeMarkdown(r, targetLine),
    /^(PASS|MISS) {2}workers: 2 \/metrics p99 ≤ 50 ms at 20 identities/m,
    'PASS/MISS line for the budget',
  )
  const after = (await childPids(process.pid)).filter((p) => !before.has(p))
  t.same(after, [], 'no child process outlives the run')
})
