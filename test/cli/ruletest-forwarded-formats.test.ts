// A rule test case with a forwarded certificate stands for the header of one format (`cert.format`, else the
// one format the peer is trusted for, else XFCC) from its remoteAddr. The same certificate sent by the front
// proxy of each format through the built sidecar, and written as a case of that format, must get the same
// identity: an XFCC Subject is RFC 4514 text (the RDNs reversed), the other formats carry the certificate, whose
// subject is in DER order as over mTLS. A certificate with two CNs tells the two readings apart. A case used to
// be an XFCC header whatever the peer, so a certificate forwarded by an ALB, nginx or an RFC 9440 proxy could
// not be tested at all: it was an untrusted_forwarder failure.
import { execFile } from 'node:child_process'
import { X509Certificate } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { Agent, request } from 'undici'
import { stringify } from 'yaml'
import { metricValue, scrapeUntil } from '../helpers/metrics.ts'
import { createCA, issueCert } from '../helpers/pki.ts'
import { scratchDirSync } from '../helpers/scratch.ts'
import { runCli, startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const run = promisify(execFile)
const UA = 'curl/8.5.0'
const DNS = 'orders.acme.example'

const ca = await createCA('forwarded-formats-ca')
const leaf = await issueCert(ca, { subject: '/O=acme/CN=orders/CN=orders-worker', dnsSans: [DNS] })
const x509 = new X509Certificate(leaf.certPem)
const opensslText = async (file: string, what: string[]) =>
  (await run('openssl', ['x509', '-in', file, '-noout', ...what])).stdout.trim()
/** as Envoy prints Subject and ALB its -Subject and -Issuer: RFC 4514, the RDNs reversed */
const rfc2253 = async (field: '-subject' | '-issuer', file: string) =>
  (await opensslText(file, [field, '-nameopt', 'RFC2253'])).replace(/^\w+=\s*/, '')
const subjectRfc2253 = await rfc2253('-subject', leaf.certFile)
const issuerRfc2253 = await rfc2253('-issuer', leaf.certFile)
const sha256 = (await opensslText(leaf.certFile, ['-fingerprint', '-sha256']))
  .replace(/^.*=/, '')
  .replaceAll(':', '')
  .toLowerCase()
/** the subject as the audit trail shows a certificate's (Node's printing, DER order) */
const subjectDer = x509.subject.split('\n').filter(Boolean).join(', ')
/** what the live proxy names this certificate on every path: its first CN in DER order */
const NAME = 'orders'

/** as ALB sends PEM: URL-encoded with + = / left as they are */
const albEncode = (pem: string) =>
  encodeURIComponent(pem).replace(/%2B/g, '+').replace(/%3D/g, '=').replace(/%2F/g, '/')
const isoSeconds = (d: string) => new Date(d).toISOString().replace(/\.\d{3}Z$/, 'Z')

type Format = 'xfcc' | 'rfc9440' | 'alb' | 'nginx'
/** each format's front proxy, its address, the headers it sets for the certificate, and the case's subject */
const FORMATS: { format: Format; peer: string; headers: Record<string, string>; subject: string }[] = [
  {
    format: 'xfcc',
    peer: '127.0.0.2',
    headers: {
      'x-forwarded-client-cert': `By=spiffe://cluster.local/ns/edge/sa/envoy;Hash=${sha256};Subject="${subjectRfc2253}";DNS=${DNS}`,
    },
    subject: subjectRfc2253,
  },
  {
    format: 'rfc9440',
    peer: '127.0.0.3',
    headers: { 'client-cert': `:${x509.raw.toString('base64')}:` },
    subject: subjectDer,
  },
  {
    format: 'alb',
    peer: '127.0.0.4',
    headers: {
      'x-amzn-mtls-clientcert-leaf': albEncode(leaf.certPem),
      'x-amzn-mtls-clientcert-subject': subjectRfc2253,
      'x-amzn-mtls-clientcert-issuer': issuerRfc2253,
      'x-amzn-mtls-clientcert-serial-number': x509.serialNumber,
      'x-amzn-mtls-clientcert-validity': `NotBefore=${isoSeconds(x509.validFrom)};NotAfter=${isoSeconds(x509.validTo)}`,
    },
    subject: subjectDer,
  },
  {
    format: 'nginx',
    peer: '127.0.0.5',
    headers: { 'x-ssl-client-cert': encodeURIComponent(leaf.certPem) },
    // slash form is in DER order too
    subject: '/O=acme/CN=orders/CN=orders-worker',
  },
]
const UNTRUSTED = '127.0.0.1'
/** the peer trusted for the format after this one: its header from there is another format than its own */
const otherPeer = (i: number) => FORMATS[(i + 1) % FORMATS.length]!

interface Seen {
  identity: string
  source: string
  verified: boolean
}

t.test('a forwarded case of each format gets the identity the live proxy gives that header', async (t) => {
  t.equal(subjectRfc2253, 'CN=orders-worker,CN=orders,O=acme', 'openssl prints the RDNs reversed')
  t.equal(subjectDer, 'O=acme, CN=orders, CN=orders-worker', 'Node prints them in DER order')
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const sidecar = await startTestSidecar(t, {
    upstream: upstream.url,
    forwardedClientCert: {
      trustedProxies: FORMATS.map(({ peer, format }) => ({ cidr: `${peer}/32`, format })),
    },
  })
  const agents = new Map<string, Agent>()
  const from = (address: string) => {
    let a = agents.get(address)
    if (!a) {
      a = new Agent({ localAddress: address })
      agents.set(address, a)
      t.teardown(() => a!.close())
    }
    return a
  }
  const live = async (peer: string, headers: Record<string, string>): Promise<Seen> => {
    const res = await request(`${sidecar.proxyUrl}/echo`, {
      dispatcher: from(peer),
      headers: { ...headers, 'user-agent': UA },
    })
    t.equal(res.statusCode, 200)
    const seen = JSON.parse(await res.body.text()).headers as Record<string, string>
    return {
      identity: decodeURIComponent(seen['x-nhi-identity']!),
      source: seen['x-nhi-source']!,
      verified: seen['x-nhi-verified'] === 'true',
    }
  }
  const certified: Seen = { identity: NAME, source: 'xfcc', verified: true }
  const byUserAgent: Seen = { identity: 'ua:curl', source: 'useragent', verified: false }

  // the live proxy: each format's headers from its own proxy, from an untrusted peer, and from the proxy of
  // another format
  const own: Seen[] = []
  const untrusted: Seen[] = []
  const foreign: Seen[] = []
  for (const [i, f] of FORMATS.entries()) {
    own.push(await live(f.peer, f.headers))
    untrusted.push(await live(UNTRUSTED, f.headers))
    foreign.push(await live(otherPeer(i).peer, f.headers))
  }
  t.same(
    own,
    [certified, certified, certified, certified],
    'live: every format names the first CN in DER order',
  )
  t.same(
    untrusted,
    FORMATS.map(() => byUserAgent),
    'live: from an untrusted peer, no format is believed',
  )
  t.same(
    foreign,
    FORMATS.map(() => byUserAgent),
    'live: from the proxy of another format, neither is',
  )
  const failures = await scrapeUntil(
    sidecar.adminUrl,
    (s) =>
      metricValue(s, 'nhi_auth_failures_total', { source: 'xfcc', reason: 'untrusted_forwarder' }) >=
      2 * FORMATS.length,
    'an untrusted_forwarder failure for each untrusted peer and foreign format',
  )
  t.equal(
    metricValue(failures, 'nhi_auth_failures_total', { source: 'xfcc', reason: 'untrusted_forwarder' }),
    2 * FORMATS.length,
  )

  const dir = scratchDirSync('ruletest-forwarded-formats')
  const cert = (f: (typeof FORMATS)[number], format?: Format) => ({
    subject: f.subject,
    dns: [DNS],
    sha256,
    forwarded: true,
    ...(format ? { format } : {}),
  })
  const testFile = (name: string, tests: unknown[]) => {
    const file = join(dir, name)
    writeFileSync(file, stringify({ config: sidecar.configPath, tests }))
    return file
  }

  await t.test('a case without format is the header of the one format its peer is trusted for', async (t) => {
    const file = testFile(
      'default-format.test.yaml',
      FORMATS.map((f, i) => ({
        name: `${f.format} proxy, as live`,
        request: { remoteAddr: f.peer, userAgent: UA, cert: cert(f) },
        expect: own[i],
      })),
    )
    const r = await runCli(['test', file])
    for (const [i, f] of FORMATS.entries())
      t.match(r.stdout, new RegExp(`^ok ${i + 1} - ${f.format} proxy, as live$`, 'm'), `${f.format}: as live`)
    t.equal(r.code, 0, r.stdout)
  })

  await t.test('a case of each format from each peer gets the live answer', async (t) => {
    const tests: unknown[] = []
    for (const [i, f] of FORMATS.entries()) {
      tests.push(
        {
          name: `${f.format} from its proxy, as live`,
          request: { remoteAddr: f.peer, userAgent: UA, cert: cert(f, f.format) },
          expect: own[i],
        },
        {
          name: `${f.format} from an untrusted peer, as live`,
          request: { remoteAddr: UNTRUSTED, userAgent: UA, cert: cert(f, f.format) },
          expect: untrusted[i],
        },
        {
          name: `${f.format} from the ${otherPeer(i).format} proxy, as live`,
          request: { remoteAddr: otherPeer(i).peer, userAgent: UA, cert: cert(f, f.format) },
          expect: foreign[i],
        },
      )
    }
    // and what is shown when a case expects a certificate the live proxy would not believe
    tests.push(
      {
        name: 'nginx from the alb proxy, expecting the certificate',
        request: { remoteAddr: '127.0.0.4', userAgent: UA, cert: cert(FORMATS[3]!, 'nginx') },
        expect: certified,
      },
      {
        name: 'rfc9440 from an untrusted peer, expecting the certificate',
        request: { userAgent: UA, cert: cert(FORMATS[1]!, 'rfc9440') },
        expect: certified,
      },
    )
    const file = testFile('formats.test.yaml', tests)
    const r = await runCli(['test', file])
    let n = 0
    for (const f of FORMATS) {
      for (const from of ['its proxy', 'an untrusted peer'])
        t.match(r.stdout, new RegExp(`^ok ${++n} - ${f.format} from ${from}, as live$`, 'm'))
      t.match(r.stdout, new RegExp(`^ok ${++n} - ${f.format} from the \\w+ proxy, as live$`, 'm'))
    }
    t.match(
      r.stdout,
      /^not ok 13 - nginx from the alb proxy, expecting the certificate\n {2}---\n {2}identity: expected "orders", got "ua:curl"\n/m,
    )
    t.match(
      r.stdout,
      /^ {2}not verified: xfcc untrusted_forwarder: forwarded client certificate header other than the alb format this proxy is trusted for \(peer 127\.0\.0\.4\)$/m,
      'the live failure of a header of another format, with the peer',
    )
    t.match(r.stdout, /^not ok 14 - rfc9440 from an untrusted peer, expecting the certificate$/m)
    t.match(
      r.stdout,
      /^ {2}not verified: xfcc untrusted_forwarder: forwarded client certificate header from a peer not in trustedProxies \(peer 127\.0\.0\.1\)$/m,
      'the live failure of an untrusted peer, with the peer',
    )
    t.match(r.stdout, /^# 14 tests, 12 passed, 2 failed$/m)
    t.equal(r.code, 1)
  })

  await t.test('read as another format, the two-CN subject names another CN', async (t) => {
    // the differential's control: reading each subject the other way would not agree with the live proxy
    const file = testFile('swapped.test.yaml', [
      {
        name: 'an XFCC Subject given to an nginx case',
        request: { remoteAddr: '127.0.0.5', cert: { ...cert(FORMATS[0]!, 'nginx') } },
        expect: { identity: NAME },
      },
      {
        name: 'a certificate subject given to an XFCC case',
        request: { remoteAddr: '127.0.0.2', cert: { ...cert(FORMATS[1]!, 'xfcc') } },
        expect: { identity: NAME },
      },
    ])
    const r = await runCli(['test', file])
    t.match(r.stdout, /^ {2}identity: expected "orders", got "orders-worker"$/m)
    t.match(r.stdout, /^# 2 tests, 0 passed, 2 failed$/m)
  })

  await t.test('format without forwarded is a test file error', async (t) => {
    const file = testFile('format-not-forwarded.test.yaml', [
      { name: 'mtls with a format', request: { cert: { subject: 'CN=x', format: 'nginx' } }, expect: {} },
    ])
    const r = await runCli(['test', file])
    t.equal(r.code, 1)
    t.match(r.stdout, /format is the header a forwarded certificate arrives in: set forwarded: true/)
  })
})
