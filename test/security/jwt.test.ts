// Forged and hostile bearer tokens through the real proxy: none may ever be `verified`, each is counted with
// the right reason, and with `onInvalid: reject` each is answered 401 invalid_token without echoing it.
import { createHmac, createPublicKey, KeyObject, sign } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import {
  createSigningKey,
  mintToken,
  type SigningKey,
  startJwksServer,
  startUpstreamAndJwks,
} from '../helpers/jwks.ts'
import { metricValue, type Sample, scrape, scrapeUntil } from '../helpers/metrics.ts'
import { scratchDir } from '../helpers/scratch.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

const ISSUER = 'https://idp.security.test'
const AUD = 'orders'

const b64url = (s: string | Buffer) => Buffer.from(s).toString('base64url')

/** Signs arbitrary header JSON and raw payload text, bypassing every check a JOSE library would make. */
function rawToken(
  header: Record<string, unknown>,
  payload: string,
  key: SigningKey | Buffer | 'none',
): string {
  const input = `${b64url(JSON.stringify(header))}.${b64url(payload)}`
  if (key === 'none') return `${input}.`
  if (Buffer.isBuffer(key)) return `${input}.${createHmac('sha256', key).update(input).digest('base64url')}`
  const sig = sign('sha256', Buffer.from(input), KeyObject.from(key.privateKey))
  return `${input}.${sig.toString('base64url')}`
}

function claims(extra: Record<string, unknown> = {}): Record<string, unknown> {
  const now = Math.floor(Date.now() / 1000)
  return { iss: ISSUER, aud: AUD, sub: 'mallory', azp: 'mallory', iat: now, exp: now + 600, ...extra }
}

