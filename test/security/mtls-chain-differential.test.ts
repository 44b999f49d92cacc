// Client-certificate acceptance, generated and checked against `openssl verify`: for chains of a root, 0–2
// intermediates and a leaf (RSA-2048, EC P-256 and Ed25519 keys mixed; dates, basicConstraints, pathlen, key
// usage, extended key usage, name constraints, SHA-1 or SHA-256 signatures drawn per certificate; the client
// sending some of its intermediates, in either order, with a stranger; a leaf of a CA that is not the client CA,
// of one with the client root's name on another key, of an intermediate that the client CA file holds without
// its root or with its root expired), the built sidecar's https listener (`clientCert: optional`) attributes
// a connection to its certificate exactly when
//   openssl verify -purpose sslclient -auth_level L -CAfile <clientCA> -untrusted <what the client sent> <leaf>
// accepts it and the leaf is a good X.509-SVID where it names a SPIFFE ID (one URI SAN, a valid ID: the SPIFFE
// rules of docs/reference.md); a chain openssl refuses is a failure whose reason is the one the reference gives
// for its class (cert_expired or cert_not_yet_valid when only its dates are wrong, else cert_untrusted), and
// `clientCert: required` refuses its handshake. `explain --cert` with the same chain gives the same answers.
//
// Where the reference and `openssl verify` with its defaults differ, on purpose:
// - `-auth_level L`: Node's TLS verifies at OpenSSL's default security level, L = 1 up to Node 22 and 2 from
//   Node 24 (TLS_SECURITY_LEVEL), where a SHA-1 signature (63 bits of security) is too weak (CA_MD_TOO_WEAK);
//   `openssl verify` alone checks no level and takes it.
// - no `-x509_strict`: Node does not set X509_V_FLAG_X509_STRICT, so a CA whose basicConstraints is not
//   critical, or a leaf marked CA:TRUE without a key usage, is taken by the listener as by plain `openssl
//   verify` (OpenSSL 3 wants CA:TRUE of an intermediate either way); the chains strict mode alone refuses are
//   counted.
// - keys too small or on other curves: chains also hold RSA keys of 1024 and 512 bits and EC keys on P-384,
//   secp256k1 and brainpoolP256r1. The listener's TLS is at Node's default level (1, 80 bits: RSA-1024
//   passes, RSA-512 is EE_KEY_TOO_SMALL or CA_KEY_TOO_SMALL; 2, 112 bits: RSA-1024 is too small too), as
//   `-auth_level L` says, and `explain` refuses what that level refuses. A leaf whose key the client's own TLS
//   stack cannot sign a TLS 1.3 CertificateVerify with (RSA-512: too short for RSA-PSS with SHA-256;
//   secp256k1: TLS 1.3 has no scheme for it; brainpoolP256r1 before OpenSSL 3.2, which added RFC 8734's
//   schemes: Node 20's OpenSSL 3.0 has ECDSA schemes for P-256, P-384 and P-521 only) is never presented: the client's OpenSSL
//   sends an empty Certificate, so the listener sees no certificate at all (no identity, no mTLS failure, and
//   `clientCert: required` refuses the handshake for want of one); `explain --cert` still judges the file as
//   `openssl verify` does. Over TLS 1.2 (checked for two written chains) the RSA-512 leaf arrives and is
//   cert_untrusted, and the listener's OpenSSL refuses the handshake of the secp256k1 one.
//
// FC_SEED=<n> draws another set of chains.
import { execFile } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t, { type Test } from 'tap'
import { runExplain } from '../../src/cli/explain.ts'
import { TLS_SECURITY_LEVEL } from '../../src/identity/certificate.ts'
import { eventually } from '../helpers/eventually.ts'
import { exchange } from '../helpers/http.ts'
import { createServerPki, generateKey, type KeyFiles, type KeyType, makeCertificate } from '../helpers/pki.ts'
import { PROPERTY_SEED } from '../helpers/property.ts'
import { rng } from '../helpers/rng.ts'
import { scratchDir } from '../helpers/scratch.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const run = promisify(execFile)
const CHAINS = 48
/** of those, the first this many are also presented to a `clientCert: required` listener */
const REQUIRED_CHAINS = 16
const DAY = 86_400_000
/** the client presents whatever it was given, SHA-1 signatures too: the listener is the one that judges them */
const CLIENT_CIPHERS = 'DEFAULT:@SECLEVEL=0'

