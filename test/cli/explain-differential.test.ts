// `nhi-proxy explain` and `nhi-proxy test` must predict what the running proxy does. Operators debug their
// identity rules with explain and pin them with rule tests: a tool that answers otherwise than the sidecar for
// the same request and config lets a rule ship that does something else in production.
//
// A generated config (identity rules of every condition kind: jwt claims with captures, issuer, spiffe and
// certificate patterns, api keys, user agents, headers, paths, methods, the client address, templates for
// name, team and zone; a policy of routes, methods and allow lists in one of its modes; tokens attributed or
// rejected when invalid) runs in the built bundle in front of a recording upstream, with an mTLS listener
// beside the plain one. Generated requests, their credentials drawn from small pools so that the same and
// nearly the same credentials come again (bearer tokens valid, expired, for another audience, forged, of an
// issuer no config names, malformed; api keys known and unknown; user agents of crawlers, AI agents, browsers
// and libraries, from a crawler's published ranges behind the front proxy or not; XFCC from the trusted front
// proxy, whole or in part; a client certificate over mTLS; headers spelled otherwise or sent twice), go
// (1) through the proxy, whose audit line, status and upstream headers say what it did, (2) through
// `nhi-proxy explain --json` with the same config and the same request (headers, method, path, peer, the
// client certificate's file), and (3) into a `nhi-proxy test` file expecting what the proxy did, which must
// pass, and must fail once one expectation is changed. Identity name, kind, source, verified, rule, team,
// zone, the credential failures, the policy decision and rule, and the status must agree.
//
// What the tools cannot know, and so is not compared:
// - the api key's fingerprint: keyed by each process's own random key without apiKeys.fingerprintKeyFile;
// - anomalies of history (token_shared counts a token's clients over a window) and timing;
// - in the rule-test file, a token that fails verification (expired, another audience, forged, malformed):
//   its credentials are verified evidence by design, so such a request has no case there (a token of an
//   issuer the config does not name does: the tool fails it as wrong_issuer, as the proxy does).
// - in the rule-test file, a request with a client certificate over mTLS and a forwarded one: a case has one
//   certificate; and a request the proxy refuses before rules and policy (400), which the tool fails by design
//   (explain says it is refused, with the status, and that is compared).
// The peer is known: every request comes from 127.0.0.1, which explain is told (`--remote-addr`).
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import fc from 'fast-check'
import { decodeJwt } from 'jose'
import t, { type Test } from 'tap'
import { stringify } from 'yaml'
import { pemCertificates } from '../../src/identity/certificate.ts'
import { sha256Hex } from '../../src/util/fingerprint.ts'
import { startBin } from '../helpers/bin.ts'
import { eventually } from '../helpers/eventually.ts'
import { exchange } from '../helpers/http.ts'
import { createSigningKey, mintToken, startJwksServer } from '../helpers/jwks.ts'
import { mapLimit } from '../helpers/limit.ts'
import { createCA, issueCert, type KeyPair } from '../helpers/pki.ts'
import { PROPERTY_SEED } from '../helpers/property.ts'
import { scratchDirSync } from '../helpers/scratch.ts'
import { runCli } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

/** configs (one proxy each) and requests per config: every request is one explain process */
const CONFIGS = 2
const REQUESTS = 18
/** explain processes at once: the machine has two cores, shared */
const EXPLAINS_AT_ONCE = 3

const ISSUER_A = 'https://idp-a.example'
const ISSUER_UNNAMED = 'https://idp-c.example'
const AUTHORITY = 'orders.svc.example'

// ---- credentials

const TOKENS = [
  /** a cluster workload's token */
  'pay-api',
  /** the same but for its service account */
  'pay-worker',
  /** a CI job's token, in the deployers group */
  'ci-web',
  /** pay-api's claims, expired */
  'pay-api-expired',
  /** pay-api's claims, for another audience */
  'pay-api-audience',
  /** pay-api's claims, signed by a key the issuer never published under its kid */
  'pay-api-forged',
  /** pay-api's claims from an issuer no config names */
  'unnamed-issuer',
  'malformed',
] as const
type TokenName = (typeof TOKENS)[number]
/** tokens the rule-test format can give (verified evidence, or the wrong issuer it fails) */
const TESTABLE_TOKENS: ReadonlySet<TokenName> = new Set(['pay-api', 'pay-worker', 'ci-web', 'unnamed-issuer'])

const API_KEYS = { deploy: 'key-of-deploy', ci: 'key-of-ci', unknown: 'key-of-nobody' } as const
type ApiKeyName = keyof typeof API_KEYS
/** the configured key each one is, for the rule-test file (the unknown one names no configured key) */
const API_KEY_NAMES: Record<ApiKeyName, string> = { deploy: 'deploy', ci: 'ci-runner', unknown: 'nobody' }

