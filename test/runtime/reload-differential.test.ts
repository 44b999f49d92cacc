// A reload leaves no trust decision of the config before it behind. Generated pairs of configs (A, B) differ in
// one to three of the places that decide on what the case's clients present: the api keys configured, their
// header and the key their fingerprints are made with; issuer A's audience, key set (k1's, or a rotated one),
// profile and algorithms, issuer B's presence, the key set issuer D's discovery document names (the IdP moved
// its keys: found at a reload as at a start), what an invalid token gets; the peers trusted for forwarded
// certificates and their format, what is sent upstream of a certificate; identity rules' name and team
// templates (on a token's claims, a SPIFFE ID, a certificate's subject, a header); the policy's mode; crawler
// range files; the signed agents' directory. Each case warms every cache of one long-lived proxy under A (the
// sequence sent twice over: answers are kept from their second sight), reloads it to B (its
// `config_reloaded` line: the primary's, after every worker applied it, under `workers`) and sends the sequence
// again, on the keep-alive connections and HTTP/2 sessions opened under A (plain, from a trusted peer, mTLS)
// and on new connections; a proxy freshly started with B gets the same sequence. Each request must get the
// same answer from both: status, every header the upstream was told (`x-nhi-*`, forwarded certificates,
// `x-forwarded-*`, client-address headers, the credentials and spellings let through), and its audit line's
// identity, decision, credentials' fingerprints, failures and anomalies.
//
// The built bundle runs both proxies: one is reloaded from case to case (A → B, then the next case's A), the
// other started afresh for each case's B. FC_SEED draws other cases, RELOAD_CASES=N more of them.
//
// Not compared, as they depend on history or on the process: `token_shared` (a token's clients counted over
// a window), timings, trace ids, the listener's own address. Deliberately kept across a reload, as
// docs/reference.md ("Config file") says, and so not drawn here: an exchange already admitted (a request in
// flight, an upgraded tunnel) keeps its decision until it ends; an established TLS connection keeps the client
// CA it was verified against (the CA files rotate apart from the config); signed agents' nonces (a signature
// seen before a reload is a replay after it: the signatures here carry none); the names the identity table
// tracks (a lowered cap turns newcomers away but evicts no one: checked at the end); an issuer's last good
// keys when its unchanged key source cannot be fetched at the reload (the key sets here are always up).
import { once } from 'node:events'
import { writeFile } from 'node:fs/promises'
import { createServer, Agent as HttpAgent } from 'node:http'
import { type ClientHttp2Session, connect as connectH2 } from 'node:http2'
import { Agent as HttpsAgent } from 'node:https'
import { type AddressInfo, connect as connectTcp } from 'node:net'
import { join } from 'node:path'
import { isDeepStrictEqual } from 'node:util'
import fc from 'fast-check'
import t, { type Test } from 'tap'
import { sha256Hex } from '../../src/util/fingerprint.ts'
import { eventually } from '../helpers/eventually.ts'
import { type Answer, exchange } from '../helpers/http.ts'
import { createSigningKey, type JwksServer, mintToken, startJwksServer } from '../helpers/jwks.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { createCA, createServerPki, issueCert, type KeyPair, mtlsListen } from '../helpers/pki.ts'
import { checkBothSides, PROPERTY_SEED } from '../helpers/property.ts'
import { scratchDir } from '../helpers/scratch.ts'
import { startTestSidecar, type TestSidecar } from '../helpers/sidecar.ts'
import { createAgentKey, signWithParams, startKeyDirectory } from '../helpers/signed-agent.ts'
import { startUpstream, type TestUpstream } from '../helpers/upstream.ts'

const CASES = Number(process.env['RELOAD_CASES'] ?? 6)

const ISSUER_A = 'https://idp-a.example'
const ISSUER_B = 'https://idp-b.example'
/** the Host every request names: the authority signed agents sign */
const AUTHORITY = 'svc.example'
/** the peer a config may trust for forwarded certificates; clients come from 127.0.0.1 */
const PROXY_PEER = '127.0.0.2'

const TOKENS = ['a', 'a-billing', 'a-k2', 'b', 'a-forged', 'a-expired', 'd-k1', 'd-k2', 'malformed'] as const
type TokenName = (typeof TOKENS)[number]
const API_KEYS = { deploy: 'key-of-deploy', ci: 'key-of-ci', unknown: 'key-of-nobody' } as const
type ApiKeyName = keyof typeof API_KEYS
const USER_AGENTS = [
  'curl/8.5.0',
  'billing-export/1.0',
  'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)',
] as const
const XFCCS = {
  orders:
    'Hash=6f1f0ae5c3e1f2b0b6d2e0c7f6a3b8e9d4c5a1b2c3d4e5f60718293a4b5c6d7e;Subject="CN=orders,O=acme";URI=spiffe://prod.example/ns/pay/sa/orders',
  admin: 'Hash=0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9;Subject="CN=admin,O=acme"',
} as const
type XfccName = keyof typeof XFCCS

