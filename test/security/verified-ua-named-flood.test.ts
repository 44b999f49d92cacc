// a name made from what the user agent says is a `ua:` name "even on a verified request"
// (rule-set.ts), i.e. the code knows the client made it up, yet it is admitted as a verified identity
// (`apikey:ua:…`, verified=true) and so is not held to metrics.maxUnverifiedIdentities. One api-key holder
// sending many user agents takes every slot of metrics.maxIdentities, and the other verified callers that
// arrive afterwards are recorded as __overflow__: what the unverified cap exists to prevent.
import { createHash } from 'node:crypto'
import t from 'tap'
import { Agent, request } from 'undici'
import { mintToken, startUpstreamAndJwks } from '../helpers/jwks.ts'
import { metricValue, scrapeUntil } from '../helpers/metrics.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const PARTNER = 'partner-key-for-the-flood-test'
const BILLING = 'billing-key-for-the-flood-test'
const sha = (k: string) => createHash('sha256').update(k).digest('hex')

t.test('user-agent names on a verified request stay within the unverified cap', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const sidecar = await startTestSidecar(t, {
    upstream: upstream.url,
    apiKeys: {
      keys: [
        { name: 'partner', sha256: sha(PARTNER) },
        { name: 'billing', sha256: sha(BILLING) },
      ],
    },
    // a partner's tools, told apart by their product
    identities: [{ name: 'partner/{product}', kind: 'service', match: { apiKey: 'partner' } }],
    metrics: { maxIdentities: 50, maxUnverifiedIdentities: 10 },
  })
  const agent = new Agent({ connections: 8 })
  t.teardown(() => agent.close())
  let next = 0
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (next < 500) {
        const i = next++
        const res = await request(`${sidecar.proxyUrl}/x`, {
          headers: { 'x-api-key': PARTNER, 'user-agent': `tool${i}/1.0` },
          dispatcher: agent,
        })
        await res.body.dump()
      }
    }),
  )
  const res = await request(`${sidecar.proxyUrl}/x`, { headers: { 'x-api-key': BILLING }, dispatcher: agent })
  await res.body.dump()
  const m = await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_requests_total') >= 501,
    'all 501 requests to be recorded',
  )
  const flood = m.filter(
    (s) => s.name === 'nhi_requests_total' && s.labels['identity']!.startsWith('apikey:ua:partner/'),
  )
  t.ok(
    flood.length > 0,
    `the partner's tools are named from their user agent (${flood[0]?.labels['identity']})`,
  )
  t.ok(flood.length <= 10, `made-up names take at most maxUnverifiedIdentities series (${flood.length})`)
  t.equal(
    metricValue(m, 'nhi_requests_total', { identity: 'billing', source: 'apikey' }),
    1,
    'another verified caller still gets its own series',
  )
})

// The same hole through a capture: a verified rule whose name takes a request header or a path segment the
// credential does not cover (`tenant/{tenant}`) lets one key holder make up as many verified names as it
// likes. Such names are held to the unverified cap too; names from a token's claims are not.

/** one request on a fresh connection: under `workers: N` the cluster hands each to the next worker */
async function send(url: string, headers: Record<string, string>): Promise<void> {
  const res = await request(url, { headers, reset: true })
  await res.body.dump()
}

const TENANTS = 40

