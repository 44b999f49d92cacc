// The verification worker pool on its own and behind the JWT extractor: jobs waiting for a worker are served
// one peer at a time in turn, the per-peer and global queue bounds refuse work at once (verification_busy,
// not cached), and a closed pool answers every waiting job instead of leaving it hanging.
import { randomBytes } from 'node:crypto'
import t, { type Test } from 'tap'
import { configSchema } from '../../src/config/schema.ts'
import { JwtExtractor, type JwtExtractorOptions } from '../../src/identity/extractors/jwt.ts'
import {
  DEFAULT_PER_WORKER,
  type PoolJob,
  VerifyPool,
  WORKER_GONE,
  type WorkerReply,
} from '../../src/identity/jwt/pool.ts'
import type { ConnectionInfo, Failure, JwtEvidence } from '../../src/types.ts'
import { CidrSet } from '../../src/util/cidr.ts'
import { eventually } from '../helpers/eventually.ts'
import { createSigningKey, mintToken, type SigningKey, startJwksServer } from '../helpers/jwks.ts'

const ISSUER = 'https://idp.pool-unit.example'

let key: SigningKey
t.before(async () => {
  key = await createSigningKey('unit-k1', 'ES256')
})

/** the first job starts the worker and is answered WORKER_GONE (verify inline) until the worker is ready */
async function ready(t: Test, pool: VerifyPool, token: string, keys: Parameters<VerifyPool['verify']>[1]) {
  t.match(
    await pool.verify(job(token), keys, 'warm-up'),
    { code: WORKER_GONE },
    'inline while the worker starts',
  )
  await eventually(() => pool.stats().workers === 1, { what: 'the worker ready' })
}

/** `k`'s key set as the issuer's key cache hands it to the pool, at the cache's `version` */
const keySet = (k: SigningKey, version = 1) => ({ version, jwks: [k.publicJwk], kids: new Set([k.kid]) })

/** a request that presents `token` */
const bearer = (token: string, headers: Record<string, string> = {}) => ({
  method: 'GET',
  path: '/',
  url: '/',
  headers: { authorization: `Bearer ${token}`, ...headers },
})

/** a JWT extractor that trusts ISSUER (keys from a local JWKS server) and verifies with one worker */
async function startExtractor(t: Test, opts?: JwtExtractorOptions) {
  const idp = await startJwksServer([key])
  t.teardown(() => idp.close())
  const x = new JwtExtractor(
    configSchema.parse({
      jwt: { issuers: [{ issuer: ISSUER, jwksUri: idp.jwksUri, audiences: 'any' }], verifyWorkers: 1 },
    }).jwt,
    opts,
  )
  t.teardown(() => x.close())
  await x.start()
  return x
}

const job = (token: string): PoolJob => ({
  token,
  issuer: ISSUER,
  algorithms: ['ES256'],
  clockTolerance: 30,
  now: Date.now(),
})

t.test('waiting jobs are served round-robin by peer, and the bounds refuse the rest at once', async (t) => {
  const pool = new VerifyPool({ size: 1, perWorker: 1, maxQueue: 5, maxQueuePerPeer: 3 })
  t.teardown(() => pool.close())
  const keys = keySet(key)
  const tokens = await Promise.all(
    Array.from({ length: 8 }, (_, i) => mintToken(key, { n: i }, { issuer: ISSUER, subject: `s${i}` })),
  )
  await ready(t, pool, tokens[0]!, keys)
  const order: string[] = []
  const submit = (name: string, i: number, peer: string) => {
    const p = pool.verify(job(tokens[i]!), keys, peer)
    return p?.then((r: WorkerReply) => {
      order.push(name)
      return r
    })
  }
  // a1 goes straight to the worker; a2–a4 fill peer a's queue; a5 is past it
  const a = [submit('a1', 0, 'a'), submit('a2', 1, 'a'), submit('a3', 2, 'a'), submit('a4', 3, 'a')]
  t.equal(submit('a5', 4, 'a'), undefined, "refused: peer a's queue is full")
  const b = [submit('b1', 5, 'b'), submit('b2', 6, 'b')]
  t.equal(submit('b3', 7, 'b'), undefined, 'refused: the global queue is full')
  t.match(pool.stats(), { workers: 1, queued: 5, running: 1, overflowed: 2 })
  const replies = await Promise.all([...a, ...b])
  t.ok(
    replies.every((r) => r && 'header' in r),
    'every accepted job verified in the worker',
  )
  t.same(order, ['a1', 'a2', 'b1', 'a3', 'b2', 'a4'], 'peers take turns: b is not stuck behind a')
  t.match(pool.stats(), { workers: 1, queued: 0, running: 0, verified: 6, overflowed: 2 })
})