t.test('hostile tokens are never verified, are counted by reason, and are rejected with 401', async (t) => {
  const { upstream, key: idpKey, jwks } = await startUpstreamAndJwks(t, 'idp-1')
  // The attacker's own key set, reachable on loopback: the proxy must never fetch it.
  const attackerKey = await createSigningKey('idp-1')
  const attacker = await startJwksServer([attackerKey])
  t.teardown(() => attacker.close())

  const base = {
    service: 'orders',
    upstream: upstream.url,
    jwt: {
      issuers: [{ issuer: ISSUER, jwksUri: jwks.jwksUri, audiences: [AUD], algorithms: ['RS256' as const] }],
    },
    identities: [
      {
        name: 'svc/{client}',
        kind: 'service' as const,
        match: { jwt: { issuer: ISSUER, claims: { azp: '{client}' } } },
      },
    ],
  }
  const [attribute, reject] = await Promise.all([
    startTestSidecar(t, base),
    startTestSidecar(t, { ...base, jwt: { ...base.jwt, onInvalid: 'reject' } }),
  ])
  const attributeUrl = attribute.proxyUrl
  const rejectUrl = reject.proxyUrl
  const adminUrl = attribute.adminUrl

  const echo = async (base: string, headers: Record<string, string | string[]>) => {
    const res = await request(`${base}/echo`, { headers })
    const text = await res.body.text()
    return { status: res.statusCode, headers: res.headers, text }
  }
  const upstreamSaw = (text: string) => JSON.parse(text).headers as Record<string, string | undefined>
  const failedIn = (samples: Sample[], reason: string) =>
    metricValue(samples, 'nhi_auth_failures_total', { source: 'jwt', reason })
  const failures = async (reason: string) => failedIn(await scrape(adminUrl), reason)

  // A real token first, so the negative cases below are known to be able to pass.
  const good = await mintToken(idpKey, { azp: 'billing' }, { issuer: ISSUER, audience: AUD })
  const ok = await echo(attributeUrl, { authorization: `Bearer ${good}` })
  t.equal(upstreamSaw(ok.text)['x-nhi-verified'], 'true', 'control: a genuine token is verified')
  t.equal(upstreamSaw(ok.text)['x-nhi-identity'], 'svc/billing')
  const okReject = await echo(rejectUrl, { authorization: `Bearer ${good}` })
  t.equal(okReject.status, 200, 'control: reject mode forwards a genuine token')

  const publicPem = createPublicKey({ key: idpKey.publicJwk, format: 'jwk' }).export({
    type: 'spki',
    format: 'pem',
  }) as string
  const now = Math.floor(Date.now() / 1000)
  const payload = (extra?: Record<string, unknown>) => JSON.stringify(claims(extra))
  const kidHeader = (kid: string) => ({ alg: 'RS256', typ: 'JWT', kid })

  const cases: Array<{ name: string; token: string; reason: string }> = [
    {
      name: 'alg none',
      token: rawToken({ alg: 'none', typ: 'JWT' }, payload(), 'none'),
      reason: 'alg_not_allowed',
    },
    {
      name: 'alg NoNe with a signature',
      token: rawToken({ alg: 'NoNe', typ: 'JWT' }, payload(), Buffer.from('x')),
      reason: 'alg_not_allowed',
    },
    {
      name: 'HS256 signed with the RSA public key PEM (algorithm confusion)',
      token: rawToken({ alg: 'HS256', typ: 'JWT', kid: 'idp-1' }, payload(), Buffer.from(publicPem)),
      reason: 'alg_not_allowed',
    },
    {
      name: 'HS256 signed with the RSA modulus (algorithm confusion)',
      token: rawToken(
        { alg: 'HS256', typ: 'JWT', kid: 'idp-1' },
        payload(),
        Buffer.from(String(idpKey.publicJwk.n), 'base64url'),
      ),
      reason: 'alg_not_allowed',
    },
    {
      name: 'kid path traversal',
      token: rawToken(kidHeader('../../../../../../dev/null'), payload(), attackerKey),
      reason: 'unknown_kid',
    },
    {
      name: 'kid injection',
      token: rawToken(kidHeader("x' UNION SELECT 'secret' --"), payload(), attackerKey),
      reason: 'unknown_kid',
    },
    {
      name: 'kid not a string',
      token: rawToken({ alg: 'RS256', kid: { $ne: 1 } }, payload(), attackerKey),
      reason: 'malformed',
    },
    {
      name: 'jku to the attacker key set',
      token: rawToken({ ...kidHeader('idp-1'), jku: attacker.jwksUri }, payload(), attackerKey),
      reason: 'bad_signature',
    },
    {
      name: 'x5u to the attacker',
      token: rawToken({ ...kidHeader('idp-1'), x5u: `${attacker.url}/cert.pem` }, payload(), attackerKey),
      reason: 'bad_signature',
    },
    {
      name: 'embedded jwk of the attacker',
      token: rawToken({ ...kidHeader('idp-1'), jwk: attackerKey.publicJwk }, payload(), attackerKey),
      reason: 'bad_signature',
    },
    {
      name: 'jku on a token the IdP really signed',
      token: rawToken({ ...kidHeader('idp-1'), jku: attacker.jwksUri }, payload(), idpKey),
      reason: 'bad_signature',
    },
    {
      name: 'same kid, attacker key (bad signature)',
      token: rawToken(kidHeader('idp-1'), payload(), attackerKey),
      reason: 'bad_signature',
    },
    {
      name: 'crit header',
      token: rawToken({ ...kidHeader('idp-1'), crit: ['x-bypass'], 'x-bypass': true }, payload(), idpKey),
      reason: 'malformed',
    },
    {
      name: 'expired beyond skew',
      token: rawToken(kidHeader('idp-1'), payload({ exp: now - 120, iat: now - 700 }), idpKey),
      reason: 'expired',
    },
    {
      name: 'not yet valid beyond skew',
      token: rawToken(kidHeader('idp-1'), payload({ nbf: now + 120 }), idpKey),
      reason: 'not_yet_valid',
    },
    {
      name: 'wrong audience',
      token: rawToken(kidHeader('idp-1'), payload({ aud: 'payments' }), idpKey),
      reason: 'wrong_audience',
    },
    {
      name: 'wrong issuer',
      token: rawToken(kidHeader('idp-1'), payload({ iss: 'https://evil.example' }), idpKey),
      reason: 'wrong_issuer',
    },
    {
      // JSON.parse keeps the last duplicate; another parser (the upstream's) may keep the first.
      name: 'duplicate claim (azp twice)',
      token: rawToken(
        kidHeader('idp-1'),
        `{"iss":"${ISSUER}","aud":"${AUD}","azp":"billing","exp":${now + 600},"azp":"admin"}`,
        idpKey,
      ),
      reason: 'malformed',
    },
    {
      name: 'duplicate header parameter (alg twice)',
      token: (() => {
        const h = b64url(`{"alg":"RS256","kid":"idp-1","alg":"none"}`)
        const p = b64url(payload())
        return `${h}.${p}.${sign('sha256', Buffer.from(`${h}.${p}`), KeyObject.from(idpKey.privateKey)).toString('base64url')}`
      })(),
      reason: 'malformed',
    },
    {
      name: 'oversized token under the header limit',
      token: rawToken(kidHeader('idp-1'), payload({ pad: 'x'.repeat(9000) }), idpKey),
      reason: 'malformed',
    },
    { name: 'garbage segments', token: 'not.a.jwt', reason: 'malformed' },
    {
      name: 'header is not JSON',
      token: `${b64url('{"alg":')}.${b64url(payload())}.c2ln`,
      reason: 'malformed',
    },
    {
      name: 'payload is not JSON',
      token: `${b64url('{"alg":"RS256"}')}.${b64url('[[[')}.c2ln`,
      reason: 'malformed',
    },
    {
      name: 'payload is a JSON array',
      token: `${b64url('{"alg":"RS256"}')}.${b64url('[1]')}.c2ln`,
      reason: 'malformed',
    },
    { name: 'two segments', token: `${b64url('{"alg":"RS256"}')}.${b64url(payload())}`, reason: 'malformed' },
  ]

  for (const c of cases) {
    const before = await failures(c.reason)
    const res = await echo(attributeUrl, { authorization: `Bearer ${c.token}` })
    t.equal(res.status, 200, `${c.name}: forwarded in attribute mode`)
    const seen = upstreamSaw(res.text)
    t.equal(seen['x-nhi-verified'], 'false', `${c.name}: not verified at the upstream`)
    t.not(seen['x-nhi-identity'], 'svc/mallory', `${c.name}: the token's claims do not name the identity`)
    t.not(seen['x-nhi-identity'], 'svc/admin', `${c.name}: the token's claims do not name the identity`)
    // recorded when the response closes: wait for the count to move, then check it moved by one
    const counted = await scrapeUntil(
      adminUrl,
      (s) => failedIn(s, c.reason) - before >= 1,
      `${c.name} to be counted`,
    )
    t.equal(failedIn(counted, c.reason) - before, 1, `${c.name}: counted as ${c.reason}`)

    const rej = await echo(rejectUrl, { authorization: `Bearer ${c.token}` })
    t.equal(rej.status, 401, `${c.name}: 401 in reject mode`)
    t.match(
      String(rej.headers['www-authenticate']),
      /^Bearer error="invalid_token"/,
      `${c.name}: WWW-Authenticate`,
    )
    const signature = c.token.split('.')[2] ?? ''
    if (signature.length > 8)
      t.notOk(rej.text.includes(signature), `${c.name}: the 401 body does not echo the token`)
  }
  t.equal(attacker.hits, 0, 'the attacker key set was never fetched')

  // Within the clock skew is still fine: the skew boundary is real, not "everything expired fails".
  const nearlyExpired = rawToken(kidHeader('idp-1'), payload({ exp: now - 5 }), idpKey)
  const near = await echo(attributeUrl, { authorization: `Bearer ${nearlyExpired}` })
  t.equal(upstreamSaw(near.text)['x-nhi-verified'], 'true', 'expired 5 s ago is inside the 30 s skew')
})

