// Forwarded client certificates from an AWS ALB as the trusted front proxy. In passthrough mode the load
// balancer forwards the client's chain unverified in X-Amzn-Mtls-Clientcert and sets none of its verify-mode
// headers, so it passes a client's own X-Amzn-Mtls-Clientcert-Leaf on as sent: a leaf next to a passthrough
// chain is never the load balancer's word.
import t from 'tap'
import { request } from 'undici'
import { eventually } from '../helpers/eventually.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { createCA, issueCert } from '../helpers/pki.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const ADMIN = 'spiffe://cluster.local/ns/prod/sa/admin'

/** as ALB sends PEM: URL-encoded with + = / left as they are */
const albEncode = (pem: string) =>
  encodeURIComponent(pem).replace(/%2B/g, '+').replace(/%3D/g, '=').replace(/%2F/g, '/')

t.test('a client cannot add a verify-mode leaf to the chain a passthrough ALB forwards', async (t) => {
  // what anyone can make: a self-made CA and a certificate from it naming the admin workload
  const evilCA = await createCA('evil-ca')
  const forged = await issueCert(evilCA, { cn: 'admin', uriSans: [ADMIN] })
  const clientCA = await createCA('client-ca')
  const client = await issueCert(clientCA, { cn: 'laptop' })
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const sidecar = await startTestSidecar(t, {
    service: 'orders',
    upstream: upstream.url,
    forwardedClientCert: { trustedProxies: ['127.0.0.1/32'], format: 'alb', toUpstream: 'sanitize_set' },
    identities: [
      { name: '{ns}/{sa}', kind: 'service', match: { spiffe: 'spiffe://cluster.local/ns/{ns}/sa/{sa}' } },
    ],
  })
  const echo = async (headers: Record<string, string>) => {
    const res = await request(`${sidecar.proxyUrl}/echo`, { headers })
    t.equal(res.statusCode, 200)
    return JSON.parse(await res.body.text()).headers as Record<string, string | undefined>
  }

  // control: the verify-mode leaf alone is what the load balancer vouches for
  const verifyMode = await echo({ 'x-amzn-mtls-clientcert-leaf': albEncode(forged.certPem) })
  t.equal(verifyMode['x-nhi-identity'], 'prod/admin', 'a verify-mode leaf alone is believed')

  // passthrough mode: the ALB's chain, and the client's own -Leaf header passed on next to it
  for (const chain of [albEncode(client.certPem + clientCA.certPem), '']) {
    const headers = await echo({
      'x-amzn-mtls-clientcert': chain,
      'x-amzn-mtls-clientcert-leaf': albEncode(forged.certPem),
    })
    t.not(
      headers['x-nhi-identity'],
      'prod/admin',
      `chain ${chain ? 'sent' : 'empty'}: not the forged workload`,
    )
    t.equal(headers['x-nhi-verified'], 'false', 'nothing verified')
    t.notMatch(
      headers['x-forwarded-client-cert'] ?? '',
      /spiffe/,
      'the forged leaf is not described upstream',
    )
  }
  await eventually(
    async () => {
      const samples = await scrape(sidecar.adminUrl)
      const untrusted = metricValue(samples, 'nhi_auth_failures_total', {
        source: 'xfcc',
        reason: 'cert_untrusted',
      })
      const malformed = metricValue(samples, 'nhi_auth_failures_total', {
        source: 'xfcc',
        reason: 'malformed',
      })
      return untrusted === 1 && malformed === 1
    },
    { what: 'one cert_untrusted and one malformed forwarded certificate' },
  )
})
