// Golden files in test/golden: compare output with the stored text; UPDATE_GOLDEN=1 rewrites them.
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

const GOLDEN_DIR = join(import.meta.dirname, '..', 'golden')

/** Returns the stored golden text (after rewriting it when UPDATE_GOLDEN=1). */
export function golden(name: string, actual: string): string {
  const file = join(GOLDEN_DIR, name)
  if (process.env['UPDATE_GOLDEN'] === '1') writeFileSync(file, actual)
  try {
    return readFileSync(file, 'utf8')
  } catch {
    return `<missing golden file test/golden/${name}: run with UPDATE_GOLDEN=1>`
  }
}