const random = rng(PROPERTY_SEED)
const pick = <T>(weighted: readonly (readonly [T, number])[]): T => {
  const total = weighted.reduce((s, [, w]) => s + w, 0)
  let r = random() * total
  for (const [value, w] of weighted) {
    r -= w
    if (r < 0) return value
  }
  return weighted.at(-1)![0]
}
const chance = (p: number) => random() < p

type Dates = 'valid' | 'expired' | 'future'
const VALIDITY: Record<Exclude<Dates, 'valid'>, () => { notBefore: Date; notAfter: Date }> = {
  expired: () => ({ notBefore: new Date(Date.now() - 10 * DAY), notAfter: new Date(Date.now() - DAY) }),
  future: () => ({ notBefore: new Date(Date.now() + DAY), notAfter: new Date(Date.now() + 8 * DAY) }),
}

/**
 * URI SANs by what the SPIFFE rules of docs/reference.md make of them: a valid ID, an invalid one (upper-case trust
 * domain, port, empty or dot segment, trailing slash, query, a scheme in upper case), or no SPIFFE ID at all.
 */
const URIS: readonly { uri: string; spiffe: 'valid' | 'invalid' | 'none' }[] = [
  { uri: 'spiffe://example.org/ns/shop/sa/web', spiffe: 'valid' },
  { uri: 'spiffe://example.org/batch', spiffe: 'valid' },
  { uri: 'spiffe://evil.example.net/ns/shop/sa/web', spiffe: 'valid' },
  { uri: 'spiffe://Example.org/ns/shop/sa/web', spiffe: 'invalid' },
  { uri: 'spiffe://example.org:8443/web', spiffe: 'invalid' },
  { uri: 'spiffe://example.org/a//b', spiffe: 'invalid' },
  { uri: 'spiffe://example.org/a/../b', spiffe: 'invalid' },
  { uri: 'spiffe://example.org/web/', spiffe: 'invalid' },
  { uri: 'spiffe://example.org/web?x=1', spiffe: 'invalid' },
  { uri: 'SPIFFE://example.org/web', spiffe: 'invalid' },
  { uri: 'https://example.org/web', spiffe: 'none' },
]
const DNS_NAMES = ['web.example.org', 'web.evil.example.net']
/** an intermediate's nameConstraints, by the names above they permit or exclude */
const NAME_CONSTRAINTS = [
  'permitted;URI:example.org',
  'permitted;URI:.example.org',
  'excluded;URI:evil.example.net',
  'permitted;DNS:example.org',
  'excluded;DNS:evil.example.net',
]

interface CaSpec {
  basicConstraints: 'critical' | 'not-critical' | 'not-ca' | 'absent'
  pathlen?: number
  keyCertSign: boolean
  extendedKeyUsage?: string
  nameConstraints?: string
  dates: Dates
  digest: 'sha1' | 'sha256'
  key: KeyType
}
interface LeafSpec {
  basicConstraints: 'not-ca' | 'absent' | 'ca'
  keyUsage?: string
  extendedKeyUsage?: string
  uris: (typeof URIS)[number][]
  dns: string[]
  dates: Dates
  digest: 'sha1' | 'sha256'
  key: KeyType
}
type Top =
  | 'root'
  | 'file-intermediate'
  | 'other-root'
  | 'orphan-intermediate'
  | 'lapsed-intermediate'
  | 'impostor-root'
interface ChainSpec {
  top: Top
  /** from the top down */
  intermediates: CaSpec[]
  /** which of the intermediates the client sends (and whether it sends the top when that is an intermediate) */
  sends: boolean[]
  sendsTop: boolean
  /** the client sends its intermediates top first (OpenSSL and the proxy must not rely on their order) */
  reversed: boolean
  /** the client sends an unrelated CA certificate along */
  sendsStranger: boolean
  leaf: LeafSpec
}

const keyType = () =>
  pick<KeyType>([
    ['ec', 2],
    ['rsa', 1],
    ['ed25519', 1],
    ['rsa-1024', 0.3],
    ['rsa-512', 0.3],
    ['ec-p384', 0.2],
    ['ec-secp256k1', 0.2],
    ['ec-brainpoolP256r1', 0.2],
  ])
const dates = (valid = 14) =>
  pick<Dates>([
    ['valid', valid],
    ['expired', 1],
    ['future', 1],
  ])
const digest = () =>
  pick<'sha1' | 'sha256'>([
    ['sha256', 14],
    ['sha1', 1],
  ])

