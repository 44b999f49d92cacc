// `workers: 2`: two replicas of one workload keep a connection each, so each worker sees one of their tokens
// of the same identity: the broken replica's (expiring in 2 h) on one, the renewed one's (24 h) on the other.
// The pod's /metrics and /identities show the earlier expiry: the largest of the workers' hid the broken one.
// And a long request that outlived its short-lived token on one worker, while the renewed token's requests
// went to the other: the pod shows the renewed token's expiry, as one process does, not the expired one.
import { Agent } from 'node:http'
import t, { type Test } from 'tap'
import { exchange } from '../helpers/http.ts'
import { mintToken, startUpstreamAndJwks } from '../helpers/jwks.ts'
import { metricValue, scrapeUntil } from '../helpers/metrics.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

const EXPIRY = 'nhi_credential_expiry_timestamp_seconds'

const expOf = (jwt: string) =>
  (JSON.parse(Buffer.from(jwt.split('.')[1]!, 'base64url').toString()) as { exp: number }).exp

/**
 * A `workers: 2` sidecar that verifies the JWTs of a JWKS served here; `token(expiresIn)`: one of `subject`'s
 * tokens; `agents`: one kept-alive connection per replica, which the cluster hands to one worker each.
 */
async function twoWorkers(t: Test, subject: string) {
  const { upstream, key, jwks } = await startUpstreamAndJwks(t)
  const sidecar = await startTestSidecar(t, {
    upstream: upstream.url,
    workers: 2,
    jwt: { issuers: [{ issuer: jwks.url, jwksUri: jwks.jwksUri, audiences: ['orders'] }] },
  })
  const token = (expiresIn: number) =>
    mintToken(key, {}, { issuer: jwks.url, audience: 'orders', subject, expiresIn })
  const agents = [0, 1].map(() => new Agent({ keepAlive: true, maxSockets: 1 }))
  t.teardown(() => {
    for (const agent of agents) agent.destroy()
  })
  return { sidecar, token, agents, port: new URL(sidecar.proxyUrl).port }
}

t.test("the pod's credential expiry is the earliest of its workers'", async (t) => {
  const { sidecar, token, agents, port } = await twoWorkers(t, 'shop-cart')
  const broken = await token(2 * 3600)
  const renewed = await token(24 * 3600)
  const replicas = [broken, renewed].map((jwt, i) => ({ jwt, agent: agents[i]! }))
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

t.test('a long request that outlived its token on one worker: the pod shows the renewed one', async (t) => {
  const { sidecar, token, agents, port } = await twoWorkers(t, 'shop-stream')
  // expires 2 to 3 s from now (exp is in whole seconds): what the test has to wait for
  const shortLived = await token(3)
  const renewed = await token(24 * 3600)

  const call = (agent: Agent, path: string, jwt: string) =>
    exchange({ host: '127.0.0.1', port, path, agent, headers: { authorization: `Bearer ${jwt}` } })
  // the upstream answers half a second after the short-lived token expired: the request presented it valid
  const heldMs = Math.max(0, expOf(shortLived) * 1000 - Date.now()) + 500
  const long = call(agents[0]!, `/slow/${heldMs}`, shortLived)
  // its client renewed the token meanwhile and calls with the new one, on its other connection
  t.equal((await call(agents[1]!, '/orders/1', renewed)).status, 200)
  t.equal((await long).status, 200)
  t.ok(Date.now() > expOf(shortLived) * 1000, 'precondition: the long request ended after its token expired')

  const m = await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_requests_total', { source: 'jwt', verified: 'true' }) >= 2,
    'the requests to be recorded',
  )
  t.equal(metricValue(m, 'nhi_requests_total', { source: 'jwt', verified: 'true' }), 2)
  for (const worker of ['1', '2'])
    t.equal(
      metricValue(m, 'nhi_worker_requests_total', { worker }),
      1,
      `precondition: worker ${worker} served one connection`,
    )
  const series = m.filter((s) => s.name === EXPIRY)
  t.equal(series.length, 1, 'one identity')
  t.equal(
    series[0]?.value,
    expOf(renewed),
    "the renewed token's expiry, not the one the long request outlived",
  )

  const view = (await (await fetch(`${sidecar.adminUrl}/identities`)).json()) as {
    identities: { source: string; name: string; requests: number; credentialExpiry?: string }[]
  }
  const row = view.identities.find((r) => r.source === 'jwt')
  t.equal(row?.requests, 2, 'one row for the pod')
  t.equal(row?.credentialExpiry, new Date(expOf(renewed) * 1000).toISOString(), '/identities: the same')
})