// One IPv6 host owns a /64: its addresses are one peer, with one turn and one per-peer bound, however it
// writes them; IPv4 addresses (also written v4-mapped) stay one peer each.
t.test('an IPv6 /64 waits as one peer, an IPv4 address as its own', async (t) => {
  const pool = new VerifyPool({ size: 1, perWorker: 1, maxQueue: 20, maxQueuePerPeer: 2 })
  t.teardown(() => pool.close())
  const keys = keySet(key)
  const tokens = await Promise.all(
    Array.from({ length: 12 }, (_, i) => mintToken(key, { n: i }, { issuer: ISSUER, subject: `v6-${i}` })),
  )
  await ready(t, pool, tokens[0]!, keys)
  const order: string[] = []
  let next = 0
  const submit = (name: string, peer: string) =>
    pool.verify(job(tokens[next++]!), keys, peer)?.then((r: WorkerReply) => {
      order.push(name)
      return r
    })
  // h1 goes straight to the worker; h2 and h3, other addresses of the same /64, fill its queue
  const accepted = [
    submit('h1', '2001:db8:0:1::1'),
    submit('h2', '2001:db8:0:1::2'),
    submit('h3', '2001:DB8:0:1:ffff:ffff:ffff:ffff'),
  ]
  t.equal(submit('h4', '2001:0db8:0000:0001::4%eth0'), undefined, "refused: the /64's queue is full")
  t.equal(submit('h5', '2001:db8:0:1:1234::'), undefined, 'refused: whatever the address in the /64')
  accepted.push(submit('o1', '2001:db8:0:2::1'))
  accepted.push(submit('m1', '::ffff:10.0.0.1'))
  accepted.push(submit('m2', '10.0.0.1'))
  t.equal(submit('m3', '::FFFF:10.0.0.1'), undefined, 'refused: a v4-mapped address is its IPv4 address')
  accepted.push(submit('v1', '10.0.0.2'))
  t.match(pool.stats(), { queued: 6, running: 1, overflowed: 3 })
  const replies = await Promise.all(accepted)
  t.ok(
    replies.every((r) => r && 'header' in r),
    'every accepted job verified in the worker',
  )
  t.same(
    order,
    ['h1', 'h2', 'o1', 'm1', 'v1', 'h3', 'm2'],
    "the other /64 and each IPv4 address take their turns before the host's second waiting job",
  )
})

