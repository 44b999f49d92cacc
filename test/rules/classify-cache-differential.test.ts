// The rule set remembers identities (by each credential's cache key, and by the evidence objects themselves):
// a remembered identity must be exactly the one its rules give that request, never one worked out for another
// credential, however close. Generated rule sets (every condition kind, captures into name, team and zone,
// issuer profiles) classify generated request sequences whose credentials come from a small pool, so that
// the same and almost the same credentials repeat: the same token object and an equal one verified again, the
// same subject from another issuer, the same claims with another expiry or actor, one certificate forwarded
// with more or fewer of its fields, a user agent verified or not. Each request is classified by the rule set
// as the proxy compiles it, by one whose cache holds two identities (evicting all the time) and by one
// without a cache; the three must agree on every field of every identity, in order.
import { isDeepStrictEqual } from 'node:util'
import fc from 'fast-check'
import t from 'tap'
import { parseConfigText } from '../../src/config/loader.ts'
import type { Config } from '../../src/config/schema.ts'
import { certEvidenceFromFields } from '../../src/identity/certificate.ts'
import { xfccCertFields } from '../../src/identity/forwarded/xfcc.ts'
import { type ApiKeyEvidence, apiKeyEvidence } from '../../src/identity/sources/apikey.ts'
import { classifyUserAgent } from '../../src/identity/useragent.ts'
import { compileRules, type RuleSet } from '../../src/rules/rule-set.ts'
import {
  type CertEvidence,
  type ConnectionInfo,
  type Identity,
  type JwtEvidence,
  KINDS,
  type RequestInfo,
  type SignatureEvidence,
  type UserAgentEvidence,
} from '../../src/types.ts'
import { sha256Hex } from '../../src/util/fingerprint.ts'
import { type EvidenceParts, evidenceSet } from '../helpers/evidence.ts'
import { checkBothSides, checkProperty } from '../helpers/property.ts'

const RUNS = 400

// ---- what the config names: issuers (with the profile each is read with), api keys, signed agents' directories

const ISSUERS = ['https://k8s.example', 'https://idp.example', 'https://token.actions.githubusercontent.com']
const PROFILES = [undefined, 'kubernetes', 'keycloak', 'okta', 'generic'] as const

const API_KEYS = [
  { name: 'deploy', kind: 'job', team: 'platform' },
  { name: 'ci-runner' },
  { name: 'ci-nightly', kind: 'job' },
] as const
const keyHash = (name: string) => sha256Hex(`key of ${name}`)

const DIRECTORIES = [
  {
    url: 'https://agent.example/.well-known/http-message-signatures-directory',
    name: 'agent.example',
    kind: 'agent',
    operator: 'Example AI',
    purpose: 'assistant',
  },
  {
    url: 'https://crawler.example/.well-known/http-message-signatures-directory',
    name: 'crawler',
    kind: 'bot',
  },
] as const

const CHROME =
  'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36'
const GOOGLEBOT = 'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)'
const GPTBOT =
  'Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko); compatible; GPTBot/1.2; +https://openai.com/gptbot'
const USER_AGENTS = [
  'curl/8.5.0',
  CHROME,
  GOOGLEBOT,
  GPTBOT,
  'ChatGPT-User/1.0',
  'billing-export/1.0',
  'python-requests/2.31.0',
]
/** the operator a crawler's address is checked against (bots/verify.ts puts it on the verified copy) */
const CRAWLER_OPERATOR: Readonly<Record<string, string>> = { [GOOGLEBOT]: 'Google', [GPTBOT]: 'OpenAI' }

// ---- rules: every condition kind of the schema, patterns from small alphabets that the credentials meet

