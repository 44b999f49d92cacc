// `nhi-proxy check [FILE…]`: every diagnostic as FILE:LINE:COL message (hint); exit 1 when any file has errors.
import { formatDiagnostic, loadConfigFile } from '../config/loader.ts'

/** Receives one line of output at a time (no trailing newline). */
export type Out = (line: string) => unknown

export const DEFAULT_CONFIG_PATH = 'config/nhi-proxy.yaml'

export function defaultConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  return env['NHI_PROXY_CONFIG'] || DEFAULT_CONFIG_PATH
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`
}

/**
 * Run without a FILE where the default is not (outside a checkout of this project, in an image), "file not
 * found" alone leaves the reader guessing which file was meant and how to name another.
 */
function defaultMissingHint(env: NodeJS.ProcessEnv = process.env): string {
  return env['NHI_PROXY_CONFIG']
    ? 'the file $NHI_PROXY_CONFIG names; give another as nhi-proxy check FILE'
    : 'no FILE given, so the default; give one as nhi-proxy check FILE, or set $NHI_PROXY_CONFIG'
}

export async function runCheck(files: string[], out: Out): Promise<number> {
  const targets = files.length ? files : [defaultConfigPath()]
  let failed = false
  for (const file of targets) {
    const result = await loadConfigFile(file, { checkFiles: true })
    if (!result.ok && files.length === 0)
      for (const d of result.errors)
        if (d.file === file && d.message === 'file not found') d.hint = defaultMissingHint()
    const diagnostics = result.ok ? result.warnings : [...result.errors, ...result.warnings]
    diagnostics.sort((a, b) => a.line - b.line || a.col - b.col)
    for (const d of diagnostics) out(formatDiagnostic(d))
    if (result.ok) {
      const c = result.config
      const warn = result.warnings.length ? `, ${plural(result.warnings.length, 'warning')}` : ''
      out(
        `${file}: ok (${plural(c.identities.length, 'identity rule')}, ${plural(c.jwt.issuers.length, 'issuer')}, policy ${c.policy.mode}${warn})`,
      )
    } else {
      failed = true
      out(
        `${file}: ${plural(result.errors.length, 'error')}${result.warnings.length ? `, ${plural(result.warnings.length, 'warning')}` : ''}`,
      )
    }
  }
  return failed ? 1 : 0
}