function drawChain(): ChainSpec {
  const top = pick<Top>([
    ['root', 8],
    ['file-intermediate', 2],
    ['other-root', 1],
    ['orphan-intermediate', 1],
    ['lapsed-intermediate', 1],
    ['impostor-root', 1],
  ])
  const intermediates = Array.from(
    {
      length: pick([
        [0, 1],
        [1, 2],
        [2, 2],
      ] as const),
    },
    (): CaSpec => {
      const ca: CaSpec = {
        basicConstraints: pick([
          ['critical', 20],
          ['not-critical', 1],
          ['not-ca', 1],
          ['absent', 1],
        ] as const),
        keyCertSign: chance(0.95),
        dates: dates(),
        digest: digest(),
        key: keyType(),
      }
      if (chance(0.1)) ca.pathlen = 0
      if (chance(0.1))
        ca.extendedKeyUsage = pick([
          ['clientAuth', 1],
          ['serverAuth', 1],
        ] as const)
      if (chance(0.2)) ca.nameConstraints = NAME_CONSTRAINTS[Math.floor(random() * NAME_CONSTRAINTS.length)]!
      return ca
    },
  )
  const uriCount = pick([
    [0, 3],
    [1, 8],
    [2, 1],
  ] as const)
  const leaf: LeafSpec = {
    basicConstraints: pick([
      ['not-ca', 12],
      ['absent', 3],
      ['ca', 1],
    ] as const),
    uris: Array.from({ length: uriCount }, () => URIS[Math.floor(random() * URIS.length)]!),
    dns: chance(0.3) ? [DNS_NAMES[Math.floor(random() * DNS_NAMES.length)]!] : [],
    // the leaf's dates more often than an issuer's: the class that is cert_expired or cert_not_yet_valid
    dates: dates(8),
    digest: digest(),
    key: keyType(),
  }
  const ku = pick([
    ['absent', 6],
    ['digitalSignature', 8],
    ['digitalSignature,keyCertSign', 1],
    ['keyEncipherment', 1],
  ] as const)
  if (ku !== 'absent') leaf.keyUsage = `critical,${ku}`
  const eku = pick([
    ['clientAuth', 12],
    ['clientAuth,serverAuth', 2],
    ['serverAuth', 1],
    ['absent', 2],
    ['anyExtendedKeyUsage', 1],
  ] as const)
  if (eku !== 'absent') leaf.extendedKeyUsage = eku
  return {
    top,
    intermediates,
    sends: intermediates.map(() => chance(0.9)),
    sendsTop: chance(0.3),
    reversed: chance(0.25),
    sendsStranger: chance(0.1),
    leaf,
  }
}

function caExtensions(ca: CaSpec): string[] {
  const pathlen = ca.pathlen !== undefined ? `,pathlen:${ca.pathlen}` : ''
  const bc = {
    critical: `basicConstraints=critical,CA:TRUE${pathlen}`,
    'not-critical': `basicConstraints=CA:TRUE${pathlen}`,
    'not-ca': 'basicConstraints=critical,CA:FALSE',
    absent: undefined,
  }[ca.basicConstraints]
  return [
    ...(bc ? [bc] : []),
    `keyUsage=critical,${ca.keyCertSign ? 'keyCertSign,cRLSign' : 'digitalSignature'}`,
    ...(ca.extendedKeyUsage ? [`extendedKeyUsage=${ca.extendedKeyUsage}`] : []),
    ...(ca.nameConstraints ? [`nameConstraints=critical,${ca.nameConstraints}`] : []),
    'subjectKeyIdentifier=hash',
    'authorityKeyIdentifier=keyid',
  ]
}

function leafExtensions(leaf: LeafSpec): string[] {
  const bc = {
    'not-ca': 'basicConstraints=CA:FALSE',
    ca: 'basicConstraints=critical,CA:TRUE',
    absent: undefined,
  }[leaf.basicConstraints]
  const sans = [
    ...leaf.uris.map((u, i) => `URI.${i} = ${u.uri}`),
    ...leaf.dns.map((d, i) => `DNS.${i} = ${d}`),
  ]
  return [
    ...(bc ? [bc] : []),
    ...(leaf.keyUsage ? [`keyUsage=${leaf.keyUsage}`] : []),
    ...(leaf.extendedKeyUsage ? [`extendedKeyUsage=${leaf.extendedKeyUsage}`] : []),
    'subjectKeyIdentifier=hash',
    'authorityKeyIdentifier=keyid',
    ...(sans.length > 0 ? ['subjectAltName=@sans', '[sans]', ...sans] : []),
  ]
}

