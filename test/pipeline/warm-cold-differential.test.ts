// Warm caches must never change an attribution. Every cache of the identify → classify path keyed by what a
// client sends (verified and failed tokens, forwarded-certificate answers, the rule set's identities, the
// fingerprints of an evidence combination…) holds what a miss works out, and must give it only to a request
// that a miss would answer the same way: same peer and trust, same header family, same issuer, same instant,
// same connection. Generated sequences draw their requests from families of clients alike but for one thing
// (the same XFCC header from a trusted peer, an untrusted one and one trusted for another format; one token
// under two issuers, expired, not valid yet, written otherwise; one certificate on a verified and an unverified
// connection, sent with and without its intermediate; a crawler's user agent from inside its operator's ranges
// and from elsewhere; one API key under two spellings; a forwarded-certificate header of another family beside),
// on a clock that steps onto the instants tokens turn valid or expire. Each sequence goes through ONE
// long-lived pipeline (every client three times at least: an answer is kept from its second sight and given
// from the cache on the third), and each request also through a FRESH pipeline of the same config, made for
// it; the two must attribute it alike: identity (every field), its credentials' evidence, failures as
// recorded, anomalies, fingerprints, route, policy decision, rejection, and the forwarded-certificate headers
// sent upstream.
//
// Left out, as meant to depend on history: `token_shared` (a token's clients counted over a window), nonces (a
// signature's second use is a replay: the signatures here carry none), crawlers' reverse DNS (a request from a
// new address is answered before its lookup concludes: DNS is off, the ranges decide), key-set refetches (the
// keys never change here), and the clock moving while a request is being answered (a verification in flight
// is shared by the requests that arrive meanwhile: the clock stands still while a batch is answered).
//
// Module-level caches cannot be reset between pipelines, so the fresh pipeline reads them warm too: user-agent
// classifications, decoded certificates (decodedByCertificate), XFCC subjects read (subjectsRead), RFC 4514
// orders of subjects (rfc4514Subjects), peeked JWT headers (peekedHeaders), and the WeakMaps by evidence object
// (token profiles, credential entries, crawler claims, the XFCC sent upstream). Each is keyed by all its answer
// is worked out from (a text, the hash of DER bytes, an evidence object never changed once made), and the
// families send what shares their keys through the warm pipeline in every order: one certificate over mTLS, in
// XFCC, Client-Cert and nginx's header, one subject from every peer, one JWT header segment under both issuers,
// one user agent from every address.

import { once } from 'node:events'
import type { IncomingHttpHeaders } from 'node:http'
import type { AddressInfo } from 'node:net'
import { connect, createServer, type TLSSocket } from 'node:tls'
import { isDeepStrictEqual } from 'node:util'
import fc from 'fast-check'
import { decodeJwt } from 'jose'
import t, { type Test } from 'tap'
import { type Config, configSchema } from '../../src/config/schema.ts'
import {
  loadCertificateDecoder,
  parsePeerCertificate,
  pemCertificates,
} from '../../src/identity/certificate.ts'
import { AttributionPipeline, type Evaluation } from '../../src/pipeline/index.ts'
import type { CertEvidence, ConnectionInfo, Failure, Identity, RequestInfo } from '../../src/types.ts'
import { sha256Hex } from '../../src/util/fingerprint.ts'
import { eventually } from '../helpers/eventually.ts'
import {
  createSigningKey,
  type MintOptions,
  mintToken,
  type SigningKey,
  startJwksServer,
} from '../helpers/jwks.ts'
import { createCA, issueCert, type KeyPair } from '../helpers/pki.ts'
import { checkBothSides, PROPERTY_SEED } from '../helpers/property.ts'
import { createAgentKey, signWithParams, startKeyDirectory } from '../helpers/signed-agent.ts'

const SEQUENCES = 30

const ISSUER_A = 'https://idp-a.example'
const ISSUER_B = 'https://idp-b.example'
const AUTHORITY = 'svc.example'

// ---- who connects: the address the socket comes from

const PEERS = {
  /** a client on the pod network: no forwarded header of it is believed */
  direct: '10.9.0.4',
  /** the Envoy in front, trusted for XFCC */
  envoy: '10.1.0.7',
  /** a load balancer trusted for RFC 9440 Client-Cert */
  edge: '10.2.0.7',
  /** an nginx trusted for its escaped PEM */
  nginx: '10.3.0.7',
  /** inside Google's published crawler ranges */
  google: '66.249.66.5',
  /** inside OpenAI's GPTBot ranges */
  openai: '132.196.86.5',
} as const
type PeerName = keyof typeof PEERS
const PEER_NAMES = Object.keys(PEERS) as PeerName[]

/** what a trusted proxy appends to X-Forwarded-For (read from trusted peers only) */
const FORWARDED_FOR = { google: '66.249.66.9', openai: '132.196.86.9', elsewhere: '203.0.113.9' } as const
type ForwardedFor = keyof typeof FORWARDED_FOR

const USER_AGENTS = [
  'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)',
  'Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko); compatible; GPTBot/1.2; +https://openai.com/gptbot',
  'ChatGPT-User/1.0',
  'curl/8.5.0',
  'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36',
  'billing-export/1.0',
]

// ---- the credentials, made once: tokens, certificates, connections, signatures

const TOKENS = [
  /** issuer A's workload token */
  'a',
  /** the same claims and header under issuer B (configured or not) */
  'b',
  /** expires during the sequence */
  'a-expiring',
  'a-expired',
  /** not valid yet: valid at nbf less the clock skew, during the sequence */
  'a-early',
  /** an audience issuer A does not accept (issuer B accepts any) */
  'a-audience',
  /** signed by another key under issuer A's kid */
  'a-forged',
  /** a kid issuer A never published */
  'a-unknown-kid',
  /** an issuer no config names */
  'c',
  /** bound to the workload certificate (cnf x5t#S256) */
  'a-bound',
  'malformed',
] as const
type TokenName = (typeof TOKENS)[number]

