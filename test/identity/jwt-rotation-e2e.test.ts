// From the operator's side, through the built bundle: an IdP that re-keys and issues tokens without a kid,
// and an HMAC secret file rotated on disk (a mounted Secret the kubelet replaced). The first tokens of the
// new key or secret verify as soon as a token may make the proxy fetch the keys again (jwt.unknownKidCooldown),
// not at the issuer's refreshInterval (10 min here, the default), and forged tokens make no more than one
// fetch of the key set per cooldown.
import { createHmac } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { eventually } from '../helpers/eventually.ts'
import { createSigningKey, mintToken, startJwksServer } from '../helpers/jwks.ts'
import { replaceFile, scratchDir } from '../helpers/scratch.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const COOLDOWN_MS = 1000

async function sidecarFor(t: Test, issuers: Record<string, unknown>[]) {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const sidecar = await startTestSidecar(t, {
    upstream: upstream.url,
    jwt: { issuers, unknownKidCooldown: `${COOLDOWN_MS}ms`, verifyWorkers: 1 },
  })
  return async (token: string) => {
    const res = await request(`${sidecar.proxyUrl}/echo`, { headers: { authorization: `Bearer ${token}` } })
    return (JSON.parse(await res.body.text()).headers as Record<string, string>)['x-nhi-verified']
  }
}

t.test(
  'an IdP that re-keys and signs without kid: its first new tokens verify after one refetch',
  async (t) => {
    const issuer = 'https://idp.kidless.example'
    const [oldKey, newKey, forger] = await Promise.all(['k1', 'k2', 'k3'].map((kid) => createSigningKey(kid)))
    const jwks = await startJwksServer([oldKey!])
    t.teardown(() => jwks.close())
    const verified = await sidecarFor(t, [{ issuer, jwksUri: jwks.jwksUri, audiences: 'any' }])
    const mint = (key: typeof oldKey, sub: string) =>
      mintToken(key!, {}, { issuer, subject: sub, header: { kid: undefined } })

    t.equal(await verified(await mint(oldKey, 'old')), 'true')
    jwks.setKeys([oldKey!, newKey!])
    const fresh = await mint(newKey, 'new')
    await eventually(async () => (await verified(fresh)) === 'true', {
      what: 'the first token of the new key to verify',
    })
    t.pass('the first token of the new key verifies')
    t.equal(await verified(await mint(oldKey, 'old-again')), 'true', 'the old key still verifies')

    // forged tokens without kid, sent for a while: at most one fetch of the key set per cooldown
    const hits = jwks.hits
    const from = Date.now()
    for (let round = 0; round < 6; round++) {
      const forged = await Promise.all(
        Array.from({ length: 20 }, (_, i) => mint(forger, `forged-${round}-${i}`)),
      )
      const answers = await Promise.all(forged.map(verified))
      t.ok(
        answers.every((a) => a === 'false'),
        `round ${round}: forged tokens are not verified`,
      )
    }
    const cooldowns = Math.ceil((Date.now() - from) / COOLDOWN_MS)
    t.ok(
      jwks.hits - hits <= cooldowns + 1,
      `${jwks.hits - hits} fetches of the key set in ${cooldowns} cooldown(s)`,
    )
  },
)

t.test('a rotated HMAC secret file: the first token of the new secret verifies', async (t) => {
  const issuer = 'https://hs.rotated.example'
  const dir = await scratchDir('hs-e2e')
  const secretFile = join(dir, 'secret')
  await writeFile(secretFile, 'the-first-shared-secret\n')
  const verified = await sidecarFor(t, [{ issuer, secretFile, algorithms: ['HS256'], audiences: 'any' }])
  const hs256 = (sub: string, secret: string) => {
    const part = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url')
    const exp = Math.floor(Date.now() / 1000) + 600
    const input = `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ iss: issuer, sub, exp })}`
    return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`
  }

  const old = hs256('old', 'the-first-shared-secret')
  for (let i = 0; i < 3; i++)
    t.equal(await verified(old), 'true', 'verified, and kept from its second request')
  await replaceFile(secretFile, 'the-second-shared-secret\n')
  const fresh = hs256('new', 'the-second-shared-secret')
  await eventually(async () => (await verified(fresh)) === 'true', {
    what: 'the first token of the new secret to verify',
  })
  t.pass('the first token of the new secret verifies')
  t.equal(await verified(old), 'false', 'a cached token of the replaced secret is no longer verified')
})
