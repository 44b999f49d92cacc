// Unverified traffic cannot evict verified identities from the metrics: a flood of made-up user agents
// used to fill metrics.maxIdentities first-come, so a real api-key or token caller arriving afterwards was
// recorded as __overflow__. Unverified identities now have their own smaller cap inside maxIdentities.
import { createHash } from 'node:crypto'
import t from 'tap'
import { Agent, request } from 'undici'
import { mintToken, startUpstreamAndJwks } from '../helpers/jwks.ts'
import { metricValue, scrapeUntil } from '../helpers/metrics.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const KEY = 'export-key-for-the-flood-test'
const FLOOD = 3000

t.test('thousands of made-up user agents, then verified callers still get their own series', async (t) => {
  const { upstream, key: signing, jwks: idp } = await startUpstreamAndJwks(t)
  const sidecar = await startTestSidecar(t, {
    service: 'orders',
    upstream: upstream.url,
    jwt: { issuers: [{ issuer: idp.url, jwksUri: idp.jwksUri, audiences: ['orders'] }] },
    apiKeys: {
      header: 'x-api-key',
      keys: [{ name: 'billing-export', kind: 'job', sha256: createHash('sha256').update(KEY).digest('hex') }],
    },
    identities: [{ name: 'svc/{client}', kind: 'service', match: { jwt: { claims: { azp: '{client}' } } } }],
    metrics: { maxIdentities: 50, maxUnverifiedIdentities: 10 },
  })
  const proxy = sidecar.proxyUrl
  const admin = sidecar.adminUrl
  const agent = new Agent({ connections: 16 })
  t.teardown(() => agent.close())

  let next = 0
  const worker = async () => {
    while (next < FLOOD) {
      const i = next++
      const res = await request(`${proxy}/x`, {
        headers: { 'user-agent': `flood-${i}/1.0` },
        dispatcher: agent,
      })
      await res.body.dump()
    }
  }
  await Promise.all(Array.from({ length: 16 }, worker))

  const key = await request(`${proxy}/export`, { headers: { 'x-api-key': KEY }, dispatcher: agent })
  await key.body.dump()
  const token = await mintToken(signing, { azp: 'payments' }, { issuer: idp.url, audience: 'orders' })
  const jwt = await request(`${proxy}/pay`, {
    headers: { authorization: `Bearer ${token}` },
    dispatcher: agent,
  })
  await jwt.body.dump()

  const m = await scrapeUntil(
    admin,
    (s) => metricValue(s, 'nhi_requests_total') >= FLOOD + 2,
    'the flood and both verified requests to be recorded',
  )
  t.equal(
    metricValue(m, 'nhi_requests_total', { identity: 'billing-export', source: 'apikey', verified: 'true' }),
    1,
    'the api-key caller has its own series',
  )
  t.equal(
    metricValue(m, 'nhi_requests_total', { identity: 'svc/payments', source: 'jwt', verified: 'true' }),
    1,
    'the token caller has its own series',
  )
  t.equal(
    metricValue(m, 'nhi_requests_total', { identity: '__overflow__' }),
    FLOOD - 10,
    'the flood overflowed',
  )
  t.equal(metricValue(m, 'nhi_identity_overflow_total'), FLOOD - 10, 'and was counted')
  t.equal(metricValue(m, 'nhi_identities'), 12, '10 unverified + 2 verified identities tracked')
  const view = (await (await fetch(`${admin}/identities`)).json()) as { identities: { name: string }[] }
  const names = view.identities.map((r) => r.name)
  t.ok(names.includes('billing-export') && names.includes('svc/payments'), '/identities lists both')
})

t.test('the default unverified cap is a quarter of maxIdentities', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const sidecar = await startTestSidecar(t, {
    service: 'orders',
    upstream: upstream.url,
    apiKeys: {
      header: 'x-api-key',
      keys: Array.from({ length: 30 }, (_, i) => ({
        name: `key-${i}`,
        sha256: createHash('sha256').update(`${KEY}-${i}`).digest('hex'),
      })),
    },
    metrics: { maxIdentities: 40 },
  })
  const proxy = sidecar.proxyUrl
  const admin = sidecar.adminUrl
  for (let i = 0; i < 100; i++) {
    const res = await request(`${proxy}/x`, { headers: { 'user-agent': `made-up-${i}/1.0` } })
    await res.body.dump()
  }
  for (let i = 0; i < 30; i++) {
    const res = await request(`${proxy}/x`, { headers: { 'x-api-key': `${KEY}-${i}` } })
    await res.body.dump()
  }
  const m = await scrapeUntil(
    admin,
    (s) => metricValue(s, 'nhi_requests_total') >= 130,
    'all 130 requests to be recorded',
  )
  t.equal(metricValue(m, 'nhi_identity_overflow_total'), 90, 'only 10 (40 / 4) user agents were admitted')
  for (let i = 0; i < 30; i++) {
    t.equal(metricValue(m, 'nhi_requests_total', { identity: `key-${i}` }), 1, `key-${i} has its own series`)
  }
})
