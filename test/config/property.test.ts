import fc from 'fast-check'
import t from 'tap'
import { stringify } from 'yaml'
import { parseConfigText } from '../../src/config/loader.ts'
import { configSchema } from '../../src/config/schema.ts'
import { compilePolicy } from '../../src/policy/policy.ts'
import { compileRoutes } from '../../src/rules/routes.ts'
import { compileRules } from '../../src/rules/rule-set.ts'
import { PROPERTY_SEED } from '../helpers/property.ts'

const conn = { remoteAddress: '10.1.2.3', remotePort: 1, tls: false }

t.test('property: arbitrary text never throws; diagnostics point inside the file', async (t) => {
  fc.assert(
    fc.property(fc.string({ maxLength: 300 }), (text) => {
      const r = parseConfigText(text, 'f.yaml')
      if (r.ok) return true
      const lineCount = text.split(/\r\n|\r|\n/).length
      return (
        r.errors.length > 0 &&
        r.errors.every((e) => e.line >= 1 && e.line <= lineCount + 1 && e.col >= 1 && e.message.length > 0)
      )
    }),
    { numRuns: 1500, seed: PROPERTY_SEED },
  )
  t.pass('held')
})

// Mostly well-formed pieces with a few broken ones: enough generated configs must load for the compile and
// classify half of the property to run (every broken piece makes the whole config invalid).
const piece = fc.oneof(
  {
    weight: 12,
    arbitrary: fc.constantFrom('{a}', '{b}', '*', '**', '/', 'x', '.', '-', 'spiffe://', ':id'),
  },
  { weight: 1, arbitrary: fc.constantFrom('{', '}', '(', '[', '$') },
)
const pattern = fc.array(piece, { maxLength: 6 }).map((p) => p.join(''))
// routes are paths: mostly starting with '/' so that most generated policies and route lists are valid
const route = fc.oneof(
  { weight: 9, arbitrary: pattern.map((p) => `/${p}`) },
  { weight: 1, arbitrary: pattern },
)
const ruleArb = fc.record(
  {
    name: fc.constantFrom('{a}', '{b}/{a}', 'fixed', '{bot}', '{a'),
    kind: fc.constantFrom('service', 'job', 'bot'),
    match: fc.record(
      {
        spiffe: pattern,
        path: pattern,
        userAgent: fc.oneof(pattern, fc.constantFrom('builtin:bots', 'builtin:agents', 'builtin:nope')),
        header: fc.dictionary(fc.constantFrom('x-a', 'x-b'), pattern, { maxKeys: 2 }),
        jwt: fc.record(
          {
            issuer: pattern,
            claims: fc.dictionary(fc.constantFrom('sub', 'a.b', 'repository'), pattern, { maxKeys: 2 }),
          },
          { requiredKeys: [] },
        ),
        remoteAddr: fc.array(fc.constantFrom('10.0.0.0/8', '::1', '1.2.3.4/40', 'nope'), { maxLength: 2 }),
        method: fc.constantFrom('GET', 'post'),
        verified: fc.boolean(),
      },
      { requiredKeys: [] },
    ),
  },
  { requiredKeys: ['name'] },
)
const configArb = fc.record(
  {
    identities: fc.array(ruleArb, { maxLength: 4 }),
    metrics: fc.record({ routes: fc.array(route, { maxLength: 3 }) }),
    policy: fc.record({
      mode: fc.constantFrom('off', 'observe', 'enforce'),
      rules: fc.array(
        fc.record({
          route,
          allow: fc.array(fc.record({ identity: pattern }, { requiredKeys: [] }), { maxLength: 2 }),
        }),
        { maxLength: 2 },
      ),
    }),
  },
  { requiredKeys: [] },
)

t.test(
  'property: every config that loads compiles and classifies without throwing; loading is deterministic',
  async (t) => {
    let loaded = 0
    fc.assert(
      fc.property(
        configArb,
        fc.string({ maxLength: 30 }),
        fc.string({ maxLength: 30 }),
        (value, path, ua) => {
          const text = stringify(value)
          const r = parseConfigText(text, 'f.yaml')
          const again = parseConfigText(text, 'f.yaml')
          if (JSON.stringify(r) !== JSON.stringify(again)) return false
          if (!configSchema.safeParse(value).success && r.ok) return false
          if (!r.ok) return r.errors.length > 0
          loaded++
          const rules = compileRules(r.config)
          const policy = compilePolicy(r.config.policy)
          const routes = compileRoutes(r.config.metrics.routes)
          const req = {
            method: 'GET',
            path: `/${path}`,
            url: `/${path}`,
            headers: { 'user-agent': ua, 'x-a': path },
          }
          const identity = rules.classify({ credentials: [], failures: [], anomalies: [] }, req, conn, [])
          const decision = policy.decide(identity, req)
          const route = routes.match(req.path)
          return (
            typeof identity.name === 'string' &&
            ['allow', 'deny', 'would_deny'].includes(decision.decision) &&
            typeof route === 'string'
          )
        },
      ),
      { numRuns: 300, seed: PROPERTY_SEED },
    )
    t.ok(loaded > 10, `enough generated configs were valid (${loaded})`)
  },
)
