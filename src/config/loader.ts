// Config file → validated, defaulted Config, or diagnostics with FILE:LINE:COL (docs/reference.md "Config file").
import { readFile } from 'node:fs/promises'
import { type Diagnostic, formatDiagnostic } from './diagnostics.ts'
import { type Config, configSchema } from './schema.ts'
import { semanticCheck } from './semantic.ts'
import { parseYamlWith } from './yaml-schema.ts'

export type { Diagnostic } from './diagnostics.ts'
export { formatDiagnostic }

export type LoadResult =
  | { ok: true; config: Config; warnings: Diagnostic[] }
  | { ok: false; errors: Diagnostic[]; warnings: Diagnostic[] }

const byPosition = (a: Diagnostic, b: Diagnostic) => a.line - b.line || a.col - b.col

/** Never throws: every problem with the text becomes a Diagnostic. */
export function parseConfigText(text: string, file: string): LoadResult {
  const parsed = parseYamlWith(text, file, configSchema)
  if (parsed.errors.length || parsed.value === undefined) {
    return { ok: false, errors: parsed.errors.sort(byPosition), warnings: [] }
  }
  const config = parsed.value
  const errors: Diagnostic[] = []
  const warnings: Diagnostic[] = []
  for (const issue of semanticCheck(config)) {
    const d: Diagnostic = {
      file,
      ...parsed.locate(issue.path, issue.at),
      message: issue.message,
      hint: issue.hint,
      severity: issue.severity,
    }
    ;(issue.severity === 'error' ? errors : warnings).push(d)
  }
  errors.sort(byPosition)
  warnings.sort(byPosition)
  return errors.length ? { ok: false, errors, warnings } : { ok: true, config, warnings }
}

export async function loadConfigFile(path: string): Promise<LoadResult> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code
    const message = code === 'ENOENT' ? 'file not found' : `cannot read file: ${(e as Error).message}`
    return { ok: false, errors: [{ file: path, line: 1, col: 1, message, severity: 'error' }], warnings: [] }
  }
  return parseConfigText(text, path)
}
