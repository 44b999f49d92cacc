import { once } from 'node:events'
import { createServer, type IncomingHttpHeaders } from 'node:http'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { request } from 'undici'
import { anomaliesFromFailures } from '../../src/identity/anomalies.ts'
import { firstPemCertificate, loadCertificateDecoder } from '../../src/identity/certificate.ts'
import {
  FORWARDED_CERT_FORMATS,
  FORWARDED_CERT_HEADERS,
  type ForwardedCertFormat,
  formatXfcc,
  sanitizeForwardedCertHeaders,
} from '../../src/identity/forwarded/headers.ts'
import { MAX_XFCC_ELEMENTS, parseXfcc, xfccEvidence } from '../../src/identity/forwarded/xfcc.ts'
import { createForwardedCertExtractor } from '../../src/identity/sources/forwarded-cert.ts'
import type { CertEvidence, ConnectionInfo, Failure } from '../../src/types.ts'
import { sha256Hex } from '../../src/util/fingerprint.ts'
import { createCA, issueCert } from '../helpers/pki.ts'

// the X.509 name decoder is loaded on demand (as the sidecar does before it reads a certificate)
await loadCertificateDecoder()

type Result = CertEvidence | Failure | undefined

// Envoy's documented XFCC examples (header-sanitizing docs), and Istio's sidecar form.
const ENVOY_SINGLE =
  'By=http://frontend.lyft.com;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688;Subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client";URI=http://testclient.lyft.com'
const ENVOY_TWO_ELEMENTS =
  'By=http://frontend.lyft.com;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688;URI=http://testclient.lyft.com,By=http://backend.lyft.com;Hash=9ba61d6425303443c0748a02dd8de688468ed33be74eee6556d90c0149c1309e;URI=http://frontend.lyft.com'
const ENVOY_DNS =
  'By=http://frontend.lyft.com;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688;Subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client";URI=http://testclient.lyft.com;DNS=lyft.com;DNS=www.lyft.com'
const ISTIO =
  'By=spiffe://cluster.local/ns/default/sa/httpbin;Hash=c2f64a4ab2c1a1d7e9c7e8f9f0a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d;Subject="";URI=spiffe://cluster.local/ns/default/sa/sleep'

const ca = await createCA('edge-ca')
const leaf = await issueCert(ca, {
  cn: 'orders-worker',
  uriSans: ['spiffe://cluster.local/ns/orders/sa/worker'],
  dnsSans: ['worker.orders.svc'],
})
const leafSha = sha256Hex(firstPemCertificate(leaf.certPem)!)

// One real HTTP server; each request is judged by an extractor that trusts loopback for the format named in
// the query (?format=…, default xfcc) and by one that does not trust loopback at all.
const trustedFor = Object.fromEntries(
  FORWARDED_CERT_FORMATS.map((format) => [
    format,
    createForwardedCertExtractor({ trustedProxies: ['127.0.0.0/8'], format, toUpstream: 'sanitize_set' }),
  ]),
) as Record<ForwardedCertFormat, ReturnType<typeof createForwardedCertExtractor>>
const untrustedEx = createForwardedCertExtractor({
  trustedProxies: ['10.0.0.0/8'],
  format: 'xfcc',
  toUpstream: 'sanitize_set',
})
const server = createServer(async (req, res) => {
  const info = { method: req.method ?? 'GET', path: '/', url: req.url ?? '/', headers: req.headers }
  const conn: ConnectionInfo = { remoteAddress: req.socket.remoteAddress ?? '', remotePort: 0, tls: false }
  const format = (new URL(req.url ?? '/', 'http://x').searchParams.get('format') ??
    'xfcc') as ForwardedCertFormat
  const body = {
    trusted: await trustedFor[format].extract(info, conn),
    untrusted: await untrustedEx.extract(info, conn),
  }
  res.setHeader('content-type', 'application/json')
  res.end(JSON.stringify(body))
})
server.listen(0, '127.0.0.1')
await once(server, 'listening')
const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
t.teardown(() => new Promise<void>((r) => server.close(() => r())))

