// The node:crypto verification (src/identity/jwt/jws.ts) against jose's jwtVerify on the same tokens, keys and
// options: valid tokens of every supported algorithm and attacker tokens (alg none, HS256 keyed with the RSA
// public key, another key's kid, ES signatures DER-encoded or short, wrong curve, PS/RS swapped, bad crit,
// b64:false, 4 parts, claims that fail, huge headers, small RSA keys). Each token must be accepted or refused
// alike, with the same failure reason and detail; and the issuer verifier gives the same answer inline and
// through the worker pool, which both run verifyJwt.
import {
  constants,
  createHmac,
  createPublicKey,
  sign as cryptoSign,
  generateKeyPairSync,
  type KeyObject,
} from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createLocalJWKSet, errors, type JWK, type JWSHeaderParameters, jwtVerify } from 'jose'
import t from 'tap'
import { issuerSchema } from '../../src/config/schema.ts'
import { type FailureCause, failureCause } from '../../src/identity/jwt/errors.ts'
import { type JwsKey, type JwtCheckOptions, verifyJwt } from '../../src/identity/jwt/jws.ts'
import { VerifyPool } from '../../src/identity/jwt/pool.ts'
import { IssuerVerifier } from '../../src/identity/jwt/verifier.ts'
import { ASYMMETRIC_ALGORITHMS, HMAC_ALGORITHMS, type JwtEvidence } from '../../src/types.ts'
import { eventually } from '../helpers/eventually.ts'
import { scratchDir } from '../helpers/scratch.ts'

const ISSUER = 'https://idp.differential.example'
const AUDIENCE = 'orders'
const NOW_MS = 1_800_000_000_000
const NOW = NOW_MS / 1000
const SKEW_S = 30
const SECRET = Buffer.from('a-shared-secret-of-enough-length-for-hs512-and-more-bytes-still-more')

interface Signer {
  kid: string
  privateKey: KeyObject
  publicJwk: JWK
}

function keyPair(
  kid: string,
  type: 'rsa' | 'ec' | 'ed25519',
  opt: { bits?: number; curve?: string; alg?: string; use?: string; keyOps?: string[] } = {},
): Signer {
  const { privateKey, publicKey } =
    type === 'rsa'
      ? generateKeyPairSync('rsa', { modulusLength: opt.bits ?? 2048 })
      : type === 'ec'
        ? generateKeyPairSync('ec', { namedCurve: opt.curve ?? 'P-256' })
        : generateKeyPairSync('ed25519')
  const publicJwk: JWK = { ...(publicKey.export({ format: 'jwk' }) as JWK), kid }
  if (opt.alg) publicJwk.alg = opt.alg
  if (opt.use) publicJwk.use = opt.use
  if (opt.keyOps) publicJwk.key_ops = opt.keyOps
  return { kid, privateKey, publicJwk }
}

const HASH: Record<string, string> = { 256: 'sha256', 384: 'sha384', 512: 'sha512' }

/** signs `input` as `alg` would, with any key (so a test can sign with the wrong kind on purpose) */
function signature(alg: string, input: string, key: KeyObject | Buffer, der = false): Buffer {
  const hash = HASH[alg.slice(2)] ?? 'sha256'
  if (alg.startsWith('HS'))
    return createHmac(hash, key as Buffer)
      .update(input)
      .digest()
  if (alg.startsWith('RS')) return cryptoSign(hash, Buffer.from(input), key as KeyObject)
  if (alg.startsWith('PS')) {
    return cryptoSign(hash, Buffer.from(input), {
      key: key as KeyObject,
      padding: constants.RSA_PKCS1_PSS_PADDING,
      saltLength: Number(alg.slice(2)) / 8,
    })
  }
  if (alg.startsWith('ES')) {
    return cryptoSign(hash, Buffer.from(input), {
      key: key as KeyObject,
      dsaEncoding: der ? 'der' : 'ieee-p1363',
    })
  }
  return cryptoSign(null, Buffer.from(input), key as KeyObject)
}

const enc = (v: unknown) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url')