interface Fixtures {
  upstream: TestUpstream
  jwks: JwksServer
  /** issuer A's key set after a rotation: k2 only */
  rotatedJwks: JwksServer
  /** issuer D's discovery document: its issuer, and which key set it names (set as a config applies) */
  discovery: { issuer: string; names: Knobs['discoveryD'] }
  /** a crawler range file that holds 127.0.0.0/8 */
  loopbackRanges: string
  directoryUrl: string
  /** a signed agent's Signature and Signature-Input, over AUTHORITY, without a nonce */
  signature: Record<string, string>
  tokens: Record<TokenName, string>
  /** the https listener's files and CA, and the workload's client certificate */
  server: KeyPair
  serverCa: string
  clientCa: KeyPair & { dir: string; name: string }
  workload: KeyPair
  fingerprintKeyFiles: { one: string; two: string }
}

async function makeFixtures(t: Test): Promise<Fixtures> {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const key = await createSigningKey('k1', 'ES256')
  const other = await createSigningKey('k1', 'ES256')
  const rotated = await createSigningKey('k2', 'ES256')
  const jwks = await startJwksServer([key])
  t.teardown(() => jwks.close())
  const rotatedJwks = await startJwksServer([rotated])
  t.teardown(() => rotatedJwks.close())
  // issuer D's discovery document, naming k1's key set or the rotated one's
  const discovery = { issuer: '', names: 'k1' as Knobs['discoveryD'] }
  const idp = createServer((_req, res) => {
    res.setHeader('content-type', 'application/json')
    const jwksUri = (discovery.names === 'k1' ? jwks : rotatedJwks).jwksUri
    res.end(JSON.stringify({ issuer: discovery.issuer, jwks_uri: jwksUri }))
  })
  idp.listen(0, '127.0.0.1')
  await once(idp, 'listening')
  t.teardown(() => new Promise((resolve) => idp.close(resolve)))
  discovery.issuer = `http://127.0.0.1:${(idp.address() as AddressInfo).port}`
  const workloadClaims = {
    sub: 'system:serviceaccount:pay:api',
    'kubernetes.io': { namespace: 'pay', serviceaccount: { name: 'api' } },
  }
  const mint = (signer = key, issuer = ISSUER_A, audience = 'orders', expiresIn = 3600) =>
    mintToken(signer, workloadClaims, { issuer, audience, expiresIn })
  const tokens: Record<TokenName, string> = {
    a: await mint(),
    'a-billing': await mint(key, ISSUER_A, 'billing'),
    'a-k2': await mint(rotated),
    b: await mint(key, ISSUER_B),
    'a-forged': await mint(other),
    'a-expired': await mint(key, ISSUER_A, 'orders', -3600),
    'd-k1': await mint(key, discovery.issuer),
    'd-k2': await mint(rotated, discovery.issuer),
    malformed: 'not.a-jwt',
  }
  const { ca, server } = await createServerPki()
  const clientCa = await createCA('reload-clients')
  const workload = await issueCert(clientCa, {
    subject: '/O=acme/CN=orders',
    uriSans: ['spiffe://prod.example/ns/pay/sa/orders'],
  })
  const dir = await scratchDir('reload-differential')
  const fingerprintKeyFiles = { one: join(dir, 'one.key'), two: join(dir, 'two.key') }
  await writeFile(fingerprintKeyFiles.one, 'one fingerprint key for both proxies\n')
  await writeFile(fingerprintKeyFiles.two, 'another fingerprint key for both\n')
  const ranges = createServer((_req, res) => {
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify({ prefixes: [{ ipv4Prefix: '127.0.0.0/8' }] }))
  })
  ranges.listen(0, '127.0.0.1')
  await once(ranges, 'listening')
  t.teardown(() => new Promise((resolve) => ranges.close(resolve)))
  const loopbackRanges = `http://127.0.0.1:${(ranges.address() as AddressInfo).port}/googlebot.json`
  const agent = await createAgentKey()
  const directory = await startKeyDirectory([agent])
  t.teardown(() => directory.close())
  const created = Math.floor(Date.now() / 1000)
  const signature = signWithParams(
    agent,
    `http://${AUTHORITY}/`,
    `;created=${created};expires=${created + 120};keyid="${agent.keyid}";tag="web-bot-auth"`,
  )
  return {
    upstream,
    jwks,
    rotatedJwks,
    discovery,
    loopbackRanges,
    directoryUrl: directory.url,
    signature,
    tokens,
    server,
    serverCa: ca.certPem,
    clientCa,
    workload,
    fingerprintKeyFiles,
  }
}

// ---- configs: the trust-relevant places a reload may change

