// The X.509 name decoder is not part of a start: it is loaded by whatever reads a certificate first. This
// file runs in a process of its own, so nothing has loaded it before these tests.
import t from 'tap'
import { certEvidenceFromPem, certificateDecoderLoaded } from '../../src/identity/certificate.ts'
import { createForwardedCertExtractor } from '../../src/identity/sources/forwarded-cert.ts'
import type { CertEvidence, ConnectionInfo } from '../../src/types.ts'
import { createCA, issueCert } from '../helpers/pki.ts'

const ca = await createCA('lazy-decoder-ca')
const leaf = await issueCert(ca, {
  cn: 'orders-worker',
  uriSans: ['spiffe://cluster.local/ns/orders/sa/worker'],
})
const conn: ConnectionInfo = { remoteAddress: '127.0.0.1', remotePort: 0, tls: false }
const request = {
  method: 'GET',
  path: '/',
  url: '/',
  headers: { 'x-forwarded-client-cert': `Cert="${encodeURIComponent(leaf.certPem)}"` },
}

t.test('a certificate read before the decoder is loaded', async (t) => {
  t.notOk(certificateDecoderLoaded(), 'importing the certificate code does not load the decoder')
  t.throws(
    () => certEvidenceFromPem(leaf.certPem, 'xfcc', true),
    /decoder not loaded/,
    'the synchronous parser says so instead of calling the certificate malformed',
  )

  // a request that races the extractor's start() waits for the decoder rather than failing
  const extractor = createForwardedCertExtractor({
    trustedProxies: ['127.0.0.0/8'],
    format: 'xfcc',
    toUpstream: 'sanitize_set',
  })
  const pending = extractor.extract(request, conn)
  t.ok(pending instanceof Promise, 'the forwarded certificate waits for the decoder')
  const ev = (await pending) as CertEvidence
  t.equal(ev.spiffeId, 'spiffe://cluster.local/ns/orders/sa/worker')
  t.equal(ev.cn, 'orders-worker')
  t.ok(certificateDecoderLoaded())
  t.notOk(extractor.extract(request, conn) instanceof Promise, 'once loaded, the answer is synchronous')
})
