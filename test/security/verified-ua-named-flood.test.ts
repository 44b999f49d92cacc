// a name made from what the user agent says is a `ua:` name "even on a verified request"
// (rule-set.ts), i.e. the code knows the client made it up, yet it is admitted as a verified identity
// (`apikey:ua:…`, verified=true) and so is not held to metrics.maxUnverifiedIdentities. One api-key holder
// sending many user agents takes every slot of metrics.maxIdentities, and the other verified callers that
// arrive afterwards are recorded as __overflow__: what the unverified cap exists to prevent.
import { createHash } from 'node:crypto'
import t from 'tap'
import { Agent, request } from 'undici'
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
