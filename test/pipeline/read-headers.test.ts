// Which spellings of a header the pipeline reads are another header to it but the same one to an upstream
// framework ("_" ≡ "-", any case): the user agent, the signature headers while signed agents are verified, and
// the names a config's rules read, worked out once per config. The sockets' side (stripping, the count,
// trailers, reload) is test/security/rule-header-spellings.test.ts and read-header-spellings.test.ts.
import t from 'tap'
import { configSchema } from '../../src/config/schema.ts'
import { type Attribution, AttributionPipeline } from '../../src/pipeline/index.ts'
import { ReadHeaders } from '../../src/pipeline/read-headers.ts'

const rulesOn = (...headers: string[]) =>
  configSchema.parse({
    identities: headers.map((h, i) => ({ name: `r${i}-{v}`, match: { header: { [h]: '{v}' } } })),
  })

const CONN = { remoteAddress: '127.0.0.1', remotePort: 40000, tls: false }
const SIGNED_AGENTS = {
  signedAgents: {
    directories: [{ url: 'http://127.0.0.1:9/.well-known/http-message-signatures-directory' }],
  },
}

/** whether any of `names` is another spelling of a header read */
const spoofed = (read: ReadHeaders, names: string[]) => names.some((n) => read.isVariant(n))

/** the names of `headers` an upstream would get after `read`'s other spellings were stripped */
const kept = (read: ReadHeaders, headers: string[]) => keptBy((h) => read.prepareUpstreamHeaders(h), headers)

/** the same after the pipeline had its last word on a request's upstream headers */
function keptByPipeline(pipeline: AttributionPipeline, a: Attribution, headers: string[]): string[] {
  return keptBy((h) => pipeline.prepareUpstreamHeaders(h, a, CONN), headers)
}

function keptBy(strip: (h: Record<string, string>) => void, headers: string[]): string[] {
  const h: Record<string, string> = Object.fromEntries(headers.map((n) => [n, 'v']))
  strip(h)
  return Object.keys(h)
}

t.test('no rule names a header: no rule header is guarded, nor withheld as a trailer', async (t) => {
  const config = configSchema.parse({ identities: [{ name: 'x', match: { path: '/x' } }] })
  const read = ReadHeaders.of(config)
  t.notOk(spoofed(read, ['x_tenant', 'X-Tenant', 'x-tenant']))
  const pipeline = new AttributionPipeline(config)
  t.teardown(() => pipeline.close())
  t.notOk(pipeline.withheldTrailers.has('x-tenant'))
})

t.test('the exact name is read and kept, every other spelling is spoofed', async (t) => {
  // a config may spell the name in capitals: rules read it lower-cased, as Node hands names over
  const read = ReadHeaders.of(rulesOn('X-Tenant'))
  t.notOk(spoofed(read, ['x-tenant', 'x-other']), 'the exact name')
  t.ok(spoofed(read, ['x-tenant', 'x_tenant']), 'beside the exact name')
  t.ok(spoofed(read, ['x_tenant']), 'alone')
  t.same(kept(read, ['x-tenant', 'x_tenant', 'x-tenant_', 'x_tenants', 'host']), [
    'x-tenant',
    'x-tenant_',
    'x_tenants',
    'host',
  ])
})

t.test('a rule on an underscore name makes the dash spelling the other one', async (t) => {
  const read = ReadHeaders.of(rulesOn('x_region'))
  t.ok(spoofed(read, ['x-region']))
  t.same(kept(read, ['x_region', 'x-region']), ['x_region'])
})

t.test('two rules reading two spellings: each is read, so neither is spoofed', async (t) => {
  const read = ReadHeaders.of(rulesOn('x-zone', 'x_zone'))
  t.notOk(spoofed(read, ['x-zone', 'x_zone']))
  t.same(kept(read, ['x-zone', 'x_zone']), ['x-zone', 'x_zone'])
})

t.test('every spelling of a rule-named header is withheld as a request trailer', async (t) => {
  const pipeline = new AttributionPipeline(rulesOn('X_Tenant'))
  t.teardown(() => pipeline.close())
  t.ok(pipeline.withheldTrailers.has('x-tenant'), 'normalized, as the trailer filter compares names')
  t.notOk(pipeline.withheldTrailers.has('x-tenant-id'), 'not a longer name')
})

t.test('the user agent is read under one name by every config', async (t) => {
  const pipeline = new AttributionPipeline(configSchema.parse({}))
  t.teardown(() => pipeline.close())
  const browser = 'Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0'
  const headers = { host: 'app.example', 'user-agent': browser, user_agent: 'Googlebot/2.1' }
  const r = await pipeline.evaluate({ method: 'GET', path: '/', url: '/', headers }, CONN)
  t.ok(r.evidence.anomalies.includes('spoofed_header'), 'user_agent beside user-agent is spoofed')
  t.equal(r.identity.name, 'anonymous', 'classified from user-agent: a browser')
  t.equal(r.identity.kind, 'human')
  t.same(keptByPipeline(pipeline, r, ['user-agent', 'user_agent', 'host']), ['user-agent', 'host'])
  t.ok(pipeline.withheldTrailers.has('user-agent'))

  const plain = await pipeline.evaluate(
    { method: 'GET', path: '/', url: '/', headers: { host: 'app.example', 'user-agent': browser } },
    CONN,
  )
  t.same(plain.evidence.anomalies, [], 'a browser request alone is not flagged')
})

t.test('the signature headers are read under one name while signed agents are verified', async (t) => {
  const names = ['signature-input', 'signature_input', 'signature-agent', 'signature_agent', 'signature']
  const without = new AttributionPipeline(configSchema.parse({}))
  t.teardown(() => without.close())
  const request = { method: 'GET', path: '/', url: '/', headers: { signature_agent: '"https://a.example"' } }
  const r = await without.evaluate(request, CONN)
  t.notOk(r.evidence.anomalies.includes('spoofed_header'), 'without directories: the service’s business')
  t.same(keptByPipeline(without, r, names), names, 'and passed on as sent')

  const signed = new AttributionPipeline(configSchema.parse(SIGNED_AGENTS))
  t.teardown(() => signed.close())
  const s = await signed.evaluate(request, CONN)
  t.ok(s.evidence.anomalies.includes('spoofed_header'), 'with directories: a spelling not verified')
  t.same(keptByPipeline(signed, s, names), ['signature-input', 'signature-agent', 'signature'])
  t.ok(signed.withheldTrailers.has('signature-agent'))
  t.ok(signed.withheldTrailers.has('signature-input'))
})
