// Certificates whose subject is not Latin-1 (ü, Ω, CJK) or carries control characters: the proxy derives
// header values from them (x-nhi-identity, the clean x-forwarded-client-cert it sends upstream). A header value
// outside Latin-1 makes Node refuse the outgoing request, which turned every such client's request into a
// 502. Every derived value must be encoded so the request goes through and the upstream can decode it.
import { execFile } from 'node:child_process'
import { X509Certificate } from 'node:crypto'
import { validateHeaderValue } from 'node:http'
import { promisify } from 'node:util'
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
import type { CertEvidence, Failure } from '../../src/types.ts'
import { mtlsEcho } from '../helpers/http.ts'
import { createCA, createServerPki, issueCert, mtlsListen } from '../helpers/pki.ts'
import { checkProperty } from '../helpers/property.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

// the X.509 name decoder is loaded on demand (as the sidecar does before it reads a certificate)
await loadCertificateDecoder()

const PRINTABLE_ASCII = /^[\x20-\x7e]*$/
const run = promisify(execFile)

/** the subject as Envoy prints it (X509_NAME_print_ex with XN_FLAG_RFC2253), which openssl's RFC2253 is */
async function opensslSubject(certFile: string): Promise<string> {
  const { stdout } = await run('openssl', [
    'x509',
    '-in',
    certFile,
    '-noout',
    '-subject',
    '-nameopt',
    'RFC2253',
  ])
  return stdout.trim().replace(/^subject=\s*/, '')
}

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
      const res = await mtlsEcho(port, serverCa.certPem, leaf)
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
      // sent in RFC 4514 order, as Envoy writes Subject, and read back into the certificate's own (DER) order
      t.equal(back.subject, expected.subject, `${label}: subject decodes back`)
      t.equal(back.subjectRfc4514, rfc4514Subject(expected.subject!), `${label}: in both orders`)
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

t.test(
  "a trusted Envoy's Subject (RFC 2253, each byte of a non-ASCII character a hex pair) names the certificate as mTLS does",
  async (t) => {
    const tab = await issueCert(clientCa, { subject: '/O=Ωmega/CN=tab\there' })
    // printed with its trailing space escaped: `CN=\CE\A9\ `
    const space = await issueCert(clientCa, { subject: '/O=x/CN=Ω ' })
    // Envoy writes "%" as it is: `CN=caf%C3%A9` is that CN, not `café`, which it writes `CN=caf\C3\A9`
    const percent = await issueCert(clientCa, { subject: '/O=x/CN=caf%C3%A9' })
    // U+FEFF first: Envoy's `CN=\EF\BB\BFadmin` was read as `admin`
    const bom = await issueCert(clientCa, { subject: '/O=x/CN=\uFEFFadmin' })
    const all = [
      ...leaves.map((leaf, i) => ({ leaf, label: clients[i]!.label, uriSans: clients[i]!.uriSans })),
      { leaf: tab, label: 'a tab', uriSans: [] as string[] },
      { leaf: space, label: 'a trailing space', uriSans: [] as string[] },
      { leaf: percent, label: 'a CN holding "%C3%A9"', uriSans: [] as string[] },
      { leaf: bom, label: 'a CN starting with U+FEFF', uriSans: [] as string[] },
    ]
    const upstream = await startUpstream()
    t.teardown(() => upstream.close())
    const sidecar = await startTestSidecar(t, {
      listen: mtlsListen(serverCert, clientCa),
      upstream: upstream.url,
      forwardedClientCert: { trustedProxies: ['127.0.0.2/32'], format: 'xfcc', toUpstream: 'sanitize_set' },
    })
    const fromEnvoy = new Agent({ localAddress: '127.0.0.2' })
    t.teardown(() => fromEnvoy.close())
    for (const { leaf, label, uriSans } of all) {
      const rfc2253 = await opensslSubject(leaf.certFile)
      const mtls = await mtlsEcho(sidecar.httpsAddress!.port, serverCa.certPem, leaf)
      t.equal(mtls.status, 200, `${label}: over mTLS`)
      const overMtls = JSON.parse(mtls.body).headers as Record<string, string>
      const sha256 = (certEvidenceFromX509(new X509Certificate(leaf.certPem), 'mtls', true) as CertEvidence)
        .sha256
      // Envoy's element with Subject in set_current_client_cert_details, the text between quotes as it is
      const res = await request(`${sidecar.proxyUrl}/echo`, {
        dispatcher: fromEnvoy,
        headers: {
          'x-forwarded-client-cert': `By=spiffe://cluster.local/ns/edge/sa/gw;Hash=${sha256};Subject="${rfc2253}"${uriSans.map((u) => `;URI=${u}`).join('')}`,
        },
      })
      t.equal(res.statusCode, 200, `${label}: via Envoy`)
      const viaEnvoy = JSON.parse(await res.body.text()).headers as Record<string, string>
      t.equal(overMtls['x-nhi-source'], 'mtls')
      t.equal(viaEnvoy['x-nhi-source'], 'xfcc', `${label}: the XFCC is believed`)
      t.equal(viaEnvoy['x-nhi-identity'], overMtls['x-nhi-identity'], `${label}: the same name as over mTLS`)
      t.match(viaEnvoy['x-nhi-identity'], PRINTABLE_ASCII)
      t.match(viaEnvoy['x-forwarded-client-cert'], PRINTABLE_ASCII)
      // the XFCC sent upstream names the certificate as the one sent for it over mTLS
      const again = xfccEvidence(viaEnvoy['x-forwarded-client-cert']!) as CertEvidence
      const fromMtls = xfccEvidence(overMtls['x-forwarded-client-cert']!) as CertEvidence
      t.equal(again.cn, fromMtls.cn, `${label}: the CN of the XFCC sent upstream`)
      t.equal(again.subject, fromMtls.subject, `${label}: the Subject of the XFCC sent upstream`)
    }
  },
)

