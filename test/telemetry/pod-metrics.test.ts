// The merge behind /metrics with `workers: N`: counters and histograms summed series by series, gauges by
// their largest value, the identity cap applied once for the pod (folded identities counted as overflow,
// and still counted there after they go idle), runtime families kept apart by a worker label.
import t from 'tap'
import { PodMetrics, parseExposition } from '../../src/telemetry/pod-metrics.ts'

const header = (name: string, type: string) => `# HELP ${name} h\n# TYPE ${name} ${type}\n`
const id = (name: string, extra = '') => `service="s",identity="${name}",source="apikey"${extra}`

/** one worker's body: `requests` per identity, the families a worker always renders */
function worker(requests: Record<string, number>, opts: { lastSeen?: number; overflow?: number } = {}) {
  let body = header('nhi_requests_total', 'counter')
  for (const [name, n] of Object.entries(requests))
    body += `nhi_requests_total{${id(name, ',kind="service",verified="true",method="GET",route="other",code="200"')}} ${n}\n`
  body += header('nhi_request_duration_seconds', 'histogram')
  for (const [name, n] of Object.entries(requests)) {
    body += `nhi_request_duration_seconds_bucket{${id(name, ',kind="service",route="other"')},le="0.1"} ${n}\n`
    body += `nhi_request_duration_seconds_bucket{${id(name, ',kind="service",route="other"')},le="+Inf"} ${n}\n`
    body += `nhi_request_duration_seconds_count{${id(name, ',kind="service",route="other"')}} ${n}\n`
  }
  body += header('nhi_identity_overflow_total', 'counter')
  body += `nhi_identity_overflow_total{service="s"} ${opts.overflow ?? 0}\n`
  body += header('nhi_identities', 'gauge')
  body += `nhi_identities{service="s",kind="service"} ${Object.keys(requests).length}\n`
  body += header('nhi_config_reloads_total', 'counter')
  body += 'nhi_config_reloads_total{result="success"} 5\n'
  body += header('nhi_identity_last_seen_timestamp_seconds', 'gauge')
  for (const name of Object.keys(requests))
    body += `nhi_identity_last_seen_timestamp_seconds{${id(name, ',kind="service"')}} ${opts.lastSeen ?? 100}\n`
  body += header('process_start_time_seconds', 'gauge')
  body += 'process_start_time_seconds 1000\n'
  return body
}

const primary = {
  worker: 'primary',
  body: `${header('nhi_config_reloads_total', 'counter')}nhi_config_reloads_total{result="success"} 1\n${header('process_start_time_seconds', 'gauge')}process_start_time_seconds 999\n`,
}
const state = (maxIdentities: number) => ({
  service: 's',
  limits: { maxIdentities, idleTtlMs: 60_000 },
  restarts: 0,
})

function value(body: string, prefix: string): number | undefined {
  const line = body.split('\n').find((l) => l.startsWith(`${prefix} `))
  return line === undefined ? undefined : Number(line.slice(prefix.length + 1))
}
const req = (name: string) =>
  `nhi_requests_total{${id(name, ',kind="service",verified="true",method="GET",route="other",code="200"')}}`