async function send(
  headers: Record<string, string> | string[],
  format: ForwardedCertFormat = 'xfcc',
): Promise<{ trusted: Result; untrusted: Result }> {
  const res = await request(`${base}/?format=${format}`, { headers })
  return (await res.body.json()) as { trusted: Result; untrusted: Result }
}

t.test('Envoy XFCC examples from a trusted peer', async (t) => {
  const one = (await send({ 'x-forwarded-client-cert': ENVOY_SINGLE })).trusted as CertEvidence
  t.same(one, {
    source: 'xfcc',
    verified: true,
    dnsSans: [],
    uriSans: ['http://testclient.lyft.com'],
    sha256: '468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688',
    // slash form is DER order already, and has no RFC 4514 form: both are the text as sent
    subject: '/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client',
    subjectRfc4514: '/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client',
    cn: 'Test Client',
    via: 'xfcc',
  })
  const two = (await send({ 'x-forwarded-client-cert': ENVOY_TWO_ELEMENTS })).trusted as CertEvidence
  t.same(two.uriSans, ['http://frontend.lyft.com'], 'the rightmost element is the one the trusted hop added')
  t.equal(two.sha256, '9ba61d6425303443c0748a02dd8de688468ed33be74eee6556d90c0149c1309e')
  const dns = (await send({ 'x-forwarded-client-cert': ENVOY_DNS })).trusted as CertEvidence
  t.same(dns.dnsSans, ['lyft.com', 'www.lyft.com'])
  t.equal(dns.cn, 'Test Client')
})

t.test('Istio XFCC gives the SPIFFE ID of the calling workload', async (t) => {
  const ev = (await send({ 'x-forwarded-client-cert': ISTIO })).trusted as CertEvidence
  t.equal(ev.spiffeId, 'spiffe://cluster.local/ns/default/sa/sleep')
  t.equal(ev.subject, undefined, 'empty quoted Subject is absent')
})

t.test('the same headers from an untrusted peer are a spoofing attempt', async (t) => {
  const spoofs: Record<string, string>[] = [
    { 'x-forwarded-client-cert': ISTIO },
    { 'client-cert': ':AAAA:' },
    { 'x-amzn-mtls-clientcert-subject': 'CN=admin' },
    { 'ssl-client-cert': 'x' },
    { 'x-ssl-client-cert': 'x' },
  ]
  for (const h of spoofs) {
    const r = (await send(h)).untrusted as Failure
    t.equal(r.reason, 'untrusted_forwarder', Object.keys(h).join())
    t.equal(r.source, 'xfcc')
    t.same(anomaliesFromFailures([r]), ['spoofed_header'])
  }
  const none = await send({})
  t.equal(none.trusted, undefined)
  t.equal(none.untrusted, undefined, 'no forwarded header → nothing to report')
})

t.test('XFCC with a URL-encoded PEM Cert is parsed as a certificate', async (t) => {
  const value = `By=spiffe://cluster.local/ns/edge/sa/gw;Hash=${leafSha};Cert="${encodeURIComponent(leaf.certPem)}";Subject="CN=orders-worker";URI=spiffe://cluster.local/ns/orders/sa/worker`
  const ev = (await send({ 'x-forwarded-client-cert': value })).trusted as CertEvidence
  t.equal(ev.sha256, leafSha)
  t.equal(ev.spiffeId, 'spiffe://cluster.local/ns/orders/sa/worker')
  t.same(ev.dnsSans, ['worker.orders.svc'])
  t.equal(ev.cn, 'orders-worker')
  t.ok(ev.notAfter && ev.notAfter > Date.now() / 1000)
  const broken = (await send({ 'x-forwarded-client-cert': 'Cert="%E0%A4%A";URI=spiffe://a/b' }))
    .trusted as Failure
  t.equal(broken.reason, 'malformed')
})

