import t from 'tap'
import { parseConfigText } from '../../src/config/loader.ts'
import type { Config } from '../../src/config/schema.ts'
import { namespacedName } from '../../src/identity/builtin.ts'
import { certEvidenceFromFields } from '../../src/identity/certificate.ts'
import { classifyUserAgent } from '../../src/identity/useragent.ts'
import { compileRules, type RuleTrace } from '../../src/rules/rule-set.ts'
import type { CertEvidence, ConnectionInfo, EvidenceSet, JwtEvidence, RequestInfo } from '../../src/types.ts'
import { sha256Hex } from '../../src/util/fingerprint.ts'
import { type EvidenceParts, evidenceSet } from '../helpers/evidence.ts'

function config(yaml: string): Config {
  const r = parseConfigText(yaml, 'test.yaml')
  if (!r.ok) throw new Error(r.errors.map((e) => `${e.line}:${e.col} ${e.message}`).join('\n'))
  return r.config
}

const CHROME =
  'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36'
const GOOGLEBOT = 'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)'
const GPTBOT =
  'Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko); compatible; GPTBot/1.2; +https://openai.com/gptbot'

function jwt(claims: Record<string, unknown>, extra: Partial<JwtEvidence> = {}): JwtEvidence {
  return {
    source: 'jwt',
    verified: true,
    issuer: String(claims['iss'] ?? 'https://idp.example.com'),
    claims,
    alg: 'RS256',
    // distinct credentials must have distinct fingerprints: the rules engine caches by them
    fingerprint: sha256Hex(JSON.stringify(claims)).slice(0, 16),
    ...extra,
  }
}
function cert(
  fields: Partial<CertEvidence> & { uriSans?: string[] },
  source: 'mtls' | 'xfcc' = 'mtls',
): CertEvidence {
  const ev = certEvidenceFromFields(
    {
      dnsSans: fields.dnsSans ?? [],
      uriSans: fields.uriSans ?? [],
      sha256: fields.sha256 ?? sha256Hex(JSON.stringify(fields)),
      ...(fields.subject ? { subject: fields.subject } : {}),
      ...(fields.cn ? { cn: fields.cn } : {}),
      ...(fields.notAfter ? { notAfter: fields.notAfter } : {}),
    },
    source,
    fields.verified ?? true,
  )
  if ('failed' in ev) throw new Error(ev.detail)
  return ev
}
function ev(parts: EvidenceParts = {}): EvidenceSet {
  return evidenceSet(parts)
}
function req(over: Partial<RequestInfo> = {}): RequestInfo {
  return { method: 'GET', path: '/', url: '/', headers: {}, ...over }
}
const conn: ConnectionInfo = { remoteAddress: '127.0.0.1', remotePort: 5000, tls: false }

t.test('spiffe from mtls or xfcc, captures into name/team/zone', async (t) => {
  const rules = compileRules(
    config(`identities:
  - name: "{ns}/{sa}"
    rule: mesh
    kind: service
    team: "team-{ns}"
    zone: "{td}"
    match: { spiffe: "spiffe://{td}/ns/{ns}/sa/{sa}" }`),
  )
  const id = rules.classify(
    ev({ mtls: cert({ uriSans: ['spiffe://prod.example/ns/pay/sa/api'] }) }),
    req(),
    conn,
  )
  t.match(id, {
    name: 'pay/api',
    kind: 'service',
    team: 'team-pay',
    zone: 'prod.example',
    rule: 'mesh',
    source: 'mtls',
    verified: true,
  })
  t.equal(id.attributes['spiffe_id'], 'spiffe://prod.example/ns/pay/sa/api')
  const fwd = rules.classify(ev({ xfcc: cert({ uriSans: ['spiffe://a/ns/b/sa/c'] }, 'xfcc') }), req(), conn)
  t.match(fwd, { name: 'b/c', source: 'xfcc' })
  const trace: RuleTrace[] = []
  const none = rules.classify(ev(), req(), conn, trace)
  t.equal(none.rule, 'builtin:anonymous')
  t.same(trace, [{ index: 0, rule: 'mesh', matched: false, reasons: ['spiffe: no client certificate'] }])
  const traceNoId: RuleTrace[] = []
  rules.classify(ev({ mtls: cert({ cn: 'legacy' }) }), req(), conn, traceNoId)
  t.same(traceNoId[0]?.reasons, ['spiffe: certificate has no SPIFFE ID'])
})

