// The bench's multi-process modes in their quickest form: workers: 1 against workers: 2 on the bundle users
// run (npm test builds it first), and the pod's /metrics timed on the primary. Each must measure
// real traffic and leave no process behind (the other modes: smoke, smoke-h2-memory, smoke-modes).
import t from 'tap'
import { hasCommand } from '../../bench/lib/load.ts'
import { POD_SCRAPE_BUDGET_MS, podScrapeMarkdown, runPodScrape } from '../../bench/lib/pod-scrape.ts'
import { childPids } from '../../bench/lib/procs.ts'
import { targetLine } from '../../bench/lib/report.ts'
import { runWorkersBench } from '../../bench/lib/workers.ts'
import { skipWithoutNginx } from '../helpers/nginx.ts'
import { assertFreshBundle } from '../helpers/sidecar.ts'

// each mode is a few seconds on an idle 2-core machine; the margin is for CI hosts running other files
t.setTimeout(300_000)
assertFreshBundle()

t.test('workers mode, tiny: workers: 1 and workers: 2 (and nginx 1 and 2) serve the JWT load', async (t) => {
  const before = new Set(await childPids(process.pid))
  const r = await runWorkersBench({
    rounds: 1,
    // half a second of load (and of warm-up) per row shows it is served
    durationS: 0.5,
    connections: 8,
    dist: true,
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
    // /proc charges CPU by the clock tick (10 ms) that finds a process running: nginx serves a few hundred
    // requests at ≈ 35 µs each, in short slices, about one tick in all, and on a loaded machine can be charged
    // none. What is sure for it is a finite, non-negative value; nhi-proxy's hundreds of µs a request are not.
    if (row.id.startsWith('nginx'))
      t.ok(
        Number.isFinite(s.proxyCpuUs) && s.proxyCpuUs >= 0,
        `${row.id}: CPU of every proxy process measured (${s.proxyCpuUs.toFixed(1)} µs a request; 0 is under one clock tick)`,
      )
    else t.ok(s.proxyCpuUs > 0, `${row.id}: CPU of every proxy process measured`)
  }
  t.ok(r.ratios['nhi-2/nhi-1']!.median > 0, 'the scaling ratio is measured')
  t.equal(r.targets[0]?.target, 1.7, 'and evaluated against its target')
  const after = (await childPids(process.pid)).filter((p) => !before.has(p))
  t.same(after, [], 'no child process outlives the run')
})

t.test('pod scrape mode, tiny: the primary of workers: 2 timed per /metrics, both formats', async (t) => {
  const before = new Set(await childPids(process.pid))
  // on the sources as before: on the bundle, one run at load average 18 failed with ECONNRESET from the
  // pod, which the sources (slower to start) have not shown; kept as it was until that is understood
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
