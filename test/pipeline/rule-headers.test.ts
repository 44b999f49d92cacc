// Which spellings of a rule-named header are another header to the rules but the same one to an upstream
// framework ("_" ≡ "-", any case): the names a config's rules read, worked out once per config. The sockets'
// side (stripping, the count, trailers, reload) is test/security/rule-header-spellings.test.ts.
import t from 'tap'
import { configSchema } from '../../src/config/schema.ts'
import { AttributionPipeline } from '../../src/pipeline/index.ts'
import { RuleHeaders } from '../../src/pipeline/rule-headers.ts'

const rulesOn = (...headers: string[]) =>
  configSchema.parse({
    identities: headers.map((h, i) => ({ name: `r${i}-{v}`, match: { header: { [h]: '{v}' } } })),
  })

/** the names of `headers` an upstream would get after the rules' other spellings were stripped */
function kept(rules: RuleHeaders, headers: string[]): string[] {
  const h: Record<string, string> = Object.fromEntries(headers.map((n) => [n, 'v']))
  rules.prepareUpstreamHeaders(h)
  return Object.keys(h)
}

t.test('no rule names a header: nothing to check per request, no trailer withheld', async (t) => {
  const config = configSchema.parse({ identities: [{ name: 'x', match: { path: '/x' } }] })
  t.equal(RuleHeaders.of(config), undefined)
  const pipeline = new AttributionPipeline(config)
  t.teardown(() => pipeline.close())
  t.notOk(pipeline.withheldTrailers.has('x-tenant'))
})

t.test('the exact name is read and kept, every other spelling is spoofed', async (t) => {
  // a config may spell the name in capitals: rules read it lower-cased, as Node hands names over
  const rules = RuleHeaders.of(rulesOn('X-Tenant'))!
  t.notOk(rules.spoofedHeaders({ 'x-tenant': 'a', 'x-other': 'b' }), 'the exact name')
  t.ok(rules.spoofedHeaders({ 'x-tenant': 'a', x_tenant: 'b' }), 'beside the exact name')
  t.ok(rules.spoofedHeaders({ x_tenant: 'b' }), 'alone')
  t.same(kept(rules, ['x-tenant', 'x_tenant', 'x-tenant_', 'x_tenants', 'host']), [
    'x-tenant',
    'x-tenant_',
    'x_tenants',
    'host',
  ])
})

t.test('a rule on an underscore name makes the dash spelling the other one', async (t) => {
  const rules = RuleHeaders.of(rulesOn('x_region'))!
  t.ok(rules.spoofedHeaders({ 'x-region': 'eu' }))
  t.same(kept(rules, ['x_region', 'x-region']), ['x_region'])
})

t.test('two rules reading two spellings: each is read, so neither is spoofed', async (t) => {
  const rules = RuleHeaders.of(rulesOn('x-zone', 'x_zone'))!
  t.notOk(rules.spoofedHeaders({ 'x-zone': 'a', x_zone: 'b' }))
  t.same(kept(rules, ['x-zone', 'x_zone']), ['x-zone', 'x_zone'])
})

t.test('every spelling of a rule-named header is withheld as a request trailer', async (t) => {
  const pipeline = new AttributionPipeline(rulesOn('X_Tenant'))
  t.teardown(() => pipeline.close())
  t.ok(pipeline.withheldTrailers.has('x-tenant'), 'normalized, as the trailer filter compares names')
  t.notOk(pipeline.withheldTrailers.has('x-tenant-id'), 'not a longer name')
})