t.test('Authorization header oddities and size limits', async (t) => {
  const { upstream, key: idpKey, jwks } = await startUpstreamAndJwks(t, 'idp-1')
  const sidecar = await startTestSidecar(t, {
    service: 'orders',
    upstream: upstream.url,
    limits: { maxHeaderBytes: 16_384 },
    jwt: { issuers: [{ issuer: ISSUER, jwksUri: jwks.jwksUri, audiences: [AUD] }] },
  })
  const proxy = sidecar.proxyUrl
  const admin = sidecar.adminUrl
  const good = await mintToken(
    idpKey,
    { azp: 'billing' },
    { issuer: ISSUER, audience: AUD, subject: 'billing' },
  )
  const forged = await mintToken(
    await createSigningKey('idp-1'),
    { azp: 'admin' },
    { issuer: ISSUER, audience: AUD },
  )

  const send = async (headers: string[] | Record<string, string>) => {
    const res = await request(`${proxy}/echo`, { headers })
    const text = await res.body.text()
    return { status: res.statusCode, seen: res.statusCode === 200 ? JSON.parse(text) : undefined, text }
  }

  let r = await send({ authorization: `bearer ${good}` })
  t.equal(r.seen.headers['x-nhi-verified'], 'true', 'the scheme is case-insensitive (RFC 9110 §11.1)')
  r = await send({ authorization: `bearer ${forged}` })
  t.equal(r.seen.headers['x-nhi-verified'], 'false', 'lower-case scheme does not skip verification')
  r = await send({ authorization: `Bearer  ${good}` })
  t.equal(r.seen.headers['x-nhi-verified'], 'false', 'two spaces: not a bearer credential we verify')
  r = await send({ authorization: `Bearer ${good} extra` })
  t.equal(r.seen.headers['x-nhi-verified'], 'false', 'trailing junk')
  r = await send({ authorization: `Basic ${Buffer.from(`user:${good}`).toString('base64')}` })
  t.equal(r.seen.headers['x-nhi-verified'], 'false', 'Basic is not a bearer token')
  t.equal(r.seen.headers['x-nhi-source'], 'anonymous')
  r = await send({ authorization: `Bearer\t${good}` })
  t.equal(r.seen.headers['x-nhi-verified'], 'false', 'tab instead of space')

  // Two Authorization headers: the proxy and the upstream must agree on which one counts.
  for (const [first, second] of [
    [good, forged],
    [forged, good],
  ] as const) {
    r = await send(['authorization', `Bearer ${first}`, 'authorization', `Bearer ${second}`])
    if (r.status !== 200) {
      t.equal(r.status, 400, 'two Authorization headers: refused')
      continue
    }
    const auth = r.seen.headers['authorization'] as string | string[]
    const forwarded = Array.isArray(auth) ? auth : String(auth).split(/,\s*/)
    const verified = r.seen.headers['x-nhi-verified'] === 'true'
    t.ok(
      !verified || (forwarded.length === 1 && forwarded[0] === `Bearer ${good}`),
      'verified only when the upstream sees exactly the verified token',
      { forwarded: forwarded.map((a) => a.slice(-12)), verified },
    )
  }

  // over the header limit → 431, and the proxy keeps serving
  const huge = await send({ authorization: `Bearer ${'a'.repeat(20_000)}.b.c` })
  t.equal(huge.status, 431, 'headers over limits.maxHeaderBytes → 431')
  t.notOk(huge.text.includes('aaaaaaaaaaaaaaaa'), '431 body does not echo the header')
  const manyHeaders: Record<string, string> = {}
  for (let i = 0; i < 400; i++) manyHeaders[`x-h-${i}`] = 'v'.repeat(60)
  t.equal((await send(manyHeaders)).status, 431, 'many small headers over the limit → 431')
  r = await send({ authorization: `Bearer ${good}` })
  t.equal(r.status, 200, 'still serving after oversized requests')
  const health = await request(`${admin}/healthz`)
  t.equal(health.statusCode, 200)
  await health.body.dump()
})