interface Issuer {
  name: string
  certFile: string
  certPem: string
  key: KeyFiles
}
interface BuiltChain {
  spec: ChainSpec
  leaf: Issuer
  /** PEM of what the client sends after its leaf */
  sent: string
  sentFile: string
  /** date classes of the certificates of the chain (its root's too) */
  dated: Set<Dates>
}

/** openssl verify's verdict: undefined when it accepts, else its error's number and words */
interface Verdict {
  error?: string
}

async function verify(args: string[]): Promise<Verdict> {
  try {
    await run('openssl', ['verify', ...args])
    return {}
  } catch (err) {
    const out = `${(err as { stdout?: string }).stdout ?? ''}${(err as { stderr?: string }).stderr ?? ''}`
    return { error: /error (\d+ at \d+ depth lookup: .*)/.exec(out)?.[1] ?? out.trim() }
  }
}

/** at most `n` at a time: openssl runs ~20 ms, and the machine is shared */
async function inBatches<T, R>(items: readonly T[], n: number, f: (item: T, i: number) => Promise<R>) {
  const out: R[] = []
  for (let i = 0; i < items.length; i += n) {
    out.push(...(await Promise.all(items.slice(i, i + n).map((item, j) => f(item, i + j)))))
  }
  return out
}

const dir = await scratchDir('mtls-chain-differential')
let serial = 1
const KEY_TYPES: readonly KeyType[] = [
  'rsa',
  'ec',
  'ed25519',
  'rsa-1024',
  'rsa-512',
  'ec-p384',
  'ec-secp256k1',
  'ec-brainpoolP256r1',
]
const keyPool = Object.fromEntries(KEY_TYPES.map((type) => [type, [] as KeyFiles[]])) as Record<
  KeyType,
  KeyFiles[]
>
await Promise.all(
  KEY_TYPES.flatMap((type) =>
    (type.includes('-') ? [0] : [0, 1]).map(async (i) =>
      keyPool[type].push(await generateKey(dir, `${type}-${i}`, type)),
    ),
  ),
)
const poolKey = (type: KeyType) => keyPool[type][Math.floor(random() * keyPool[type].length)]!

async function ca(
  name: string,
  key: KeyFiles,
  issuer?: Issuer,
  dates?: Dates,
  subject = `/CN=${name}`,
): Promise<Issuer> {
  const made = await makeCertificate(dir, name, {
    subject,
    key,
    ...(issuer ? { issuer } : {}),
    ...(dates && dates !== 'valid' ? { validity: VALIDITY[dates]() } : {}),
    extensions: [
      'basicConstraints=critical,CA:TRUE',
      'keyUsage=critical,keyCertSign,cRLSign',
      'subjectKeyIdentifier=hash',
      ...(issuer ? ['authorityKeyIdentifier=keyid'] : []),
    ],
    serial: serial++,
  })
  return { name, key, ...made }
}
const root = await ca('client-root', await generateKey(dir, 'client-root', 'ec'))
const otherRoot = await ca('other-root', await generateKey(dir, 'other-root', 'rsa'))
const lapsedRoot = await ca('lapsed-root', await generateKey(dir, 'lapsed-root', 'ec'), undefined, 'expired')
const tops: Record<Top, Issuer> = {
  root,
  'file-intermediate': await ca('file-intermediate', poolKey('ec'), root),
  'other-root': otherRoot,
  'orphan-intermediate': await ca('orphan-intermediate', poolKey('ec'), otherRoot),
  'lapsed-intermediate': await ca('lapsed-intermediate', poolKey('ec'), lapsedRoot),
  // the client root's name on another key: what it issues names the root as its issuer
  'impostor-root': await ca(
    'impostor-root',
    await generateKey(dir, 'impostor', 'rsa'),
    undefined,
    'valid',
    '/CN=client-root',
  ),
}
// the client CA file: the root, an intermediate of it, an intermediate whose root it leaves out, and an
// intermediate whose root in it has expired (OpenSSL checks the root's dates too)
const clientCaFile = join(dir, 'client-ca.pem')
await writeFile(
  clientCaFile,
  [root, tops['file-intermediate'], tops['orphan-intermediate'], lapsedRoot, tops['lapsed-intermediate']]
    .map((c) => c.certPem)
    .join(''),
)

