// From the attacker's side, through the built bundle: a client repeating one forged token gets its signature
// checked twice (an answer is kept from a token's second request on); every later repeat is answered from the
// failure cache (no more work for the verification worker), and every one of them is still attributed and
// counted as a bad signature.
import { Agent, request } from 'node:http'
import t from 'tap'
import type { VerifyPoolStats } from '../../src/identity/jwt/pool.ts'
import { eventually } from '../helpers/eventually.ts'
import { createSigningKey, mintToken, startUpstreamAndJwks } from '../helpers/jwks.ts'
import { metricValue, scrapeUntil } from '../helpers/metrics.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

const ISSUER = 'https://idp.negative.example'
const REPEATS = 30

function get(port: number, token: string, agent: Agent): Promise<{ status: number; verified?: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port, path: '/echo', agent, headers: { authorization: `Bearer ${token}` } },
      (res) => {
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (c: string) => {
          body += c
        })
        res.on('end', () => {
          const headers =
            res.statusCode === 200 ? (JSON.parse(body).headers as Record<string, string>) : undefined
          resolve({ status: res.statusCode ?? 0, verified: headers?.['x-nhi-verified'] })
        })
      },
    )
    req.on('error', reject)
    req.end()
  })
}

t.test('a repeated forged token is verified twice and counted every time', async (t) => {
  const { upstream, key, jwks } = await startUpstreamAndJwks(t, 'neg-e2e-k1')
  const attacker = await createSigningKey('neg-e2e-k1')
  const sidecar = await startTestSidecar(t, {
    service: 'orders',
    upstream: upstream.url,
    jwt: { issuers: [{ issuer: ISSUER, jwksUri: jwks.jwksUri, audiences: 'any' }], verifyWorkers: 1 },
  })
  const port = sidecar.proxyAddress.port
  const admin = sidecar.adminUrl
  const pool = async () =>
    ((await (await fetch(`${admin}/readyz`)).json()) as { verifyPool: VerifyPoolStats }).verifyPool
  const agent = new Agent({ keepAlive: true, maxSockets: 8 })
  t.teardown(() => agent.destroy())

  // a valid token starts the worker; wait until it takes jobs so the forged token goes to it
  t.match(await get(port, await mintToken(key, {}, { issuer: ISSUER }), agent), {
    status: 200,
    verified: 'true',
  })
  await eventually(async () => (await pool()).workers === 1, { what: 'the worker ready' })
  const before = (await pool()).verified

  // the attacker's own key under the issuer's kid: a bad signature
  const forged = await mintToken(attacker, { sub: 'admin' }, { issuer: ISSUER })
  t.match(await get(port, forged, agent), { status: 200, verified: 'false' }, 'attributed, not verified')
  t.equal((await pool()).verified, before + 1, 'the first one was checked by the worker')
  t.match(await get(port, forged, agent), { status: 200, verified: 'false' }, 'the second, again')
  t.equal((await pool()).verified, before + 2, 'the second one was checked again, and its answer kept')
  const repeats = await Promise.all(Array.from({ length: REPEATS }, () => get(port, forged, agent)))
  t.ok(
    repeats.every((a) => a.status === 200 && a.verified === 'false'),
    'every repeat answered, unverified (attribute mode)',
  )
  t.equal(
    (await pool()).verified,
    before + 2,
    'no later repeat reached the worker: answered from the failure cache',
  )
  const samples = await scrapeUntil(
    admin,
    (s) => metricValue(s, 'nhi_auth_failures_total', { reason: 'bad_signature' }) >= REPEATS + 2,
    'every forged request to be recorded',
  )
  t.equal(
    metricValue(samples, 'nhi_auth_failures_total', { reason: 'bad_signature' }),
    REPEATS + 2,
    'each request counted as a bad signature',
  )
})