function jwt(
  alg: string,
  key: KeyObject | Buffer,
  header: Record<string, unknown>,
  claims: unknown,
  opts: { der?: boolean; sigAlg?: string; rawHeader?: Buffer; rawClaims?: Buffer } = {},
): string {
  const h = opts.rawHeader ? opts.rawHeader.toString('base64url') : enc({ alg, ...header })
  const c = opts.rawClaims ? opts.rawClaims.toString('base64url') : enc(claims)
  const input = `${h}.${c}`
  return `${input}.${signature(opts.sigAlg ?? alg, input, key, opts.der).toString('base64url')}`
}

const claims = (extra: Record<string, unknown> = {}) => ({
  iss: ISSUER,
  aud: AUDIENCE,
  sub: 'system:serviceaccount:shop:orders',
  iat: NOW - 60,
  exp: NOW + 600,
  ...extra,
})

// keys: RSA (two, for the no-kid loop), a 1024-bit RSA key, EC on every curve, Ed25519, and keys the
// selection must skip (use enc, alg pinned to another algorithm, key_ops without verify)
const rsa1 = keyPair('rsa-1', 'rsa')
const rsa2 = keyPair('rsa-2', 'rsa')
const rsaSmall = keyPair('rsa-1024', 'rsa', { bits: 1024 })
const p256 = keyPair('ec-p256', 'ec', { curve: 'P-256' })
const p384 = keyPair('ec-p384', 'ec', { curve: 'P-384' })
const p521 = keyPair('ec-p521', 'ec', { curve: 'P-521' })
const ed = keyPair('ed-1', 'ed25519')
const encKey = keyPair('rsa-enc', 'rsa', { use: 'enc' })
const pinned = keyPair('rsa-pinned-rs384', 'rsa', { alg: 'RS384' })
const signOnly = keyPair('rsa-signops', 'rsa', { keyOps: ['sign'] })
const outsider = keyPair('outsider', 'rsa')
const jwks = [rsa1, rsa2, rsaSmall, p256, p384, p521, ed, encKey, pinned, signOnly].map((k) => k.publicJwk)
const localSet = createLocalJWKSet({ keys: jwks })
/** what IssuerKeySet.getKey does: HS* → the shared secret, anything else → the JWKS */
const resolver = (header: JWSHeaderParameters) =>
  typeof header.alg === 'string' && header.alg.startsWith('HS') ? new Uint8Array(SECRET) : localSet(header)
const rsaPublicPem = Buffer.from(createPublicKey(rsa1.privateKey).export({ format: 'pem', type: 'spki' }))
const rsaPublicKeyBytes = Buffer.from(JSON.stringify(rsa1.publicJwk))

