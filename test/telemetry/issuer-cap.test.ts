// The per-issuer cap (jwt.issuers[].maxIdentities): a public IdP gives tokens to anyone, so its verified
// names are as plentiful as outsiders want. Its names take at most its cap of the identity table and the
// rest go to the jwt source's __overflow__, so the service's own callers keep their series; in one process
// and for a `workers: N` pod alike, through the same shares as the unverified cap.
import t from 'tap'
import { type Config, configSchema } from '../../src/config/schema.ts'
import { certEvidenceFromFields } from '../../src/identity/certificate.ts'
import { compileRules } from '../../src/rules/rule-set.ts'
import { IdentityTable, Shares } from '../../src/telemetry/identity-table.ts'
import { Telemetry } from '../../src/telemetry/index.ts'
import { issuerCaps, tableLimits } from '../../src/telemetry/metrics-recorder.ts'
import { PodExport } from '../../src/telemetry/pod-export.ts'
import { PodMetrics } from '../../src/telemetry/pod-metrics.ts'
import type { ConnectionInfo, JwtEvidence } from '../../src/types.ts'
import { sha256Hex } from '../../src/util/fingerprint.ts'
import { startAdmin } from '../helpers/admin.ts'
import { identity, requestEvent } from '../helpers/events.ts'
import { evidenceSet } from '../helpers/evidence.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'

const PUBLIC = 'https://token.actions.githubusercontent.com'
const OWN = 'https://idp.internal.example'

function config(overrides: Record<string, unknown> = {}): Config {
  return configSchema.parse({ service: 'checkout', audit: { output: 'off' }, ...overrides })
}

const issuer = (iss: string, extra: Record<string, unknown> = {}) => ({
  issuer: iss,
  jwksUri: `${iss}/jwks`,
  audiences: 'any',
  ...extra,
})

/** a verified identity whose credential is a token from `iss` */
const fromIssuer = (name: string, iss: string) =>
  identity(name, { kind: 'job', source: 'jwt', issuer: iss, attributes: { iss } })

t.test("an issuer's names beyond its cap overflow; other issuers' names keep their own series", async (t) => {
  const telemetry = new Telemetry(
    config({
      jwt: { issuers: [issuer(PUBLIC, { maxIdentities: 3 }), issuer(OWN)] },
      metrics: { maxIdentities: 50 },
    }),
    { version: 'test' },
  )
  const url = await startAdmin(t, telemetry)
  for (let i = 0; i < 10; i++)
    telemetry.record(requestEvent({ identity: fromIssuer(`github/outsider/repo-${i}`, PUBLIC) }))
  for (let i = 0; i < 5; i++) telemetry.record(requestEvent({ identity: fromIssuer(`svc/own-${i}`, OWN) }))
  // a name already admitted keeps its series while the issuer is over its cap
  telemetry.record(requestEvent({ identity: fromIssuer('github/outsider/repo-0', PUBLIC) }))

  const m = await scrape(url)
  for (let i = 0; i < 3; i++)
    t.equal(
      metricValue(m, 'nhi_requests_total', { identity: `github/outsider/repo-${i}` }),
      i === 0 ? 2 : 1,
      `repo-${i} has its own series`,
    )
  t.equal(
    m.filter((s) => s.name === 'nhi_requests_total' && s.labels['identity'] === 'github/outsider/repo-3')
      .length,
    0,
    'the fourth name has none',
  )
  t.equal(metricValue(m, 'nhi_requests_total', { identity: '__overflow__', source: 'jwt' }), 7)
  t.equal(metricValue(m, 'nhi_identity_overflow_total'), 7, 'counted as overflow')
  for (let i = 0; i < 5; i++)
    t.equal(metricValue(m, 'nhi_requests_total', { identity: `svc/own-${i}` }), 1, `svc/own-${i} is its own`)
  t.equal(metricValue(m, 'nhi_identities'), 8, '3 of the capped issuer, 5 of the other')
  // an identity with no token at all is held to nothing but the global cap
  telemetry.record(requestEvent({ identity: identity('payments/api') }))
  t.equal(metricValue(await scrape(url), 'nhi_requests_total', { identity: 'payments/api' }), 1)
})

