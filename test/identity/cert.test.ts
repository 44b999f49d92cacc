import { X509Certificate } from 'node:crypto'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { connect, createServer, type TLSSocket } from 'node:tls'
import t from 'tap'
import { defaultConfig } from '../../src/config/schema.ts'
import {
  certEvidenceFromPem,
  certificateNames,
  commonName,
  derSubject,
  firstPemCertificate,
  loadCertificateDecoder,
  parsePeerCertificate,
  rfc4514Subject,
} from '../../src/identity/certificate.ts'
import { mtlsSource } from '../../src/identity/sources/mtls.ts'
import type { CertEvidence, Failure } from '../../src/types.ts'
import { sha256Hex } from '../../src/util/fingerprint.ts'
import {
  createCA,
  createServerPki,
  generateKey,
  issueCert,
  issueIntermediateCA,
  type KeyPair,
  makeCertificate,
} from '../helpers/pki.ts'
import { scratchDir } from '../helpers/scratch.ts'

// the X.509 name decoder is loaded on demand (as the sidecar does before it reads a certificate)
await loadCertificateDecoder()

type Result = CertEvidence | Failure | undefined

const { ca: serverCa, server } = await createServerPki()
const clientCa = await createCA('client-ca')
const otherCa = await createCA('rogue-ca')
const clientAnchors = [new X509Certificate(clientCa.certPem)]

const results: Result[] = []
const tlsServer = createServer({
  key: server.keyPem,
  cert: server.certPem,
  ca: [clientCa.certPem],
  requestCert: true,
  rejectUnauthorized: false,
})
tlsServer.on('secureConnection', (socket: TLSSocket) => {
  results.push(parsePeerCertificate(socket, clientAnchors))
  socket.end('done')
})
tlsServer.on('tlsClientError', () => {})
tlsServer.listen(0, '127.0.0.1')
await once(tlsServer, 'listening')
const port = (tlsServer.address() as AddressInfo).port
t.teardown(() => new Promise<void>((r) => tlsServer.close(() => r())))

/** Real TLS handshake with an optional client certificate; returns what the server parsed. */
async function handshake(client?: KeyPair): Promise<Result> {
  const before = results.length
  const socket = connect({
    host: '127.0.0.1',
    port,
    servername: 'localhost',
    ca: [serverCa.certPem],
    ...(client ? { cert: client.certPem, key: client.keyPem } : {}),
  })
  socket.resume()
  await once(socket, 'end')
  socket.destroy()
  if (results.length !== before + 1) throw new Error('server did not record the handshake')
  return results[before]
}

function derSha256(pem: string): string {
  return sha256Hex(firstPemCertificate(pem)!)
}

t.test('a verified SPIFFE X.509-SVID becomes mtls evidence', async (t) => {
  const leaf = await issueCert(clientCa, {
    cn: 'payments-api',
    uriSans: ['spiffe://cluster.local/ns/payments/sa/api'],
    dnsSans: ['api.payments.svc', 'api'],
    days: 7,
  })
  const r = await handshake(leaf)
  t.notOk(r && 'failed' in r, 'not a failure')
  const ev = r as CertEvidence
  t.equal(ev.source, 'mtls')
  t.equal(ev.verified, true)
  t.equal(ev.spiffeId, 'spiffe://cluster.local/ns/payments/sa/api')
  t.equal(ev.cn, 'payments-api')
  t.match(ev.subject, /CN=payments-api/)
  t.same(ev.uriSans, ['spiffe://cluster.local/ns/payments/sa/api'])
  t.same(ev.dnsSans, ['api.payments.svc', 'api'])
  t.equal(ev.sha256, derSha256(leaf.certPem))
  const inSevenDays = Date.now() / 1000 + 7 * 86400
  t.ok(ev.notAfter && Math.abs(ev.notAfter - inSevenDays) < 3600, 'notAfter ≈ 7 days from now')
  t.equal(ev.via, undefined)

  const fromExtractor = await mtlsSource
    .create(defaultConfig(), {})!
    .extract(
      { method: 'GET', path: '/', url: '/', headers: {} },
      { remoteAddress: '127.0.0.1', remotePort: 1, tls: true, peerCert: ev },
    )
  t.equal(fromExtractor, ev, 'the mtls extractor returns the per-connection result')
})