// The global bound is shared: a few peers that fill it between them must not keep out a peer that has
// nothing waiting. Its job takes the place of the newest job of the peer with the most waiting.
t.test(
  'a full queue makes room for a peer with fewer jobs waiting, at the expense of the longest queue',
  async (t) => {
    const pool = new VerifyPool({ size: 1, perWorker: 1, maxQueue: 4, maxQueuePerPeer: 3 })
    t.teardown(() => pool.close())
    const keys = keySet(key)
    const tokens = await Promise.all(
      Array.from({ length: 10 }, (_, i) => mintToken(key, { n: i }, { issuer: ISSUER, subject: `s${i}` })),
    )
    await ready(t, pool, tokens[0]!, keys)
    const order: string[] = []
    const submit = (name: string, i: number, peer: string) =>
      pool.verify(job(tokens[i]!), keys, peer)?.then((r: WorkerReply) => {
        order.push(name)
        return r
      })
    // a1 goes to the worker; a2–a4 and b1 fill the queue
    const a = [submit('a1', 0, 'a'), submit('a2', 1, 'a'), submit('a3', 2, 'a'), submit('a4', 3, 'a')]
    const b1 = submit('b1', 4, 'b')
    t.match(pool.stats(), { queued: 4, overflowed: 0 }, 'the queue is full')
    const c1 = submit('c1', 5, 'c')
    t.ok(c1, 'a peer with nothing waiting is queued although the queue is full')
    t.match(await a[3], { code: 'ERR_NHI_POOL_BUSY' }, 'in place of the newest job of the longest queue')
    t.match(pool.stats(), { queued: 4, overflowed: 1 }, 'the queue stays within its bound')
    t.equal(submit('c2', 6, 'c'), undefined, 'refused: no queue has two more waiting than c')
    t.equal(submit('b2', 7, 'b'), undefined, 'refused: nor than b')
    const d1 = submit('d1', 8, 'd')
    t.ok(d1, 'another idle peer is queued')
    t.match(
      await a[2],
      { code: 'ERR_NHI_POOL_BUSY' },
      'in place of the newest job of a, still the longest queue',
    )
    t.equal(
      submit('e1', 9, 'e'),
      undefined,
      'refused: every peer has one waiting, taking the place of one would only swap them',
    )
    t.match(pool.stats(), { queued: 4, overflowed: 5 })
    const replies = await Promise.all([a[0], a[1], b1, c1, d1])
    t.ok(
      replies.every((r) => r && 'header' in r),
      'every job that kept its place verified in the worker',
    )
    t.same(
      order,
      ['a4', 'a3', 'a1', 'a2', 'b1', 'c1', 'd1'],
      'the jobs that gave their place answered at once',
    )
  },
)

t.test('jobs started in one turn of the event loop go to the worker in one message', async (t) => {
  const pool = new VerifyPool({ size: 1, maxQueue: 100, maxQueuePerPeer: 100 })
  t.teardown(() => pool.close())
  const keys = keySet(key)
  const tokens = await Promise.all(
    Array.from({ length: DEFAULT_PER_WORKER + 4 }, (_, i) =>
      mintToken(key, { n: i }, { issuer: ISSUER, subject: `s${i}` }),
    ),
  )
  await ready(t, pool, tokens[0]!, keys)
  const before = pool.stats().batches
  // what each caller of the first batch sees when it continues: the messages sent by then
  const seen: number[] = []
  const replies = await Promise.all(
    tokens.map((tok, i) => {
      const reply = pool.verify(job(tok), keys, `peer-${i % 3}`)
      if (i >= DEFAULT_PER_WORKER) return reply
      return reply?.then((r) => {
        seen.push(pool.stats().batches - before)
        return r
      })
    }),
  )
  t.ok(
    replies.every((r) => r && 'header' in r),
    'every job verified in the worker',
  )
  // one full batch at once; the 4 that waited go together when its replies come back
  t.equal(pool.stats().batches - before, 2, `${tokens.length} jobs in two messages`)
  t.same(
    seen,
    Array.from({ length: DEFAULT_PER_WORKER }, () => 2),
    "the 4 that waited were sent before the first batch's callers continued (the worker is not left idle)",
  )
  t.match(pool.stats(), { verified: tokens.length, queued: 0, running: 0 })
})

