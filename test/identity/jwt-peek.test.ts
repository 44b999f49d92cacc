// Reading a new token without trusting it (peekToken): a flood of new tokens from one key shares the decoded
// header, and what is shared is frozen, bounded, and answers exactly what decoding each token would.
import t from 'tap'
import { peekToken } from '../../src/identity/jwt/token.ts'

const b64 = (v: unknown) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url')
const token = (header: unknown, claims: unknown) => `${b64(header)}.${b64(claims)}.c2ln`

t.test('tokens with the same header bytes share one frozen header, each with its own claims', async (t) => {
  const header = { alg: 'RS256', kid: 'peek-k1', typ: 'JWT' }
  const a = peekToken(token(header, { sub: 'a', jti: '1' }))
  const b = peekToken(token(header, { sub: 'b', jti: '2' }))
  if (typeof a === 'string' || typeof b === 'string') throw new Error('both tokens decode')
  t.same(a.header, header)
  t.equal(b.header, a.header, 'the second token reuses the header decoded for the first')
  t.ok(Object.isFrozen(a.header), 'shared, so frozen')
  t.throws(() => {
    ;(a.header as Record<string, unknown>)['alg'] = 'none'
  }, 'a shared header cannot be changed through one token')
  t.same(a.claims, { sub: 'a', jti: '1' })
  t.same(b.claims, { sub: 'b', jti: '2' })
})

t.test(
  'a header that was refused is refused every time; one with an object member is not shared',
  async (t) => {
    const duplicate = '{"alg":"RS256","kid":"peek-dup","kid":"other"}'
    t.equal(peekToken(token(duplicate, { sub: 'a' })), 'header or payload has a duplicate member name')
    t.equal(
      peekToken(token(duplicate, { sub: 'b' })),
      'header or payload has a duplicate member name',
      'a refused header is never remembered',
    )
    const nested = { alg: 'RS256', kid: 'peek-nested', x: { y: 1 } }
    const a = peekToken(token(nested, { sub: 'a' }))
    const b = peekToken(token(nested, { sub: 'b' }))
    if (typeof a === 'string' || typeof b === 'string') throw new Error('both tokens decode')
    t.not(a.header, b.header, 'a header holding an object is decoded per token')
    t.notOk(Object.isFrozen(a.header))
    const long = { alg: 'RS256', kid: 'k'.repeat(600) }
    const c = peekToken(token(long, { sub: 'a' }))
    const d = peekToken(token(long, { sub: 'b' }))
    if (typeof c === 'string' || typeof d === 'string') throw new Error('both tokens decode')
    t.not(c.header, d.header, 'a header longer than any real one is decoded per token, not kept')
    t.same(d.header, long)
    // the header is remembered, the claims are still checked for each token
    const ok = { alg: 'RS256', kid: 'peek-k2' }
    t.type(peekToken(token(ok, { sub: 'a' })), 'object')
    t.equal(
      peekToken(token(ok, '{"sub":"a","sub":"b"}')),
      'header or payload has a duplicate member name',
      'duplicate claims under a remembered header',
    )
    t.equal(peekToken(token(ok, '[1]')), 'header or payload is not a JSON object')
  },
)

t.test('many distinct headers (client input) still decode correctly past the bound', async (t) => {
  const first = { alg: 'RS256', kid: 'peek-bound-0' }
  const a = peekToken(token(first, { sub: 'a' }))
  for (let i = 1; i <= 200; i++) {
    const h = { alg: 'RS256', kid: `peek-bound-${i}` }
    const p = peekToken(token(h, { sub: `s${i}` }))
    if (typeof p === 'string') throw new Error(p)
    if (p.header['kid'] !== h.kid) t.fail(`header ${i} decoded as another header`)
  }
  const again = peekToken(token(first, { sub: 'a' }))
  if (typeof a === 'string' || typeof again === 'string') throw new Error('both tokens decode')
  t.same(again.header, first, 'the first header after 200 others (the memory started over) decodes the same')
})