const CERTS = ['workload', 'gateway'] as const
type CertName = (typeof CERTS)[number]

/**
 * The TLS connections a client can come on, each made for real against a listener that trusts the client CA
 * (its root and intermediate) or one that does not: the workload certificate with its intermediate, without
 * it (the listener has it: the same certificate, another expiry), to a listener that does not trust it; the
 * gateway's; an expired one.
 */
const CONNECTIONS = ['workload-chain', 'workload-leaf', 'workload-untrusted', 'gateway', 'expired'] as const
type ConnectionName = (typeof CONNECTIONS)[number]

/** what Envoy's set_current_client_cert_details forwards of a certificate (Hash always) */
const XFCC_VIEWS = ['hash', 'hash+subject', 'hash+uri', 'all-fields', 'cert', 'appended'] as const
type XfccView = (typeof XFCC_VIEWS)[number]

interface Certificate {
  pair: KeyPair
  der: Buffer
  sha256: string
  /** the subject as Envoy prints it (RFC 4514 order) */
  subject4514: string
  uris: string[]
  dns: string[]
}

interface Fixtures {
  /** both issuers publish their keys in this one JWKS: issuer A's and B's tokens share a header */
  jwksUri: string
  directoryUrl: string
  tokens: Record<TokenName, string>
  certs: Record<CertName, Certificate>
  /** two connections of each kind, so that the same certificate comes as another evidence object too */
  connections: Record<ConnectionName, [ConnectionInfo['peerCert'], ConnectionInfo['peerCert']]>
  signatures: { valid: Record<string, string>; 'unknown-key': Record<string, string> }
  /** unix seconds the sequences start at (the tokens' issue time) */
  start: number
  /** each token's nbf and exp (unix seconds) */
  times: Partial<Record<TokenName, { nbf?: number; exp: number }>>
  /** unix seconds the valid signature's `expires` says */
  signatureExpires: number
}

const claimsOf = (token: string): Record<string, unknown> => decodeJwt(token)

async function makeFixtures(t: Test): Promise<Fixtures> {
  const key = await createSigningKey('k1', 'ES256')
  const other = await createSigningKey('k1', 'ES256')
  const stray = await createSigningKey('k9', 'ES256')
  const jwks = await startJwksServer([key])
  t.teardown(() => jwks.close())

  const root = await createCA('warm-cold-root')
  const intermediatePair = await issueCert(root, {
    cn: 'warm-cold-intermediate',
    intermediate: true,
    extendedKeyUsage: 'clientAuth',
    days: 3,
  })
  const intermediate = { ...intermediatePair, dir: root.dir, name: 'warm-cold-intermediate' }
  const stranger = await createCA('warm-cold-stranger')
  const serverCa = await createCA('warm-cold-server-ca')
  const [serverCert, workload, gateway, expired] = await Promise.all([
    issueCert(serverCa, { cn: 'localhost', dnsSans: ['localhost'], server: true }),
    issueCert(intermediate, {
      subject: '/O=acme/CN=orders',
      uriSans: ['spiffe://prod.example/ns/pay/sa/api'],
      dnsSans: ['orders.acme.example'],
      days: 7,
    }),
    issueCert(root, { subject: '/O=acme/CN=gateway', dnsSans: ['gateway.acme.example'] }),
    issueCert(root, { subject: '/O=acme/CN=old', days: -1 }),
  ])
  const certificate = (pair: KeyPair, subject4514: string, uris: string[], dns: string[]) => {
    const der = pemCertificates(pair.certPem)[0]!.raw
    return { pair, der, sha256: sha256Hex(der), subject4514, uris, dns }
  }
  const certs: Record<CertName, Certificate> = {
    workload: certificate(
      workload,
      'CN=orders,O=acme',
      ['spiffe://prod.example/ns/pay/sa/api'],
      ['orders.acme.example'],
    ),
    gateway: certificate(gateway, 'CN=gateway,O=acme', [], ['gateway.acme.example']),
  }

  await loadCertificateDecoder()
  const connections = {} as Fixtures['connections']
  const handshakes: [ConnectionName, KeyPair, string, 'trusting' | 'distrusting'][] = [
    ['workload-chain', workload, workload.certPem + intermediate.certPem, 'trusting'],
    ['workload-leaf', workload, workload.certPem, 'trusting'],
    ['workload-untrusted', workload, workload.certPem + intermediate.certPem, 'distrusting'],
    ['gateway', gateway, gateway.certPem, 'trusting'],
    ['expired', expired, expired.certPem, 'trusting'],
  ]
  for (const listener of ['trusting', 'distrusting'] as const) {
    const cas = listener === 'trusting' ? [root.certPem, intermediate.certPem] : [stranger.certPem]
    const anchors = pemCertificates(cas.join(''))
    // what the listener makes of each connection's certificate, as the proxy's listener does (once per
    // connection)
    const parsed: ConnectionInfo['peerCert'][] = []
    const server = createServer({
      cert: serverCert.certPem,
      key: serverCert.keyPem,
      ca: cas,
      requestCert: true,
      rejectUnauthorized: false,
    })
    server.on('secureConnection', (socket: TLSSocket) => {
      parsed.push(parsePeerCertificate(socket, anchors))
      socket.end()
    })
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    const { port } = server.address() as AddressInfo
    for (const [name, pair, chain, on] of handshakes) {
      if (on !== listener) continue
      for (let i = 0; i < 2; i++) {
        const before = parsed.length
        const client = connect({
          host: '127.0.0.1',
          port,
          servername: 'localhost',
          ca: serverCa.certPem,
          cert: chain,
          key: pair.keyPem,
        })
        client.resume()
        await once(client, 'secureConnect')
        await eventually(() => parsed.length > before, { what: `the listener's reading of ${name}` })
        client.end()
      }
      connections[name] = [parsed[parsed.length - 2], parsed[parsed.length - 1]]
    }
    await new Promise((resolve) => server.close(resolve))
  }

  const agent = await createAgentKey()
  const strayAgent = await createAgentKey()
  const directory = await startKeyDirectory([agent])
  t.teardown(() => directory.close())

  const workloadClaims = {
    sub: 'system:serviceaccount:pay:api',
    'kubernetes.io': { namespace: 'pay', serviceaccount: { name: 'api' } },
  }
  const workloadThumbprint = Buffer.from(certs.workload.sha256, 'hex').toString('base64url')
  // the long-lived tokens outlive the certificates (8 days): an identity's expiry is then its certificate's
  const mint = (
    signer: SigningKey,
    issuer: string,
    opts: Partial<MintOptions> = {},
    claims: Record<string, unknown> = workloadClaims,
  ) => mintToken(signer, claims, { issuer, audience: 'orders', expiresIn: 8 * 86_400, ...opts })
  const tokens: Record<TokenName, string> = {
    a: await mint(key, ISSUER_A),
    b: await mint(key, ISSUER_B),
    'a-expiring': await mint(key, ISSUER_A, { expiresIn: 20 }),
    'a-expired': await mint(key, ISSUER_A, { expiresIn: -60 }),
    'a-early': await mint(key, ISSUER_A, { notBefore: 45 }),
    'a-audience': await mint(key, ISSUER_A, { audience: 'billing' }),
    'a-forged': await mint(other, ISSUER_A),
    'a-unknown-kid': await mint(stray, ISSUER_A),
    c: await mint(key, 'https://idp-c.example'),
    'a-bound': await mint(key, ISSUER_A, {}, { ...workloadClaims, cnf: { 'x5t#S256': workloadThumbprint } }),
    malformed: 'not.a-jwt',
  }
  const times: Fixtures['times'] = {}
  let start = Number.POSITIVE_INFINITY
  for (const name of TOKENS) {
    if (name === 'malformed') continue
    const { iat, nbf, exp } = claimsOf(tokens[name]) as { iat: number; nbf?: number; exp: number }
    times[name] = nbf === undefined ? { exp } : { nbf, exp }
    start = Math.min(start, iat)
  }
  const signatureExpires = start + 60
  const params = (keyid: string) =>
    `;created=${start};expires=${signatureExpires};keyid="${keyid}";tag="web-bot-auth"`
  const url = `http://${AUTHORITY}/`
  return {
    jwksUri: jwks.jwksUri,
    directoryUrl: directory.url,
    tokens,
    certs,
    connections,
    signatures: {
      valid: signWithParams(agent, url, params(agent.keyid)),
      'unknown-key': signWithParams(strayAgent, url, params(strayAgent.keyid)),
    },
    start,
    times,
    signatureExpires,
  }
}