t.test('sums counters and histograms, takes the largest gauge, one family each', async (t) => {
  const pod = new PodMetrics()
  const body = pod.merge(
    [
      { worker: '1', body: worker({ a: 2, b: 1 }, { lastSeen: 100 }) },
      { worker: '2', body: worker({ a: 3 }, { lastSeen: 200 }) },
    ],
    primary,
    state(10),
    false,
  )
  t.equal(value(body, req('a')), 5)
  t.equal(value(body, req('b')), 1)
  t.equal(
    value(body, `nhi_request_duration_seconds_bucket{${id('a', ',kind="service",route="other"')},le="+Inf"}`),
    5,
  )
  t.equal(value(body, `nhi_identity_last_seen_timestamp_seconds{${id('a', ',kind="service"')}}`), 200)
  t.equal(value(body, 'nhi_identities{service="s",kind="service"}'), 2, 'distinct identities of the pod')
  t.equal(value(body, 'nhi_config_reloads_total{result="success"}'), 1, "the primary's reloads only")
  t.equal(value(body, 'process_start_time_seconds{worker="1"}'), 1000)
  t.equal(value(body, 'process_start_time_seconds{worker="primary"}'), 999)
  t.equal(value(body, 'nhi_worker_requests_total{service="s",worker="1"}'), 3)
  t.equal(value(body, 'nhi_worker_requests_total{service="s",worker="2"}'), 3)
  t.equal(body.match(/^# TYPE nhi_requests_total /gm)?.length, 1, 'one header per family')
  t.equal(parseExposition(body).filter((f) => f.base === 'process_start_time_seconds').length, 1)
})

t.test('the identity cap holds for the pod and the overflow counter stays monotonic', async (t) => {
  const pod = new PodMetrics()
  const first = pod.merge(
    [
      { worker: '1', body: worker({ a: 2, b: 2 }) },
      { worker: '2', body: worker({ c: 3 }, { overflow: 1 }) },
    ],
    primary,
    state(2),
    false,
  )
  t.equal(value(first, req('a')), 2)
  t.equal(value(first, req('c')), undefined, 'c does not fit: folded')
  t.equal(value(first, req('__overflow__')), 3)
  t.equal(value(first, 'nhi_identity_overflow_total{service="s"}'), 4, "the worker's own 1 plus c's 3")
  t.equal(value(first, 'nhi_identities{service="s",kind="service"}'), 2)

  // c goes idle on its worker: what it recorded stays in the overflow series, as in one process
  const second = pod.merge(
    [
      { worker: '1', body: worker({ a: 3, b: 2 }) },
      { worker: '2', body: worker({}, { overflow: 1 }) },
    ],
    primary,
    state(2),
    false,
  )
  t.equal(value(second, req('__overflow__')), 3)
  t.equal(value(second, 'nhi_identity_overflow_total{service="s"}'), 4)

  // a goes idle: its slot is free again for the next identity
  const third = pod.merge([{ worker: '1', body: worker({ b: 2, d: 1 }) }], primary, state(2), false)
  t.equal(value(third, req('d')), 1)
})

t.test('OpenMetrics in, OpenMetrics out: exemplars dropped, one # EOF', async (t) => {
  const om = `# HELP nhi_requests h\n# TYPE nhi_requests counter\nnhi_requests_total{${id('a', ',kind="service",verified="true",method="GET",route="other",code="200"')}} 2 # {trace_id="abc"} 1 1.000\n# EOF\n`
  const body = new PodMetrics().merge(
    [
      { worker: '1', body: om },
      { worker: '2', body: om },
    ],
    { worker: 'primary', body: '# EOF\n' },
    state(5),
    true,
  )
  t.equal(value(body, req('a')), 4)
  t.notMatch(body, 'trace_id')
  t.ok(body.endsWith('# EOF\n'))
  t.equal(body.match(/# EOF/g)?.length, 1)
  t.match(body, /^# TYPE nhi_worker_requests counter$/m)
})

t.test('label values with braces, quotes and backslashes parse as one series', async (t) => {
  // the parser jumps from quote to quote: a `}` inside a value does not end the labels, an escaped quote
  // does not end the value, an escaped backslash before the closing quote does not escape it
  const labels = 'identity="a}b \\"c} d\\\\",route="/x{y}"'
  const body = `# TYPE x counter\nx_total{${labels}} 3 # {trace_id="t"} 1 2.000\nx_total{k="\\\\"} 4\nx_total 5\n`
  const [family] = parseExposition(body)
  t.same(
    family?.samples.map((s) => [s.prefix, s.labels, s.value]),
    [
      [`x_total{${labels}}`, labels, 3],
      ['x_total{k="\\\\"}', 'k="\\\\"', 4],
      ['x_total', '', 5],
    ],
  )
})
