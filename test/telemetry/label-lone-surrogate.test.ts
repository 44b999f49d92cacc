// A token's claims are JSON, so a claim can hold a lone UTF-16 surrogate ("\ud800"), which UTF-8 cannot carry:
// written as is, it leaves the process as U+FFFD, and an identity named with it would share its label text
// with the identity named with a real U+FFFD: two series that Prometheus, and `inventory`, read as one.
import t, { type Test } from 'tap'
import { request } from 'undici'
import type { InventoryRow } from '../../src/cli/inventory.ts'
import { eventually } from '../helpers/eventually.ts'
import { mintToken, startUpstreamAndJwks } from '../helpers/jwks.ts'
import { metricValue, scrapeUntil } from '../helpers/metrics.ts'
import { freePort } from '../helpers/net.ts'
import { startPrometheus } from '../helpers/prometheus.ts'
import { runCli, startTestSidecar } from '../helpers/sidecar.ts'
import { skipWithout, systemTool } from '../helpers/tools.ts'

const ISSUER = 'https://idp.surrogate.test'
const AUD = 'orders'
const prometheusBin = systemTool('prometheus')

// a lone high and low surrogate, a real U+FFFD, and a well-formed pair (an emoji), which stays as it is
const CLIENTS = ['a\ud800', 'a\udc00b', 'a\ufffd', 'a\ud83d\ude00']
const NAMES = ['svc/a\\ud800', 'svc/a\\udc00b', 'svc/a\ufffd', 'svc/a\ud83d\ude00'].sort()

async function sidecarWithTraffic(t: Test, admin?: string) {
  const { upstream, key, jwks } = await startUpstreamAndJwks(t)
  const sidecar = await startTestSidecar(t, {
    service: 'orders',
    upstream: upstream.url,
    ...(admin === undefined ? {} : { admin }),
    jwt: { issuers: [{ issuer: ISSUER, jwksUri: jwks.jwksUri, audiences: [AUD] }] },
    identities: [
      {
        name: 'svc/{client}',
        kind: 'service',
        match: { jwt: { issuer: ISSUER, claims: { azp: '{client}' } } },
      },
    ],
  })
  for (const client of CLIENTS) {
    const token = await mintToken(key, { azp: client }, { issuer: ISSUER, audience: AUD })
    const res = await request(`${sidecar.proxyUrl}/echo`, { headers: { authorization: `Bearer ${token}` } })
    await res.body.dump()
    t.equal(res.statusCode, 200)
  }
  return sidecar
}

t.test('a lone surrogate in an identity name is its own label value, not U+FFFD', async (t) => {
  const sidecar = await sidecarWithTraffic(t)
  const samples = await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_requests_total', { source: 'jwt' }) >= CLIENTS.length,
    'four requests recorded',
  )
  const requests = samples.filter((s) => s.name === 'nhi_requests_total' && s.labels['source'] === 'jwt')
  t.same(
    requests.map((s) => [s.labels['identity'], s.value]).sort(),
    NAMES.map((n) => [n, 1]),
    'one series per identity, a lone surrogate written as its escape',
  )
  const keys = samples.map((s) => `${s.name}${JSON.stringify(s.labels)}`)
  t.equal(new Set(keys).size, keys.length, 'no two lines of the scrape are the same series')
})

t.test(
  'inventory, through a real Prometheus, lists them as four identities',
  { skip: skipWithout('prometheus', prometheusBin), timeout: 60_000 },
  async (t) => {
    const admin = `127.0.0.1:${await freePort()}`
    // started first: Prometheus applies its targets only after its discovery interval
    const prometheus = startPrometheus(t, prometheusBin!, () =>
      [
        'global: { scrape_interval: 1s }',
        'scrape_configs:',
        '  - job_name: nhi-proxy',
        `    static_configs: [{ targets: ["${admin}"] }]`,
        '',
      ].join('\n'),
    )
    prometheus.catch(() => {})
    await sidecarWithTraffic(t, admin)
    const { base } = await prometheus
    const rows = await eventually(
      async () => {
        const r = await runCli(['inventory', '--prometheus', base, '--window', '10m', '--json'])
        if (r.code !== 0) throw new Error(r.stderr)
        const inv = JSON.parse(r.stdout) as { identities: InventoryRow[] }
        const total = inv.identities.reduce((n, x) => n + x.requests, 0)
        return total === CLIENTS.length ? inv.identities : undefined
      },
      { timeoutMs: 40_000, intervalMs: 500, what: 'the four requests in the inventory' },
    )
    t.same(
      rows.map((r) => [r.identity, r.requests]).sort(),
      NAMES.map((n) => [n, 1]),
      'one row per identity',
    )
  },
)
