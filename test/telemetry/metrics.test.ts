import t from 'tap'
import { type Config, configSchema } from '../../src/config/schema.ts'
import { Telemetry } from '../../src/telemetry/index.ts'
import { startAdmin } from '../helpers/admin.ts'
import { identity, requestEvent } from '../helpers/events.ts'
import { metricValue, parseMetrics, type Sample, scrape, seriesCount } from '../helpers/metrics.ts'

function config(overrides: Record<string, unknown> = {}): Config {
  return configSchema.parse({ service: 'checkout', audit: { output: 'off' }, ...overrides })
}

const SPEC_LABELS: Record<string, string[]> = {
  // every per-identity family carries source: an identity is its (source, name)
  nhi_requests_total: ['service', 'identity', 'source', 'kind', 'verified', 'method', 'route', 'code'],
  nhi_request_duration_seconds_bucket: ['service', 'identity', 'source', 'kind', 'route', 'le'],
  nhi_request_duration_seconds_count: ['service', 'identity', 'source', 'kind', 'route'],
  nhi_request_bytes_total: ['service', 'identity', 'source', 'kind'],
  nhi_response_bytes_total: ['service', 'identity', 'source', 'kind'],
  nhi_upstream_seconds_total: ['service', 'identity', 'source', 'kind'],
  nhi_cost_total: ['service', 'identity', 'source', 'kind', 'currency'],
  nhi_auth_failures_total: ['service', 'source', 'reason'],
  nhi_credential_expiry_timestamp_seconds: ['service', 'identity', 'source'],
  nhi_identity_last_seen_timestamp_seconds: ['service', 'identity', 'source', 'kind'],
  nhi_job_last_success_timestamp_seconds: ['service', 'identity', 'source'],
  nhi_job_consecutive_failures: ['service', 'identity', 'source'],
  nhi_identities: ['service', 'kind'],
  nhi_identity_overflow_total: ['service'],
  nhi_credential_anomalies_total: ['service', 'type'],
  nhi_policy_decisions_total: ['service', 'decision', 'rule'],
  nhi_upstream_errors_total: ['service', 'reason'],
  nhi_jwks_refresh_total: ['issuer', 'result'],
  nhi_jwks_keys: ['issuer'],
  nhi_jwks_last_success_timestamp_seconds: ['issuer'],
  nhi_config_reloads_total: ['result'],
  nhi_build_info: ['version', 'node'],
}

function labelKeys(samples: Sample[], name: string): string[][] {
  return samples.filter((s) => s.name === name).map((s) => Object.keys(s.labels).sort())
}

