// Failed verifications are cached by token hash, from a token's second request on, with a lifetime that fits
// the reason: an expired token stays expired, a bad signature holds until the issuer's keys change (a minute at
// most), an unknown kid and a bad signature (with or without a kid: a new key the issuer may have put in its
// set) only while it could not make the keys be refetched anyway, and a key-set reload drops both key-dependent
// kinds at once. Keys come from a real JWKS server; the clock is a manual one so lifetimes are checked at their
// edges.
import { decodeJwt } from 'jose'
import t, { type Test } from 'tap'
import { configSchema } from '../../src/config/schema.ts'
import { JwtExtractor } from '../../src/identity/extractors/jwt.ts'
import type { ConnectionInfo, Failure, JwtEvidence, RequestInfo } from '../../src/types.ts'
import { eventually } from '../helpers/eventually.ts'
import {
  createSigningKey,
  type JwksServer,
  mintToken,
  type SigningKey,
  startJwksServer,
} from '../helpers/jwks.ts'

const conn: ConnectionInfo = { remoteAddress: '127.0.0.1', remotePort: 40000, tls: false }
const req = (token: string): RequestInfo => ({
  method: 'GET',
  path: '/',
  url: '/',
  headers: { authorization: `Bearer ${token}` },
})

let keyA: SigningKey
let keyB: SigningKey
t.before(async () => {
  keyA = await createSigningKey('neg-a', 'ES256')
  keyB = await createSigningKey('neg-b', 'ES256')
})

interface Setup {
  idp: JwksServer
  clock: { ms: number }
  extract: (token: string) => Promise<JwtEvidence | Failure>
  /** a token's first two requests: an answer is kept from a token's second request on; the kept answer */
  kept: (token: string) => Promise<JwtEvidence | Failure>
  /** the cached answer (given synchronously), or undefined when the token would be verified again */
  cached: (token: string) => JwtEvidence | Failure | undefined
}

async function setup(t: Test, opts: { cooldownMs?: number; refreshInterval?: string } = {}): Promise<Setup> {
  const idp = await startJwksServer([keyA])
  t.teardown(() => idp.close())
  const clock = { ms: Date.now() }
  const x = new JwtExtractor(
    configSchema.parse({
      jwt: {
        issuers: [
          {
            issuer: idp.url,
            jwksUri: idp.jwksUri,
            audiences: 'any',
            ...(opts.refreshInterval ? { refreshInterval: opts.refreshInterval } : {}),
          },
        ],
        verifyWorkers: 0,
      },
    }).jwt,
    { now: () => clock.ms, unknownKidCooldownMs: opts.cooldownMs ?? 30_000 },
  )
  t.teardown(() => x.close())
  await x.start()
  const extract = async (token: string) => (await x.extract(req(token), conn)) as JwtEvidence | Failure
  const cached = (token: string) => {
    const r = x.extract(req(token), conn)
    if (r instanceof Promise) return undefined
    return r as JwtEvidence | Failure
  }
  const kept = async (token: string) => {
    const first = await extract(token)
    if (cached(token) !== undefined) throw new Error('an answer was kept on its first request')
    const second = await extract(token)
    if ('failed' in first && (!('failed' in second) || second.reason !== first.reason))
      throw new Error(
        `the second request answered ${JSON.stringify(second)}, the first ${JSON.stringify(first)}`,
      )
    return second
  }
  return { idp, clock, extract, kept, cached }
}

/** signed by keyB while its header names keyA: a bad signature against the key set */
function forged(idp: JwksServer, claims: Record<string, unknown> = {}) {
  return mintToken(keyB, claims, { issuer: idp.url, header: { kid: keyA.kid } })
}

/** signed by keyB, without a kid: a bad signature against the only key of the set, whatever it is */
function forgedWithoutKid(idp: JwksServer, claims: Record<string, unknown> = {}) {
  return mintToken(keyB, claims, { issuer: idp.url, header: { kid: undefined } })
}

t.test('an expired token is answered from the cache for as long as a verified one would be', async (t) => {
  const s = await setup(t)
  const expired = await mintToken(keyA, {}, { issuer: s.idp.url, expiresIn: -600 })
  const first = await s.kept(expired)
  t.match(first, { failed: true, reason: 'expired' })
  s.clock.ms += 4 * 60_000
  t.equal(s.cached(expired), first, 'still the cached failure four minutes later')
  s.clock.ms += 2 * 60_000
  t.equal(s.cached(expired), undefined, 'verified again after five minutes (the cache bound)')
})

