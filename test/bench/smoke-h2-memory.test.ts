// The bench's h2c and memory modes in their quickest form, on the bundle users run (npm test builds it
// first): each must serve real traffic and leave no process behind. The throughput harness is in
// smoke.test.ts, the other modes in smoke-modes and smoke-workers (files the runner can run side by side).
import t from 'tap'
import { h2Markdown, runH2 } from '../../bench/lib/h2.ts'
import { runMemory } from '../../bench/lib/memory.ts'
import { childPids } from '../../bench/lib/procs.ts'
import { targetLine } from '../../bench/lib/report.ts'
import { skipWithoutNginx } from '../helpers/nginx.ts'
import { assertFreshBundle } from '../helpers/sidecar.ts'

// ~10 s on an idle 2-core machine; the margin is for CI hosts that run other test files at the same time
t.setTimeout(300_000)
assertFreshBundle()

t.test(
  'h2c mode: direct, bare node:http2 proxy, nginx grpc_pass and nhi-proxy serve gRPC calls',
  async (t) => {
    const before = new Set(await childPids(process.pid))
    const run = await runH2({
      // half a second of calls per configuration shows they are served
      durationS: 0.5,
      rounds: 1,
      sessions: 2,
      streams: 4,
      dist: true,
      log: () => {},
    })
    const r = run.results
    const ids = r.map((c) => c.id)
    t.same(
      ids.filter((id) => id !== 'h2-nginx'),
      ['h2-direct', 'h2-bare', 'h2-nhi'],
    )
    // the harness leaves nginx out quietly when it is missing; here that is a visible skip
    t.test('the nginx grpc_pass configuration ran', { skip: skipWithoutNginx }, async (t) => {
      t.ok(ids.includes('h2-nginx'), 'nginx grpc_pass served traffic next to nhi-proxy')
    })
    for (const c of r) {
      t.ok(c.requests > 0, `${c.id} served ${c.requests} requests`)
      t.equal(c.errors + c.non2xx, 0, `${c.id}: no stream errors, non-2xx answers or non-OK grpc-status`)
      // /proc charges CPU by the clock tick (10 ms) that finds a process running: nginx serves these few
      // hundred calls at ≈ 35 µs each, in short slices, for about one tick in all, and can be charged none.
      // What is sure is a finite, non-negative value.
      if (c.id === 'h2-nginx')
        t.ok(
          c.proxyCpuUs !== undefined && Number.isFinite(c.proxyCpuUs) && c.proxyCpuUs >= 0,
          `${c.id}: proxy CPU per call measured (${c.proxyCpuUs?.toFixed(1)} µs; 0 is under one clock tick)`,
        )
      else if (c.id !== 'h2-direct')
        t.ok(c.proxyCpuUs !== undefined && c.proxyCpuUs > 0, `${c.id}: proxy CPU per call measured`)
    }
    const bareTarget = run.targets.find((x) => x.name.startsWith('h2c: nhi ≥ 0.9× a bare node:http2 proxy'))
    t.ok(bareTarget, 'nhi-proxy is judged against the bare node:http2 proxy')
    t.match(bareTarget?.note, /^one round; per CPU-second \d+\.\d\d$/, 'one round: no spread to report')
    t.equal(
      run.targets.some((x) => x.name.startsWith('h2c: nhi ≥ 0.6× nginx')),
      ids.includes('h2-nginx'),
      'and against nginx grpc_pass when it ran',
    )
    const md = h2Markdown(run, targetLine)
    t.match(md, /^\| h2-nhi \| nhi-proxy, h2c in and out \| \d+ \|/m, 'the table has nhi-proxy’s row')
    t.match(md, /^(PASS|MISS) {2}h2c: nhi ≥ 0\.9× a bare node:http2 proxy/m, 'and its targets')
    const after = (await childPids(process.pid)).filter((p) => !before.has(p))
    t.same(after, [], 'no child process outlives the run')
  },
)

t.test('memory mode, tiny: tokens and XFCC identities flow, series stay capped', async (t) => {
  const r = await runMemory({
    quick: true,
    // 150 + 15 identities, eight times the cap
    tokens: 150,
    xfccIdentities: 15,
    maxIdentities: 20,
    sampleEveryMs: 300,
    dist: true,
    log: () => {},
  })
  t.equal(r.failures, 0, 'every request answered 200')
  t.equal(r.requests, 330, 'all tokens and XFCC identities were sent, each twice')
  const last = r.samples.at(-1)!
  t.ok(
    last.series > 0 && last.series <= 21,
    `identity series capped at maxIdentities + overflow (${last.series})`,
  )
  t.ok(last.rssMB > 0, 'RSS sampled')
  t.ok(
    last.heapUsedMB !== undefined &&
      last.heapTotalMB !== undefined &&
      last.heapUsedMB > 0 &&
      last.heapTotalMB >= last.heapUsedMB &&
      last.heapTotalMB < last.rssMB,
    "the main thread's heap sampled from the process metrics, inside the RSS",
  )
})