type Case = [name: string, token: string]
function corpus(): Case[] {
  const c: Case[] = []
  const ok = claims()
  // valid, every algorithm, with and without kid
  for (const [alg, k] of [
    ['RS256', rsa1],
    ['RS384', rsa1],
    ['RS512', rsa2],
    ['PS256', rsa1],
    ['PS384', rsa2],
    ['PS512', rsa1],
    ['ES256', p256],
    ['ES384', p384],
    ['ES512', p521],
    ['EdDSA', ed],
  ] as const) {
    c.push([`${alg} valid with kid`, jwt(alg, k.privateKey, { kid: k.kid }, ok)])
    c.push([`${alg} valid without kid`, jwt(alg, k.privateKey, {}, ok)])
    c.push([`${alg} payload flipped`, jwt(alg, k.privateKey, { kid: k.kid }, ok).replace(/\.(.)/, '.X')])
  }
  for (const alg of HMAC_ALGORITHMS) {
    c.push([`${alg} valid`, jwt(alg, SECRET, {}, ok)])
    c.push([`${alg} wrong secret`, jwt(alg, Buffer.from('another secret'), {}, ok)])
  }
  c.push(['RS256 without kid, second key signed', jwt('RS256', rsa2.privateKey, {}, ok)])
  c.push(['RS256 without kid, nobody we know signed', jwt('RS256', outsider.privateKey, {}, ok)])
  c.push(['RS256 kid of another key', jwt('RS256', outsider.privateKey, { kid: rsa1.kid }, ok)])
  c.push(['RS256 kid of the other RSA key', jwt('RS256', rsa1.privateKey, { kid: rsa2.kid }, ok)])
  c.push(['unknown kid', jwt('RS256', outsider.privateKey, { kid: 'nope' }, ok)])
  c.push(['kid a number', jwt('RS256', rsa1.privateKey, { kid: 7 }, ok)])
  c.push(['RS256 with a 1024-bit key', jwt('RS256', rsaSmall.privateKey, { kid: rsaSmall.kid }, ok)])
  c.push(['PS256 with a 1024-bit key', jwt('PS256', rsaSmall.privateKey, { kid: rsaSmall.kid }, ok)])
  c.push(['key with use enc', jwt('RS256', encKey.privateKey, { kid: encKey.kid }, ok)])
  c.push(['key pinned to RS384, token RS256', jwt('RS256', pinned.privateKey, { kid: pinned.kid }, ok)])
  c.push(['key pinned to RS384, token RS384', jwt('RS384', pinned.privateKey, { kid: pinned.kid }, ok)])
  c.push(['key_ops without verify', jwt('RS256', signOnly.privateKey, { kid: signOnly.kid }, ok)])
  // algorithm confusion
  c.push(['alg none', `${enc({ alg: 'none' })}.${enc(ok)}.`])
  c.push(['alg none with kid', `${enc({ alg: 'none', kid: rsa1.kid })}.${enc(ok)}.`])
  c.push(['alg None', `${enc({ alg: 'None' })}.${enc(ok)}.`])
  c.push(['HS256 keyed with the RSA public JWK', jwt('HS256', rsaPublicKeyBytes, { kid: rsa1.kid }, ok)])
  c.push(['HS256 keyed with the RSA key PEM', jwt('HS256', rsaPublicPem, { kid: rsa1.kid }, ok)])
  c.push([
    'PS256 signature, RS256 header',
    jwt('RS256', rsa1.privateKey, { kid: rsa1.kid }, ok, { sigAlg: 'PS256' }),
  ])
  c.push([
    'RS256 signature, PS256 header',
    jwt('PS256', rsa1.privateKey, { kid: rsa1.kid }, ok, { sigAlg: 'RS256' }),
  ])
  c.push([
    'RS384 signature, RS256 header',
    jwt('RS256', rsa1.privateKey, { kid: rsa1.kid }, ok, { sigAlg: 'RS384' }),
  ])
  c.push(['EdDSA header on an RSA kid', jwt('EdDSA', ed.privateKey, { kid: rsa1.kid }, ok)])
  c.push(['Ed25519 alg name', jwt('Ed25519', ed.privateKey, { kid: ed.kid }, ok)])
  c.push([
    'ES256 header, P-384 key and kid',
    jwt('ES256', p384.privateKey, { kid: p384.kid }, ok, { sigAlg: 'ES384' }),
  ])
  c.push(['ES256 header signed by P-384, no kid', jwt('ES256', p384.privateKey, {}, ok, { sigAlg: 'ES384' })])
  c.push([
    'ES384 header on the P-256 kid',
    jwt('ES384', p256.privateKey, { kid: p256.kid }, ok, { sigAlg: 'ES256' }),
  ])
  c.push(['ES256 DER-encoded signature', jwt('ES256', p256.privateKey, { kid: p256.kid }, ok, { der: true })])
  const es = jwt('ES256', p256.privateKey, { kid: p256.kid }, ok)
  const [esH, esP, esS] = es.split('.') as [string, string, string]
  const esSig = Buffer.from(esS, 'base64url')
  c.push(['ES256 signature one byte short', `${esH}.${esP}.${esSig.subarray(1).toString('base64url')}`])
  c.push([
    'ES256 signature one byte long',
    `${esH}.${esP}.${Buffer.concat([esSig, Buffer.of(0)]).toString('base64url')}`,
  ])
  c.push([
    'ES256 signature r‖s swapped',
    `${esH}.${esP}.${Buffer.concat([esSig.subarray(32), esSig.subarray(0, 32)]).toString('base64url')}`,
  ])
  c.push(['ES256 empty signature', `${esH}.${esP}.`])
  // structure
  const rs = jwt('RS256', rsa1.privateKey, { kid: rsa1.kid }, ok)
  const [h, p, s] = rs.split('.') as [string, string, string]
  c.push(['4 parts', `${rs}.${s}`])
  c.push(['2 parts', `${h}.${p}`])
  c.push(['1 part', h])
  c.push(['empty', ''])
  c.push(['signature length % 4 == 1', `${h}.${p}.${s}A`])
  c.push(['header length % 4 == 1', `${h}A.${p}.${s}`])
  c.push(['payload non-ASCII', `${h}.${p}é.${s}`])
  c.push(['header not JSON', jwt('RS256', rsa1.privateKey, {}, ok, { rawHeader: Buffer.from('{"alg":') })])
  c.push(['header an array', jwt('RS256', rsa1.privateKey, {}, ok, { rawHeader: Buffer.from('["RS256"]') })])
  c.push(['header null', jwt('RS256', rsa1.privateKey, {}, ok, { rawHeader: Buffer.from('null') })])
  c.push([
    'header invalid UTF-8',
    jwt('RS256', rsa1.privateKey, {}, ok, { rawHeader: Buffer.from([0x7b, 0xff, 0x7d]) }),
  ])
  c.push([
    'header with a BOM',
    jwt('RS256', rsa1.privateKey, {}, ok, {
      rawHeader: Buffer.concat([
        Buffer.of(0xef, 0xbb, 0xbf),
        Buffer.from(JSON.stringify({ alg: 'RS256', kid: rsa1.kid })),
      ]),
    }),
  ])
  c.push([
    'alg missing',
    jwt('RS256', rsa1.privateKey, {}, ok, { rawHeader: Buffer.from('{"kid":"rsa-1"}') }),
  ])
  c.push(['alg empty', jwt('RS256', rsa1.privateKey, {}, ok, { rawHeader: Buffer.from('{"alg":""}') })])
  c.push(['alg a number', jwt('RS256', rsa1.privateKey, {}, ok, { rawHeader: Buffer.from('{"alg":256}') })])
  c.push([
    'alg with a space',
    jwt('RS256', rsa1.privateKey, {}, ok, { rawHeader: Buffer.from('{"alg":"RS256 "}') }),
  ])
  c.push(['huge header', jwt('RS256', rsa1.privateKey, { kid: rsa1.kid, x: 'y'.repeat(6000) }, ok)])
  c.push(['huge kid', jwt('RS256', rsa1.privateKey, { kid: 'k'.repeat(6000) }, ok)])
  // crit and b64
  c.push(['crit unknown', jwt('RS256', rsa1.privateKey, { kid: rsa1.kid, crit: ['exp'], exp: 1 }, ok)])
  c.push(['crit empty', jwt('RS256', rsa1.privateKey, { kid: rsa1.kid, crit: [] }, ok)])
  c.push(['crit not an array', jwt('RS256', rsa1.privateKey, { kid: rsa1.kid, crit: 'b64' }, ok)])
  c.push(['crit with an empty name', jwt('RS256', rsa1.privateKey, { kid: rsa1.kid, crit: [''] }, ok)])
  c.push(['crit b64 missing', jwt('RS256', rsa1.privateKey, { kid: rsa1.kid, crit: ['b64'] }, ok)])
  c.push([
    'crit b64 not boolean',
    jwt('RS256', rsa1.privateKey, { kid: rsa1.kid, crit: ['b64'], b64: 'no' }, ok),
  ])
  c.push(['crit b64 true', jwt('RS256', rsa1.privateKey, { kid: rsa1.kid, crit: ['b64'], b64: true }, ok)])
  c.push([
    'crit b64 false (signed)',
    jwt('RS256', rsa1.privateKey, { kid: rsa1.kid, crit: ['b64'], b64: false }, ok),
  ])
  c.push([
    'crit b64 false (forged)',
    jwt('RS256', outsider.privateKey, { kid: rsa1.kid, crit: ['b64'], b64: false }, ok),
  ])
  c.push(['b64 false without crit', jwt('RS256', rsa1.privateKey, { kid: rsa1.kid, b64: false }, ok)])
  c.push([
    'crit b64 twice',
    jwt('RS256', rsa1.privateKey, { kid: rsa1.kid, crit: ['b64', 'b64'], b64: true }, ok),
  ])
  // claims
  const sign = (cl: unknown, raw?: Buffer) =>
    jwt('ES256', p256.privateKey, { kid: p256.kid }, cl, raw ? { rawClaims: raw } : {})
  c.push(['expired', sign(claims({ exp: NOW - 120 }))])
  c.push(['expired within the skew', sign(claims({ exp: NOW - 10 }))])
  c.push(['exp exactly now - skew', sign(claims({ exp: NOW - SKEW_S }))])
  c.push(['not yet valid', sign(claims({ nbf: NOW + 120 }))])
  c.push(['nbf within the skew', sign(claims({ nbf: NOW + 10 }))])
  c.push(['nbf exactly now + skew', sign(claims({ nbf: NOW + SKEW_S }))])
  c.push(['nbf future and exp a string', sign(claims({ nbf: NOW + 120, exp: 'never' }))])
  c.push(['exp a string', sign(claims({ exp: String(NOW + 600) }))])
  c.push(['exp null', sign(claims({ exp: null }))])
  c.push(['exp fractional', sign(claims({ exp: NOW + 0.5 }))])
  c.push(['iat a string', sign(claims({ iat: 'yesterday' }))])
  c.push(['iat in the future', sign(claims({ iat: NOW + 3600 }))])
  c.push(['nbf a string', sign(claims({ nbf: 'now' }))])
  c.push(['no exp', sign({ iss: ISSUER, aud: AUDIENCE, sub: 'x' })])
  c.push(['wrong aud', sign(claims({ aud: 'payments' }))])
  c.push(['aud array with ours', sign(claims({ aud: ['payments', AUDIENCE] }))])
  c.push(['aud array without ours', sign(claims({ aud: ['payments'] }))])
  c.push(['aud a number', sign(claims({ aud: 1 }))])
  c.push(['aud missing', sign({ iss: ISSUER, sub: 'x', exp: NOW + 60 })])
  c.push(['wrong iss', sign(claims({ iss: 'https://evil.example' }))])
  c.push(['iss missing', sign({ aud: AUDIENCE, sub: 'x', exp: NOW + 60 })])
  c.push(['iss and aud missing', sign({ sub: 'x' })])
  c.push(['iss an array', sign(claims({ iss: [ISSUER] }))])
  c.push(['payload an array', sign(undefined, Buffer.from(JSON.stringify([claims()])))])
  c.push(['payload a string', sign(undefined, Buffer.from('"hello"'))])
  c.push(['payload null', sign(undefined, Buffer.from('null'))])
  c.push(['payload not JSON', sign(undefined, Buffer.from('{"iss":'))])
  c.push(['payload invalid UTF-8', sign(undefined, Buffer.from([0x7b, 0xc3, 0x7d]))])
  c.push([
    'payload with a BOM',
    sign(undefined, Buffer.concat([Buffer.of(0xef, 0xbb, 0xbf), Buffer.from(JSON.stringify(claims()))])),
  ])
  c.push(['payload empty', sign(undefined, Buffer.alloc(0))])
  c.push([
    'payload with __proto__',
    sign(undefined, Buffer.from(`{"__proto__":{"admin":true},"iss":"${ISSUER}","aud":"${AUDIENCE}"}`)),
  ])
  return c
}