const USER_AGENTS = [
  'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)',
  'Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko); compatible; GPTBot/1.2; +https://openai.com/gptbot',
  'ChatGPT-User/1.0',
  'Mozilla/5.0 (compatible; ClaudeBot/1.0; +claudebot@anthropic.com)',
  'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36',
  'Mozilla/5.0 (Macintosh; Intel Mac OS X 14.5; rv:127.0) Gecko/20100101 Firefox/127.0',
  'curl/8.5.0',
  'python-requests/2.31.0',
  'billing-export/1.0',
]

const CERTS = ['workload', 'gateway'] as const
type CertName = (typeof CERTS)[number]

/** what the front proxy forwards of a certificate in XFCC (Hash always) */
const XFCC_VIEWS = ['hash', 'hash+subject', 'hash+uri', 'all-fields'] as const
type XfccView = (typeof XFCC_VIEWS)[number]

interface Certificate {
  pair: KeyPair
  sha256: string
  /** as Envoy writes it (RFC 4514 order) */
  subject4514: string
  uris: string[]
  dns: string[]
}

interface Fixtures {
  jwksUri: string
  tokens: Record<TokenName, string>
  certs: Record<CertName, Certificate>
  serverCaPem: string
  listener: { cert: string; key: string; clientCA: string }
}

async function makeFixtures(t: Test): Promise<Fixtures> {
  const key = await createSigningKey('k1', 'ES256')
  const forger = await createSigningKey('k1', 'ES256')
  const jwks = await startJwksServer([key])
  t.teardown(() => jwks.close())
  const workload = (ns: string, sa: string) => ({
    sub: `system:serviceaccount:${ns}:${sa}`,
    'kubernetes.io': { namespace: ns, serviceaccount: { name: sa } },
  })
  const mint = (
    claims: Record<string, unknown>,
    opts: { issuer?: string; expiresIn?: number; audience?: string } = {},
  ) =>
    mintToken(key, claims, {
      issuer: opts.issuer ?? ISSUER_A,
      audience: opts.audience ?? 'orders',
      expiresIn: opts.expiresIn ?? 3600,
    })
  const tokens: Record<TokenName, string> = {
    'pay-api': await mint(workload('pay', 'api')),
    'pay-worker': await mint(workload('pay', 'worker')),
    'ci-web': await mint({
      sub: 'repo:acme/web:ref:refs/heads/main',
      repository: 'acme/web',
      groups: ['ci', 'deployers'],
    }),
    'pay-api-expired': await mint(workload('pay', 'api'), { expiresIn: -600 }),
    'pay-api-audience': await mint(workload('pay', 'api'), { audience: 'billing' }),
    'pay-api-forged': await mintToken(forger, workload('pay', 'api'), {
      issuer: ISSUER_A,
      audience: 'orders',
    }),
    'unnamed-issuer': await mint(workload('pay', 'api'), { issuer: ISSUER_UNNAMED }),
    malformed: 'not.a-jwt',
  }

  const root = await createCA('explain-differential-root')
  const serverCa = await createCA('explain-differential-server-ca')
  const [server, workloadPair, gatewayPair] = await Promise.all([
    issueCert(serverCa, { cn: 'localhost', dnsSans: ['localhost'], server: true }),
    issueCert(root, {
      subject: '/O=acme/CN=orders',
      uriSans: ['spiffe://prod.example/ns/pay/sa/api'],
      dnsSans: ['orders.acme.example'],
    }),
    issueCert(root, { subject: '/O=acme/CN=gateway', dnsSans: ['gateway.acme.example'] }),
  ])
  const certificate = (pair: KeyPair, subject4514: string, uris: string[], dns: string[]): Certificate => ({
    pair,
    sha256: sha256Hex(pemCertificates(pair.certPem)[0]!.raw),
    subject4514,
    uris,
    dns,
  })
  return {
    jwksUri: jwks.jwksUri,
    tokens,
    certs: {
      workload: certificate(
        workloadPair,
        'CN=orders,O=acme',
        ['spiffe://prod.example/ns/pay/sa/api'],
        ['orders.acme.example'],
      ),
      gateway: certificate(gatewayPair, 'CN=gateway,O=acme', [], ['gateway.acme.example']),
    },
    serverCaPem: serverCa.certPem,
    listener: { cert: server.certFile, key: server.keyFile, clientCA: root.certFile },
  }
}

// ---- configs