// ---- configs: a few knobs, and identity rules (on credentials only, so that the rule set's cache is on)

const RULES = [
  { name: '{ns}/{sa}', team: 'platform', match: { spiffe: 'spiffe://prod.example/ns/{ns}/sa/{sa}' } },
  { name: 'k8s:{ns}', match: { jwt: { issuer: ISSUER_A, claims: { 'kubernetes.io.namespace': '{ns}' } } } },
  { name: 'cert:{cn}', kind: 'service', match: { cert: { subject: 'CN={cn},O=acme' } } },
  { name: 'gateway', team: 'edge', match: { cert: { san: '*.acme.example' }, verified: true } },
  { name: 'deployer', kind: 'job', team: 'platform', match: { apiKey: 'deploy' } },
  { name: 'crawler/{bot}', match: { userAgent: 'builtin:bots', verified: true } },
  { name: 'b:{sub}', match: { jwt: { issuer: ISSUER_B, claims: { sub: '{sub}' } } } },
  { name: 'edge/{cn}', match: { source: 'xfcc', cert: { subject: '{cn}' } } },
  { name: 'said-agent', match: { source: 'useragent', verified: false, userAgent: 'builtin:agents' } },
] as const

const knobs = fc.record({
  // a skew of whole seconds (none at all, the default) puts an answer's edge on a millisecond: 1.5 s does not
  clockSkew: fc.oneof(
    { weight: 2, arbitrary: fc.constant('0s') },
    { weight: 2, arbitrary: fc.constant('30s') },
    { weight: 1, arbitrary: fc.constant('1500ms') },
  ),
  profileA: fc.constantFrom('kubernetes', undefined),
  /** issuer B configured (with a profile) or not: token b verifies or is wrong_issuer */
  issuerB: fc.constantFrom('generic', 'none', undefined),
  onInvalid: fc.constantFrom('attribute', 'reject'),
  policy: fc.constantFrom('observe', 'enforce', 'off'),
  toUpstream: fc.constantFrom('sanitize_set', 'forward', 'sanitize'),
  rules: fc.shuffledSubarray([...RULES.keys()], { minLength: 2 }),
})
type Knobs = typeof knobs extends fc.Arbitrary<infer K> ? K : never