t.test('RFC 9440 Client-Cert byte sequence', async (t) => {
  const der = firstPemCertificate(leaf.certPem)!
  const caDer = firstPemCertificate(ca.certPem)!
  const r = await send(
    {
      'client-cert': `:${der.toString('base64')}:`,
      'client-cert-chain': `:${caDer.toString('base64')}:`,
    },
    'rfc9440',
  )
  const ev = r.trusted as CertEvidence
  t.equal(ev.via, 'client-cert')
  t.equal(ev.sha256, leafSha)
  t.equal(ev.spiffeId, 'spiffe://cluster.local/ns/orders/sa/worker')
  const bad = (await send({ 'client-cert': der.toString('base64') }, 'rfc9440')).trusted as Failure
  t.equal(bad.reason, 'malformed', 'missing colons')
  // RFC 8941 §4.2.7: padding may be left out, but padding that is there completes the last group of four
  const base64 = der.toString('base64')
  const unpadded = base64.replace(/=+$/, '')
  const omitted = (await send({ 'client-cert': `:${unpadded}:` }, 'rfc9440')).trusted as CertEvidence
  t.equal(omitted.sha256, leafSha, 'padding left out: the same certificate')
  const wrongPadding = unpadded + (base64.length - unpadded.length === 2 ? '=' : '==')
  const padded = (await send({ 'client-cert': `:${wrongPadding}:` }, 'rfc9440')).trusted as Failure
  t.equal(padded.reason, 'malformed', `padding that does not end a group of four (${wrongPadding.slice(-4)})`)
  // only OWS is no part of the field: a 0xA0 byte after the item is a character the grammar has no place for
  const nbsp = (await send({ 'client-cert': `:${base64}:\u00a0` }, 'rfc9440')).trusted as Failure
  t.equal(nbsp.reason, 'malformed', 'a non-breaking space after the byte sequence')
})

t.test('AWS ALB passthrough and verify headers', async (t) => {
  // ALB URL-encodes the PEM chain but leaves + = / as they are
  const albEncode = (pem: string) =>
    encodeURIComponent(pem).replace(/%2B/g, '+').replace(/%3D/g, '=').replace(/%2F/g, '/')
  // passthrough mode: ALB forwards the chain without verifying it, so it names nobody
  const chain = (await send({ 'x-amzn-mtls-clientcert': albEncode(leaf.certPem + ca.certPem) }, 'alb'))
    .trusted as Failure
  t.match(chain, { failed: true, source: 'xfcc', reason: 'cert_untrusted', detail: /passthrough/ })
  t.equal(chain.fingerprint, leafSha.slice(0, 16), 'the leaf is the first certificate of the chain')
  t.match(
    (await send({ 'x-amzn-mtls-clientcert': 'not%20a%20certificate' }, 'alb')).trusted,
    { reason: 'malformed' },
    'a passthrough value that is no PEM is malformed',
  )
  // a chain the client made itself, naming the admin workload: the reason passthrough is not believed
  const forged = await createCA('forged-ca')
  const admin = await issueCert(forged, { cn: 'admin', uriSans: ['spiffe://cluster.local/ns/prod/sa/admin'] })
  t.match(
    (await send({ 'x-amzn-mtls-clientcert': albEncode(admin.certPem + forged.certPem) }, 'alb')).trusted,
    { reason: 'cert_untrusted' },
    'a self-made chain naming the admin workload is not an identity',
  )
  const verifyMode = (
    await send(
      {
        'x-amzn-mtls-clientcert-leaf': albEncode(leaf.certPem),
        'x-amzn-mtls-clientcert-subject': 'CN=orders-worker',
        'x-amzn-mtls-clientcert-serial-number': '03E8',
      },
      'alb',
    )
  ).trusted as CertEvidence
  t.equal(verifyMode.sha256, leafSha)
  // verify mode sends its leaf with every request: names without it are a client's, passed on by the load
  // balancer as sent (in passthrough mode, a client without a certificate), and name nobody
  const nameOnly: Record<string, string>[] = [
    {
      'x-amzn-mtls-clientcert-subject': 'CN=batch,O=Example',
      'x-amzn-mtls-clientcert-san': 'DNS:batch.example.com, URI:spiffe://example.com/batch',
    },
    { 'x-amzn-mtls-clientcert-san': 'URI:spiffe://cluster.local/ns/prod/sa/admin' },
    { 'X-Amzn-Mtls-Clientcert-Subject': 'CN=admin' },
    { 'x-amzn-mtls-clientcert-serial-number': '03E8' },
  ]
  for (const headers of nameOnly) {
    const r = (await send(headers, 'alb')).trusted as Failure
    t.match(
      r,
      { failed: true, reason: 'untrusted_forwarder' },
      `${Object.keys(headers).join(' + ')}: not believed`,
    )
    t.same(anomaliesFromFailures([r]), ['spoofed_header'], 'and flagged as spoofed')
  }
})

