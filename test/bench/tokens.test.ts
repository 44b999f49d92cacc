// The bench's token minter: every token of a set is distinct, also when more chunks are asked for at once
// than there are signing threads (a flood or memory run built on repeated tokens would measure cache hits).
import { decodeJwt } from 'jose'
import t from 'tap'
import { Minter, newSigningMaterial } from '../../bench/lib/tokens.ts'

t.test('chunks asked of a busy signing thread each get their own tokens', async (t) => {
  const minter = new Minter(
    newSigningMaterial('ES256', 'tokens-test'),
    { identities: 7, exp: 4_000_000_000 },
    2,
  )
  t.teardown(() => minter.close())
  // five chunks at once on two threads: a thread has up to three waiting
  const chunks = await Promise.all([0, 40, 80, 120, 160].map((start) => minter.mint(start, 40)))
  chunks.forEach((chunk, c) => {
    t.equal(chunk.length, 40)
    t.same(
      chunk.map((token) => decodeJwt(token).jti),
      Array.from({ length: 40 }, (_, i) => `j${c * 40 + i}`),
      `chunk ${c} is the tokens it asked for`,
    )
  })
  const all = await minter.mintAll(450, 50)
  t.equal(new Set(all).size, 450, 'mintAll: every token distinct')
  t.equal(decodeJwt(all[449]!).jti, 'j449', 'in order')
})