function configOf(k: Knobs, fx: Fixtures): Config {
  const issuerA = { issuer: ISSUER_A, jwksUri: fx.jwksUri, audiences: ['orders'] }
  const issuerB = { issuer: ISSUER_B, jwksUri: fx.jwksUri, audiences: 'any' }
  return configSchema.parse({
    service: 'orders',
    jwt: {
      issuers: [
        k.profileA === undefined ? issuerA : { ...issuerA, profile: k.profileA },
        ...(k.issuerB === undefined
          ? []
          : [k.issuerB === 'none' ? issuerB : { ...issuerB, profile: k.issuerB }]),
      ],
      clockSkew: k.clockSkew,
      onInvalid: k.onInvalid,
      verifyWorkers: 0,
    },
    forwardedClientCert: {
      trustedProxies: [
        { cidr: '10.1.0.0/16', format: 'xfcc' },
        { cidr: '10.2.0.0/16', format: 'rfc9440' },
        { cidr: '10.3.0.0/16', format: 'nginx' },
      ],
      toUpstream: k.toUpstream,
    },
    apiKeys: {
      keys: [
        { name: 'deploy', kind: 'job', sha256: sha256Hex('key-of-deploy') },
        { name: 'ci-runner', sha256: sha256Hex('key-of-ci') },
      ],
    },
    signedAgents: {
      directories: [
        {
          url: fx.directoryUrl,
          name: 'agent.example',
          kind: 'agent',
          operator: 'Example AI',
          purpose: 'assistant',
        },
      ],
      authorities: [AUTHORITY],
    },
    // the shipped snapshot of the crawlers' ranges, nothing fetched
    bots: { verify: { ranges: [] } },
    identities: k.rules.map((i) => RULES[i]),
    metrics: { routes: ['/api/{svc}/**', '/admin/**'] },
    policy: {
      mode: k.policy,
      rules: [
        { route: '/admin/**', allow: [{ team: 'platform' }] },
        { route: '/api/**', allow: [{ verified: true }, { kind: 'bot' }] },
      ],
    },
  })
}

// ---- clients: what one presents, and families of clients alike but for one thing

/** the certificate a client's own TLS connection presents, and the listener it comes to */
const TLS_CLIENTS = ['workload', 'workload-untrusted', 'gateway', 'expired'] as const

interface ClientSpec {
  peer: PeerName
  tls?: (typeof TLS_CLIENTS)[number]
  /** the workload certificate sent without its intermediate (which the listener has too) */
  intermediateLeftOut?: true
  /** the second connection made with that certificate: another evidence object of it */
  secondConnection?: true
  forwardedFor?: ForwardedFor
  token?: TokenName
  /** how Authorization names the scheme: `Bearer ` unless said (two spaces are no longer a bearer token) */
  scheme?: 'bearer ' | 'BEARER ' | 'Bearer  '
  xfcc?: CertName
  /** what the XFCC element holds of the certificate: all of Subject, URI and DNS unless said */
  xfccView?: XfccView
  clientCert?: CertName
  nginxCert?: CertName
  apiKey?: 'deploy' | 'ci' | 'unknown'
  /** the configured header (x-api-key, the default), another spelling of it that is never read, or both */
  keySpelling?: 'x_api_key' | 'both'
  /** an index into USER_AGENTS */
  userAgent?: number
  signature?: 'valid' | 'unknown-key'
  path: '/api/orders/1' | '/admin/keys' | '/'
}

const clientValues: { [K in keyof ClientSpec]-?: fc.Arbitrary<NonNullable<ClientSpec[K]>> } = {
  peer: fc.constantFrom(...PEER_NAMES),
  tls: fc.constantFrom(...TLS_CLIENTS),
  intermediateLeftOut: fc.constant(true),
  secondConnection: fc.constant(true),
  forwardedFor: fc.constantFrom(...(Object.keys(FORWARDED_FOR) as ForwardedFor[])),
  token: fc.constantFrom(...TOKENS),
  scheme: fc.constantFrom('bearer ', 'BEARER ', 'Bearer  '),
  xfcc: fc.constantFrom(...CERTS),
  xfccView: fc.constantFrom(...XFCC_VIEWS),
  clientCert: fc.constantFrom(...CERTS),
  nginxCert: fc.constantFrom(...CERTS),
  apiKey: fc.constantFrom('deploy', 'ci', 'unknown'),
  keySpelling: fc.constantFrom('x_api_key', 'both'),
  userAgent: fc.nat(USER_AGENTS.length - 1),
  signature: fc.constantFrom('valid', 'unknown-key'),
  path: fc.constantFrom('/api/orders/1', '/admin/keys', '/'),
}

/** now and then a credential of any kind besides those of a client's kind */
const extras: fc.Arbitrary<Partial<ClientSpec>> = fc.record(
  Object.fromEntries(
    Object.entries(clientValues).map(([k, v]) => [
      k,
      fc.oneof(
        { weight: 29, arbitrary: fc.constant(undefined) },
        { weight: 1, arbitrary: v as fc.Arbitrary<unknown> },
      ),
    ]),
  ) as { [K in keyof ClientSpec]: fc.Arbitrary<ClientSpec[K]> },
)