/** each knob's values; a value listed twice is drawn twice as often */
const KNOB_VALUES = {
  apiKeys: ['both', 'deploy-only', 'none', 'deploy-renamed'],
  /** the file keying api key fingerprints */
  fingerprintKey: ['one', 'two'],
  audienceA: ['orders', 'orders', 'billing'],
  /** the key set issuer A's keys come from: k1's, or the rotated one holding k2 only */
  keysA: ['k1', 'k1', 'k2'],
  profileA: ['kubernetes', 'none'],
  /** the algorithms issuer A accepts: its tokens' ES256 among them, or RS256 only (its kept keys then fit none) */
  algorithmsA: ['default', 'default', 'RS256'],
  issuerB: [true, false],
  /**
   * the key set issuer D's discovery document names when a config applies (the IdP moved its keys, and a
   * reload or a start finds them), k1's or the rotated one's
   */
  discoveryD: ['k1', 'k2'],
  onInvalid: ['attribute', 'reject'],
  trusted: ['xfcc', 'rfc9440', 'none'],
  toUpstream: ['sanitize_set', 'forward', 'sanitize'],
  tokenRule: ['k8s:{ns}', 'ns/{ns}', 'none'],
  tokenTeam: ['{ns}', 'platform', 'none'],
  spiffeRule: ['{ns}/{sa}', 'spiffe-{sa}', 'none'],
  certRule: ['verified-only', 'any', 'none'],
  policy: ['observe', 'enforce', 'off'],
  /** crawler claims checked against a range file that holds loopback, the shipped ranges, or not at all */
  bots: ['loopback-ranges', 'shipped', 'off'],
  /** the header api keys are read from: the default, or another (x-api-key is then no credential) */
  apiKeyHeader: ['x-api-key', 'x-service-key'],
  /** a rule that names callers by the x-tenant header (its other spellings then stripped), or none */
  tenantRule: [false, false, true],
  /** the signed agents' key directory, under its name or another one, or none */
  agents: ['directory', 'renamed', 'none'],
} as const
type Knobs = { -readonly [K in keyof typeof KNOB_VALUES]: (typeof KNOB_VALUES)[K][number] }
const KNOB_NAMES = Object.keys(KNOB_VALUES) as (keyof Knobs)[]
const knobs = fc.record(
  Object.fromEntries(KNOB_NAMES.map((k) => [k, fc.constantFrom(...KNOB_VALUES[k])])),
) as fc.Arbitrary<Knobs>

function configOf(k: Knobs, fx: Fixtures, https: ReturnType<typeof mtlsListen>): Record<string, unknown> {
  const issuerA = {
    issuer: ISSUER_A,
    jwksUri: (k.keysA === 'k1' ? fx.jwks : fx.rotatedJwks).jwksUri,
    audiences: [k.audienceA],
    ...(k.profileA === 'none' ? {} : { profile: k.profileA }),
    ...(k.algorithmsA === 'default' ? {} : { algorithms: [k.algorithmsA] }),
  }
  const issuerB = { issuer: ISSUER_B, jwksUri: fx.jwks.jwksUri, audiences: 'any' }
  const keys = {
    both: [
      { name: 'deploy', kind: 'job', sha256: sha256Hex(API_KEYS.deploy) },
      { name: 'ci-runner', sha256: sha256Hex(API_KEYS.ci) },
    ],
    'deploy-only': [{ name: 'deploy', kind: 'job', sha256: sha256Hex(API_KEYS.deploy) }],
    none: [],
    'deploy-renamed': [
      { name: 'deployer', kind: 'service', team: 'ops', sha256: sha256Hex(API_KEYS.deploy) },
    ],
  }[k.apiKeys]
  const rules: Record<string, unknown>[] = []
  if (k.tokenRule !== 'none')
    rules.push({
      name: k.tokenRule,
      ...(k.tokenTeam === 'none' ? {} : { team: k.tokenTeam }),
      match: { jwt: { issuer: ISSUER_A, claims: { 'kubernetes.io.namespace': '{ns}' } } },
    })
  if (k.spiffeRule !== 'none')
    rules.push({
      name: k.spiffeRule,
      team: 'platform',
      match: { spiffe: 'spiffe://prod.example/ns/{ns}/sa/{sa}' },
    })
  if (k.certRule !== 'none')
    rules.push({
      name: 'cert:{cn}',
      kind: 'service',
      match: {
        cert: { subject: 'CN={cn},O=acme' },
        ...(k.certRule === 'verified-only' ? { verified: true } : {}),
      },
    })
  // the deploy key's rule, by whatever name the key has in this config
  const deployKey = keys.find((key) => key.sha256 === sha256Hex(API_KEYS.deploy))
  if (deployKey !== undefined)
    rules.push({ name: 'deploy-job', kind: 'job', team: 'platform', match: { apiKey: deployKey.name } })
  if (k.tenantRule) rules.push({ name: 'tenant/{tenant}', match: { header: { 'x-tenant': '{tenant}' } } })
  return {
    service: 'orders',
    listen: https,
    upstream: fx.upstream.url,
    audit: { output: 'stdout' },
    jwt: {
      issuers: [
        issuerA,
        ...(k.issuerB ? [issuerB] : []),
        { issuer: fx.discovery.issuer, discovery: true, audiences: ['orders'] },
      ],
      onInvalid: k.onInvalid,
    },
    forwardedClientCert: {
      trustedProxies: k.trusted === 'none' ? [] : [{ cidr: `${PROXY_PEER}/32`, format: k.trusted }],
      toUpstream: k.toUpstream,
    },
    apiKeys: {
      keys,
      header: k.apiKeyHeader,
      fingerprintKeyFile: fx.fingerprintKeyFiles[k.fingerprintKey],
    },
    signedAgents: {
      directories:
        k.agents === 'none'
          ? []
          : [
              k.agents === 'directory'
                ? { url: fx.directoryUrl, name: 'agent.example', kind: 'agent', operator: 'Example AI' }
                : { url: fx.directoryUrl, name: 'agent-two.example', kind: 'bot', operator: 'Other AI' },
            ],
      authorities: [AUTHORITY],
    },
    bots: {
      verify: {
        enabled: k.bots !== 'off',
        ...(k.bots === 'loopback-ranges'
          ? { ranges: [{ operator: 'Google', url: fx.loopbackRanges, products: ['googlebot'] }] }
          : {}),
      },
    },
    identities: rules,
    metrics: { routes: ['/echo/api/{svc}/**', '/echo/admin/**'] },
    policy: {
      mode: k.policy,
      rules: [
        { route: '/echo/admin/**', allow: [{ team: 'platform' }] },
        { route: '/echo/api/**', allow: [{ verified: true }] },
      ],
    },
  }
}

