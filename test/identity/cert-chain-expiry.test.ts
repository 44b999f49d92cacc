// A client certificate is only as good as its chain: an intermediate CA that expires before the leaf ends
// the credential's life on that date (the listener refuses the chain from then on), so that is the expiry
// nhi_credential_expiry_timestamp_seconds must warn about, not the leaf's later notAfter.
import { X509Certificate } from 'node:crypto'
import { request as httpsRequest } from 'node:https'
import t from 'tap'
import { metricValue, scrapeUntil } from '../helpers/metrics.ts'
import { createCA, issueCert, mtlsListen } from '../helpers/pki.ts'
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
  const headers = await new Promise<Record<string, string>>((resolve, reject) => {
    const req = httpsRequest(
      {
        host: '127.0.0.1',
        port: sidecar.httpsAddress!.port,
        path: '/echo',
        servername: 'localhost',
        ca: serverCa.certPem,
        cert: leaf.certPem + intermediate.certPem,
        key: leaf.keyPem,
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
})