const SPIFFE_PATTERNS = [
  'spiffe://{td}/ns/{ns}/sa/{sa}',
  'spiffe://prod.example/**',
  'spiffe://prod.example/ns/{ns}/*',
  'spiffe://*/ns/pay/sa/{sa}',
  'spiffe://dev.example/ns/ops/sa/rotator',
]
const ISSUER_PATTERNS = [...ISSUERS, 'https://{host}', '*', 'https://*.example']
const CLAIM_NAMES = [
  'sub',
  'aud',
  'groups',
  'kubernetes.io.namespace',
  'kubernetes.io.serviceaccount.name',
  'act.sub',
  'client_id',
  'exp',
  'email_verified',
  'repository',
]
const CLAIM_PATTERNS = [
  '{sub}',
  'alice',
  'system:serviceaccount:{ns}:{sa}',
  '{a}',
  'admin',
  'ci*',
  '*',
  'true',
  '1900000000',
  'acme/{b}',
  'agent-{n}',
]
const SUBJECT_PATTERNS = ['CN={cn}', '{cn}', 'O=acme, CN={cn}', 'CN={cn},O={org}', 'CN=orders', 'orders']
const SAN_PATTERNS = [
  'spiffe://prod.example/**',
  '*.acme.example',
  '{host}.acme.example',
  'https://not-spiffe.example/{p}',
]
const API_KEY_PATTERNS = ['{key}', 'ci-*', 'deploy', 'ci-{job}']
const USER_AGENT_PATTERNS = [
  'builtin:bots',
  'builtin:agents',
  'builtin:browsers',
  'curl/*',
  '*{client}/*',
  '*Googlebot*',
  '{tool}/1.0',
]
const SOURCES = ['jwt', 'mtls', 'xfcc', 'apikey', 'signature', 'useragent', 'anonymous']
/** captures every rule may use, filled from the user agent */
const UA_CAPTURES = ['product', 'bot', 'agent']

interface TemplateSpec {
  prefix: string
  /** which captures the template takes, as indexes into the ones the rule has (wrapping around) */
  slots: number[]
  /** a name without captures, when there are no slots */
  literal: string
}
const template: fc.Arbitrary<TemplateSpec> = fc.record({
  prefix: fc.constantFrom('', 'svc-', 'team/'),
  slots: fc.array(fc.nat(9), { maxLength: 2 }),
  literal: fc.constantFrom('fixed', 'anonymous', 'ua:made-up', 'Payments'),
})

const claims = fc.dictionary(fc.constantFrom(...CLAIM_NAMES), fc.constantFrom(...CLAIM_PATTERNS), {
  maxKeys: 2,
})
interface MatchSpec {
  spiffe?: string
  jwt?: { issuer?: string; claims?: Record<string, string> }
  /** sha256: a certificate of the pool (by index), or one that is not in it */
  cert?: { subject?: string; san?: string; sha256?: number | string }
  apiKey?: string
  userAgent?: string
  verified?: boolean
  source?: string
}
const condition: fc.Arbitrary<MatchSpec> = fc.oneof(
  fc.constantFrom(...SPIFFE_PATTERNS).map((spiffe) => ({ spiffe })),
  fc
    .record({ issuer: fc.constantFrom(...ISSUER_PATTERNS), claims }, { requiredKeys: [] })
    .map((jwt) => ({ jwt })),
  fc
    .record(
      {
        subject: fc.constantFrom(...SUBJECT_PATTERNS),
        san: fc.constantFrom(...SAN_PATTERNS),
        sha256: fc.oneof(fc.nat(3), fc.constant('AB:CD:EF')),
      },
      { requiredKeys: [] },
    )
    .map((cert) => ({ cert })),
  fc.constantFrom(...API_KEY_PATTERNS).map((apiKey) => ({ apiKey })),
  fc.constantFrom(...USER_AGENT_PATTERNS).map((userAgent) => ({ userAgent })),
  fc.boolean().map((verified) => ({ verified })),
  fc.constantFrom(...SOURCES).map((source) => ({ source })),
)
/** a few conditions per rule, so that rules match often enough */
const match = fc.array(condition, { maxLength: 3 }).map((cs): MatchSpec => Object.assign({}, ...cs))
/** conditions on the request itself: rare, as any of them turns the cache off */
const perRequest = fc.oneof(
  { weight: 12, arbitrary: fc.constant({}) },
  { weight: 1, arbitrary: fc.constant({ header: { 'x-tenant': '{tenant}' } }) },
  { weight: 1, arbitrary: fc.constant({ path: '/api/{svc}/**' }) },
  { weight: 1, arbitrary: fc.constant({ method: ['GET', 'HEAD'] }) },
  { weight: 1, arbitrary: fc.constant({ remoteAddr: ['10.0.0.0/8'] }) },
)
const rule = fc.record(
  {
    name: template,
    team: template,
    zone: template,
    rule: fc.constantFrom('named', 'mesh', 'tokens'),
    kind: fc.constantFrom(...KINDS),
    expectEvery: fc.constant('5m'),
    match,
    perRequest,
  },
  { requiredKeys: ['name', 'match', 'perRequest'] },
)

