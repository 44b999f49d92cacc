// The IdP's key set endpoint fails while the proxy runs: down (503), junk JSON, hanging. Tokens signed with
// the last good keys keep verifying through the real proxy, and every failed refresh is counted.
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import pino from 'pino'
import t from 'tap'
import { request } from 'undici'
import { eventually } from '../helpers/eventually.ts'
import { createSigningKey, mintToken, type SigningKey, startUpstreamAndJwks } from '../helpers/jwks.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { scratchDir } from '../helpers/scratch.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { createAgentKey, signRequest, startKeyDirectory } from '../helpers/signed-agent.ts'
import { startUpstream } from '../helpers/upstream.ts'

const _silent = pino({ level: 'silent' })
const ISSUER = 'https://idp.fault.test'

t.test('JWKS down, junk or hanging: last good keys verify, failures are counted', async (t) => {
  const { upstream, key, jwks } = await startUpstreamAndJwks(t)
  const sidecar = await startTestSidecar(t, {
    service: 'orders',
    upstream: upstream.url,
    jwt: {
      issuers: [{ issuer: ISSUER, jwksUri: jwks.jwksUri, audiences: ['orders'], refreshInterval: '1s' }],
    },
  })
  const proxy = sidecar.proxyUrl
  const admin = sidecar.adminUrl
  const refreshes = async (result: string) =>
    metricValue(await scrape(admin), 'nhi_jwks_refresh_total', { issuer: ISSUER, result })
  const verifiedWith = async (token: string) => {
    const res = await request(`${proxy}/echo`, { headers: { authorization: `Bearer ${token}` } })
    return (JSON.parse(await res.body.text()).headers as Record<string, string>)['x-nhi-verified']
  }
  const waitFor = (cond: () => Promise<boolean>, timeoutMs = 8000) =>
    eventually(cond, { timeoutMs, intervalMs: 100 }).then(
      () => true,
      () => false,
    )

  t.ok(await refreshes('success'), 'initial fetch counted as success')
  for (const fault of [503, 'junk', 'hang'] as const) {
    jwks.fault = fault
    const failuresBefore = await refreshes('failure')
    t.ok(
      await waitFor(async () => (await refreshes('failure')) > failuresBefore),
      `${fault}: nhi_jwks_refresh_total{result="failure"} rises`,
    )
    // a token never seen before (not in the verification cache) still verifies with the last good keys
    const fresh = await mintToken(key, { azp: `during-${fault}` }, { issuer: ISSUER, audience: 'orders' })
    t.equal(await verifiedWith(fresh), 'true', `${fault}: a new token verifies with the last good keys`)
    const m = await scrape(admin)
    t.ok(metricValue(m, 'nhi_jwks_keys', { issuer: ISSUER }) >= 1, `${fault}: keys still loaded`)
  }
  jwks.fault = undefined
  const successBefore = await refreshes('success')
  t.ok(
    await waitFor(async () => (await refreshes('success')) > successBefore),
    'recovers once the IdP is back',
  )
  const health = await request(`${admin}/healthz`)
  await health.body.dump()
  t.equal(health.statusCode, 200)
})

t.test('a config reload while the IdP is down keeps the last good keys', async (t) => {
  const { upstream, key, jwks } = await startUpstreamAndJwks(t)
  const config = {
    service: 'orders',
    upstream: upstream.url,
    jwt: { onInvalid: 'reject', issuers: [{ issuer: ISSUER, jwksUri: jwks.jwksUri, audiences: ['orders'] }] },
  }
  const sidecar = await startTestSidecar(t, config)
  const call = async (token: string) => {
    const res = await request(`${sidecar.proxyUrl}/echo`, { headers: { authorization: `Bearer ${token}` } })
    const body = await res.body.text()
    return res.statusCode === 200
      ? `verified ${(JSON.parse(body).headers as Record<string, string>)['x-nhi-verified']}`
      : `${res.statusCode} ${body}`
  }
  const before = await mintToken(key, { azp: 'payments' }, { issuer: ISSUER, audience: 'orders' })
  t.equal(await call(before), 'verified true', 'verified while the IdP is up')

  jwks.fault = 500
  const hits = jwks.hits
  // an unrelated change (a rule added): the reload builds new key sets, whose first fetch fails
  t.ok(
    await sidecar.reload({
      ...config,
      identities: [{ name: 'kubelet', match: { userAgent: 'kube-probe/*' } }],
    }),
    'the reload applies',
  )
  t.ok(jwks.hits > hits, 'the reloaded config tried the IdP')
  t.equal(await call(before), 'verified true', 'a token verified before the reload still verifies')
  const fresh = await mintToken(key, { azp: 'billing' }, { issuer: ISSUER, audience: 'orders' })
  t.equal(await call(fresh), 'verified true', 'a new token verifies with the keys the running config had')

  // a changed key source starts afresh: keys of another URL are not the new URL's
  t.ok(
    await sidecar.reload({
      ...config,
      jwt: { ...config.jwt, issuers: [{ ...config.jwt.issuers[0]!, jwksUri: `${jwks.jwksUri}?v=2` }] },
    }),
  )
  t.match(await call(fresh), /^401 .*keys_unavailable/, 'a new key source has no keys until it answers')
})

