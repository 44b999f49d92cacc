// token_shared behind an ingress: every client reaches the sidecar from the ingress's address, so the
// clients sharing one token are told apart by the address a trusted proxy appended to X-Forwarded-For. A
// peer that is not a trusted proxy cannot choose its address that way: its own X-Forwarded-For is not read.
// The trusted proxy is 127.0.0.2; 127.0.0.1 is anyone else. Under `workers: 2` the clients a token comes from
// are counted for the pod, whichever worker each connection reached.
import t from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { exchange } from '../helpers/http.ts'
import { mintToken, startUpstreamAndJwks } from '../helpers/jwks.ts'
import { metricValue, type Sample, scrape, scrapeUntil } from '../helpers/metrics.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

const ISSUER = 'https://idp.shared.example'
const TRUSTED = '127.0.0.2'

/** one GET /echo with `token`, from `localAddress`, with `xff` as X-Forwarded-For; resolves with the status */
async function send(port: number, token: string, localAddress: string, xff: string): Promise<number> {
  const headers = { authorization: `Bearer ${token}`, 'x-forwarded-for': xff }
  return (await exchange({ host: '127.0.0.1', port, path: '/echo', localAddress, headers })).status
}

interface AuditEvent {
  fingerprints?: { jwt?: string }
  anomalies: string[]
}

t.test('one token from two clients behind a trusted ingress is token_shared', async (t) => {
  const { upstream, key, jwks } = await startUpstreamAndJwks(t, 'shared-k1')
  const sidecar = await startTestSidecar(t, {
    service: 'orders',
    upstream: upstream.url,
    jwt: { issuers: [{ issuer: ISSUER, jwksUri: jwks.jwksUri, audiences: 'any' }] },
    forwardedClientCert: { trustedProxies: [`${TRUSTED}/32`], format: 'xfcc' },
    // a second client is one too many
    anomalies: { tokenSharedPeers: 1 },
  })
  const port = sidecar.proxyAddress.port
  const admin = sidecar.adminUrl
  const shared = (samples: Sample[]) =>
    metricValue(samples, 'nhi_credential_anomalies_total', { type: 'token_shared' })
  const requests = (samples: Sample[]) => metricValue(samples, 'nhi_requests_total', { service: 'orders' })
  const audit = async (): Promise<AuditEvent[]> =>
    ((await (await fetch(`${admin}/audit?limit=1000`)).json()) as { events: AuditEvent[] }).events

  // an untrusted peer varying X-Forwarded-For is still one client
  const untrustedToken = await mintToken(key, {}, { issuer: ISSUER, subject: 'untrusted' })
  for (const xff of ['203.0.113.1', '203.0.113.2', '198.51.100.9, 203.0.113.3', '2001:db8::1']) {
    t.equal(await send(port, untrustedToken, '127.0.0.1', xff), 200)
  }
  // one client behind the ingress, whatever it prepends to X-Forwarded-For itself, is one client
  const oneClientToken = await mintToken(key, {}, { issuer: ISSUER, subject: 'one-client' })
  for (const xff of ['203.0.113.7', '10.0.0.1, 203.0.113.7', '10.0.0.2, 203.0.113.7']) {
    t.equal(await send(port, oneClientToken, TRUSTED, xff), 200)
  }
  const quiet = await scrapeUntil(admin, (s) => requests(s) >= 7, 'the first seven requests recorded')
  t.equal(requests(quiet), 7)
  t.equal(shared(quiet), 0, "an untrusted peer's X-Forwarded-For does not make it several clients")
  t.notOk(
    (await audit()).some((e) => e.anomalies.includes('token_shared')),
    'no audit event names token_shared',
  )

  // two clients behind the same ingress, one token
  const sharedToken = await mintToken(key, {}, { issuer: ISSUER, subject: 'shared' })
  t.equal(await send(port, sharedToken, TRUSTED, '203.0.113.10'), 200)
  t.equal(await send(port, sharedToken, TRUSTED, '203.0.113.11'), 200)
  const after = await scrapeUntil(admin, (s) => shared(s) >= 1, 'token_shared counted')
  t.equal(shared(after), 1, 'the second client behind the ingress trips token_shared')
  const flagged = (await audit()).filter((e) => e.anomalies.includes('token_shared'))
  t.equal(flagged.length, 1, 'one audit event carries it')
  const token = flagged[0]!.fingerprints?.jwt
  t.ok(token, 'with the token fingerprint')
  t.equal(
    (await audit()).filter((e) => e.fingerprints?.jwt === token).length,
    2,
    "the shared token's (its two requests)",
  )
})

t.test('workers: 2: a token is counted over both workers, and reported once', async (t) => {
  const { upstream, key, jwks } = await startUpstreamAndJwks(t, 'shared-k2')
  const sidecar = await startTestSidecar(t, {
    service: 'orders',
    upstream: upstream.url,
    workers: 2,
    jwt: { issuers: [{ issuer: ISSUER, jwksUri: jwks.jwksUri, audiences: 'any' }] },
    // a third client is one too many
    anomalies: { tokenSharedPeers: 2 },
  })
  const port = sidecar.proxyAddress.port
  const admin = sidecar.adminUrl
  const shared = (samples: Sample[]) =>
    metricValue(samples, 'nhi_credential_anomalies_total', { type: 'token_shared' })
  const token = await mintToken(key, {}, { issuer: ISSUER, subject: 'shared-over-workers' })
  // each on a new connection, which the primary hands to the workers in turn: the first worker sees the
  // first and third client, the second worker the second; neither saw more than two
  for (const client of ['127.0.0.2', '127.0.0.3', '127.0.0.4'])
    t.equal(await send(port, token, client, ''), 200)
  const perWorker = (await scrape(admin)).filter((s) => s.name === 'nhi_worker_requests_total')
  t.same(
    perWorker.map((s) => s.value).sort(),
    [1, 2],
    'the three clients were spread over both workers (two and one)',
  )
  // the pod's verdict reaches the worker that counted the third client; its next request with the token
  // carries token_shared (the first client keeps calling, on new connections that alternate workers)
  let followUps = 0
  const flagged = await eventually(
    async () => {
      followUps++
      t.equal(await send(port, token, '127.0.0.2', ''), 200)
      const samples = await scrape(admin)
      return shared(samples) >= 1 ? samples : undefined
    },
    { what: 'token_shared counted for the pod' },
  )
  t.equal(shared(flagged), 1, `reported after ${followUps} more request(s)`)
  for (let i = 0; i < 4; i++) t.equal(await send(port, token, '127.0.0.2', ''), 200)
  const after = await scrapeUntil(
    admin,
    (s) => metricValue(s, 'nhi_requests_total', { service: 'orders' }) >= 3 + followUps + 4,
    'every request recorded',
  )
  t.equal(shared(after), 1, 'once a window for the pod, not once per worker')
  const events = ((await (await fetch(`${admin}/audit?limit=1000`)).json()) as { events: AuditEvent[] })
    .events
  t.equal(events.filter((e) => e.anomalies.includes('token_shared')).length, 1, 'one audit event carries it')
})