// ---- credentials: a small pool per sequence, so that the same and almost the same ones repeat

/**
 * A first value and up to `max` more, each an earlier one with one thing changed (a key set to undefined is
 * taken away): near misses, such as the same token's claims with another issuer, expiry or actor.
 */
function nearMisses<T extends object>(
  first: fc.Arbitrary<T>,
  change: fc.Arbitrary<Partial<T>>,
  max: number,
): fc.Arbitrary<T[]> {
  return fc.tuple(first, fc.array(fc.tuple(fc.nat(), change), { maxLength: max })).map(([value, changes]) => {
    const out = [value]
    for (const [from, c] of changes) {
      const changed: Record<string, unknown> = { ...out[from % out.length]!, ...c }
      for (const k in changed) if (changed[k] === undefined) delete changed[k]
      out.push(changed as T)
    }
    return out
  })
}

/** one of the properties of `values`, to be changed to another value or (unless required) taken away */
function oneChange<T extends object>(
  values: { [K in keyof T]-?: fc.Arbitrary<T[K]> },
  required: readonly (keyof T)[],
): fc.Arbitrary<Partial<T>> {
  return fc.oneof(
    ...(Object.keys(values) as (keyof T & string)[]).map((k) =>
      (required.includes(k) ? values[k] : fc.option(values[k], { nil: undefined })).map(
        (v) => ({ [k]: v }) as Partial<T>,
      ),
    ),
  )
}

interface Claims {
  iss: string
  sub: string
  aud?: string | string[]
  groups?: string[]
  'kubernetes.io'?: { namespace: string; serviceaccount?: { name: string }; warnafter?: number }
  act?: Record<string, unknown>
  exp?: number
  client_id?: string
  preferred_username?: string
  repository?: string
  email_verified?: boolean
}
const claimValues: { [K in keyof Claims]-?: fc.Arbitrary<NonNullable<Claims[K]>> } = {
  iss: fc.constantFrom(...ISSUERS),
  sub: fc.constantFrom(
    'alice',
    'bob',
    'system:serviceaccount:pay:api',
    'system:serviceaccount:ops:rotator',
    'repo:acme/app:ref:refs/heads/main',
    'service-account-ci',
  ),
  aud: fc.constantFrom<string | string[]>('api', ['api', 'admin'], ['other']),
  groups: fc.subarray(['admin', 'dev', 'ci']),
  'kubernetes.io': fc.record(
    {
      namespace: fc.constantFrom('pay', 'ops'),
      serviceaccount: fc.record({ name: fc.constantFrom('api', 'rotator') }),
      warnafter: fc.constantFrom(1_800_000_000, 1_800_000_300),
    },
    { requiredKeys: ['namespace'] },
  ),
  act: fc.constantFrom<Record<string, unknown>>(
    { sub: 'agent-1' },
    { sub: 'agent-2', act: { sub: 'agent-1' } },
    { client_id: 'copilot' },
  ),
  exp: fc.constantFrom(1_900_000_000, 1_900_000_600),
  client_id: fc.constantFrom('ci', 'alice'),
  preferred_username: fc.constant('service-account-ci'),
  repository: fc.constantFrom('acme/app', 'acme/web'),
  email_verified: fc.boolean(),
}
const REQUIRED_CLAIMS = ['iss', 'sub'] as const
/** tokens: claims and near misses of them, each with a header of its own (the same claims, another token) */
const tokens = fc
  .tuple(
    nearMisses<Claims>(
      fc.record(claimValues, { requiredKeys: [...REQUIRED_CLAIMS] }),
      oneChange<Claims>(claimValues, REQUIRED_CLAIMS),
      3,
    ),
    fc.array(fc.record({ alg: fc.constantFrom('RS256', 'ES256'), kid: fc.constantFrom('k1', 'k2') }), {
      minLength: 4,
      maxLength: 4,
    }),
  )
  .map(([claimSets, headers]) => claimSets.map((claims, i) => ({ claims, ...headers[i]! })))

