// A new credential source is its own file plus one registration line: a toy X-Client-Id source
// (fixtures/client-id-source.ts), registered next to the built-in ones, attributes real requests through the
// proxy like any of them — precedence, attributes, built-in identity, failures, explain.
import { readdir, readFile } from 'node:fs/promises'
import { dirname, join, relative, resolve } from 'node:path'
import t from 'tap'
import { renderExplain } from '../../src/cli/explain-render.ts'
import { configSchema } from '../../src/config/schema.ts'
import { CREDENTIAL_SOURCES } from '../../src/identity/sources/index.ts'
import { AttributionPipeline } from '../../src/pipeline/index.ts'
import { createProxy } from '../../src/proxy/server.ts'
import type { RequestEvent } from '../../src/types.ts'
import { sha256Hex } from '../../src/util/fingerprint.ts'
import { clientIdSource } from '../fixtures/client-id-source.ts'
import { eventually } from '../helpers/eventually.ts'
import { startUpstream } from '../helpers/upstream.ts'

// the registration line
const sources = [...CREDENTIAL_SOURCES, clientIdSource]

const API_KEY = 'nhi_live_toy_source_key'
const config = configSchema.parse({
  service: 'orders',
  apiKeys: { keys: [{ name: 'billing-export', sha256: sha256Hex(API_KEY) }] },
})

const upstream = await startUpstream()
t.teardown(() => upstream.close())
const events: RequestEvent[] = []
const pipeline = new AttributionPipeline(config, { sources, recorder: { record: (e) => events.push(e) } })
t.teardown(() => pipeline.close())
const proxy = createProxy({
  getPipeline: () => pipeline,
  upstream: upstream.url,
  http: { host: '127.0.0.1', port: 0 },
  timeouts: config.timeouts,
  limits: config.limits,
})
const port = (await proxy.listen()).http!.port
t.teardown(() => proxy.close(0))

async function send(headers: Record<string, string>): Promise<RequestEvent> {
  const before = events.length
  const res = await fetch(`http://127.0.0.1:${port}/orders`, { headers })
  await res.arrayBuffer()
  return eventually(() => events[before], { what: 'the request event' })
}

t.test('the toy source names a caller that presented nothing stronger', async (t) => {
  const e = await send({ 'x-client-id': 'orders-batch', 'user-agent': 'curl/8.5.0' })
  t.match(e.identity, {
    name: 'ua:orders-batch',
    kind: 'service',
    source: 'clientid',
    verified: false,
    rule: 'builtin:clientid',
  })
  t.match(e.identity.attributes, { declared_client: 'orders-batch', declared_from: '127.0.0.1' })
  t.equal(e.identity.attributes['ua_product'], 'curl', 'weaker credentials stay evidence')
  const seen = upstream.received.at(-1)!
  t.equal(seen.headers['x-nhi-source'], 'clientid')
  t.equal(seen.headers['x-nhi-identity'], 'ua:orders-batch')
})

t.test('precedence: a valid api key outranks it, and it stays evidence', async (t) => {
  const e = await send({ 'x-client-id': 'orders-batch', 'x-api-key': API_KEY })
  t.match(e.identity, { name: 'billing-export', source: 'apikey', verified: true })
  t.equal(e.identity.attributes['declared_client'], 'orders-batch')
  t.equal(e.fingerprints.apikey?.length, 16)
})

t.test('its failures are failures like any source’s', async (t) => {
  const e = await send({ 'x-client-id': 'Not A Client!', 'user-agent': 'curl/8.5.0' })
  t.same(
    e.failures.map((f) => `${f.source}:${f.reason}`),
    ['clientid:clientid_malformed'],
  )
  t.match(e.identity, { name: 'ua:curl', source: 'useragent' })
})

t.test('explain lists it in precedence order', async (t) => {
  const result = await pipeline.evaluate(
    {
      method: 'GET',
      path: '/',
      url: '/',
      headers: { 'x-client-id': 'orders-batch', 'user-agent': 'curl/8.5.0', 'x-api-key': API_KEY },
    },
    { remoteAddress: '10.1.2.3', remotePort: 1, tls: false },
    { trace: true },
  )
  const lines = renderExplain({
    request: { method: 'GET', path: '/', remoteAddr: '10.1.2.3', headers: [] },
    evidence: result.evidence,
    trace: result.trace,
    ruleCount: 0,
    identity: result.identity,
    decision: result.decision,
    policyMode: config.policy.mode,
    route: result.route,
    notes: [],
  })
  const evidence = lines.slice(
    lines.indexOf('evidence:') + 1,
    lines.findIndex((l) => l.startsWith('rules')),
  )
  t.same(
    evidence.map((l) => l.trim().split(/\s+/)[0]),
    ['apikey', 'clientid', 'useragent'],
  )
  t.ok(evidence.includes('  clientid   unverified client=orders-batch from 10.1.2.3'))
})

t.test('without its registration line the header is just a header', async (t) => {
  const plain = new AttributionPipeline(config)
  t.teardown(() => plain.close())
  const r = await plain.evaluate(
    { method: 'GET', path: '/', url: '/', headers: { 'x-client-id': 'orders-batch' } },
    { remoteAddress: '127.0.0.1', remotePort: 1, tls: false },
  )
  t.same(r.evidence.credentials, [])
  t.equal(r.identity.name, 'anonymous')
})

/** The files under src/ that import `module` (a path under src/). */
async function importersOf(module: string): Promise<string[]> {
  const root = join(import.meta.dirname, '..', '..', 'src')
  const out: string[] = []
  for (const entry of await readdir(root, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile() || !entry.name.endsWith('.ts')) continue
    const file = join(entry.parentPath, entry.name)
    const text = await readFile(file, 'utf8')
    for (const m of text.matchAll(/from '(\.[^']+)'/g)) {
      if (relative(root, resolve(dirname(file), m[1]!)) === module) {
        out.push(relative(root, file))
        break
      }
    }
  }
  return out.sort()
}

t.test(
  'the api-key source: one file, read by the registry, the config schema and its optional extras',
  async (t) => {
    t.same(await importersOf('identity/sources/apikey.ts'), [
      // `nhi-proxy test` request field apiKey (optional for a source)
      'cli/test.ts',
      // its config section, defined in its own file
      'config/schema.ts',
      // the registration line
      'identity/sources/index.ts',
      // the match.apiKey rule condition (optional for a source)
      'rules/conditions/apikey.ts',
    ])
  },
)