/** the credentials of one kind of client, which the others of its family present otherwise */
const kindOfClient: fc.Arbitrary<Partial<ClientSpec>> = fc.oneof(
  // a crawler: from its operator's ranges, from elsewhere, or behind a trusted proxy that says where it is
  fc
    .tuple(
      fc.constantFrom(
        { userAgent: 0, own: 'google' as const },
        { userAgent: 1, own: 'openai' as const },
        // ChatGPT-User from GPTBot's ranges: the operator's address, another product's
        { userAgent: 2, own: 'openai' as const },
      ),
      fc.constantFrom('own', 'elsewhere', 'behind-proxy', 'behind-proxy-elsewhere'),
    )
    .map(([{ userAgent, own }, from]): Partial<ClientSpec> => {
      if (from === 'own') return { userAgent, peer: own }
      if (from === 'elsewhere') return { userAgent, peer: 'direct' }
      return { userAgent, peer: 'envoy', forwardedFor: from === 'behind-proxy' ? own : 'elsewhere' }
    }),
  // a workload on a TLS connection of its own, with its token or not
  fc.record(
    {
      tls: clientValues.tls,
      intermediateLeftOut: clientValues.intermediateLeftOut,
      token: fc.constantFrom<TokenName>('a', 'a-bound', 'a-expiring', 'b'),
    },
    { requiredKeys: ['tls'] },
  ),
  // a workload behind a front proxy, in that proxy's header family, at times beside one of another family
  // (which only the client can have added)
  fc
    .tuple(
      fc.oneof(
        fc
          .record({ xfcc: clientValues.xfcc, xfccView: clientValues.xfccView })
          .map((forwarded): Partial<ClientSpec> => ({ peer: 'envoy', ...forwarded })),
        clientValues.clientCert.map((clientCert): Partial<ClientSpec> => ({ peer: 'edge', clientCert })),
        clientValues.nginxCert.map((nginxCert): Partial<ClientSpec> => ({ peer: 'nginx', nginxCert })),
      ),
      fc.record(
        {
          xfcc: clientValues.xfcc,
          clientCert: clientValues.clientCert,
          token: fc.constantFrom<TokenName>('a', 'a-bound', 'a-early'),
        },
        { requiredKeys: [] },
      ),
    )
    .map(([own, besides]) => ({ ...besides, ...own })),
  // a key holder, the key under the configured header or another spelling of it
  fc.record(
    { apiKey: clientValues.apiKey, keySpelling: clientValues.keySpelling, userAgent: fc.constantFrom(3, 5) },
    { requiredKeys: ['apiKey'] },
  ),
  // a token holder, its token more often one that turns valid or expires while the clock runs
  {
    weight: 3,
    arbitrary: fc.record(
      {
        token: fc.oneof(clientValues.token, fc.constantFrom<TokenName>('a-expiring', 'a-early')),
        userAgent: clientValues.userAgent,
      },
      { requiredKeys: ['token'] },
    ),
  },
  // a signed agent
  fc.record(
    { signature: clientValues.signature, userAgent: fc.constant(2) },
    { requiredKeys: ['signature'] },
  ),
)

const client: fc.Arbitrary<ClientSpec> = fc
  .tuple(clientValues.peer, clientValues.path, extras, kindOfClient)
  .map(([peer, path, extra, kind]) => {
    const out: Record<string, unknown> = { peer, path }
    for (const [k, v] of Object.entries({ ...extra, ...kind })) if (v !== undefined) out[k] = v
    return out as unknown as ClientSpec
  })

/**
 * Two or three of `changes`, each with what they all share besides (`alongside`: what makes the change
 * matter, such as the header a peer's trust decides on).
 */
function someOf(
  changes: readonly Partial<ClientSpec>[],
  alongside: fc.Arbitrary<Partial<ClientSpec>> = fc.constant({}),
): fc.Arbitrary<Partial<ClientSpec>[]> {
  return fc
    .tuple(alongside, fc.shuffledSubarray([...changes], { minLength: 2, maxLength: 3 }))
    .map(([shared, picked]) => picked.map((change) => ({ ...shared, ...change })))
}

/** two or three values of one thing a client presents (or its absence) */
function axis<K extends keyof ClientSpec>(
  key: K,
  values: readonly (ClientSpec[K] | undefined)[],
  alongside?: fc.Arbitrary<Partial<ClientSpec>>,
): fc.Arbitrary<Partial<ClientSpec>[]> {
  return someOf(
    values.map((v) => ({ [key]: v }) as Partial<ClientSpec>),
    alongside,
  )
}

/**
 * What the clients of a family differ in, everything else alike: what a cache keyed by the rest would have to
 * tell apart. The peer the same headers come from (trusted, untrusted, trusted for another format; inside a
 * crawler's ranges or not), the address a trusted proxy forwards for a crawler, the connection the same
 * certificate comes on and the chain it is sent with, what a proxy forwards of the same certificate, the same
 * claims under another issuer or validity, how the same token is written, the spelling of the same key, a
 * forwarded-certificate header of another family beside.
 */
const variants: fc.Arbitrary<Partial<ClientSpec>[]> = fc.oneof(
  axis(
    'peer',
    PEER_NAMES,
    fc.oneof(
      fc.constant({}),
      fc.record({ xfcc: clientValues.xfcc }),
      fc.record({ clientCert: clientValues.clientCert }),
      fc.record({ nginxCert: clientValues.nginxCert }),
    ),
  ),
  axis(
    'forwardedFor',
    [undefined, 'google', 'openai', 'elsewhere'],
    fc.record({ peer: fc.constant<PeerName>('envoy'), userAgent: fc.constantFrom(0, 1, 2) }),
  ),
  someOf([
    { tls: 'workload' },
    { tls: 'workload', intermediateLeftOut: true },
    { tls: 'workload', secondConnection: true },
    { tls: 'workload', intermediateLeftOut: true, secondConnection: true },
    { tls: 'workload-untrusted' },
  ]),
  axis('xfccView', XFCC_VIEWS, fc.record({ peer: fc.constant<PeerName>('envoy'), xfcc: clientValues.xfcc })),
  {
    weight: 2,
    arbitrary: axis('token', [
      'a',
      'b',
      'c',
      'a-audience',
      'a-forged',
      'a-expiring',
      'a-expired',
      'a-early',
      'a-bound',
    ]),
  },
  axis(
    'scheme',
    [undefined, 'bearer ', 'BEARER ', 'Bearer  '],
    fc.record({ token: fc.constantFrom<TokenName>('a', 'a-expiring', 'a-early', 'malformed') }),
  ),
  axis('keySpelling', [undefined, 'x_api_key', 'both'], fc.record({ apiKey: clientValues.apiKey })),
  someOf(
    [{}, { clientCert: 'workload' }, { nginxCert: 'workload' }, { xfcc: 'workload' }],
    fc.record({ peer: fc.constantFrom<PeerName>('envoy', 'edge', 'nginx') }),
  ),
)