t.test('per-identity values and exactly the SPEC label sets', async (t) => {
  const telemetry = new Telemetry(
    config({ cost: { currency: 'EUR', perRequest: 0.5, perGiB: 1024, perUpstreamSecond: 2 } }),
    { version: '1.2.3' },
  )
  const url = await startAdmin(t, telemetry)
  const payments = identity('payments/api', { expiresAt: 2_000_000_000 })
  const nightly = identity('ci/nightly', { kind: 'job', source: 'jwt', expectEveryMs: 3_600_000 })
  telemetry.record(requestEvent({ identity: payments, bytesIn: 1024 ** 2, bytesOut: 0, upstreamMs: 500 }))
  telemetry.record(requestEvent({ identity: payments, method: 'POST', status: 201, bytesIn: 0, bytesOut: 0 }))
  telemetry.record(requestEvent({ identity: nightly, status: 200 }))
  telemetry.record(requestEvent({ identity: nightly, status: 503, upstreamError: 'timeout' }))
  telemetry.record(requestEvent({ identity: nightly, status: 401 }))
  telemetry.record(
    requestEvent({
      identity: identity('anonymous', { kind: 'unknown', source: 'anonymous', verified: false }),
      status: 403,
      failures: [
        { failed: true, source: 'jwt', reason: 'expired' },
        { failed: true, source: 'jwt', reason: 'unknown_kid' },
      ],
      anomalies: ['expired_in_use'],
      decision: { decision: 'would_deny', rule: 'admin-only' },
    }),
  )
  telemetry.jwksObserver.refreshed('https://idp.example', 'success', 3, 1_700_000_000_000)
  telemetry.jwksObserver.refreshed('https://idp.example', 'failure', 3, 1_700_000_100_000)
  telemetry.configReloaded('success', 1_700_000_000_000)
  telemetry.configReloaded('failure')

  const m = await scrape(url)
  const s = { service: 'checkout' }
  t.equal(metricValue(m, 'nhi_requests_total', { ...s, identity: 'payments/api' }), 2)
  t.equal(
    metricValue(m, 'nhi_requests_total', {
      identity: 'payments/api',
      kind: 'service',
      source: 'mtls',
      verified: 'true',
      method: 'POST',
      route: '/api/v1/orders/:id',
      code: '201',
    }),
    1,
  )
  t.equal(metricValue(m, 'nhi_request_duration_seconds_count', { identity: 'payments/api' }), 2)
  t.equal(metricValue(m, 'nhi_request_duration_seconds_sum', { identity: 'payments/api' }), 0.024)
  t.equal(metricValue(m, 'nhi_request_bytes_total', { identity: 'payments/api' }), 1024 ** 2)
  t.equal(metricValue(m, 'nhi_upstream_seconds_total', { identity: 'payments/api' }), 0.51)
  // 2 × 0.5 per request + 1 MiB × 1024/GiB + (0.5 s + 0.01 s) × 2/s
  t.ok(
    Math.abs(metricValue(m, 'nhi_cost_total', { identity: 'payments/api', currency: 'EUR' }) - 3.02) < 1e-9,
  )
  t.equal(
    metricValue(m, 'nhi_credential_expiry_timestamp_seconds', { identity: 'payments/api', source: 'mtls' }),
    2e9,
  )
  t.equal(metricValue(m, 'nhi_auth_failures_total', { source: 'jwt', reason: 'expired' }), 1)
  t.equal(metricValue(m, 'nhi_auth_failures_total', { source: 'jwt', reason: 'unknown_kid' }), 1)
  t.equal(metricValue(m, 'nhi_credential_anomalies_total', { type: 'expired_in_use' }), 1)
  t.equal(metricValue(m, 'nhi_policy_decisions_total', { decision: 'would_deny', rule: 'admin-only' }), 1)
  t.equal(seriesCount(m, 'nhi_policy_decisions_total'), 1, 'skipped decisions are not counted')
  t.equal(metricValue(m, 'nhi_upstream_errors_total', { reason: 'timeout' }), 1)
  t.equal(metricValue(m, 'nhi_identities', { kind: 'service' }), 1)
  t.equal(metricValue(m, 'nhi_identities', { kind: 'job' }), 1)
  t.equal(metricValue(m, 'nhi_job_consecutive_failures', { identity: 'ci/nightly' }), 2)
  t.ok(metricValue(m, 'nhi_job_last_success_timestamp_seconds', { identity: 'ci/nightly' }) > 1.7e9)
  t.equal(metricValue(m, 'nhi_job_expected_interval_seconds', { identity: 'ci/nightly' }), 3600)
  t.equal(seriesCount(m, 'nhi_job_consecutive_failures'), 1, 'only jobs get job gauges')
  t.equal(metricValue(m, 'nhi_jwks_refresh_total', { issuer: 'https://idp.example', result: 'failure' }), 1)
  t.equal(metricValue(m, 'nhi_jwks_keys', { issuer: 'https://idp.example' }), 3)
  t.equal(metricValue(m, 'nhi_jwks_last_success_timestamp_seconds', { issuer: 'https://idp.example' }), 1.7e9)
  t.equal(metricValue(m, 'nhi_config_reloads_total', { result: 'failure' }), 1)
  t.equal(metricValue(m, 'nhi_config_last_reload_success_timestamp_seconds'), 1.7e9)
  t.equal(metricValue(m, 'nhi_build_info', { version: '1.2.3', node: process.version }), 1)

  for (const [name, keys] of Object.entries(SPEC_LABELS)) {
    const sets = labelKeys(m, name)
    t.ok(sets.length > 0, `${name} is exported`)
    for (const set of sets) t.same(set, [...keys].sort(), `${name} labels`)
  }
})

