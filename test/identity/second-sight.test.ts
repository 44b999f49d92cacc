// The admission record the credential caches share (util/second-sight.ts): a key is "seen" from its second
// sight on; the table is fixed in size whatever the keys, and a key is forgotten only after four later keys
// landed in its bucket.
import fc from 'fast-check'
import t from 'tap'
import { SecondSight } from '../../src/util/second-sight.ts'
import { PROPERTY_SEED } from '../helpers/property.ts'

t.test('a key is seen from its second sight on', async (t) => {
  const s = new SecondSight(100, 7)
  t.equal(s.seen('token-a'), false, 'first sight')
  t.equal(s.seen('token-a'), true, 'second sight')
  t.equal(s.seen('token-a'), true, 'and after')
  t.equal(s.seen('token-b'), false, 'another key is not')
  t.equal(s.seen('token-A'), false, 'keys are compared exactly')
  t.equal(s.seen(''), false, 'the empty key is a key like any other')
  t.equal(s.seen(''), true)
  s.clear()
  t.equal(s.seen('token-a'), false, 'clear() forgets every key')
})

t.test('the table is sized from the cache it admits to, within fixed bounds', async (t) => {
  t.equal(new SecondSight(1).slots, 4096, 'at least 4,096 slots')
  t.equal(new SecondSight(10_000).slots, 65_536, 'four slots per cache entry, to a power of two')
  t.equal(new SecondSight(10_000_000).slots, 1 << 20, 'at most 2^20 slots (4 MiB of tags)')
})

t.test('many keys seen once: memory stays fixed, recent keys are remembered', async (t) => {
  const s = new SecondSight(1_000, 11)
  const slots = s.slots
  // ten times the table in keys never seen again
  for (let i = 0; i < slots * 10; i++) s.seen(`flood-${i}`)
  t.equal(s.slots, slots, 'the table did not grow')
  // the last keys are still there: a key is forgotten only once four later keys took its bucket
  let remembered = 0
  for (let i = slots * 10 - 64; i < slots * 10; i++) if (s.seen(`flood-${i}`)) remembered++
  t.ok(remembered >= 60, `the 64 most recent keys are remembered (${remembered})`)
  // the first ones are long gone: seeing one again is a first sight
  let forgotten = 0
  for (let i = 0; i < 64; i++) if (!s.seen(`flood-${i}`)) forgotten++
  t.ok(forgotten >= 60, `the 64 oldest keys were forgotten (${forgotten})`)
})

t.test('a bucket holds four keys: a fifth replaces the oldest', async (t) => {
  // a table of one bucket: every key shares it
  const s = new SecondSight(1, 3, 4)
  for (const k of ['a', 'b', 'c', 'd']) t.equal(s.seen(k), false, `${k}: first sight`)
  for (const k of ['a', 'b', 'c', 'd'])
    t.equal(s.seen(k), true, `${k}: four keys in a bucket, all remembered`)
  t.equal(s.seen('e'), false, 'a fifth key takes the oldest slot')
  t.equal(s.seen('a'), false, 'the oldest key is forgotten (and takes the next oldest slot)')
  t.equal(s.seen('b'), false, 'which was b’s')
  t.equal(s.seen('e'), true, 'the newer keys are not forgotten')
  t.equal(s.seen('a'), true)
  t.throws(() => new SecondSight(1, 3, 6), RangeError, 'a size that is not a power of two')
  t.throws(() => new SecondSight(1, 3, 2), RangeError, 'a size under one bucket')
})

t.test('property: one bucket behaves as four slots taken in turn, for any order of keys', async (t) => {
  const keys = Array.from({ length: 12 }, (_, i) => `key-${i}`)
  /** the same policy on the keys themselves */
  class Model {
    private readonly slots: (string | undefined)[] = [undefined, undefined, undefined, undefined]
    private next = 0
    seen(key: string): boolean {
      if (this.slots.includes(key)) return true
      this.slots[this.next] = key
      this.next = (this.next + 1) % 4
      return false
    }
  }
  fc.assert(
    fc.property(
      fc.integer({ min: 0, max: 0xffffffff }),
      fc.array(fc.constantFrom(...keys), { maxLength: 200 }),
      (seed, sequence) => {
        const table = new SecondSight(1, seed, 4)
        const model = new Model()
        for (const key of sequence) if (table.seen(key) !== model.seen(key)) return false
        return true
      },
    ),
    { numRuns: 300, seed: PROPERTY_SEED },
  )
  t.pass('300 sequences of up to 200 keys matched the model')
})

t.test('property: a key seen twice in a row is seen the second time, whatever came before', async (t) => {
  fc.assert(
    fc.property(
      fc.array(fc.string({ maxLength: 40 }), { maxLength: 500 }),
      fc.string({ maxLength: 80 }),
      (before, key) => {
        const table = new SecondSight(10, 5)
        for (const k of before) table.seen(k)
        table.seen(key)
        return table.seen(key)
      },
    ),
    { numRuns: 200, seed: PROPERTY_SEED },
  )
  t.pass('200 histories')
})