t.test('what we emit is a valid header value and parses back to what the certificate said', async (t) => {
  // any text, including control characters, quotes, separators, "%", astral characters and lone surrogates
  const text = fc.string({ unit: 'binary', maxLength: 40 })
  const wellFormed = (s: string) => Buffer.from(s, 'utf8').toString('utf8')
  // a certificate's attribute value (UTF-8: a lone surrogate cannot be one) as OpenSSL prints it with the
  // RFC 2253 escapes: Node's printing (`msb: 'raw'`) and Envoy's (`msb: 'hex'`, each byte a hex pair)
  const value = text.map(wellFormed)
  const hex = (b: number) => `\\${b.toString(16).toUpperCase().padStart(2, '0')}`
  const printed = (v: string, msb: 'raw' | 'hex') => {
    let out = ''
    const chars = [...v]
    for (const [i, ch] of chars.entries()) {
      const c = ch.codePointAt(0)!
      const edge = i === 0 || i === chars.length - 1
      if (c < 0x20 || c === 0x7f) out += hex(c)
      else if (',+"\\<>;'.includes(ch) || (i === 0 && ch === '#') || (edge && ch === ' ')) out += `\\${ch}`
      else if (c >= 0x80 && msb === 'hex') for (const b of Buffer.from(ch, 'utf8')) out += hex(b)
      else out += ch
    }
    return out
  }
  const cnValue = value.filter((v) => v !== '')
  checkProperty(
    t,
    'formatXfcc → xfccEvidence round-trips Subject (sent in RFC 4514 order, read back in DER order) and its CN, URI and DNS; the value is printable ASCII',
    fc.property(
      cnValue,
      value,
      fc.array(text, { maxLength: 2 }),
      fc.array(text, { maxLength: 2 }),
      (cn, o, uri, dns) => {
        const ev: CertEvidence = {
          source: 'mtls',
          verified: true,
          sha256: 'ab'.repeat(32),
          // as Node prints a subject: DER order
          subject: `O=${printed(o, 'raw')}, CN=${printed(cn, 'raw')}`,
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
          back.subject === ev.subject &&
          back.subjectRfc4514 === rfc4514Subject(ev.subject!) &&
          back.cn === cn &&
          JSON.stringify(back.uriSans.map(pct)) === JSON.stringify(ev.uriSans.map(wellFormed)) &&
          JSON.stringify(back.dnsSans.map(pct)) === JSON.stringify(ev.dnsSans.map(wellFormed))
        )
      },
    ),
  )
  checkProperty(
    t,
    "Envoy's Subject (a hex pair for each byte of a non-ASCII character) reads as the certificate's characters and CN",
    fc.property(cnValue, value, (cn, o) => {
      const envoy = `CN=${printed(cn, 'hex')},O=${printed(o, 'hex')}`
      if (!PRINTABLE_ASCII.test(envoy)) return false
      const back = xfccEvidence(`Hash=${'ab'.repeat(32)};Subject="${envoy}"`)
      if ('failed' in back) return false
      // the same text Node prints for the certificate (DER order), and that in RFC 4514 order
      if (back.subject !== `O=${printed(o, 'raw')}, CN=${printed(cn, 'raw')}`) return false
      if (back.subjectRfc4514 !== `CN=${printed(cn, 'raw')},O=${printed(o, 'raw')}`) return false
      if (back.cn !== cn) return false
      // and passed on upstream as it is read
      const upstream = xfccEvidence(formatXfcc(back))
      return !('failed' in upstream) && upstream.cn === cn && upstream.subject === back.subject
    }),
  )
  checkProperty(
    t,
    'any Subject text: formatXfcc is a valid header value of one element, which reads back without a throw',
    fc.property(text, (subject) => {
      const value = formatXfcc({ source: 'mtls', verified: true, subject, uriSans: [], dnsSans: [] })
      validateHeaderValue('x-forwarded-client-cert', value)
      if (!PRINTABLE_ASCII.test(value) || parseXfcc(value)?.length !== 1) return false
      const back = xfccEvidence(value)
      return 'failed' in back ? back.reason === 'malformed' : PRINTABLE_ASCII.test(formatXfcc(back))
    }),
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
  // as U+FFFD (`a%EF%BF%BDb`) it would be the header of the name with a real U+FFFD
  t.equal(safeHeaderValue('a\uD800b'), 'a%5Cud800b', 'a lone surrogate is written as its escape')
  t.equal(safeHeaderValue('a\uFFFDb'), 'a%EF%BF%BDb', 'a real U+FFFD is itself')
  // "%" is no escape of a Subject, as Envoy writes it: a subject that contains "%61" or "%CE%A9" is not another
  // name (a certificate whose CN holds "caf%C3%A9" was named `café` behind Envoy, `caf%C3%A9` over mTLS)
  t.equal(decodeSubject('CN=%61dmin'), 'CN=%61dmin')
  t.equal(decodeSubject('CN=100%'), 'CN=100%')
  t.equal(decodeSubject('CN=%CE%A9 100%25'), 'CN=%CE%A9 100%25')
  t.equal(decodeSubject('CN=%FF'), 'CN=%FF')
  // RFC 4514 hex pairs, as Envoy writes every byte of a non-ASCII character
  t.equal(decodeSubject('CN=\\CE\\A9-worker,O=\\E6\\A0\\AA'), 'CN=Ω-worker,O=株')
  t.equal(decodeSubject('CN=\\F0\\9F\\98\\80'), 'CN=😀', 'four bytes: one character')
  t.equal(
    decodeSubject('CN=\\EF\\BB\\BFadmin'),
    'CN=\uFEFFadmin',
    'a leading U+FEFF is a character, no byte order mark',
  )
  t.equal(
    decodeSubject('CN=a\\0Ab\\2C\\,c'),
    'CN=a\\0Ab\\2C\\,c',
    'escapes of ASCII stay: they decide the split',
  )
  t.equal(decodeSubject('CN=x\\\\CE'), 'CN=x\\\\CE', 'an escaped backslash, then text')
  for (const bad of ['CN=\\FF', 'CN=\\CE', 'CN=\\CE\\,', 'CN=\\C0\\80', 'CN=\\ED\\A0\\80', 'O=\\A9,CN=a']) {
    t.equal(decodeSubject(bad), undefined, `not UTF-8: ${bad}`)
    t.equal((xfccEvidence(`Subject="${bad}"`) as Failure).reason, 'malformed', `malformed: ${bad}`)
  }
  t.equal(commonName('CN=\\CE\\A9\\2C\\41', 'rfc4514'), 'Ω,A', 'hex pairs of ASCII are its characters')
  t.equal(commonName('CN=\\C0\\80'), undefined, 'an overlong encoding is not UTF-8')
  t.equal(commonName('CN=\\#1'), '#1')
  t.equal(commonName('CN=\\CE\\A9\\ ,O=x', 'rfc4514'), 'Ω ', "an escaped trailing space is the CN's")
  t.equal(commonName('O=x, CN=a\\\\ + OU=b'), 'a\\', 'after an escaped backslash a space escapes nothing')
  t.equal(commonName('O=x, CN=a\u00a0'), 'a\u00a0', 'a trailing non-ASCII space is part of the CN')
  t.equal(commonName('/O=x/CN=#1'), '#1', "slash form has no BER values: the '#' is the CN's")
  // OpenSSL prints a CN that is not a string type as the hex of its BER: never a name
  t.equal(commonName('CN=#0C03414243'), undefined)
  const ber = xfccEvidence(
    'Hash=' + 'ab'.repeat(32) + ';Subject="CN=#0C03414243,O=x";URI=spiffe://td/a',
  ) as Failure
  t.equal(ber.reason, 'malformed', 'a BER-valued CN makes the Subject malformed')
  const uid = xfccEvidence('Subject="CN=a,2.5.4.45=#030200FF"') as CertEvidence
  t.equal(uid.cn, 'a', 'a BER value of another attribute names nothing and is left alone')
})