t.test('10,000 identities with maxIdentities 100 stay within 101 identity series', async (t) => {
  const telemetry = new Telemetry(config({ metrics: { maxIdentities: 100 } }), { version: 'test' })
  const url = await startAdmin(t, telemetry)
  for (let i = 0; i < 10_000; i++) telemetry.record(requestEvent({ identity: identity(`svc-${i}`) }))
  const m = await scrape(url)
  const identities = new Set(
    m.filter((s) => s.name === 'nhi_requests_total').map((s) => s.labels['identity']),
  )
  t.equal(identities.size, 101)
  t.ok(identities.has('__overflow__'))
  t.equal(metricValue(m, 'nhi_requests_total', { identity: '__overflow__' }), 9_900)
  t.equal(metricValue(m, 'nhi_identity_overflow_total', { service: 'checkout' }), 9_900)
  t.equal(metricValue(m, 'nhi_identities'), 100, 'the overflow bucket is not an identity')
  t.equal(telemetry.identities().identities.length, 101, '/identities is bounded by the same table')
})

t.test('one name under two sources is two identities, and overflow never mixes sources', async (t) => {
  const telemetry = new Telemetry(config({ metrics: { maxIdentities: 2 } }), { version: 'test' })
  const url = await startAdmin(t, telemetry)
  const key = identity('payments', { source: 'apikey', kind: 'job' })
  const cert = identity('payments', { source: 'mtls', kind: 'job', expiresAt: 2e9 })
  for (let i = 0; i < 2; i++) telemetry.record(requestEvent({ identity: key }))
  for (let i = 0; i < 3; i++) telemetry.record(requestEvent({ identity: cert, status: 500 }))
  // the table is full (two entries): newcomers overflow into their own source's bucket
  telemetry.record(requestEvent({ identity: identity('late-token', { source: 'jwt' }) }))
  telemetry.record(requestEvent({ identity: identity('late-key', { source: 'apikey' }) }))
  telemetry.record(requestEvent({ identity: identity('late-key-2', { source: 'apikey' }) }))

  const view = telemetry.identities()
  t.equal(view.tracked, 2, 'maxIdentities counts (source, name) entries')
  const rows = view.identities.map((r) => [r.name, r.source, r.requests, r.job?.consecutiveFailures ?? null])
  t.same(
    rows.sort(),
    [
      ['__overflow__', 'apikey', 2, null],
      ['__overflow__', 'jwt', 1, null],
      ['payments', 'apikey', 2, 0],
      ['payments', 'mtls', 3, 3],
    ],
    'two payments rows, each with its own counts and job state; one overflow row per source',
  )

  const m = await scrape(url)
  const keys = m.map((s) => `${s.name}${JSON.stringify(Object.entries(s.labels).sort())}`)
  t.equal(new Set(keys).size, keys.length, 'no duplicate series')
  t.equal(metricValue(m, 'nhi_requests_total', { identity: 'payments', source: 'apikey' }), 2)
  t.equal(metricValue(m, 'nhi_requests_total', { identity: 'payments', source: 'mtls' }), 3)
  t.equal(metricValue(m, 'nhi_job_consecutive_failures', { identity: 'payments', source: 'mtls' }), 3)
  t.equal(metricValue(m, 'nhi_job_consecutive_failures', { identity: 'payments', source: 'apikey' }), 0)
  t.equal(seriesCount(m, 'nhi_credential_expiry_timestamp_seconds'), 1, 'only the certificate expires')
  t.equal(metricValue(m, 'nhi_requests_total', { identity: '__overflow__', source: 'apikey' }), 2)
  t.equal(metricValue(m, 'nhi_identity_overflow_total'), 3)
  t.equal(metricValue(m, 'nhi_identities'), 2)
  t.equal(telemetry.recordFailures, 0)
})