/** one certificate's spec as most drawn chains have it */
const goodCa = (key: KeyType, dates: Dates = 'valid'): CaSpec => ({
  basicConstraints: 'critical',
  keyCertSign: true,
  dates,
  digest: 'sha256',
  key,
})
const goodLeaf = (key: KeyType, dates: Dates = 'valid'): LeafSpec => ({
  basicConstraints: 'not-ca',
  extendedKeyUsage: 'clientAuth',
  uris: [],
  dns: [],
  dates,
  digest: 'sha256',
  key,
})
const rooted = (intermediates: CaSpec[], leaf: LeafSpec): ChainSpec => ({
  top: 'root',
  intermediates,
  sends: intermediates.map(() => true),
  sendsTop: false,
  reversed: false,
  sendsStranger: false,
  leaf,
})
/**
 * Written out, first (so the `clientCert: required` listener sees them too): explain took an intermediate
 * with a 512-bit RSA key (CA_KEY_TOO_SMALL on the listener), and both explain and the listener called such a
 * chain with an expired leaf cert_expired, a credential that ran out, where it is no credential at all.
 */
const WRITTEN: ChainSpec[] = [
  rooted([goodCa('rsa-512')], goodLeaf('ec')),
  rooted([goodCa('rsa-512')], goodLeaf('ec', 'expired')),
  rooted([goodCa('ec'), goodCa('rsa-512')], goodLeaf('ec')),
  rooted([goodCa('rsa-1024')], goodLeaf('rsa-1024')),
  rooted([goodCa('ec-secp256k1')], goodLeaf('ec-p384')),
  rooted([], goodLeaf('rsa-512')),
  rooted([], goodLeaf('ec-secp256k1')),
  // a good X.509-SVID and a leaf naming an invalid SPIFFE ID on chains every level takes, so that both classes
  // are there whatever the draw (at level 2, where RSA-1024 is too small, fewer drawn chains pass)
  rooted([goodCa('ec')], { ...goodLeaf('ec'), uris: [URIS[0]!] }),
  rooted([], { ...goodLeaf('ec'), uris: [URIS[3]!] }),
]
/** the written chains whose leaf the client cannot present over TLS 1.3, by their place in WRITTEN */
const RSA_512_LEAF = 5
const SECP256K1_LEAF = 6
const specs = [...WRITTEN, ...Array.from({ length: CHAINS - WRITTEN.length }, drawChain)]
// keys are drawn in order before any certificate is made, so the chains depend on the seed alone
const keys = specs.map((s) => ({
  intermediates: s.intermediates.map((c) => poolKey(c.key)),
  leaf: poolKey(s.leaf.key),
}))

async function build(spec: ChainSpec, i: number): Promise<BuiltChain> {
  let issuer = tops[spec.top]
  const sent: string[] = []
  const dated = new Set<Dates>(spec.top === 'lapsed-intermediate' ? ['expired'] : [])
  for (const [j, c] of spec.intermediates.entries()) {
    const name = `c${i}-intermediate-${j}`
    const made = await makeCertificate(dir, name, {
      subject: `/CN=${name}`,
      key: keys[i]!.intermediates[j]!,
      issuer,
      extensions: caExtensions(c),
      digest: c.digest,
      ...(c.dates !== 'valid' ? { validity: VALIDITY[c.dates]() } : {}),
      serial: serial++,
    })
    dated.add(c.dates)
    issuer = { name, key: keys[i]!.intermediates[j]!, ...made }
    if (spec.sends[j]) sent.unshift(made.certPem)
  }
  if (spec.sendsTop && spec.top !== 'root' && spec.top !== 'other-root') sent.push(tops[spec.top].certPem)
  if (spec.reversed) sent.reverse()
  if (spec.sendsStranger) sent.push(tops['other-root'].certPem)
  const name = `c${i}-leaf`
  const made = await makeCertificate(dir, name, {
    subject: `/CN=${name}`,
    key: keys[i]!.leaf,
    issuer,
    extensions: leafExtensions(spec.leaf),
    digest: spec.leaf.digest,
    ...(spec.leaf.dates !== 'valid' ? { validity: VALIDITY[spec.leaf.dates]() } : {}),
    serial: serial++,
  })
  dated.add(spec.leaf.dates)
  const sentFile = join(dir, `${name}-sent.pem`)
  await writeFile(sentFile, sent.join(''))
  return { spec, leaf: { name, key: keys[i]!.leaf, ...made }, sent: sent.join(''), sentFile, dated }
}

