// The bench's chart: req/s bars for every configuration and, when the open-loop rounds ran, p50/p99 bars at
// the fixed rate; labels are escaped and the document is complete.
import t from 'tap'
import { type H2Result, type H2Run, h2Markdown, h2Targets } from '../../bench/lib/h2.ts'
import {
  type BenchResult,
  type ConfigResult,
  type FixedRateResult,
  floodTarget,
  roundSpread,
} from '../../bench/lib/harness.ts'
import { markdown, svgChart, targetLine } from '../../bench/lib/report.ts'

function config(id: ConfigResult['id'], label: string, rps: number): ConfigResult {
  return {
    id,
    label,
    tool: 'wrk',
    rounds: [],
    rps,
    p50Ms: 1,
    p99Ms: 2,
    upstreamCpuUs: 50,
    requests: rps * 10,
    errors: 0,
    non2xx: 0,
  }
}

function fixed(id: FixedRateResult['id'], p50Ms: number, p99Ms: number): FixedRateResult {
  return {
    id,
    label: `config ${id}`,
    rate: 1000,
    rounds: [],
    p50Ms,
    p99Ms,
    p999Ms: p99Ms * 2,
    requests: 30_000,
    errors: 0,
    non2xx: 0,
  }
}

function result(withFixedRate: boolean): BenchResult {
  return {
    startedAt: '2026-11-26T00:00:00.000Z',
    machine: {
      nproc: 2,
      cpu: 'test cpu',
      memoryGiB: 1,
      node: 'v20',
      wrk: 'wrk',
      nginx: 'nginx',
      kernel: '6',
      loadAvg: 0,
    },
    options: {
      durationS: 10,
      rounds: 3,
      connections: 64,
      quick: false,
      warmup: true,
      installWrk: false,
      coldStart: 'skip',
      audit: '/dev/null',
      rate: withFixedRate ? 1000 : 0,
    },
    configs: [
      config('a', 'direct', 18_000),
      config('b', 'bare <undici> & co', 7_000),
      config('c', 'nhi', 5_000),
    ],
    ...(withFixedRate
      ? { fixedRate: [fixed('a', 0.3, 1.5), fixed('b', 0.65, 2.76), fixed('c', 0.81, 3.45)] }
      : {}),
    ratios: {},
    targets: [],
    notes: [],
  }
}

t.test('the chart has a req/s bar per configuration and p50/p99 bars at the fixed rate', async (t) => {
  const svg = svgChart(result(true))
  t.match(svg, /^<svg [^>]*>/, 'starts with the svg element')
  t.ok(svg.trimEnd().endsWith('</svg>'), 'ends with it')
  t.equal((svg.match(/<text/g) ?? []).length, (svg.match(/<\/text>/g) ?? []).length, 'every text closes')
  t.match(svg, '18,000', 'req/s of a')
  t.match(svg, 'b: bare &lt;undici&gt; &amp; co', 'labels are escaped')
  t.notMatch(svg, '<undici>', 'no raw markup from a label')
  t.match(svg, 'latency at a fixed 1,000 req/s', 'the latency panel has its title')
  t.match(svg, '0.81 / 3.45', 'c: p50 / p99 at the fixed rate')
  // 3 req/s bars + 2 latency bars for each of 3 configurations, plus the background
  t.equal((svg.match(/<rect /g) ?? []).length, 1 + 3 + 3 * 2, 'one rect per bar')
  const height = Number(/height="(\d+)"/.exec(svg)?.[1])
  const lowest = Math.max(...[...svg.matchAll(/ y="([\d.]+)"/g)].map((m) => Number(m[1])))
  t.ok(lowest < height, `everything is drawn inside the picture (lowest y ${lowest} < height ${height})`)
})

t.test('without open-loop rounds there is no latency panel, in the chart or the report', async (t) => {
  const r = result(false)
  const svg = svgChart(r)
  t.notMatch(svg, 'latency at a fixed')
  t.equal((svg.match(/<rect /g) ?? []).length, 1 + 3)
  t.notMatch(markdown(r), 'Latency at a fixed')
  t.match(markdown(result(true)), '## Latency at a fixed 1,000 req/s')
})

t.test(
  'a throughput target shows its ratio within each round and the spread of those as the noise',
  async (t) => {
    const rounds = (rps: number[], cpu: number[]) =>
      rps.map((r, i) => ({
        round: i + 1,
        requests: r * 10,
        durationS: 10,
        rps: r,
        p50Ms: 1,
        p99Ms: 2,
        errors: 0,
        non2xx: 0,
        tool: 'wrk' as const,
        proxyCpuUs: cpu[i]!,
        upstreamCpuUs: 30,
      }))
    const c = { ...config('c', 'c', 0), rounds: rounds([8000, 6000, 9000], [120, 160, 110]) }
    const b2 = { ...config('b2', 'b2', 0), rounds: rounds([6400, 5000, 6000], [150, 200, 165]) }
    t.equal(
      roundSpread(c, b2),
      'rounds 1.25 / 1.20 / 1.50 (noise ±0.15); per CPU-second 1.25 / 1.25 / 1.50 (noise ±0.13)',
    )
    // nginx has no per-round CPU of its own in a quick run, one round has no spread
    t.equal(roundSpread({ ...c, rounds: c.rounds.slice(0, 1) }, b2), undefined)
    const noCpu = { ...b2, rounds: b2.rounds.map(({ proxyCpuUs: _cpu, ...r }) => r) }
    t.equal(roundSpread(c, noCpu), 'rounds 1.25 / 1.20 / 1.50 (noise ±0.15)')
  },
)

