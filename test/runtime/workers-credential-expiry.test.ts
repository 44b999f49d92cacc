// `workers: 2`: two replicas of one workload keep a connection each, so each worker sees one of their tokens
// of the same identity: the broken replica's (expiring in 2 h) on one, the renewed one's (24 h) on the other.
// The pod's /metrics and /identities show the earlier expiry: the largest of the workers' hid the broken one.
import { Agent } from 'node:http'
import t from 'tap'
import { exchange } from '../helpers/http.ts'
import { mintToken, startUpstreamAndJwks } from '../helpers/jwks.ts'
import { metricValue, scrapeUntil } from '../helpers/metrics.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

const EXPIRY = 'nhi_credential_expiry_timestamp_seconds'

t.test("the pod's credential expiry is the earliest of its workers'", async (t) => {
  const { upstream, key, jwks } = await startUpstreamAndJwks(t)
  const sidecar = await startTestSidecar(t, {
    upstream: upstream.url,
    workers: 2,
    jwt: { issuers: [{ issuer: jwks.url, jwksUri: jwks.jwksUri, audiences: ['orders'] }] },
  })
  const token = (expiresIn: number) =>
    mintToken(key, {}, { issuer: jwks.url, audience: 'orders', subject: 'shop-cart', expiresIn })
  const broken = await token(2 * 3600)
  const renewed = await token(24 * 3600)
  const expOf = (jwt: string) =>
    (JSON.parse(Buffer.from(jwt.split('.')[1]!, 'base64url').toString()) as { exp: number }).exp

  // one kept-alive connection per replica: the cluster hands the second to the other worker
  const replicas = [broken, renewed].map((jwt) => ({
    jwt,
    agent: new Agent({ keepAlive: true, maxSockets: 1 }),
  }))
  t.teardown(() => {
    for (const r of replicas) r.agent.destroy()
  })
  const { port } = new URL(sidecar.proxyUrl)
  const rounds = 3
  for (let i = 0; i < rounds; i++) {
    // the renewed replica calls last
    for (const { jwt, agent } of replicas) {
      const res = await exchange({
        host: '127.0.0.1',
        port,
        path: `/orders/${i}`,
        agent,
        headers: { authorization: `Bearer ${jwt}` },
      })
      t.equal(res.status, 200)
    }
  }
  const m = await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_requests_total', { source: 'jwt', verified: 'true' }) >= 2 * rounds,
    'the requests to be recorded',
  )
  t.equal(metricValue(m, 'nhi_requests_total', { source: 'jwt', verified: 'true' }), 2 * rounds)
  for (const worker of ['1', '2'])
    t.equal(
      metricValue(m, 'nhi_worker_requests_total', { worker }),
      rounds,
      `precondition: worker ${worker} served one replica's connection`,
    )
  const series = m.filter((s) => s.name === EXPIRY)
  t.equal(series.length, 1, 'one identity')
  t.equal(series[0]?.value, expOf(broken), "the broken replica's expiry, not the other worker's")

  const view = (await (await fetch(`${sidecar.adminUrl}/identities`)).json()) as {
    identities: { source: string; name: string; requests: number; credentialExpiry?: string }[]
  }
  const row = view.identities.find((r) => r.source === 'jwt')
  t.equal(row?.requests, 2 * rounds, 'one row for the pod')
  t.equal(row?.credentialExpiry, new Date(expOf(broken) * 1000).toISOString(), '/identities: the same')
})