t.test('nginx escaped and whitespace-mangled PEM', async (t) => {
  const escaped = (await send({ 'x-ssl-client-cert': encodeURIComponent(leaf.certPem) }, 'nginx'))
    .trusted as CertEvidence
  t.equal(escaped.via, 'nginx')
  t.equal(escaped.sha256, leafSha)
  const tabbed = (await send({ 'x-ssl-client-cert': leaf.certPem.trim().split('\n').join('\t') }, 'nginx'))
    .trusted as CertEvidence
  t.equal(tabbed.sha256, leafSha)
  const spaced = (await send({ 'x-ssl-client-cert': leaf.certPem.trim().split('\n').join(' ') }, 'nginx'))
    .trusted as CertEvidence
  t.equal(spaced.sha256, leafSha)
  const junk = (await send({ 'x-ssl-client-cert': 'not a cert' }, 'nginx')).trusted as Failure
  t.equal(junk.reason, 'malformed')
})

// A proxy that adds its header instead of replacing the client's (HAProxy's `http-request add-header`) leaves
// the client's line first: Node joins the lines with ", ", and the first certificate was the client's. A PEM
// holds no comma, so one in these single-certificate headers means several lines: nobody knows which is the
// proxy's, none is believed.
t.test('nginx and ALB leaf headers sent more than once are malformed, not the first line', async (t) => {
  const albEncode = (pem: string) =>
    encodeURIComponent(pem).replace(/%2B/g, '+').replace(/%3D/g, '=').replace(/%2F/g, '/')
  const forgedCa = await createCA('line-ca')
  const admin = await issueCert(forgedCa, {
    cn: 'admin',
    uriSans: ['spiffe://cluster.local/ns/prod/sa/admin'],
  })
  const cases: [ForwardedCertFormat, string, (pem: string) => string][] = [
    ['nginx', 'x-ssl-client-cert', encodeURIComponent],
    ['nginx', 'x-ssl-client-cert', (pem) => pem.trim().split('\n').join('\t')],
    ['alb', 'x-amzn-mtls-clientcert-leaf', albEncode],
  ]
  for (const [format, name, encode] of cases) {
    const twice = (await send([name, encode(admin.certPem), name, encode(leaf.certPem)], format))
      .trusted as Failure
    t.match(twice, { failed: true, reason: 'malformed' }, `${name} twice, the client's first`)
    const emptyAfter = (await send([name, encode(admin.certPem), name, ''], format)).trusted as Failure
    t.match(emptyAfter, { failed: true, reason: 'malformed' }, `${name} twice, the proxy's empty`)
    const once = (await send([name, encode(leaf.certPem)], format)).trusted as CertEvidence
    t.equal(once.sha256, leafSha, `${name} once is believed`)
  }
})

