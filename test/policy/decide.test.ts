import t from 'tap'
import { parseConfigText } from '../../src/config/loader.ts'
import { compilePolicy, denyResponse } from '../../src/policy/policy.ts'
import type { Identity, RequestInfo } from '../../src/types.ts'

function policyConfig(mode: string) {
  const r = parseConfigText(
    `policy:
  mode: ${mode}
  rules:
    - name: admin
      route: "/admin/**"
      allow:
        - { kind: human, verified: true }
        - { identity: "ops/*" }
    - route: "/internal/*"
      methods: [post]
      allow:
        - { team: platform, kind: service }
    - name: closed
      route: "/closed"
      allow: []
`,
    'p.yaml',
  )
  if (!r.ok) throw new Error(r.errors[0]?.message)
  return r.config.policy
}

const id = (over: Partial<Identity>): Identity => ({
  name: 'someone',
  kind: 'unknown',
  source: 'anonymous',
  verified: false,
  attributes: {},
  ...over,
})
const req = (path: string, method = 'GET'): RequestInfo => ({ method, path, url: path, headers: {} })

t.test('off: nothing is evaluated', async (t) => {
  const p = compilePolicy(policyConfig('off'))
  t.equal(p.mode, 'off')
  t.same(p.decide(id({}), req('/admin/x')), { decision: 'allow', rule: 'off', skipped: true })
})

t.test('enforce: first matching route decides, any allow matcher admits', async (t) => {
  const p = compilePolicy(policyConfig('enforce'))
  t.same(p.decide(id({ kind: 'human', verified: true }), req('/admin/users')), {
    decision: 'allow',
    rule: 'admin',
  })
  t.same(p.decide(id({ kind: 'human', verified: false }), req('/admin/users')), {
    decision: 'deny',
    rule: 'admin',
  })
  t.same(
    p.decide(id({ name: 'ops/rotator', kind: 'service', source: 'jwt', verified: true }), req('/admin')),
    {
      decision: 'allow',
      rule: 'admin',
    },
  )
  t.same(
    p.decide(id({ name: 'ops/rotator', kind: 'service', source: 'useragent' }), req('/admin')),
    { decision: 'deny', rule: 'admin' },
    'an identity: entry names verified identities only',
  )
  t.same(
    p.decide(id({ name: 'ops/a/b', kind: 'service', source: 'jwt', verified: true }), req('/admin')),
    { decision: 'deny', rule: 'admin' },
    '* is one segment',
  )
  t.same(
    p.decide(id({ team: 'platform', kind: 'service' }), req('/internal/x', 'POST')),
    { decision: 'allow', rule: '/internal/*' },
    'unnamed rule is labelled by its route',
  )
  t.same(
    p.decide(id({ team: 'platform', kind: 'job' }), req('/internal/x', 'post')),
    { decision: 'deny', rule: '/internal/*' },
    'all keys of a matcher must hold',
  )
  t.same(
    p.decide(id({}), req('/internal/x', 'GET')),
    { decision: 'allow', rule: 'default' },
    'methods restrict the rule',
  )
  t.same(
    p.decide(id({ kind: 'human', verified: true }), req('/closed')),
    { decision: 'deny', rule: 'closed' },
    'empty allow list denies all',
  )
  t.same(p.decide(id({}), req('/public')), { decision: 'allow', rule: 'default' })
})

t.test('observe: would_deny instead of deny', async (t) => {
  const p = compilePolicy(policyConfig('observe'))
  t.same(p.decide(id({}), req('/admin/users')), { decision: 'would_deny', rule: 'admin' })
  t.same(p.decide(id({ kind: 'human', verified: true }), req('/admin/users')), {
    decision: 'allow',
    rule: 'admin',
  })
})

t.test('deny response names identity and rule, as JSON', async (t) => {
  const r = denyResponse(id({ name: 'shop/web' }), { decision: 'deny', rule: 'admin' })
  t.equal(r.status, 403)
  t.same(JSON.parse(r.body), { error: 'forbidden', identity: 'shop/web', rule: 'admin' })
  t.equal(r.headers['content-type'], 'application/json')
})

