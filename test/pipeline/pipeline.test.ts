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
