// A user agent can never take the name of a verified identity. Before, `curl -A billing-export/1.0` was
// named `billing-export` — the name of an api key — so policy that allowed `identity: billing-export` let it
// through, and /identities and the metrics merged it into the key's entry.
import { createHash } from 'node:crypto'
import t from 'tap'
import { request } from 'undici'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const KEY = 'the-billing-export-key-for-this-test'

interface Row {
  name: string
  source: string
  verified: boolean
  requests?: number
}

t.test('a user agent that says it is an api key is named ua:…, denied and counted apart', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const sidecar = await startTestSidecar(t, {
    service: 'orders',
    upstream: upstream.url,
    apiKeys: {
      header: 'x-api-key',
      keys: [{ name: 'billing-export', kind: 'job', sha256: createHash('sha256').update(KEY).digest('hex') }],
    },
    identities: [{ name: '{bot}', kind: 'bot', match: { userAgent: 'builtin:bots' } }],
    policy: {
      mode: 'enforce',
      rules: [{ name: 'export', route: '/export/**', allow: [{ identity: 'billing-export' }] }],
    },
  })
  const proxy = sidecar.proxyUrl
  const admin = sidecar.adminUrl
  const send = async (path: string, headers: Record<string, string>) => {
    const res = await request(`${proxy}${path}`, { headers })
    const text = await res.body.text()
    return {
      status: res.statusCode,
      headers:
        res.statusCode === 200 && path.startsWith('/echo')
          ? (JSON.parse(text).headers as Record<string, string>)
          : {},
    }
  }

  // the real key holder
  const real = await send('/echo', { 'x-api-key': KEY, 'user-agent': 'Go-http-client/1.1' })
  // the {bot} rule comes first and matches this user agent: a verified request named by its user agent
  // is still a ua: name, kept apart from unverified ones by its source
  t.equal(real.headers['x-nhi-identity'], 'apikey:ua:go-http-client')
  t.equal(real.headers['x-nhi-verified'], 'true')
  const plain = await send('/echo', { 'x-api-key': KEY })
  t.equal(plain.headers['x-nhi-identity'], 'billing-export', 'without a user agent: the key name')
  t.equal((await send('/export/run', { 'x-api-key': KEY })).status, 200, 'control: the key holder may export')

  // the impostor: a user agent naming itself after the key (isbot calls it a bot, the {bot} rule names it)
  const fake = await send('/echo', { 'user-agent': 'billing-export/1.0' })
  t.equal(fake.headers['x-nhi-identity'], 'ua:billing-export', 'the UA-derived name is in the ua: namespace')
  t.equal(fake.headers['x-nhi-verified'], 'false')
  t.equal(
    (await send('/export/run', { 'user-agent': 'billing-export/1.0' })).status,
    403,
    'policy `identity: billing-export` does not admit the user agent',
  )
  // built-in names too: no rule, a plain crawler
  const bot = await send('/echo', { 'user-agent': 'Googlebot/2.1 (+http://www.google.com/bot.html)' })
  t.equal(bot.headers['x-nhi-identity'], 'ua:googlebot')

  const rows = (await (await fetch(`${admin}/identities`)).json()) as { identities: Row[] }
  const named = (name: string) => rows.identities.filter((r) => r.name === name)
  t.same(
    named('billing-export').map((r) => [r.source, r.verified]),
    [['apikey', true]],
    '/identities: the key entry holds the key holder only',
  )
  t.same(
    named('ua:billing-export').map((r) => [r.source, r.verified]),
    [['useragent', false]],
    'the impostor has its own entry',
  )
  const m = await scrape(admin)
  t.equal(
    metricValue(m, 'nhi_requests_total', { identity: 'billing-export', source: 'useragent' }),
    0,
    'no user-agent request is counted under the key name',
  )
  t.equal(metricValue(m, 'nhi_requests_total', { identity: 'billing-export', source: 'apikey' }), 2)
  t.equal(metricValue(m, 'nhi_requests_total', { identity: 'apikey:ua:go-http-client' }), 1)
  t.equal(metricValue(m, 'nhi_requests_total', { identity: 'ua:billing-export', source: 'useragent' }), 2)
})
