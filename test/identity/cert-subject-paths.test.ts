// One certificate, one subject: whether a client certificate is presented over mTLS or forwarded by a trusted
// front proxy (Envoy's XFCC Subject, RFC 9440 Client-Cert, ALB, nginx), its `cert_subject` is the same text
// (DER order, as Node prints a certificate's subject) and a `match.cert.subject` pattern written in either
// notation (DER order, or RFC 4514 as Envoy writes Subject) names it on every path, in the live proxy, in
// `nhi-proxy test` cases and in `explain`. XFCC's Subject used to be kept in Envoy's order, so the same client
// got another cert_subject, and another policy answer, behind a mesh. The certificate has several RDNs (two
// CNs, one in a multi-valued RDN), a value with an escaped comma and a non-ASCII value, which Envoy writes as
// hex pairs; openssl prints the subject exactly as Envoy does (X509_NAME_print_ex with XN_FLAG_RFC2253).
import { execFile } from 'node:child_process'
import { X509Certificate } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { stringify } from 'yaml'
import { eventually } from '../helpers/eventually.ts'
import { type Answer, exchange } from '../helpers/http.ts'
import { createCA, createServerPki, issueCert, type KeyPair, mtlsListen } from '../helpers/pki.ts'
import { scratchDirSync } from '../helpers/scratch.ts'
import { runCli, startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const run = promisify(execFile)
const { ca: serverCa, server: serverCert } = await createServerPki()
const clientCa = await createCA('client-ca-subject-paths')
const DNS = 'orders.acme.example'
const leaf = await issueCert(clientCa, {
  subject: '/C=DE/O=Acme, Inc./OU=Ωmega/CN=orders/CN=orders-worker+UID=42',
  dnsSans: [DNS],
})
// an attacker's own certificate from the same CA: values that hold ",", "=" and "+" (escaped when printed),
// which must never be read as RDNs of their own
const forged = await issueCert(clientCa, { subject: '/O=evil, CN=admin\\+UID=x=y/CN=mallory' })

interface Described {
  pair: KeyPair
  x509: X509Certificate
  /** Node's printing, one line: what the mTLS path has always called the subject */
  der: string
  /** Envoy's XFCC Subject text, byte for byte */
  envoy: string
  sha256: string
}
async function describe(pair: KeyPair): Promise<Described> {
  const x509 = new X509Certificate(pair.certPem)
  const text = async (what: string[]) =>
    (await run('openssl', ['x509', '-in', pair.certFile, '-noout', ...what])).stdout.trim()
  const envoy = (await text(['-subject', '-nameopt', 'RFC2253'])).replace(/^subject=\s*/, '')
  const sha256 = x509.fingerprint256.replaceAll(':', '').toLowerCase()
  return { pair, x509, der: x509.subject.split('\n').join(', '), envoy, sha256 }
}
const cert = await describe(leaf)
const attacker = await describe(forged)

/** as ALB sends PEM: URL-encoded with + = / left as they are */
const albEncode = (pem: string) =>
  encodeURIComponent(pem).replace(/%2B/g, '+').replace(/%3D/g, '=').replace(/%2F/g, '/')
const isoSeconds = (d: string) => new Date(d).toISOString().replace(/\.\d{3}Z$/, 'Z')

type Format = 'xfcc' | 'rfc9440' | 'alb' | 'nginx'
const FORMATS: { format: Format; peer: string; headers: (c: Described) => Record<string, string> }[] = [
  {
    format: 'xfcc',
    peer: '127.0.0.2',
    headers: (c) => ({
      'x-forwarded-client-cert': `By=spiffe://cluster.local/ns/edge/sa/envoy;Hash=${c.sha256};Subject="${c.envoy}"${c === cert ? `;DNS=${DNS}` : ''}`,
    }),
  },
  {
    format: 'rfc9440',
    peer: '127.0.0.3',
    headers: (c) => ({ 'client-cert': `:${c.x509.raw.toString('base64')}:` }),
  },
  {
    format: 'alb',
    peer: '127.0.0.4',
    headers: (c) => ({
      'x-amzn-mtls-clientcert-leaf': albEncode(c.pair.certPem),
      'x-amzn-mtls-clientcert-subject': c.envoy,
      'x-amzn-mtls-clientcert-serial-number': c.x509.serialNumber,
      'x-amzn-mtls-clientcert-validity': `NotBefore=${isoSeconds(c.x509.validFrom)};NotAfter=${isoSeconds(c.x509.validTo)}`,
    }),
  },
  {
    format: 'nginx',
    peer: '127.0.0.5',
    headers: (c) => ({ 'x-ssl-client-cert': encodeURIComponent(c.pair.certPem) }),
  },
]
const PATHS = ['mtls', ...FORMATS.map((f) => f.format)] as const
type Path = (typeof PATHS)[number]

/** patterns that would name the forged certificate "admin" only if its escaped separators split its values */
const ADMIN_PATTERNS = ['CN=admin', 'CN=admin*', '*, CN=admin', '*,CN=admin', 'UID=x=y*', '* + UID=x=y']

const config = (audit: string) => ({
  listen: mtlsListen(serverCert, clientCa),
  forwardedClientCert: {
    trustedProxies: FORMATS.map(({ peer, format }) => ({ cidr: `${peer}/32`, format })),
  },
  audit: { output: audit, sample: 1 },
  identities: [
    {
      name: 'der:{who}',
      rule: 'der-notation',
      match: {
        header: { 'x-notation': 'der' },
        cert: { subject: 'C=DE, O=Acme\\, Inc., OU=Ωmega, CN={who}, UID=42 + CN=orders-worker' },
      },
    },
    {
      name: 'rfc4514:{who}',
      rule: 'rfc4514-notation',
      match: {
        header: { 'x-notation': 'rfc4514' },
        cert: { subject: 'CN=orders-worker+UID=42,CN={who},OU=Ωmega,O=Acme\\, Inc.,C=DE' },
      },
    },
    ...ADMIN_PATTERNS.map((subject, i) => ({
      name: 'admin',
      rule: `admin-${i}`,
      match: { cert: { subject } },
    })),
  ],
})

const NOTATIONS = ['none', 'der', 'rfc4514'] as const
const EXPECTED: Record<(typeof NOTATIONS)[number], string> = {
  none: 'orders',
  der: 'der:orders',
  rfc4514: 'rfc4514:orders',
}

t.test('the same certificate has the same subject and rule answers on every path', async (t) => {
  t.equal(
    cert.envoy,
    'CN=orders-worker+UID=42,CN=orders,OU=\\CE\\A9mega,O=Acme\\, Inc.,C=DE',
    "Envoy's Subject: every attribute reversed, non-ASCII bytes as hex pairs",
  )
  t.equal(cert.der, 'C=DE, O=Acme\\, Inc., OU=Ωmega, CN=orders, UID=42 + CN=orders-worker', 'Node: DER order')
  t.equal(attacker.der, 'O=evil\\, CN=admin\\+UID=x=y, CN=mallory')
  t.equal(attacker.envoy, 'CN=mallory,O=evil\\, CN=admin\\+UID=x=y')

  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const dir = scratchDirSync('cert-subject-paths')
  const auditFile = join(dir, 'audit.log')
  const sidecar = await startTestSidecar(t, { upstream: upstream.url, ...config(auditFile) })

  const send = (path: Path, c: Described, headers: Record<string, string>): Promise<Answer> => {
    if (path === 'mtls') {
      return exchange({
        https: true,
        host: '127.0.0.1',
        port: sidecar.httpsAddress!.port,
        path: '/echo',
        servername: 'localhost',
        ca: serverCa.certPem,
        cert: c.pair.certPem,
        key: c.pair.keyPem,
        headers,
      })
    }
    const f = FORMATS.find((x) => x.format === path)!
    return exchange({
      host: sidecar.proxyAddress.address,
      port: sidecar.proxyAddress.port,
      localAddress: f.peer,
      path: '/echo',
      headers: { ...f.headers(c), ...headers },
    })
  }

  const ids: string[] = []
  for (const path of PATHS) {
    for (const notation of NOTATIONS) {
      const id = `${path}-${notation}`
      ids.push(id)
      const res = await send(path, cert, {
        'x-request-id': id,
        ...(notation === 'none' ? {} : { 'x-notation': notation }),
      })
      t.equal(res.status, 200, `${id}: forwarded`)
    }
    const id = `${path}-forged`
    ids.push(id)
    t.equal((await send(path, attacker, { 'x-request-id': id })).status, 200, `${id}: forwarded`)
  }

  const lines = await eventually(
    () => {
      const byId = new Map<string, Record<string, unknown>>()
      for (const line of readFileSync(auditFile, 'utf8').split('\n')) {
        if (!line.startsWith('{')) continue
        const record = JSON.parse(line) as Record<string, unknown>
        byId.set(String(record['request_id']), record)
      }
      return ids.every((id) => byId.has(id)) ? byId : undefined
    },
    { what: 'an audit line for every request' },
  )
  for (const path of PATHS) {
    const source = path === 'mtls' ? 'mtls' : 'xfcc'
    for (const notation of NOTATIONS) {
      const line = lines.get(`${path}-${notation}`)!
      t.match(
        line,
        { identity: EXPECTED[notation], source, verified: true },
        `${path}, rule in ${notation} notation: ${EXPECTED[notation]}`,
      )
      t.equal(
        line['cert_subject'],
        cert.der,
        `${path}, ${notation}: cert_subject is the certificate's, DER order`,
      )
    }
    const line = lines.get(`${path}-forged`)!
    t.match(line, { identity: 'mallory', source, verified: true }, `${path}: the forged subject is mallory's`)
    t.equal(line['cert_subject'], attacker.der, `${path}: escaped separators stay inside their values`)
  }

  await t.test('nhi-proxy test cases give the live answers', async (t) => {
    const cases = PATHS.flatMap((path) => {
      const f = FORMATS.find((x) => x.format === path)
      const subject = (c: Described) => (path === 'xfcc' ? c.envoy : c.der)
      const certOf = (c: Described) => ({
        subject: subject(c),
        sha256: c.sha256,
        ...(f ? { forwarded: true, format: f.format } : {}),
      })
      const remoteAddr = f?.peer ?? '127.0.0.1'
      return [
        ...NOTATIONS.map((notation) => ({
          name: `${path}, ${notation}`,
          request: {
            remoteAddr,
            headers: notation === 'none' ? {} : { 'x-notation': notation },
            cert: certOf(cert),
          },
          expect: { identity: EXPECTED[notation] },
        })),
        {
          name: `${path}, forged`,
          request: { remoteAddr, cert: certOf(attacker) },
          expect: { identity: 'mallory' },
        },
      ]
    })
    const file = join(dir, 'subject.test.yaml')
    writeFileSync(file, stringify({ config: sidecar.configPath, tests: cases }))
    const r = await runCli(['test', file])
    for (const [i, c] of cases.entries())
      t.match(r.stdout, new RegExp(`^ok ${i + 1} - ${c.name}$`, 'm'), `case ${c.name}`)
    t.equal(r.code, 0, r.stdout)
  })

  await t.test('explain gives the same identity and cert_subject for mTLS and XFCC', async (t) => {
    const explain = async (args: string[]) => {
      const r = await runCli([
        'explain',
        '-c',
        sidecar.configPath,
        '-H',
        'x-notation: rfc4514',
        '--json',
        ...args,
      ])
      t.equal(r.code, 0, r.stderr)
      return JSON.parse(r.stdout).identity as { name: string; attributes: Record<string, string> }
    }
    const xfcc = FORMATS[0]!
    const [mtls, forwarded] = await Promise.all([
      explain(['--cert', leaf.certFile]),
      explain([
        '--remote-addr',
        xfcc.peer,
        '-H',
        `x-forwarded-client-cert: ${xfcc.headers(cert)['x-forwarded-client-cert']}`,
      ]),
    ])
    t.equal(mtls.name, 'rfc4514:orders', 'mTLS: a rule in RFC 4514 notation')
    t.equal(forwarded.name, mtls.name, 'XFCC: the same rule')
    t.equal(mtls.attributes['cert_subject'], cert.der)
    t.equal(forwarded.attributes['cert_subject'], cert.der)
  })
})