type Outcome = { ok: true; payload: unknown; alg: string; kid: unknown } | { ok: false; cause: FailureCause }

/** the loop IssuerVerifier runs around either implementation: a token without kid may match several keys */
async function withKeyLoop<T>(
  run: (key: typeof resolver | JwsKey) => Promise<T>,
  keys: typeof resolver = resolver,
): Promise<T> {
  try {
    return await run(keys)
  } catch (err) {
    if (!(err instanceof errors.JWKSMultipleMatchingKeys)) throw err
    for await (const key of err as unknown as AsyncIterable<CryptoKey>) {
      try {
        return await run(key)
      } catch (inner) {
        if (!(inner instanceof errors.JWSSignatureVerificationFailed)) throw inner
      }
    }
    throw err
  }
}

async function outcome(
  run: () => Promise<{ payload: unknown; protectedHeader: { alg?: unknown; kid?: unknown } }>,
): Promise<Outcome> {
  try {
    const r = await run()
    return { ok: true, payload: r.payload, alg: String(r.protectedHeader.alg), kid: r.protectedHeader.kid }
  } catch (err) {
    return { ok: false, cause: failureCause(err) }
  }
}

const configs = {
  'asymmetric allow-list': [...ASYMMETRIC_ALGORITHMS] as string[],
  'asymmetric and HMAC allow-list': [...ASYMMETRIC_ALGORITHMS, ...HMAC_ALGORITHMS] as string[],
  'RS256 only': ['RS256'],
}

