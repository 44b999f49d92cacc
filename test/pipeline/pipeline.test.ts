// The attribution pipeline on its own (no sockets): which sources read what for a given config.
import t from 'tap'
import { configSchema } from '../../src/config/schema.ts'
import { AttributionPipeline } from '../../src/pipeline/index.ts'
import type { ConnectionInfo, RequestInfo } from '../../src/types.ts'

const conn: ConnectionInfo = { remoteAddress: '127.0.0.1', remotePort: 40000, tls: false }
const withBearer = (token: string): RequestInfo => ({
  method: 'GET',
  path: '/orders',
  url: '/orders',
  headers: { authorization: `Bearer ${token}`, 'user-agent': 'curl/8.5.0' },
})

t.test('no issuers configured: a bearer token is neither evidence nor a failure', async (t) => {
  const pipeline = new AttributionPipeline(configSchema.parse({ jwt: { onInvalid: 'reject' } }))
  t.teardown(() => pipeline.close())
  const jwtLike = 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln'
  for (const token of [jwtLike, 'opaque-session-token']) {
    const r = await pipeline.evaluate(withBearer(token), conn)
    t.same(r.evidence.failures, [], `${token.slice(0, 12)}…: no auth failure`)
    t.same(
      r.evidence.credentials.map((c) => c.source.name),
      ['useragent'],
      'no jwt evidence',
    )
    t.equal(r.reject, undefined, 'onInvalid: reject does not apply without issuers')
    t.equal(r.identity.source, 'useragent')
  }
})

t.test(
  'with an issuer configured, an unverifiable bearer token is a failure and can be rejected',
  async (t) => {
    const pipeline = new AttributionPipeline(
      configSchema.parse({
        jwt: {
          onInvalid: 'reject',
          issuers: [
            { issuer: 'https://idp.example', jwksUri: 'http://127.0.0.1:9/jwks', audiences: ['orders'] },
          ],
        },
      }),
    )
    t.teardown(() => pipeline.close())
    const r = await pipeline.evaluate(withBearer('opaque-session-token'), conn)
    t.equal(r.evidence.failures[0]?.source, 'jwt')
    t.equal(r.evidence.failures[0]?.reason, 'malformed')
    t.equal(r.reject?.status, 401)
    t.match(r.reject?.headers?.['www-authenticate'], /invalid_token/)
  },
)

t.test(
  'evidence lists and fingerprints: exact, shared per evidence combination, rebuilt per pipeline',
  async (t) => {
    const { sha256Hex } = await import('../../src/util/fingerprint.ts')
    const keys = ['key-one-0123456789abcdef', 'key-two-0123456789abcdef']
    const config = configSchema.parse({
      apiKeys: { keys: keys.map((k, i) => ({ name: `svc-${i}`, sha256: sha256Hex(k) })) },
    })
    const withKey = (key: string, ua = 'curl/8.5.0'): RequestInfo => ({
      method: 'GET',
      path: '/orders',
      url: '/orders',
      headers: { 'x-api-key': key, 'user-agent': ua },
    })
    const pipeline = new AttributionPipeline(config)
    t.teardown(() => pipeline.close())
    const a1 = await pipeline.evaluate(withKey(keys[0]!), conn)
    const a2 = await pipeline.evaluate(withKey(keys[0]!), conn)
    const b1 = await pipeline.evaluate(withKey(keys[1]!), conn)
    t.same(
      a1.evidence.credentials.map((c) => c.source.name),
      ['apikey', 'useragent'],
      'two credentials, strongest first',
    )
    t.equal(a1.evidence.credentials.length, 2)
    t.ok(a1.fingerprints?.apikey, 'the key has a fingerprint')
    t.same(a2.fingerprints, a1.fingerprints, 'the same key, the same fingerprints')
    const ua = { method: 'GET', path: '/', url: '/', headers: { 'user-agent': 'curl/8.5.0' } }
    const u1 = await pipeline.evaluate(ua, conn)
    const u2 = await pipeline.evaluate(ua, conn)
    t.equal(
      u2.evidence.credentials[0]?.evidence,
      u1.evidence.credentials[0]?.evidence,
      'a known user agent has one evidence object',
    )
    t.equal(u2.fingerprints, u1.fingerprints, 'the same evidence objects share one fingerprints object')
    // the caches walk the user agent's evidence first: the key's requests hang under the same node
    t.equal(u1.fingerprints?.apikey, undefined, 'the user agent alone has no key fingerprint')
    t.not(u1.identity.name, a1.identity.name, 'the user agent alone is not the key')
    // identities are kept from their second request on
    t.not(u2.identity, u1.identity, 'the user agent alone, second request: worked out again')
    const u3 = await pipeline.evaluate(ua, conn)
    t.equal(u3.identity, u2.identity, 'the user agent alone: one identity object from then on')
    const a3 = await pipeline.evaluate(withKey(keys[0]!), conn)
    t.equal(a3.identity, a2.identity, 'the key after the user agent alone: still its own identity')
    t.same(a3.fingerprints, a1.fingerprints, 'and its own fingerprints')
    const a4 = await pipeline.evaluate(withKey(keys[0]!, 'other-client/2.0'), conn)
    t.equal(
      a4.fingerprints?.apikey,
      a1.fingerprints?.apikey,
      'the key with another user agent: same key fingerprint',
    )
    t.not(a4.fingerprints, a1.fingerprints, 'in a fingerprints object of that combination')
    t.not(b1.fingerprints?.apikey, a1.fingerprints?.apikey, 'another key, another fingerprint')
    t.ok(Object.isFrozen(a1.fingerprints), 'shared fingerprints cannot be changed by a recorder')
    t.same(a1.evidence.failures, [])
    t.throws(() => (a1.evidence.failures as unknown[]).push(1), 'the shared empty failure list is frozen')

    const unknown = await pipeline.evaluate(withKey('not-a-configured-key-0000'), conn)
    t.equal(unknown.evidence.failures.length, 1, 'a failure gets a list of its own')
    t.ok(unknown.fingerprints?.apikey, 'a failed key is fingerprinted too')
    t.not(unknown.evidence.failures, a1.evidence.failures)

    const reloaded = new AttributionPipeline(config)
    t.teardown(() => reloaded.close())
    const r = await reloaded.evaluate(withKey(keys[0]!), conn)
    t.same(r.fingerprints, a1.fingerprints, 'a new pipeline computes the same fingerprints')
  },
)
