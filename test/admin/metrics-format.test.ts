// The exposition format a scrape gets is the one its Accept header prefers (docs/reference.md, "Metrics"): by
// weight, as Prometheus' Go client orders the ranges, then the header's order, case-insensitive, `q=0` not
// acceptable. The headers below are the ones Prometheus sends for its `scrape_protocols`.
import t from 'tap'
import { negotiateMetricsFormat } from '../../src/admin/metrics-format.ts'
import { type Config, configSchema } from '../../src/config/schema.ts'
import { Telemetry } from '../../src/telemetry/index.ts'
import { startAdmin } from '../helpers/admin.ts'

/** Prometheus 2.x's default (OpenMetrics preferred, then the classic text) */
const PROMETHEUS_2 =
  'application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1'
/** Prometheus 3.x's default, with its escaping parameters */
const PROMETHEUS_3 =
  'application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1'
/** `scrape_protocols: [PrometheusText0.0.4, OpenMetricsText1.0.0]`: the classic text first */
const TEXT_FIRST = 'text/plain;version=0.0.4;q=0.5,application/openmetrics-text;version=1.0.0;q=0.4,*/*;q=0.3'

const CASES: [accept: string | undefined, want: 'openmetrics' | 'text', why: string][] = [
  [undefined, 'text', 'no Accept'],
  ['', 'text', 'an empty Accept'],
  ['*/*', 'text', 'anything (curl)'],
  [PROMETHEUS_2, 'openmetrics', "Prometheus 2's default"],
  [PROMETHEUS_3, 'openmetrics', "Prometheus 3's default"],
  [TEXT_FIRST, 'text', 'a scraper that prefers the classic text, OpenMetrics accepted too'],
  ['application/openmetrics-text; version=1.0.0', 'openmetrics', 'OpenMetrics alone'],
  ['Application/OpenMetrics-Text; Version=1.0.0', 'openmetrics', 'media types are case-insensitive'],
  ['application/openmetrics-text;q=0, text/plain', 'text', 'OpenMetrics refused with q=0'],
  ['application/openmetrics-text;q=0', 'text', 'nothing acceptable: the classic text'],
  [
    'text/plain;q=0.2, application/openmetrics-text;q=0.9',
    'openmetrics',
    'the heavier one, whatever its place',
  ],
  ['text/plain, application/openmetrics-text', 'text', 'equal weights: the first named'],
  ['application/json, application/openmetrics-text;q=0.1', 'openmetrics', 'an unknown type is passed over'],
  ['application/openmetrics-text;q=2, text/plain;q=0.5', 'text', 'a weight out of range counts as 0'],
  ['application/openmetrics-text;q=, text/plain;q=0.1', 'text', 'an empty weight counts as 0'],
  ['application/openmetrics-text;q=high', 'text', 'a weight that is no number counts as 0'],
  [
    ' application/openmetrics-text ; q=0.8 , text/plain ; q=0.9',
    'text',
    'spaces around ranges and parameters',
  ],
  ['application/openmetrics-textx', 'text', 'a longer type that merely begins like it'],
]

t.test('the format is the Accept header’s preference', async (t) => {
  for (const [accept, want, why] of CASES) t.equal(negotiateMetricsFormat(accept), want, why)
})

t.test('/metrics answers in the negotiated format', async (t) => {
  const config: Config = configSchema.parse({ service: 'fmt', upstream: 'http://127.0.0.1:1' })
  const url = await startAdmin(t, new Telemetry(config, { version: 'test' }))
  for (const [accept, want, why] of [
    [PROMETHEUS_2, 'openmetrics', "Prometheus 2's default"],
    [TEXT_FIRST, 'text', 'the classic text preferred'],
    ['application/openmetrics-text;q=0, text/plain', 'text', 'OpenMetrics refused'],
  ] as const) {
    const res = await fetch(`${url}/metrics`, { headers: { accept } })
    const body = await res.text()
    if (want === 'openmetrics') {
      t.match(res.headers.get('content-type'), /^application\/openmetrics-text; version=1\.0\.0/, why)
      t.match(body, /# EOF\n$/, `${why}: OpenMetrics ends with # EOF`)
    } else {
      t.match(res.headers.get('content-type'), /^text\/plain; version=0\.0\.4/, why)
      t.notMatch(body, /# EOF/, `${why}: no # EOF in the classic text`)
    }
  }
})