t.test('identity entries: verified only unless `verified` or `source` says otherwise', async (t) => {
  const r = parseConfigText(
    `policy:
  mode: enforce
  rules:
    - route: "/a"
      allow: [{ identity: "*" }]
    - route: "/b"
      allow: [{ identity: "ua:*", source: useragent }]
    - route: "/c"
      allow: [{ identity: "*", verified: false }]
    - route: "/d"
      allow: [{ source: [mtls, xfcc] }]
`,
    'p.yaml',
  )
  if (!r.ok) throw new Error(r.errors[0]?.message)
  const p = compilePolicy(r.config.policy)
  const ua = id({ name: 'ua:curl', source: 'useragent' })
  const key = id({ name: 'billing', source: 'apikey', verified: true })
  const cert = id({ name: 'web', source: 'xfcc', verified: true })
  t.equal(p.decide(ua, req('/a')).decision, 'deny', 'implicit verified: true')
  t.equal(p.decide(key, req('/a')).decision, 'allow')
  t.equal(p.decide(ua, req('/b')).decision, 'allow', 'source: useragent admits user agents')
  t.equal(p.decide(key, req('/b')).decision, 'deny', 'and nothing else')
  t.equal(p.decide(ua, req('/c')).decision, 'allow', 'verified: false is explicit')
  t.equal(p.decide(cert, req('/d')).decision, 'allow')
  t.equal(p.decide(key, req('/d')).decision, 'deny')
})

t.test('policy routes take :id as a spelling of {id}', async (t) => {
  const r = parseConfigText(
    `policy:
  mode: enforce
  rules:
    - name: colon
      route: "/orders/:id/refund"
      allow: [{ kind: human }]
    - name: brace
      route: "/carts/{id}/checkout"
      allow: [{ kind: human }]
`,
    'p.yaml',
  )
  if (!r.ok) throw new Error(r.errors[0]?.message)
  const p = compilePolicy(r.config.policy)
  for (const [path, rule] of [
    ['/orders/42/refund', 'colon'],
    ['/carts/7/checkout', 'brace'],
  ] as const) {
    t.same(p.decide(id({ kind: 'service' }), req(path)), { decision: 'deny', rule }, path)
  }
  t.same(p.decide(id({ kind: 'service' }), req('/orders/42/lines')), { decision: 'allow', rule: 'default' })
  t.same(p.decide(id({ kind: 'service' }), req('/orders//refund')), { decision: 'allow', rule: 'default' })
})

t.test(
  'a path with a trailing slash is decided as the path without it, never as an empty segment',
  async (t) => {
    // "/users/*" lets anyone read one user; "/users", the list of all of them, is for admins. Express
    // (non-strict routing) and Spring serve "/users/" from the handler of "/users": it must be decided as that.
    const r = parseConfigText(
      `policy:
  mode: enforce
  rules:
    - name: profiles
      route: "/users/*"
      allow: [{ verified: false }, { verified: true }]
    - name: files
      route: "/files/*.txt"
      allow: [{ verified: false }, { verified: true }]
    - name: admins
      route: "/**"
      allow: [{ identity: "admin" }]
`,
      'p.yaml',
    )
    if (!r.ok) throw new Error(r.errors[0]?.message)
    const p = compilePolicy(r.config.policy)
    const anonymous = id({ name: 'anonymous' })
    for (const [path, rule, decision] of [
      ['/users', 'admins', 'deny'],
      ['/users/', 'admins', 'deny'],
      ['/users/42', 'profiles', 'allow'],
      ['/users/42/', 'profiles', 'allow'],
      ['/files/', 'admins', 'deny'],
      ['/files/a.txt/', 'files', 'allow'],
    ] as const) {
      t.same(p.decide(anonymous, req(path)), { decision, rule }, path)
    }
  },
)
