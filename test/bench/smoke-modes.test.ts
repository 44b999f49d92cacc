// The bench's prom-client and allocation modes in their quickest form (the throughput harness is in
// smoke.test.ts, h2 and memory in smoke-h2-memory, workers and pod scrape in smoke-workers: files of
// ~30 s or less, so the runner spreads them over its jobs): each must measure real traffic and leave no
// process behind.
import t from 'tap'
import {
  ALLOC_TARGET,
  allocMarkdown,
  allocSitesMarkdown,
  runAlloc,
  runAllocSites,
} from '../../bench/lib/alloc.ts'
import { childPids } from '../../bench/lib/procs.ts'
import { promCostMarkdown, runPromCost } from '../../bench/lib/prom-cost.ts'
import { targetLine } from '../../bench/lib/report.ts'
import { assertFreshBundle } from '../helpers/sidecar.ts'

// each mode is a few seconds on an idle 2-core machine; the margin is for CI hosts running other files
t.setTimeout(300_000)
assertFreshBundle()

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

t.test('allocation mode, tiny: heap bytes and CPU per request of b, c and e from the GC trace', async (t) => {
  const before = new Set(await childPids(process.pid))
  // the smallest window that still spans collections: 1,000 responses between at least 3 of them
  const r = await runAlloc({
    rounds: 1,
    requests: 1_000,
    minGcs: 2,
    warmup: 100,
    connections: 8,
    dist: true,
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
    t.ok(s.gcs >= 2 && s.requests >= 1_000, `${row.id}: a window of ${s.requests} requests and ${s.gcs} GCs`)
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
  const r = await runAllocSites({ requests: 1_000, warmup: 100, connections: 8, top: 5, log: () => {} })
  t.ok(r.requests >= 1_000, `sampled over ${r.requests} requests`)
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
