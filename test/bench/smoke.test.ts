// The bench harness itself, in its quickest form: every configuration (direct, bare undici proxy, bare
// http-proxy, nhi-proxy with JWT / mTLS / browser traffic, nginx when installed, the cache-miss flood)
// must serve real traffic without socket errors or failed responses, and every process must be gone after.
// The other modes are in smoke-h2-memory, smoke-modes and smoke-workers: one file per ~30 s of work, so
// the runner spreads them over its jobs instead of one long file finishing last.
import t from 'tap'
import { runBench } from '../../bench/lib/harness.ts'
import { childPids } from '../../bench/lib/procs.ts'
import { skipWithoutNginx } from '../helpers/nginx.ts'
import { skipWithout, systemTool } from '../helpers/tools.ts'

// ~15 s on an idle 2-core machine; the margin is for CI hosts that run other test files at the same time
t.setTimeout(300_000)

t.test('quick bench: every configuration serves traffic without errors', async (t) => {
  const lines: string[] = []
  const before = new Set(await childPids(process.pid))
  // half a second per run shows traffic flows; wrk rounds its duration up to 1 s (in half a second of a
  // loaded machine the JWT configuration, whose tokens are all new at first, may serve none), the Node load
  // generator (mTLS configurations, the fixed-rate rounds) takes it as it is; the fixed-rate rounds run side
  // by side
  const durationS = 0.5
  const rate = 200
  const r = await runBench({
    durationS,
    rounds: 1,
    connections: 8,
    rate,
    quick: true,
    warmup: false,
    installWrk: false,
    coldStart: 'skip',
    audit: '/dev/null',
    fixedRateTogether: true,
    log: (s) => lines.push(s),
  })
  const ids = r.configs.map((c) => c.id)
  t.same(
    ids.slice(0, 8),
    ['a', 'b', 'b2', 'b3', 'c', 'a-tls', 'd', 'e'],
    'all configurations ran, interleaved in order',
  )
  for (const c of [...r.configs, r.flood!]) {
    t.ok(c.requests > 0, `${c.id} (${c.label}) served ${c.requests} requests`)
    t.equal(c.errors, 0, `${c.id}: no socket errors`)
    t.equal(c.non2xx, 0, `${c.id}: no non-2xx responses`)
    t.ok(c.p99Ms >= c.p50Ms && c.p50Ms > 0, `${c.id}: latency percentiles are measured`)
  }
  t.same(
    r.fixedRate?.map((x) => x.id).slice(0, 3),
    ['a', 'b', 'c'],
    'the open-loop latency rounds ran for a, b and c',
  )
  for (const x of r.fixedRate ?? []) {
    t.equal(
      x.requests,
      rate * durationS,
      `${x.id} at a fixed rate: every scheduled request was sent and answered`,
    )
    t.equal(x.errors + x.non2xx, 0, `${x.id} at a fixed rate: no errors`)
    t.ok(x.p999Ms >= x.p99Ms && x.p99Ms >= x.p50Ms && x.p50Ms > 0, `${x.id} at a fixed rate: percentiles`)
  }
  t.ok(
    r.targets.some((x) => x.name.startsWith('p50 added ≤ 1 ms at 200 req/s')),
    'the added latency below saturation is a target',
  )
  for (const id of ['b', 'b2', 'c', 'd', 'e'] as const) {
    const cpu = r.configs.find((c) => c.id === id)?.proxyCpuUs
    t.ok(cpu !== undefined && cpu > 0, `${id}: proxy CPU per request measured (${cpu?.toFixed(1)} µs)`)
  }
  t.ok(
    r.targets.some((x) => x.name.startsWith('c ≥ 0.9× b')),
    'targets are evaluated',
  )
  t.match(
    r.targets.find((x) => x.name.startsWith('cache-miss flood'))?.note,
    /^rounds \d+\.\d\d/,
    'the flood is judged within each round, and says so',
  )
  const after = (await childPids(process.pid)).filter((p) => !before.has(p))
  t.same(after, [], 'no child process outlives the run')
  // the harness falls back quietly when a tool is missing; here the fallback is a visible skip
  t.test('the nginx reference configuration ran', { skip: skipWithoutNginx }, async (t) => {
    t.ok(ids.includes('nginx'), 'nginx served traffic next to nhi-proxy')
  })
  t.test('wrk drove the closed-loop rounds', { skip: skipWithout('wrk', systemTool('wrk')) }, async (t) => {
    // configurations that present client certificates are always driven by the node load generator
    t.ok(
      r.configs.some((c) => c.tool === 'wrk'),
      'wrk measured the configurations it can drive, not the node fallback',
    )
  })
})
