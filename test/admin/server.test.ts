import t from 'tap'
import { configSchema } from '../../src/config/schema.ts'
import type { IdentitiesView } from '../../src/telemetry/index.ts'
import { Telemetry } from '../../src/telemetry/index.ts'
import { startAdmin } from '../helpers/admin.ts'
import { identity, requestEvent, SAMPLE_IDENTITIES } from '../helpers/events.ts'

function telemetryWith(now: () => number = Date.now) {
  return new Telemetry(
    configSchema.parse({
      service: 'checkout',
      audit: { output: 'off' },
      cost: { currency: 'USD', perRequest: 0.001 },
    }),
    { version: 'test', now },
  )
}

t.test('/identities lists every identity with rates, errors, latency, cost, jobs and edges', async (t) => {
  let now = 1_800_000_000_000
  const telemetry = telemetryWith(() => now)
  const url = await startAdmin(t, telemetry)
  const nightly = SAMPLE_IDENTITIES[1]!
  telemetry.record(requestEvent({ identity: nightly, status: 200 }))
  now += 2 * 86_400_000 // the nightly job then stays silent for two days, and fails when it comes back
  telemetry.record(requestEvent({ identity: nightly, status: 500 }))
  for (const who of SAMPLE_IDENTITIES) if (who !== nightly) telemetry.record(requestEvent({ identity: who }))
  for (let i = 0; i < 9; i++) {
    telemetry.record(requestEvent({ identity: SAMPLE_IDENTITIES[0]!, durationMs: i < 8 ? 10 : 900 }))
  }
  telemetry.record(requestEvent({ identity: SAMPLE_IDENTITIES[3]!, status: 503, upstreamError: 'reset' }))

  const res = await fetch(`${url}/identities`)
  t.equal(res.status, 200)
  const view = (await res.json()) as IdentitiesView
  t.equal(view.identities.length, SAMPLE_IDENTITIES.length)
  t.equal(view.tracked, SAMPLE_IDENTITIES.length)
  const byName = new Map(view.identities.map((r) => [r.name, r]))
  for (const who of SAMPLE_IDENTITIES) {
    t.match(byName.get(who.name), { kind: who.kind, source: who.source, verified: who.verified }, who.name)
  }
  const payments = byName.get('payments/api')!
  t.equal(payments.requests, 10)
  t.equal(payments.team, 'payments')
  t.equal(payments.p95Ms, 900, 'p95 of 10 samples is the slowest')
  t.ok(Math.abs(payments.cost - 0.01) < 1e-12)
  t.equal(payments.bytesIn, 1000)
  t.equal(payments.rps, 10, 'ten requests within the first second of the window')
  t.equal(view.identities[0]?.name, 'payments/api', 'sorted by requests by default')
  const bot = byName.get('googlebot')!
  t.equal(bot.errors, 1)
  t.equal(bot.errorRatio, 0.5)
  t.match(byName.get('ci/acme/nightly-export')?.job, {
    consecutiveFailures: 1,
    expectEverySeconds: 86_400,
    overdue: true,
    lastSuccess: new Date(1_800_000_000_000).toISOString(),
  })
  t.notOk(byName.get('legacy-cron')?.job?.overdue, 'no expectEvery, never overdue')

  const boundary = Object.fromEntries(view.edges.map((e) => [e.caller, e.boundary]))
  t.same(boundary, {
    'payments/api': 'internal-verified',
    'ci/acme/nightly-export': 'internal-verified',
    'alice@example.com': 'internal-verified',
    googlebot: 'external',
    gptbot: 'external',
    'legacy-cron': 'internal-verified',
    anonymous: 'external',
  })
  t.ok(view.edges.every((e) => e.callee === 'checkout'))

  const unverified = identity('curl', { kind: 'service', source: 'useragent', verified: false })
  telemetry.record(requestEvent({ identity: unverified }))
  const partner = identity('partner', { source: 'jwt', verified: true, zone: 'external' })
  telemetry.record(requestEvent({ identity: partner }))
  const again = (await (await fetch(`${url}/identities`)).json()) as IdentitiesView
  t.equal(again.edges.find((e) => e.caller === 'curl')?.boundary, 'unverified')
  t.equal(again.edges.find((e) => e.caller === 'partner')?.boundary, 'external')

  telemetry.record(requestEvent({ identity: SAMPLE_IDENTITIES[3]!, status: 429 }))
  const byErrors = (await (await fetch(`${url}/identities?sort=errors`)).json()) as IdentitiesView
  t.equal(byErrors.identities[0]?.name, 'googlebot')
  t.equal((await fetch(`${url}/identities?sort=bogus`)).status, 400)
})

t.test('admin routes: health, readiness, config redaction, ui, 404 and no stack traces', async (t) => {
  const telemetry = telemetryWith()
  let ready = false
  const url = await startAdmin(t, telemetry, {
    ready: async () => ({ ok: ready, checks: { config: true, upstream: ready, jwks: true } }),
    effectiveConfig: () => ({
      service: 'checkout',
      listen: { https: { key: '/etc/nhi/tls.key', cert: '/etc/nhi/tls.crt' } },
      jwt: { issuers: [{ issuer: 'x', clientSecret: 's3cr3t', bearerTokenFile: '/var/run/token' }] },
      nested: { password: 'hunter2', apiToken: 'tkn', token: 'raw', keep: 'visible' },
    }),
  })
  t.equal((await fetch(`${url}/healthz`)).status, 200)
  const notReady = await fetch(`${url}/readyz`)
  t.equal(notReady.status, 503)
  t.same(await notReady.json(), { ok: false, checks: { config: true, upstream: false, jwks: true } })
  ready = true
  t.equal((await fetch(`${url}/readyz`)).status, 200)

  const config = await (await fetch(`${url}/config`)).text()
  for (const secret of ['s3cr3t', 'hunter2', 'tkn', '"raw"', '/etc/nhi/tls.key']) t.notMatch(config, secret)
  t.match(config, '"keep":"visible"')
  t.match(config, '"bearerTokenFile":"/var/run/token"', 'file paths named *File are not secrets')

  const ui = await fetch(`${url}/ui`)
  t.equal(ui.status, 200)
  t.match(ui.headers.get('content-type'), /^text\/html/)
  const html = await ui.text()
  t.notMatch(html, /<script[^>]+src=|<link[^>]+href=["']?https?:/, 'no external assets')
  for (const id of ['identity-table', 'graph', 'events', 'audit-detail', 'split-chart'])
    t.match(html, `id="${id}"`)

  const missing = await fetch(`${url}/nope`)
  t.equal(missing.status, 404)
  t.same(await missing.json(), { error: 'not found' })
  const post = await fetch(`${url}/metrics`, { method: 'POST' })
  t.equal(post.status, 405)

  const broken = new Telemetry(configSchema.parse({ service: 's', audit: { output: 'off' } }), {
    version: 't',
  })
  const brokenUrl = await startAdmin(t, broken, {
    ready: async () => {
      throw new Error('secret internal detail at /srv/app.js:1')
    },
  })
  const failed = await fetch(`${brokenUrl}/readyz`)
  t.equal(failed.status, 500)
  const text = await failed.text()
  t.notMatch(text, 'secret internal detail')
  t.notMatch(text, /at .*:\d+/)
})