const RULES = [
  {
    rule: 'k8s-workloads',
    name: '{ns}/{sa}',
    kind: 'service',
    team: '{ns}',
    zone: 'cluster',
    match: {
      jwt: {
        issuer: ISSUER_A,
        claims: { 'kubernetes.io.namespace': '{ns}', 'kubernetes.io.serviceaccount.name': '{sa}' },
      },
    },
  },
  {
    rule: 'ci-deployers',
    name: 'ci/{repo}',
    kind: 'job',
    team: 'platform',
    match: {
      jwt: { issuer: ISSUER_A, claims: { repository: 'acme/{repo}', groups: 'deployers' } },
      method: ['POST', 'PUT'],
    },
  },
  {
    rule: 'token-subjects',
    name: 'sub:{sub}',
    match: { jwt: { issuer: ISSUER_A, claims: { sub: '{sub}' } } },
  },
  {
    rule: 'mesh',
    name: 'mesh/{ns}/{sa}',
    team: 'platform',
    zone: 'mesh',
    match: { spiffe: 'spiffe://prod.example/ns/{ns}/sa/{sa}' },
  },
  { rule: 'acme-certs', name: 'cert:{cn}', kind: 'service', match: { cert: { subject: 'CN={cn},O=acme' } } },
  {
    rule: 'acme-sans',
    name: 'san-holder',
    team: 'edge',
    match: { cert: { san: '*.acme.example' }, verified: true },
  },
  {
    rule: 'forwarded-certs',
    name: 'edge/{cn}',
    zone: 'edge',
    match: { source: 'xfcc', cert: { subject: '{cn}' } },
  },
  { rule: 'deployer-key', name: 'deployer', kind: 'job', team: 'platform', match: { apiKey: 'deploy' } },
  {
    rule: 'tenants',
    name: 'tenant/{tenant}',
    team: '{tenant}',
    zone: 'partner',
    match: { header: { 'x-tenant': '{tenant}' }, path: '/api/**' },
  },
  { rule: 'ai-agents', name: 'agent/{agent}', kind: 'agent', match: { userAgent: 'builtin:agents' } },
  { rule: 'crawlers', name: 'crawler/{bot}', match: { userAgent: 'builtin:bots' } },
  {
    rule: 'browsers',
    name: 'browser/{product}',
    kind: 'human',
    match: { userAgent: 'builtin:browsers', method: 'GET' },
  },
  { rule: 'local-tools', name: 'tool/{tool}', match: { userAgent: '{tool}/*', remoteAddr: ['127.0.0.0/8'] } },
  {
    rule: 'admin-readers',
    name: 'admin-reader',
    team: 'platform',
    match: { path: '/admin/**', method: 'GET', verified: true },
  },
  { rule: 'unverified-tokens', name: 'unverified-token', match: { source: 'jwt', verified: false } },
] as const

const knobs = fc.record({
  policy: fc.constantFrom('observe', 'enforce', 'off'),
  onInvalid: fc.constantFrom('attribute', 'reject'),
  profile: fc.constantFrom('kubernetes', undefined),
  rules: fc.shuffledSubarray([...RULES.keys()], { minLength: 4 }),
})
type Knobs = typeof knobs extends fc.Arbitrary<infer K> ? K : never

function configOf(k: Knobs, fx: Fixtures, auditFile: string): Record<string, unknown> {
  const issuer = { issuer: ISSUER_A, jwksUri: fx.jwksUri, audiences: ['orders'] }
  return {
    service: 'orders',
    listen: {
      http: '127.0.0.1:0',
      https: { address: '127.0.0.1:0', ...fx.listener },
    },
    audit: { output: auditFile },
    jwt: {
      issuers: [k.profile === undefined ? issuer : { ...issuer, profile: k.profile }],
      onInvalid: k.onInvalid,
      // verified on the event loop: no worker thread to start in each explain process
      verifyWorkers: 0,
    },
    // the front proxy is this host: every request comes from 127.0.0.1
    forwardedClientCert: { trustedProxies: [{ cidr: '127.0.0.1/32', format: 'xfcc' }] },
    apiKeys: {
      keys: [
        { name: 'deploy', kind: 'job', sha256: sha256Hex(API_KEYS.deploy) },
        { name: 'ci-runner', team: 'ci', sha256: sha256Hex(API_KEYS.ci) },
      ],
    },
    // the shipped snapshot of the crawlers' ranges, nothing fetched
    bots: { verify: { ranges: [] } },
    identities: k.rules.map((i) => RULES[i]),
    metrics: { routes: ['/api/orders/{id}', '/admin/**'] },
    policy: {
      mode: k.policy,
      rules: [
        { name: 'admin', route: '/admin/**', allow: [{ team: 'platform' }, { identity: 'admin-reader' }] },
        {
          name: 'orders-write',
          route: '/api/orders/**',
          methods: ['POST', 'PUT', 'DELETE'],
          allow: [{ kind: 'job' }, { kind: 'service', verified: true }],
        },
        { name: 'api', route: '/api/**', allow: [{ verified: true }, { kind: 'bot' }, { source: 'apikey' }] },
      ],
    },
  }
}

