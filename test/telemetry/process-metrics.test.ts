// Process and runtime metrics (prom-client's default collector) on /metrics next to the nhi_* families, in
// both the Prometheus text format and OpenMetrics, each family declared once and every line well-formed.
import t, { type Test } from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { parseMetrics } from '../helpers/metrics.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { run, skipWithout, systemTool } from '../helpers/tools.ts'

const EXPECTED = [
  'process_cpu_user_seconds_total',
  'process_cpu_system_seconds_total',
  'process_resident_memory_bytes',
  'process_start_time_seconds',
  'process_open_fds',
  'nodejs_eventloop_lag_seconds',
  'nodejs_eventloop_lag_p99_seconds',
  'nodejs_heap_size_used_bytes',
  'nodejs_heap_size_total_bytes',
  'nodejs_version_info',
  // by type; prom-client's _total gauge beside it (a counter's suffix on a gauge) is left out
  'nodejs_active_handles',
]

const SAMPLE =
  /^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})? -?(\d+(\.\d+)?([eE][+-]?\d+)?|NaN|\+Inf|-Inf)( \d+)?( # .*)?$/

/** every line a comment or a sample; each family's TYPE declared once */
function checkExposition(t: Test, body: string, openMetrics: boolean) {
  const types = new Map<string, number>()
  const bad: string[] = []
  const lines = body.split('\n')
  for (const line of lines) {
    if (line === '') continue
    if (line.startsWith('# TYPE ')) {
      const name = line.split(' ')[2]!
      types.set(name, (types.get(name) ?? 0) + 1)
    } else if (line.startsWith('# HELP ') || line.startsWith('# UNIT ') || line === '# EOF') continue
    else if (!SAMPLE.test(line)) bad.push(line)
  }
  t.same(bad, [], 'every sample line is well-formed')
  t.same(
    [...types].filter(([, n]) => n > 1),
    [],
    'no family is declared twice',
  )
  t.ok(types.has('nhi_build_info'), 'the nhi_* families are still there')
  t.ok(types.has('nodejs_gc_duration_seconds'), 'GC durations are there')
  if (openMetrics) {
    t.equal(body.match(/^# EOF$/gm)?.length, 1, 'exactly one # EOF')
    t.ok(body.endsWith('# EOF\n'), '# EOF is last')
    t.ok(types.has('process_cpu_user_seconds'), 'OpenMetrics counter family named without _total')
  } else {
    t.notMatch(body, /# EOF/, 'no # EOF in the text format')
    t.ok(types.has('process_cpu_user_seconds_total'))
  }
}

t.test('process_* and nodejs_* metrics next to the nhi_* families', async (t) => {
  const sidecar = await startTestSidecar(t, {})
  const url = `${sidecar.adminUrl}/metrics`
  const text = await eventually(
    async () => {
      const body = await (await fetch(url)).text()
      return body.includes('process_start_time_seconds') && body
    },
    { what: 'the default collector to be loaded' },
  )
  const names = new Set(parseMetrics(text).map((s) => s.name))
  for (const name of EXPECTED) t.ok(names.has(name), `${name} is exported`)
  t.notOk(names.has('nodejs_active_handles_total'), 'no gauge carries a counter suffix')
  const start = parseMetrics(text).find((s) => s.name === 'process_start_time_seconds')
  t.ok(start && Math.abs(start.value - Date.now() / 1000) < 600, 'process start time is plausible')
  checkExposition(t, text, false)

  const om = await fetch(url, { headers: { accept: 'application/openmetrics-text; version=1.0.0' } })
  t.match(om.headers.get('content-type'), /application\/openmetrics-text/)
  checkExposition(t, await om.text(), true)

  const promtool = systemTool('promtool')
  t.test('promtool check metrics accepts it', { skip: skipWithout('promtool', promtool) }, async (t) => {
    const r = await run(promtool!, ['check', 'metrics'], { input: text })
    t.equal(r.code, 0, `promtool check metrics: ${r.stderr}`)
  })
})