const certificate = fc.record({
  cn: fc.option(fc.constantFrom('orders', 'billing', 'gateway'), { nil: undefined }),
  org: fc.option(fc.constantFrom('acme', 'umbrella'), { nil: undefined }),
  uriSans: fc.constantFrom<string[]>(
    [],
    ['spiffe://prod.example/ns/pay/sa/api'],
    ['spiffe://dev.example/ns/ops/sa/rotator'],
    ['https://not-spiffe.example/x'],
  ),
  dnsSans: fc.constantFrom<string[]>(
    [],
    ['orders.acme.example'],
    ['billing.acme.example', 'orders.acme.example'],
  ),
  notAfter: fc.option(fc.constantFrom(1_800_000_000, 1_850_000_000), { nil: undefined }),
})

/**
 * What a front proxy forwards of a client certificate in XFCC: Envoy always sends the Hash, and the Subject,
 * URI and DNS fields its `set_current_client_cert_details` asks for, or the whole certificate (Cert).
 */
const XFCC_VIEWS = ['hash', 'hash+subject', 'hash+uri', 'hash+subject+uri+dns', 'cert'] as const
type XfccView = (typeof XFCC_VIEWS)[number]

/** what one client presents (indexes into the pools); a sequence has a few, and their requests repeat */
interface ClientSpec {
  jwt?: number
  mtls?: { cert: number; verified: boolean }
  xfcc?: { cert: number; view: XfccView }
  apikey?: number
  signature?: { directory: number; keyid: string }
  useragent?: { ua: number; verifiedBy?: 'ranges' | 'dns' | undefined }
}
const credentialValues: { [K in keyof ClientSpec]-?: fc.Arbitrary<NonNullable<ClientSpec[K]>> } = {
  jwt: fc.nat(3),
  mtls: fc.record({ cert: fc.nat(2), verified: fc.boolean() }),
  xfcc: fc.record({ cert: fc.nat(2), view: fc.constantFrom(...XFCC_VIEWS) }),
  apikey: fc.nat(API_KEYS.length - 1),
  signature: fc.record({
    directory: fc.nat(DIRECTORIES.length - 1),
    keyid: fc.constantFrom('kid-a', 'kid-b'),
  }),
  useragent: fc.record({
    ua: fc.nat(USER_AGENTS.length - 1),
    verifiedBy: fc.option(fc.constantFrom<'ranges' | 'dns'>('ranges', 'dns'), { nil: undefined }),
  }),
}
/** clients, and clients that present what another one does but for one credential */
const clients = nearMisses<ClientSpec>(
  fc.record(credentialValues, { requiredKeys: [] }),
  oneChange<ClientSpec>(credentialValues, []),
  4,
)
const request = fc.record({
  client: fc.nat(),
  /** per credential: the client's evidence object of an earlier request (a cached token), or an equal new one */
  fresh: fc.nat(31),
  // every signature is the request's own, with its own expiry
  signatureExp: fc.constantFrom(1_900_000_010, 1_900_000_020),
  method: fc.constantFrom('GET', 'POST'),
  path: fc.constantFrom('/', '/api/orders/1', '/admin'),
  tenant: fc.option(fc.constantFrom('t1', 't2'), { nil: undefined }),
  remoteAddress: fc.constantFrom('127.0.0.1', '10.1.2.3'),
  /** a credential that did not check out besides: no rule reads failures, so no cached answer may either */
  failed: fc.boolean(),
})

