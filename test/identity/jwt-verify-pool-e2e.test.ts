// The built bundle verifies new asymmetric tokens in its worker thread (dist/jwt-verify-worker.mjs), and a
// flood of new tokens from one client does not hold up another client whose token is already verified.
// Two clients are two loopback source addresses (127.0.0.1 and 127.0.0.2), which is what the pool's
// per-peer queues key on. Tokens that are never sent again are verified and not kept, so they cannot push a
// cached token out of the cache.
import { Agent, request } from 'node:http'
import t, { type Test } from 'tap'
import type { VerifyPoolStats } from '../../src/identity/jwt/pool.ts'
import { eventually } from '../helpers/eventually.ts'
import { mintToken, type SigningKey, startUpstreamAndJwks } from '../helpers/jwks.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

const ISSUER = 'https://idp.pool.example'
// long enough that the flood (bounded by one worker's verifications) outlasts the quiet client's five cached
// requests by a wide margin on a fast machine too: with 400 a CI run once answered the whole flood first
const FLOOD = 1200

interface Answer {
  status: number
  headers: Record<string, string>
}

function get(port: number, token: string, localAddress: string, agent: Agent): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port,
        path: '/echo',
        localAddress,
        agent,
        headers: { authorization: `Bearer ${token}` },
      },
      (res) => {
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (c: string) => {
          body += c
        })
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.statusCode === 200 ? (JSON.parse(body).headers as Record<string, string>) : {},
          }),
        )
      },
    )
    req.on('error', reject)
    req.end()
  })
}

/** the verification pool's load, from /readyz */
async function poolStats(admin: string): Promise<VerifyPoolStats> {
  const res = await fetch(`${admin}/readyz`)
  return ((await res.json()) as { verifyPool: VerifyPoolStats }).verifyPool
}

/**
 * The bundle in front of a real upstream, verifying `ISSUER`'s tokens (keys from a real JWKS server) with one
 * verification worker; `jwt` and `rest` add to that config. The signing key and the two ports.
 */
async function poolSidecar(
  t: Test,
  keyName: string,
  jwt: Record<string, unknown>,
  rest: Record<string, unknown> = {},
): Promise<{ key: SigningKey; port: number; admin: string }> {
  const { upstream, key, jwks } = await startUpstreamAndJwks(t, keyName)
  const sidecar = await startTestSidecar(t, {
    service: 'orders',
    upstream: upstream.url,
    jwt: { issuers: [{ issuer: ISSUER, jwksUri: jwks.jwksUri, audiences: 'any' }], verifyWorkers: 1, ...jwt },
    ...rest,
  })
  return { key, port: sidecar.proxyAddress.port, admin: sidecar.adminUrl }
}

