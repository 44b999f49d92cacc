// The identity table copies an identity's fields (team, zone, rule, agent, expiry) and its edge's trust
// boundary only when a request brings a different identity object than the last one. A reload hands out
// new objects: the entry, its edges and its series must follow them however the objects alternate.
import t from 'tap'
import { configSchema } from '../../src/config/schema.ts'
import { Telemetry } from '../../src/telemetry/index.ts'
import { identity, requestEvent } from '../helpers/events.ts'
import { metricValue, parseMetrics } from '../helpers/metrics.ts'

const config = configSchema.parse({ service: 'checkout', audit: { output: 'off' } })

t.test('a new identity object for the same name updates the row, its edges and its series', async (t) => {
  const telemetry = new Telemetry(config, { version: '1' })
  t.teardown(() => telemetry.close())
  const before = identity('payments/api', { team: 'payments', zone: 'internal', rule: 'mesh' })
  const after = identity('payments/api', {
    team: 'billing',
    zone: 'external',
    rule: 'edge',
    kind: 'job',
    attributes: { agent_operator: 'Acme' },
  })
  const row = () => telemetry.identities().identities.find((r) => r.name === 'payments/api')!
  const edge = (callee: string) => telemetry.identities().edges.find((e) => e.callee === callee)!

  for (let i = 0; i < 3; i++) telemetry.record(requestEvent({ identity: before }))
  t.match(row(), { team: 'payments', zone: 'internal', rule: 'mesh', kind: 'service', requests: 3 })
  t.match(edge('checkout'), { requests: 3, zone: 'internal', boundary: 'internal-verified' })

  for (let i = 0; i < 2; i++) telemetry.record(requestEvent({ identity: after }))
  t.match(row(), {
    team: 'billing',
    zone: 'external',
    rule: 'edge',
    kind: 'job',
    operator: 'Acme',
    requests: 5,
  })
  t.match(edge('checkout'), { requests: 5, zone: 'external', boundary: 'external' })

  // back to the first object, and to a second callee in between: each request updates its own edge
  telemetry.record(requestEvent({ identity: before, service: 'ledger' }))
  telemetry.record(requestEvent({ identity: before }))
  t.match(row(), { team: 'payments', zone: 'internal', kind: 'service', requests: 7 })
  t.match(edge('checkout'), { requests: 6, zone: 'internal', boundary: 'internal-verified' })
  t.match(edge('ledger'), { requests: 1, zone: 'internal', boundary: 'internal-verified' })

  const samples = parseMetrics((await telemetry.scrape(false)).body)
  const requests = (kind: string, method: string) =>
    metricValue(samples, 'nhi_requests_total', {
      identity: 'payments/api',
      kind,
      method,
      route: '/api/v1/orders/:id',
    })
  t.equal(requests('service', 'GET'), 5, 'the first object: its kind')
  t.equal(requests('job', 'GET'), 2, 'the second object: its kind')
})

t.test('methods outside the known set share the OTHER label, also when they follow each other', async (t) => {
  const telemetry = new Telemetry(config, { version: '1' })
  t.teardown(() => telemetry.close())
  const id = identity('payments/api')
  for (const method of ['PROPFIND', 'PROPFIND', 'GET', 'MKCOL', 'GET', 'GET']) {
    telemetry.record(requestEvent({ identity: id, method }))
  }
  const samples = parseMetrics((await telemetry.scrape(false)).body)
  const requests = (method: string) =>
    metricValue(samples, 'nhi_requests_total', { identity: 'payments/api', method })
  t.equal(requests('OTHER'), 3)
  t.equal(requests('GET'), 3)
  t.equal(requests('PROPFIND'), 0, 'never a label of its own')
})