t.test('a cert with two URI SANs, one of them SPIFFE, is not an SVID', async (t) => {
  const leaf = await issueCert(clientCa, {
    cn: 'two-uris',
    uriSans: ['spiffe://cluster.local/ns/a/sa/b', 'https://example.com/workload'],
  })
  const r = (await handshake(leaf)) as Failure
  t.equal(r.failed, true)
  t.equal(r.reason, 'spiffe_invalid')
  t.equal(r.source, 'mtls')
  t.match(r.detail, /exactly one URI SAN/)
  t.equal(r.fingerprint, derSha256(leaf.certPem).slice(0, 16))
})

t.test('an invalid SPIFFE ID in the URI SAN fails', async (t) => {
  const leaf = await issueCert(clientCa, { cn: 'bad-spiffe', uriSans: ['spiffe://Cluster.Local/ns//sa/x'] })
  const r = (await handshake(leaf)) as Failure
  t.equal(r.reason, 'spiffe_invalid')
  t.match(r.detail, /invalid SPIFFE ID/)
})

t.test('a SPIFFE ID on a certificate that can issue others is no X.509-SVID', async (t) => {
  // OpenSSL takes such a leaf for a TLS client; the X.509-SVID standard (§4.1, §4.3) does not
  const dir = await scratchDir('svid-ca')
  const issuer = {
    certFile: clientCa.certFile,
    key: { type: 'ec' as const, keyFile: clientCa.keyFile, pubFile: '', keyPem: clientCa.keyPem },
  }
  const key = await generateKey(dir, 'svid', 'ec')
  const svid = (name: string, extensions: string[]) =>
    makeCertificate(dir, name, {
      subject: `/CN=${name}`,
      key,
      issuer,
      extensions: [
        ...extensions,
        'extendedKeyUsage=clientAuth',
        'subjectAltName=URI:spiffe://cluster.local/ns/a/sa/b',
      ],
      serial: 7000 + name.length,
    })
  const cases = [
    ['a CA', ['basicConstraints=critical,CA:TRUE', 'keyUsage=critical,digitalSignature']],
    [
      'no CA that signs certificates',
      ['basicConstraints=CA:FALSE', 'keyUsage=critical,digitalSignature,keyCertSign'],
    ],
    ['no CA that signs CRLs', ['basicConstraints=CA:FALSE', 'keyUsage=critical,digitalSignature,cRLSign']],
  ] as const
  for (const [what, extensions] of cases) {
    const cert = await svid(what.replaceAll(' ', '-'), [...extensions])
    const r = (await handshake({ ...cert, keyPem: key.keyPem, keyFile: key.keyFile })) as Failure
    t.equal(r.reason, 'spiffe_invalid', `${what}: spiffe_invalid`)
    t.match(r.detail, /must not be a CA/, what)
  }
  const workload = await svid('workload', ['basicConstraints=CA:FALSE', 'keyUsage=critical,digitalSignature'])
  const ev = (await handshake({ ...workload, keyPem: key.keyPem, keyFile: key.keyFile })) as CertEvidence
  t.equal(ev.spiffeId, 'spiffe://cluster.local/ns/a/sa/b', 'the same with only digitalSignature is an SVID')
})

t.test('several non-SPIFFE URI SANs are fine and give no SPIFFE ID', async (t) => {
  const leaf = await issueCert(clientCa, { cn: 'web', uriSans: ['https://a.example/x', 'urn:example:web'] })
  const ev = (await handshake(leaf)) as CertEvidence
  t.equal(ev.source, 'mtls')
  t.equal(ev.spiffeId, undefined)
  t.same(ev.uriSans, ['https://a.example/x', 'urn:example:web'])
})

t.test('an expired client cert fails as cert_expired', async (t) => {
  const leaf = await issueCert(clientCa, { cn: 'old', days: -1 })
  const r = (await handshake(leaf)) as Failure
  t.equal(r.failed, true)
  t.equal(r.reason, 'cert_expired')
  t.equal(r.detail, 'CERT_HAS_EXPIRED')
  t.equal(r.attributes?.['cert_sha256'], derSha256(leaf.certPem))
})

t.test('a cert from an unknown CA fails as cert_untrusted', async (t) => {
  const leaf = await issueCert(otherCa, { cn: 'intruder', uriSans: ['spiffe://cluster.local/ns/a/sa/b'] })
  const r = (await handshake(leaf)) as Failure
  t.equal(r.failed, true)
  t.equal(r.reason, 'cert_untrusted')
  t.equal(r.source, 'mtls')
  t.match(r.attributes?.['subject'], /CN=intruder/)
})