// ---- clients: what one presents

interface Client {
  /** from the peer a config may trust for forwarded certificates, or from 127.0.0.1 */
  viaProxy?: true
  /** over the https listener with the workload's client certificate */
  mtls?: true
  token?: TokenName
  apiKey?: ApiKeyName
  userAgent?: number
  xfcc?: XfccName
  /** the same certificate as an RFC 9440 Client-Cert header */
  clientCert?: true
  /** what a proxy in front says of the client's hop (X-Forwarded-For, X-Real-IP, X-Forwarded-Proto) */
  forwardedFor?: true
  /** the api key under the other header a config may read keys from */
  keyHeader?: 'x-service-key'
  /** X-Tenant under its name, another spelling of it, or both */
  tenant?: 'exact' | 'spelling' | 'both'
  /** signed by the agent of the key directory */
  signed?: true
  /** on the kept connections, sent over an HTTP/2 session (on new ones, over HTTP/1.1 as the others) */
  h2?: true
  path: '/echo/api/orders/1' | '/echo/admin/keys' | '/echo'
}

/**
 * What one kind of client presents. Alone, a credential that outlives a reload (an mTLS connection's
 * certificate, a user agent's classification) is the whole of what a cache of the config before could be
 * keyed by.
 */
const kindOfClient: fc.Arbitrary<Partial<Client>> = fc.oneof(
  // most often a token issuer A's config decides on: the audience, key set, rules and profile it is read with
  fc.record({
    token: fc.oneof({ weight: 3, arbitrary: fc.constant<TokenName>('a') }, fc.constantFrom(...TOKENS)),
  }),
  fc.record(
    {
      apiKey: fc.constantFrom<ApiKeyName>('deploy', 'ci', 'unknown'),
      keyHeader: fc.constant('x-service-key' as const),
    },
    { requiredKeys: ['apiKey'] },
  ),
  fc.record(
    {
      userAgent: fc.nat(USER_AGENTS.length - 1),
      viaProxy: fc.constant(true as const),
      forwardedFor: fc.constant(true as const),
    },
    { requiredKeys: ['userAgent'] },
  ),
  fc.record(
    {
      xfcc: fc.constantFrom<XfccName>('orders', 'admin'),
      viaProxy: fc.oneof({ weight: 3, arbitrary: fc.constant(true as const) }, fc.constant(undefined)),
      forwardedFor: fc.constant(true as const),
    },
    { requiredKeys: ['xfcc'] },
  ),
  fc.record({ clientCert: fc.constant(true as const), viaProxy: fc.constant(true as const) }),
  { weight: 2, arbitrary: fc.record({ mtls: fc.constant(true as const) }) },
  fc.record({ signed: fc.constant(true as const), userAgent: fc.constant(1) }, { requiredKeys: ['signed'] }),
  fc.record({ tenant: fc.constantFrom<Client['tenant']>('exact', 'spelling', 'both') }),
)

/** one kind of client, at times with a second kind's credentials besides */
const client: fc.Arbitrary<Client> = fc
  .tuple(
    kindOfClient,
    fc.option(kindOfClient, { nil: undefined, freq: 2 }),
    fc.constantFrom<Client['path']>('/echo/api/orders/1', '/echo/admin/keys', '/echo'),
    fc.oneof({ weight: 2, arbitrary: fc.constant(undefined) }, fc.constant(true as const)),
  )
  .map(([kind, besides, path, h2]) => {
    const out: Record<string, unknown> = h2 ? { path, h2 } : { path }
    for (const [k, v] of Object.entries({ ...besides, ...kind })) if (v !== undefined) out[k] = v
    return out as unknown as Client
  })
  .filter((c) => !(c.mtls && c.viaProxy))

/** the knobs that decide on what a client presents */
function knobsReading(c: Client): (keyof Knobs)[] {
  const out: (keyof Knobs)[] = ['policy']
  if (c.token !== undefined)
    out.push(
      'audienceA',
      'keysA',
      'profileA',
      'algorithmsA',
      'issuerB',
      'discoveryD',
      'onInvalid',
      'tokenRule',
      'tokenTeam',
    )
  if (c.apiKey !== undefined) out.push('apiKeys', 'fingerprintKey', 'apiKeyHeader')
  if (c.xfcc !== undefined || c.clientCert) out.push('trusted', 'toUpstream', 'spiffeRule', 'certRule')
  if (c.mtls) out.push('spiffeRule', 'certRule', 'toUpstream')
  if (c.userAgent !== undefined) out.push('bots')
  if (c.signed) out.push('agents')
  if (c.tenant !== undefined) out.push('tenantRule')
  return out
}

/**
 * A, B, and the clients: B is A with one to three of the knobs that decide on what the clients present set to
 * another value.
 */
const testCase = fc
  .tuple(
    knobs,
    fc.array(client, { minLength: 6, maxLength: 9 }),
    fc.array(fc.tuple(fc.nat(), fc.nat()), { minLength: 1, maxLength: 3 }),
  )
  .map(([a, clients, picks]) => {
    const read = [...new Set(clients.flatMap(knobsReading))]
    const b: Record<string, unknown> = { ...a }
    for (const [which, value] of picks) {
      const k = read[which % read.length]!
      const others = KNOB_VALUES[k].filter((v) => v !== a[k])
      b[k] = others[value % others.length]
    }
    return { configs: { a, b: b as Knobs }, clients }
  })
