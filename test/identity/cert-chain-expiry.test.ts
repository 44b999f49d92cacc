// A client certificate is only as good as its chain: an intermediate CA that expires before the leaf ends
// the credential's life on that date (the listener refuses the chain from then on), so that is the expiry
// nhi_credential_expiry_timestamp_seconds must warn about, not the leaf's later notAfter.
import { X509Certificate } from 'node:crypto'
import { request as httpsRequest } from 'node:https'
import t from 'tap'
import { metricValue, scrapeUntil } from '../helpers/metrics.ts'
import { createCA, issueCert, type KeyPair, mtlsListen } from '../helpers/pki.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const notAfter = (pem: string) => Math.floor(Date.parse(new X509Certificate(pem).validTo) / 1000)

t.test('an intermediate that expires before the leaf is the mTLS credential expiry', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const [serverCa, clientCa] = await Promise.all([createCA('chain-srv-ca'), createCA('chain-client-ca')])
  const serverCert = await issueCert(serverCa, { cn: 'localhost', dnsSans: ['localhost'], server: true })
  // the intermediate runs out in 2 days, the leaf it issues in 7
  const intermediatePair = await issueCert(clientCa, {
    cn: 'short-intermediate',
    intermediate: true,
    extendedKeyUsage: 'clientAuth',
    days: 2,
  })
  const intermediate = { ...intermediatePair, dir: clientCa.dir, name: 'short-intermediate' }
  const leaf = await issueCert(intermediate, {
    uriSans: ['spiffe://cluster.local/ns/payments/sa/api'],
    days: 7,
  })
  t.ok(notAfter(intermediate.certPem) < notAfter(leaf.certPem), 'the intermediate expires first')

  const sidecar = await startTestSidecar(t, {
    listen: mtlsListen(serverCert, clientCa),
    upstream: upstream.url,
    identities: [
      { name: '{ns}/{sa}', kind: 'service', match: { spiffe: 'spiffe://cluster.local/ns/{ns}/sa/{sa}' } },
    ],
  })
  /** GET /echo over TLS presenting `pair` with the intermediate after it; the upstream's identity headers */
  const call = (pair: KeyPair) =>
    new Promise<Record<string, string>>((resolve, reject) => {
      const req = httpsRequest(
        {
          host: '127.0.0.1',
          port: sidecar.httpsAddress!.port,
          path: '/echo',
          servername: 'localhost',
          ca: serverCa.certPem,
          cert: pair.certPem + intermediate.certPem,
          key: pair.keyPem,
          agent: false,
        },
        (res) => {
          let body = ''
          res.on('data', (c) => {
            body += c
          })
          res.on('end', () => resolve(JSON.parse(body).headers))
        },
      )
      req.on('error', reject)
      req.end()
    })
  const headers = await call(leaf)
  t.same([headers['x-nhi-identity'], headers['x-nhi-verified']], ['payments/api', 'true'])
  const m = await scrapeUntil(
    sidecar.adminUrl,
    (s) =>
      metricValue(s, 'nhi_credential_expiry_timestamp_seconds', {
        identity: 'payments/api',
        source: 'mtls',
      }) > 0,
    'the credential expiry',
  )
  t.equal(
    metricValue(m, 'nhi_credential_expiry_timestamp_seconds', { identity: 'payments/api', source: 'mtls' }),
    notAfter(intermediate.certPem),
    "the intermediate's notAfter, when the chain stops verifying",
  )

  // a leaf of the same intermediate that has run out: a workload's expired credential, not an unknown issuer
  const expired = await issueCert(intermediate, {
    uriSans: ['spiffe://cluster.local/ns/payments/sa/api'],
    days: -1,
  })
  t.equal((await call(expired))['x-nhi-verified'], 'false')
  const failures = await scrapeUntil(
    sidecar.adminUrl,
    (s) =>
      metricValue(s, 'nhi_auth_failures_total', { source: 'mtls', reason: 'cert_expired' }) +
        metricValue(s, 'nhi_auth_failures_total', { source: 'mtls', reason: 'cert_untrusted' }) >
      0,
    'the expired leaf counted',
  )
  t.same(
    ['cert_expired', 'cert_untrusted'].map((reason) =>
      metricValue(failures, 'nhi_auth_failures_total', { source: 'mtls', reason }),
    ),
    [1, 0],
    'counted as cert_expired: the chain it sent reaches clientCA',
  )
})