t.test('a job the worker cannot take does not leave the rest of its batch unanswered', async (t) => {
  const pool = new VerifyPool({ size: 1, maxQueue: 10, maxQueuePerPeer: 10 })
  t.teardown(() => pool.close())
  const keys = keySet(key)
  const token = await mintToken(key, {}, { issuer: ISSUER })
  await ready(t, pool, token, keys)
  const before = pool.stats().batches
  // a key set jose refuses (not a JWKS) sent with one job, and a good job beside it in the same message
  const broken = { version: 2, jwks: [null as unknown as typeof key.publicJwk] }
  const [bad, good] = await Promise.all([
    pool.verify(job(token), broken, 'a'),
    pool.verify(job(token), keys, 'b'),
  ])
  t.equal(pool.stats().batches - before, 1, 'both went in one message')
  t.match(bad, { code: 'ERR_NHI_UNKNOWN' }, 'the job that threw is answered (its caller verifies inline)')
  t.match(good, { header: { alg: 'ES256' } }, 'the other job of the batch verified')
})

t.test('one message carries key sets and checks taken on in job order', async (t) => {
  const pool = new VerifyPool({ size: 1, maxQueue: 10, maxQueuePerPeer: 10 })
  t.teardown(() => pool.close())
  const rotated = await createSigningKey('unit-k2', 'ES256')
  const before = keySet(key)
  const after = keySet(rotated, 2)
  const old = await mintToken(key, {}, { issuer: ISSUER })
  const fresh = await mintToken(rotated, {}, { issuer: ISSUER })
  await ready(t, pool, old, before)
  const sent = pool.stats().batches
  // the key set is reloaded between two jobs of one turn: each job is checked against the keys it was sent
  // with, and a later job's stricter checks do not reach an earlier one
  const [first, second, strict, third] = await Promise.all([
    pool.verify(job(old), before, 'a'),
    pool.verify(job(fresh), after, 'b'),
    pool.verify({ ...job(fresh), audience: ['nobody'] }, after, 'c'),
    pool.verify(job(fresh), after, 'd'),
  ])
  t.equal(pool.stats().batches - sent, 1, 'all four in one message')
  t.match(first, { header: { alg: 'ES256', kid: 'unit-k1' } }, 'verified with the key set it was sent with')
  t.match(second, { header: { alg: 'ES256', kid: 'unit-k2' } }, 'verified with the reloaded key set')
  t.match(strict, { code: 'ERR_JWT_CLAIM_VALIDATION_FAILED', claim: 'aud' }, 'its own checks')
  t.match(third, { header: { alg: 'ES256' } }, 'the checks after it are the usual ones again')
  // a token without kid (the worker tries the key set's keys) answers no kid, and an empty kid is a kid
  const [noKid, emptyKid] = await Promise.all([
    pool.verify(
      job(await mintToken(rotated, {}, { issuer: ISSUER, header: { kid: undefined } })),
      after,
      'e',
    ),
    pool.verify(job(await mintToken(rotated, {}, { issuer: ISSUER, header: { kid: '' } })), after, 'e'),
  ])
  t.same(noKid, { id: (noKid as WorkerReply).id, header: { alg: 'ES256', kid: undefined } }, 'no kid')
  t.match(emptyKid, { code: 'ERR_JWKS_NO_MATCHING_KEY' }, 'the empty kid is looked up as one (no key has it)')
})

t.test('a closed pool answers waiting jobs (the caller then verifies inline)', async (t) => {
  const pool = new VerifyPool({ size: 1, perWorker: 1, maxQueue: 10, maxQueuePerPeer: 10 })
  const keys = keySet(key)
  const token = await mintToken(key, {}, { issuer: ISSUER })
  await ready(t, pool, token, keys)
  const running = pool.verify(job(token), keys, 'a')
  const waiting = pool.verify(job(token), keys, 'a')
  pool.close()
  t.match(await running, { code: WORKER_GONE })
  t.match(await waiting, { code: WORKER_GONE })
  t.equal(pool.usable, false)
  t.match(await pool.verify(job(token), keys, 'a'), { code: WORKER_GONE }, 'after close: inline')
})

