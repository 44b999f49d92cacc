// Key sources over real HTTP(S): discovery, rotation through unknown kids, through a new key under the same
// kid and through a new key for tokens without kid, a rotated HMAC secret file, refetch cooldown, outages,
// custom CA and rotating bearer tokens, local JWKS files, periodic refresh and the key set's Cache-Control
// max-age.
import { createHmac, generateKeyPairSync } from 'node:crypto'
import { once } from 'node:events'
import { writeFile } from 'node:fs/promises'
import { createServer as createHttpServer } from 'node:http'
import { createServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { type Config, configSchema, type IssuerConfig } from '../../src/config/schema.ts'
import { JwtExtractor } from '../../src/identity/extractors/jwt.ts'
import { IssuerKeySet, type JwksObserver, KeyMemory } from '../../src/identity/jwt/jwks.ts'
import { verifyJwtWithKeySet } from '../../src/identity/jwt/jws.ts'
import type { ConnectionInfo, Failure, JwtEvidence, RequestInfo } from '../../src/types.ts'
import { eventually } from '../helpers/eventually.ts'
import {
  createSigningKey,
  type JwksServer,
  mintToken,
  type SigningKey,
  startJwksServer,
} from '../helpers/jwks.ts'
import { listenUntilTeardown } from '../helpers/net.ts'
import { createServerPki } from '../helpers/pki.ts'
import { replaceFile, scratchDir } from '../helpers/scratch.ts'

const conn: ConnectionInfo = { remoteAddress: '127.0.0.1', remotePort: 40000, tls: false }

/** A clock the test moves: the refetch cooldown and the verdict cache read it instead of waiting it out. */
function manualClock() {
  let at = Date.now()
  return {
    now: () => at,
    advance(ms: number) {
      at += ms
    },
  }
}

function req(token: string): RequestInfo {
  return { method: 'GET', path: '/', url: '/', headers: { authorization: `Bearer ${token}` } }
}

function jwtConfig(issuers: Record<string, unknown>[], extra: Record<string, unknown> = {}): Config['jwt'] {
  // audience is not what most of these tests are about: they accept any audience explicitly
  const withAud = issuers.map((i) => ({ audiences: 'any', ...i }))
  return configSchema.parse({ jwt: { issuers: withAud, ...extra } }).jwt
}

function issuerConfig(cfg: Record<string, unknown>): IssuerConfig {
  return jwtConfig([cfg]).issuers[0]!
}

interface Refresh {
  issuer: string
  result: 'success' | 'failure'
  keyCount: number
  at: number
}
function recordingObserver(): JwksObserver & { events: Refresh[] } {
  const events: Refresh[] = []
  return {
    events,
    refreshed: (issuer, result, keyCount, at) => events.push({ issuer, result, keyCount, at }),
  }
}

/** the part of a tap test the helpers need */
interface Teardown {
  teardown(fn: () => unknown): void
}

async function serve(t: Teardown, keys: SigningKey[]): Promise<JwksServer> {
  const s = await startJwksServer(keys)
  t.teardown(() => s.close())
  return s
}

function extractor(
  t: Teardown,
  cfg: Config['jwt'],
  opts: ConstructorParameters<typeof JwtExtractor>[1] = {},
) {
  const x = new JwtExtractor(cfg, opts)
  t.teardown(() => x.close())
  return x
}

async function verified(x: JwtExtractor, token: string): Promise<JwtEvidence | Failure | undefined> {
  return await x.extract(req(token), conn)
}

/**
 * Rounds of 40 forged tokens each (`forge(n)` a distinct one): every one fails as bad_signature, and together
 * they make the issuer's keys be refetched once per cooldown (1 s here), never more, whatever they claim.
 * The IdP has been hit twice when it starts (the start and the refetch the caller's first token made).
 */
async function forgedRoundsRefetchOncePerCooldown(
  t: Test,
  x: JwtExtractor,
  idp: { hits: number },
  clock: ReturnType<typeof manualClock>,
  forge: (n: number) => Promise<string>,
  what: string,
): Promise<void> {
  const burst = async (from: number) => {
    const tokens = await Promise.all(Array.from({ length: 40 }, (_, i) => forge(from + i)))
    return Promise.all(tokens.map((tok) => verified(x, tok)))
  }
  const bad = (results: unknown[]) =>
    results.every((r) => typeof r === 'object' && r !== null && 'reason' in r && r.reason === 'bad_signature')
  t.ok(bad(await burst(100)), `forged tokens ${what} fail as bad_signature`)
  t.equal(idp.hits, 2, 'within the cooldown of the last refetch: none')
  clock.advance(1001)
  t.ok(bad(await burst(200)), 'still bad_signature after a refetch that brought the same keys')
  t.equal(idp.hits, 3, 'one refetch for the whole burst')
  t.ok(bad(await burst(300)), 'and within the cooldown again')
  t.equal(idp.hits, 3, 'no other refetch within the cooldown')
  clock.advance(1001)
  t.ok(bad(await burst(400)))
  t.equal(idp.hits, 4, 'one refetch per cooldown')
}

let keyA: SigningKey
let keyB: SigningKey
t.before(async () => {
  keyA = await createSigningKey('key-a')
  keyB = await createSigningKey('key-b', 'ES256')
})

t.test('jwksUri: keys load, token verifies, observer sees success', async (t) => {
  const idp = await serve(t, [keyA])
  const observer = recordingObserver()
  const x = extractor(t, jwtConfig([{ issuer: idp.url, jwksUri: idp.jwksUri }]), { observer })
  t.equal(x.ready(), false, 'not ready before the first fetch')
  await x.start()
  t.equal(x.ready(), true)
  t.match(observer.events, [{ issuer: idp.url, result: 'success', keyCount: 1 }])
  const ev = await verified(x, await mintToken(keyA, {}, { issuer: idp.url, subject: 'svc' }))
  t.match(ev, { source: 'jwt', verified: true, issuer: idp.url, alg: 'RS256', kid: 'key-a' })
})

t.test('discovery: jwks_uri taken from the openid-configuration', async (t) => {
  const idp = await serve(t, [keyA])
  const x = extractor(t, jwtConfig([{ issuer: idp.url, discovery: true }]))
  await x.start()
  t.equal(x.ready(), true)
  t.equal(idp.hits, 1, 'key set fetched once via the discovered jwks_uri')
  t.match(await verified(x, await mintToken(keyA, {}, { issuer: idp.url })), { verified: true })
})

t.test('discovery: an issuer mismatch in the document is refused', async (t) => {
  const idp = await serve(t, [keyA])
  const observer = recordingObserver()
  // same host, but the configured issuer differs from the document's issuer by a trailing slash
  const x = extractor(t, jwtConfig([{ issuer: `${idp.url}/`, discovery: true }]), { observer })
  await x.start()
  t.equal(x.ready(), false)
  t.equal(idp.hits, 0, 'key set never fetched')
  t.match(observer.events, [{ result: 'failure', keyCount: 0 }])
  t.match(x.issuers()[0]?.lastError, /issuer does not match/)
})

t.test('rotation: a new kid verifies without restart via unknown-kid refetch', async (t) => {
  const idp = await serve(t, [keyA])
  const clock = manualClock()
  const x = extractor(t, jwtConfig([{ issuer: idp.url, jwksUri: idp.jwksUri }]), {
    unknownKidCooldownMs: 100,
    now: clock.now,
  })
  await x.start()
  const tokenB = await mintToken(keyB, {}, { issuer: idp.url })
  clock.advance(150)
  t.match(
    await verified(x, tokenB),
    { failed: true, reason: 'unknown_kid' },
    'IdP has not published key-b yet',
  )
  idp.setKeys([keyA, keyB])
  clock.advance(150)
  t.match(await verified(x, tokenB), { verified: true, kid: 'key-b', alg: 'ES256' }, 'refetched and verified')
  t.equal(idp.hits, 3)
  // key-a retired by the IdP: it stays usable until the next refresh replaces the whole set
  idp.setKeys([keyB])
  const lateA = await mintToken(keyA, { jti: 'late' }, { issuer: idp.url })
  t.match(await verified(x, lateA), { verified: true }, 'not refetched yet')
  clock.advance(150)
  await verified(x, await mintToken(keyB, {}, { issuer: idp.url, header: { kid: 'key-c' } }))
  const laterA = await mintToken(keyA, { jti: 'later' }, { issuer: idp.url })
  t.match(await verified(x, laterA), { failed: true, reason: 'unknown_kid' }, 'gone after the refetch')
})

t.test('cooldown: a flood of random kids causes at most one refetch', async (t) => {
  const idp = await serve(t, [keyA])
  const clock = manualClock()
  const x = extractor(t, jwtConfig([{ issuer: idp.url, jwksUri: idp.jwksUri }]), {
    unknownKidCooldownMs: 300,
    now: clock.now,
  })
  await x.start()
  clock.advance(350)
  const tokens = await Promise.all(
    Array.from({ length: 100 }, (_, i) =>
      mintToken(keyA, { n: i }, { issuer: idp.url, header: { kid: `random-${Math.random()}` } }),
    ),
  )
  const results = await Promise.all(tokens.map((tok) => verified(x, tok)))
  t.ok(
    results.every((r) => r && 'failed' in r && r.reason === 'unknown_kid'),
    'all unknown',
  )
  t.equal(idp.hits, 2, 'initial fetch + one refetch for the whole flood')
  const more = await Promise.all(
    tokens
      .slice(0, 10)
      .map((_, i) => mintToken(keyA, { m: i }, { issuer: idp.url, header: { kid: `again-${i}` } })),
  )
  for (const tok of more) await verified(x, tok)
  t.equal(idp.hits, 2, 'still within the cooldown: no refetch')
})

t.test('IdP outage: down, junk and hanging endpoints keep the last good keys', async (t) => {
  const idp = await serve(t, [keyA])
  const observer = recordingObserver()
  const keys = new IssuerKeySet(issuerConfig({ issuer: idp.url, jwksUri: idp.jwksUri }), {
    observer,
    fetchTimeoutMs: 300,
  })
  t.teardown(() => keys.close())
  await keys.start()
  t.equal(keys.ready(), true)

  for (const fault of [503, 'junk', 'hang'] as const) {
    idp.fault = fault
    const started = Date.now()
    t.equal(await keys.refresh(), false, `refresh fails on ${fault}`)
    t.ok(Date.now() - started < 3000, `bounded by the fetch timeout (${fault})`)
    t.match(observer.events.at(-1), { result: 'failure', keyCount: 1 }, `observer sees failure (${fault})`)
    t.equal(keys.ready(), true, 'still ready on the last good keys')
  }
  t.match(keys.lastError, /timed out/)
  idp.fault = undefined
  idp.setKeys([keyA, keyB])
  t.equal(await keys.refresh(), true)
  t.match(observer.events.at(-1), { result: 'success', keyCount: 2 })
  t.equal(keys.lastError, undefined)
})

t.test('IdP outage: verification keeps working on last good keys', async (t) => {
  const idp = await serve(t, [keyA])
  const observer = recordingObserver()
  const clock = manualClock()
  const x = extractor(t, jwtConfig([{ issuer: idp.url, jwksUri: idp.jwksUri }]), {
    observer,
    unknownKidCooldownMs: 50,
    now: clock.now,
  })
  await x.start()
  idp.fault = 500
  clock.advance(60)
  // an unknown kid forces a refetch, which fails
  await verified(x, await mintToken(keyA, {}, { issuer: idp.url, header: { kid: 'unseen' } }))
  t.match(observer.events.at(-1), { result: 'failure', keyCount: 1 })
  t.match(await verified(x, await mintToken(keyA, { jti: 'x' }, { issuer: idp.url })), { verified: true })
})

t.test('IdP down at start: start() resolves, not ready, recovers when the IdP is back', async (t) => {
  const idp = await serve(t, [keyA])
  idp.fault = 503
  const clock = manualClock()
  const x = extractor(t, jwtConfig([{ issuer: idp.url, jwksUri: idp.jwksUri }]), {
    unknownKidCooldownMs: 50,
    now: clock.now,
  })
  await x.start()
  t.equal(x.ready(), false)
  const token = await mintToken(keyA, {}, { issuer: idp.url })
  t.match(
    await verified(x, token),
    { failed: true, reason: 'keys_unavailable' },
    'no keys fetched yet: keys_unavailable, not unknown_kid',
  )
  idp.fault = undefined
  clock.advance(60)
  t.match(await verified(x, token), { verified: true }, 'keys_unavailable failures are not cached')
  t.equal(x.ready(), true)
})

t.test('periodic refresh picks up new keys without any token asking', async (t) => {
  const idp = await serve(t, [keyA])
  const observer = recordingObserver()
  const keys = new IssuerKeySet(
    issuerConfig({ issuer: idp.url, jwksUri: idp.jwksUri, refreshInterval: '1s' }),
    {
      observer,
    },
  )
  t.teardown(() => keys.close())
  await keys.start()
  idp.setKeys([keyA, keyB])
  await eventually(() => idp.hits >= 2 && observer.events.at(-1)?.keyCount === 2, {
    what: 'a refetch on the 1 s interval',
  })
  t.ok(idp.hits >= 2, 'refetched on the interval')
  t.match(observer.events.at(-1), { result: 'success', keyCount: 2 })
})

t.test('jwksFile: local key set read asynchronously', async (t) => {
  const dir = await scratchDir('jwks')
  const file = join(dir, 'jwks.json')
  await writeFile(file, JSON.stringify({ keys: [keyA.publicJwk] }))
  const x = extractor(t, jwtConfig([{ issuer: 'https://files.example', jwksFile: file }]))
  await x.start()
  t.equal(x.ready(), true)
  t.match(await verified(x, await mintToken(keyA, {}, { issuer: 'https://files.example' })), {
    verified: true,
  })

  const missing = extractor(t, jwtConfig([{ issuer: 'https://files.example', jwksFile: join(dir, 'nope') }]))
  await missing.start()
  t.equal(missing.ready(), false, 'missing file: not ready, no throw')
})

t.test(
  'a key set without public signing keys is a failure (private and symmetric keys dropped)',
  async (t) => {
    const dir = await scratchDir('jwks')
    const file = join(dir, 'jwks.json')
    await writeFile(
      file,
      JSON.stringify({
        keys: [
          { kty: 'oct', k: 'c2VjcmV0', kid: 'h' },
          { ...keyA.publicJwk, d: 'private' },
        ],
      }),
    )
    const observer = recordingObserver()
    const keys = new IssuerKeySet(issuerConfig({ issuer: 'https://files.example', jwksFile: file }), {
      observer,
    })
    t.teardown(() => keys.close())
    await keys.start()
    t.equal(keys.ready(), false)
    t.match(observer.events, [{ result: 'failure', keyCount: 0 }])
  },
)

// A key set can parse and name the right kids yet hold keys nothing verifies with (a truncated modulus, a
// point off its curve): taken as a successful refresh, it replaced the last good keys and every token failed
// as bad_signature while the issuer looked healthy.
t.test(
  'keys that cannot verify a signature are left out; a set of nothing else is a failed refresh',
  async (t) => {
    const idp = await serve(t, [keyA])
    const events: { result: string; keyCount: number; error?: string; unusable?: unknown }[] = []
    const observer: JwksObserver = {
      refreshed: (_issuer, result, keyCount, _at, error, unusable) =>
        events.push({ result, keyCount, ...(error ? { error } : {}), ...(unusable ? { unusable } : {}) }),
    }
    const keys = new IssuerKeySet(issuerConfig({ issuer: idp.url, jwksUri: idp.jwksUri }), { observer })
    t.teardown(() => keys.close())
    await keys.start()
    const verifies = async (key: SigningKey, claims: Record<string, unknown>) =>
      verifyJwtWithKeySet(await mintToken(key, claims, { issuer: idp.url }), keys.getKey, {
        issuer: idp.url,
        algorithms: new Set(['RS256', 'ES256']),
        clockTolerance: 0,
        now: Date.now(),
      }).then(
        () => true,
        () => false,
      )
    const served = (jwk: Record<string, unknown>): SigningKey => ({ ...keyA, publicJwk: jwk })
    const a = keyA.publicJwk as Record<string, string>
    const b = keyB.publicJwk as Record<string, string>
    const { publicKey: weak } = generateKeyPairSync('rsa', { modulusLength: 1024 })
    const unusable: Record<string, Record<string, unknown>> = {
      'a truncated modulus': { ...a, n: a['n']!.slice(0, 40) },
      'an empty modulus': { ...a, n: '' },
      'a 1024-bit RSA key': { ...weak.export({ format: 'jwk' }), kid: 'key-a', alg: 'RS256' },
      'an even exponent': { ...a, e: 'AAI' },
      'an exponent of 1': { ...a, e: 'AQ' },
      'a point off the curve': { ...b, kid: 'key-a', y: b['x'] },
      'a curve without an algorithm here': { ...b, kid: 'key-a', crv: 'secp256k1' },
      'an Ed448 key': { kty: 'OKP', crv: 'Ed448', x: 'AA', kid: 'key-a' },
      'a type and alg that do not go together': { ...a, alg: 'ES256' },
    }
    for (const [label, jwk] of Object.entries(unusable)) {
      idp.setKeys([served(jwk)])
      t.equal(await keys.refresh(), false, `${label}: the refresh fails`)
      t.match(
        events.at(-1),
        {
          result: 'failure',
          keyCount: 1,
          error: /no usable public signing keys \(1 unusable; kid "key-a": /,
        },
        `${label}: reported with the reason`,
      )
      t.match(keys.lastError, /no usable public signing keys/, `${label}: lastError says so`)
      t.same(keys.publicJwks, [keyA.publicJwk], `${label}: the last good keys keep serving`)
      t.ok(await verifies(keyA, { label }), `${label}: a token verifies with the last good keys`)
    }

    // an encryption key is no signing key gone wrong: left out without a word (Keycloak publishes one)
    const encryption = { ...b, kid: 'enc-1', use: 'enc', alg: 'ECDH-ES' }
    idp.setKeys([keyA, served(unusable['a truncated modulus']!), served(encryption), keyB])
    // keyA and the broken key share kid key-a: the broken one is left out, the good one serves
    t.equal(await keys.refresh(), true, 'a set with usable keys is a successful refresh')
    t.match(events.at(-1), {
      result: 'success',
      keyCount: 2,
      unusable: { count: 1, reason: /^kid "key-a": an RSA modulus of 240 bits/ },
    })
    t.same(keys.publicJwks, [keyA.publicJwk, keyB.publicJwk], 'only the usable signing keys are in use')
    t.equal(keys.unusableKeys, 1)
    t.ok(await verifies(keyA, { n: 1 }), 'the good key of the kid both share verifies')
    t.ok(await verifies(keyB, { n: 2 }), 'and so does the other key')

    idp.setKeys([served(encryption)])
    t.equal(await keys.refresh(), false, 'encryption keys alone: no usable signing keys')
    t.match(events.at(-1), { result: 'failure', error: 'key set has no usable public signing keys' })
  },
)

t.test(
  'caFile + bearerTokenFile: HTTPS JWKS trusted via a custom CA, rotating bearer token sent',
  async (t) => {
    const { ca, server } = await createServerPki()
    const seenAuth: (string | undefined)[] = []
    const https = createServer({ cert: server.certPem, key: server.keyPem }, (rq, rs) => {
      seenAuth.push(rq.headers.authorization)
      if (rq.url !== '/openid/v1/jwks') {
        rs.statusCode = 404
        rs.end()
        return
      }
      rs.setHeader('content-type', 'application/json')
      rs.end(JSON.stringify({ keys: [keyA.publicJwk] }))
    })
    const port = await listenUntilTeardown(t, https)
    const tokenFile = join(ca.dir, 'token')
    await writeFile(tokenFile, 'projected-token-1\n')
    const issuer = 'https://kubernetes.default.svc.cluster.local'
    const jwksUri = `https://localhost:${port}/openid/v1/jwks`

    const untrusted = new IssuerKeySet(issuerConfig({ issuer, jwksUri }), { fetchTimeoutMs: 2000 })
    t.teardown(() => untrusted.close())
    await untrusted.start()
    t.equal(untrusted.ready(), false, 'without caFile the self-made CA is not trusted')
    t.match(untrusted.lastError, /certificate|self.signed|issuer/i)

    const keys = new IssuerKeySet(
      issuerConfig({ issuer, jwksUri, caFile: ca.certFile, bearerTokenFile: tokenFile }),
    )
    t.teardown(() => keys.close())
    await keys.start()
    t.equal(keys.ready(), true, 'trusted via caFile')
    t.equal(seenAuth.at(-1), 'Bearer projected-token-1')
    await writeFile(tokenFile, 'projected-token-2\n')
    t.equal(await keys.refresh(), true)
    t.equal(seenAuth.at(-1), 'Bearer projected-token-2', 'token file re-read on every refresh')
  },
)

t.test(
  'bearerTokenFile: the token goes to the issuer and its own origin, never to a jwks_uri on another origin',
  async (t) => {
    const dir = await scratchDir('jwks-bearer')
    const tokenFile = join(dir, 'token')
    await writeFile(tokenFile, 'cluster-credential\n')
    /** a plain HTTP server that records the Authorization of every request by path */
    const recording = async (answer: (path: string) => unknown) => {
      const seen: { path: string; authorization: string | undefined }[] = []
      const server = createHttpServer((rq, rs) => {
        seen.push({ path: rq.url ?? '', authorization: rq.headers.authorization })
        rs.setHeader('content-type', 'application/json')
        rs.end(JSON.stringify(answer(rq.url ?? '')))
      })
      server.listen(0, '127.0.0.1')
      await once(server, 'listening')
      t.teardown(
        () =>
          new Promise<void>((resolve) => {
            server.closeAllConnections()
            server.close(() => resolve())
          }),
      )
      return { seen, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` }
    }
    const elsewhere = await recording(() => ({ keys: [keyA.publicJwk] }))
    let jwksUri = ''
    const issuer = await recording((path) =>
      path === '/jwks' ? { keys: [keyA.publicJwk] } : { issuer: issuer.url, jwks_uri: jwksUri },
    )

    // the discovery document names a key set on another origin (another port is another origin)
    jwksUri = `${elsewhere.url}/jwks`
    const foreign = new IssuerKeySet(
      issuerConfig({ issuer: issuer.url, discovery: true, bearerTokenFile: tokenFile }),
    )
    t.teardown(() => foreign.close())
    await foreign.start()
    t.equal(foreign.ready(), true, 'keys loaded from the other origin')
    t.same(
      issuer.seen,
      [{ path: '/.well-known/openid-configuration', authorization: 'Bearer cluster-credential' }],
      'the issuer gets the token with the discovery request',
    )
    t.same(elsewhere.seen, [{ path: '/jwks', authorization: undefined }], 'the other origin never sees it')

    // a jwks_uri on the issuer's own origin gets it
    issuer.seen.length = 0
    jwksUri = `${issuer.url}/jwks`
    const own = new IssuerKeySet(
      issuerConfig({ issuer: issuer.url, discovery: true, bearerTokenFile: tokenFile }),
    )
    t.teardown(() => own.close())
    await own.start()
    t.equal(own.ready(), true)
    t.same(
      issuer.seen.map((s) => s.authorization),
      ['Bearer cluster-credential', 'Bearer cluster-credential'],
      'discovery and key set on the issuer origin both carry the token',
    )

    // a jwksUri the operator configured gets it wherever it points
    elsewhere.seen.length = 0
    const configured = new IssuerKeySet(
      issuerConfig({ issuer: issuer.url, jwksUri: `${elsewhere.url}/jwks`, bearerTokenFile: tokenFile }),
    )
    t.teardown(() => configured.close())
    await configured.start()
    t.same(elsewhere.seen, [{ path: '/jwks', authorization: 'Bearer cluster-credential' }])
  },
)

// A discovery document read over https that names an http jwks_uri would have the keys, the one thing the
// tokens' trust rests on, fetched in the clear: anyone on the path could serve keys of their own.
t.test('discovery: an https issuer whose document names an http jwks_uri is refused', async (t) => {
  const plain = await serve(t, [keyA])
  const { ca, server } = await createServerPki()
  let jwksUri = ''
  const https = createServer({ cert: server.certPem, key: server.keyPem }, (rq, rs) => {
    rs.setHeader('content-type', 'application/json')
    if (rq.url === '/.well-known/openid-configuration') rs.end(JSON.stringify({ issuer, jwks_uri: jwksUri }))
    else if (rq.url === '/jwks') rs.end(JSON.stringify({ keys: [keyA.publicJwk] }))
    else {
      rs.statusCode = 404
      rs.end()
    }
  })
  const httpsPort = await listenUntilTeardown(t, https)
  const issuer = `https://localhost:${httpsPort}`

  jwksUri = plain.jwksUri
  const downgraded = new IssuerKeySet(issuerConfig({ issuer, discovery: true, caFile: ca.certFile }))
  t.teardown(() => downgraded.close())
  await downgraded.start()
  t.equal(downgraded.ready(), false, 'no keys from an http jwks_uri of an https issuer')
  t.equal(plain.hits, 0, 'the http key set is never fetched')
  t.match(downgraded.lastError, /https/)

  // the same document naming an https jwks_uri is taken
  jwksUri = `${issuer}/jwks`
  const secure = new IssuerKeySet(issuerConfig({ issuer, discovery: true, caFile: ca.certFile }))
  t.teardown(() => secure.close())
  await secure.start()
  t.equal(secure.ready(), true)
})

// A reload builds new key sets on the memory of the ones before: their last good keys, a fallback should the
// first fetch fail. That first fetch is the one a start makes, discovery included: an IdP that has moved its
// keys to another jwks_uri is followed at a reload as at a start, not only once the old one fails to answer.
t.test('discovery: a key set built at a reload discovers again, as a start does', async (t) => {
  const first = await serve(t, [keyA])
  const moved = await serve(t, [keyB])
  let jwksUri = first.jwksUri
  let issuer = ''
  const idp = createHttpServer((_rq, rs) => {
    rs.setHeader('content-type', 'application/json')
    rs.end(JSON.stringify({ issuer, jwks_uri: jwksUri }))
  })
  issuer = `http://127.0.0.1:${await listenUntilTeardown(t, idp)}`
  const cfg = issuerConfig({ issuer, discovery: true })
  const memory = new KeyMemory()
  const running = new IssuerKeySet(cfg, { memory })
  await running.start()
  running.close()
  t.same(
    running.publicJwks.map((k) => k.kid),
    ['key-a'],
    'the keys the document named at start',
  )

  jwksUri = moved.jwksUri
  const reloaded = new IssuerKeySet(cfg, { memory })
  t.teardown(() => reloaded.close())
  await reloaded.start()
  const fresh = new IssuerKeySet(cfg)
  t.teardown(() => fresh.close())
  await fresh.start()
  t.same(
    fresh.publicJwks.map((k) => k.kid),
    ['key-b'],
    'a start follows the document to the moved keys',
  )
  t.same(
    reloaded.publicJwks.map((k) => k.kid),
    ['key-b'],
    'and so does the reload',
  )
  t.equal(first.hits, 1, 'the key set the document no longer names is not fetched again')
})

// An issuer with both a JWKS and a secretFile has two key sources: one that cannot be read must not stop the
// other from being refreshed (new keys never arriving, withdrawn ones never leaving).
t.test('jwksUri + secretFile: an unreadable secret file does not stop the key set refreshing', async (t) => {
  const idp = await serve(t, [keyA])
  const dir = await scratchDir('jwks-secret')
  const secretFile = join(dir, 'secret')
  const observer = recordingObserver()
  const cfg = issuerConfig({ issuer: idp.url, jwksUri: idp.jwksUri, secretFile })

  // missing at start: the key set loads all the same
  const early = new IssuerKeySet(cfg, { observer })
  t.teardown(() => early.close())
  await early.start()
  t.same(early.publicJwks, [keyA.publicJwk], 'the key set loaded without the secret')
  t.equal(early.hasKeysFor('RS256'), true)
  t.equal(early.hasKeysFor('HS256'), false)
  t.equal(early.ready(), false, 'not ready while the secret is missing')
  t.match(early.lastError, /ENOENT|secret/)
  t.match(observer.events.at(-1), { result: 'failure', keyCount: 1 })

  await writeFile(secretFile, 'a-shared-secret\n')
  const keys = new IssuerKeySet(cfg, { observer })
  t.teardown(() => keys.close())
  await keys.start()
  t.equal(keys.ready(), true)

  // the secret file emptied (a botched rotation), then the IdP rotates its key
  await writeFile(secretFile, '')
  idp.setKeys([keyB])
  t.equal(await keys.refresh(), true, 'the key set was updated')
  t.same(keys.publicJwks, [keyB.publicJwk], 'the rotated key is in use, the withdrawn one gone')
  t.match(keys.lastError, /secretFile is empty/)
  t.match(observer.events.at(-1), { result: 'failure' })
  t.equal(keys.hasKeysFor('HS256'), true, 'the last good secret keeps serving')
})

/**
 * An IdP about to re-key, serving its old key, and a started extractor on it whose refetch cooldown (1 s)
 * runs on a manual clock. `kids`: those of the old key, the new key it rotates to and a forger's key.
 * `mint(key, n)`: a token signed with `key` (claim `n` where given), without a kid where `withoutKid`.
 * `kid`: what a token of the new key verifies as.
 */
async function rekeying(
  t: Test,
  kids: readonly [string, string, string],
  { withoutKid = false, verifyWorkers }: { withoutKid?: boolean; verifyWorkers?: number } = {},
) {
  const oldKey = await createSigningKey(kids[0])
  const newKey = await createSigningKey(kids[1])
  const forger = await createSigningKey(kids[2])
  const idp = await serve(t, [oldKey])
  const clock = manualClock()
  const x = extractor(
    t,
    jwtConfig(
      [{ issuer: idp.url, jwksUri: idp.jwksUri }],
      verifyWorkers === undefined ? {} : { verifyWorkers },
    ),
    { unknownKidCooldownMs: 1000, now: clock.now },
  )
  await x.start()
  const header = withoutKid ? { kid: undefined } : undefined
  const mint = (key: SigningKey, n?: number) =>
    mintToken(key, n === undefined ? {} : { n }, { issuer: idp.url, header })
  return { oldKey, newKey, forger, idp, clock, x, mint, kid: withoutKid ? undefined : kids[1] }
}
type Rekeying = Awaited<ReturnType<typeof rekeying>>

/**
 * The IdP publishes `published`, its new key among them, and signs with the new key at once: the first token
 * so signed verifies, after one refetch of the keys (made by the worker where there is one).
 */
async function firstTokenOfTheNewKeyVerifies(
  t: Test,
  { newKey, idp, clock, x, mint, kid }: Rekeying,
  verifyWorkers: number,
  published: SigningKey[],
): Promise<void> {
  // with a worker, what it answers is what is retried: wait until new tokens go to it
  if (verifyWorkers > 0) await eventually(() => x.verifyPool().workers === 1, { what: 'a ready worker' })
  const byWorkers = x.verifyPool().verified

  idp.setKeys(published)
  clock.advance(1001)
  t.match(
    await verified(x, await mint(newKey, 1)),
    { verified: true, kid },
    'the first token signed with the new key verifies',
  )
  t.equal(idp.hits, 2, 'after one refetch')
  t.equal(
    x.verifyPool().verified - byWorkers,
    verifyWorkers * 2,
    verifyWorkers ? 'failed, then verified, by the worker' : 'no worker here',
  )
}

/**
 * The cached bad_signature of a token of the new key that came while no refetch was allowed: it holds through
 * the cooldown, and once that is over the token is verified again against the refetched keys.
 */
async function cachedBadSignatureEndsWithTheCooldown(
  t: Test,
  { newKey, forger, idp, clock, x, mint, kid }: Rekeying,
): Promise<void> {
  clock.advance(1001)
  t.match(
    await verified(x, await mint(forger)),
    { failed: true, reason: 'bad_signature' },
    'a forged token makes the keys be refetched',
  )
  t.equal(idp.hits, 2, 'refetched once')

  idp.setKeys([newKey])
  const fresh = await mint(newKey)
  for (const n of [1, 2])
    t.match(
      await verified(x, fresh),
      { failed: true, reason: 'bad_signature' },
      `request ${n} within the cooldown: no refetch, the new key is not known yet`,
    )
  t.equal(idp.hits, 2, 'no refetch within the cooldown')
  clock.advance(1001)
  t.match(
    await verified(x, fresh),
    { verified: true, kid },
    'once the cooldown is over the token makes the keys be refetched, its cached failure gone',
  )
  t.equal(idp.hits, 3, 'refetched once more')
}

// An IdP that re-keys under the kid it already used: tokens signed with the new key failed as bad_signature
// until the next refreshInterval (10 min by default), since only an unknown kid made the keys be refetched.
for (const verifyWorkers of [0, 1]) {
  t.test(
    `same kid, new key: the first token signed with it verifies (verifyWorkers ${verifyWorkers})`,
    async (t) => {
      const r = await rekeying(t, ['k1', 'k1', 'k1'], { verifyWorkers })
      const { oldKey, newKey, forger, idp, clock, x, mint } = r
      t.match(await verified(x, await mint(oldKey)), { verified: true, kid: 'k1' })
      t.equal(idp.hits, 1)
      await firstTokenOfTheNewKeyVerifies(t, r, verifyWorkers, [newKey])
      t.match(
        await verified(x, await mint(oldKey, 2)),
        { failed: true, reason: 'bad_signature' },
        'the replaced key no longer verifies',
      )

      await forgedRoundsRefetchOncePerCooldown(t, x, idp, clock, (n) => mint(forger, n), 'under k1')
    },
  )
}

// A token signed with the new key that arrives while a refetch is not allowed fails, and from its second
// request on its failure is cached: held for a minute, it kept the token failing after the cooldown ended.
t.test('same kid, new key: a cached bad_signature lasts no longer than the cooldown', async (t) => {
  await cachedBadSignatureEndsWithTheCooldown(t, await rekeying(t, ['k1', 'k1', 'k1']))
})

/** a started key set of an IdP serving keyA, refreshed every ten minutes, its refetch cooldown `cooldownMs` */
async function tenMinuteKeySet(t: Test, cooldownMs: number) {
  const idp = await serve(t, [keyA])
  const keys = new IssuerKeySet(
    issuerConfig({ issuer: idp.url, jwksUri: idp.jwksUri, refreshInterval: '10m' }),
    { unknownKidCooldownMs: cooldownMs },
  )
  t.teardown(() => keys.close())
  await keys.start()
  return { idp, keys }
}

// An IdP that says how long its key set stays fresh (a short max-age ahead of a rotation) is asked again then,
// not only at refreshInterval; never sooner than the cooldown, so max-age=0 or no-store is no polling loop.
t.test('Cache-Control max-age brings the next refresh forward, down to the cooldown', async (t) => {
  const { idp, keys } = await tenMinuteKeySet(t, 1500)
  t.equal(keys.nextRefreshInMs, 600_000, 'no Cache-Control: refreshInterval')
  const cases: [Record<string, string>, number, string][] = [
    [{ 'cache-control': 'public, max-age=120' }, 120_000, 'a max-age shorter than refreshInterval'],
    [{ 'cache-control': 'max-age=3600, must-revalidate' }, 600_000, 'a longer max-age: refreshInterval'],
    [{ 'cache-control': 'max-age=120', age: '100' }, 20_000, 'less the Age a cache in front held it for'],
    [{ 'cache-control': 'max-age=120', age: '500' }, 1500, 'an Age past max-age: the cooldown'],
    [{ 'cache-control': 'max-age=0' }, 1500, 'max-age=0: the cooldown'],
    [{ 'cache-control': 'no-store' }, 1500, 'no-store: the cooldown'],
    [{ 'cache-control': 'no-cache' }, 1500, 'no-cache: the cooldown'],
    [{ 'cache-control': 'no-cache="set-cookie", max-age=120' }, 120_000, 'a no-cache of one field only'],
    [{ 'cache-control': 'max-age=soon' }, 600_000, 'a max-age that is no number says nothing'],
    [{ 'cache-control': 'private' }, 600_000, 'no max-age: refreshInterval'],
  ]
  for (const [headers, expected, label] of cases) {
    idp.headers = headers
    t.equal(await keys.refresh(), true)
    t.equal(keys.nextRefreshInMs, expected, label)
  }

  // the timer runs at that time: with max-age=2 the key set is fetched again within seconds, unasked
  idp.headers = { 'cache-control': 'max-age=2' }
  t.equal(await keys.refresh(), true)
  t.equal(keys.nextRefreshInMs, 2000, 'max-age=2')
  const before = idp.hits
  idp.setKeys([keyA, keyB])
  await eventually(() => idp.hits > before && keys.publicJwks.length === 2, {
    timeoutMs: 6000,
    what: 'a refetch when the max-age ran out',
  })
  t.pass('refetched when the max-age ran out')

  // a failed refetch is retried as before, whatever the last answer's max-age
  idp.fault = 503
  t.equal(await keys.refresh(), false)
  t.equal(keys.nextRefreshInMs, 1500, 'retried after the retry delay')
})

t.test('unknownKidCooldown: 0 never turns a failing key set into a fetch loop', async (t) => {
  const { idp, keys } = await tenMinuteKeySet(t, 0)
  idp.fault = 503
  t.equal(await keys.refresh(), false)
  t.equal(keys.nextRefreshInMs, 1000, 'a failed fetch is retried after a second at the soonest')
  idp.fault = undefined
  t.equal(await keys.refresh(), true)
  t.equal(keys.nextRefreshInMs, 600_000, 'a good one after refreshInterval')
})

// An IdP that re-keys and issues tokens without a kid: a token signed with the new key failed as bad_signature
// against every key of the set until the next refreshInterval, since only a kid (unknown, or known with a
// failing signature) made the keys be refetched.
for (const verifyWorkers of [0, 1]) {
  t.test(
    `no kid, new key: the first token signed with it verifies (verifyWorkers ${verifyWorkers})`,
    async (t) => {
      const r = await rekeying(t, ['k1', 'k2', 'k3'], { withoutKid: true, verifyWorkers })
      const { oldKey, newKey, forger, idp, clock, x, mint } = r
      t.match(await verified(x, await mint(oldKey, 0)), { verified: true, kid: undefined })
      t.equal(idp.hits, 1)
      // the IdP publishes its new key next to the old one and signs with it at once
      await firstTokenOfTheNewKeyVerifies(t, r, verifyWorkers, [oldKey, newKey])
      t.match(await verified(x, await mint(oldKey, 2)), { verified: true }, 'the old key still verifies')

      // forged tokens without kid fail against both keys of the set (jose's several candidates)
      await forgedRoundsRefetchOncePerCooldown(t, x, idp, clock, (n) => mint(forger, n), 'without kid')

      // the IdP drops the old key; the next forged token's refetch only takes a key away (nothing to verify
      // it again with), and the old key's tokens fail from then on
      idp.setKeys([newKey])
      clock.advance(1001)
      t.match(await verified(x, await mint(forger, 500)), { failed: true, reason: 'bad_signature' })
      t.equal(idp.hits, 5)
      t.match(
        await verified(x, await mint(oldKey, 3)),
        { failed: true, reason: 'bad_signature' },
        'the withdrawn key no longer verifies',
      )
      t.match(await verified(x, await mint(newKey, 4)), { verified: true }, 'the new one does')
    },
  )
}

// A token without kid signed with the new key that arrives while a refetch is not allowed fails, and from its
// second request on its failure is cached: held for a minute, it kept the token failing after the cooldown.
t.test('no kid, new key: a cached bad_signature lasts no longer than the cooldown', async (t) => {
  await cachedBadSignatureEndsWithTheCooldown(t, await rekeying(t, ['k1', 'k2', 'k3'], { withoutKid: true }))
})

function hs256(claims: Record<string, unknown>, secret: string): string {
  const part = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url')
  const input = `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ exp: Math.floor(Date.now() / 1000) + 600, ...claims })}`
  return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`
}

// A rotated HMAC secret (a mounted Secret the kubelet replaced): the secret file was read again only at the
// issuer's refreshInterval (10 min by default), so every token signed with the new secret failed until then.
for (const verifyWorkers of [0, 1]) {
  t.test(
    `secretFile rotated: the first token signed with the new secret verifies (verifyWorkers ${verifyWorkers})`,
    async (t) => {
      const dir = await scratchDir('hs-rotation')
      const secretFile = join(dir, 'secret')
      await writeFile(secretFile, 'the-first-shared-secret\n')
      const issuer = 'https://hs.rotation.example'
      const clock = manualClock()
      const x = extractor(t, jwtConfig([{ issuer, secretFile, algorithms: ['HS256'] }], { verifyWorkers }), {
        unknownKidCooldownMs: 1000,
        now: clock.now,
      })
      await x.start()
      const first = hs256({ iss: issuer, sub: 'first' }, 'the-first-shared-secret')
      for (let i = 0; i < 2; i++)
        t.match(await verified(x, first), { verified: true, alg: 'HS256' }, 'kept from its second request on')

      await replaceFile(secretFile, 'the-second-shared-secret\n')
      clock.advance(1001)
      t.match(
        await verified(x, hs256({ iss: issuer, sub: 'second' }, 'the-second-shared-secret')),
        { verified: true, alg: 'HS256' },
        'the first token signed with the new secret verifies',
      )
      t.match(
        await verified(x, first),
        { failed: true, reason: 'bad_signature' },
        'a token of the replaced secret no longer verifies, though its verification was cached',
      )

      // a re-read within the cooldown of the last one is not allowed: a secret written now is not seen yet
      await replaceFile(secretFile, 'the-third-shared-secret\n')
      const third = hs256({ iss: issuer, sub: 'third' }, 'the-third-shared-secret')
      const forged = Array.from({ length: 40 }, (_, i) => hs256({ iss: issuer, n: i }, 'a-forged-secret'))
      const answers = await Promise.all(forged.map((tok) => verified(x, tok)))
      t.ok(
        answers.every((a) => a !== undefined && 'reason' in a && a.reason === 'bad_signature'),
        'forged tokens fail as bad_signature',
      )
      t.match(
        await verified(x, third),
        { failed: true, reason: 'bad_signature' },
        'no re-read within the cooldown',
      )
      clock.advance(1001)
      // a burst past the cooldown reads the file once: a secret written after that read is not seen
      const burst = await Promise.all(
        forged.map((_, i) => verified(x, hs256({ iss: issuer, n: 100 + i }, 'a-forged-secret'))),
      )
      t.ok(burst.every((a) => a !== undefined && 'reason' in a && a.reason === 'bad_signature'))
      await replaceFile(secretFile, 'the-fourth-shared-secret\n')
      t.match(await verified(x, third), { verified: true }, 'the burst made the file be read again')
      const fourth = hs256({ iss: issuer, sub: 'fourth' }, 'the-fourth-shared-secret')
      t.match(
        await verified(x, fourth),
        { failed: true, reason: 'bad_signature' },
        'one read for the whole burst, none since within the cooldown',
      )
      clock.advance(1001)
      t.match(await verified(x, fourth), { verified: true }, 'read again once the cooldown is over')
      t.equal(x.verifyPool().verified, 0, 'HMAC tokens are verified on the main thread')
    },
  )
}

// A token signed with the new secret that arrives while a re-read is not allowed fails, from its second
// request on from the cache: held for a minute, it kept failing after the cooldown ended.
t.test('secretFile rotated: a cached bad_signature lasts no longer than the cooldown', async (t) => {
  const dir = await scratchDir('hs-rotation-cache')
  const secretFile = join(dir, 'secret')
  await writeFile(secretFile, 'the-first-shared-secret')
  const issuer = 'https://hs.rotation.example'
  const clock = manualClock()
  const x = extractor(t, jwtConfig([{ issuer, secretFile, algorithms: ['HS256'] }]), {
    unknownKidCooldownMs: 1000,
    now: clock.now,
  })
  await x.start()
  await replaceFile(secretFile, 'the-second-shared-secret')
  const fresh = hs256({ iss: issuer }, 'the-second-shared-secret')
  for (const n of [1, 2])
    t.match(
      await verified(x, fresh),
      { failed: true, reason: 'bad_signature' },
      `request ${n} within the cooldown of the start's read: the new secret is not read yet`,
    )
  clock.advance(1001)
  t.match(
    await verified(x, fresh),
    { verified: true, alg: 'HS256' },
    'once the cooldown is over the token makes the file be read again, its cached failure gone',
  )
})