t.test('jwt issuer and claims, nested by dotted path, arrays, numbers', async (t) => {
  const rules = compileRules(
    config(`jwt:
  issuers: [{ issuer: https://k8s, jwksFile: /k, audiences: any }, { issuer: https://gh, jwksFile: /k, audiences: any }]
identities:
  - name: "{ns}/{sa}"
    rule: k8s
    kind: service
    match:
      jwt:
        issuer: https://k8s
        claims: { kubernetes.io.namespace: "{ns}", kubernetes.io.serviceaccount.name: "{sa}" }
  - name: "ci/{repo}"
    rule: ci
    kind: job
    match: { jwt: { issuer: https://gh, claims: { repository: "{repo}", run_attempt: "1" } } }
  - name: admins
    rule: groups
    kind: human
    match: { jwt: { claims: { groups: admin } } }`),
  )
  const k8s = rules.classify(
    ev({
      jwt: jwt({
        iss: 'https://k8s',
        sub: 'system:serviceaccount:ci:nightly',
        'kubernetes.io': { namespace: 'ci', serviceaccount: { name: 'nightly' } },
      }),
    }),
    req(),
    conn,
  )
  t.match(k8s, { name: 'ci/nightly', rule: 'k8s', source: 'jwt', verified: true })
  t.equal(k8s.attributes['iss'], 'https://k8s')
  t.equal(k8s.attributes['sub'], 'system:serviceaccount:ci:nightly')
  const gh = rules.classify(
    ev({ jwt: jwt({ iss: 'https://gh', repository: 'acme/web', run_attempt: 1 }) }),
    req(),
    conn,
  )
  t.match(gh, { name: 'ci/acme/web', kind: 'job', rule: 'ci' })
  const trace: RuleTrace[] = []
  const retry = rules.classify(
    ev({ jwt: jwt({ iss: 'https://gh', repository: 'acme/web', run_attempt: 2 }) }),
    req(),
    conn,
    trace,
  )
  t.not(retry.rule, 'ci')
  t.same(trace[1]?.reasons, ['jwt.claims.run_attempt: "2" does not match "1"'])
  t.same(trace[0]?.reasons, ['jwt.issuer: "https://gh" does not match "https://k8s"'])
  const admin = rules.classify(ev({ jwt: jwt({ iss: 'https://x', groups: ['dev', 'admin'] }) }), req(), conn)
  t.equal(admin.rule, 'groups')
  const trace2: RuleTrace[] = []
  rules.classify(ev({ jwt: jwt({ iss: 'https://x' }) }), req(), conn, trace2)
  t.same(trace2[2]?.reasons, ['jwt.claims.groups: claim not present'])
})

t.test('cert subject, san and sha256', async (t) => {
  const sha = 'cd'.repeat(32)
  const rules = compileRules(
    config(`identities:
  - { name: "pinned", rule: pin, match: { cert: { sha256: "${sha.toUpperCase()}" } } }
  - { name: "partner/{host}", rule: san, match: { cert: { san: "{host}.partners.example.com" } } }
  - { name: "cn/{cn}", rule: subject, match: { cert: { subject: "{cn}" } } }`),
  )
  t.equal(rules.classify(ev({ mtls: cert({ sha256: sha }) }), req(), conn).rule, 'pin')
  t.match(
    rules.classify(ev({ mtls: cert({ dnsSans: ['x.other', 'acme.partners.example.com'] }) }), req(), conn),
    { name: 'partner/acme' },
  )
  t.match(rules.classify(ev({ mtls: cert({ subject: 'CN=batch,O=Acme', cn: 'batch' }) }), req(), conn), {
    name: 'cn/CN=batch,O=Acme',
  })
  const cnOnly = compileRules(
    config(`identities:\n  - { name: "{n}", match: { cert: { subject: "batch-{n}" } } }`),
  )
  t.equal(
    cnOnly.classify(ev({ mtls: cert({ subject: 'CN=batch-7,O=Acme', cn: 'batch-7' }) }), req(), conn).name,
    '7',
    'a subject pattern may name the common name',
  )
})