t.test('a trusted proxy is believed in its one format only', async (t) => {
  const forgedXfcc = 'URI=spiffe://cluster.local/ns/prod/sa/admin'
  const der = firstPemCertificate(leaf.certPem)!
  const families: [ForwardedCertFormat, Record<string, string>][] = [
    ['xfcc', { 'x-forwarded-client-cert': forgedXfcc }],
    ['rfc9440', { 'client-cert': `:${der.toString('base64')}:` }],
    ['alb', { 'x-amzn-mtls-clientcert-subject': 'CN=admin' }],
    ['nginx', { 'x-ssl-client-cert': encodeURIComponent(leaf.certPem) }],
  ]
  for (const format of FORWARDED_CERT_FORMATS) {
    for (const [family, headers] of families) {
      if (family === format) continue
      const r = (await send(headers, format)).trusted as Failure
      t.equal(
        r.reason,
        'untrusted_forwarder',
        `${Object.keys(headers)[0]} from a proxy trusted for ${format}`,
      )
      t.same(anomaliesFromFailures([r]), ['spoofed_header'])
    }
  }
  // no format reads ssl-client-cert or an underscore spelling: nothing a client adds can stand in for the proxy
  for (const format of FORWARDED_CERT_FORMATS) {
    for (const name of ['ssl-client-cert', 'x_ssl_client_cert', 'x_forwarded_client_cert', 'client_cert']) {
      const r = (await send({ [name]: encodeURIComponent(leaf.certPem) }, format)).trusted as Failure
      t.equal(r.reason, 'untrusted_forwarder', `${name} with format ${format}`)
    }
  }
  // the right header beside a forged one: the proxy's own header is used
  const both = (
    await send(
      { 'x-ssl-client-cert': encodeURIComponent(leaf.certPem), 'x-forwarded-client-cert': forgedXfcc },
      'nginx',
    )
  ).trusted as CertEvidence
  t.equal(both.spiffeId, 'spiffe://cluster.local/ns/orders/sa/worker')
  // a peer listed under two formats is trusted for neither
  const twice = createForwardedCertExtractor({
    trustedProxies: [
      { cidr: '127.0.0.0/8', format: 'xfcc' },
      { cidr: '127.0.0.1', format: 'nginx' },
    ],
    toUpstream: 'sanitize_set',
  })
  t.equal(twice.formatFor('127.0.0.1'), undefined)
  t.equal(twice.formatFor('127.0.0.2'), 'xfcc')
  // an entry with no format (no global one either) trusts nothing; `check` reports it
  const noFormat = createForwardedCertExtractor({
    trustedProxies: ['127.0.0.0/8'],
    toUpstream: 'sanitize_set',
  })
  t.equal(noFormat.formatFor('127.0.0.1'), undefined)
})

t.test('XFCC: the element the trusted hop appended is used, across several header lines', async (t) => {
  const worker = 'By=spiffe://cluster.local/ns/edge/sa/gw;URI=spiffe://cluster.local/ns/orders/sa/worker'
  const forged = 'URI=spiffe://cluster.local/ns/prod/sa/admin'
  const oneLine = (await send({ 'x-forwarded-client-cert': `${forged},${worker}` })).trusted as CertEvidence
  t.equal(
    oneLine.spiffeId,
    'spiffe://cluster.local/ns/orders/sa/worker',
    'client-supplied element on the left',
  )
  const lines = (await send(['x-forwarded-client-cert', forged, 'x-forwarded-client-cert', worker]))
    .trusted as CertEvidence
  t.equal(lines.spiffeId, 'spiffe://cluster.local/ns/orders/sa/worker', 'two header lines are one list')
  const quoteTrap = (await send(['x-forwarded-client-cert', 'Subject="a', 'x-forwarded-client-cert', worker]))
    .trusted as Failure
  t.equal(quoteTrap.reason, 'malformed', 'an open quote cannot swallow the hop element')
})

