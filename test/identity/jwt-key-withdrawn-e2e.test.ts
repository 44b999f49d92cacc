// From the operator's side, through the built bundle: an IdP withdraws a signing key from its key set (a
// retired or compromised key). Once the proxy has fetched the new set, a token signed with that key is no
// longer verified, whether the proxy had cached the token's verification or never saw the token before; a
// token of a key still published keeps verifying.
import t from 'tap'
import { request } from 'undici'
import { eventually } from '../helpers/eventually.ts'
import { createSigningKey, mintToken, startJwksServer } from '../helpers/jwks.ts'
import { metricValue, scrapeUntil } from '../helpers/metrics.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const ISSUER = 'https://idp.withdrawn.example'

t.test('a token whose key was withdrawn from the key set stops verifying, cached or not', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const [retired, kept] = await Promise.all([createSigningKey('retired'), createSigningKey('kept')])
  const jwks = await startJwksServer([retired, kept])
  t.teardown(() => jwks.close())
  const sidecar = await startTestSidecar(t, {
    upstream: upstream.url,
    jwt: {
      issuers: [{ issuer: ISSUER, jwksUri: jwks.jwksUri, audiences: ['orders'], refreshInterval: '1s' }],
    },
  })
  const verified = async (token: string) => {
    const res = await request(`${sidecar.proxyUrl}/echo`, { headers: { authorization: `Bearer ${token}` } })
    return (JSON.parse(await res.body.text()).headers as Record<string, string>)['x-nhi-verified']
  }
  const opts = { issuer: ISSUER, audience: 'orders' }
  const [old, current] = await Promise.all([
    mintToken(retired, {}, { ...opts, subject: 'old' }),
    mintToken(kept, {}, { ...opts, subject: 'current' }),
  ])
  // each is verified and kept in the cache (an answer is kept from a token's second request on)
  for (let i = 0; i < 3; i++) {
    t.equal(await verified(old), 'true', 'the retired key verifies while it is published')
    t.equal(await verified(current), 'true')
  }

  jwks.setKeys([kept])
  // a fetch that started after the change has been answered once the one after it has begun
  const hits = jwks.hits
  await eventually(async () => jwks.hits >= hits + 2, { what: 'the proxy to fetch the new key set' })

  t.equal(await verified(old), 'false', 'a cached token of the withdrawn key is no longer verified')
  t.equal(await verified(current), 'true', 'a token of a key still published still verifies')
  t.equal(
    await verified(await mintToken(retired, {}, { ...opts, subject: 'new' })),
    'false',
    'a new token of the withdrawn key is not verified either',
  )
  const m = await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_auth_failures_total', { source: 'jwt', reason: 'unknown_kid' }) >= 2,
    'both tokens of the withdrawn key to be counted',
  )
  t.equal(metricValue(m, 'nhi_auth_failures_total', { source: 'jwt', reason: 'unknown_kid' }), 2)
})
