// The JWT extractor against real keys served over HTTP: every failure reason, hostile tokens, header grammar,
// HMAC issuers, and the verification cache (synchronous hits, expiry at exp, shared in-flight verifications).

import { createHmac, createPublicKey } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { decodeJwt } from 'jose'
import t from 'tap'
import { type Config, configSchema } from '../../src/config/schema.ts'
import { JwtExtractor } from '../../src/identity/extractors/jwt.ts'
import type { ConnectionInfo, Failure, JwtEvidence, RequestInfo } from '../../src/types.ts'
import { eventually } from '../helpers/eventually.ts'
import {
  alterSignature,
  createSigningKey,
  type JwksServer,
  mintToken,
  type SigningKey,
  startJwksServer,
} from '../helpers/jwks.ts'
import { scratchDir } from '../helpers/scratch.ts'

const conn: ConnectionInfo = { remoteAddress: '127.0.0.1', remotePort: 40000, tls: false }
const ES_ONLY = 'https://es-only.example'
const HMAC_ISSUER = 'https://hmac.example'
const SECRET = 'a-shared-secret-of-enough-length-for-hs256'

const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url')
const now = () => Math.floor(Date.now() / 1000)

function hs256(
  header: Record<string, unknown>,
  claims: Record<string, unknown>,
  secret: string | Buffer,
): string {
  const input = `${b64(header)}.${b64(claims)}`
  return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`
}

/** RS256 over arbitrary header/claims, for headers jose refuses to produce */
async function rs256(
  key: SigningKey,
  header: Record<string, unknown>,
  claims: Record<string, unknown>,
): Promise<string> {
  const input = `${b64({ alg: 'RS256', kid: key.kid, ...header })}.${b64(claims)}`
  const sig = await crypto.subtle.sign('RSASSA-PKCS1-v1_5', key.privateKey, new TextEncoder().encode(input))
  return `${input}.${Buffer.from(sig).toString('base64url')}`
}

function withAuth(authorization?: string): RequestInfo {
  return { method: 'GET', path: '/', url: '/', headers: authorization === undefined ? {} : { authorization } }
}

function jwtConfig(issuers: Record<string, unknown>[], extra: Record<string, unknown> = {}): Config['jwt'] {
  // audience is not what most of these tests are about: they accept any audience explicitly
  const withAud = issuers.map((i) => ({ audiences: 'any', ...i }))
  return configSchema.parse({ jwt: { issuers: withAud, ...extra } }).jwt
}

let idp: JwksServer
let keyA: SigningKey
let keyA2: SigningKey
let keyE: SigningKey
let rogue: SigningKey
let x: JwtExtractor
let secretFile: string

t.before(async () => {
  keyA = await createSigningKey('key-a')
  keyA2 = await createSigningKey('key-a2')
  keyE = await createSigningKey('key-e', 'ES256')
  rogue = await createSigningKey('key-a') // same kid as a published key, different key material
  idp = await startJwksServer([keyA, keyA2, keyE])
  const dir = await scratchDir('jwt')
  secretFile = join(dir, 'secret')
  await writeFile(secretFile, `${SECRET}\n`)
  x = new JwtExtractor(
    jwtConfig([
      { issuer: idp.url, jwksUri: idp.jwksUri, audiences: ['api'], profile: 'generic' },
      { issuer: ES_ONLY, jwksUri: idp.jwksUri, algorithms: ['ES256'] },
      { issuer: HMAC_ISSUER, secretFile },
    ]),
    { unknownKidCooldownMs: 60_000 },
  )
  await x.start()
})
t.teardown(async () => {
  x.close()
  await idp.close()
})

async function extract(ex: JwtExtractor, authorization?: string): Promise<JwtEvidence | Failure | undefined> {
  return await ex.extract(withAuth(authorization), conn)
}
const bearer = (token: string) => `Bearer ${token}`
const mint = (
  key: SigningKey,
  claims: Record<string, unknown> = {},
  opts: Partial<Parameters<typeof mintToken>[2]> = {},
) =>
  mintToken(
    key,
    { jti: Math.random().toString(36), ...claims },
    { issuer: idp.url, audience: 'api', subject: 'svc-1', ...opts },
  )

t.test('valid tokens verify and become evidence', async (t) => {
  t.equal(x.ready(), true)
  const token = await mint(keyA, { scope: 'read' })
  const ev = await extract(x, bearer(token))
  t.match(ev, {
    source: 'jwt',
    verified: true,
    issuer: idp.url,
    profile: 'generic',
    alg: 'RS256',
    kid: 'key-a',
    claims: { sub: 'svc-1', scope: 'read', aud: 'api' },
    fingerprint: /^[0-9a-f]{16}$/,
    exp: Number,
  })
  t.match(await extract(x, bearer(await mint(keyE))), { verified: true, alg: 'ES256' })
  t.match(await extract(x, `bEaReR ${await mint(keyA)}`), { verified: true }, 'scheme is case-insensitive')
  t.match(
    await extract(x, bearer(await mint(keyA, {}, { expiresIn: -10 }))),
    { verified: true },
    'exp within skew',
  )
  t.match(
    await extract(x, bearer(await mint(keyA, {}, { notBefore: 10 }))),
    { verified: true },
    'nbf within skew',
  )
  t.match(
    await extract(x, bearer(await mint(keyA2, {}, { header: { kid: undefined } }))),
    { verified: true, kid: undefined },
    'no kid: every candidate key is tried',
  )
  t.match(await extract(x, bearer(await mint(keyE, {}, { issuer: ES_ONLY }))), {
    verified: true,
    issuer: ES_ONLY,
  })
})

t.test('no bearer credential → undefined', async (t) => {
  t.equal(await extract(x, undefined), undefined)
  t.equal(await extract(x, ''), undefined)
  t.equal(await extract(x, 'Basic dXNlcjpwYXNz'), undefined)
})

t.test('every failure reason', async (t) => {
  const pem = createPublicKey({ key: keyA.publicJwk as import('node:crypto').JsonWebKey, format: 'jwk' })
    .export({ type: 'spki', format: 'pem' })
    .toString()
  const valid = await mint(keyA)
  const [h] = valid.split('.')
  const cases: [string, string, Failure['reason']][] = [
    ['expired beyond skew', await mint(keyA, {}, { expiresIn: -120 }), 'expired'],
    ['nbf beyond skew', await mint(keyA, {}, { notBefore: 120 }), 'not_yet_valid'],
    ['signed by a rogue key with a published kid', await mint(rogue), 'bad_signature'],
    [
      'payload tampered',
      `${h}.${b64({ iss: idp.url, aud: 'api', sub: 'admin', exp: now() + 60 })}.${valid.split('.')[2]}`,
      'bad_signature',
    ],
    ['unknown kid', await mint(keyA, {}, { header: { kid: 'nope' } }), 'unknown_kid'],
    ['kid path traversal', await mint(keyA, {}, { header: { kid: '../../etc/passwd' } }), 'unknown_kid'],
    ['wrong audience', await mint(keyA, {}, { audience: 'other' }), 'wrong_audience'],
    ['missing audience', await mint(keyA, {}, { audience: [] }), 'wrong_audience'],
    ['unknown issuer', await mint(keyA, {}, { issuer: 'https://evil.example' }), 'wrong_issuer'],
    ['no iss claim', `${h}.${b64({ sub: 'x', exp: now() + 60 })}.${valid.split('.')[2]}`, 'wrong_issuer'],
    ['RS256 to an ES256-only issuer', await mint(keyA, {}, { issuer: ES_ONLY }), 'alg_not_allowed'],
    [
      'alg none',
      `${b64({ alg: 'none', typ: 'JWT' })}.${b64({ iss: idp.url, aud: 'api', sub: 'x' })}.`,
      'alg_not_allowed',
    ],
    ['alg NoNe', `${b64({ alg: 'NoNe' })}.${b64({ iss: idp.url, aud: 'api' })}.`, 'alg_not_allowed'],
    [
      'HS256 signed with the RSA public key (algorithm confusion)',
      hs256({ alg: 'HS256', kid: 'key-a' }, { iss: idp.url, aud: 'api', sub: 'admin', exp: now() + 60 }, pem),
      'alg_not_allowed',
    ],
    [
      'HS256 with a wrong secret',
      hs256({ alg: 'HS256' }, { iss: HMAC_ISSUER, exp: now() + 60 }, 'wrong'),
      'bad_signature',
    ],
    ['jku header', await mint(keyA, {}, { header: { jku: 'http://127.0.0.1:9/jwks' } }), 'bad_signature'],
    ['x5u header', await mint(keyA, {}, { header: { x5u: 'http://127.0.0.1:9/cert' } }), 'bad_signature'],
    ['x5c header', await mint(keyA, {}, { header: { x5c: ['MIIBIjAN'] } }), 'bad_signature'],
    ['embedded jwk header', await mint(rogue, {}, { header: { jwk: rogue.publicJwk } }), 'bad_signature'],
    [
      'unknown crit header',
      await rs256(
        keyA,
        { crit: ['x-critical'], 'x-critical': 1 },
        { iss: idp.url, aud: 'api', exp: now() + 60 },
      ),
      'malformed',
    ],
    ['non-string kid', await mint(keyA, {}, { header: { kid: 42 } }), 'malformed'],
    ['garbage segments', 'aaaa.bbbb.cccc', 'malformed'],
    ['payload not an object', `${h}.${b64('just a string')}.${valid.split('.')[2]}`, 'malformed'],
    ['not a JWS at all', 'opaque-token-value', 'malformed'],
    ['oversized', await mint(keyA, { pad: 'x'.repeat(9000) }), 'malformed'],
  ]
  const hitsBefore = idp.hits
  for (const [name, token, reason] of cases) {
    const r = await extract(x, bearer(token))
    t.match(r, { failed: true, source: 'jwt', reason }, name)
    const text = JSON.stringify(r)
    const sig = token.split('.')[2]
    if (sig && sig.length > 8) t.notOk(text.includes(sig), `${name}: failure never carries the token`)
  }
  t.equal(idp.hits, hitsBefore, 'hostile kids did not refetch within the cooldown')
})

t.test('odd Authorization spellings are malformed, even for a token already cached', async (t) => {
  const token = await mint(keyA)
  // verified (and cached) first: a spelling that differs from "Bearer <token>" must not ride on that entry
  t.match(await extract(x, bearer(token)), { source: 'jwt', verified: true })
  t.match(
    await extract(x, `bEaReR ${token}`),
    { source: 'jwt', verified: true },
    'the scheme is case-insensitive',
  )
  for (const auth of [
    `Bearer ${token} `,
    `Bearer ${token}\n`,
    `Bearer  ${token}`,
    'Bearer',
    'Bearer ',
    `Bearer ${token} extra`,
    `Bearer\t${token}`,
    `Bearer:${token}`,
    `Bearer ${token},x`,
  ]) {
    t.match(await extract(x, auth), { failed: true, reason: 'malformed' }, JSON.stringify(auth.slice(0, 12)))
  }
})

t.test('failures carry safe attributes and a fingerprint', async (t) => {
  const token = await mint(keyA, {}, { audience: 'other', subject: 'robot-7' })
  const r = await extract(x, bearer(token))
  t.match(r, {
    failed: true,
    reason: 'wrong_audience',
    fingerprint: /^[0-9a-f]{16}$/,
    attributes: { iss: idp.url, sub: 'robot-7', kid: 'key-a' },
  })
})

t.test('HS256 verifies only for the issuer with a secretFile', async (t) => {
  const token = hs256(
    { alg: 'HS256', typ: 'JWT' },
    { iss: HMAC_ISSUER, sub: 'legacy', exp: now() + 60 },
    SECRET,
  )
  t.match(await extract(x, bearer(token)), { verified: true, alg: 'HS256', issuer: HMAC_ISSUER })
  const noSecret = hs256({ alg: 'HS256' }, { iss: idp.url, aud: 'api', exp: now() + 60 }, SECRET)
  t.match(await extract(x, bearer(noSecret)), { failed: true, reason: 'alg_not_allowed' })
})

t.test(
  'cache: hits are synchronous, failures cached briefly, concurrent first verifications shared',
  async (t) => {
    const token = await mint(keyA)
    const first = x.extract(withAuth(bearer(token)), conn)
    const concurrent = x.extract(withAuth(bearer(token)), conn)
    t.ok(first instanceof Promise, 'first verification is asynchronous')
    t.equal(concurrent, first, 'concurrent verification shares one promise')
    await first
    // kept from the second request on (admission on second sight)
    const second = x.extract(withAuth(bearer(token)), conn)
    t.ok(second instanceof Promise, 'the second request verifies again')
    const ev = await second
    const third = x.extract(withAuth(bearer(token)), conn)
    t.notOk(third instanceof Promise, 'cached hit returns synchronously')
    t.equal(third, ev)

    const bad = await mint(keyA, {}, { audience: 'other' })
    await x.extract(withAuth(bearer(bad)), conn)
    await x.extract(withAuth(bearer(bad)), conn)
    const again = x.extract(withAuth(bearer(bad)), conn)
    t.notOk(again instanceof Promise, 'a repeated bad token is answered from the cache')
    t.match(again, { reason: 'wrong_audience' })
  },
)

t.test(
  'cache admission: a token is kept from its second request; one-off tokens never evict it',
  async (t) => {
    const ex = new JwtExtractor(jwtConfig([{ issuer: HMAC_ISSUER, secretFile }], { cacheSize: 4 }))
    t.teardown(() => ex.close())
    await ex.start()
    // one expiry for every token: a token minted again must be the same string, even across a second
    const exp = now() + 600
    const token = (sub: string) => hs256({ alg: 'HS256' }, { iss: HMAC_ISSUER, sub, exp }, SECRET)
    const kept = token('kept')
    const first = ex.extract(withAuth(bearer(kept)), conn)
    t.ok(first instanceof Promise, 'first request: verified')
    t.match(await first, { verified: true })
    const second = ex.extract(withAuth(bearer(kept)), conn)
    t.ok(second instanceof Promise, 'second request: verified again, and kept')
    const evidence = await second
    t.equal(ex.extract(withAuth(bearer(kept)), conn), evidence, 'third request: the cached evidence')

    // far more one-off tokens than the cache holds, each sent once: none is kept, so none evicts the kept one
    const onceTokens = Array.from({ length: 40 }, (_, i) => token(`once-${i}`))
    for (const [i, once] of onceTokens.entries()) {
      t.match(await ex.extract(withAuth(bearer(once)), conn), {
        verified: true,
        claims: { sub: `once-${i}` },
      })
    }
    t.equal(ex.extract(withAuth(bearer(kept)), conn), evidence, 'still cached after 40 one-off tokens')

    // a one-off token that comes back is kept from then on, failures as well as verified tokens
    const back = onceTokens[7]!
    const again = ex.extract(withAuth(bearer(back)), conn)
    t.ok(again instanceof Promise, 'seen before, not cached: verified')
    t.match(await again, { verified: true })
    t.notOk(ex.extract(withAuth(bearer(back)), conn) instanceof Promise, 'then cached')
    const forged = alterSignature(token('forged'))
    t.not(forged, token('forged'), 'precondition: the forged token is not the signed one')
    t.match(await ex.extract(withAuth(bearer(forged)), conn), { reason: 'bad_signature' })
    const forgedAgain = ex.extract(withAuth(bearer(forged)), conn)
    t.ok(forgedAgain instanceof Promise, 'a failure seen once is not cached')
    t.match(await forgedAgain, { reason: 'bad_signature' })
    t.match(ex.extract(withAuth(bearer(forged)), conn), { reason: 'bad_signature' }, 'a repeated one is')
    t.notOk(ex.extract(withAuth(bearer(forged)), conn) instanceof Promise, 'answered from the cache')
  },
)

t.test('cache: an entry never outlives exp', async (t) => {
  const token = await mint(keyA, {}, { expiresIn: 60 })
  // the clock starts at the token's own iat: a reading of the real clock taken apart from the one the token
  // was minted with may lie a second before it (several on a loaded machine), and 61 s on would not be past exp
  const { iat, exp } = decodeJwt(token) as { iat: number; exp: number }
  t.equal(exp - iat, 60, 'precondition: the token expires 60 s after its iat')
  let clock = iat * 1000
  const ex = new JwtExtractor(jwtConfig([{ issuer: idp.url, jwksUri: idp.jwksUri }], { clockSkew: 0 }), {
    now: () => clock,
  })
  t.teardown(() => ex.close())
  await ex.start()
  t.match(await ex.extract(withAuth(bearer(token)), conn), { verified: true })
  // kept from the second request on
  t.match(await ex.extract(withAuth(bearer(token)), conn), { verified: true })
  t.notOk(ex.extract(withAuth(bearer(token)), conn) instanceof Promise, 'cached')
  clock += 59_000
  t.notOk(ex.extract(withAuth(bearer(token)), conn) instanceof Promise, 'still cached just before exp')
  clock += 2_000
  const after = ex.extract(withAuth(bearer(token)), conn)
  t.ok(after instanceof Promise, 'entry gone after exp: verified again')
  t.match(await after, { failed: true, reason: 'expired' })
})

t.test('cache: without clock skew, an entry is not answered at the millisecond of exp', async (t) => {
  // a token has expired once its exp is not past the clock: without skew that is from exp on, the very
  // millisecond a cache entry that lasts "until exp" would still answer it
  const token = await mint(keyA, {}, { expiresIn: 60 })
  const exp = decodeJwt(token).exp!
  let clock = (exp - 30) * 1000
  const ex = new JwtExtractor(jwtConfig([{ issuer: idp.url, jwksUri: idp.jwksUri }], { clockSkew: 0 }), {
    now: () => clock,
  })
  t.teardown(() => ex.close())
  await ex.start()
  t.match(await ex.extract(withAuth(bearer(token)), conn), { verified: true })
  t.match(await ex.extract(withAuth(bearer(token)), conn), { verified: true })
  clock = exp * 1000 - 1
  const before = ex.extract(withAuth(bearer(token)), conn)
  t.notOk(before instanceof Promise, 'cached a millisecond before exp')
  t.match(before, { verified: true })
  clock = exp * 1000
  const at = ex.extract(withAuth(bearer(token)), conn)
  t.ok(at instanceof Promise, 'at exp: verified again')
  t.match(await at, { failed: true, reason: 'expired' }, 'and expired, as a token never cached is')
})

t.test('cache: tokens without exp are re-verified after at most 5 minutes', async (t) => {
  let clock = Date.now()
  const ex = new JwtExtractor(jwtConfig([{ issuer: HMAC_ISSUER, secretFile }]), { now: () => clock })
  t.teardown(() => ex.close())
  await ex.start()
  const token = hs256({ alg: 'HS256' }, { iss: HMAC_ISSUER, sub: 'forever' }, SECRET)
  t.match(await ex.extract(withAuth(bearer(token)), conn), { verified: true, exp: undefined })
  t.match(await ex.extract(withAuth(bearer(token)), conn), { verified: true, exp: undefined })
  clock += 4 * 60_000
  t.notOk(ex.extract(withAuth(bearer(token)), conn) instanceof Promise, 'cached within 5 minutes')
  clock += 2 * 60_000
  t.ok(ex.extract(withAuth(bearer(token)), conn) instanceof Promise, 're-verified after 5 minutes')
})

t.test('cache: tokens verified together are not all re-verified in the same second', async (t) => {
  const start = Date.now()
  let clock = start
  const draws = [0, 0.25, 0.5, 0.75, 0.999]
  let next = 0
  const ex = new JwtExtractor(jwtConfig([{ issuer: HMAC_ISSUER, secretFile }]), {
    now: () => clock,
    random: () => draws[next++ % draws.length]!,
  })
  t.teardown(() => ex.close())
  await ex.start()
  const tokens = draws.map((_, i) => hs256({ alg: 'HS256' }, { iss: HMAC_ISSUER, sub: `batch-${i}` }, SECRET))
  for (const tok of tokens) t.match(await ex.extract(withAuth(bearer(tok)), conn), { verified: true })
  // the second request of each is the one kept, and draws its lifetime
  for (const tok of tokens) t.match(await ex.extract(withAuth(bearer(tok)), conn), { verified: true })
  const stillCached = () =>
    tokens.filter((tok) => !(ex.extract(withAuth(bearer(tok)), conn) instanceof Promise))
  clock = start + 4 * 60_000
  t.equal(stillCached().length, 5, 'all cached for the first four minutes')
  clock = start + 4.5 * 60_000 + 1
  t.equal(stillCached().length, 2, 'half a minute later only the longer-drawn lifetimes remain')
})

t.test('cache size is bounded by cacheSize', async (t) => {
  const ex = new JwtExtractor(jwtConfig([{ issuer: idp.url, jwksUri: idp.jwksUri }], { cacheSize: 2 }))
  t.teardown(() => ex.close())
  await ex.start()
  const tokens = await Promise.all([1, 2, 3].map(() => mint(keyA)))
  for (const tok of tokens) {
    await ex.extract(withAuth(bearer(tok)), conn)
    await ex.extract(withAuth(bearer(tok)), conn)
  }
  t.ok(ex.extract(withAuth(bearer(tokens[0]!)), conn) instanceof Promise, 'oldest entry evicted')
  t.notOk(ex.extract(withAuth(bearer(tokens[2]!)), conn) instanceof Promise, 'newest entry kept')
})

t.test('no issuers configured: ready, and any token is a wrong_issuer failure', async (t) => {
  const ex = new JwtExtractor(jwtConfig([]))
  t.teardown(() => ex.close())
  await ex.start()
  t.equal(ex.ready(), true)
  t.match(await extract(ex, bearer(await mint(keyA))), { failed: true, reason: 'wrong_issuer' })
})

t.test(
  'a reload that withdraws a key or changes the secret drops only the cached tokens it verified',
  async (t) => {
    const dir = await scratchDir('jwt-withdrawn')
    const keysFile = join(dir, 'jwks.json')
    const secretPath = join(dir, 'secret')
    const publish = (keys: SigningKey[]) =>
      writeFile(keysFile, JSON.stringify({ keys: keys.map((k) => k.publicJwk) }))
    await publish([keyA, keyA2])
    await writeFile(secretPath, SECRET)
    const issuer = 'https://rotating.example'
    const ex = new JwtExtractor(
      jwtConfig([{ issuer, jwksFile: keysFile, secretFile: secretPath, refreshInterval: '1s' }]),
    )
    t.teardown(() => ex.close())
    await ex.start()
    const kept = bearer(await mint(keyA, {}, { issuer }))
    const retired = bearer(await mint(keyA2, {}, { issuer }))
    const hmac = bearer(hs256({ alg: 'HS256' }, { iss: issuer, exp: now() + 600 }, SECRET))
    const cached = new Map<string, JwtEvidence | Failure | undefined>()
    for (const auth of [kept, retired, hmac]) {
      await extract(ex, auth)
      cached.set(auth, await extract(ex, auth))
      t.match(cached.get(auth), { verified: true })
      t.equal(await extract(ex, auth), cached.get(auth), 'answered from the cache')
    }

    await publish([keyA])
    await writeFile(secretPath, `${SECRET}-rotated`)
    await eventually(async () => 'failed' in ((await extract(ex, hmac)) ?? {}), {
      what: 'the rotated secret to be read',
    })
    await eventually(async () => 'failed' in ((await extract(ex, retired)) ?? {}), {
      what: 'the withdrawn key to be noticed',
    })
    t.match(await extract(ex, hmac), { failed: true, reason: 'bad_signature' })
    t.match(await extract(ex, retired), { failed: true, reason: 'unknown_kid' })
    t.equal(await extract(ex, kept), cached.get(kept), 'a token of a key still published stays cached')
  },
)

t.test(
  'a signature spelled with non-zero unused bits is malformed, not a second spelling of the token',
  async (t) => {
    // a 2048-bit RSA or a P-256 signature leaves 4 unused bits in its last character, an HMAC-SHA256 one 2:
    // lenient decoders ignore them, so one signature has 16 (or 4) spellings, each a different fingerprint
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
    const respell = (token: string, unused: number) => {
      const last = alphabet.indexOf(token.at(-1)!)
      return token.slice(0, -1) + alphabet[last | ((1 << unused) - 1)]!
    }
    for (const [name, token, unused] of [
      ['RS256', await mint(keyA), 4],
      ['ES256', await mint(keyE), 4],
      ['HS256', hs256({ alg: 'HS256' }, { iss: HMAC_ISSUER, sub: 'svc-h', exp: now() + 600 }, SECRET), 2],
    ] as const) {
      const other = respell(token, unused)
      t.not(other, token, `${name}: a second spelling`)
      t.match(await extract(x, bearer(token)), { verified: true }, `${name}: the canonical token verifies`)
      t.match(
        await extract(x, bearer(other)),
        { failed: true, reason: 'malformed' },
        `${name}: the respelled one does not`,
      )
    }
  },
)