t.test('XFCC grammar: quoting, escapes, case-insensitive keys, repeats', async (t) => {
  const els = parseXfcc(
    'hash=AB;SUBJECT="CN=Client, O=Acme, Inc.";uri=spiffe://a/b,By=x;Subject="CN=\\"quoted\\" name; really";Dns=a;DNS=b',
  )
  t.equal(els?.length, 2, 'the comma inside quotes does not split')
  t.equal(els?.[0]?.subject, 'CN=Client, O=Acme, Inc.')
  t.same(els?.[0]?.uri, ['spiffe://a/b'])
  // a quoted Subject keeps its backslashes: they are RFC 4514 escapes, as Envoy writes them
  t.equal(els?.[1]?.subject, 'CN=\\"quoted\\" name; really')
  t.equal(
    (xfccEvidence('Subject="CN=\\"quoted\\" name; really"') as CertEvidence).cn,
    '"quoted" name; really',
  )
  const escaped = parseXfcc('Subject="CN=a\\,b\\\\,O=\\CE\\A9";URI="x\\"y"')?.[0]
  t.equal(escaped?.subject, 'CN=a\\,b\\\\,O=\\CE\\A9')
  t.same(escaped?.uri, ['x"y'], 'other values are unescaped')
  // as Envoy's own XFCC reader unescapes: \" and \\ only, any other backslash is part of the value
  const stray = parseXfcc('URI="a\\b,c";DNS="x\\\\y\\"z";By="\\;"')?.[0]
  t.same(stray?.uri, ['a\\b,c'], 'a backslash before another character is kept')
  t.same(stray?.dns, ['x\\y"z'], 'an escaped backslash and an escaped quote')
  t.same(stray?.by, ['\\;'])
  const envoy = xfccEvidence('Subject="CN=a\\,b\\\\,O=\\CE\\A9"') as CertEvidence
  t.equal(envoy.cn, 'a,b\\', 'an escaped comma and an escaped backslash')
  t.equal(envoy.subject, 'O=Ω, CN=a\\,b\\\\', 'the subject in DER order, as over mTLS')
  t.equal(envoy.subjectRfc4514, 'CN=a\\,b\\\\,O=Ω', 'and in RFC 4514 order, as Envoy wrote it')
  t.same(els?.[1]?.dns, ['a', 'b'])
  // Node joins repeated headers with ", "
  t.equal(parseXfcc('URI=spiffe://a/b, URI=spiffe://c/d')?.length, 2)
  // OWS around a separator is spaces and tabs; the U+00A0 a header's byte 0xA0 reads as is part of the value
  const nbsp = parseXfcc('URI=\u00a0spiffe://a/b\u00a0 ;DNS=\t a \t; \u00a0By=x')?.[0]
  t.same(nbsp?.uri, ['\u00a0spiffe://a/b\u00a0'], 'U+00A0 is kept at either end')
  t.same(nbsp?.dns, ['a'], 'spaces and tabs are not')
  t.same(nbsp?.by, [], 'a key with U+00A0 in front is no By')

  for (const bad of ['Subject="unterminated', 'justtext', 'URI=a"b', 'Subject="x"junk', '=value']) {
    t.equal(parseXfcc(bad), undefined, `malformed: ${bad}`)
    t.equal((xfccEvidence(bad) as Failure).reason, 'malformed')
  }
  t.equal((xfccEvidence('By=spiffe://a/b') as Failure).reason, 'malformed', 'By alone says nothing')
  t.equal((xfccEvidence('Hash=zz') as Failure).reason, 'malformed', 'a Hash that is not sha256 hex')
  t.equal((xfccEvidence('URI=spiffe://a/b;URI=spiffe://c/d') as Failure).reason, 'spiffe_invalid')
  t.equal((xfccEvidence('URI=spiffe://A/b') as Failure).reason, 'spiffe_invalid')
})