const world = fc.record({
  profiles: fc.tuple(
    fc.constantFrom(...PROFILES),
    fc.constantFrom(...PROFILES),
    fc.constantFrom(...PROFILES),
  ),
  rules: fc.array(rule, { maxLength: 5 }),
  tokens,
  certificates: fc.array(certificate, { minLength: 1, maxLength: 3 }),
  clients,
  requests: fc.array(request, { minLength: 8, maxLength: 30 }),
})
type World = typeof world extends fc.Arbitrary<infer W> ? W : never
type RuleSpec = World['rules'][number]
type TokenSpec = World['tokens'][number]
type CertSpec = World['certificates'][number]
type RequestSpec = World['requests'][number]

// ---- the config: the fixed sections the credentials come from, and the generated rules

const certificateHash = (c: CertSpec) => sha256Hex(JSON.stringify(c))

function ruleConfig(r: RuleSpec, certificates: readonly CertSpec[]): Record<string, unknown> {
  const m: Record<string, unknown> = { ...r.match, ...r.perRequest }
  const sha = r.match.cert?.sha256
  if (typeof sha === 'number')
    m['cert'] = { ...r.match.cert, sha256: certificateHash(certificates[sha % certificates.length]!) }
  // the rule's own captures, then those of the user agent every rule has
  const captures = [...new Set([...JSON.stringify(m).matchAll(/\{([A-Za-z_]\w*)\}/g)].map((x) => x[1]!))]
  const available = [...captures, ...UA_CAPTURES]
  const render = (tpl: TemplateSpec) =>
    tpl.slots.length === 0
      ? tpl.literal
      : tpl.prefix + tpl.slots.map((i) => `{${available[i % available.length]}}`).join('/')
  const out: Record<string, unknown> = { name: render(r.name), match: m }
  for (const field of ['team', 'zone'] as const) {
    const tpl = r[field]
    if (tpl !== undefined) out[field] = render(tpl)
  }
  if (r.rule !== undefined) out['rule'] = r.rule
  if (r.kind !== undefined) out['kind'] = r.kind
  if (r.expectEvery !== undefined) out['expectEvery'] = r.expectEvery
  return out
}

function configYaml(w: World): string {
  const issuers = ISSUERS.map((issuer, i) => {
    const profile = w.profiles[i]
    return `    - { issuer: "${issuer}", jwksFile: /keys.json, audiences: any${profile ? `, profile: ${profile}` : ''} }`
  })
  const keys = API_KEYS.map((k) => `    - ${JSON.stringify({ ...k, sha256: keyHash(k.name) })}`)
  const directories = DIRECTORIES.map((d) => `    - ${JSON.stringify(d)}`)
  const rules = w.rules.map((r) => `  - ${JSON.stringify(ruleConfig(r, w.certificates))}`)
  return [
    'jwt:',
    '  issuers:',
    ...issuers,
    'apiKeys:',
    '  keys:',
    ...keys,
    'signedAgents:',
    '  authorities: [svc.example]',
    '  directories:',
    ...directories,
    rules.length ? 'identities:' : 'identities: []',
    ...rules,
  ].join('\n')
}

function parsed(w: World): Config | undefined {
  const r = parseConfigText(configYaml(w), 'generated.yaml')
  return r.ok ? r.config : undefined
}

// ---- evidence, as the sources make it

/** a verified token: its fingerprint is the raw token's, which the claims and the header are */
function jwtEvidence(spec: TokenSpec, profiles: World['profiles']): JwtEvidence {
  const { iss, exp } = spec.claims
  const profile = profiles[ISSUERS.indexOf(iss)]
  const ev: JwtEvidence = {
    source: 'jwt',
    verified: true,
    issuer: iss,
    // a copy all the way down: a token verified again is an equal object, not the same one
    claims: { ...structuredClone(spec.claims) },
    alg: spec.alg,
    kid: spec.kid,
    fingerprint: sha256Hex(JSON.stringify(spec)).slice(0, 16),
  }
  if (profile !== undefined) ev.profile = profile
  if (exp !== undefined) ev.exp = exp
  return ev
}

