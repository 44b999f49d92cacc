// `nhi-proxy demo` end to end: it starts from nothing, prints its URLs, and its traffic shows every kind of
// caller, verified and unverified sources, every anomaly type and the failure reasons the README names.
import t from 'tap'
import { ANOMALY_TYPES } from '../../src/types.ts'
import { eventually } from '../helpers/eventually.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { spawnDemo } from '../helpers/sidecar.ts'

t.test('demo shows every kind, source and anomaly', async (t) => {
  const demo = spawnDemo({ rate: 40 })
  t.teardown(() => demo.kill('SIGKILL'))
  const metricsLine = await demo.waitFor(/metrics\s+(http:\/\/127\.0\.0\.1:\d+)\/metrics/, 30_000)
  await demo.waitFor(/live view\s+http:\/\/127\.0\.0\.1:\d+\/ui/)
  const admin = metricsLine[1]!
  const expected: [string, string, Record<string, string>][] = [
    ...['human', 'service', 'job', 'bot', 'agent'].map((kind): [string, string, Record<string, string>] => [
      `kind ${kind} has traffic`,
      'nhi_requests_total',
      { kind },
    ]),
    ...['mtls', 'xfcc', 'jwt', 'apikey', 'signature', 'useragent'].map(
      (source): [string, string, Record<string, string>] => [
        `source ${source} has traffic`,
        'nhi_requests_total',
        { source },
      ],
    ),
    ...ANOMALY_TYPES.map((type): [string, string, Record<string, string>] => [
      `anomaly ${type} provoked`,
      'nhi_credential_anomalies_total',
      { type },
    ]),
    ...[
      'payments/api',
      'orders/worker',
      'inventory/sync',
      'ci/nightly-etl',
      'billing-export',
      'agent.demo',
    ].map((identity): [string, string, Record<string, string>] => [
      `identity ${identity} seen`,
      'nhi_requests_total',
      { identity },
    ]),
    // the failure reasons the README says the demo shows
    ...[
      'expired',
      'unknown_kid',
      'bad_signature',
      'untrusted_forwarder',
      'apikey_unknown',
      'signature_replayed',
    ].map((reason): [string, string, Record<string, string>] => [
      `failure ${reason} provoked`,
      'nhi_auth_failures_total',
      { reason },
    ]),
    ['observe mode records would_deny', 'nhi_policy_decisions_total', { decision: 'would_deny' }],
    [
      "the crawler inside Google's ranges is the verified googlebot",
      'nhi_requests_total',
      { identity: 'googlebot', source: 'useragent', verified: 'true' },
    ],
    [
      'a Googlebot from outside those ranges stays unverified',
      'nhi_requests_total',
      { identity: 'ua:googlebot', source: 'useragent', verified: 'false' },
    ],
  ]
  const seen = (m: Awaited<ReturnType<typeof scrape>>) =>
    expected.every(([, name, labels]) => metricValue(m, name, labels) > 0)
  // the demo's traffic generator covers every case within its first rounds; a miss after the wait is reported
  const m = await eventually(
    async () => {
      const scraped = await scrape(admin)
      return seen(scraped) ? scraped : undefined
    },
    { timeoutMs: 20_000, intervalMs: 250 },
  ).catch(() => scrape(admin))
  for (const [what, name, labels] of expected) t.ok(metricValue(m, name, labels) > 0, what)
  const ids = (await (await fetch(`${admin}/identities`)).json()) as unknown
  t.ok(JSON.stringify(ids).includes('payments/api'), '/identities lists the demo services')
  t.ok(
    metricValue(m, 'nhi_requests_total', { identity: 'agent.demo', source: 'signature', verified: 'true' }) >
      0,
    'the signed agent is verified',
  )
  t.ok(
    metricValue(m, 'nhi_auth_failures_total', { source: 'signature', reason: 'signature_replayed' }) > 0,
    'a replayed signature is refused',
  )
  const rows = (ids as { identities: { actor?: string; onBehalfOf?: string }[] }).identities
  t.ok(
    rows.some((r) => r.actor === 'demo-mail-agent' && r.onBehalfOf),
    'the delegated agent shows as acting on behalf of its user',
  )
  demo.kill('SIGTERM')
  t.equal(await demo.exited, 0, 'demo exits 0 on SIGTERM')
})