t.test('apiKey, header, userAgent, remoteAddr, path, method, verified, source', async (t) => {
  const rules = compileRules(
    config(`apiKeys:
  keys: [{ name: partner-acme, kind: service, sha256: "${'a'.repeat(64)}" }]
identities:
  - { name: "partner/{p}", rule: key, match: { apiKey: "partner-{p}" } }
  - { name: "tenant/{t}", rule: header, match: { header: { X-Tenant: "{t}" } } }
  - { name: "ai/{agent}", rule: agents, kind: agent, match: { userAgent: "builtin:agents" } }
  - { name: probe, rule: probe, match: { userAgent: "kube-probe/*" } }
  - { name: "{bot}", rule: bots, kind: bot, match: { userAgent: "builtin:bots" } }
  - { name: office, rule: office, match: { remoteAddr: [10.0.0.0/8], path: "/intranet/**", method: [get, head] } }
  - { name: "unverified-{product}", rule: unverified, match: { verified: false, source: useragent } }`),
  )
  const key = rules.classify(
    ev({
      apikey: { source: 'apikey', verified: true, name: 'partner-acme', kind: 'service', fingerprint: 'abc' },
    }),
    req(),
    conn,
  )
  t.match(key, { name: 'partner/acme', source: 'apikey', verified: true, kind: 'service' })
  t.equal(key.attributes['api_key'], 'partner-acme')
  t.equal(rules.classify(ev(), req({ headers: { 'x-tenant': 'blue' } }), conn).name, 'ua:tenant/blue')
  t.match(rules.classify(ev({ useragent: classifyUserAgent(GPTBOT) }), req(), conn), {
    name: 'ua:ai/gptbot',
    kind: 'agent',
    verified: false,
    source: 'useragent',
  })
  t.match(rules.classify(ev({ useragent: classifyUserAgent(GOOGLEBOT) }), req(), conn), {
    rule: 'bots',
    kind: 'bot',
  })
  t.equal(rules.classify(ev({ useragent: classifyUserAgent('kube-probe/1.30') }), req(), conn).rule, 'probe')
  const office = { ...conn, remoteAddress: '::ffff:10.1.2.3' }
  t.equal(rules.classify(ev(), req({ path: '/intranet/wiki', method: 'HEAD' }), office).rule, 'office')
  const trace: RuleTrace[] = []
  rules.classify(ev(), req({ path: '/intranet/wiki', method: 'POST' }), office, trace)
  t.same(trace[5]?.reasons, ['remoteAddr: ok', 'path: ok', 'method: "POST" is not GET|HEAD'])
  const trace2: RuleTrace[] = []
  rules.classify(ev(), req({ path: '/intranet' }), conn, trace2)
  t.same(trace2[5]?.reasons, ['remoteAddr: "127.0.0.1" is not in 10.0.0.0/8'])
  t.match(rules.classify(ev({ useragent: classifyUserAgent(CHROME) }), req(), conn), {
    name: 'ua:unverified-chrome',
    rule: 'unverified',
  })
})

t.test('precedence: source and verified come from the strongest credential', async (t) => {
  const rules = compileRules(
    config(
      `identities:\n  - { name: "ci/{repo}", kind: job, match: { jwt: { claims: { repository: "{repo}" } } } }`,
    ),
  )
  const both = ev({
    jwt: jwt({ repository: 'acme/web', exp: 2_000_000_000 }),
    mtls: cert({ uriSans: ['spiffe://c/ns/a/sa/b'], notAfter: 1_900_000_000 }),
    useragent: classifyUserAgent('curl/8.5.0'),
  })
  const id = rules.classify(both, req(), conn)
  t.match(id, { name: 'ci/acme/web', source: 'mtls', verified: true, rule: 'rule-1' })
  t.equal(id.expiresAt, 1_900_000_000, 'earliest expiry of all credentials')
  const unverifiedFwd = rules.classify(
    ev({
      xfcc: cert({ cn: 'x', verified: false }, 'xfcc'),
      apikey: { source: 'apikey', verified: true, name: 'k', fingerprint: 'f' },
    }),
    req(),
    conn,
  )
  t.match(unverifiedFwd, { source: 'xfcc', verified: false })
  t.match(
    rules.classify(
      ev({
        apikey: { source: 'apikey', verified: true, name: 'k', fingerprint: 'f' },
        useragent: classifyUserAgent(GOOGLEBOT),
      }),
      req(),
      conn,
    ),
    { source: 'apikey', verified: true },
  )
})

t.test('built-in identities when no rule matches', async (t) => {
  const rules = compileRules(config(''))
  const k8s = rules.classify(
    ev({
      jwt: jwt(
        {
          iss: 'https://k8s',
          sub: 'system:serviceaccount:ci:nightly',
          'kubernetes.io': { namespace: 'ci', serviceaccount: { name: 'nightly' } },
        },
        { profile: 'kubernetes' },
      ),
    }),
    req(),
    conn,
  )
  t.match(k8s, { name: 'ci/nightly', kind: 'service', source: 'jwt', verified: true })
  t.match(k8s.rule, /^builtin:profile:/)
  t.match(rules.classify(ev({ mtls: cert({ uriSans: ['spiffe://c/ns/a/sa/b'] }) }), req(), conn), {
    name: 'spiffe://c/ns/a/sa/b',
    kind: 'service',
    rule: 'builtin:cert',
  })
  t.match(rules.classify(ev({ mtls: cert({ cn: 'batch', subject: 'CN=batch' }) }), req(), conn), {
    name: 'batch',
    rule: 'builtin:cert',
  })
  t.match(
    rules.classify(
      ev({
        apikey: {
          source: 'apikey',
          verified: true,
          name: 'export',
          kind: 'job',
          team: 'data',
          fingerprint: 'f',
        },
      }),
      req(),
      conn,
    ),
    { name: 'export', kind: 'job', team: 'data', rule: 'builtin:apikey' },
  )
  t.match(rules.classify(ev({ useragent: classifyUserAgent(GPTBOT) }), req(), conn), {
    name: 'gptbot',
    kind: 'agent',
    rule: 'builtin:useragent',
    verified: false,
  })
  t.match(rules.classify(ev({ useragent: classifyUserAgent(CHROME) }), req(), conn), {
    name: 'anonymous',
    kind: 'human',
    source: 'useragent',
  })
  t.match(rules.classify(ev(), req(), conn), {
    name: 'anonymous',
    kind: 'unknown',
    source: 'anonymous',
    verified: false,
    rule: 'builtin:anonymous',
  })
})

