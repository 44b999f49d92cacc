// Certificates whose subject is not Latin-1 (ü, Ω, CJK) or carries control characters: the proxy derives
// header values from them (x-nhi-identity, the clean x-forwarded-client-cert it sends upstream). A header value
// outside Latin-1 makes Node refuse the outgoing request, which turned every such client's request into a
// 502. Every derived value must be encoded so the request goes through and the upstream can decode it.
import { X509Certificate } from 'node:crypto'
import { validateHeaderValue } from 'node:http'
import fc from 'fast-check'
import t from 'tap'
import { Agent, request } from 'undici'
import {
  certEvidenceFromX509,
  commonName,
  firstPemCertificate,
  loadCertificateDecoder,
  rfc4514Subject,
} from '../../src/identity/certificate.ts'
import { formatXfcc } from '../../src/identity/forwarded/headers.ts'
import {
  decodeSubject,
  parseXfcc,
  xfccElementEvidence,
  xfccEvidence,
} from '../../src/identity/forwarded/xfcc.ts'
import { safeHeaderValue } from '../../src/proxy/headers.ts'
import type { CertEvidence } from '../../src/types.ts'
import { exchange } from '../helpers/http.ts'
import { createCA, createServerPki, issueCert, mtlsListen } from '../helpers/pki.ts'
import { checkProperty } from '../helpers/property.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

// the X.509 name decoder is loaded on demand (as the sidecar does before it reads a certificate)
await loadCertificateDecoder()

const PRINTABLE_ASCII = /^[\x20-\x7e]*$/

const { ca: serverCa, server: serverCert } = await createServerPki()
const clientCa = await createCA('client-ca-utf8')
const clients = [
  { label: 'Latin-1 ü', subject: '/O=Müller GmbH/CN=jürgen', uriSans: [] as string[] },
  { label: 'Greek Ω', subject: '/O=Ωmega/CN=Ω-worker', uriSans: [] },
  {
    label: 'CJK with a SPIFFE ID',
    subject: '/O=株式会社/CN=注文-worker',
    uriSans: ['spiffe://cluster.local/ns/orders/sa/worker'],
  },
  { label: 'quotes, commas and a percent', subject: '/O=A\\, "B"; C=D 100%/CN=Ω,x', uriSans: [] },
]
const leaves = await Promise.all(
  clients.map((c) => issueCert(clientCa, { subject: c.subject, uriSans: c.uriSans })),
)

t.test(
  'mTLS clients with non-Latin-1 subjects are forwarded, and the XFCC we send decodes back',
  async (t) => {
    const upstream = await startUpstream()
    t.teardown(() => upstream.close())
    const sidecar = await startTestSidecar(t, {
      listen: mtlsListen(serverCert, clientCa),
      upstream: upstream.url,
      forwardedClientCert: { toUpstream: 'sanitize_set' },
    })
    const port = sidecar.httpsAddress!.port

    for (const [i, leaf] of leaves.entries()) {
      const label = clients[i]!.label
      const res = await exchange({
        https: true,
        host: '127.0.0.1',
        port,
        path: '/echo',
        servername: 'localhost',
        ca: serverCa.certPem,
        cert: leaf.certPem,
        key: leaf.keyPem,
      })
      t.equal(res.status, 200, `${label}: forwarded, not a 502`)
      if (res.status !== 200) continue
      const seen = JSON.parse(res.body).headers as Record<string, string>
      t.equal(seen['x-nhi-verified'], 'true', `${label}: verified`)
      t.equal(seen['x-nhi-source'], 'mtls')
      t.match(seen['x-nhi-identity'], PRINTABLE_ASCII, `${label}: identity header is printable ASCII`)
      const xfcc = seen['x-forwarded-client-cert']!
      t.match(xfcc, PRINTABLE_ASCII, `${label}: XFCC is printable ASCII`)
      t.equal(parseXfcc(xfcc)?.length, 1, `${label}: one XFCC element`)
      const back = xfccEvidence(xfcc) as CertEvidence
      // what the proxy itself read from the certificate
      const x = new X509Certificate(firstPemCertificate(leaf.certPem)!)
      const expected = certEvidenceFromX509(x, 'mtls', true) as CertEvidence
      t.ok(/[^\x00-\xff]/.test(expected.subject!) || i === 0, `${label}: the subject really is not Latin-1`)
      // in RFC 4514 order, as Envoy writes Subject
      t.equal(back.subject, rfc4514Subject(expected.subject!), `${label}: subject decodes back`)
      t.equal(back.cn, expected.cn, `${label}: CN decodes back`)
      t.equal(back.sha256, expected.sha256)
      t.same(back.uriSans, clients[i]!.uriSans, `${label}: URI SANs decode back`)
    }
  },
)