/** clients alike but for one thing */
const family: fc.Arbitrary<ClientSpec[]> = fc.tuple(client, variants).map(([base, vs]) =>
  vs.map((v) => {
    const out: Record<string, unknown> = {}
    for (const [k, x] of Object.entries({ ...base, ...v })) if (x !== undefined) out[k] = x
    return out as unknown as ClientSpec
  }),
)

/**
 * How the clock moves before a request: not at all, a millisecond, a second, a minute, to the next instant any
 * token or signature turns valid or expires (or the millisecond before or after it), or to the next one of the
 * request's own token once that token could have been kept (see moved).
 */
const STEPS = ['none', 'tick', 'second', 'minute', 'edge', 'kept-edge'] as const
type Step = (typeof STEPS)[number]
const step: fc.Arbitrary<Step> = fc.oneof(
  { weight: 4, arbitrary: fc.constant<Step>('none') },
  { weight: 1, arbitrary: fc.constant<Step>('tick') },
  { weight: 1, arbitrary: fc.constant<Step>('second') },
  { weight: 1, arbitrary: fc.constant<Step>('minute') },
  { weight: 1, arbitrary: fc.constant<Step>('edge') },
  { weight: 3, arbitrary: fc.constant<Step>('kept-edge') },
)

/**
 * Two families of clients, each client three times (an answer is kept from its second request on, and given
 * from the cache on the third), in an order of their own, and a few more requests of any of them.
 */
const sequence = fc.tuple(knobs, family, family).chain(([knobs, ...families]) => {
  const clients = families.flat()
  const thrice = clients.flatMap((_, i) => [i, i, i])
  const length = thrice.length + 4
  return fc.record({
    knobs: fc.constant(knobs),
    clients: fc.constant(clients),
    order: fc.tuple(
      fc.shuffledSubarray(thrice, { minLength: thrice.length }),
      fc.array(fc.nat(clients.length - 1), { minLength: 4, maxLength: 4 }),
    ),
    steps: fc.array(step, { minLength: length, maxLength: length }),
    /** requests at one instant that go to the warm pipeline side by side (a verification in flight) */
    together: fc.array(fc.boolean(), { minLength: length, maxLength: length }),
  })
})
type Sequence = typeof sequence extends fc.Arbitrary<infer S> ? S : never

// ---- requests as the proxy hands them over

function headersOf(c: ClientSpec, fx: Fixtures): IncomingHttpHeaders {
  const h: IncomingHttpHeaders = { host: AUTHORITY }
  if (c.userAgent !== undefined) h['user-agent'] = USER_AGENTS[c.userAgent]
  if (c.forwardedFor !== undefined) h['x-forwarded-for'] = FORWARDED_FOR[c.forwardedFor]
  if (c.token !== undefined) h.authorization = `${c.scheme ?? 'Bearer '}${fx.tokens[c.token]}`
  if (c.xfcc !== undefined)
    h['x-forwarded-client-cert'] = xfccHeader(fx.certs[c.xfcc], c.xfccView ?? 'all-fields', fx)
  if (c.clientCert !== undefined) h['client-cert'] = `:${fx.certs[c.clientCert].der.toString('base64')}:`
  if (c.nginxCert !== undefined)
    h['x-ssl-client-cert'] = encodeURIComponent(fx.certs[c.nginxCert].pair.certPem)
  if (c.apiKey !== undefined) {
    const key = { deploy: 'key-of-deploy', ci: 'key-of-ci', unknown: 'key-of-nobody' }[c.apiKey]
    if (c.keySpelling !== 'x_api_key') h['x-api-key'] = key
    if (c.keySpelling !== undefined) h['x_api_key'] = key
  }
  if (c.signature !== undefined) Object.assign(h, fx.signatures[c.signature])
  return h
}

function xfccHeader(cert: Certificate, view: XfccView, fx: Fixtures): string {
  const hash = `Hash=${cert.sha256}`
  const subject = `Subject="${cert.subject4514}"`
  const uris = cert.uris.map((u) => `URI=${u}`)
  const dns = cert.dns.map((d) => `DNS=${d}`)
  switch (view) {
    case 'hash':
      return hash
    case 'hash+subject':
      return `${hash};${subject}`
    case 'hash+uri':
      return [hash, ...uris].join(';')
    case 'all-fields':
      return [hash, subject, ...uris, ...dns].join(';')
    case 'cert':
      return `${hash};Cert="${encodeURIComponent(cert.pair.certPem)}"`
    case 'appended':
      // what a client sent, with the element the trusted proxy appended after it
      return `Hash=${fx.certs.gateway.sha256};Subject="CN=admin,O=acme",${hash};${subject}`
  }
}

/** the TLS connection a client comes on, if any */
function connectionName(c: ClientSpec): ConnectionName | undefined {
  if (c.tls !== 'workload') return c.tls
  return c.intermediateLeftOut ? 'workload-leaf' : 'workload-chain'
}

/** a new request object per attribution, as the proxy makes one per exchange (it keeps the client address) */
function requestOf(c: ClientSpec, fx: Fixtures): RequestInfo {
  return { method: 'GET', path: c.path, url: c.path, headers: headersOf(c, fx), client: undefined }
}

