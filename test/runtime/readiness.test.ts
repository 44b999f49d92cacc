// Readiness observes: an unreachable IdP keeps the sidecar Ready (traffic flows, attributed unverified with
// reason keys_unavailable, one log line naming the issuer) unless readiness.requireJwks says otherwise.
// Runs the built bundle as a child process.
import t from 'tap'
import { startBin } from '../helpers/bin.ts'
import { eventually } from '../helpers/eventually.ts'
import { createSigningKey, mintToken, startUpstreamAndJwks } from '../helpers/jwks.ts'
import { metricValue, parseMetrics } from '../helpers/metrics.ts'
import { refusedPort } from '../helpers/net.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

async function readyz(adminUrl: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`${adminUrl}/readyz`)
  return { status: res.status, body: (await res.json()) as Record<string, unknown> }
}

t.test('IdP unreachable: Ready, traffic flows unverified as keys_unavailable, one log line', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const issuer = 'https://idp.unreachable.example'
  const port = await refusedPort()
  const sidecar = await startBin(t, {
    upstream: upstream.url,
    // a 1 s cooldown also makes failed refreshes retry every second: several failures, still one log line
    jwt: {
      unknownKidCooldown: '1s',
      issuers: [{ issuer, jwksUri: `http://127.0.0.1:${port}/jwks.json`, audiences: ['shop'] }],
    },
  })

  const ready = await readyz(sidecar.adminUrl)
  t.equal(ready.status, 200, 'Ready although the IdP is unreachable')
  t.match(ready.body, {
    ok: true,
    checks: { config: true, listeners: true, draining: false, jwks: false, upstream: true },
    gates: ['config', 'listeners', 'draining'],
    issuers: [{ issuer, ready: false, keys: 0, lastError: String }],
  })

  const key = await createSigningKey('k1')
  const token = await mintToken(key, {}, { issuer, audience: 'shop', subject: 'svc' })
  for (let i = 0; i < 3; i++) {
    const res = await fetch(`${sidecar.proxyUrl}/echo`, { headers: { authorization: `Bearer ${token}` } })
    t.equal(res.status, 200, 'the request reaches the upstream')
    const seen = (await res.json()) as { headers: Record<string, string> }
    t.equal(seen.headers['x-nhi-verified'], 'false', 'attributed as unverified')
    t.equal(seen.headers['authorization'], `Bearer ${token}`, 'token forwarded unchanged')
  }

  const samples = await eventually(
    async () => {
      const s = parseMetrics(await (await fetch(`${sidecar.adminUrl}/metrics`)).text())
      return metricValue(s, 'nhi_jwks_refresh_total', { issuer, result: 'failure' }) >= 3 && s
    },
    { what: 'three failed JWKS refreshes' },
  )
  t.equal(metricValue(samples, 'nhi_auth_failures_total', { reason: 'keys_unavailable' }), 3)
  t.equal(
    samples.filter((s) => s.name === 'nhi_jwks_keys' && s.labels['issuer'] === issuer).map((s) => s.value)[0],
    0,
    'nhi_jwks_keys reports 0 keys for the issuer',
  )
  t.equal(metricValue(samples, 'nhi_auth_failures_total', { reason: 'unknown_kid' }), 0, 'not unknown_kid')

  const failures = sidecar.logs().filter((l) => l['event'] === 'jwks_refresh_failed')
  t.equal(failures.length, 1, 'one log line for the outage, not one per attempt or request')
  t.equal(failures[0]?.['issuer'], issuer, 'the log line names the issuer')
  t.match(failures[0]?.['reason'], /\S/, 'and says why')
  t.notMatch(sidecar.stderr(), token, 'the token is never logged')
})

t.test('readiness.requireJwks: NotReady until keys arrive, then Ready; recovery is logged', async (t) => {
  const { upstream, key, jwks: idp } = await startUpstreamAndJwks(t)
  idp.fault = 503
  const sidecar = await startBin(t, {
    upstream: upstream.url,
    readiness: { requireJwks: true },
    jwt: {
      unknownKidCooldown: '1s',
      issuers: [{ issuer: idp.url, jwksUri: idp.jwksUri, audiences: ['shop'] }],
    },
  })
  const notReady = await readyz(sidecar.adminUrl)
  t.equal(notReady.status, 503, 'NotReady while the key set cannot be fetched')
  t.match(notReady.body, {
    ok: false,
    checks: { jwks: false },
    gates: ['config', 'listeners', 'draining', 'jwks'],
  })

  idp.fault = undefined
  const ready = await eventually(async () => {
    const r = await readyz(sidecar.adminUrl)
    return r.status === 200 && r
  })
  t.match(ready.body, {
    ok: true,
    checks: { jwks: true },
    issuers: [{ issuer: idp.url, ready: true, keys: 1 }],
  })
  const token = await mintToken(key, {}, { issuer: idp.url, audience: 'shop', subject: 'svc' })
  const res = await fetch(`${sidecar.proxyUrl}/echo`, { headers: { authorization: `Bearer ${token}` } })
  const seen = (await res.json()) as { headers: Record<string, string> }
  t.equal(seen.headers['x-nhi-verified'], 'true', 'verified once the keys are there')
  const events = await eventually(() => {
    const e = sidecar.logs().map((l) => l['event'])
    return e.includes('jwks_recovered') && e
  })
  t.equal(events.filter((e) => e === 'jwks_refresh_failed').length, 1, 'one failure line')
  t.equal(events.filter((e) => e === 'jwks_recovered').length, 1, 'one recovery line')
})

t.test('an upstream that refuses connections is reported; it gates only with requireUpstream', async (t) => {
  const upstream = `http://127.0.0.1:${await refusedPort()}`
  const observing = await startTestSidecar(t, { upstream })
  const a = await readyz(observing.adminUrl)
  t.equal(a.status, 200, 'Ready by default: the app may still be starting')
  t.match(a.body, { ok: true, checks: { upstream: false } })
  const gating = await startTestSidecar(t, { upstream, readiness: { requireUpstream: true } })
  const b = await readyz(gating.adminUrl)
  t.equal(b.status, 503, 'NotReady with readiness.requireUpstream')
  t.match(b.body, {
    ok: false,
    checks: { upstream: false },
    gates: ['config', 'listeners', 'draining', 'upstream'],
  })
})