// ---- requests

interface RequestSpec {
  method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE'
  path: string
  token?: TokenName
  /**
   * how explain is given the token: `--token` (unless said), or the Authorization header as the proxy gets it,
   * its scheme written `Bearer` or `bearer`
   */
  tokenAs?: 'header' | 'lower-case'
  apiKey?: ApiKeyName
  /** the api key's header written otherwise: in capitals (the same header), or with `_` (another one) */
  keySpelling?: 'X-API-KEY' | 'x_api_key'
  /** an index into USER_AGENTS */
  userAgent?: number
  xfcc?: { cert: CertName; view: XfccView }
  /** the client certificate presented over mTLS */
  tls?: CertName
  tenant?: 'acme' | 'globex'
  /** the tenant header as written: `x-tenant` unless said */
  tenantSpelling?: 'X-Tenant' | 'x_tenant'
  /** what the trusted front proxy (this host) appended to X-Forwarded-For */
  forwardedFor?: (typeof FORWARDED_FOR)[number]
  /**
   * a header sent twice, the second time with the other tenant or the next user agent: the proxy reads them as
   * Node's HTTP/1.1 parser gives them (list fields joined with ", ", the user agent's first line)
   */
  repeated?: 'x-tenant' | 'user-agent' | 'host'
}

/** a client elsewhere, inside Google's and OpenAI's published crawler ranges, on this host */
const FORWARDED_FOR = ['203.0.113.9', '66.249.66.9', '132.196.86.9', '127.0.0.9'] as const

const PATHS = [
  '/',
  '/api/orders/1',
  '/api/orders/2',
  '/api/catalog',
  '/admin/keys',
  '/public/docs',
  '/api/orders/1?page=2',
  // written otherwise, normalized to a route or not
  '/api/orders/1/',
  '/api//orders/2',
  '/api/./catalog',
  '/api/%6Frders/1',
  '/public/../admin/keys',
  '/API/orders/1',
  // refused by the proxy (an encoded slash) and by both tools
  '/api/orders%2F1',
]

/** the values of each thing a request can carry */
const values = {
  token: fc.constantFrom(...TOKENS),
  tokenAs: fc.constantFrom('header', 'lower-case'),
  apiKey: fc.constantFrom(...(Object.keys(API_KEYS) as ApiKeyName[])),
  keySpelling: fc.constantFrom('X-API-KEY', 'x_api_key'),
  userAgent: fc.nat(USER_AGENTS.length - 1),
  xfcc: fc.record({ cert: fc.constantFrom(...CERTS), view: fc.constantFrom(...XFCC_VIEWS) }),
  tls: fc.constantFrom(...CERTS),
  tenant: fc.constantFrom('acme', 'globex'),
  tenantSpelling: fc.constantFrom('X-Tenant', 'x_tenant'),
  forwardedFor: fc.constantFrom(...FORWARDED_FOR),
  repeated: fc.constantFrom('x-tenant', 'user-agent', 'host'),
} satisfies { [K in keyof RequestSpec]?: fc.Arbitrary<RequestSpec[K]> }

/** the credentials of one kind of client, so that each kind is what decides some requests */
const kindOfClient: fc.Arbitrary<Partial<RequestSpec>> = fc.oneof(
  // a crawler or an AI agent, from its operator's ranges behind the front proxy, or from elsewhere
  fc.record(
    { userAgent: fc.constantFrom(0, 1, 2, 3), forwardedFor: values.forwardedFor },
    { requiredKeys: ['userAgent'] },
  ),
  // a browser or a library, at times a partner's tenant
  fc.record(
    {
      userAgent: fc.constantFrom(4, 5, 6, 7, 8),
      tenant: values.tenant,
      tenantSpelling: values.tenantSpelling,
      repeated: values.repeated,
    },
    { requiredKeys: ['userAgent'] },
  ),
  // a token holder, the token given to explain as a flag or as the header
  fc.record(
    { token: values.token, tokenAs: values.tokenAs, userAgent: values.userAgent },
    { requiredKeys: ['token'] },
  ),
  // a key holder
  fc.record(
    { apiKey: values.apiKey, keySpelling: values.keySpelling, userAgent: fc.constantFrom(6, 7, 8) },
    { requiredKeys: ['apiKey'] },
  ),
  // a workload on its own mTLS connection, or behind the front proxy
  fc.record({ tls: values.tls, token: values.token }, { requiredKeys: ['tls'] }),
  fc.record({ xfcc: values.xfcc, token: values.token }, { requiredKeys: ['xfcc'] }),
)

