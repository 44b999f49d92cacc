// Two replicas of one workload call with tokens of the same identity: one whose renewal broke (expiring in
// 2 h) and one just renewed (24 h). Whichever called last, the sidecar's /metrics and /identities show the
// earlier expiry: the gauge that flipped between the two hid the broken replica from the expiry alert.
import t from 'tap'
import { mintToken, startUpstreamAndJwks } from '../helpers/jwks.ts'
import { metricValue, scrapeUntil } from '../helpers/metrics.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

const EXPIRY = 'nhi_credential_expiry_timestamp_seconds'

t.test('alternating tokens of one identity: /metrics and /identities show the earlier expiry', async (t) => {
  const { upstream, key, jwks } = await startUpstreamAndJwks(t)
  const sidecar = await startTestSidecar(t, {
    upstream: upstream.url,
    jwt: { issuers: [{ issuer: jwks.url, jwksUri: jwks.jwksUri, audiences: ['orders'] }] },
  })
  const token = (expiresIn: number) =>
    mintToken(key, {}, { issuer: jwks.url, audience: 'orders', subject: 'shop-cart', expiresIn })
  const broken = await token(2 * 3600)
  const renewed = await token(24 * 3600)
  const expOf = (jwt: string) =>
    (JSON.parse(Buffer.from(jwt.split('.')[1]!, 'base64url').toString()) as { exp: number }).exp

  // the renewed replica calls last
  const calls = [broken, renewed, broken, renewed]
  for (const jwt of calls) {
    const res = await fetch(`${sidecar.proxyUrl}/orders`, { headers: { authorization: `Bearer ${jwt}` } })
    t.equal(res.status, 200)
    await res.arrayBuffer()
  }
  const m = await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_requests_total', { source: 'jwt', verified: 'true' }) >= calls.length,
    'the requests to be recorded',
  )
  t.equal(metricValue(m, 'nhi_requests_total', { source: 'jwt', verified: 'true' }), calls.length)
  const series = m.filter((s) => s.name === EXPIRY)
  t.equal(series.length, 1, 'one identity')
  t.equal(series[0]?.value, expOf(broken), "the broken replica's expiry, not the last caller's")

  const view = (await (await fetch(`${sidecar.adminUrl}/identities`)).json()) as {
    identities: { source: string; name: string; credentialExpiry?: string }[]
  }
  const row = view.identities.find((r) => r.source === 'jwt')
  t.equal(row?.name, series[0]?.labels['identity'])
  t.equal(row?.credentialExpiry, new Date(expOf(broken) * 1000).toISOString(), '/identities: the same')
})