t.test('XFCC parsing is bounded', async (t) => {
  const many = Array.from({ length: MAX_XFCC_ELEMENTS + 1 }, (_, i) => `URI=spiffe://td/${i}`).join(',')
  t.equal(parseXfcc(many), undefined, 'too many elements')
  const pairs = Array.from({ length: 100 }, () => 'DNS=a').join(';')
  t.equal(parseXfcc(pairs), undefined, 'too many pairs in one element')
  const info = {
    method: 'GET',
    path: '/',
    url: '/',
    headers: { 'x-forwarded-client-cert': 'URI=x'.repeat(20_000) },
  }
  const conn: ConnectionInfo = { remoteAddress: '127.0.0.1', remotePort: 0, tls: false }
  t.equal(((await trustedFor.xfcc.extract(info, conn)) as Failure).reason, 'malformed', 'oversized header')
})

t.test('headers sent upstream', async (t) => {
  const incoming = (): IncomingHttpHeaders => ({
    'x-forwarded-client-cert': ISTIO,
    'client-cert': ':AAAA:',
    'client-cert-chain': ':AAAA:',
    'x-amzn-mtls-clientcert': 'x',
    'x-amzn-mtls-clientcert-issuer': 'CN=x',
    'x-ssl-client-cert': 'x',
    'ssl-client-cert': 'x',
    accept: 'text/plain',
  })
  const ev = xfccEvidence(ISTIO) as CertEvidence

  const sanitized = incoming()
  sanitizeForwardedCertHeaders(sanitized, 'xfcc', 'sanitize', ev)
  t.same(sanitized, { accept: 'text/plain' })

  const set = incoming()
  sanitizeForwardedCertHeaders(set, undefined, 'sanitize_set', ev)
  t.same(Object.keys(set).sort(), ['accept', 'x-forwarded-client-cert'])
  const back = xfccEvidence(set['x-forwarded-client-cert'] as string) as CertEvidence
  t.equal(back.sha256, ev.sha256)
  t.equal(back.spiffeId, ev.spiffeId, 'the clean XFCC round-trips')

  const noEvidence = incoming()
  sanitizeForwardedCertHeaders(noEvidence, undefined, 'sanitize_set')
  t.same(noEvidence, { accept: 'text/plain' })

  // forward: only the trusted proxy's own format goes on
  const own: Record<ForwardedCertFormat, string[]> = {
    xfcc: ['x-forwarded-client-cert'],
    rfc9440: ['client-cert', 'client-cert-chain'],
    alb: ['x-amzn-mtls-clientcert', 'x-amzn-mtls-clientcert-issuer'],
    nginx: ['x-ssl-client-cert'],
  }
  for (const format of FORWARDED_CERT_FORMATS) {
    const forwardTrusted = incoming()
    sanitizeForwardedCertHeaders(forwardTrusted, format, 'forward')
    t.same(Object.keys(forwardTrusted).sort(), ['accept', ...own[format]].sort(), `forward, ${format}`)
  }
  const forwardUntrusted = incoming()
  sanitizeForwardedCertHeaders(forwardUntrusted, undefined, 'forward')
  t.same(forwardUntrusted, { accept: 'text/plain' })

  const quoted = formatXfcc({
    source: 'mtls',
    verified: true,
    subject: 'CN=a "b", O=c',
    uriSans: ['spiffe://td/x'],
    dnsSans: [],
  })
  // the certificate's RDNs (CN, then O) in RFC 4514 order, as Envoy writes them
  t.equal(quoted, 'Subject="O=c,CN=a \\"b\\"";URI=spiffe://td/x')
  t.equal(
    parseXfcc(quoted)?.[0]?.subject,
    'O=c,CN=a \\"b\\"',
    'as Envoy quotes Subject: the DN escape of a quote',
  )
  t.equal((xfccEvidence(quoted) as CertEvidence).cn, 'a "b"', "the CN read back is the certificate's")
  t.ok(FORWARDED_CERT_HEADERS.includes('x-forwarded-client-cert'))
})
