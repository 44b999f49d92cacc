// fast-check inside tap: a property failure becomes one tap failure carrying the shrunk counterexample.
import fc from 'fast-check'
import type { Test } from 'tap'

/**
 * The seed of every property run, so that a run of the suite checks the same cases each time and its result
 * never rests on which cases were drawn. FC_SEED=<integer> checks another set of cases; a failure reports the
 * seed that reproduces it.
 */
export const PROPERTY_SEED = propertySeed(process.env['FC_SEED'])

function propertySeed(text: string | undefined): number {
  if (text === undefined || text === '') return 0x6e6869
  const seed = Number(text)
  if (!Number.isSafeInteger(seed)) throw new Error(`FC_SEED must be an integer, not ${JSON.stringify(text)}`)
  return seed
}

export function checkProperty<Ts>(t: Test, name: string, prop: fc.IProperty<Ts>, numRuns = 1000): void {
  const result = fc.check(prop, { numRuns, seed: PROPERTY_SEED })
  t.notOk(result.failed, name, {
    counterexample: result.counterexample,
    error: result.errorInstance ? String(result.errorInstance) : undefined,
    seed: result.seed,
  })
}

/**
 * That a generator reaches both sides of a check often enough for a property over it to mean something: of
 * 2,000 values drawn with one fixed seed, more than `min` and fewer than `max` are `taken`. Returns the values
 * drawn, for a test that counts more of them.
 */
export function checkBothSides<T>(
  t: Test,
  arbitrary: fc.Arbitrary<T>,
  taken: (value: T) => boolean,
  [min, max]: readonly [number, number],
  what: string,
): T[] {
  const sample = fc.sample(arbitrary, { numRuns: 2000, seed: 1 })
  const n = sample.filter(taken).length
  t.ok(n > min && n < max, `${n} of 2000 generated ${what}`)
  return sample
}