t.test(
  'behind the extractor: verification_busy past the per-peer bound, not cached; other peers unaffected',
  async (t) => {
    const x = await startExtractor(t)
    const loud: ConnectionInfo = { remoteAddress: '10.0.0.1', remotePort: 1, tls: false }
    const quiet: ConnectionInfo = { remoteAddress: '10.0.0.2', remotePort: 1, tls: false }
    const tokens = await Promise.all(
      Array.from({ length: 300 }, (_, i) => mintToken(key, { n: i }, { issuer: ISSUER, subject: 'loud' })),
    )
    const quietToken = await mintToken(key, {}, { issuer: ISSUER, subject: 'quiet' })
    const warmUp = await mintToken(key, {}, { issuer: ISSUER, subject: 'warm-up' })
    t.match(
      await x.extract(bearer(warmUp), quiet),
      { verified: true },
      'verified inline while the worker starts',
    )
    await eventually(() => x.verifyPool().workers === 1, { what: 'the worker ready' })
    // all submitted in one turn of the event loop: one batch runs in the worker, 256 wait, the rest are refused
    const results = tokens.map((tok) => x.extract(bearer(tok), loud))
    const quietResult = x.extract(bearer(quietToken), quiet)
    const settled = (await Promise.all(results)) as (JwtEvidence | Failure)[]
    const busy = settled.filter((r) => 'failed' in r && r.reason === 'verification_busy')
    t.equal(busy.length, 300 - DEFAULT_PER_WORKER - 256, 'past the per-peer bound: verification_busy')
    t.ok(
      settled.filter((r) => !('failed' in r)).every((r) => 'verified' in r && r.verified),
      'the rest verified',
    )
    t.match(await quietResult, { verified: true }, "another peer's new token is still accepted and verified")
    const refused = settled.findIndex((r) => 'failed' in r)
    t.match(
      await x.extract(bearer(tokens[refused]!), loud),
      { verified: true },
      'a refused token is not cached as a failure: it verifies once the queue has room',
    )
    t.match(x.verifyPool(), { overflowed: busy.length, queued: 0 })
  },
)

// Each flooding address stays within its own bound (256), but five of them fill the shared one (1,024):
// a client with nothing waiting must still get its new token verified, not verification_busy (a 401 under
// jwt.onInvalid: reject) for as long as the flood lasts.
t.test(
  'behind the extractor: addresses that fill the whole queue between them do not keep out a quiet one',
  async (t) => {
    const x = await startExtractor(t)
    const peer = (address: string): ConnectionInfo => ({ remoteAddress: address, remotePort: 1, tls: false })
    // new tokens with the issuer's kid and a signature that does not verify: the flood costs nothing to make
    const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url')
    const header = b64({ alg: 'ES256', kid: key.kid })
    const forged = (i: number) =>
      `${header}.${b64({ iss: ISSUER, sub: `flood-${i}` })}.${randomBytes(64).toString('base64url')}`
    const warmUp = await mintToken(key, {}, { issuer: ISSUER, subject: 'warm-up' })
    const quietToken = await mintToken(key, {}, { issuer: ISSUER, subject: 'quiet' })
    t.match(await x.extract(bearer(warmUp), peer('10.0.1.1')), { verified: true }, 'inline warm-up')
    await eventually(() => x.verifyPool().workers === 1, { what: 'the worker ready' })

    const FLOODERS = 5
    const PER_FLOODER = 300
    const flood = Array.from({ length: FLOODERS * PER_FLOODER }, (_, i) =>
      x.extract(bearer(forged(i)), peer(`10.0.0.${1 + Math.floor(i / PER_FLOODER)}`)),
    )
    t.match(x.verifyPool(), { queued: 1024 }, 'the flood fills the whole queue')
    const quiet = x.extract(bearer(quietToken), peer('10.0.1.1'))
    t.match(await quiet, { verified: true }, "a quiet client's new token is verified")
    const settled = (await Promise.all(flood)) as (JwtEvidence | Failure)[]
    const busy = settled.filter((r) => 'failed' in r && r.reason === 'verification_busy').length
    t.equal(
      busy,
      FLOODERS * PER_FLOODER - DEFAULT_PER_WORKER - 1023,
      'the flood keeps one place less: the quiet token took it',
    )
    t.ok(
      settled.every(
        (r) => 'failed' in r && (r.reason === 'verification_busy' || r.reason === 'bad_signature'),
      ),
      'the rest of the flood fails its signature check',
    )
    t.match(x.verifyPool(), { overflowed: busy, queued: 0 })
  },
)