t.test('idle identities are dropped from every metric and free their slot', async (t) => {
  let now = 1_700_000_000_000
  const telemetry = new Telemetry(config({ metrics: { maxIdentities: 2, idleTtl: '10m' } }), {
    version: 'test',
    now: () => now,
  })
  const url = await startAdmin(t, telemetry)
  const cfg = { cost: { perRequest: 1 } }
  telemetry.reconfigure(config({ ...cfg, metrics: { maxIdentities: 2, idleTtl: '10m' } }))
  telemetry.record(requestEvent({ identity: identity('old', { expiresAt: 2e9 }) }))
  telemetry.record(
    requestEvent({ identity: identity('old-job', { kind: 'job', expectEveryMs: 3_600_000 }), status: 500 }),
  )
  telemetry.record(requestEvent({ identity: identity('late') }))
  let m = await scrape(url)
  t.equal(metricValue(m, 'nhi_requests_total', { identity: '__overflow__' }), 1, 'table full')

  now += 11 * 60_000
  telemetry.record(requestEvent({ identity: identity('fresh') }))
  m = await scrape(url)
  const names = new Set(m.filter((s) => s.labels['identity'] !== undefined).map((s) => s.labels['identity']))
  t.notOk(names.has('old'), 'idle identity removed from all metrics')
  t.notOk(names.has('__overflow__'), 'idle overflow bucket removed too')
  t.ok(names.has('fresh'), 'the freed slot admits a new identity')
  t.ok(names.has('old-job'), 'a job with expectEvery is kept until 2× its interval so it can alert as silent')
  t.equal(metricValue(m, 'nhi_identity_overflow_total'), 1, 'fresh did not overflow')

  now += 2 * 3_600_000
  m = await scrape(url)
  t.equal(seriesCount(m, 'nhi_requests_total'), 0)
  t.equal(seriesCount(m, 'nhi_cost_total'), 0)
  t.equal(seriesCount(m, 'nhi_request_duration_seconds_bucket'), 0)
  t.equal(seriesCount(m, 'nhi_job_consecutive_failures'), 0)
})