/** now and then anything else besides */
const extras: fc.Arbitrary<Partial<RequestSpec>> = fc.record(
  Object.fromEntries(
    Object.entries(values).map(([k, v]) => [
      k,
      fc.oneof(
        { weight: 9, arbitrary: fc.constant(undefined) },
        { weight: 1, arbitrary: v as fc.Arbitrary<unknown> },
      ),
    ]),
  ) as { [K in keyof typeof values]: fc.Arbitrary<RequestSpec[K] | undefined> },
)

const requestSpec: fc.Arbitrary<RequestSpec> = fc
  .tuple(
    fc.constantFrom<RequestSpec['method']>('GET', 'GET', 'POST', 'PUT', 'PATCH', 'DELETE'),
    fc.constantFrom(...PATHS),
    extras,
    kindOfClient,
  )
  .map(([method, path, extra, kind]) => {
    const out: Record<string, unknown> = { method, path }
    for (const [k, v] of Object.entries({ ...extra, ...kind })) if (v !== undefined) out[k] = v
    // a spelling says how a header that is sent is written
    if (out['token'] === undefined) delete out['tokenAs']
    if (out['apiKey'] === undefined) delete out['keySpelling']
    if (out['tenant'] === undefined) delete out['tenantSpelling']
    const repeated = { 'x-tenant': out['tenant'], 'user-agent': out['userAgent'], host: AUTHORITY }
    if (out['repeated'] !== undefined && repeated[out['repeated'] as 'host'] === undefined)
      delete out['repeated']
    return out as unknown as RequestSpec
  })

const scenario = fc.record({
  knobs,
  requests: fc.array(requestSpec, { minLength: REQUESTS, maxLength: REQUESTS }),
})
type Scenario = typeof scenario extends fc.Arbitrary<infer S> ? S : never

function xfccHeader(cert: Certificate, view: XfccView): string {
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
  }
}

/**
 * The request's headers as the proxy gets them and explain is given them: the user agent aside, and the token
 * unless explain is given it as a header
 */
function headersOf(
  r: RequestSpec,
  fx: Fixtures,
  token: 'with-token' | 'without-token',
): Record<string, string | string[]> {
  // two Host lines are refused by the proxy (and so by explain)
  const h: Record<string, string | string[]> = {
    host: r.repeated === 'host' ? [AUTHORITY, `admin.${AUTHORITY}`] : AUTHORITY,
  }
  if (r.token !== undefined && token === 'with-token')
    h['authorization'] = `${r.tokenAs === 'lower-case' ? 'bearer' : 'Bearer'} ${fx.tokens[r.token]}`
  if (r.apiKey !== undefined) h[r.keySpelling ?? 'x-api-key'] = API_KEYS[r.apiKey]
  if (r.xfcc !== undefined) h['x-forwarded-client-cert'] = xfccHeader(fx.certs[r.xfcc.cert], r.xfcc.view)
  if (r.tenant !== undefined) h[r.tenantSpelling ?? 'x-tenant'] = tenantLines(r)
  if (r.forwardedFor !== undefined) h['x-forwarded-for'] = r.forwardedFor
  return h
}

function tenantLines(r: RequestSpec): string | string[] {
  if (r.repeated !== 'x-tenant') return r.tenant!
  return [r.tenant!, r.tenant === 'acme' ? 'globex' : 'acme']
}

function userAgentLines(r: RequestSpec): string[] {
  const ua = USER_AGENTS[r.userAgent!]!
  return r.repeated === 'user-agent' ? [ua, USER_AGENTS[(r.userAgent! + 1) % USER_AGENTS.length]!] : [ua]
}

// ---- what each side says

/** what a request got: identity, evidence failures and the policy's part */
interface Outcome {
  identity: string
  kind: string
  source: string
  verified: boolean
  rule: string | undefined
  team: string | undefined
  zone: string | undefined
  failures: string[]
  decision: string
  policyRule: string
  status: number
}

const failureList = (failures: { source: string; reason: string }[]) =>
  failures.map((f) => `${f.source} ${f.reason}`).sort()

function fromAudit(line: Record<string, unknown>): Outcome {
  return {
    identity: line['identity'] as string,
    kind: line['kind'] as string,
    source: line['source'] as string,
    verified: line['verified'] as boolean,
    rule: line['rule'] as string | undefined,
    team: line['team'] as string | undefined,
    zone: line['zone'] as string | undefined,
    failures: failureList(line['failures'] as { source: string; reason: string }[]),
    decision: line['decision'] as string,
    policyRule: line['policy_rule'] as string,
    status: line['status'] as number,
  }
}