t.test(
  'public IdPs get a tenth of maxIdentities by default, other issuers no cap of their own',
  async (t) => {
    const caps = issuerCaps(
      config({
        jwt: {
          issuers: [
            issuer(PUBLIC),
            issuer('https://accounts.google.com'),
            // GitHub Enterprise Server: read as GitHub Actions, but only the enterprise's repositories get tokens
            issuer('https://ghes.example/_services/token', { profile: 'github-actions' }),
            // Google's issuer read with another profile still gives tokens to anyone
            issuer('accounts.google.com', {
              profile: 'generic',
              jwksUri: 'https://www.googleapis.com/oauth2/v3/certs',
            }),
            issuer(PUBLIC.replace('token', 'other'), { profile: 'github-actions', maxIdentities: 700 }),
            issuer(OWN),
            issuer('https://login.microsoftonline.com/tenant/v2.0'),
            issuer('https://own.example', { maxIdentities: 5 }),
          ],
        },
        metrics: { maxIdentities: 1000 },
      }),
    )
    t.same(
      [...caps],
      [
        [PUBLIC, 100],
        ['https://accounts.google.com', 100],
        ['accounts.google.com', 100],
        [PUBLIC.replace('token', 'other'), 700],
        ['https://own.example', 5],
      ],
    )
    t.same(
      [...issuerCaps(config({ jwt: { issuers: [issuer(PUBLIC)] }, metrics: { maxIdentities: 5 } }))],
      [[PUBLIC, 1]],
      'at least one',
    )

    const table = new IdentityTable(
      tableLimits(
        config({ jwt: { issuers: [issuer(PUBLIC), issuer(OWN)] }, metrics: { maxIdentities: 40 } }),
      ),
    )
    let overflowed = 0
    for (let i = 0; i < 20; i++) {
      table.admitEntry(fromIssuer(`github/o/r-${i}`, PUBLIC), 0)
      table.admitEntry(fromIssuer(`svc/s-${i}`, OWN), 0)
      if (table.overflowed) overflowed++
    }
    t.equal(overflowed, 0, "the unlisted issuer's 20 names all fit")
    t.equal(table.tracked, 24, '4 (40 / 10) of the public issuer, 20 of the other')
  },
)

t.test('the bad values are refused with what the field means', async (t) => {
  for (const bad of [0, -1, 2.5, '10']) {
    const r = configSchema.safeParse({ jwt: { issuers: [issuer(OWN, { maxIdentities: bad })] } })
    t.notOk(r.success, `${JSON.stringify(bad)} is refused`)
    t.match(r.error?.issues[0]?.message, /whole number of at least 1: how many distinct identity names/)
    t.same(r.error?.issues[0]?.path, ['jwt', 'issuers', 0, 'maxIdentities'])
  }
})

t.test('a reload: tracked names keep their series; a new cap counts the names already held', async (t) => {
  const table = new IdentityTable(
    tableLimits(config({ jwt: { issuers: [issuer(OWN)] }, metrics: { maxIdentities: 50 } })),
  )
  for (let i = 0; i < 6; i++) table.admitEntry(fromIssuer(`svc/${i}`, OWN), 0)
  t.equal(table.tracked, 6)
  table.setLimits(
    tableLimits(
      config({ jwt: { issuers: [issuer(OWN, { maxIdentities: 4 })] }, metrics: { maxIdentities: 50 } }),
    ),
  )
  for (let i = 0; i < 6; i++) {
    table.admitEntry(fromIssuer(`svc/${i}`, OWN), 1)
    t.notOk(table.overflowed, `svc/${i} is still tracked`)
  }
  table.admitEntry(fromIssuer('svc/new', OWN), 1)
  t.ok(table.overflowed, 'the issuer holds 6 names, more than its new cap: a new one overflows')
  // idle names free their slots (the default idle TTL is 1h)
  table.sweep(3_600_002)
  t.equal(table.tracked, 0)
  for (let i = 0; i < 4; i++) {
    table.admitEntry(fromIssuer(`svc/later-${i}`, OWN), 3_600_003)
    t.notOk(table.overflowed, `svc/later-${i} fits again`)
  }
  table.admitEntry(fromIssuer('svc/later-4', OWN), 3_600_003)
  t.ok(table.overflowed, 'the fifth does not')
})

t.test(
  'one set of shares holds both caps: a made-up name of a capped issuer takes a slot of each',
  async (t) => {
    const shares = new Shares({
      maxIdentities: 100,
      maxUnverifiedIdentities: 2,
      issuerCaps: new Map([[PUBLIC, 3]]),
      idleTtlMs: 1000,
    })
    t.ok(shares.fits(true, PUBLIC))
    shares.take(true, PUBLIC)
    shares.take(true, PUBLIC)
    t.notOk(shares.fits(true, undefined), 'the unverified cap is full')
    t.ok(shares.fits(false, PUBLIC), 'the issuer has a slot left')
    shares.take(false, PUBLIC)
    t.notOk(shares.fits(false, PUBLIC), "the issuer's cap is full")
    t.ok(shares.fits(false, OWN), 'another issuer is not held to it')
    shares.give(true, PUBLIC)
    t.ok(shares.fits(true, undefined))
    t.ok(shares.fits(false, PUBLIC))
  },
)