t.test('a token that is not valid yet is cached for 5 s only', async (t) => {
  const s = await setup(t)
  const early = await mintToken(keyA, {}, { issuer: s.idp.url, notBefore: 600 })
  const first = await s.kept(early)
  t.match(first, { failed: true, reason: 'not_yet_valid' })
  s.clock.ms += 4_000
  t.equal(s.cached(early), first, 'cached within 5 s')
  s.clock.ms += 2_000
  t.equal(s.cached(early), undefined, 'verified again after 5 s')
})

t.test('a token that is not valid yet is verified again at the millisecond it turns valid', async (t) => {
  const s = await setup(t)
  const early = await mintToken(keyA, {}, { issuer: s.idp.url, notBefore: 600 })
  const nbf = decodeJwt(early).nbf!
  // valid from nbf less the 30 s clock skew: a whole second, at whose very millisecond it verifies
  const validFrom = (nbf - 30) * 1000
  s.clock.ms = validFrom - 3_000
  const first = await s.kept(early)
  t.match(first, { failed: true, reason: 'not_yet_valid' })
  s.clock.ms = validFrom - 1
  t.equal(s.cached(early), first, 'cached until the millisecond before')
  s.clock.ms = validFrom
  t.equal(s.cached(early), undefined, 'not answered from the cache once valid')
  t.match(await s.extract(early), { verified: true }, 'verified, as a token never cached is')
})

t.test(
  'a bad signature is cached for a minute at most, and dropped by a key-set reload before that',
  async (t) => {
    // a cooldown longer than a minute: the minute bounds the answer
    const s = await setup(t, { cooldownMs: 120_000 })
    const bad = await forgedWithoutKid(s.idp)
    const first = await s.kept(bad)
    t.match(first, { failed: true, reason: 'bad_signature' })
    s.clock.ms += 59_000
    t.equal(s.cached(bad), first, 'cached for 59 s')
    s.clock.ms += 2_000
    t.equal(s.cached(bad), undefined, 'verified again after a minute')
    t.match(await s.extract(bad), { failed: true, reason: 'bad_signature' })
    t.equal(s.idp.hits, 1, 'within the cooldown: no refetch')
    t.match(s.cached(bad), { reason: 'bad_signature' }, 'cached again')

    // a periodic refresh (real timers; the manual clock stands still, so only the reload can end it)
    const r = await setup(t, { cooldownMs: 120_000, refreshInterval: '1s' })
    const other = await forgedWithoutKid(r.idp)
    t.match(await r.kept(other), { failed: true, reason: 'bad_signature' })
    const hits = r.idp.hits
    await eventually(() => r.idp.hits > hits, { what: 'a periodic refresh of the key set' })
    await eventually(() => r.cached(other) === undefined, {
      what: 'the bad signature verified again against the reloaded keys',
    })
  },
)

/**
 * A bad signature (of `forge`) is cached for the rest of a 30 s cooldown, and verified again, with the keys
 * refetched, once the cooldown is over.
 */
async function badSignatureCachedForTheCooldown(t: Test, forge: (idp: JwksServer) => Promise<string>) {
  const s = await setup(t, { cooldownMs: 30_000 })
  const bad = await forge(s.idp)
  const first = await s.kept(bad)
  t.match(first, { failed: true, reason: 'bad_signature' })
  t.equal(s.idp.hits, 1, 'no refetch within the cooldown')
  s.clock.ms += 29_000
  t.equal(s.cached(bad), first, 'a repeat within the cooldown is answered from the cache')
  s.clock.ms += 2_000
  t.equal(s.cached(bad), undefined, 'once a refetch is allowed the token is verified again')
  t.match(await s.extract(bad), { failed: true, reason: 'bad_signature' })
  t.equal(s.idp.hits, 2, 'after a refetch that brought the same key')
}

// the issuer may have re-keyed and signs without a kid (verifier.ts): the token is verified again once it
// could make the keys be refetched, as an unknown kid is
t.test('a bad signature without a kid is cached while it could not refetch the keys', async (t) => {
  await badSignatureCachedForTheCooldown(t, forgedWithoutKid)
})