interface ExplainJson {
  identity: {
    name: string
    kind: string
    source: string
    verified: boolean
    rule?: string
    team?: string
    zone?: string
  }
  evidence: { failures: { source: string; reason: string }[] }
  decision: { decision: string; rule: string; skipped?: boolean }
  policyMode: string
  reject?: { status: number }
}

/** the status the proxy answers with, as explain predicts it: its rejection's, else the upstream's 200 */
function fromExplain(e: ExplainJson): Outcome {
  const id = e.identity
  return {
    identity: id.name,
    kind: id.kind,
    source: id.source,
    verified: id.verified,
    rule: id.rule,
    team: id.team,
    zone: id.zone,
    failures: failureList(e.evidence.failures),
    // a policy that is off decided nothing: `policy: off` in the text, `none` (and `skipped`) in the JSON, as audited
    decision: e.decision.decision,
    policyRule: e.decision.rule,
    status: e.reject?.status ?? 200,
  }
}

function differences(a: Outcome, b: Outcome): string[] {
  const out: string[] = []
  for (const k of Object.keys(a) as (keyof Outcome)[]) {
    if (JSON.stringify(a[k]) !== JSON.stringify(b[k]))
      out.push(`${k}: proxy ${JSON.stringify(a[k])}, explain ${JSON.stringify(b[k])}`)
  }
  return out
}

// ---- the rule-test file

/** the request as a rule-test case gives it, or why it cannot be given */
function testRequest(r: RequestSpec, fx: Fixtures): Record<string, unknown> | string {
  if (r.token !== undefined && !TESTABLE_TOKENS.has(r.token))
    return `token ${r.token}: a rule-test case gives verified credentials`
  const req: Record<string, unknown> = { method: r.method, path: r.path, remoteAddr: '127.0.0.1' }
  const headers: Record<string, string> = { host: AUTHORITY }
  // a header sent twice as the proxy reads it: a list field's lines joined, the first user agent
  if (r.tenant !== undefined) headers[r.tenantSpelling ?? 'x-tenant'] = [tenantLines(r)].flat().join(', ')
  if (r.forwardedFor !== undefined) headers['x-forwarded-for'] = r.forwardedFor
  req['headers'] = headers
  if (r.userAgent !== undefined) req['userAgent'] = USER_AGENTS[r.userAgent]
  if (r.token !== undefined) req['jwt'] = decodeJwt(fx.tokens[r.token])
  // an api key under another header than apiKeys.header is no key: the header alone says it
  if (r.apiKey !== undefined && r.keySpelling === 'x_api_key') headers['x_api_key'] = API_KEYS[r.apiKey]
  else if (r.apiKey !== undefined) req['apiKey'] = API_KEY_NAMES[r.apiKey]
  if (r.tls !== undefined && r.xfcc !== undefined)
    return 'a client certificate and a forwarded one: a rule-test case has one certificate'
  if (r.tls !== undefined) {
    const c = fx.certs[r.tls]
    req['cert'] = { sha256: c.sha256, subject: derOrder(c.subject4514), uri: c.uris, dns: c.dns }
  }
  if (r.xfcc !== undefined) {
    const c = fx.certs[r.xfcc.cert]
    const view = r.xfcc.view
    const cert: Record<string, unknown> = { forwarded: true, format: 'xfcc', sha256: c.sha256 }
    if (view === 'hash+subject' || view === 'all-fields') cert['subject'] = c.subject4514
    if (view === 'hash+uri' || view === 'all-fields') cert['uri'] = c.uris
    if (view === 'all-fields') cert['dns'] = c.dns
    req['cert'] = cert
  }
  return req
}

/** "CN=orders,O=acme" as a certificate's subject is printed, "O=acme, CN=orders" */
const derOrder = (subject4514: string) => subject4514.split(',').reverse().join(', ')

function expectation(o: Outcome): Record<string, unknown> {
  const e: Record<string, unknown> = {
    identity: o.identity,
    kind: o.kind,
    source: o.source,
    verified: o.verified,
  }
  if (o.rule !== undefined) e['rule'] = o.rule
  if (o.team !== undefined) e['team'] = o.team
  if (o.zone !== undefined) e['zone'] = o.zone
  e['decision'] = o.decision
  e['policyRule'] = o.policyRule
  return e
}

// ---- one config

interface Tally {
  requests: number
  explained: number
  testCases: number
  notInTests: Map<string, number>
  statuses: Map<number, number>
  decisions: Map<string, number>
  sources: Map<string, number>
  rules: Set<string>
  /** rule-test cases of a crawler verified by its address (the front proxy's X-Forwarded-For) */
  verifiedCrawlerCases: number
}

