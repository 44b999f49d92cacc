// A client certificate whose subject has two CNs is named by the same one whether it arrives over mTLS or in
// an x-forwarded-client-cert header from a trusted Envoy: the first CN in DER order. Envoy prints Subject with
// X509_NAME_print_ex(XN_FLAG_RFC2253), which reverses the RDNs (RFC 4514 order), so the CN read first there is
// the certificate's last; openssl prints the same text here (-nameopt RFC2253).
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import t from 'tap'
import { Agent, request } from 'undici'
import { xfccEvidence } from '../../src/identity/forwarded/xfcc.ts'
import type { CertEvidence } from '../../src/types.ts'
import { mtlsEcho } from '../helpers/http.ts'
import { createCA, createServerPki, issueCert, mtlsListen } from '../helpers/pki.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const { ca: serverCa, server: serverCert } = await createServerPki()
const clientCa = await createCA('client-ca-multi-cn')
const leaf = await issueCert(clientCa, { subject: '/O=acme/CN=orders/CN=orders-worker' })
const run = promisify(execFile)
const rfc2253 = (
  await run('openssl', ['x509', '-in', leaf.certFile, '-noout', '-subject', '-nameopt', 'RFC2253'])
).stdout
  .trim()
  .replace(/^subject=\s*/, '')
const sha256 = (
  await run('openssl', ['x509', '-in', leaf.certFile, '-noout', '-fingerprint', '-sha256'])
).stdout
  .trim()
  .replace(/^.*=/, '')
  .replaceAll(':', '')
  .toLowerCase()

type Seen = Record<string, string>

async function overMtls(port: number): Promise<Seen> {
  const { body } = await mtlsEcho(port, serverCa.certPem, leaf)
  return JSON.parse(body).headers as Seen
}

t.test('mTLS and a trusted Envoy XFCC name a two-CN certificate by the same CN', async (t) => {
  t.equal(rfc2253, 'CN=orders-worker,CN=orders,O=acme', 'openssl prints the RDNs reversed, as Envoy does')
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const sidecar = await startTestSidecar(t, {
    listen: mtlsListen(serverCert, clientCa),
    upstream: upstream.url,
    forwardedClientCert: { trustedProxies: ['127.0.0.2/32'], format: 'xfcc', toUpstream: 'sanitize_set' },
  })
  const fromEnvoy = new Agent({ localAddress: '127.0.0.2' })
  t.teardown(() => fromEnvoy.close())
  const viaEnvoy = async (element: string): Promise<Seen> => {
    const res = await request(`${sidecar.proxyUrl}/echo`, {
      dispatcher: fromEnvoy,
      headers: { 'x-forwarded-client-cert': element },
    })
    t.equal(res.statusCode, 200)
    return JSON.parse(await res.body.text()).headers as Seen
  }
  const by = 'By=spiffe://cluster.local/ns/shop/sa/orders'
  const [mtls, subjectOnly, withCert] = await Promise.all([
    overMtls(sidecar.httpsAddress!.port),
    viaEnvoy(`${by};Hash=${sha256};Subject="${rfc2253}"`),
    viaEnvoy(`${by};Hash=${sha256};Cert="${encodeURIComponent(leaf.certPem)}";Subject="${rfc2253}"`),
  ])
  t.equal(mtls['x-nhi-source'], 'mtls')
  t.equal(subjectOnly['x-nhi-source'], 'xfcc')
  t.equal(withCert['x-nhi-source'], 'xfcc')
  t.equal(mtls['x-nhi-identity'], 'orders', 'mTLS: the first CN in DER order')
  t.equal(subjectOnly['x-nhi-identity'], mtls['x-nhi-identity'], 'XFCC Subject: the same CN as over mTLS')
  t.equal(withCert['x-nhi-identity'], mtls['x-nhi-identity'], 'XFCC Cert: the same CN as over mTLS')

  // the XFCC the proxy sends upstream for the mTLS client: Subject as Envoy prints it, read back to the same CN
  const sent = mtls['x-forwarded-client-cert']!
  t.match(sent, `Subject="${rfc2253}"`, 'the Subject sent upstream is in RFC 4514 order, as Envoy writes it')
  t.equal((xfccEvidence(sent) as CertEvidence).cn, 'orders', 'and names the same CN when read back')
  // and for the Envoy-forwarded one, passed on in the order Envoy wrote it
  t.match(subjectOnly['x-forwarded-client-cert'], `Subject="${rfc2253}"`)
})
