// An identity's request and duration series are remembered from its previous request, and policy decision
// series per decision object: however the labels alternate, every request lands in the series of its own labels.
import t from 'tap'
import { configSchema } from '../../src/config/schema.ts'
import { Telemetry } from '../../src/telemetry/index.ts'
import type { PolicyDecision } from '../../src/types.ts'
import { identity, requestEvent } from '../helpers/events.ts'
import { metricValue, parseMetrics } from '../helpers/metrics.ts'

const config = (service: string) => configSchema.parse({ service, audit: { output: 'off' } })

t.test('alternating labels of one identity are counted in their own series', async (t) => {
  const telemetry = new Telemetry(config('checkout'), { version: '1' })
  t.teardown(() => telemetry.close())
  const svc = identity('payments/api')
  const asJob = identity('payments/api', { kind: 'job' })
  const unverified = identity('payments/api', { verified: false })
  const variants = [
    { identity: svc, route: '/a', status: 200, method: 'GET' },
    { identity: svc, route: '/a', status: 404, method: 'GET' },
    { identity: svc, route: '/b', status: 200, method: 'GET' },
    { identity: svc, route: '/a', status: 200, method: 'POST' },
    { identity: asJob, route: '/a', status: 200, method: 'GET' },
    { identity: unverified, route: '/a', status: 200, method: 'GET' },
  ]
  // each variant n + 1 times, interleaved and in runs, so both a hit and a miss of the remembered series occur
  const want = variants.map((_, i) => i + 1)
  const left = [...want]
  for (let round = 0; left.some((n) => n > 0); round++) {
    for (let i = 0; i < variants.length; i++) {
      const runs = round % 2 === 0 ? 1 : 2
      for (let k = 0; k < runs && left[i]! > 0; k++) {
        telemetry.record(requestEvent({ ...variants[i]!, durationMs: 100 * (i + 1) }))
        left[i]!--
      }
    }
  }
  const samples = parseMetrics((await telemetry.scrape(false)).body)
  variants.forEach((v, i) => {
    const labels = {
      identity: 'payments/api',
      kind: v.identity.kind,
      verified: String(v.identity.verified),
      method: v.method,
      route: v.route,
      code: String(v.status),
    }
    t.equal(metricValue(samples, 'nhi_requests_total', labels), want[i], JSON.stringify(labels))
  })
  const duration = (kind: string, route: string) =>
    metricValue(samples, 'nhi_request_duration_seconds_count', { kind, route })
  t.equal(duration('service', '/a'), 1 + 2 + 4 + 6, 'durations by kind and route')
  t.equal(duration('service', '/b'), 3)
  t.equal(duration('job', '/a'), 5)
  t.equal(
    metricValue(samples, 'nhi_request_duration_seconds_sum', { kind: 'job', route: '/a' }),
    5 * 0.5,
    "the job's durations in the job's histogram",
  )
})

t.test('policy decisions are counted per decision, also after the service is renamed', async (t) => {
  const telemetry = new Telemetry(config('checkout'), { version: '1' })
  t.teardown(() => telemetry.close())
  const allowed: PolicyDecision = { decision: 'allow', rule: 'r1' }
  const denied: PolicyDecision = { decision: 'deny', rule: 'r1' }
  for (const d of [allowed, denied, allowed]) telemetry.record(requestEvent({ decision: d }))
  let samples = parseMetrics((await telemetry.scrape(false)).body)
  const decisions = (decision: string, service: string) =>
    metricValue(samples, 'nhi_policy_decisions_total', { decision, rule: 'r1', service })
  t.equal(decisions('allow', 'checkout'), 2)
  t.equal(decisions('deny', 'checkout'), 1)
  await telemetry.reconfigure(config('billing'))
  telemetry.record(requestEvent({ decision: allowed }))
  samples = parseMetrics((await telemetry.scrape(false)).body)
  t.equal(decisions('allow', 'billing'), 1, 'counted under the new service name')
  t.equal(decisions('allow', 'checkout'), 0, 'the old series are gone')
})
