// `nhi-proxy demo` end to end: it starts from nothing, prints its URLs, and its traffic shows every kind of
// caller, verified and unverified sources, and every anomaly type.
import t from 'tap'
import { ANOMALY_TYPES } from '../src/types.ts'
import { metricValue, scrape } from './helpers/metrics.ts'
import { spawnDemo } from './helpers/sidecar.ts'

t.test('demo shows every kind, source and anomaly', async (t) => {
  const demo = spawnDemo({ rate: 40 })
  t.teardown(() => demo.kill('SIGKILL'))
  const metricsLine = await demo.waitFor(/metrics\s+(http:\/\/127\.0\.0\.1:\d+)\/metrics/, 30_000)
  await demo.waitFor(/live view\s+http:\/\/127\.0\.0\.1:\d+\/ui/)
  const admin = metricsLine[1]!
  await new Promise((r) => setTimeout(r, 1500))
  const m = await scrape(admin)
  for (const kind of ['human', 'service', 'job', 'bot', 'agent']) {
    t.ok(metricValue(m, 'nhi_requests_total', { kind }) > 0, `kind ${kind} has traffic`)
  }
  for (const source of ['mtls', 'xfcc', 'jwt', 'apikey', 'signature', 'useragent']) {
    t.ok(metricValue(m, 'nhi_requests_total', { source }) > 0, `source ${source} has traffic`)
  }
  for (const type of ANOMALY_TYPES) {
    t.ok(metricValue(m, 'nhi_credential_anomalies_total', { type }) > 0, `anomaly ${type} provoked`)
  }
  for (const identity of [
    'payments/api',
    'orders/worker',
    'inventory/sync',
    'ci/nightly-etl',
    'billing-export',
    'agent.demo',
  ]) {
    t.ok(metricValue(m, 'nhi_requests_total', { identity }) > 0, `identity ${identity} seen`)
  }
  t.ok(
    metricValue(m, 'nhi_policy_decisions_total', { decision: 'would_deny' }) > 0,
    'observe mode records would_deny',
  )
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