t.test('first match wins; trace explains every rule tried; expectEvery carried', async (t) => {
  const rules = compileRules(
    config(`identities:
  - { name: a, rule: first, match: { path: /a } }
  - { name: b, rule: second, kind: job, expectEvery: 24h, match: { path: "/{x}" } }
  - { name: c, rule: third, match: {} }`),
  )
  const trace: RuleTrace[] = []
  const id = rules.classify(ev(), req({ path: '/b' }), conn, trace)
  t.match(id, { name: 'ua:b', rule: 'second', kind: 'job', expectEveryMs: 86_400_000 })
  t.same(trace, [
    { index: 0, rule: 'first', matched: false, reasons: ['path: "/b" does not match "/a"'] },
    { index: 1, rule: 'second', matched: true, reasons: ['path: ok'], captures: { x: 'b' } },
  ])
  t.equal(rules.classify(ev(), req({ path: '/a' }), conn).name, 'ua:a')
  t.equal(rules.classify(ev(), req({ path: '/x/y' }), conn).name, 'ua:c')
})

t.test('classification is cached per credential set only when rules ignore the request', async (t) => {
  const credOnly = compileRules(
    config(`identities:\n  - { name: "{bot}", match: { userAgent: "builtin:bots" } }`),
  )
  const e = ev({ useragent: classifyUserAgent(GOOGLEBOT) })
  // kept from the credentials' second request on
  credOnly.classify(e, req(), conn)
  const first = credOnly.classify(e, req(), conn)
  t.equal(
    credOnly.classify(ev({ useragent: classifyUserAgent(GOOGLEBOT) }), req(), conn),
    first,
    'same credentials → cached identity',
  )
  t.not(credOnly.classify(ev({ useragent: classifyUserAgent(GPTBOT) }), req(), conn), first)
  const perRequest = compileRules(config(`identities:\n  - { name: admin, match: { path: "/admin/**" } }`))
  t.equal(perRequest.classify(e, req({ path: '/admin/x' }), conn).name, 'ua:admin')
  t.not(
    perRequest.classify(e, req({ path: '/' }), conn).name,
    'ua:admin',
    'path rules are never served from cache',
  )
})

t.test('hostile input never throws', async (t) => {
  const rules = compileRules(
    config(`identities:
  - { name: "{v}", match: { header: { x-v: "{v}" }, jwt: { claims: { a.b.c.d.e.f.g.h.i.j: "*" } } } }
  - { name: x, match: { userAgent: "*(*" } }`),
  )
  const weird = ev({
    jwt: jwt({ a: { b: null }, 'a.b': [1, { c: 2 }], __proto__: { polluted: 1 } }),
    useragent: classifyUserAgent('\u0000'.repeat(5000)),
  })
  t.doesNotThrow(() =>
    rules.classify(
      weird,
      req({ headers: { 'x-v': ['a', 'b'] as unknown as string }, method: '' }),
      { ...conn, remoteAddress: 'not-an-ip' },
      [],
    ),
  )
})

t.test('unverified names live in the ua: namespace; verified ones never do', async (t) => {
  t.equal(namespacedName('curl', 'useragent', false), 'ua:curl')
  t.equal(namespacedName('admin', 'anonymous', false), 'ua:admin')
  t.equal(namespacedName('anonymous', 'useragent', false), 'anonymous')
  t.equal(namespacedName('ua:curl', 'useragent', false), 'ua:curl')
  t.equal(namespacedName('web', 'mtls', false), 'ua:web', 'an unverified certificate names nothing verified')
  t.equal(namespacedName('billing', 'apikey', true), 'billing')
  t.equal(namespacedName('anonymous', 'apikey', true), 'apikey:anonymous')
  t.equal(namespacedName('ua:curl', 'jwt', true), 'jwt:ua:curl')
  // the metrics' name for identities beyond the cap is no credential's
  t.equal(namespacedName('__overflow__', 'jwt', true), 'jwt:__overflow__')
  t.equal(namespacedName('__overflow__', 'useragent', false), 'ua:__overflow__')
})