const count = <K>(m: Map<K, number>, k: K) => m.set(k, (m.get(k) ?? 0) + 1)

async function runScenario(
  t: Test,
  s: Scenario,
  fx: Fixtures,
  tally: Tally,
  checkFailing: boolean,
): Promise<string[]> {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const dir = scratchDirSync('explain-differential')
  const auditFile = join(dir, 'audit.jsonl')
  const proxy = await startBin(t, { upstream: upstream.url, ...configOf(s.knobs, fx, auditFile) })
  const started = proxy.logs().find((l) => l['event'] === 'started')!
  const httpsPort = Number(String(started['https']).split(':').pop())
  const httpPort = Number(new URL(proxy.proxyUrl).port)

  // (1) through the proxy, one after another (no request waits on another's verification)
  const ids = s.requests.map((_, i) => `differential-${i}`)
  const statuses: number[] = []
  for (const [i, r] of s.requests.entries()) {
    const headers: Record<string, string | string[]> = {
      ...headersOf(r, fx, 'with-token'),
      'x-request-id': ids[i]!,
    }
    if (r.userAgent !== undefined) headers['user-agent'] = userAgentLines(r)
    const tls = r.tls === undefined ? undefined : fx.certs[r.tls].pair
    const answer = await exchange({
      host: '127.0.0.1',
      method: r.method,
      path: r.path,
      // as lines, so that a header sent twice (Host too) is sent as two
      headers: Object.entries(headers).flatMap(([name, value]) => [value].flat().flatMap((v) => [name, v])),
      ...(tls === undefined
        ? { port: httpPort }
        : {
            https: true,
            port: httpsPort,
            servername: 'localhost',
            ca: fx.serverCaPem,
            cert: tls.certPem,
            key: tls.keyPem,
          }),
    })
    statuses.push(answer.status)
  }
  const audited = await eventually(
    () => {
      let text = ''
      try {
        text = readFileSync(auditFile, 'utf8')
      } catch {
        return undefined
      }
      const byId = new Map<string, Record<string, unknown>>()
      for (const l of text.split('\n')) {
        if (!l.startsWith('{')) continue
        const line = JSON.parse(l) as Record<string, unknown>
        byId.set(line['request_id'] as string, line)
      }
      // a request refused before it is attributed may have no line
      return ids.every((id, i) => byId.has(id) || statuses[i] === 400) ? byId : undefined
    },
    { what: 'an audit line for every request' },
  )

  // (2) explain each request with the same config
  const certFiles = { workload: fx.certs.workload.pair.certFile, gateway: fx.certs.gateway.pair.certFile }
  const explained = await mapLimit(s.requests, EXPLAINS_AT_ONCE, async (r) => {
    const args = ['explain', '-c', proxy.configPath, '--json', '--method', r.method, '--path', r.path]
    args.push('--remote-addr', '127.0.0.1')
    const tokenFlag = r.token !== undefined && r.tokenAs === undefined
    const headers = headersOf(r, fx, tokenFlag ? 'without-token' : 'with-token')
    // a user agent sent once is given as --ua, as users give it; one sent twice as the two lines
    if (r.repeated === 'user-agent') headers['user-agent'] = userAgentLines(r)
    else if (r.userAgent !== undefined) args.push('--ua', USER_AGENTS[r.userAgent]!)
    for (const [name, value] of Object.entries(headers))
      for (const line of [value].flat()) args.push('-H', `${name}: ${line}`)
    if (tokenFlag) args.push('--token', fx.tokens[r.token!])
    if (r.tls !== undefined) args.push('--cert', certFiles[r.tls])
    return runCli(args)
  })

  const disagreements: string[] = []
  const cases: Record<string, unknown>[] = []
  for (const [i, r] of s.requests.entries()) {
    const what = `config ${JSON.stringify(s.knobs)}\n  request ${i} ${JSON.stringify(r)}`
    const run = explained[i]!
    tally.requests++
    // a request the proxy refuses before rules and policy: explain says it is refused, with the status
    const refused = run.code === 1 ? /with (\d{3})/.exec(run.stdout) : null
    if (statuses[i] === 400 || refused !== null) {
      count(tally.statuses, statuses[i]!)
      if (refused?.[1] !== String(statuses[i]))
        disagreements.push(
          `${what}\n  the proxy answered ${statuses[i]}, explain: ${run.stdout}${run.stderr}`,
        )
      else tally.explained++
      count(tally.notInTests, 'refused')
      continue
    }
    const line = audited.get(ids[i]!)!
    const proxied = fromAudit(line)
    count(tally.statuses, proxied.status)
    count(tally.decisions, proxied.decision)
    count(tally.sources, proxied.source)
    if (proxied.rule !== undefined) tally.rules.add(proxied.rule)
    // the audit line and the upstream agree on the status and on the identity they were given
    if (proxied.status !== statuses[i])
      disagreements.push(`${what}\n  the audit says status ${proxied.status}, the client got ${statuses[i]}`)
    const received = upstream.received.find((x) => x.headers['x-request-id'] === ids[i])
    if (received !== undefined) {
      const said = decodeURIComponent(String(received.headers['x-nhi-identity']))
      if (said !== proxied.identity || received.headers['x-nhi-verified'] !== String(proxied.verified))
        disagreements.push(`${what}\n  the upstream was told ${said}, the audit says ${proxied.identity}`)
    } else if (proxied.status === 200) {
      disagreements.push(`${what}\n  answered 200 but never forwarded`)
    }

    if (run.code !== 0) {
      disagreements.push(`${what}\n  explain exited ${run.code}: ${run.stdout}${run.stderr}`)
      continue
    }
    tally.explained++
    const diff = differences(proxied, fromExplain(JSON.parse(run.stdout) as ExplainJson))
    if (diff.length > 0) disagreements.push(`${what}\n  ${diff.join('\n  ')}`)

    // (3) the proxy's answer, as a rule test
    const req = testRequest(r, fx)
    if (typeof req === 'string') {
      count(tally.notInTests, req.split(':')[0]!)
      continue
    }
    cases.push({ name: `request ${i}`, request: req, expect: expectation(proxied) })
    if (proxied.source === 'useragent' && proxied.verified) tally.verifiedCrawlerCases++
  }
  tally.testCases += cases.length

  if (cases.length > 0) {
    const testFile = join(dir, 'rules.test.yaml')
    writeFileSync(testFile, stringify({ config: proxy.configPath, tests: cases }))
    const passing = await runCli(['test', testFile])
    if (passing.code !== 0) {
      disagreements.push(
        `config ${JSON.stringify(s.knobs)}\n  nhi-proxy test disagrees with the proxy:\n${passing.stdout}`,
      )
      return disagreements
    }
    if (!checkFailing) return disagreements
    // the file can fail: one expectation changed fails its case, and only it
    const changed = structuredClone(cases)
    const first = changed[0]!['expect'] as Record<string, unknown>
    first['identity'] = `${first['identity'] as string}-not`
    const failingFile = join(dir, 'changed.test.yaml')
    writeFileSync(failingFile, stringify({ config: proxy.configPath, tests: changed }))
    const failing = await runCli(['test', failingFile])
    t.equal(failing.code, 1, 'a changed expectation fails the rule test')
    t.match(failing.stdout, `not ok 1 - request `, 'the changed case is the one that fails')
    t.match(failing.stdout, `${cases.length - 1} passed, 1 failed`, 'and only it')
  }
  return disagreements
}