/** the subject as Envoy writes it (RFC 4514 order), read the way the forwarded-certificate path reads it */
function subjectText(c: CertSpec): string | undefined {
  const rdns = [c.cn === undefined ? '' : `CN=${c.cn}`, c.org === undefined ? '' : `O=${c.org}`].filter(
    Boolean,
  )
  return rdns.length ? rdns.join(',') : undefined
}

function certEvidence(
  c: CertSpec,
  source: 'mtls' | 'xfcc',
  verified: boolean,
  view: XfccView,
): CertEvidence | undefined {
  const whole = view === 'cert'
  const subject = whole || view.includes('subject') ? subjectText(c) : undefined
  const uriSans = whole || view.includes('uri') ? [...c.uriSans] : []
  const dnsSans = whole || view.includes('dns') ? [...c.dnsSans] : []
  const fields = xfccCertFields(subject, uriSans, dnsSans, certificateHash(c))
  if ('failed' in fields) return undefined
  if (whole && c.notAfter !== undefined) fields.notAfter = c.notAfter
  const ev = certEvidenceFromFields(fields, source, verified, source === 'xfcc' ? 'xfcc' : undefined)
  return 'failed' in ev ? undefined : ev
}

function userAgentEvidence(ua: string, verifiedBy: 'ranges' | 'dns' | undefined): UserAgentEvidence {
  const said = classifyUserAgent(ua)
  const operator = CRAWLER_OPERATOR[ua]
  // bots/verify.ts: a crawler confirmed by its operator's ranges or DNS gets a verified copy
  return verifiedBy === undefined || operator === undefined
    ? { ...said }
    : Object.freeze({ ...said, verified: true, operator: said.operator ?? operator, verifiedBy })
}

function apiKey(i: number): ApiKeyEvidence {
  const key = API_KEYS[i]!
  return apiKeyEvidence(key, sha256Hex(keyHash(key.name)).slice(0, 16))
}

function signatureEvidence(s: NonNullable<ClientSpec['signature']>, exp: number): SignatureEvidence {
  const d: (typeof DIRECTORIES)[number] = DIRECTORIES[s.directory]!
  const ev: SignatureEvidence = {
    source: 'signature',
    verified: true,
    name: d.name,
    kind: d.kind,
    directory: d.url,
    keyid: s.keyid,
    exp,
  }
  if ('operator' in d) ev.operator = d.operator
  if ('purpose' in d) ev.purpose = d.purpose
  return ev
}

/**
 * Each credential's evidence object, kept for the sequence: a request that reuses it gets the same object
 * (a cached token, a known user agent), one that does not gets an equal new one (verified again).
 */
class EvidencePool {
  private readonly kept = new Map<string, object>()
  constructor(private readonly w: World) {}

  private get<E extends object>(key: string, reuse: boolean, make: () => E | undefined): E | undefined {
    const known = this.kept.get(key) as E | undefined
    if (reuse && known !== undefined) return known
    const made = make()
    if (made !== undefined && known === undefined) this.kept.set(key, made)
    return made
  }

  parts(r: RequestSpec): EvidenceParts {
    const { tokens, certificates, profiles, clients } = this.w
    const c = clients[r.client % clients.length]!
    const reuse = (credential: number) => (r.fresh & (1 << credential)) === 0
    const parts: EvidenceParts = {}
    if (r.failed)
      parts.failures = [{ failed: true, source: 'jwt', reason: 'expired', fingerprint: 'feedfacefeedface' }]
    if (c.jwt !== undefined) {
      const i = c.jwt % tokens.length
      parts.jwt = this.get(`jwt ${i}`, reuse(0), () => jwtEvidence(tokens[i]!, profiles))
    }
    if (c.mtls) {
      const { verified } = c.mtls
      const i = c.mtls.cert % certificates.length
      parts.mtls = this.get(`mtls ${i} ${verified}`, reuse(1), () =>
        certEvidence(certificates[i]!, 'mtls', verified, 'cert'),
      )
    }
    if (c.xfcc) {
      const { view } = c.xfcc
      const i = c.xfcc.cert % certificates.length
      parts.xfcc = this.get(`xfcc ${i} ${view}`, reuse(2), () =>
        certEvidence(certificates[i]!, 'xfcc', true, view),
      )
    }
    if (c.apikey !== undefined) {
      const i = c.apikey
      parts.apikey = this.get(`apikey ${i}`, reuse(3), () => apiKey(i))
    }
    if (c.signature) parts.signature = signatureEvidence(c.signature, r.signatureExp)
    if (c.useragent) {
      const { ua, verifiedBy } = c.useragent
      parts.useragent = this.get(`ua ${ua} ${verifiedBy}`, reuse(4), () =>
        userAgentEvidence(USER_AGENTS[ua]!, verifiedBy),
      )
    }
    return parts
  }
}