/** what the reference makes of a chain */
interface Expected {
  /** `openssl verify` with its defaults (informational: see the header for why the listener differs) */
  plain: Verdict
  strict: Verdict
  /** the reference: -auth_level TLS_SECURITY_LEVEL */
  reference: Verdict
  /** the reference without dates: accepts a chain whose dates alone are wrong */
  undated: Verdict
  /** the SPIFFE rules: undefined when the leaf is a fine SVID or names no SPIFFE ID */
  spiffeProblem?: string
}

function spiffeProblem(leaf: LeafSpec): string | undefined {
  if (!leaf.uris.some((u) => u.spiffe !== 'none')) return undefined
  if (leaf.uris.length !== 1) return 'an X.509-SVID has exactly one URI SAN'
  if (leaf.uris[0]!.spiffe === 'invalid') return `${leaf.uris[0]!.uri} is not a valid SPIFFE ID`
  // X.509-SVID §4.1, §4.3; its "MUST set digitalSignature" is not applied, on purpose and as docs/reference.md
  // says: a leaf without a key usage (as many issuers make them) stays an SVID
  if (leaf.basicConstraints === 'ca') return 'an X.509-SVID leaf is not a CA'
  if (leaf.keyUsage?.includes('keyCertSign')) return 'an X.509-SVID leaf does not sign certificates'
  return undefined
}

async function expectationOf(chain: BuiltChain): Promise<Expected> {
  const untrusted = chain.sent === '' ? [] : ['-untrusted', chain.sentFile]
  const common = ['-CAfile', clientCaFile, ...untrusted, '-purpose', 'sslclient']
  const [plain, strict, reference, undated] = await Promise.all([
    verify([...common, chain.leaf.certFile]),
    verify([...common, '-x509_strict', chain.leaf.certFile]),
    verify([...common, '-auth_level', String(TLS_SECURITY_LEVEL), chain.leaf.certFile]),
    verify([...common, '-auth_level', String(TLS_SECURITY_LEVEL), '-no_check_time', chain.leaf.certFile]),
  ])
  const problem = spiffeProblem(chain.spec.leaf)
  return { plain, strict, reference, undated, ...(problem ? { spiffeProblem: problem } : {}) }
}

const { ca: serverCa, server } = await createServerPki()
/** as mtlsListen, with the client CA file that holds more than one CA */
const listen = (clientCert: 'optional' | 'required') => ({
  http: '127.0.0.1:0',
  https: {
    address: '127.0.0.1:0',
    cert: server.certFile,
    key: server.keyFile,
    clientCA: clientCaFile,
    clientCert,
  },
})
const chains = await inBatches(specs, 2, build)
const expected = await inBatches(chains, 2, expectationOf)

/** leaf keys the client's TLS 1.3 stack cannot sign its CertificateVerify with: it presents no certificate */
const [opensslMajor = 0, opensslMinor = 0] = process.versions.openssl.split('.').map(Number)
const brainpoolInTls13 = opensslMajor > 3 || (opensslMajor === 3 && opensslMinor >= 2)
const UNSIGNABLE: ReadonlySet<KeyType> = new Set([
  'rsa-512',
  'ec-secp256k1',
  ...(brainpoolInTls13 ? [] : (['ec-brainpoolP256r1'] as const)),
])
const clientCannotPresent = (chain: BuiltChain) => UNSIGNABLE.has(chain.spec.leaf.key)

/** a readable account of a chain, for a failure message */
function describe(chain: BuiltChain, e: Expected) {
  return { spec: chain.spec, reference: e.reference.error ?? 'OK', undated: e.undated.error ?? 'OK' }
}

t.test('the reference itself: its classes are all drawn', async (t) => {
  const accepted = expected.filter((e) => !e.reference.error).length
  const datedOnly = expected.filter((e) => e.reference.error && !e.undated.error).length
  const sha1Only = expected.filter((e) => !e.plain.error && e.reference.error).length
  t.ok(accepted >= 8, `chains the reference accepts: ${accepted}`)
  t.ok(CHAINS - accepted >= 8, `chains it refuses: ${CHAINS - accepted}`)
  t.ok(datedOnly >= 1, `chains refused for their dates alone: ${datedOnly}`)
  const svids = expected.filter((e, i) => !e.reference.error && chains[i]!.spec.leaf.uris.length > 0)
  const badSvids = svids.filter((e) => e.spiffeProblem !== undefined).length
  t.ok(
    badSvids >= 1 && svids.length - badSvids >= 1,
    `accepted leaves with URI SANs: ${svids.length}, ${badSvids} no good SVID`,
  )
  const weakKeys = expected.filter((e) => /key too weak/.test(e.reference.error ?? '')).length
  t.ok(weakKeys >= 3, `chains refused for a key too small: ${weakKeys}`)
  t.comment(
    `plain openssl verify takes ${sha1Only} chains that -auth_level ${TLS_SECURITY_LEVEL} refuses (SHA-1 signatures)`,
  )
  const strictOnly = expected.filter((e) => !e.reference.error && e.strict.error).map((e) => e.strict.error)
  t.comment(`-x509_strict refuses ${strictOnly.length} chains the reference takes: ${strictOnly.join('; ')}`)
  const verdicts = new Map<string, number>()
  for (const e of expected) {
    const v = (e.reference.error ?? 'OK').replace(/^\d+ at \d+ depth lookup: /, '')
    verdicts.set(v, (verdicts.get(v) ?? 0) + 1)
  }
  t.comment(`the reference's verdicts: ${JSON.stringify(Object.fromEntries(verdicts))}`)
})