// the issuer may have put a new key under the kid (verifier.ts): the token is verified again once it could
// make the keys be refetched, as an unknown kid is
t.test('a bad signature under a known kid is cached while it could not refetch the keys', async (t) => {
  await badSignatureCachedForTheCooldown(t, forged)

  const long = await setup(t, { cooldownMs: 120_000 })
  const other = await forged(long.idp)
  const kept = await long.kept(other)
  long.clock.ms += 59_000
  t.equal(long.cached(other), kept, 'a longer cooldown: cached for 59 s')
  long.clock.ms += 2_000
  t.equal(long.cached(other), undefined, 'but not past a minute')
})

t.test('an unknown kid is cached while it could not refetch the keys, not past that', async (t) => {
  const s = await setup(t, { cooldownMs: 30_000 })
  const tokenB = await mintToken(keyB, {}, { issuer: s.idp.url })
  // right after start-up the cooldown blocks a refetch: the answer holds for the rest of the cooldown
  const first = await s.kept(tokenB)
  t.match(first, { failed: true, reason: 'unknown_kid' })
  t.equal(s.idp.hits, 1, 'no refetch within the cooldown')
  s.clock.ms += 29_000
  t.equal(s.cached(tokenB), first, 'a repeat within the cooldown is answered from the cache')
  s.idp.setKeys([keyA, keyB])
  s.clock.ms += 2_000
  t.equal(s.cached(tokenB), undefined, 'once a refetch is allowed the token is verified again')
  t.match(await s.extract(tokenB), { verified: true, kid: keyB.kid }, 'and the refetch finds its key')
  t.equal(s.idp.hits, 2)
})

// a refetch is allowed from the millisecond the cooldown ends: a cached answer that stood for "no refetch
// allowed" must not be given at that millisecond, when a request never cached would refetch the keys
t.test('an unknown kid is verified again at the millisecond the cooldown ends', async (t) => {
  const s = await setup(t, { cooldownMs: 30_000 })
  // the start's fetch was the last attempt: the cooldown counts from it
  const fetchedAt = s.clock.ms
  const tokenB = await mintToken(keyB, {}, { issuer: s.idp.url })
  const first = await s.kept(tokenB)
  t.match(first, { failed: true, reason: 'unknown_kid' })
  s.idp.setKeys([keyA, keyB])
  s.clock.ms = fetchedAt + 29_999
  t.equal(s.cached(tokenB), first, 'cached until the millisecond before')
  s.clock.ms = fetchedAt + 30_000
  t.equal(s.cached(tokenB), undefined, 'not answered from the cache once a refetch is allowed')
  t.match(await s.extract(tokenB), { verified: true, kid: keyB.kid }, 'and the refetch finds its key')
})

t.test(
  'a bad signature under a known kid is verified again at the millisecond the cooldown ends',
  async (t) => {
    const s = await setup(t, { cooldownMs: 30_000 })
    const fetchedAt = s.clock.ms
    const bad = await forged(s.idp)
    const first = await s.kept(bad)
    t.match(first, { failed: true, reason: 'bad_signature' })
    // the issuer puts keyB under keyA's kid (re-keyed under the same kid): the token now verifies
    s.idp.setKeys([{ ...keyB, publicJwk: { ...keyB.publicJwk, kid: keyA.kid } }])
    s.clock.ms = fetchedAt + 29_999
    t.equal(s.cached(bad), first, 'cached until the millisecond before')
    s.clock.ms = fetchedAt + 30_000
    t.equal(s.cached(bad), undefined, 'not answered from the cache once a refetch is allowed')
    t.match(await s.extract(bad), { verified: true }, 'and the refetch finds the new key')
  },
)

t.test('a key-set reload drops a cached unknown kid before its lifetime ends', async (t) => {
  // periodic refresh every second (real timers); the manual clock stands still, so only the reload can end it
  const s = await setup(t, { cooldownMs: 60_000, refreshInterval: '1s' })
  const tokenB = await mintToken(keyB, {}, { issuer: s.idp.url })
  const first = await s.kept(tokenB)
  t.match(first, { failed: true, reason: 'unknown_kid' })
  t.equal(s.cached(tokenB), first, 'cached')
  const hits = s.idp.hits
  s.idp.setKeys([keyA, keyB])
  await eventually(() => s.idp.hits > hits, { what: 'a periodic refresh of the key set' })
  await eventually(() => s.cached(tokenB) === undefined, { what: 'the cached unknown kid dropped' })
  t.match(await s.extract(tokenB), { verified: true, kid: keyB.kid }, 'verified with the reloaded keys')
})