// Node sets a server socket's `authorized` once, on the first handshake, and only ever to true: after a
// renegotiation with a certificate that did not verify it still says true, next to that handshake's
// authorizationError. The error is what tells such a certificate apart.
t.test(
  'a socket whose last handshake left a verify error is untrusted, whatever `authorized` says',
  async (t) => {
    const leaf = await issueCert(otherCa, {
      cn: 'swapped',
      uriSans: ['spiffe://cluster.local/ns/a/sa/admin'],
    })
    const x = new X509Certificate(leaf.certPem)
    const socket = {
      authorized: true,
      authorizationError: 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
      getPeerX509Certificate: () => x,
    } as unknown as TLSSocket
    const r = parsePeerCertificate(socket, clientAnchors) as Failure
    t.equal(r.failed, true, 'a failure, not verified evidence')
    t.equal(r.reason, 'cert_untrusted')
    t.equal(r.detail, 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY')
  },
)

// The usual workload PKI: a root as the client CA, an intermediate that issues the leaves, the client sending
// its leaf with the intermediate. Whether the chain reaches the client CA is decided on what the client sent.
t.test('a leaf under an intermediate: dates are told apart from trust, over the chain it sent', async (t) => {
  const intermediate = await issueIntermediateCA(clientCa, 'dated-intermediate', 'clientAuth')
  const withIntermediate = (leaf: KeyPair): KeyPair => ({
    ...leaf,
    certPem: leaf.certPem + intermediate.certPem,
  })
  const notAfter = (pem: string) => Math.floor(Date.parse(new X509Certificate(pem).validTo) / 1000)

  const valid = await issueCert(intermediate, { cn: 'chained', uriSans: ['spiffe://td/ns/a/sa/b'], days: 60 })
  const ev = (await handshake(withIntermediate(valid))) as CertEvidence
  t.equal(ev.verified, true, 'a valid chain is verified evidence')
  t.equal(ev.spiffeId, 'spiffe://td/ns/a/sa/b')
  t.equal(ev.sha256, derSha256(valid.certPem), 'of the leaf')
  t.equal(
    ev.notAfter,
    notAfter(intermediate.certPem),
    'expiring with the intermediate, which ends before the leaf',
  )

  const expired = await issueCert(intermediate, { cn: 'chained-old', days: -1 })
  const ranOut = (await handshake(withIntermediate(expired))) as Failure
  t.equal(
    ranOut.reason,
    'cert_expired',
    'an expired leaf of the client CA is cert_expired, not cert_untrusted',
  )
  t.equal(ranOut.detail, 'CERT_HAS_EXPIRED')
  t.equal(ranOut.attributes?.['cert_sha256'], derSha256(expired.certPem))

  const early = await issueCert(intermediate, {
    cn: 'chained-early',
    notBefore: new Date(Date.now() + 86_400_000),
  })
  const notYet = (await handshake(withIntermediate(early))) as Failure
  t.equal(notYet.reason, 'cert_not_yet_valid', 'a leaf valid from tomorrow is cert_not_yet_valid')
  t.equal(notYet.detail, 'CERT_NOT_YET_VALID')

  // the intermediate ran out under a leaf still within its own dates: the chain has expired
  const oldIntermediate = {
    ...(await issueCert(clientCa, { cn: 'old-intermediate', intermediate: true, days: -1 })),
    dir: clientCa.dir,
    name: 'old-intermediate',
  }
  const underOld = await issueCert(oldIntermediate, { cn: 'under-old' })
  const chainExpired = (await handshake({
    ...underOld,
    certPem: underOld.certPem + oldIntermediate.certPem,
  })) as Failure
  t.equal(chainExpired.reason, 'cert_expired', 'an expired intermediate of the client CA is cert_expired')

  // the same shapes under a root that is not the client CA say nothing about a workload's credential
  const rogueIntermediate = await issueIntermediateCA(otherCa, 'rogue-intermediate', 'clientAuth')
  const rogue = await issueCert(rogueIntermediate, { cn: 'rogue-old', days: -1 })
  const untrusted = (await handshake({
    ...rogue,
    certPem: rogue.certPem + rogueIntermediate.certPem,
  })) as Failure
  t.equal(untrusted.reason, 'cert_untrusted', 'an expired chain of another root is cert_untrusted')
})

t.test('no client certificate → undefined', async (t) => {
  t.equal(await handshake(), undefined)
})

t.test('SANs are decoded from the DER, whatever separators or quotes their values hold', async (t) => {
  // Node prints these as one comma-separated line where the first URI reads like a URI and a DNS name
  const leaf = await issueCert(clientCa, {
    cn: 'sans',
    uriSans: ['https://a.example/x, DNS:evil.example', 'urn:example:"quoted", URI:spiffe://td/evil', 'urn:c'],
    dnsSans: ['ok.example'],
    ipSans: ['10.0.0.1', '2001:db8::1', '::ffff:192.0.2.1'],
    emailSans: ['ops@example.com', 'a"b@example.com'],
  })
  const names = certificateNames(firstPemCertificate(leaf.certPem)!)
  t.same(names, {
    cn: 'sans',
    sans: {
      uri: ['https://a.example/x, DNS:evil.example', 'urn:example:"quoted", URI:spiffe://td/evil', 'urn:c'],
      dns: ['ok.example'],
      ip: ['10.0.0.1', '2001:db8::1', '::ffff:c000:201'],
      email: ['ops@example.com', 'a"b@example.com'],
    },
  })

  const ev = (await handshake(leaf)) as CertEvidence
  t.equal(ev.source, 'mtls')
  t.equal(ev.verified, true)
  t.equal(ev.spiffeId, undefined, 'a spiffe: inside another URI is no SPIFFE ID')
  t.same(ev.dnsSans, ['ok.example'], 'no DNS name made up from a URI')
  t.same(ev.uriSans, names.sans.uri)
})

t.test('an SVID with IP and email SANs next to its one URI SAN keeps its SPIFFE ID', async (t) => {
  const leaf = await issueCert(clientCa, {
    uriSans: ['spiffe://td.example/ns/a/sa/b'],
    ipSans: ['fe80::1'],
    emailSans: ['team@example.com'],
  })
  const ev = (await handshake(leaf)) as CertEvidence
  t.equal(ev.spiffeId, 'spiffe://td.example/ns/a/sa/b')
  t.same(ev.uriSans, ['spiffe://td.example/ns/a/sa/b'])
  t.same(ev.dnsSans, [])
  t.same(certificateNames(firstPemCertificate(leaf.certPem)!).sans.ip, ['fe80::1'])
})

t.test('a URI SAN that only looks like two SPIFFE IDs in the printed text is one invalid ID', async (t) => {
  const leaf = await issueCert(clientCa, { uriSans: ['spiffe://td/a, URI:spiffe://td/b'] })
  const r = (await handshake(leaf)) as Failure
  t.equal(r.reason, 'spiffe_invalid')
  t.match(r.detail, /invalid SPIFFE ID/, 'one URI SAN, rejected for what it holds, not for being two')
})

t.test(
  'a certificate whose SAN extension does not decode is refused, never read as one without SANs',
  async (t) => {
    // an OCTET STRING where GeneralNames (a SEQUENCE) belongs: Node loads the certificate and prints no SANs
    const leaf = await issueCert(clientCa, { cn: 'bad-san', extensions: ['subjectAltName=DER:04:02:41:41'] })
    const forwarded = certEvidenceFromPem(leaf.certPem, 'xfcc', true, 'nginx') as Failure
    t.equal(forwarded.failed, true)
    t.equal(forwarded.reason, 'malformed')
    t.equal(forwarded.fingerprint, derSha256(leaf.certPem).slice(0, 16))
    t.match(forwarded.attributes?.['subject'], /CN=bad-san/)
    // over mTLS the chain check already refuses an extension it cannot decode
    t.equal(((await handshake(leaf)) as Failure).reason, 'cert_untrusted')
  },
)

t.test('the CN of a certificate comes from its parsed subject, not from the printed text', async (t) => {
  const ca = await createCA('names-ca')
  for (const [subject, cn] of [
    ['/CN=a+OU=b/O=x', 'a'], // multi-valued RDN: Node prints "CN=a + OU=b"
    ['/CN=first/CN=second', 'first'],
    ['/O=x, CN=evil/CN=real', 'real'], // a CN= inside another attribute's value
    ['/O=A\\, "B"; C=D/CN=Ω,x', 'Ω,x'], // escapes undone, UTF-8 kept
    ['/O=no-cn', undefined],
  ] as const) {
    const leaf = await issueCert(ca, { subject })
    const ev = certEvidenceFromPem(leaf.certPem, 'xfcc', true, 'nginx') as CertEvidence
    t.equal(ev.cn, cn, subject)
  }
})

t.test('commonName: the one parser for distinguished-name text from headers', async (t) => {
  t.equal(commonName('/C=US/O=Acme/CN=web'), 'web', 'slash form')
  t.equal(commonName('CN=web, O=Acme'), 'web', 'comma form')
  t.equal(commonName('O=Acme,CN=a\\,b'), 'a,b', 'RFC 4514 escape')
  t.equal(commonName('O="a, CN=evil", CN=real'), 'real', 'a quoted CN= is not the CN')
  t.equal(commonName('O=x\\, CN=evil, CN=real'), 'real', 'an escaped comma does not split')
  t.equal(commonName('CN=a+OU=b, O=x'), 'a', 'multi-valued RDN')
  t.equal(commonName('CN="Ω \\"q\\""'), 'Ω "q"', 'JSON-quoted value')
  t.equal(commonName('cn=lower'), 'lower')
  t.equal(commonName('O=no-cn'), undefined)
  t.equal(commonName(''), undefined)
})

t.test('several CNs: the first in DER order, whichever order the text is in', async (t) => {
  t.equal(commonName('O=x, CN=a, CN=b'), 'a', 'Node order (DER): the first')
  t.equal(commonName('/O=x/CN=a/CN=b', 'rfc4514'), 'a', 'slash form is in DER order, always')
  t.equal(commonName('CN=b,CN=a,O=x', 'rfc4514'), 'a', 'RFC 4514 order: the last')
  t.equal(commonName('CN=b,CN=a\\, O=y,O=x', 'rfc4514'), 'a, O=y', 'an escaped comma does not split')
  t.equal(commonName('CN=c+CN=b,O=x', 'rfc4514'), 'b', 'inside a multi-valued RDN too')
  t.equal(commonName('CN=,CN=a', 'rfc4514'), 'a', 'an empty CN names nothing')
})

t.test('rfc4514Subject: Node-ordered text reversed as Envoy prints it', async (t) => {
  t.equal(rfc4514Subject('O=x, CN=a, CN=b'), 'CN=b,CN=a,O=x')
  t.equal(
    rfc4514Subject('O=x\\, y, CN=a, CN=b + OU=u'),
    'OU=u+CN=b,CN=a,O=x\\, y',
    'as openssl -nameopt RFC2253',
  )
  t.equal(rfc4514Subject('O="a, CN=b", CN=c'), 'CN=c,O="a, CN=b"', 'a quoted value stays whole')
  t.equal(rfc4514Subject('O=x, CN=a\\ '), 'CN=a\\ ,O=x', "a value's escaped trailing space stays")
  t.equal(rfc4514Subject('CN=only'), 'CN=only')
  t.equal(rfc4514Subject('/O=x/CN=a'), '/O=x/CN=a', 'slash form is left as it is')
  t.equal(rfc4514Subject('CN=a, not a DN'), 'CN=a, not a DN', 'text that is not attribute=value throughout')
})

t.test(
  'derSubject: an RFC 4514 subject (Envoy) in DER order as Node prints it, the inverse of rfc4514Subject',
  async (t) => {
    t.equal(derSubject('CN=b,CN=a,O=x'), 'O=x, CN=a, CN=b')
    t.equal(
      derSubject('OU=u+CN=b,CN=a,O=x\\, y'),
      'O=x\\, y, CN=a, CN=b + OU=u',
      'multi-valued RDNs as Node joins them',
    )
    t.equal(
      derSubject('CN=a\\+UID=x=y,O=e\\, CN=admin'),
      'O=e\\, CN=admin, CN=a\\+UID=x=y',
      'escaped separators do not split',
    )
    t.equal(derSubject('CN=a\\ ,O=x'), 'O=x, CN=a\\ ', "a value's escaped trailing space stays")
    t.equal(derSubject('CN=x\\\\,O=y'), 'O=y, CN=x\\\\', 'an escaped backslash escapes nothing after it')
    t.equal(derSubject('CN=only'), 'CN=only')
    t.equal(derSubject('/O=x/CN=a'), '/O=x/CN=a', 'slash form is DER order already')
    t.equal(derSubject('CN=a,not a DN'), 'CN=a,not a DN', 'text that is not attribute=value throughout')
    for (const node of [
      'O=x, CN=a, CN=b',
      'C=DE, O=Acme\\, Inc., OU=Ωmega, CN=o, UID=42 + CN=w',
      'O=x, CN=a\\ ',
    ])
      t.equal(derSubject(rfc4514Subject(node)), node, `round trip: ${node}`)
  },
)

t.test('PEM text that is not a certificate is malformed, never a throw', async (t) => {
  for (const text of [
    '',
    'hello',
    '-----BEGIN CERTIFICATE-----\n@@@@\n-----END CERTIFICATE-----',
    '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----',
  ]) {
    const r = certEvidenceFromPem(text, 'xfcc', true, 'nginx') as Failure
    t.equal(r.reason, 'malformed')
  }
})
