// a verified token whose `exp` lies beyond what a JavaScript Date can hold (year > 275,760: exp >
// 8.64e12 s) makes /identities answer 500 for every operator, for as long as that identity is tracked:
// the row's credentialExpiry is built with new Date(exp * 1000).toISOString(), which throws RangeError.
// /metrics and the live view keep working; the one identity takes the whole /identities view (and the /ui
// table built from it) down.
import t from 'tap'
import { mintToken, startUpstreamAndJwks } from '../helpers/jwks.ts'
import { metricValue, scrapeUntil } from '../helpers/metrics.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

t.test('a token expiring far in the future does not break /identities', async (t) => {
  const { upstream, key, jwks } = await startUpstreamAndJwks(t)
  const sidecar = await startTestSidecar(t, {
    upstream: upstream.url,
    jwt: { issuers: [{ issuer: jwks.url, jwksUri: jwks.jwksUri, audiences: ['orders'] }] },
  })
  const normal = await mintToken(key, {}, { issuer: jwks.url, audience: 'orders', subject: 'billing' })
  const forever = await mintToken(
    key,
    {},
    { issuer: jwks.url, audience: 'orders', subject: 'archiver', expiresIn: 1e13 },
  )
  for (const token of [normal, forever]) {
    const res = await fetch(`${sidecar.proxyUrl}/x`, { headers: { authorization: `Bearer ${token}` } })
    t.equal(res.status, 200)
    await res.arrayBuffer()
  }
  const m = await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_requests_total', { source: 'jwt', verified: 'true' }) >= 2,
    'both requests to be recorded',
  )
  t.ok(metricValue(m, 'nhi_requests_total', { source: 'jwt', verified: 'true' }) === 2, 'both verified')

  const res = await fetch(`${sidecar.adminUrl}/identities`)
  const body = await res.text()
  t.equal(res.status, 200, `/identities answers (${body.slice(0, 80)})`)
  if (res.status === 200) {
    const view = JSON.parse(body) as { identities: { name: string; source: string }[] }
    t.equal(
      view.identities.filter((r) => r.source === 'jwt').length,
      2,
      `both token callers are listed: ${body}`,
    )
  }
})