type Case = typeof testCase extends fc.Arbitrary<infer C> ? C : never

// ---- requests and what is compared of their answers

type Way = 'plain' | 'proxied' | 'mtls'

interface Connections {
  plain: HttpAgent
  proxied: HttpAgent
  mtls: HttpsAgent
  /** one HTTP/2 session each way, opened with its first request */
  h2: Map<Way, ClientHttp2Session>
}

/** one keep-alive connection of each kind: a connection opened before a reload carries requests after it */
function keepAliveConnections(fx: Fixtures): Connections {
  const options = { keepAlive: true, maxSockets: 1 }
  return {
    plain: new HttpAgent(options),
    proxied: new HttpAgent({ ...options, localAddress: PROXY_PEER }),
    mtls: new HttpsAgent({
      ...options,
      ca: fx.serverCa,
      cert: fx.workload.certPem,
      key: fx.workload.keyPem,
      servername: 'localhost',
    }),
    h2: new Map(),
  }
}

const wayOf = (c: Client): Way => (c.mtls ? 'mtls' : c.viaProxy ? 'proxied' : 'plain')

function h2Session(proxy: TestSidecar, way: Way, fx: Fixtures): ClientHttp2Session {
  const session =
    way === 'mtls'
      ? connectH2(`https://127.0.0.1:${proxy.httpsAddress!.port}`, {
          ca: fx.serverCa,
          cert: fx.workload.certPem,
          key: fx.workload.keyPem,
          servername: 'localhost',
        })
      : connectH2(`http://127.0.0.1:${proxy.proxyAddress.port}`, {
          // from the peer a config may trust, as the proxied HTTP/1.1 connections come
          createConnection: () =>
            connectTcp({
              host: '127.0.0.1',
              port: proxy.proxyAddress.port,
              ...(way === 'proxied' ? { localAddress: PROXY_PEER } : {}),
            }),
        })
  session.on('error', () => {})
  return session
}

/** one request on an HTTP/2 session: the Host is its :authority */
async function h2Exchange(session: ClientHttp2Session, path: string, headers: Record<string, string>) {
  const { host, ...rest } = headers
  const stream = session.request({ ':path': path, ':authority': host ?? AUTHORITY, ...rest })
  const [head] = (await once(stream, 'response')) as [Record<string, string | number>]
  let body = ''
  stream.setEncoding('utf8')
  stream.on('data', (c: string) => {
    body += c
  })
  await once(stream, 'end')
  const { ':status': status, ...responseHeaders } = head
  return { status: Number(status), headers: responseHeaders as Answer['headers'], body }
}

/** the socket each keep-alive connection holds between requests, and the HTTP/2 sessions still open */
function heldSockets(c: Connections): unknown[] {
  const sockets = [c.plain, c.proxied, c.mtls].map((agent) => Object.values(agent.freeSockets).flat()[0])
  const sessions = (['plain', 'proxied', 'mtls'] as const).map((way) => {
    const session = c.h2.get(way)
    return session === undefined || session.closed || session.destroyed ? undefined : session
  })
  return [...sockets, ...sessions]
}

function closeConnections(c: Connections): void {
  c.plain.destroy()
  c.proxied.destroy()
  c.mtls.destroy()
  for (const session of c.h2.values()) session.destroy()
}

function headersOf(c: Client, fx: Fixtures, requestId: string): Record<string, string> {
  const h: Record<string, string> = { host: AUTHORITY, 'x-request-id': requestId }
  if (c.token !== undefined) h['authorization'] = `Bearer ${fx.tokens[c.token]}`
  if (c.apiKey !== undefined) h[c.keyHeader ?? 'x-api-key'] = API_KEYS[c.apiKey]
  if (c.tenant !== undefined && c.tenant !== 'spelling') h['x-tenant'] = 'acme'
  if (c.tenant !== undefined && c.tenant !== 'exact') h['x_tenant'] = 'evil'
  if (c.signed) Object.assign(h, fx.signature)
  if (c.userAgent !== undefined) h['user-agent'] = USER_AGENTS[c.userAgent]!
  if (c.xfcc !== undefined) h['x-forwarded-client-cert'] = XFCCS[c.xfcc]
  if (c.clientCert) h['client-cert'] = `:${derOf(fx.workload.certPem).toString('base64')}:`
  if (c.forwardedFor) {
    h['x-forwarded-for'] = '203.0.113.9'
    h['x-real-ip'] = '203.0.113.9'
    h['x-forwarded-proto'] = 'https'
  }
  return h
}