function requestOf(r: RequestSpec): RequestInfo {
  return { method: r.method, path: r.path, url: r.path, headers: r.tenant ? { 'x-tenant': r.tenant } : {} }
}

// ---- the property

interface Stats {
  requests: number
  namedByRule: number
  fromCache: number
}

function describeRequest(i: number, r: RequestSpec, parts: EvidenceParts): string {
  return `request ${i} ${JSON.stringify(r)}: evidence ${JSON.stringify(parts)}`
}

/** the same identities from the cached rule sets as from the uncached one, each left as it was handed out */
function agrees(w: World, stats: Stats): boolean {
  const config = parsed(w)
  if (config === undefined) return true
  const uncached = compileRules(config, { cacheSize: 0 })
  const cached: [string, RuleSet][] = [
    ['default cache', compileRules(config)],
    ['cache of 2', compileRules(config, { cacheSize: 2 })],
  ]
  const pool = new EvidencePool(w)
  const handedOut: [Identity, Identity][] = []
  const seen = new Set<Identity>()
  w.requests.forEach((r, i) => {
    const parts = pool.parts(r)
    const req = requestOf(r)
    const conn: ConnectionInfo = { remoteAddress: r.remoteAddress, remotePort: 5000, tls: false }
    const want = uncached.classify(evidenceSet(parts), req, conn)
    handedOut.push([want, structuredClone(want)])
    stats.requests++
    if (!want.rule?.startsWith('builtin:')) stats.namedByRule++
    for (const [what, rules] of cached) {
      const got = rules.classify(evidenceSet(parts), req, conn)
      if (!isDeepStrictEqual(got, want)) {
        throw new Error(
          `${what}: ${describeRequest(i, r, parts)}\n  got  ${JSON.stringify(got)}\n  want ${JSON.stringify(want)}`,
        )
      }
      if (seen.has(got)) stats.fromCache++
      seen.add(got)
      handedOut.push([got, structuredClone(got)])
    }
  })
  // identities (and their attributes) are shared by every request a cache answers: none may change later
  for (const [identity, asHandedOut] of handedOut) {
    if (!isDeepStrictEqual(identity, asHandedOut))
      throw new Error(`an identity changed after it was handed out: ${JSON.stringify(asHandedOut)}`)
  }
  return true
}

t.test('generated rule sets accept most generated rules', async (t) => {
  checkBothSides(t, world, (w) => parsed(w) !== undefined, [1000, 2000], 'worlds whose config loads')
})

t.test('property: a cached identity is the one the rules give that request', async (t) => {
  const stats: Stats = { requests: 0, namedByRule: 0, fromCache: 0 }
  checkProperty(
    t,
    'the default and a tiny cache answer every request as the rules without a cache do',
    fc.property(world, (w) => agrees(w, stats)),
    RUNS,
  )
  // the cases that matter were drawn: rules that name requests, and answers that came from a cache
  t.ok(
    stats.namedByRule > stats.requests / 10,
    `requests named by a rule (${stats.namedByRule} of ${stats.requests})`,
  )
  t.ok(
    stats.fromCache > stats.requests / 4,
    `answers from a cache (${stats.fromCache} of ${2 * stats.requests})`,
  )
})
