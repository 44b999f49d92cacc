// A token that is not valid yet becomes valid at nbf (less the clock skew). Its failure may be cached to keep a
// flood of it cheap, but never past the moment it turns valid: a cached `not_yet_valid` must not refuse
// (onInvalid: reject → 401) a token that verifies. Through the built bundle, real JWKS, real clock.
import { decodeJwt } from 'jose'
import t from 'tap'
import { request } from 'undici'
import { mintToken, startUpstreamAndJwks } from '../helpers/jwks.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

const ISSUER = 'https://idp.nbf.example'
const SKEW_S = 30

t.test('a cached not_yet_valid answer ends when the token becomes valid', async (t) => {
  const { upstream, key, jwks } = await startUpstreamAndJwks(t, 'nbf-k1')
  const sidecar = await startTestSidecar(t, {
    upstream: upstream.url,
    jwt: {
      onInvalid: 'reject',
      clockSkew: `${SKEW_S}s`,
      issuers: [{ issuer: ISSUER, jwksUri: jwks.jwksUri, audiences: 'any' }],
    },
  })
  // valid three to four seconds from now (nbf is 4 s beyond the tolerated skew, from a whole second): room for
  // the first verification on a loaded machine
  const token = await mintToken(key, {}, { issuer: ISSUER, notBefore: SKEW_S + 4 })
  const nbf = decodeJwt(token).nbf!
  const validFromMs = (nbf - SKEW_S) * 1000
  const send = async () => {
    const res = await request(`${sidecar.proxyUrl}/echo`, { headers: { authorization: `Bearer ${token}` } })
    const body = await res.body.text()
    return { status: res.statusCode, body }
  }
  t.ok(Date.now() < validFromMs - 500, 'the token is still early')
  // twice: an answer is kept from a token's second request on
  t.equal((await send()).status, 401, 'not valid yet: 401')
  const second = await send()
  t.equal(second.status, 401)
  t.match(second.body, /not_yet_valid/)
  await new Promise((r) => setTimeout(r, validFromMs + 300 - Date.now()))
  const later = await send()
  t.equal(later.status, 200, `valid now, ${Date.now() - validFromMs} ms after it became valid: forwarded`)
  t.match(later.body, /"x-nhi-verified":"true"/)
})