t.test(
  'behind a trusted proxy the per-peer bound is per forwarded client; an untrusted peer cannot spread its load',
  async (t) => {
    const x = await startExtractor(t, { trustedProxies: new CidrSet(['10.0.0.9/32']) })
    const ingress: ConnectionInfo = { remoteAddress: '10.0.0.9', remotePort: 1, tls: false }
    const untrusted: ConnectionInfo = { remoteAddress: '10.0.0.1', remotePort: 1, tls: false }
    const req = (token: string, xff: string) => bearer(token, { 'x-forwarded-for': xff })
    const mint = (n: number, subject: string) =>
      Promise.all(Array.from({ length: n }, (_, i) => mintToken(key, { n: i }, { issuer: ISSUER, subject })))
    const [loudTokens, spreadTokens, [quietToken, warmUp]] = await Promise.all([
      mint(300, 'loud'),
      mint(300, 'spread'),
      mint(2, 'quiet'),
    ])
    t.match(await x.extract(req(warmUp!, '203.0.113.2'), ingress), { verified: true }, 'inline warm-up')
    await eventually(() => x.verifyPool().workers === 1, { what: 'the worker ready' })
    const busyOf = (settled: (JwtEvidence | Failure)[]) =>
      settled.filter((r) => 'failed' in r && r.reason === 'verification_busy').length

    // one client behind the ingress floods; another client behind the same ingress is not held up by it
    const loud = loudTokens.map((tok) => x.extract(req(tok, '198.51.100.7, 203.0.113.1'), ingress))
    const quiet = x.extract(req(quietToken!, '203.0.113.2'), ingress)
    t.equal(
      busyOf((await Promise.all(loud)) as (JwtEvidence | Failure)[]),
      300 - DEFAULT_PER_WORKER - 256,
      "past the bound of the flooding client's queue: verification_busy",
    )
    t.match(await quiet, { verified: true }, "another client's new token behind the same ingress is verified")
    await eventually(() => x.verifyPool().queued === 0, { what: 'the queue drained' })

    // a peer that is not a trusted proxy naming a new client in every request still has one queue
    const spread = spreadTokens.map((tok, i) => x.extract(req(tok, `203.0.113.${i % 250}`), untrusted))
    t.equal(
      busyOf((await Promise.all(spread)) as (JwtEvidence | Failure)[]),
      300 - DEFAULT_PER_WORKER - 256,
      'its own X-Forwarded-For does not spread it over several queues',
    )
  },
)

t.test('an idle worker is stopped, and the next new token starts one again', async (t) => {
  const pool = new VerifyPool({ size: 1, maxQueue: 10, maxQueuePerPeer: 10, idleMs: 300 })
  t.teardown(() => pool.close())
  const keys = keySet(key)
  const token = await mintToken(key, {}, { issuer: ISSUER })
  await ready(t, pool, token, keys)
  t.match(await pool.verify(job(token), keys, 'a'), { header: { alg: 'ES256' } }, 'verified in the worker')
  await eventually(() => pool.stats().workers === 0 && pool.stats().starting === 0, {
    what: 'the idle worker stopped',
  })
  t.equal(pool.usable, true, 'a stopped idle worker does not make the pool unusable')
  // the same as at start-up: the first token after the stop is verified inline while a worker boots
  await ready(t, pool, token, keys)
  t.match(
    await pool.verify(job(token), keys, 'a'),
    { header: { alg: 'ES256' } },
    'the new worker was sent the key set again and verifies',
  )
})