for (const { what, rule, tenantRequest } of [
  {
    what: 'a header capture',
    rule: { match: { apiKey: 'partner', header: { 'x-tenant': '{tenant}' } } },
    tenantRequest: (i: number) => ({ path: '/x', headers: { 'x-tenant': `t${i}` } }),
  },
  {
    what: 'a path capture',
    rule: { match: { apiKey: 'partner', path: '/t/{tenant}/**' } },
    tenantRequest: (i: number) => ({ path: `/t/t${i}/orders`, headers: {} }),
  },
]) {
  for (const workers of [1, 2]) {
    t.test(`verified names from ${what} stay within the unverified cap (workers: ${workers})`, async (t) => {
      const upstream = await startUpstream()
      t.teardown(() => upstream.close())
      // with two workers each worker caps its own table: the pod's cap is what is under test, so it is
      // smaller than what the two workers' unverified slots add up to
      const limits =
        workers === 1
          ? { maxIdentities: 20, maxUnverifiedIdentities: 5 }
          : { maxIdentities: 4, maxUnverifiedIdentities: 2 }
      const sidecar = await startTestSidecar(t, {
        upstream: upstream.url,
        ...(workers > 1 ? { workers } : {}),
        apiKeys: {
          keys: [
            { name: 'partner', sha256: sha(PARTNER) },
            { name: 'billing', sha256: sha(BILLING) },
          ],
        },
        identities: [{ name: 'tenant/{tenant}', kind: 'service', ...rule }],
        metrics: limits,
      })
      for (let i = 0; i < TENANTS; i++) {
        const { path, headers } = tenantRequest(i)
        await send(`${sidecar.proxyUrl}${path}`, { ...headers, 'x-api-key': PARTNER })
      }
      // scraped before the other caller arrives, as Prometheus would: the pod admits identities at scrapes
      const flooded = await scrapeUntil(
        sidecar.adminUrl,
        (s) => metricValue(s, 'nhi_requests_total') >= TENANTS,
        'the flood to be recorded',
      )
      if (workers > 1) {
        const served = flooded.filter((s) => s.name === 'nhi_worker_requests_total').map((s) => s.value)
        t.ok(
          served.length === 2 && served.every((n) => n >= limits.maxUnverifiedIdentities),
          `precondition: both workers served the flood (${served.join(' + ')})`,
        )
      }
      await send(`${sidecar.proxyUrl}/x`, { 'x-api-key': BILLING })
      const m = await scrapeUntil(
        sidecar.adminUrl,
        (s) => metricValue(s, 'nhi_requests_total') >= TENANTS + 1,
        'every request to be recorded',
      )
      const tenants = m.filter(
        (s) => s.name === 'nhi_requests_total' && s.labels['identity']!.startsWith('tenant/'),
      )
      t.ok(tenants.length > 0, `tenants are named from ${what} (${tenants[0]?.labels['identity']})`)
      t.ok(
        tenants.length <= limits.maxUnverifiedIdentities,
        `made-up names take at most maxUnverifiedIdentities series (${tenants.length})`,
      )
      t.equal(tenants[0]?.labels['verified'], 'true', 'the names are not renamed: still verified, unprefixed')
      const admitted = tenants.reduce((n, s) => n + s.value, 0)
      t.equal(
        metricValue(m, 'nhi_requests_total', { identity: '__overflow__', source: 'apikey' }),
        TENANTS - admitted,
        'the tenants past the cap are __overflow__',
      )
      t.equal(
        metricValue(m, 'nhi_requests_total', { identity: 'billing', source: 'apikey' }),
        1,
        'another verified caller still gets its own series',
      )
    })
  }
}

t.test("names from a verified token's claims are not held to the unverified cap", async (t) => {
  const { upstream, key: signing, jwks: idp } = await startUpstreamAndJwks(t)
  const sidecar = await startTestSidecar(t, {
    service: 'orders',
    upstream: upstream.url,
    jwt: { issuers: [{ issuer: idp.url, jwksUri: idp.jwksUri, audiences: ['orders'] }] },
    // the header captures {client} too, but the token's claim is checked first and fills it
    identities: [
      {
        name: 'svc/{client}',
        kind: 'service',
        match: { jwt: { claims: { azp: '{client}' } }, header: { 'x-client': '{client}' } },
      },
    ],
    metrics: { maxIdentities: 20, maxUnverifiedIdentities: 2 },
  })
  for (let i = 0; i < 6; i++) {
    const token = await mintToken(signing, { azp: `client${i}` }, { issuer: idp.url, audience: 'orders' })
    await send(`${sidecar.proxyUrl}/x`, { authorization: `Bearer ${token}`, 'x-client': `made-up-${i}` })
  }
  const m = await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_requests_total') >= 6,
    'every request to be recorded',
  )
  for (let i = 0; i < 6; i++) {
    t.equal(metricValue(m, 'nhi_requests_total', { identity: `svc/client${i}` }), 1, `svc/client${i}`)
  }
  t.equal(metricValue(m, 'nhi_identity_overflow_total'), 0, 'nothing overflowed')
})