/**
 * What the listener (or explain) made of chain `i` against the reference: its identity when the reference
 * accepts it and the SPIFFE rules hold, else no identity and the one failure of the documented class.
 */
function judge(
  t: Test,
  i: number,
  got: { attributed: boolean; identity: unknown; subject: unknown; reasons: string[]; seen: unknown },
  by: 'listener' | 'explain',
): void {
  const chain = chains[i]!
  const e = expected[i]!
  const what = { ...describe(chain, e), seen: got.seen }
  if (by === 'listener' && clientCannotPresent(chain)) {
    t.notOk(got.attributed, `chain ${i}: its client presents no certificate (see the header)`, what)
    t.same([got.subject, got.reasons], [undefined, []], `chain ${i}: nor does the listener see one`, what)
    return
  }
  if (!e.reference.error && e.spiffeProblem === undefined) {
    t.ok(got.attributed, `chain ${i}: the reference accepts it, so it is the certificate's identity`, what)
    t.equal(got.subject, `CN=${chain.leaf.name}`, `chain ${i}: cert_subject`)
    // no identity rules: the built-in name, the SVID's SPIFFE ID, else the CN
    const svid = chain.spec.leaf.uris.find((u) => u.spiffe === 'valid')?.uri
    t.equal(got.identity, svid ?? chain.leaf.name, `chain ${i}: identity`)
    t.same(got.reasons, [], `chain ${i}: no mTLS failure`, what)
    return
  }
  t.notOk(got.attributed, `chain ${i}: no identity from it`, what)
  if (!e.reference.error) {
    t.same(got.reasons, ['spiffe_invalid'], `chain ${i}: ${e.spiffeProblem}`, what)
    return
  }
  // only the dates wrong: the reason names them (the listener's OpenSSL reports the last certificate it found
  // out of its dates, openssl verify the first, so either class on the chain is the documented one)
  const reasons = e.undated.error
    ? ['cert_untrusted']
    : [...chain.dated]
        .filter((d) => d !== 'valid')
        .map((d) => (d === 'expired' ? 'cert_expired' : 'cert_not_yet_valid'))
  t.equal(got.reasons.length, 1, `chain ${i}: one mTLS failure`, what)
  t.ok(reasons.includes(got.reasons[0] ?? ''), `chain ${i}: ${got.reasons[0]} is one of ${reasons}`, what)
}