t.test('a forwarded certificate with a non-Latin-1 subject is forwarded too', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const sidecar = await startTestSidecar(t, {
    upstream: upstream.url,
    forwardedClientCert: { trustedProxies: ['127.0.0.2/32'], format: 'nginx', toUpstream: 'sanitize_set' },
    identities: [
      { name: '{ns}/{sa}', kind: 'service', match: { spiffe: 'spiffe://cluster.local/ns/{ns}/sa/{sa}' } },
    ],
  })
  const fromFront = new Agent({ localAddress: '127.0.0.2' })
  t.teardown(() => fromFront.close())
  for (const [i, leaf] of leaves.entries()) {
    const res = await request(`${sidecar.proxyUrl}/echo`, {
      dispatcher: fromFront,
      headers: { 'x-ssl-client-cert': encodeURIComponent(leaf.certPem) },
    })
    const label = clients[i]!.label
    t.equal(res.statusCode, 200, `${label}: forwarded, not a 502`)
    const seen = JSON.parse(await res.body.text()).headers as Record<string, string>
    t.equal(seen['x-nhi-verified'], 'true')
    t.equal(seen['x-nhi-source'], 'xfcc')
    t.match(seen['x-nhi-identity'], PRINTABLE_ASCII)
    t.match(seen['x-forwarded-client-cert'], PRINTABLE_ASCII)
    if (clients[i]!.uriSans.length) t.equal(seen['x-nhi-identity'], 'orders/worker')
  }
})

t.test('what we emit is a valid header value and parses back to what the certificate said', async (t) => {
  // any text, including control characters, quotes, separators, "%", astral characters and lone surrogates
  const text = fc.string({ unit: 'binary', maxLength: 40 })
  const wellFormed = (s: string) => Buffer.from(s, 'utf8').toString('utf8')
  checkProperty(
    t,
    'formatXfcc → xfccEvidence round-trips Subject (in RFC 4514 order) and its CN, URI and DNS; the value is printable ASCII',
    fc.property(
      text,
      fc.array(text, { maxLength: 2 }),
      fc.array(text, { maxLength: 2 }),
      (subject, uri, dns) => {
        const ev: CertEvidence = {
          source: 'mtls',
          verified: true,
          sha256: 'ab'.repeat(32),
          subject: `CN=${subject}`,
          // a URI or DNS name keeps its own "%" escapes; generated ones have none
          uriSans: uri.map((u) => `https://x/${u.replaceAll('%', '')}`),
          dnsSans: dns.map((d) => `d${d.replaceAll('%', '')}`),
        }
        const value = formatXfcc(ev)
        validateHeaderValue('x-forwarded-client-cert', value)
        if (!PRINTABLE_ASCII.test(value)) return false
        const els = parseXfcc(value)
        if (els?.length !== 1) return false
        const back = xfccElementEvidence(els[0]!)
        if ('failed' in back) return false
        const pct = (s: string) => decodeURIComponent(s)
        return (
          back.subject === wellFormed(rfc4514Subject(ev.subject!)) &&
          back.cn === commonName(wellFormed(ev.subject!)) &&
          JSON.stringify(back.uriSans.map(pct)) === JSON.stringify(ev.uriSans.map(wellFormed)) &&
          JSON.stringify(back.dnsSans.map(pct)) === JSON.stringify(ev.dnsSans.map(wellFormed))
        )
      },
    ),
  )
  checkProperty(
    t,
    'safeHeaderValue never throws and is printable ASCII',
    fc.property(text, (s) => {
      const v = safeHeaderValue(s)
      validateHeaderValue('x-nhi-identity', v)
      return PRINTABLE_ASCII.test(v)
    }),
  )
  t.equal(safeHeaderValue('a\uD800b'), 'a%EF%BF%BDb', 'a lone surrogate becomes U+FFFD')
  // only escapes formatXfcc makes are undone: a subject that merely contains "%61" is not another name
  t.equal(decodeSubject('CN=%61dmin'), 'CN=%61dmin')
  t.equal(decodeSubject('CN=100%'), 'CN=100%')
  t.equal(decodeSubject('CN=%CE%A9 100%25'), 'CN=Ω 100%')
  t.equal(decodeSubject('CN=%FF'), 'CN=%FF', 'not UTF-8: kept as sent')
})