t.test(
  'workers verify new tokens; a flood from one peer does not stall cached requests of another',
  async (t) => {
    const { key, port, admin } = await poolSidecar(
      t,
      'pool-k1',
      {},
      {
        identities: [
          {
            name: 'svc/{sub}',
            kind: 'service',
            match: { jwt: { issuer: ISSUER, claims: { sub: '{sub}' } } },
          },
        ],
      },
    )
    const pool = () => poolStats(admin)
    t.same(
      await pool(),
      { workers: 0, starting: 0, queued: 0, running: 0, verified: 0, overflowed: 0, batches: 0 },
      'no worker before a new token',
    )

    const quiet = new Agent({ keepAlive: true, maxSockets: 1 })
    const loud = new Agent({ keepAlive: true, maxSockets: 64 })
    t.teardown(() => {
      quiet.destroy()
      loud.destroy()
    })
    const cachedToken = await mintToken(key, {}, { issuer: ISSUER, subject: 'quiet' })
    const first = await get(port, cachedToken, '127.0.0.2', quiet)
    t.equal(first.status, 200)
    t.equal(first.headers['x-nhi-verified'], 'true', 'verified')
    t.equal(first.headers['x-nhi-identity'], 'svc/quiet')
    // the first new token started the worker and, rather than wait for it to boot, was verified inline
    const afterFirst = await eventually(
      async () => {
        const s = await pool()
        return s.workers === 1 ? s : undefined
      },
      { what: 'the worker ready' },
    )
    t.equal(afterFirst.verified, 0, 'the first token did not wait for the worker')
    // an answer is kept from a token's second request on: this one makes the quiet client's token a cached one
    const second = await get(port, cachedToken, '127.0.0.2', quiet)
    t.equal(second.headers['x-nhi-verified'], 'true', 'verified again on its second request')
    const beforeFlood = (await pool()).verified
    t.equal(beforeFlood, 1, 'by the worker')

    // every flood token is new: each one goes to the worker
    const floodTokens = await Promise.all(
      Array.from({ length: FLOOD }, (_, i) =>
        mintToken(key, { n: i }, { issuer: ISSUER, subject: `loud-${i % 10}` }),
      ),
    )
    let floodDone = 0
    const floodRequests = floodTokens.map((tok) =>
      get(port, tok, '127.0.0.1', loud).then((a) => {
        floodDone++
        return a
      }),
    )
    const flood = Promise.all(floodRequests)
    // start the quiet client on the flood's first answer, not at a poll some milliseconds later
    await Promise.race(floodRequests)
    // the quiet client's cached token is answered while the flood's verifications are still queued
    const quietAnswers: Answer[] = []
    for (let i = 0; i < 5; i++) quietAnswers.push(await get(port, cachedToken, '127.0.0.2', quiet))
    const floodDoneWhenQuietFinished = floodDone
    const floodAnswers = await flood
    t.ok(
      floodDoneWhenQuietFinished < FLOOD,
      `the cached client was served before the flood ended (${floodDoneWhenQuietFinished} of ${FLOOD} flood requests answered by then)`,
    )
    t.same(
      quietAnswers.map((a) => [a.status, a.headers['x-nhi-verified'], a.headers['x-nhi-identity']]),
      Array.from({ length: 5 }, () => [200, 'true', 'svc/quiet']),
      'cached requests verified as before',
    )
    // every flood request is answered: verified by the worker, or (past the queue bounds) attributed as an
    // unverified failure, never a 5xx or a hang
    const verified = floodAnswers.filter((a) => a.status === 200 && a.headers['x-nhi-verified'] === 'true')
    const busy = floodAnswers.filter((a) => a.status === 200 && a.headers['x-nhi-verified'] !== 'true')
    t.equal(verified.length + busy.length, FLOOD, 'every flood request answered 200 (attribute mode)')
    const stats = await eventually(async () => {
      const s = await pool()
      return s.queued === 0 && s.running === 0 ? s : undefined
    })
    t.equal(
      stats.verified - beforeFlood,
      verified.length,
      'every verified flood token went through the worker, and no cached request did',
    )
    const samples = await scrape(admin)
    t.equal(
      metricValue(samples, 'nhi_auth_failures_total', { reason: 'verification_busy' }),
      busy.length,
      'requests past the queue bounds are counted as verification_busy',
    )
  },
)

t.test(
  'one-off tokens, many times the cache, are verified and forgotten: a cached token stays cached',
  async (t) => {
    const { key, port, admin } = await poolSidecar(t, 'pool-k2', { cacheSize: 8 })
    const verified = async () => (await poolStats(admin)).verified
    const agent = new Agent({ keepAlive: true, maxSockets: 8 })
    t.teardown(() => agent.destroy())

    // the first new token starts the worker (and is verified inline while it boots)
    const cached = await mintToken(key, { role: 'cached' }, { issuer: ISSUER })
    t.equal((await get(port, cached, '127.0.0.1', agent)).headers['x-nhi-verified'], 'true')
    await eventually(async () => (await poolStats(admin)).workers === 1, { what: 'the worker ready' })
    // its second request verifies it again, in the worker, and keeps it
    t.equal((await get(port, cached, '127.0.0.1', agent)).headers['x-nhi-verified'], 'true')
    const kept = await verified()
    t.equal((await get(port, cached, '127.0.0.1', agent)).headers['x-nhi-verified'], 'true')
    t.equal(await verified(), kept, 'its third request is answered from the cache')

    // a client minting a new token for every request: 100 tokens, more than twelve times jwt.cacheSize
    const oneOff = await Promise.all(
      Array.from({ length: 100 }, (_, i) => mintToken(key, { n: i }, { issuer: ISSUER })),
    )
    const answers = await Promise.all(oneOff.map((tok) => get(port, tok, '127.0.0.1', agent)))
    t.ok(
      answers.every((a) => a.status === 200 && a.headers['x-nhi-verified'] === 'true'),
      'every one-off token verified',
    )
    t.equal(await verified(), kept + 100, 'each verified once, by the worker')
    t.equal((await get(port, cached, '127.0.0.1', agent)).headers['x-nhi-verified'], 'true')
    t.equal(await verified(), kept + 100, 'the cached token was not evicted: still answered from the cache')
  },
)
