// `__overflow__` is the name the metrics give identities beyond the cardinality cap. A token whose claim is
// that text, named by a rule (`name: '{user}'`), took it as is: its requests shared the series of its source's
// overflow entry, /identities showed it as overflow (the table folded it into that entry) and `inventory`,
// which leaves `__overflow__` out, never listed it. A verified name so spelled is prefixed with its source,
// as `anonymous` and `ua:…` are.
import t from 'tap'
import { request } from 'undici'
import { mintToken, startUpstreamAndJwks } from '../helpers/jwks.ts'
import { metricValue, scrapeUntil } from '../helpers/metrics.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

t.test('a token named __overflow__ is its own identity, not the overflow', async (t) => {
  const { upstream, key, jwks } = await startUpstreamAndJwks(t)
  const sidecar = await startTestSidecar(t, {
    upstream: upstream.url,
    jwt: { issuers: [{ issuer: jwks.url, jwksUri: jwks.jwksUri, audiences: ['orders'] }] },
    identities: [
      { name: '{user}', kind: 'service', match: { jwt: { claims: { preferred_username: '{user}' } } } },
    ],
  })
  const token = await mintToken(
    key,
    { preferred_username: '__overflow__' },
    { issuer: jwks.url, audience: 'orders' },
  )
  const res = await request(`${sidecar.proxyUrl}/echo`, { headers: { authorization: `Bearer ${token}` } })
  const headers = JSON.parse(await res.body.text()).headers as Record<string, string>
  t.equal(headers['x-nhi-identity'], 'jwt:__overflow__', 'named with its source, as `anonymous` would be')

  const samples = await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_requests_total', { source: 'jwt' }) >= 1,
    'the request recorded',
  )
  t.equal(metricValue(samples, 'nhi_requests_total', { identity: 'jwt:__overflow__', source: 'jwt' }), 1)
  t.equal(metricValue(samples, 'nhi_requests_total', { identity: '__overflow__' }), 0, 'no overflow series')
  t.equal(metricValue(samples, 'nhi_identity_overflow_total'), 0, 'nothing counted as overflow')
  const view = (await (await fetch(`${sidecar.adminUrl}/identities`)).json()) as {
    identities: { name: string; source: string; overflow: boolean }[]
  }
  t.same(
    view.identities.map((r) => [r.name, r.source, r.overflow]),
    [['jwt:__overflow__', 'jwt', false]],
    '/identities: its own row, not the overflow',
  )
})