t.test('explain and rule tests predict what the running proxy does', async (t) => {
  const started = Date.now()
  const fx = await makeFixtures(t)
  const scenarios = fc.sample(scenario, { numRuns: CONFIGS, seed: PROPERTY_SEED })
  const tally: Tally = {
    requests: 0,
    explained: 0,
    testCases: 0,
    notInTests: new Map(),
    statuses: new Map(),
    decisions: new Map(),
    sources: new Map(),
    rules: new Set(),
    verifiedCrawlerCases: 0,
  }
  const disagreements: string[] = []
  // the first config's rule-test file is also checked to fail with one expectation changed
  for (const [n, s] of scenarios.entries())
    disagreements.push(...(await runScenario(t, s, fx, tally, n === 0)))
  t.same(disagreements.slice(0, 6), [], `no disagreement (of ${disagreements.length})`)
  t.equal(tally.explained, tally.requests, 'every request explained')
  t.ok(tally.testCases >= tally.requests / 3, `rule-test cases for most requests (${tally.testCases})`)
  t.comment(
    `${CONFIGS} configs (seed ${PROPERTY_SEED}), ${tally.requests} requests in ${Date.now() - started} ms: ` +
      `statuses ${JSON.stringify(Object.fromEntries(tally.statuses))}, decisions ` +
      `${JSON.stringify(Object.fromEntries(tally.decisions))}, sources ` +
      `${JSON.stringify(Object.fromEntries(tally.sources))}, rules ${[...tally.rules].join(' ')}, ` +
      `${tally.testCases} rule-test cases (${tally.verifiedCrawlerCases} of crawlers verified by their address), left out of them ${JSON.stringify(Object.fromEntries(tally.notInTests))}`,
  )
})
