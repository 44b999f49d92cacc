// an identity named from a request header (`name: tenant/{t}`, `header: { x-tenant: '{t}' }`) is
// unverified, so at most maxUnverifiedIdentities of them get series: but nothing bounds the length of the
// name. User-agent names are cut to 40 characters; a captured header is taken whole (up to
// limits.maxHeaderBytes). 250 requests with 15 KB header values (default caps) turn /metrics into ~64 MB
// (each name repeated on every series line: requests, every histogram bucket, bytes, last seen) and grow
// the sidecar's RSS by ~220 MB; every scrape then costs seconds of CPU.
import { createHash } from 'node:crypto'
import t from 'tap'
import { Agent, request } from 'undici'
import { parseMetrics } from '../helpers/metrics.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const IDENTITIES = 250
const VALUE_LENGTH = 15_000

t.test('names a client makes up stay short in the metrics, however long the header', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const sidecar = await startTestSidecar(t, {
    upstream: upstream.url,
    identities: [{ name: 'tenant/{t}', kind: 'service', match: { header: { 'x-tenant': '{t}' } } }],
  })
  const agent = new Agent({ connections: 8 })
  t.teardown(() => agent.close())
  let next = 0
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (next < IDENTITIES) {
        const i = next++
        const res = await request(`${sidecar.proxyUrl}/x`, {
          headers: { 'x-tenant': `${i}-${'x'.repeat(VALUE_LENGTH)}` },
          dispatcher: agent,
        })
        await res.body.dump()
      }
    }),
  )
  const body = await (await fetch(`${sidecar.adminUrl}/metrics`)).text()
  const names = parseMetrics(body)
    .filter((s) => s.name === 'nhi_requests_total')
    .map((s) => s.labels['identity']!)
  t.equal(names.length, IDENTITIES, 'every made-up name has its series (within the unverified cap)')
  const longest = Math.max(...names.map((n) => n.length))
  t.ok(longest <= 512, `identity label values are bounded like user agents (longest: ${longest})`)
  t.ok(body.length < 8_000_000, `/metrics stays small (${(body.length / 1e6).toFixed(1)} MB)`)
})

t.test('so do names a verified caller takes from a header', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const key = 'partner-key-for-the-long-names-test'
  const sidecar = await startTestSidecar(t, {
    upstream: upstream.url,
    apiKeys: { keys: [{ name: 'partner', sha256: createHash('sha256').update(key).digest('hex') }] },
    identities: [
      { name: 'tenant/{t}', kind: 'service', match: { apiKey: 'partner', header: { 'x-tenant': '{t}' } } },
    ],
  })
  const agent = new Agent({ connections: 4 })
  t.teardown(() => agent.close())
  for (let i = 0; i < 20; i++) {
    const res = await request(`${sidecar.proxyUrl}/x`, {
      headers: { 'x-api-key': key, 'x-tenant': `${i}-${'x'.repeat(VALUE_LENGTH)}` },
      dispatcher: agent,
    })
    await res.body.dump()
  }
  const samples = parseMetrics(await (await fetch(`${sidecar.adminUrl}/metrics`)).text()).filter(
    (s) => s.name === 'nhi_requests_total',
  )
  const names = samples.map((s) => s.labels['identity']!)
  t.equal(names.length, 20, 'each tenant has its series')
  t.ok(
    samples.every((s) => s.labels['verified'] === 'true'),
    'still verified: the key is',
  )
  t.same([...new Set(names.map((n) => n.length))], [256], 'every name cut at 256 characters')
  t.ok(
    names.every((n) => /^tenant\/\d+-x+$/.test(n)),
    'the start of the name kept',
  )
})