const cases = corpus()

for (const [configName, algorithms] of Object.entries(configs)) {
  t.test(`verifyJwt answers as jose's jwtVerify (${configName})`, async (t) => {
    const ours: JwtCheckOptions = {
      algorithms: new Set(algorithms),
      issuer: ISSUER,
      audience: [AUDIENCE],
      clockTolerance: SKEW_S,
      now: NOW_MS,
    }
    const theirs = {
      algorithms,
      issuer: ISSUER,
      audience: [AUDIENCE],
      clockTolerance: SKEW_S,
      currentDate: new Date(NOW_MS),
    }
    let accepted = 0
    for (const [name, token] of cases) {
      const reference = await outcome(() => withKeyLoop((key) => jwtVerify(token, key as never, theirs)))
      const got = await outcome(() => withKeyLoop((key) => verifyJwt(token, key, ours)))
      t.same(got, reference, name)
      if (reference.ok) accepted++
    }
    // the corpus exercises both answers in every configuration
    t.ok(accepted >= 3 && accepted < cases.length / 2, `${accepted} of ${cases.length} accepted`)
  })
}

t.test('without an audience option any aud passes, as with jose', async (t) => {
  const token = jwt('RS256', rsa1.privateKey, { kid: rsa1.kid }, claims({ aud: 'anything' }))
  const noAud = jwt('RS256', rsa1.privateKey, { kid: rsa1.kid }, { iss: ISSUER, exp: NOW + 60 })
  for (const tok of [token, noAud]) {
    const reference = await outcome(() =>
      jwtVerify(tok, localSet, {
        algorithms: ['RS256'],
        issuer: ISSUER,
        clockTolerance: SKEW_S,
        currentDate: new Date(NOW_MS),
      }),
    )
    const got = await outcome(() =>
      verifyJwt(tok, localSet, {
        algorithms: new Set(['RS256']),
        issuer: ISSUER,
        clockTolerance: SKEW_S,
        now: NOW_MS,
      }),
    )
    t.same(got, reference)
    t.equal(got.ok, true)
  }
})