t.test(
  'clientCert optional: a certificate is attributed exactly when the reference accepts it',
  async (t) => {
    const upstream = await startUpstream()
    t.teardown(() => upstream.close())
    const auditFile = join(dir, 'audit.log')
    const sidecar = await startTestSidecar(t, {
      upstream: upstream.url,
      listen: listen('optional'),
      audit: { output: auditFile, sample: 1 },
    })
    const port = sidecar.httpsAddress!.port
    for (const [i, chain] of chains.entries()) {
      const res = await exchange({ ...presenting(chain, port), headers: { 'x-request-id': `chain-${i}` } })
      t.equal(res.status, 200, `chain ${i}: served, whatever its certificate`)
    }
    // over TLS 1.2 the client signs with PKCS#1 v1.5 and any curve: the RSA-512 leaf arrives and the
    // listener's OpenSSL refuses it at its security level, a cert_untrusted failure; the secp256k1 one is refused
    // by the listener's OpenSSL in the handshake (alert illegal_parameter: a curve it does not offer)
    const tls12 = (i: number, id: string) =>
      exchange({ ...presenting(chains[i]!, port), maxVersion: 'TLSv1.2', headers: { 'x-request-id': id } })
    t.equal((await tls12(RSA_512_LEAF, 'tls12-rsa-512')).status, 200, 'TLS 1.2, RSA-512 leaf: served')
    await t.rejects(
      tls12(SECP256K1_LEAF, 'tls12-secp256k1'),
      /illegal parameter/,
      'TLS 1.2, secp256k1 leaf: the listener refuses the handshake',
    )
    const lines = await eventually(
      () => {
        const byId = new Map<string, Record<string, unknown>>()
        for (const line of readFileSync(auditFile, 'utf8').split('\n')) {
          if (!line.startsWith('{')) continue
          const record = JSON.parse(line) as Record<string, unknown>
          byId.set(String(record['request_id']), record)
        }
        return byId.size >= chains.length + 1 ? byId : undefined
      },
      { what: 'an audit line for every chain' },
    )
    const tls12Line = lines.get('tls12-rsa-512')!
    t.same(
      [
        tls12Line['source'] === 'mtls',
        tls12Line['cert_subject'],
        (tls12Line['failures'] as { reason: string }[]).map((f) => f.reason),
      ],
      [false, undefined, ['cert_untrusted']],
      'TLS 1.2, RSA-512 leaf: a cert_untrusted failure, no identity',
      tls12Line,
    )
    for (const i of chains.keys()) {
      const line = lines.get(`chain-${i}`)!
      const failures = (line['failures'] as { source: string; reason: string }[]).filter(
        (f) => f.source === 'mtls',
      )
      judge(
        t,
        i,
        {
          attributed: line['source'] === 'mtls' && line['verified'] === true,
          identity: line['identity'],
          subject: line['cert_subject'],
          reasons: failures.map((f) => f.reason),
          seen: line,
        },
        'listener',
      )
    }
  },
)

/** a request to the https listener at `port` presenting `chain`'s leaf and what the client sends with it */
function presenting(chain: (typeof chains)[number], port: number) {
  return {
    https: true,
    host: '127.0.0.1',
    port,
    path: '/echo',
    servername: 'localhost',
    ca: serverCa.certPem,
    cert: chain.leaf.certPem + chain.sent,
    key: chain.leaf.key.keyPem,
    ciphers: CLIENT_CIPHERS,
  }
}

t.test(
  'clientCert required: the handshake succeeds exactly when the reference accepts the chain',
  async (t) => {
    const upstream = await startUpstream()
    t.teardown(() => upstream.close())
    const sidecar = await startTestSidecar(t, {
      upstream: upstream.url,
      listen: listen('required'),
    })
    const port = sidecar.httpsAddress!.port
    for (const [i, chain] of chains.slice(0, REQUIRED_CHAINS).entries()) {
      const e = expected[i]!
      const outcome = await exchange(presenting(chain, port)).then(
        (res) => res.status,
        (err: NodeJS.ErrnoException) => err.code ?? err.message,
      )
      // the SPIFFE rules are the proxy's own, after the handshake: they decide attribution, not the handshake;
      // a certificate the client cannot present is none, which this listener refuses
      const accepted = !e.reference.error && !clientCannotPresent(chain)
      t.equal(outcome === 200, accepted, `chain ${i}: ${outcome}`, describe(chain, e))
    }
  },
)

t.test('explain judges every chain as the listener does', async (t) => {
  const config = join(dir, 'explain.yaml')
  await writeFile(
    config,
    JSON.stringify({ listen: listen('optional'), upstream: 'http://127.0.0.1:1', audit: { output: 'off' } }),
  )
  for (const [i, chain] of chains.entries()) {
    const file = join(dir, `c${i}-explain.pem`)
    await writeFile(file, chain.leaf.certPem + chain.sent)
    const lines: string[] = []
    const code = await runExplain(
      { config, headers: [], cert: file, method: 'GET', path: '/echo', json: true },
      (line) => lines.push(line),
    )
    t.equal(code, 0, `chain ${i}: explained`)
    const report = JSON.parse(lines.join('\n')) as {
      identity: { name: string; source: string; verified: boolean }
      evidence: { mtls?: { subject?: string }; failures: { source: string; reason: string }[] }
    }
    judge(
      t,
      i,
      {
        attributed: report.identity.source === 'mtls' && report.identity.verified,
        identity: report.identity.name,
        subject: report.evidence.mtls?.subject,
        reasons: report.evidence.failures.filter((f) => f.source === 'mtls').map((f) => f.reason),
        seen: report,
      },
      'explain',
    )
  }
})