t.test("classification charges the identity to its strongest credential's issuer", async (t) => {
  const rules = compileRules(
    config({
      identities: [
        { name: 'ci/{repo}', match: { jwt: { issuer: PUBLIC, claims: { repository: '{repo}' } } } },
      ],
    }),
  )
  const jwt = (claims: Record<string, unknown>): JwtEvidence => ({
    source: 'jwt',
    verified: true,
    issuer: String(claims['iss']),
    claims,
    alg: 'RS256',
    fingerprint: sha256Hex(JSON.stringify(claims)).slice(0, 16),
  })
  const conn: ConnectionInfo = { remoteAddress: '127.0.0.1', remotePort: 5000, tls: false }
  const req = { method: 'GET', path: '/', url: '/', headers: {} }
  const ruleNamed = rules.classify(
    evidenceSet({ jwt: jwt({ iss: PUBLIC, repository: 'outsider/x' }) }),
    req,
    conn,
  )
  t.equal(ruleNamed.name, 'ci/outsider/x')
  t.equal(ruleNamed.issuer, PUBLIC, 'a rule-made name')
  const builtin = rules.classify(evidenceSet({ jwt: jwt({ iss: OWN, sub: 'svc' }) }), req, conn)
  t.equal(builtin.issuer, OWN, 'a built-in name')
  const cert = certEvidenceFromFields(
    { dnsSans: ['payments.internal'], uriSans: [], sha256: sha256Hex('cert') },
    'mtls',
    true,
  )
  if ('failed' in cert) throw new Error(cert.detail)
  const withCert = rules.classify(
    evidenceSet({ mtls: cert, jwt: jwt({ iss: PUBLIC, repository: 'acme/y' }) }),
    req,
    conn,
  )
  t.equal(withCert.source, 'mtls')
  t.equal(withCert.name, 'ci/acme/y', "the rule on the token's claims names it, behind the certificate")
  t.equal(withCert.issuer, PUBLIC, 'so it is charged to the issuer whose claims name it')
})

t.test(
  "a trusted proxy's certificate in front of outsiders' tokens does not lift their issuer's cap",
  async (t) => {
    // a gateway in the mesh forwards outsiders' requests: each carries its verified certificate (the stronger
    // credential, which gives `source`) and the outsider's own token, whose claims name the caller
    const jwt = (repository: string): JwtEvidence => ({
      source: 'jwt',
      verified: true,
      issuer: PUBLIC,
      claims: { iss: PUBLIC, repository },
      alg: 'RS256',
      fingerprint: sha256Hex(repository).slice(0, 16),
    })
    const gateway = certEvidenceFromFields(
      { dnsSans: ['gateway.internal'], uriSans: [], sha256: sha256Hex('gateway') },
      'xfcc',
      true,
    )
    if ('failed' in gateway) throw new Error(gateway.detail)
    const conn: ConnectionInfo = { remoteAddress: '127.0.0.1', remotePort: 5000, tls: false }
    const req = { method: 'GET', path: '/', url: '/', headers: {} }
    const limits = { maxIdentities: 100, idleTtlMs: 60_000, issuerCaps: new Map([[PUBLIC, 3]]) }
    const tracked = (cfg: Config) => {
      const rules = compileRules(cfg)
      const table = new IdentityTable(limits)
      const names = new Set<string>()
      for (let i = 0; i < 10; i++) {
        const id = rules.classify(evidenceSet({ xfcc: gateway, jwt: jwt(`outsider/repo-${i}`) }), req, conn)
        t.equal(id.source, 'xfcc')
        const entry = table.admitEntry(id, 1000)
        if (!entry.overflow) names.add(entry.name)
      }
      return names
    }
    t.equal(tracked(config()).size, 3, 'built-in names from the tokens: three, the cap')
    const byClaim = config({
      identities: [{ name: 'ci/{repo}', match: { jwt: { claims: { repository: '{repo}' } } } }],
    })
    t.equal(tracked(byClaim).size, 3, "a rule naming by the token's claims: three as well")
    const byCert = compileRules(
      config({ identities: [{ name: 'edge/{san}', match: { cert: { san: '{san}' } } }] }),
    ).classify(evidenceSet({ xfcc: gateway, jwt: jwt('outsider/z') }), req, conn)
    t.equal(byCert.name, 'edge/gateway.internal')
    t.equal(byCert.issuer, undefined, "a name the certificate gives is not charged to the token's issuer")
  },
)