t.test(
  'strict base64url: padding and whitespace are malformed here (jose decodes them forgivingly)',
  async (t) => {
    const ours: JwtCheckOptions = {
      algorithms: new Set(['RS256']),
      issuer: ISSUER,
      audience: [AUDIENCE],
      clockTolerance: SKEW_S,
      now: NOW_MS,
    }
    // a header whose JSON is not a multiple of 3 bytes, so padding is possible; signed over the padded text
    const paddedHeader = `${Buffer.from(JSON.stringify({ alg: 'RS256', kid: rsa1.kid, x: 'ab' })).toString('base64')}`
    t.match(paddedHeader, /=$/, 'the header text carries padding')
    const input = `${paddedHeader.replaceAll('+', '-').replaceAll('/', '_')}.${enc(claims())}`
    const padded = `${input}.${signature('RS256', input, rsa1.privateKey).toString('base64url')}`
    // the key is made per run, so the signature is random: pick a token whose signature has a '-' to turn
    // into '+' (one in ≈ 200 has none, and its "base64" variant would be the token itself)
    let good = ''
    for (let n = 0; n < 100 && !good.split('.')[2]?.includes('-'); n++) {
      good = jwt('RS256', rsa1.privateKey, { kid: rsa1.kid }, claims({ n }))
    }
    const [h, p, s] = good.split('.') as [string, string, string]
    const spaced = `${h}.${p}.${s.slice(0, 10)} ${s.slice(10)}`
    const plus = `${h}.${p}.${s.replaceAll('-', '+')}`
    t.not(plus, good, 'precondition: the base64 variant differs from the token')
    for (const [name, token] of [
      ['padded header', padded],
      ['space in the signature', spaced],
      ['base64 (not url) alphabet', plus],
    ] as const) {
      const got = await outcome(() => verifyJwt(token, localSet, ours))
      t.same(got, { ok: false, cause: { reason: 'malformed', detail: 'not a valid JWS/JWT' } }, name)
    }
    t.equal((await outcome(() => verifyJwt(good, localSet, ours))).ok, true, 'the unaltered token verifies')
  },
)