const NAME = 'cache-miss flood ≥ 0.5× b (pool, within each round)'

t.test('the flood verdict is the median round against 0.5×, with the rounds and their noise', async (t) => {
  t.equal(
    targetLine(floodTarget(NAME, [0.67, 0.3])),
    'MISS  cache-miss flood ≥ 0.5× b (pool, within each round): 0.48× (target ≥ 0.5×, margin -0.02) — rounds 0.67 / 0.30 (noise ±0.19)',
  )
  t.equal(
    targetLine(floodTarget(NAME, [0.55, 0.61, 0.52])),
    'PASS  cache-miss flood ≥ 0.5× b (pool, within each round): 0.55× (target ≥ 0.5×, margin +0.05) — rounds 0.55 / 0.61 / 0.52 (noise ±0.04)',
  )
  t.equal(
    targetLine(floodTarget(NAME, [0.4], 'tokens wrapped')),
    'MISS  cache-miss flood ≥ 0.5× b (pool, within each round): 0.40× (target ≥ 0.5×, margin -0.10) — rounds 0.40; tokens wrapped',
  )
})

t.test(
  'h2c targets: each round’s ratio, their median against the goal, the rounds and their noise',
  async (t) => {
    const call = (id: H2Result['id'], rps: number, proxyCpuUs?: number): H2Result => ({
      id,
      label: id,
      requests: rps * 10,
      errors: 0,
      non2xx: 0,
      rps,
      p50Ms: 1,
      p99Ms: 2,
      ...(proxyCpuUs === undefined ? {} : { proxyCpuUs }),
    })
    const rounds: H2Run['rounds'] = {
      'h2-bare': [call('h2-bare', 8000, 100), call('h2-bare', 7000, 110), call('h2-bare', 9000, 95)],
      'h2-nhi': [call('h2-nhi', 4000, 200), call('h2-nhi', 4200, 210), call('h2-nhi', 3600, 190)],
    }
    const [bare, ...others] = h2Targets(rounds)
    t.same(others, [], 'no nginx rounds: no nginx target')
    t.equal(bare?.name, 'h2c: nhi ≥ 0.9× a bare node:http2 proxy (gRPC unary calls)')
    t.equal(bare?.value, 0.5, 'the median of 0.50, 0.60 and 0.40')
    t.equal(bare?.pass, false)
    t.equal(
      bare?.note,
      'rounds 0.50 / 0.60 / 0.40 (noise ±0.10); per CPU-second 0.50 / 0.52 / 0.50 (noise ±0.01)',
    )
    rounds['h2-nginx'] = [call('h2-nginx', 5000, 60), call('h2-nginx', 6000, 50), call('h2-nginx', 6000, 55)]
    const nginx = h2Targets(rounds)[1]
    t.equal(nginx?.name, 'h2c: nhi ≥ 0.6× nginx grpc_pass')
    t.equal(nginx?.value, 0.7, 'median of 0.80, 0.70 and 0.60')
    t.equal(nginx?.pass, true)
    t.match(
      targetLine(nginx!),
      /^PASS {2}h2c: nhi ≥ 0\.6× nginx grpc_pass: 0\.70× \(target ≥ 0\.6×, margin \+0\.10\)/,
    )
    const run: H2Run = { results: [rounds['h2-nhi']![0]!], rounds, targets: [nginx!], notes: [] }
    const r = result(false)
    r.h2 = run
    t.match(markdown(r), '## h2c configuration (unary gRPC calls)', 'the main report carries the h2c rounds')
    t.match(markdown(r), /\| h2-nhi \| h2-nhi \| 4000 \| 4000 \/ 4200 \/ 3600 \|/, 'with every round')
  },
)

t.test(
  'an h2c round whose proxy used under one clock tick of CPU (0): no ratio of it, and not shown as free',
  async (t) => {
    const call = (id: H2Result['id'], rps: number, proxyCpuUs: number): H2Result => ({
      id,
      label: id,
      requests: rps / 2,
      errors: 0,
      non2xx: 0,
      rps,
      p50Ms: 1,
      p99Ms: 2,
      proxyCpuUs,
    })
    const oneRound: H2Run['rounds'] = {
      'h2-nginx': [call('h2-nginx', 900, 0)],
      'h2-nhi': [call('h2-nhi', 600, 150)],
    }
    t.equal(h2Targets(oneRound)[0]?.note, 'one round', 'one round: no per CPU-second ratio of a 0')
    const rounds: H2Run['rounds'] = {
      'h2-nginx': [call('h2-nginx', 900, 0), call('h2-nginx', 1000, 40)],
      'h2-nhi': [call('h2-nhi', 600, 150), call('h2-nhi', 500, 160)],
    }
    const [nginx] = h2Targets(rounds)
    t.equal(nginx?.value, (600 / 900 + 500 / 1000) / 2, 'throughput is still judged')
    t.equal(nginx?.note, 'rounds 0.67 / 0.50 (noise ±0.08)', 'rounds: no per CPU-second ratios')
    const md = h2Markdown(
      { results: [rounds['h2-nginx']![0]!, rounds['h2-nhi']![0]!], rounds, targets: [nginx!], notes: [] },
      targetLine,
    )
    t.match(
      md,
      /^\| h2-nginx \| h2-nginx \| 900 \| 900 \/ 1000 \| 1\.00 \| 2\.00 \| < 1 tick \| < 1 tick \/ 40 \|/m,
      'its CPU reads "< 1 tick", in the median and among the rounds',
    )
    t.notMatch(md, /Infinity|NaN/, 'no division by zero anywhere')
  },
)
