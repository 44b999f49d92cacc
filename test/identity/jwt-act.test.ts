// Delegation (RFC 8693 `act`): an agent acting on behalf of a person, with a token verified against a JWKS
// served over HTTP, through the built proxy. The identity stays the subject; the actor is shown beside it in
// /identities, the audit record and the live view (/events); nested chains are bounded; no token material.
import t from 'tap'
import { request } from 'undici'
import { configSchema } from '../../src/config/schema.ts'
import { delegationOf, MAX_ACTOR_CHAIN } from '../../src/identity/jwt/delegation.ts'
import { jwtSource } from '../../src/identity/sources/jwt.ts'
import { compileRules } from '../../src/rules/rule-set.ts'
import type { EvidenceSet, JwtEvidence } from '../../src/types.ts'
import { eventually } from '../helpers/eventually.ts'
import { mintToken, startUpstreamAndJwks } from '../helpers/jwks.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

const ISSUER = 'https://login.delegation.test'

t.test('nested act chains are read to a bound and marked when cut', async (t) => {
  t.equal(delegationOf({ sub: 'alice' }), undefined, 'no act, no delegation')
  t.equal(delegationOf({ act: 'agent' }), undefined, 'an act that is not an object is ignored')
  t.same(delegationOf({ act: { sub: 'a', act: { client_id: 'b' } } }), {
    actor: 'a',
    chain: ['a', 'b'],
    truncated: false,
  })
  let deep: Record<string, unknown> = { sub: 'last' }
  for (let i = 0; i < 50; i++) deep = { sub: `actor-${i}`, act: deep }
  const d = delegationOf({ act: deep })!
  t.equal(d.chain.length, MAX_ACTOR_CHAIN)
  t.equal(d.truncated, true)
  t.equal(delegationOf({ act: { sub: 'x'.repeat(10_000) } })!.actor.length, 200, 'names are bounded')
})

t.test('on_behalf_of is the identity the request is attributed to, also when a rule names it', async (t) => {
  const rules = compileRules(
    configSchema.parse({
      identities: [{ name: 'users/{u}', kind: 'human', match: { jwt: { claims: { sub: '{u}' } } } }],
    }),
  )
  const classify = (claims: Record<string, unknown>) => {
    const jwt: JwtEvidence = {
      source: 'jwt',
      verified: true,
      issuer: ISSUER,
      claims: { ...claims, act: { sub: 'mail-assistant' } },
      fingerprint: `fp-${JSON.stringify(claims)}`,
      alg: 'RS256',
    }
    const ev: EvidenceSet = {
      credentials: [{ source: jwtSource, evidence: jwt }],
      failures: [],
      anomalies: [],
    } as unknown as EvidenceSet
    const req = { method: 'GET', path: '/', url: '/', headers: {} }
    return rules.classify(ev, req, { remoteAddress: '127.0.0.1', remotePort: 1, tls: false })
  }
  const ruled = classify({ sub: 'alice' })
  t.equal(ruled.name, 'users/alice')
  t.equal(ruled.attributes['actor'], 'mail-assistant')
  t.equal(ruled.attributes['on_behalf_of'], 'users/alice', "the rule's name, not the built-in one")
  const builtin = classify({ client_id: 'reports' })
  t.equal(builtin.rule, 'builtin:profile:generic', 'no rule matches a token without sub')
  t.equal(builtin.attributes['on_behalf_of'], builtin.name, `the built-in name: ${builtin.name}`)
})

t.test('an agent acting on behalf of a person, over the wire', async (t) => {
  const { upstream, key, jwks } = await startUpstreamAndJwks(t)
  const sidecar = await startTestSidecar(t, {
    service: 'mail',
    upstream: upstream.url,
    jwt: { issuers: [{ issuer: ISSUER, jwksUri: jwks.jwksUri, audiences: ['mail'] }] },
  })
  const proxy = sidecar.proxyUrl
  const admin = sidecar.adminUrl
  const token = await mintToken(
    key,
    { email: 'alice@example.com', act: { sub: 'mail-assistant', act: { sub: 'orchestrator' } } },
    { issuer: ISSUER, audience: 'mail', subject: 'alice' },
  )

  // the live view's stream, opened before the request so the event is seen as it happens
  const live = await request(`${admin}/events`)
  t.teardown(() => live.body.destroy())
  let stream = ''
  live.body.setEncoding('utf8')
  live.body.on('data', (c: string) => {
    stream += c
  })

  const res = await request(`${proxy}/echo`, {
    headers: { authorization: `Bearer ${token}`, 'x-request-id': 'delegated-1' },
  })
  const echoed = JSON.parse(await res.body.text()).headers as Record<string, string>
  t.equal(echoed['x-nhi-verified'], 'true')
  t.equal(echoed['x-nhi-source'], 'jwt')
  const name = echoed['x-nhi-identity']!
  t.notMatch(name, /mail-assistant/, 'the identity is the subject, not the actor')

  const audit = await eventually(async () => {
    const r = await request(`${admin}/audit?request_id=delegated-1`)
    return (JSON.parse(await r.body.text()) as { events: Record<string, unknown>[] }).events[0]
  })
  t.match(audit, {
    identity: name,
    kind: 'human',
    actor: 'mail-assistant',
    on_behalf_of: name,
    actor_chain: 'mail-assistant < orchestrator',
  })

  const row = await eventually(async () => {
    const v = (await (await fetch(`${admin}/identities`)).json()) as { identities: Record<string, unknown>[] }
    return v.identities.find((r) => r['name'] === name)
  })
  t.match(row, { actor: 'mail-assistant', onBehalfOf: name, kind: 'human', verified: true })

  const event = await eventually(() => {
    for (const line of stream.split('\n')) {
      if (!line.startsWith('data: ')) continue
      const e = JSON.parse(line.slice(6)) as Record<string, unknown>
      if (e['id'] === 'delegated-1') return e
    }
    return undefined
  })
  t.match(event, { identity: name, actor: 'mail-assistant' })

  const signature = token.split('.')[2]!
  for (const [what, text] of [
    ['audit', JSON.stringify(audit)],
    ['identities', JSON.stringify(row)],
    ['events', stream],
  ] as const) {
    t.notOk(text.includes(signature), `${what} carries no token material`)
  }

  // a token without act is the same subject with no actor: the row's actor goes with the next such request
  const plain = await mintToken(
    key,
    { email: 'bob@example.com' },
    { issuer: ISSUER, audience: 'mail', subject: 'bob' },
  )
  const r2 = await request(`${proxy}/echo`, {
    headers: { authorization: `Bearer ${plain}`, 'x-request-id': 'plain-1' },
  })
  await r2.body.dump()
  const plainAudit = await eventually(async () => {
    const r = await request(`${admin}/audit?request_id=plain-1`)
    return (JSON.parse(await r.body.text()) as { events: Record<string, unknown>[] }).events[0]
  })
  t.notOk('actor' in plainAudit, 'no actor without act')
})