// An issuer whose only key is a shared secret: `check` refused it ("no key source") though the proxy verifies
// HMAC tokens with it, and a placeholder jwksFile to get past that kept /readyz's JWKS gate failing forever.
t.test('an issuer with a shared secret only: valid config, ready, its HS256 tokens verified', async (t) => {
  const { upstream } = await startUpstreamAndJwks(t, 'unused')
  const dir = await scratchDir('jwt-secret-only')
  const secret = Buffer.from('a shared secret of thirty-two bytes!')
  const secretFile = join(dir, 'secret')
  await writeFile(secretFile, secret)
  const sidecar = await startTestSidecar(t, {
    upstream: upstream.url,
    readiness: { requireJwks: true },
    jwt: { issuers: [{ issuer: ISSUER, secretFile, algorithms: ['HS256'], audiences: [AUD] }] },
  })
  const ready = await fetch(`${sidecar.adminUrl}/readyz`)
  t.equal(ready.status, 200, 'ready: the secret is the key set')
  await ready.arrayBuffer()
  const send = async (token: string) => {
    const res = await request(`${sidecar.proxyUrl}/echo`, { headers: { authorization: `Bearer ${token}` } })
    return JSON.parse(await res.body.text()).headers as Record<string, string>
  }
  const good = rawToken({ alg: 'HS256', typ: 'JWT' }, JSON.stringify(claims({ sub: 'batch' })), secret)
  t.equal((await send(good))['x-nhi-verified'], 'true', 'an HS256 token signed with the secret')
  const other = rawToken(
    { alg: 'HS256', typ: 'JWT' },
    JSON.stringify(claims()),
    Buffer.from('another secret'),
  )
  t.equal((await send(other))['x-nhi-verified'], 'false', 'one signed with another secret is not')
})
