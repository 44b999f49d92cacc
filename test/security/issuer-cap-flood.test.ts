// Outsiders holding a public IdP's tokens cannot push the service's own callers into __overflow__: any
// repository on GitHub can get an Actions token for any audience, each a distinct verified name, and those
// names filled metrics.maxIdentities because only unverified names had a cap of their own. An issuer's
// maxIdentities now caps the names its tokens add; another issuer's names keep their own series. The same
// holds for a `workers: N` pod, whose primary applies the caps once over every worker.
import { request } from 'node:http'
import t from 'tap'
import { mintToken, startUpstreamAndJwks } from '../helpers/jwks.ts'
import { metricValue, type Sample, scrapeUntil } from '../helpers/metrics.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

const PUBLIC = 'https://public-ci.example'
const OUTSIDERS = 8
const OWN = 5
const CAP = 3

/** one GET with `token` on a connection of its own (a pod's primary hands connections to workers in turn) */
function send(port: number, token: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port, path: '/x', agent: false, headers: { authorization: `Bearer ${token}` } },
      (res) => {
        res.resume()
        res.on('end', () => resolve(res.statusCode ?? 0))
      },
    )
    req.on('error', reject)
    req.end()
  })
}

for (const workers of [1, 2]) {
  t.test(`an issuer's names beyond its maxIdentities overflow (workers: ${workers})`, async (t) => {
    const { upstream, key, jwks } = await startUpstreamAndJwks(t, `cap-k${workers}`)
    const sidecar = await startTestSidecar(t, {
      service: 'orders',
      upstream: upstream.url,
      workers,
      jwt: {
        issuers: [
          { issuer: PUBLIC, jwksUri: jwks.jwksUri, audiences: 'any', maxIdentities: CAP },
          { issuer: jwks.url, jwksUri: jwks.jwksUri, audiences: 'any' },
        ],
      },
      metrics: { maxIdentities: 100 },
    })
    const port = sidecar.proxyAddress.port
    const admin = sidecar.adminUrl
    const publicHost = new URL(PUBLIC).host
    const ownHost = new URL(jwks.url).host

    for (let i = 0; i < OUTSIDERS; i++) {
      const token = await mintToken(key, {}, { issuer: PUBLIC, subject: `outsider-${i}` })
      t.equal(await send(port, token), 200)
    }
    for (let i = 0; i < OWN; i++) {
      const token = await mintToken(key, {}, { issuer: jwks.url, subject: `own-${i}` })
      t.equal(await send(port, token), 200)
    }

    const requests = (s: Sample[]) => metricValue(s, 'nhi_requests_total', { service: 'orders' })
    const m = await scrapeUntil(admin, (s) => requests(s) >= OUTSIDERS + OWN, 'every request recorded')
    t.equal(requests(m), OUTSIDERS + OWN)
    const publicNames = new Set(
      m
        .filter((s) => s.name === 'nhi_requests_total' && s.labels['identity']?.startsWith(`${publicHost}/`))
        .map((s) => s.labels['identity']),
    )
    t.equal(publicNames.size, CAP, `${CAP} of the capped issuer's names have their own series`)
    t.equal(
      metricValue(m, 'nhi_requests_total', { identity: '__overflow__', source: 'jwt' }),
      OUTSIDERS - CAP,
      'its further names are recorded as overflow',
    )
    t.equal(metricValue(m, 'nhi_identity_overflow_total'), OUTSIDERS - CAP, 'and counted')
    for (let i = 0; i < OWN; i++)
      t.equal(
        metricValue(m, 'nhi_requests_total', {
          identity: `${ownHost}/own-${i}`,
          source: 'jwt',
          verified: 'true',
        }),
        1,
        `the other issuer's own-${i} has its own series`,
      )
    t.equal(metricValue(m, 'nhi_identities'), CAP + OWN)
  })
}
