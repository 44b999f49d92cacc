// The bench's chart: req/s bars for every configuration and, when the open-loop rounds ran, p50/p99 bars at
// the fixed rate; labels are escaped and the document is complete.
import t from 'tap'
import type { BenchResult, ConfigResult, FixedRateResult } from '../../bench/lib/harness.ts'
import { markdown, svgChart } from '../../bench/lib/report.ts'

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