t.test('the issuer verifier answers the same inline and through the worker pool', async (t) => {
  const dir = await scratchDir('jws-diff')
  const jwksFile = join(dir, 'jwks.json')
  await writeFile(jwksFile, JSON.stringify({ keys: jwks }))
  const cfg = issuerSchema.parse({ issuer: ISSUER, jwksFile, audiences: [AUDIENCE] })
  const pool = new VerifyPool({ size: 1, maxQueue: 1024, maxQueuePerPeer: 1024 })
  const now = () => NOW_MS
  const inline = new IssuerVerifier(cfg, { clockSkewMs: SKEW_S * 1000, now })
  const pooled = new IssuerVerifier(cfg, { clockSkewMs: SKEW_S * 1000, now, pool })
  t.teardown(() => {
    pool.close()
    inline.keys.close()
    pooled.keys.close()
  })
  await inline.keys.start()
  await pooled.keys.start()
  // the issuer's key set holds only keys that can verify a signature: not the 1024-bit key, nor the keys
  // jose's selection skips anyway (use enc, key_ops without verify); verifyJwt is compared over those
  const held = jwks.filter((k) => ![rsaSmall, encKey, signOnly].some((left) => left.publicJwk === k))
  t.same(pooled.keys.publicJwks, held, 'the keys the issuer holds')
  const heldSet = createLocalJWKSet({ keys: held })
  const heldResolver: typeof resolver = (header) =>
    typeof header.alg === 'string' && header.alg.startsWith('HS') ? new Uint8Array(SECRET) : heldSet(header)
  const [, warm] = cases[0]!
  await pooled.verify(warm, 'fp', 'peer')
  await eventually(() => pool.stats().workers === 1, { what: 'the verification worker ready' })
  const verifiedBefore = pool.stats().verified
  // `refetch` says which refetch a failure may ask for (the key set's or the secret's): the verifier's own
  // field, not part of verifyJwt's answer
  const answer = (r: JwtEvidence | FailureCause) => {
    if (!('reason' in r)) return { ok: true, payload: r.claims, alg: r.alg, kid: r.kid }
    const { refetch: _refetch, ...cause } = r
    return { ok: false, cause }
  }
  const ours: JwtCheckOptions = {
    algorithms: new Set(ASYMMETRIC_ALGORITHMS),
    issuer: ISSUER,
    audience: [AUDIENCE],
    clockTolerance: SKEW_S,
    now: NOW_MS,
  }
  for (const [name, token] of cases) {
    const a = answer(await inline.verify(token, 'fp', 'peer'))
    const b = answer(await pooled.verify(token, 'fp', 'peer'))
    t.same(b, a, `${name}: worker as inline`)
    const direct = await outcome(() => withKeyLoop((key) => verifyJwt(token, key, ours), heldResolver))
    // the verifier leaves kid out of evidence when it is not a string
    if (direct.ok && typeof direct.kid !== 'string') direct.kid = undefined
    t.same(a, direct, `${name}: inline as verifyJwt`)
  }
  t.ok(pool.stats().verified - verifiedBefore > cases.length / 2, 'the worker verified most of the corpus')
})