t.test('OpenMetrics scrape carries trace_id exemplars and leaves the text format intact', async (t) => {
  const telemetry = new Telemetry(config(), { version: 'test' })
  const url = await startAdmin(t, telemetry)
  const traceId = '4bf92f3577b34da6a3ce929d0e0e4736'
  telemetry.record(requestEvent({ traceId }))
  const res = await fetch(`${url}/metrics`, {
    headers: { accept: 'application/openmetrics-text; version=1.0.0' },
  })
  t.match(res.headers.get('content-type'), /^application\/openmetrics-text/)
  const body = await res.text()
  t.match(body, new RegExp(`^nhi_requests_total\\{[^}]*\\} 1 # \\{trace_id="${traceId}"\\} 1 `, 'm'))
  t.match(
    body,
    new RegExp(`^nhi_request_duration_seconds_bucket\\{[^}]*\\} 1 # \\{trace_id="${traceId}"\\}`, 'm'),
  )
  t.match(body, /# EOF\n$/)

  const text = await fetch(`${url}/metrics`)
  t.match(text.headers.get('content-type'), /^text\/plain; version=0\.0\.4/)
  const plain = await text.text()
  t.match(plain, /^nhi_requests_total\{/m, 'counter keeps its _total name after an OpenMetrics scrape')
  t.notMatch(plain, /trace_id/, 'no exemplars in the text format')
  t.equal(metricValue(parseMetrics(plain), 'nhi_requests_total'), 1)
})

t.test('reconfigure keeps existing series and applies the new cap', async (t) => {
  const telemetry = new Telemetry(config({ metrics: { maxIdentities: 1 } }), { version: 'test' })
  const url = await startAdmin(t, telemetry)
  telemetry.record(requestEvent({ identity: identity('a') }))
  telemetry.record(requestEvent({ identity: identity('b') }))
  telemetry.reconfigure(config({ metrics: { maxIdentities: 5 } }))
  telemetry.record(requestEvent({ identity: identity('c') }))
  const m = await scrape(url)
  t.equal(metricValue(m, 'nhi_requests_total', { identity: 'a' }), 1)
  t.equal(metricValue(m, 'nhi_requests_total', { identity: 'c' }), 1)
  t.equal(metricValue(m, 'nhi_requests_total', { identity: '__overflow__' }), 1)
  t.equal(telemetry.recordFailures, 0)
})

t.test('every scrape shows what changed since the last one, in both formats', async (t) => {
  // series keep their rendered lines between scrapes: each scrape here follows a change the kept text
  // must not hide
  const telemetry = new Telemetry(config({ metrics: { maxIdentities: 2 } }), { version: 'test' })
  const url = await startAdmin(t, telemetry)
  const both = async () => {
    const om = await fetch(`${url}/metrics`, {
      headers: { accept: 'application/openmetrics-text; version=1.0.0' },
    }).then((r) => r.text())
    // the same values as the text format, exemplars aside
    const text = await scrape(url)
    t.same(
      parseMetrics(om.replace(/ # \{[^}]*\}[^\n]*/g, ''))
        .filter((s) => s.name.startsWith('nhi_') && s.name !== 'nhi_build_info')
        .map((s) => `${s.name}${JSON.stringify(s.labels)} ${s.value}`)
        .sort(),
      text
        .filter((s) => s.name.startsWith('nhi_') && s.name !== 'nhi_build_info')
        .map((s) => `${s.name.replace(/_total$/, '_total')}${JSON.stringify(s.labels)} ${s.value}`)
        .sort(),
      'OpenMetrics and text carry the same samples',
    )
    return { text, om }
  }
  const traceA = '0af7651916cd43dd8448eb211c80319c'
  telemetry.record(
    requestEvent({ identity: identity('a', { expiresAt: 2e9 }), durationMs: 50, traceId: traceA }),
  )
  let { text, om } = await both()
  t.equal(metricValue(text, 'nhi_requests_total', { identity: 'a' }), 1)
  t.equal(metricValue(text, 'nhi_request_duration_seconds_bucket', { identity: 'a', le: '0.025' }), 0)
  t.equal(metricValue(text, 'nhi_request_duration_seconds_bucket', { identity: 'a', le: '0.05' }), 1)
  t.match(om, new RegExp(`le="0\\.05"\\} 1 # \\{trace_id="${traceA}"\\} 0\\.05 `))

  const traceB = '1bf7651916cd43dd8448eb211c80319d'
  telemetry.record(requestEvent({ identity: identity('a'), durationMs: 20, traceId: traceB }))
  ;({ text, om } = await both())
  t.equal(metricValue(text, 'nhi_requests_total', { identity: 'a' }), 2, 'a changed value')
  t.equal(metricValue(text, 'nhi_request_duration_seconds_bucket', { identity: 'a', le: '0.025' }), 1)
  t.equal(metricValue(text, 'nhi_request_duration_seconds_bucket', { identity: 'a', le: '+Inf' }), 2)
  t.match(om, new RegExp(`le="0\\.025"\\} 1 # \\{trace_id="${traceB}"\\} 0\\.02 `), 'the new exemplar')
  t.match(om, new RegExp(`le="0\\.05"\\} 2 # \\{trace_id="${traceA}"\\} 0\\.05 `), 'the older one kept')

  telemetry.record(requestEvent({ identity: identity('b') }))
  ;({ text } = await both())
  t.equal(metricValue(text, 'nhi_requests_total', { identity: 'b' }), 1, 'a new identity')
  t.equal(seriesCount(text, 'nhi_identity_last_seen_timestamp_seconds'), 2)

  for (let i = 0; i < 3; i++) telemetry.record(requestEvent({ identity: identity(`late-${i}`) }))
  ;({ text } = await both())
  t.equal(metricValue(text, 'nhi_requests_total', { identity: '__overflow__' }), 3, 'folded past the cap')
  t.equal(metricValue(text, 'nhi_identity_overflow_total'), 3)
  telemetry.record(requestEvent({ identity: identity('late-9') }))
  ;({ text } = await both())
  t.equal(metricValue(text, 'nhi_requests_total', { identity: '__overflow__' }), 4, 'and counted on')

  await telemetry.reconfigure(config({ service: 'orders', metrics: { maxIdentities: 2 } }))
  telemetry.record(requestEvent({ identity: identity('a', { expiresAt: 2e9 }) }))
  ;({ text } = await both())
  const services = new Set(text.filter((s) => s.name.startsWith('nhi_')).map((s) => s.labels['service']))
  services.delete(undefined)
  t.same([...services], ['orders'], 'a new service name relabels every series, the gauges too')
  t.equal(metricValue(text, 'nhi_credential_expiry_timestamp_seconds', { identity: 'a' }), 2e9)
})