// The IdP serves its kid with a key nothing verifies with (a truncated modulus, as a broken cache might):
// refused like an unreachable IdP, so tokens keep verifying with the last good keys and /readyz says why;
// next to a usable key it is left out and logged once.
t.test('a key set of unusable keys is a failed refresh: the last good keys keep verifying', async (t) => {
  const { upstream, key, jwks } = await startUpstreamAndJwks(t)
  const sidecar = await startTestSidecar(t, {
    service: 'orders',
    upstream: upstream.url,
    jwt: {
      onInvalid: 'reject',
      issuers: [{ issuer: ISSUER, jwksUri: jwks.jwksUri, audiences: ['orders'], refreshInterval: '1s' }],
    },
  })
  const admin = sidecar.adminUrl
  const refreshes = async (result: string) =>
    metricValue(await scrape(admin), 'nhi_jwks_refresh_total', { issuer: ISSUER, result })
  const issuerState = async () => {
    const res = await request(`${admin}/readyz`)
    return (JSON.parse(await res.body.text()) as { issuers: Record<string, unknown>[] }).issuers[0]!
  }
  const call = async (token: string) => {
    const res = await request(`${sidecar.proxyUrl}/echo`, { headers: { authorization: `Bearer ${token}` } })
    const body = JSON.parse(await res.body.text())
    return { status: res.statusCode, verified: body.headers?.['x-nhi-verified'], reason: body.reason }
  }
  const fresh = (k: SigningKey, n: string) => mintToken(k, { azp: n }, { issuer: ISSUER, audience: 'orders' })

  t.same(
    await call(await fresh(key, 'before')),
    { status: 200, verified: 'true', reason: undefined },
    'control: the good key verifies',
  )
  const broken: SigningKey = { ...key, publicJwk: { ...key.publicJwk, n: key.publicJwk.n!.slice(0, 40) } }
  jwks.setKeys([broken])
  const failuresBefore = await refreshes('failure')
  await eventually(async () => (await refreshes('failure')) >= failuresBefore + 2, {
    what: 'two refreshes of the unusable set counted as failures',
  })
  t.match(
    await issuerState(),
    { ready: true, keys: 1, lastError: /no usable public signing keys.*RSA modulus of 240 bits/ },
    '/readyz: the last good key in use, and why the refresh failed',
  )
  t.same(
    await call(await fresh(key, 'during')),
    { status: 200, verified: 'true', reason: undefined },
    'a token never seen before verifies with the last good key',
  )
  const successes = await refreshes('success')
  await eventually(async () => (await refreshes('failure')) >= failuresBefore + 3, {
    what: 'one more refresh',
  })
  t.equal(await refreshes('success'), successes, 'no refresh of the unusable set counts as a success')

  const next = await createSigningKey('k2')
  jwks.setKeys([broken, next])
  await eventually(async () => (await issuerState())['lastError'] === undefined, {
    what: 'a successful refresh',
  })
  t.match(await issuerState(), { ready: true, keys: 1, unusableKeys: 1 }, '/readyz counts the key left out')
  t.same(
    await call(await fresh(next, 'after')),
    { status: 200, verified: 'true', reason: undefined },
    'the usable key next to it verifies',
  )
  const logged = await sidecar.process.waitForLog((l) => l['event'] === 'jwks_keys_unusable')
  t.match(
    logged,
    { issuer: ISSUER, unusable: 1, keys: 1, reason: /^kid "k1": an RSA modulus of 240 bits/ },
    'the key left out is logged with the reason',
  )
})

t.test('an issuer removed by a reload and added again starts without the keys it had', async (t) => {
  const { upstream, key } = await startUpstreamAndJwks(t)
  const dir = await scratchDir('keys-readded')
  const jwksFile = join(dir, 'jwks.json')
  await writeFile(jwksFile, JSON.stringify({ keys: [key.publicJwk] }))
  const issuer = { issuer: ISSUER, jwksFile, audiences: ['orders'] }
  const config = {
    service: 'orders',
    upstream: upstream.url,
    jwt: { onInvalid: 'reject', issuers: [issuer] },
  }
  const sidecar = await startTestSidecar(t, config)
  const call = async (token: string) => {
    const res = await request(`${sidecar.proxyUrl}/echo`, { headers: { authorization: `Bearer ${token}` } })
    return `${res.statusCode} ${await res.body.text()}`
  }
  const token = await mintToken(key, { azp: 'payments' }, { issuer: ISSUER, audience: 'orders' })
  t.match(await call(token), /^200 /, 'verified')
  t.ok(await sidecar.reload({ ...config, jwt: { onInvalid: 'reject', issuers: [] } }), 'the issuer removed')
  // the key is revoked while the issuer is out of the config: its file no longer holds a usable key
  await writeFile(jwksFile, JSON.stringify({ keys: [] }))
  t.ok(await sidecar.reload(config), 'the same issuer added again')
  t.notMatch(await call(token), /^200 /, 'the key it had before its removal is not served again')
})

t.test('a signed agents key directory down at a reload keeps its last good keys too', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const key = await createAgentKey()
  const directory = await startKeyDirectory([key])
  t.teardown(() => directory.close())
  const config = {
    service: 'shop',
    upstream: upstream.url,
    signedAgents: { authorities: ['127.0.0.1'], directories: [{ url: directory.url, name: 'acme-agent' }] },
  }
  const sidecar = await startTestSidecar(t, config)
  const url = `${sidecar.proxyUrl}/echo`
  const signedCall = async () => {
    const res = await request(url, { headers: await signRequest(key, url) })
    const echoed = JSON.parse(await res.body.text()).headers as Record<string, string>
    return `${echoed['x-nhi-identity']} ${echoed['x-nhi-verified']}`
  }
  t.equal(await signedCall(), 'acme-agent true', 'verified while the directory answers')
  directory.fault = 503
  const hits = directory.hits
  t.ok(await sidecar.reload({ ...config, service: 'shop-2' }), 'an unrelated change reloads')
  t.ok(directory.hits > hits, 'the reloaded config tried the directory')
  t.equal(
    await signedCall(),
    'acme-agent true',
    'a new signature verifies with the keys the running config had',
  )
})