function derOf(pem: string): Buffer {
  return Buffer.from(pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64')
}

/** sends `c`'s request to `proxy`, on the given keep-alive connection or on a new one */
function send(
  proxy: TestSidecar,
  c: Client,
  fx: Fixtures,
  requestId: string,
  connections: Connections | undefined,
): Promise<Answer> {
  const headers = headersOf(c, fx, requestId)
  if (connections && c.h2) {
    const way = wayOf(c)
    let session = connections.h2.get(way)
    if (session === undefined) {
      session = h2Session(proxy, way, fx)
      connections.h2.set(way, session)
    }
    return h2Exchange(session, c.path, headers)
  }
  if (c.mtls)
    return exchange({
      https: true,
      host: '127.0.0.1',
      port: proxy.httpsAddress!.port,
      path: c.path,
      headers,
      ...(connections
        ? { agent: connections.mtls }
        : { ca: fx.serverCa, cert: fx.workload.certPem, key: fx.workload.keyPem, servername: 'localhost' }),
    })
  return exchange({
    host: '127.0.0.1',
    port: proxy.proxyAddress.port,
    path: c.path,
    headers,
    ...(connections
      ? { agent: c.viaProxy ? connections.proxied : connections.plain }
      : c.viaProxy
        ? { localAddress: PROXY_PEER }
        : {}),
  })
}

/** what the upstream is told that is no decision: the listener's own address, the trace, the request's id */
const NOT_COMPARED = new Set(['host', 'x-forwarded-host', 'traceparent', 'tracestate', 'x-request-id'])

/** what the client and the upstream were told */
function answered(a: Answer): Record<string, unknown> {
  if (a.status !== 200 || a.headers['content-type'] !== 'application/json')
    return { status: a.status, body: a.body, 'www-authenticate': a.headers['www-authenticate'] }
  const { headers } = JSON.parse(a.body) as { headers: Record<string, string | undefined> }
  const told: Record<string, unknown> = { status: a.status }
  for (const name of Object.keys(headers).sort()) if (!NOT_COMPARED.has(name)) told[name] = headers[name]
  return told
}

/** the audit line's fields that are the request's attribution and decision */
const AUDITED = [
  'identity',
  'kind',
  'source',
  'verified',
  'rule',
  'team',
  'zone',
  'fingerprints',
  'iss',
  'sub',
  'jti',
  'cert_subject',
  'client_address',
  'peer_address',
  'route',
  'status',
  'decision',
  'policy_rule',
  'failures',
  'anomalies',
] as const

function auditLineOf(proxy: TestSidecar, requestId: string): Record<string, unknown> | undefined {
  const at = proxy.process.stdout().indexOf(`"request_id":"${requestId}"`)
  if (at < 0) return undefined
  const start = proxy.process.stdout().lastIndexOf('\n', at) + 1
  const end = proxy.process.stdout().indexOf('\n', at)
  if (end < 0) return undefined
  const line = JSON.parse(proxy.process.stdout().slice(start, end)) as Record<string, unknown>
  const out: Record<string, unknown> = {}
  for (const k of AUDITED) if (line[k] !== undefined) out[k] = line[k]
  if (Array.isArray(out['anomalies'])) {
    // a token's clients counted over a window: history by design
    out['anomalies'] = (out['anomalies'] as string[]).filter((a) => a !== 'token_shared')
    if ((out['anomalies'] as string[]).length === 0) delete out['anomalies']
  }
  return out
}

interface Observed {
  answer: Record<string, unknown>
  audit: Record<string, unknown>
}

/** the sequence to `proxy`, every request on the keep-alive connections and then on new ones */
async function runSequence(
  proxy: TestSidecar,
  clients: readonly Client[],
  fx: Fixtures,
  label: string,
  connections: Connections,
): Promise<Observed[]> {
  const ids: string[] = []
  const answers: Record<string, unknown>[] = []
  for (const [fresh, conns] of [
    [false, connections],
    [true, undefined],
  ] as const) {
    for (const [i, c] of clients.entries()) {
      const id = `${label}-${fresh ? 'new' : 'kept'}-${i}`
      ids.push(id)
      answers.push(answered(await send(proxy, c, fx, id, conns)))
    }
  }
  const audits = await eventually(
    () => {
      const lines = ids.map((id) => auditLineOf(proxy, id))
      return lines.every((l) => l !== undefined) ? (lines as Record<string, unknown>[]) : undefined
    },
    { what: `the audit lines of ${label}` },
  )
  return answers.map((answer, i) => ({ answer, audit: audits[i]! }))
}

// ---- the test

/** the fields in which the reloaded proxy's answer differs from the fresh one's */
function differences(reloaded: Observed, fresh: Observed): string {
  const out: string[] = []
  for (const part of ['answer', 'audit'] as const) {
    const keys = new Set([...Object.keys(reloaded[part]), ...Object.keys(fresh[part])])
    for (const k of keys) {
      if (isDeepStrictEqual(reloaded[part][k], fresh[part][k])) continue
      out.push(
        `  ${part}.${k}: reloaded ${JSON.stringify(reloaded[part][k])}, fresh ${JSON.stringify(fresh[part][k])}`,
      )
    }
  }
  return out.join('\n')
}

interface Tally {
  requests: number
  keptConnections: number
  /** requests by source and verified, by status, by failure and anomaly */
  outcomes: Map<string, number>
}

const newTally = (): Tally => ({ requests: 0, keptConnections: 0, outcomes: new Map() })

function count(tally: Tally, o: Observed): void {
  tally.requests++
  const add = (k: string) => tally.outcomes.set(k, (tally.outcomes.get(k) ?? 0) + 1)
  add(`${o.audit['source']} ${o.audit['verified'] ? 'verified' : 'unverified'}`)
  add(`status ${o.audit['status']}`)
  const failures = (o.audit['failures'] as { source: string; reason: string }[] | undefined) ?? []
  for (const f of failures) add(`${f.source} ${f.reason}`)
  // a credential that verified behind a stronger one
  for (const source of Object.keys((o.audit['fingerprints'] as Record<string, string> | undefined) ?? {}))
    if (!failures.some((f) => f.source === source)) add(`${source} presented and verified`)
  for (const a of (o.audit['anomalies'] as string[] | undefined) ?? []) add(a)
}

interface Run {
  fx: Fixtures
  https: ReturnType<typeof mtlsListen>
  /** settings both proxies run with besides the knobs' (`workers`) */
  extra: Record<string, unknown>
  disagreements: string[]
  tally: Tally
}

/** what a proxy is started or reloaded with: the config, and issuer D's discovery document as of then */
function configFor(run: Run, k: Knobs): Record<string, unknown> {
  run.fx.discovery.names = k.discoveryD
  return { ...configOf(k, run.fx, run.https), ...run.extra }
}

/**
 * One case on `reloaded` (which runs A when it is called): the sequence warms every cache under A, B is
 * applied, and what the sequence then gets is compared with what a proxy started with B gets.
 */
async function runCase(
  t: Test,
  run: Run,
  reloaded: TestSidecar,
  label: string,
  { configs, clients }: Case,
): Promise<void> {
  const connections = keepAliveConnections(run.fx)
  try {
    // warm: every answer is kept from its second sight on
    await runSequence(reloaded, clients, run.fx, `${label}-a1`, connections)
    await runSequence(reloaded, clients, run.fx, `${label}-a2`, connections)
    const openedUnderA = heldSockets(connections)
    t.equal(await reloaded.reload(configFor(run, configs.b)), true, `${label}: B applies`)
    const got = await runSequence(reloaded, clients, run.fx, `${label}-b`, connections)
    const held = heldSockets(connections)
    for (const [k, socket] of openedUnderA.entries())
      if (socket !== undefined) {
        run.tally.keptConnections++
        if (held[k] !== socket) run.disagreements.push(`${label}: keep-alive connection ${k} was not kept`)
      }
    const fresh = await startTestSidecar(t, configFor(run, configs.b))
    const freshConnections = keepAliveConnections(run.fx)
    let want: Observed[]
    try {
      want = await runSequence(fresh, clients, run.fx, `${label}-fresh`, freshConnections)
    } finally {
      closeConnections(freshConnections)
      await fresh.close()
    }
    for (const [i, g] of got.entries()) {
      count(run.tally, g)
      if (isDeepStrictEqual(g, want[i])) continue
      run.disagreements.push(
        `${label} request ${i} (${i < clients.length ? 'kept connection' : 'new connection'})\n` +
          `  A ${JSON.stringify(configs.a)}\n  B ${JSON.stringify(configs.b)}\n` +
          `  client ${JSON.stringify(clients[i % clients.length])}\n${differences(g, want[i]!)}`,
      )
    }
  } finally {
    closeConnections(connections)
  }
}

const changed = ({ configs: { a, b } }: Case) => KNOB_NAMES.filter((k) => a[k] !== b[k])

t.test('the generator reaches the cases that matter', async (t) => {
  checkBothSides(
    t,
    testCase,
    (c) => changed(c).length > 1,
    [600, 1990],
    'cases where B changes two places or three',
  )
  checkBothSides(
    t,
    testCase,
    (c) =>
      c.clients.some(
        (cl) =>
          Object.keys(cl)
            .filter((k) => k !== 'path' && k !== 'h2')
            .join() === 'mtls',
      ),
    [400, 1900],
    'cases with a client that presents its mTLS certificate alone',
  )
  for (const knob of KNOB_NAMES)
    checkBothSides(
      t,
      testCase,
      (c) => changed(c).includes(knob) && c.clients.some((cl) => knobsReading(cl).includes(knob)),
      [100, 1000],
      `cases where B changes ${knob}, read for one of its clients`,
    )
})

t.test('after a reload from A to B the proxy decides every request as one started with B', async (t) => {
  const started = Date.now()
  const fx = await makeFixtures(t)
  const run: Run = {
    fx,
    https: mtlsListen(fx.server, fx.clientCa),
    extra: {},
    disagreements: [],
    tally: newTally(),
  }
  const cases = fc.sample(testCase, { numRuns: CASES, seed: PROPERTY_SEED })
  const reloaded = await startTestSidecar(t, configFor(run, cases[0]!.configs.a))
  for (const [n, c] of cases.entries()) {
    if (n > 0) t.equal(await reloaded.reload(configFor(run, c.configs.a)), true, `case ${n}: A applies`)
    await runCase(t, run, reloaded, `case${n}`, c)
  }
  const { disagreements, tally } = run
  t.same(disagreements.slice(0, 5), [], `no disagreement (of ${disagreements.length})`)
  t.comment(
    `${CASES} cases (seed ${PROPERTY_SEED}), ${tally.requests} requests compared in ${Date.now() - started} ms: ` +
      `${tally.keptConnections} connections kept across a reload, ${JSON.stringify(Object.fromEntries(tally.outcomes))}`,
  )
  t.ok(tally.keptConnections >= CASES, 'connections opened before a reload carried requests after it')
})

/** a config that believes much, and one that tightens every place of the catalogue at once */
const LOOSE: Knobs = {
  apiKeys: 'both',
  fingerprintKey: 'one',
  audienceA: 'orders',
  keysA: 'k1',
  profileA: 'kubernetes',
  algorithmsA: 'default',
  issuerB: true,
  discoveryD: 'k1',
  onInvalid: 'attribute',
  trusted: 'xfcc',
  toUpstream: 'forward',
  tokenRule: 'k8s:{ns}',
  tokenTeam: '{ns}',
  spiffeRule: '{ns}/{sa}',
  certRule: 'any',
  policy: 'observe',
  bots: 'loopback-ranges',
  apiKeyHeader: 'x-api-key',
  tenantRule: true,
  agents: 'directory',
}
const TIGHT: Knobs = {
  apiKeys: 'deploy-renamed',
  fingerprintKey: 'two',
  audienceA: 'orders',
  keysA: 'k1',
  profileA: 'none',
  algorithmsA: 'default',
  issuerB: false,
  discoveryD: 'k2',
  onInvalid: 'reject',
  trusted: 'none',
  toUpstream: 'sanitize',
  tokenRule: 'ns/{ns}',
  tokenTeam: 'platform',
  spiffeRule: 'spiffe-{sa}',
  certRule: 'verified-only',
  policy: 'enforce',
  bots: 'off',
  apiKeyHeader: 'x-service-key',
  tenantRule: false,
  agents: 'renamed',
}
/** every credential of the pool, each on its own and over each way in */
const EVERY_CLIENT: Client[] = [
  { token: 'a', path: '/echo/admin/keys' },
  { token: 'a', mtls: true, path: '/echo/api/orders/1' },
  { mtls: true, path: '/echo/admin/keys' },
  { token: 'b', path: '/echo/api/orders/1' },
  { token: 'a-billing', path: '/echo' },
  { token: 'd-k1', path: '/echo/api/orders/1' },
  { token: 'd-k2', path: '/echo/api/orders/1' },
  { apiKey: 'deploy', path: '/echo/admin/keys' },
  { apiKey: 'ci', path: '/echo/api/orders/1' },
  { viaProxy: true, xfcc: 'orders', forwardedFor: true, path: '/echo/api/orders/1' },
  { viaProxy: true, clientCert: true, path: '/echo/admin/keys' },
  { userAgent: 2, viaProxy: true, forwardedFor: true, path: '/echo' },
  { userAgent: 2, path: '/echo' },
  { tenant: 'both', path: '/echo/api/orders/1' },
  { signed: true, userAgent: 1, path: '/echo/api/orders/1' },
  { apiKey: 'deploy', keyHeader: 'x-service-key', path: '/echo/admin/keys' },
]

t.test('workers: 2, a reload that tightens every place at once reaches every worker', async (t) => {
  const fx = await makeFixtures(t)
  const run: Run = {
    fx,
    https: mtlsListen(fx.server, fx.clientCa),
    extra: { workers: 2 },
    disagreements: [],
    tally: newTally(),
  }
  const reloaded = await startTestSidecar(t, configFor(run, LOOSE))
  await runCase(t, run, reloaded, 'tightened', { configs: { a: LOOSE, b: TIGHT }, clients: EVERY_CLIENT })
  t.same(run.disagreements.slice(0, 5), [], `no disagreement (of ${run.disagreements.length})`)
  t.ok(run.tally.keptConnections >= 2, 'connections opened before the reload carried requests after it')
})

// The identity table is the process's (the pod's), not the config's: its names outlive a reload, which the
// reference documents ("a name already tracked keeps its series when the cap is lowered"). What a lowered
// `metrics.maxIdentities` must still do from the very next request is turn newcomers away, in one process and
// in the pod's merge of its workers' tables alike.
for (const workers of [1, 2]) {
  t.test(`workers: ${workers}, a lowered maxIdentities turns the next new identity away`, async (t) => {
    const upstream = await startUpstream()
    t.teardown(() => upstream.close())
    const names = ['key-1', 'key-2', 'key-3', 'key-4', 'key-5']
    const config = (maxIdentities: number) => ({
      upstream: upstream.url,
      workers,
      apiKeys: { keys: names.map((name) => ({ name, sha256: sha256Hex(`secret-of-${name}`) })) },
      metrics: { maxIdentities },
    })
    const proxy = await startTestSidecar(t, config(10))
    const send = async (name: string) => {
      const res = await exchange({
        host: '127.0.0.1',
        port: proxy.proxyAddress.port,
        path: '/',
        headers: { 'x-api-key': `secret-of-${name}` },
      })
      t.equal(res.status, 200, `${name} is served`)
    }
    const ownSeries = async () =>
      new Set(
        (await scrape(proxy.adminUrl))
          .filter((s) => s.name === 'nhi_requests_total' && s.labels['identity'] !== '__overflow__')
          .map((s) => s.labels['identity']),
      )
    for (const name of names.slice(0, 3)) await send(name)
    t.same([...(await ownSeries())].sort(), ['key-1', 'key-2', 'key-3'], 'three names under the first cap')
    t.equal(await proxy.reload(config(2)), true, 'the lower cap applies')
    for (const name of names.slice(3)) await send(name)
    const after = await scrape(proxy.adminUrl)
    t.same(
      [...(await ownSeries())].sort(),
      ['key-1', 'key-2', 'key-3'],
      'no newcomer got a series of its own; the names tracked before keep theirs',
    )
    t.equal(
      metricValue(after, 'nhi_requests_total', { identity: '__overflow__', source: 'apikey' }),
      2,
      "the newcomers' requests are __overflow__",
    )
  })
}