// a worker's exposition of one request by each of `names` (source jwt), as the pod merges it
const podHeader = (name: string, type: string) => `# HELP ${name} h\n# TYPE ${name} ${type}\n`
const podId = (name: string) => `service="s",identity="${name}",source="jwt"`
const podReq = (name: string) =>
  `nhi_requests_total{${podId(name)},kind="job",verified="true",method="GET",route="other",code="200"}`
const podBody = (names: readonly string[]) =>
  podHeader('nhi_requests_total', 'counter') +
  names.map((n) => `${podReq(n)} 1\n`).join('') +
  podHeader('nhi_identity_overflow_total', 'counter') +
  'nhi_identity_overflow_total{service="s"} 0\n' +
  podHeader('nhi_identity_last_seen_timestamp_seconds', 'gauge') +
  names.map((n) => `nhi_identity_last_seen_timestamp_seconds{${podId(n)},kind="job"} 100\n`).join('')
const podValue = (text: string, key: string) => {
  const line = text.split('\n').find((l) => l.startsWith(`${key} `))
  return line === undefined ? undefined : Number(line.slice(key.length + 1))
}

t.test('workers: N: the pod holds each issuer to its cap over every worker', async (t) => {
  const req = podReq
  const body = podBody
  const pod = new PodMetrics()
  const limits = { maxIdentities: 100, idleTtlMs: 60_000, issuerCaps: new Map([[PUBLIC, 3]]) }
  // each worker is within the cap on its own (2 names each); the pod is over it
  const workers = [
    ['1', ['github/a', 'github/b', 'svc/x']],
    ['2', ['github/c', 'github/d', 'svc/y']],
  ] as const
  for (const [label, names] of workers) {
    const issued = names
      .filter((n) => n.startsWith('github/'))
      .map((n): [string, string] => [`jwt\u0000${n}`, PUBLIC])
    pod.apply(label, new PodExport().snapshot([body([...names])], -1, [], issued))
  }
  const text = pod.render({ service: 's', limits, restarts: 0 }, false)
  const value = (key: string) => podValue(text, key)
  const own = ['github/a', 'github/b', 'github/c', 'github/d'].filter((n) => value(req(n)) !== undefined)
  t.equal(own.length, 3, 'three of the issuer names have their own series')
  t.equal(value(req('__overflow__')), 1, 'the fourth is folded into the overflow series')
  t.equal(value('nhi_identity_overflow_total{service="s"}'), 1, 'and counted')
  t.equal(value(req('svc/x')), 1, 'names from no capped issuer are not held to it')
  t.equal(value(req('svc/y')), 1)
})

t.test(
  'workers: N: a cap a reload adds counts the names its issuer already holds, as in one process',
  async (t) => {
    const before = { maxIdentities: 100, idleTtlMs: 60_000 }
    const after = { ...before, issuerCaps: new Map([[PUBLIC, 3]]) }
    const held = ['github/a', 'github/b', 'github/c', 'github/d']
    const later = ['github/e', 'github/f']

    // one process: the table counts every issuer's names, capped or not
    const table = new IdentityTable(before)
    for (const n of held) table.admitEntry(fromIssuer(n, PUBLIC), 1000)
    table.setLimits(after)
    for (const n of later) {
      table.admitEntry(fromIssuer(n, PUBLIC), 2000)
      t.ok(table.overflowed, `${n} overflows in one process: the issuer holds 4 of its 3 already`)
    }

    // the pod: before the reload a worker names no issuer (none is capped), after it names every capped one
    const pod = new PodMetrics()
    const exporter = new PodExport()
    pod.apply('1', exporter.snapshot([podBody(held)], -1))
    pod.render({ service: 's', limits: before, restarts: 0 }, false)
    const names = [...held, ...later]
    const issued = names.map((n): [string, string] => [`jwt\u0000${n}`, PUBLIC])
    pod.apply('1', exporter.snapshot([podBody(names)], -1, [], issued))
    const text = pod.render({ service: 's', limits: after, restarts: 0 }, false)
    for (const n of held) t.equal(podValue(text, podReq(n)), 1, `${n} keeps its series`)
    for (const n of later) t.equal(podValue(text, podReq(n)), undefined, `${n} is folded in the pod as well`)
    t.equal(podValue(text, podReq('__overflow__')), 2)
  },
)
