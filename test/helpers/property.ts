// fast-check inside tap: a property failure becomes one tap failure carrying the shrunk counterexample.
import fc from 'fast-check'
import type { Test } from 'tap'

export function checkProperty<Ts>(t: Test, name: string, prop: fc.IProperty<Ts>, numRuns = 1000): void {
  const result = fc.check(prop, { numRuns })
  t.notOk(result.failed, name, {
    counterexample: result.counterexample,
    error: result.errorInstance ? String(result.errorInstance) : undefined,
    seed: result.seed,
  })
}