// ---- what an attribution is judged by

/** every part of an attribution the audit, the metrics, the upstream and the client see */
function audited(a: Evaluation, pipeline: AttributionPipeline, req: RequestInfo, conn: ConnectionInfo) {
  const upstream: Record<string, string | string[] | undefined> = { ...req.headers }
  pipeline.prepareUpstreamHeaders(upstream, a, conn)
  return {
    identity: a.identity,
    credentials: a.evidence.credentials.map((c) => ({ source: c.source.name, evidence: c.evidence })),
    failures: a.evidence.failures,
    // token_shared counts a token's clients over a window: history by design
    anomalies: a.evidence.anomalies.filter((x) => x !== 'token_shared').sort(),
    fingerprints: a.fingerprints,
    route: a.route,
    decision: a.decision,
    reject: a.reject,
    forwardedCertHeaders: Object.fromEntries(
      ['x-forwarded-client-cert', 'client-cert', 'x-ssl-client-cert'].map((h) => [h, upstream[h]]),
    ),
  }
}
type Audited = ReturnType<typeof audited>

interface Tally {
  requests: number
  cold: number
  fromCache: number
  verifiedTokens: number
  tokenFailures: Map<string, number>
  certSources: Map<string, number>
  crawlersVerified: number
  signatures: number
  rejected: number
}

const count = (m: Map<string, number>, k: string) => m.set(k, (m.get(k) ?? 0) + 1)

/** the instants (unix ms) at which a token's answer changes: it turns valid, or expires (with and without skew) */
function tokenEdges(fx: Fixtures, skewMs: number, token: TokenName): number[] {
  const times = fx.times[token]
  if (times === undefined) return []
  const out = [times.exp * 1000, times.exp * 1000 + skewMs]
  if (times.nbf !== undefined) out.push(times.nbf * 1000 - skewMs, times.nbf * 1000)
  return out
}

/** every token's edges and the signature's expiry (less and plus its 30 s skew), each with the ms around it */
function allEdges(fx: Fixtures, skewMs: number): number[] {
  const out = TOKENS.flatMap((name) => tokenEdges(fx, skewMs, name))
  out.push((fx.signatureExpires + 30) * 1000, (fx.signatureExpires + 31) * 1000)
  return out.flatMap((e) => [e - 1, e, e + 1])
}

/** the first of `instants` after `now`, or a second on when there is none */
function nextOf(now: number, instants: readonly number[]): number {
  let next = Number.POSITIVE_INFINITY
  for (const e of instants) if (e > now && e < next) next = e
  return Number.isFinite(next) ? next : now + 1000
}

/**
 * The clock after step `s`, before a request with `token` (which earlier requests sent `sent` times): 'kept-edge'
 * moves it to the next instant the token's answer changes once the token has been sent twice (from when an
 * answer is kept), and leaves it before that.
 */
function moved(now: number, s: Step, fx: Fixtures, skewMs: number, token?: TokenName, sent = 0): number {
  switch (s) {
    case 'none':
      return now
    case 'tick':
      return now + 1
    case 'second':
      return now + 1000
    case 'minute':
      return now + 60_000
    case 'edge':
      return nextOf(now, allEdges(fx, skewMs))
    case 'kept-edge':
      return token === undefined || sent < 2 ? now : nextOf(now, tokenEdges(fx, skewMs, token))
  }
}

/** Runs one sequence; returns the first disagreement, if any. */
async function runSequence(seq: Sequence, fx: Fixtures, tally: Tally): Promise<string | undefined> {
  const config = configOf(seq.knobs, fx)
  const clock = { ms: fx.start * 1000 }
  const context = { now: () => clock.ms }
  const warm = new AttributionPipeline(config, context)
  await warm.start()
  /** one connection object per client connection, kept across its requests as the proxy keeps it */
  const connections = new Map<string, ConnectionInfo>()
  const connectionOf = (c: ClientSpec): ConnectionInfo => {
    const tls = connectionName(c)
    const key = `${c.peer} ${tls} ${c.secondConnection}`
    let conn = connections.get(key)
    if (conn === undefined) {
      conn = { remoteAddress: PEERS[c.peer], remotePort: 40_000 + connections.size, tls: tls !== undefined }
      const peerCert = tls && fx.connections[tls][c.secondConnection ? 1 : 0]
      if (peerCert) conn.peerCert = peerCert
      connections.set(key, conn)
    }
    return conn
  }
  const coldAnswers = new Map<string, Audited>()
  const sentTokens = new Map<TokenName | undefined, number>()
  const handedOut: [Identity, Identity][] = []
  const seenIdentities = new Set<Identity>()
  const [order, extra] = seq.order
  const indexes = [...order, ...extra]
  try {
    for (let i = 0; i < indexes.length; ) {
      const { token } = seq.clients[indexes[i]!]!
      clock.ms = moved(clock.ms, seq.steps[i]!, fx, config.jwt.clockSkew, token, sentTokens.get(token))
      // the requests at this instant that go side by side
      let j = i + 1
      while (j < indexes.length && seq.steps[j] === 'none' && seq.together[j]) j++
      const batch = indexes.slice(i, j).map((n) => seq.clients[n]!)
      const requests = batch.map((c) => ({ c, req: requestOf(c, fx), conn: connectionOf(c) }))
      for (const c of batch) sentTokens.set(c.token, (sentTokens.get(c.token) ?? 0) + 1)
      const answers = await Promise.all(requests.map(({ req, conn }) => warm.evaluate(req, conn)))
      for (const [k, { c, req, conn }] of requests.entries()) {
        const got = audited(answers[k]!, warm, req, conn)
        const identity = answers[k]!.identity
        if (seenIdentities.has(identity)) tally.fromCache++
        seenIdentities.add(identity)
        handedOut.push([identity, structuredClone(identity)])
        // a fresh pipeline answers the same request at the same instant alike: worked out once
        const coldKey = `${clock.ms} ${JSON.stringify(c)}`
        let want = coldAnswers.get(coldKey)
        if (want === undefined) {
          want = await coldAttribution(config, context, c, fx, conn)
          coldAnswers.set(coldKey, want)
          tally.cold++
        }
        tally.requests++
        judgeTally(got, tally)
        if (!isDeepStrictEqual(got, want)) {
          return (
            `request ${i + k} at +${clock.ms - fx.start * 1000} ms, knobs ${JSON.stringify(seq.knobs)}\n` +
            `  client ${JSON.stringify(c)}\n  warm ${JSON.stringify(got)}\n  cold ${JSON.stringify(want)}`
          )
        }
      }
      i = j
    }
    // identities (and their attributes) are shared by every request a cache answers: none may change later
    for (const [identity, asHandedOut] of handedOut) {
      if (!isDeepStrictEqual(identity, asHandedOut))
        return `an identity changed after it was handed out: ${JSON.stringify(asHandedOut)}`
    }
    return undefined
  } finally {
    warm.close()
  }
}

