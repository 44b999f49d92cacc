// The replay cache of signed agents (identity/signatures/nonces.ts) against a plain model: a nonce is a
// replay until the moment it was admitted for, the cache never holds more than its size, and a full cache
// refuses a new nonce rather than forgetting one that is still live.
import fc from 'fast-check'
import t from 'tap'
import { NonceCache } from '../../src/identity/signatures/nonces.ts'
import { checkProperty } from '../helpers/property.ts'

t.test('a nonce is refused until its time, and a full cache refuses instead of forgetting', async (t) => {
  const c = new NonceCache(2)
  t.equal(c.admit('a', 2000, 0), 'admitted')
  t.equal(c.admit('a', 9000, 1000), 'replayed', 'a second use while live')
  t.equal(c.admit('b', 5000, 1000), 'admitted')
  t.equal(c.admit('c', 5000, 1500), 'full', 'no live nonce is forgotten to make room')
  t.equal(c.admit('a', 9000, 1999), 'replayed', 'the refused one left the others as they were')
  t.equal(c.admit('c', 5000, 2000), 'admitted', 'room once the earliest can no longer verify')
  t.equal(c.admit('a', 9000, 2000), 'full')
  t.equal(c.size, 2)
  c.clear()
  t.equal(c.admit('b', 5000, 2000), 'admitted', 'clear() forgets every nonce')
})

t.test('a smaller size forgets no live nonce: new ones are refused until enough expire', async (t) => {
  const c = new NonceCache(3)
  for (const k of ['a', 'b', 'c']) t.equal(c.admit(k, 1000 + k.charCodeAt(0), 0), 'admitted')
  c.resize(1)
  t.equal(c.size, 3, 'every live nonce kept')
  for (const k of ['a', 'b', 'c']) t.equal(c.admit(k, 5000, 10), 'replayed', `${k} is still a replay`)
  t.equal(c.admit('d', 5000, 10), 'full', 'a new one is refused while more are live than fit')
  t.equal(c.admit('d', 5000, 1097), 'full', 'two live still do not fit in one')
  t.equal(c.admit('d', 5000, 1099), 'admitted', 'room once fewer are live than fit')
  c.resize(2)
  t.equal(c.admit('e', 5000, 1099), 'admitted', 'a larger size makes room at once')
  t.equal(c.admit('f', 5000, 1099), 'full')
})

t.test('the cache answers as a plain model does, whatever the order of expiries', async (t) => {
  const step = fc.record({
    key: fc.integer({ min: 0, max: 30 }).map(String),
    ttl: fc.integer({ min: 1, max: 50 }),
    advance: fc.integer({ min: 0, max: 10 }),
  })
  checkProperty(
    t,
    'same answers and size as the model',
    fc.property(fc.integer({ min: 1, max: 8 }), fc.array(step, { maxLength: 200 }), (max, steps) => {
      const c = new NonceCache(max)
      const model = new Map<string, number>()
      let now = 0
      for (const s of steps) {
        now += s.advance
        for (const [k, until] of model) if (until <= now) model.delete(k)
        const expected = model.has(s.key) ? 'replayed' : model.size >= max ? 'full' : 'admitted'
        if (expected === 'admitted') model.set(s.key, now + s.ttl)
        if (c.admit(s.key, now + s.ttl, now) !== expected || c.size !== model.size) return false
      }
      return true
    }),
    300,
  )
})
