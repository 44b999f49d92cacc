// The last good keys of a `workers: N` pod: each worker reports the key sets it fetches (public keys only),
// the primary keeps the newest per key source, and a worker that starts while the IdP is down starts from
// them instead of with no keys at all, until its own fetch succeeds.
import { once } from 'node:events'
import { rm, writeFile } from 'node:fs/promises'
import { createServer, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { exportJWK, type JWK } from 'jose'
import t from 'tap'
import { configSchema, type IssuerConfig } from '../../src/config/schema.ts'
import { IssuerKeySet, KeyMemory, PodKeySets, type SharedKeySet } from '../../src/identity/jwt/jwks.ts'
import { verifyJwtWithKeySet } from '../../src/identity/jwt/jws.ts'
import { eventually } from '../helpers/eventually.ts'
import { createSigningKey, mintToken } from '../helpers/jwks.ts'
import { scratchDir } from '../helpers/scratch.ts'

const ISSUER = 'https://idp.pod-keys.test'

function issuerConfig(jwksFile: string): IssuerConfig {
  return configSchema.parse({ jwt: { issuers: [{ issuer: ISSUER, jwksFile, audiences: ['svc'] }] } }).jwt
    .issuers[0]!
}

const PRIVATE = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k']
const privateMembers = (jwks: readonly JWK[]) => jwks.flatMap((k) => PRIVATE.filter((m) => m in k))

t.test('a fetched key set is reported with its public keys only', async (t) => {
  const dir = await scratchDir('pod-keys-report')
  const file = join(dir, 'jwks.json')
  const signing = await createSigningKey('k1')
  const leaked = await createSigningKey('leaked')
  await writeFile(
    file,
    JSON.stringify({
      keys: [
        signing.publicJwk,
        { ...(await exportJWK(leaked.privateKey)), kid: 'leaked', alg: 'RS256' },
        { kty: 'oct', k: 'c2VjcmV0', kid: 'h' },
      ],
    }),
  )
  const reported: SharedKeySet[] = []
  const cfg = issuerConfig(file)
  const keys = new IssuerKeySet(cfg, {
    memory: new KeyMemory(
      (k) => reported.push(k),
      () => 1234,
    ),
  })
  t.teardown(() => keys.close())
  await keys.start()
  t.equal(reported.length, 1, 'one report per successful fetch')
  t.equal(reported[0]?.source, KeyMemory.sourceOf(cfg), 'named by its key source')
  t.equal(reported[0]?.at, 1234, 'stamped with when the fetch started')
  t.same(
    reported[0]?.jwks.map((k) => k.kid),
    ['k1'],
    'neither the private key nor the symmetric one is reported',
  )
  t.same(privateMembers(reported[0]?.jwks ?? []), [], 'no private member travels')

  await rm(file)
  await keys.refresh()
  t.equal(reported.length, 1, 'a failed fetch reports nothing')

  // an HMAC secret is never the pod's to hand around: each worker reads it or is handed it with the config
  const secretFile = join(dir, 'hmac.secret')
  await writeFile(secretFile, 'a-shared-secret-of-enough-length-0123456789')
  const hmac = new IssuerKeySet(
    configSchema.parse({
      jwt: { issuers: [{ issuer: ISSUER, secretFile, algorithms: ['HS256'], audiences: ['svc'] }] },
    }).jwt.issuers[0]!,
    { memory: new KeyMemory((k) => reported.push(k)) },
  )
  t.teardown(() => hmac.close())
  await hmac.start()
  t.equal(hmac.ready(), true, 'the secret is read')
  t.equal(reported.length, 1, 'an issuer with only a secretFile reports nothing')
})

t.test('a key set seeded with the pod keys verifies while its own fetch fails', async (t) => {
  const dir = await scratchDir('pod-keys-seed')
  const file = join(dir, 'jwks.json')
  const cfg = issuerConfig(file)
  const k1 = await createSigningKey('k1')
  const k2 = await createSigningKey('k2')
  const token = await mintToken(k1, {}, { issuer: ISSUER, audience: 'svc' })
  const verify = (keys: IssuerKeySet) =>
    verifyJwtWithKeySet(token, keys.getKey, {
      algorithms: new Set(['RS256']),
      issuer: ISSUER,
      audience: ['svc'],
      clockTolerance: 0,
      now: Date.now(),
    })

  const unseeded = new IssuerKeySet(cfg, { memory: new KeyMemory() })
  t.teardown(() => unseeded.close())
  await unseeded.start()
  t.equal(unseeded.ready(), false, 'without the pod keys: no keys while the source fails')

  const reported: SharedKeySet[] = []
  const memory = new KeyMemory((k) => reported.push(k))
  await memory.seed([{ source: KeyMemory.sourceOf(cfg), jwks: [k1.publicJwk], at: 1 }])
  t.same(reported, [], 'seeded keys are not reported back as fetched')
  const keys = new IssuerKeySet(cfg, { memory })
  t.teardown(() => keys.close())
  await keys.start()
  t.ok(keys.lastError, 'its own fetch failed')
  t.equal(keys.ready(), true, 'keys from the pod')
  t.equal((await verify(keys)).payload.iss, ISSUER, 'a token signed with them verifies')

  // the IdP is back with a rotated key set: the worker's own fetch replaces what the pod handed it
  await writeFile(file, JSON.stringify({ keys: [k2.publicJwk] }))
  const withdrawals = keys.withdrawals
  t.equal(await keys.refresh(), true, 'its own fetch succeeds')
  await t.rejects(verify(keys), 'the key only the pod had no longer verifies')
  t.equal(keys.withdrawals, withdrawals + 1, 'and counts as withdrawn, so no cached verdict outlives it')
  t.same(
    reported.map((r) => r.jwks.map((k) => k.kid)),
    [['k2']],
    'the fetched set is reported',
  )
})

t.test('seeded keys are held to the rules of a fetched key set', async (t) => {
  const cfg = issuerConfig('/nonexistent/jwks.json')
  const source = KeyMemory.sourceOf(cfg)
  const k1 = await createSigningKey('k1')
  const privateJwk = { ...(await exportJWK(k1.privateKey)), kid: 'k1', alg: 'RS256' }

  const onlyPrivate = new KeyMemory()
  await onlyPrivate.seed([{ source, jwks: [privateJwk, { kty: 'oct', k: 'c2VjcmV0' }], at: 1 }])
  t.equal(onlyPrivate.get(source), undefined, 'a set of private and symmetric keys seeds nothing')

  const mixed = new KeyMemory()
  const k2 = await createSigningKey('k2')
  await mixed.seed([{ source, jwks: [privateJwk, k2.publicJwk], at: 1 }])
  t.same(
    mixed.get(source)?.publicJwks.map((k) => k.kid),
    ['k2'],
    'only the public key of a mixed set is taken',
  )

  // what the memory has from its own fetch is never overwritten by what another process fetched
  const own = new KeyMemory()
  await own.seed([{ source, jwks: [k1.publicJwk], at: 1 }])
  await own.seed([{ source, jwks: [k2.publicJwk], at: 2 }])
  t.same(
    own.get(source)?.publicJwks.map((k) => k.kid),
    ['k1'],
    'a source the memory knows is left as it is',
  )
})

t.test("the pod's key sets: the newest fetch per source, for the sources of the config", async (t) => {
  const k1 = await createSigningKey('k1')
  const k2 = await createSigningKey('k2')
  const pod = new PodKeySets()
  pod.learn({ source: 'a', jwks: [k1.publicJwk], at: 10 })
  pod.learn({ source: 'a', jwks: [k2.publicJwk], at: 20 })
  // a fetch that succeeded earlier but whose report came later (another worker's)
  pod.learn({ source: 'a', jwks: [k1.publicJwk], at: 15 })
  t.same(
    pod.of(new Set(['a'])).map((s) => s.jwks.map((k) => k.kid)),
    [['k2']],
    'the newest fetch wins',
  )

  pod.learn({
    source: 'b',
    jwks: [{ ...(await exportJWK(k1.privateKey)), kid: 'k1' }, k1.publicJwk],
    at: 30,
  })
  const b = pod.of(new Set(['b']))
  t.same(privateMembers(b[0]?.jwks ?? []), [], 'a private member is never kept to hand out')
  t.same(
    pod.of(new Set(['a'])).map((s) => s.source),
    ['a'],
    'only the sources asked for',
  )

  pod.retain(new Set(['b']))
  t.same(
    pod.of(new Set(['a', 'b'])).map((s) => s.source),
    ['b'],
    'a source the config dropped is forgotten',
  )
  // a worker still on the old config (it missed the reload and is being replaced) reports 'a' late
  pod.learn({ source: 'a', jwks: [k2.publicJwk], at: 40 }, new Set(['b']))
  t.same(
    pod.of(new Set(['a', 'b'])).map((s) => s.source),
    ['b'],
    'a late report of a dropped source is not kept for a later reload that adds it again',
  )
  pod.learn({ source: 'c', jwks: [k2.publicJwk], at: 50 }, new Set(['b', 'c']))
  t.same(
    pod.of(new Set(['b', 'c'])).map((s) => s.source),
    ['b', 'c'],
    'a source of the config (or of a reload under way) is kept',
  )
})

t.test('of two fetches around a key rotation, the pod keeps the one that asked the IdP later', async (t) => {
  const before = await createSigningKey('before-rotation')
  const after = await createSigningKey('after-rotation')
  let current = before
  // the first fetch is held until the second has been answered and reported, then answered with what it
  // would have got when it asked: the keys from before the rotation
  let held: { res: ServerResponse; keys: JWK[] } | undefined
  const idp = createServer((req, res) => {
    req.resume()
    res.setHeader('content-type', 'application/json')
    const keys = [current.publicJwk]
    if (held === undefined && current === before) held = { res, keys }
    else res.end(JSON.stringify({ keys }))
  })
  idp.listen(0, '127.0.0.1')
  await once(idp, 'listening')
  t.teardown(() => {
    idp.closeAllConnections()
    idp.close()
  })
  const jwksUri = `http://127.0.0.1:${(idp.address() as AddressInfo).port}/jwks.json`
  const cfg = configSchema.parse({ jwt: { issuers: [{ issuer: ISSUER, jwksUri, audiences: ['svc'] }] } }).jwt
    .issuers[0]!
  const pod = new PodKeySets()
  const reports: SharedKeySet[] = []
  const worker = () =>
    new IssuerKeySet(cfg, {
      memory: new KeyMemory((k) => {
        reports.push(k)
        pod.learn(k)
      }),
    })
  const slow = worker()
  const quick = worker()
  t.teardown(() => {
    slow.close()
    quick.close()
  })
  const slowStart = slow.start()
  await eventually(() => held !== undefined, { what: 'the first fetch to reach the IdP' })
  current = after
  await quick.start()
  t.equal(reports.length, 1, 'the later fetch reported first')
  held!.res.end(JSON.stringify({ keys: held!.keys }))
  await slowStart
  await eventually(() => reports.length === 2, { what: 'the held fetch to report' })
  t.same(
    pod.of(new Set([KeyMemory.sourceOf(cfg)])).flatMap((k) => k.jwks.map((j) => j.kid)),
    ['after-rotation'],
    'a starting worker is handed the keys from after the rotation, not those of the fetch that finished last',
  )
})

t.test(
  'fetch start times are taken on the monotonic clock: a wall clock stepped back cannot misorder them',
  async (t) => {
    const wall = Date.now
    // an NTP correction or a resumed VM: after the first reading the wall clock is an hour behind
    let readings = 0
    Date.now = () => (readings++ === 0 ? wall() : wall() - 3_600_000)
    t.teardown(() => {
      Date.now = wall
    })
    const memory = new KeyMemory()
    const first = memory.stamp()
    const second = memory.stamp()
    Date.now = wall
    t.ok(second >= first, `the later fetch stamps later (${first} then ${second})`)
    const pod = new PodKeySets()
    pod.learn({ source: 's', jwks: [{ kty: 'EC', kid: 'old' }], at: first })
    pod.learn({ source: 's', jwks: [{ kty: 'EC', kid: 'new' }], at: second })
    t.same(
      pod.of(new Set(['s']))[0]?.jwks.map((k) => k.kid),
      ['new'],
      'the pod keeps the key set of the later fetch',
    )
  },
)