/** the request through a pipeline of its own, made for it: nothing of it cached */
async function coldAttribution(
  config: Config,
  context: { now: () => number },
  c: ClientSpec,
  fx: Fixtures,
  conn: ConnectionInfo,
): Promise<Audited> {
  const cold = new AttributionPipeline(config, context)
  try {
    await cold.start()
    const req = requestOf(c, fx)
    return audited(await cold.evaluate(req, conn), cold, req, conn)
  } finally {
    cold.close()
  }
}

function judgeTally(a: Audited, tally: Tally): void {
  for (const c of a.credentials) {
    if (c.source === 'jwt') tally.verifiedTokens++
    if (c.source === 'mtls' || c.source === 'xfcc')
      count(
        tally.certSources,
        `${c.source}${(c.evidence as CertEvidence).via ? ` via ${(c.evidence as CertEvidence).via}` : ''}`,
      )
    if (c.source === 'useragent' && c.evidence.verified) tally.crawlersVerified++
    if (c.source === 'signature') tally.signatures++
  }
  for (const f of a.failures as Failure[]) if (f.source === 'jwt') count(tally.tokenFailures, f.reason)
  if (a.reject !== undefined) tally.rejected++
}

// ---- the tests

t.test('the generator reaches the near misses that matter', async (t) => {
  const pair = (s: Sequence, same: (a: ClientSpec, b: ClientSpec) => boolean) =>
    s.clients.some((a) => s.clients.some((b) => a !== b && same(a, b)))
  checkBothSides(
    t,
    sequence,
    (s) => pair(s, (a, b) => a.xfcc !== undefined && a.xfcc === b.xfcc && a.peer !== b.peer),
    [100, 1900],
    'sequences with one certificate in XFCC from two peers',
  )
  checkBothSides(
    t,
    sequence,
    (s) =>
      pair(
        s,
        (a, b) =>
          a.tls === 'workload' && b.tls === 'workload' && !a.intermediateLeftOut !== !b.intermediateLeftOut,
      ),
    [100, 1900],
    'sequences with one certificate sent with and without its intermediate',
  )
  checkBothSides(
    t,
    sequence,
    (s) => s.clients.some((c) => c.token === 'a-early' || c.token === 'a-expiring'),
    [200, 1900],
    'sequences with a token that turns valid or expires',
  )
})

t.test('a warm pipeline attributes every request as a fresh one does', async (t) => {
  const started = Date.now()
  const fx = await makeFixtures(t)
  const tally: Tally = {
    requests: 0,
    cold: 0,
    fromCache: 0,
    verifiedTokens: 0,
    tokenFailures: new Map(),
    certSources: new Map(),
    crawlersVerified: 0,
    signatures: 0,
    rejected: 0,
  }
  const sequences = fc.sample(sequence, { numRuns: SEQUENCES, seed: PROPERTY_SEED })
  const disagreements: string[] = []
  for (const seq of sequences) {
    const what = await runSequence(seq, fx, tally)
    if (what !== undefined) disagreements.push(what)
  }
  t.same(disagreements.slice(0, 5), [], `no disagreement (of ${disagreements.length} sequences)`)
  // the cases that matter were drawn: answers from the caches, and credentials of every kind
  t.ok(
    tally.fromCache > tally.requests / 4,
    `identities from a cache (${tally.fromCache} of ${tally.requests})`,
  )
  t.ok(tally.verifiedTokens > 0 && tally.tokenFailures.size > 2, 'verified tokens and failed ones')
  t.ok(tally.certSources.size >= 3, 'certificates over mTLS and forwarded ones')
  t.ok(tally.crawlersVerified > 0, 'crawlers verified by their address')
  t.ok(tally.signatures > 0, 'signed agents')
  t.comment(
    `${SEQUENCES} sequences (seed ${PROPERTY_SEED}), ${tally.requests} requests (${tally.cold} fresh ` +
      `pipelines) in ${Date.now() - started} ms: ${tally.fromCache} identities from a cache, ` +
      `${tally.verifiedTokens} verified tokens, token failures ` +
      `${JSON.stringify(Object.fromEntries(tally.tokenFailures))}, certificates ` +
      `${JSON.stringify(Object.fromEntries(tally.certSources))}, ${tally.crawlersVerified} crawlers verified, ` +
      `${tally.signatures} signatures, ${tally.rejected} rejected`,
  )
})
