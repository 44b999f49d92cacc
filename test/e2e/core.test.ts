// The sidecar end to end over real sockets: JWKS over HTTP with a key rotation, mTLS with SPIFFE certs
// generated here, spoofing, the cardinality guard, and an upstream that dies and comes back.
import { writeFile } from 'node:fs/promises'
import { createServer as createHttpsServer, request as httpsRequest } from 'node:https'
import { join } from 'node:path'
import t from 'tap'
import { Agent, request } from 'undici'
import { eventually } from '../helpers/eventually.ts'
import { createSigningKey, mintToken, startJwksServer } from '../helpers/jwks.ts'
import { metricValue, type Sample, scrapeUntil, seriesCount } from '../helpers/metrics.ts'
import { freePort, listenUntilTeardown } from '../helpers/net.ts'
import { createCA, issueCert, mtlsListen } from '../helpers/pki.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const ISSUER = 'https://idp.test.example'

// the subtests share nothing (each its own sidecar, upstream, keys and certificates on their own ports; the
// upstream restarted on a fixed port takes it from a range port 0 never hands out): side by side
t.jobs = 4

t.test('JWT identities, key rotation, spoofing, auth failure reasons, upstream death', async (t) => {
  // restarted on its port below: a port port 0 never hands out, so no other listener takes it meanwhile
  const upstream = await startUpstream(await freePort())
  t.teardown(() => upstream.close())
  const key1 = await createSigningKey('k1')
  const jwks = await startJwksServer([key1])
  t.teardown(() => jwks.close())
  const sidecar = await startTestSidecar(t, {
    service: 'orders',
    upstream: upstream.url,
    jwt: {
      issuers: [{ issuer: ISSUER, jwksUri: jwks.jwksUri, audiences: ['orders'] }],
      unknownKidCooldown: '200ms',
    },
    identities: [
      {
        name: 'svc/{client}',
        kind: 'service',
        match: { jwt: { issuer: ISSUER, claims: { azp: '{client}' } } },
      },
    ],
    metrics: { routes: ['/echo', '/orders/:id'] },
  })
  const proxy = sidecar.proxyUrl
  const admin = sidecar.adminUrl

  const call = async (headers: Record<string, string>, path = '/echo') => {
    const res = await fetch(`${proxy}${path}`, { headers })
    const text = await res.text()
    return {
      status: res.status,
      headers:
        res.status === 200 && path === '/echo' ? (JSON.parse(text).headers as Record<string, string>) : {},
    }
  }

  const token1 = await mintToken(
    key1,
    { azp: 'billing' },
    { issuer: ISSUER, audience: 'orders', subject: 'billing' },
  )
  let r = await call({
    authorization: `Bearer ${token1}`,
    'x-nhi-identity': 'root',
    'x-nhi-verified': 'true',
  })
  t.equal(r.headers['x-nhi-identity'], 'svc/billing', 'identity from the rule')
  t.equal(r.headers['x-nhi-kind'], 'service')
  t.equal(r.headers['x-nhi-source'], 'jwt')
  t.equal(r.headers['x-nhi-verified'], 'true')
  t.equal(r.headers['authorization'], `Bearer ${token1}`, 'Authorization forwarded unchanged')
  t.match(r.headers['traceparent'], /^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$/, 'traceparent created')
  t.ok(r.headers['x-request-id'], 'x-request-id created')
  // W3C Trace Context: flags other than sampled (01) and random (02) are reserved and sent as zero
  r = await call({ traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff' })
  t.match(
    r.headers['traceparent'],
    /^00-4bf92f3577b34da6a3ce929d0e0e4736-[0-9a-f]{16}-03$/,
    'reserved flags zeroed',
  )
  r = await call({ traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fc' })
  t.match(r.headers['traceparent'], /-00$/, 'an unsampled caller stays unsampled')

  // spoofed identity headers never reach the upstream, whatever the credential
  r = await call({
    'x-nhi-identity': 'admin',
    'x-nhi-kind': 'human',
    'x-nhi-verified': 'true',
    'user-agent': 'curl/8.5.0',
  })
  t.not(r.headers['x-nhi-identity'], 'admin', 'spoofed identity replaced')
  t.equal(r.headers['x-nhi-verified'], 'false', 'spoofed verified flag replaced')
  t.notOk(
    upstream.received.some(
      (x) => x.headers['x-nhi-identity'] === 'admin' || x.headers['x-nhi-identity'] === 'root',
    ),
  )

  // rotate: the IdP now signs with k2 only; the proxy must refetch on the unknown kid, no restart
  const key2 = await createSigningKey('k2')
  jwks.setKeys([key2])
  const token2 = await mintToken(
    key2,
    { azp: 'shipping' },
    { issuer: ISSUER, audience: 'orders', subject: 'shipping' },
  )
  // a token arriving within the refetch cooldown that follows the initial load is an unknown kid (not
  // cached), so the first answers may be unverified; the proxy must pick k2 up without a restart
  r = await eventually(
    async () => {
      const attempt = await call({ authorization: `Bearer ${token2}` })
      return attempt.headers['x-nhi-verified'] === 'true' ? attempt : undefined
    },
    { what: 'a token signed with the rotated key to verify', intervalMs: 50 },
  )
  t.equal(r.headers['x-nhi-identity'], 'svc/shipping', 'rotated key verified without restart')
  t.equal(r.headers['x-nhi-verified'], 'true')

  // failure reasons, each counted with its label
  const expired = await mintToken(
    key2,
    { azp: 'old' },
    { issuer: ISSUER, audience: 'orders', expiresIn: -3600 },
  )
  const wrongAud = await mintToken(key2, { azp: 'x' }, { issuer: ISSUER, audience: 'someone-else' })
  const rogue = await createSigningKey('k2') // same kid, different key → bad signature
  const forged = await mintToken(rogue, { azp: 'x' }, { issuer: ISSUER, audience: 'orders' })
  for (const [token, reason] of [
    [expired, 'expired'],
    [wrongAud, 'wrong_audience'],
    [forged, 'bad_signature'],
    ['not.a.jwt', 'malformed'],
  ] as const) {
    r = await call({ authorization: `Bearer ${token}` })
    t.equal(r.status, 200, `${reason}: attributed, still forwarded (onInvalid: attribute)`)
    t.equal(r.headers['x-nhi-verified'], 'false', `${reason}: not verified`)
  }
  const reasons = ['expired', 'wrong_audience', 'bad_signature', 'malformed']
  const failed = (s: Sample[], reason: string) =>
    metricValue(s, 'nhi_auth_failures_total', { source: 'jwt', reason, service: 'orders' })
  const billing = (s: Sample[]) =>
    metricValue(s, 'nhi_requests_total', {
      identity: 'svc/billing',
      kind: 'service',
      verified: 'true',
      route: '/echo',
      code: '200',
    })
  let m = await scrapeUntil(
    admin,
    (s) => reasons.every((reason) => failed(s, reason) >= 1) && billing(s) >= 1,
    'the four failures and the first request to be counted',
  )
  for (const reason of reasons) {
    t.equal(failed(m, reason), 1, `one ${reason} failure`)
  }
  t.ok(billing(m) >= 1)
  t.ok(metricValue(m, 'nhi_jwks_refresh_total', { result: 'success' }) >= 2, 'JWKS refreshed on rotation')

  // upstream killed mid-test → 502 counted; proxy keeps serving after it returns
  const port = upstream.port
  await upstream.close()
  r = await call({ authorization: `Bearer ${token2}` })
  t.equal(r.status, 502, 'upstream down → 502')
  m = await scrapeUntil(
    admin,
    (s) => metricValue(s, 'nhi_upstream_errors_total', { reason: 'connect' }) >= 1,
    'the connect error to be counted',
  )
  t.ok(metricValue(m, 'nhi_upstream_errors_total', { reason: 'connect' }) >= 1, 'connect error counted')
  const again = await startUpstream(port)
  t.teardown(() => again.close())
  r = await call({ authorization: `Bearer ${token2}` })
  t.equal(r.status, 200, 'proxy serves again once the upstream is back')
})

// 2,000 identities against a table of 100: twenty times the table, 1,900 requests that must overflow
const IDENTITIES = 2_000

t.test(
  `cardinality guard: ${IDENTITIES.toLocaleString('en')} identities with maxIdentities 100`,
  async (t) => {
    const upstream = await startUpstream()
    t.teardown(() => upstream.close())
    const sidecar = await startTestSidecar(t, {
      upstream: upstream.url,
      identities: [{ name: 'user-{id}', kind: 'service', match: { header: { 'x-user': '{id}' } } }],
      // these header-named identities are unverified: let them use the whole table
      metrics: { maxIdentities: 100, maxUnverifiedIdentities: 100 },
    })
    const agent = new Agent({ connections: 16 })
    t.teardown(() => agent.close())
    const base = sidecar.proxyUrl
    let next = 0
    const worker = async () => {
      while (next < IDENTITIES) {
        const i = next++
        const res = await request(`${base}/x/${i}`, { headers: { 'x-user': `u${i}` }, dispatcher: agent })
        await res.body.dump()
      }
    }
    await Promise.all(Array.from({ length: 16 }, worker))
    const m = await scrapeUntil(
      sidecar.adminUrl,
      (s) => metricValue(s, 'nhi_requests_total') >= IDENTITIES,
      `all ${IDENTITIES} requests to be recorded`,
    )
    const identities = new Set(
      m.filter((s) => s.name === 'nhi_requests_total').map((s) => s.labels['identity']),
    )
    t.ok(identities.size <= 101, `at most 101 identity label values (got ${identities.size})`)
    t.ok(identities.has('__overflow__'), 'overflow identity present')
    t.equal(
      metricValue(m, 'nhi_identity_overflow_total'),
      IDENTITIES - 100,
      'every overflowed request counted',
    )
    t.equal(metricValue(m, 'nhi_requests_total'), IDENTITIES, 'every request counted')
    t.equal(
      metricValue(m, 'nhi_requests_total', { route: 'other' }),
      IDENTITIES,
      'unmatched paths share route "other"',
    )
    t.ok(seriesCount(m, 'nhi_identity_last_seen_timestamp_seconds') <= 101)
  },
)

t.test('mTLS listener: SPIFFE identity, untrusted CA and expired cert counted', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const [serverCa, clientCa, rogueCa] = await Promise.all([
    createCA('srv-ca'),
    createCA('client-ca'),
    createCA('rogue-ca'),
  ])
  const [serverCert, workload, expiredCert, rogue] = await Promise.all([
    issueCert(serverCa, { cn: 'localhost', dnsSans: ['localhost'], server: true }),
    issueCert(clientCa, { uriSans: ['spiffe://cluster.local/ns/payments/sa/api'] }),
    issueCert(clientCa, { uriSans: ['spiffe://cluster.local/ns/old/sa/job'], days: -1 }),
    issueCert(rogueCa, { uriSans: ['spiffe://cluster.local/ns/payments/sa/api'] }),
  ])

  const sidecar = await startTestSidecar(t, {
    listen: mtlsListen(serverCert, clientCa),
    upstream: upstream.url,
    identities: [
      { name: '{ns}/{sa}', kind: 'service', match: { spiffe: 'spiffe://cluster.local/ns/{ns}/sa/{sa}' } },
    ],
  })
  const port = sidecar.httpsAddress!.port

  const get = (client?: { certPem: string; keyPem: string }) =>
    new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = httpsRequest(
        {
          host: '127.0.0.1',
          port,
          path: '/echo',
          servername: 'localhost',
          ca: serverCa.certPem,
          cert: client?.certPem,
          key: client?.keyPem,
          agent: false,
        },
        (res) => {
          let body = ''
          res.on('data', (c) => {
            body += c
          })
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
        },
      )
      req.on('error', reject)
      req.end()
    })

  const ok = await get(workload)
  t.equal(ok.status, 200)
  const headers = JSON.parse(ok.body).headers as Record<string, string>
  t.equal(headers['x-nhi-identity'], 'payments/api')
  t.equal(headers['x-nhi-source'], 'mtls')
  t.equal(headers['x-nhi-verified'], 'true')
  t.equal(headers['x-forwarded-proto'], 'https')

  const untrusted = await get(rogue)
  t.equal(
    JSON.parse(untrusted.body).headers['x-nhi-verified'],
    'false',
    'untrusted CA: not verified (optional mode)',
  )
  const old = await get(expiredCert)
  t.equal(JSON.parse(old.body).headers['x-nhi-verified'], 'false', 'expired cert: not verified')

  // the first request's expiry gauge is set when it is recorded too
  const m = await scrapeUntil(
    sidecar.adminUrl,
    (s) =>
      metricValue(s, 'nhi_auth_failures_total', { source: 'mtls', reason: 'cert_untrusted' }) >= 1 &&
      metricValue(s, 'nhi_auth_failures_total', { source: 'mtls', reason: 'cert_expired' }) >= 1 &&
      metricValue(s, 'nhi_credential_expiry_timestamp_seconds', {
        identity: 'payments/api',
        source: 'mtls',
      }) > 0,
    'the three mTLS requests to be recorded',
  )
  t.equal(metricValue(m, 'nhi_auth_failures_total', { source: 'mtls', reason: 'cert_untrusted' }), 1)
  t.equal(metricValue(m, 'nhi_auth_failures_total', { source: 'mtls', reason: 'cert_expired' }), 1)
  t.ok(
    metricValue(m, 'nhi_credential_expiry_timestamp_seconds', { identity: 'payments/api', source: 'mtls' }) >
      Date.now() / 1000,
  )
})

t.test(
  'key sets from OIDC discovery and from an HTTPS JWKS behind a private CA with a bearer token',
  async (t) => {
    const upstream = await startUpstream()
    t.teardown(() => upstream.close())
    // discovery: <issuer>/.well-known/openid-configuration names the JWKS
    const discoveredKey = await createSigningKey('d1')
    const oidc = await startJwksServer([discoveredKey])
    t.teardown(() => oidc.close())
    // in-cluster style: HTTPS with a self-made CA (caFile) that wants the projected token (bearerTokenFile)
    const clusterKey = await createSigningKey('c1')
    const ca = await createCA('jwks-ca')
    const serverCert = await issueCert(ca, { cn: 'localhost', dnsSans: ['localhost'], server: true })
    const tokenFile = join(ca.dir, 'token')
    await writeFile(tokenFile, 'projected-token\n')
    const seenAuth: Array<string | undefined> = []
    const https = createHttpsServer({ cert: serverCert.certPem, key: serverCert.keyPem }, (req, res) => {
      seenAuth.push(req.headers.authorization)
      res.setHeader('content-type', 'application/json')
      res.end(JSON.stringify({ keys: [clusterKey.publicJwk] }))
    })
    const httpsPort = await listenUntilTeardown(t, https)
    const CLUSTER = 'https://kubernetes.default.svc.cluster.local'
    const sidecar = await startTestSidecar(t, {
      upstream: upstream.url,
      jwt: {
        issuers: [
          { issuer: oidc.url, discovery: true, audiences: ['orders'] },
          {
            issuer: CLUSTER,
            profile: 'kubernetes',
            jwksUri: `https://localhost:${httpsPort}/openid/v1/jwks`,
            caFile: ca.certFile,
            bearerTokenFile: tokenFile,
            audiences: ['orders'],
          },
        ],
      },
    })
    const proxy = sidecar.proxyUrl
    const admin = sidecar.adminUrl
    const seen = async (token: string) => {
      const res = await fetch(`${proxy}/echo`, { headers: { authorization: `Bearer ${token}` } })
      return (await res.json()).headers as Record<string, string>
    }

    const ready = await fetch(`${admin}/readyz`)
    t.equal(ready.status, 200, 'ready: both key sets were fetched')
    t.match(await ready.json(), { checks: { jwks: true } })

    const viaDiscovery = await seen(
      await mintToken(discoveredKey, {}, { issuer: oidc.url, audience: 'orders', subject: 'reports' }),
    )
    t.equal(viaDiscovery['x-nhi-verified'], 'true', 'a token from the discovered key set is verified')
    t.equal(viaDiscovery['x-nhi-source'], 'jwt')

    const viaCa = await seen(
      await mintToken(
        clusterKey,
        { 'kubernetes.io': { namespace: 'billing', serviceaccount: { name: 'exporter' } } },
        { issuer: CLUSTER, audience: 'orders', subject: 'system:serviceaccount:billing:exporter' },
      ),
    )
    t.equal(
      viaCa['x-nhi-verified'],
      'true',
      'a token from the HTTPS key set behind the private CA is verified',
    )
    t.equal(viaCa['x-nhi-identity'], 'billing/exporter', 'named by the kubernetes profile')
    t.equal(seenAuth[0], 'Bearer projected-token', 'the JWKS was fetched with the bearer token from the file')
    // both requests recorded first, so a failure counted late cannot slip past the check
    const m = await scrapeUntil(
      admin,
      (s) => metricValue(s, 'nhi_requests_total') >= 2,
      'both requests to be recorded',
    )
    t.equal(metricValue(m, 'nhi_requests_total'), 2, 'both requests recorded')
    t.equal(metricValue(m, 'nhi_auth_failures_total'), 0, 'no auth failures')
  },
)
