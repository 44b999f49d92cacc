// Config file → validated, defaulted Config, or diagnostics with FILE:LINE:COL (docs/reference.md "Config file").
import { readFile, stat } from 'node:fs/promises'
import { dirname, isAbsolute } from 'node:path'
import { CREDENTIAL_SOURCES } from '../identity/sources/index.ts'
import { readProblem } from '../util/read-problem.ts'
import { type Diagnostic, formatDiagnostic } from './diagnostics.ts'
import { type Config, configSchema } from './schema.ts'
import { semanticCheck } from './semantic.ts'
import { tlsFileIssues } from './tls-files.ts'
import { type Path, parseYamlWith } from './yaml-schema.ts'

export type { Diagnostic } from './diagnostics.ts'
export { formatDiagnostic }

export type LoadResult =
  | { ok: true; config: Config; warnings: Diagnostic[] }
  | { ok: false; errors: Diagnostic[]; warnings: Diagnostic[] }

const byPosition = (a: Diagnostic, b: Diagnostic) => a.line - b.line || a.col - b.col

type Locate = (path: Path, at?: 'key' | 'value') => { line: number; col: number }

function parseLocated(text: string, file: string): { result: LoadResult; locate: Locate } {
  const parsed = parseYamlWith(text, file, configSchema)
  if (parsed.errors.length || parsed.value === undefined) {
    return {
      result: { ok: false, errors: parsed.errors.sort(byPosition), warnings: [] },
      locate: parsed.locate,
    }
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
  const result: LoadResult = errors.length ? { ok: false, errors, warnings } : { ok: true, config, warnings }
  return { result, locate: parsed.locate }
}

/** Never throws: every problem with the text becomes a Diagnostic. */
export function parseConfigText(text: string, file: string): LoadResult {
  return parseLocated(text, file).result
}

interface ReferencedFile {
  path: Path
  name: string
  value: string
  /**
   * the start reads it itself and refuses it with a line of its own (TLS material, the fingerprint key), or
   * serves without it (the admin token)
   */
  readAtStart?: true
  /** what a problem with it is, when not an error: the sidecar serves without it, the way it says */
  tolerated?: { hint: string }
  /** the start creates it (and its directories) when it is not there: only one it cannot open is a problem */
  createdAtStart?: true
}

/** The files a config names (key sources, secrets, TLS material), with where it names them. */
function referencedFiles(config: Config): ReferencedFile[] {
  const files: ReferencedFile[] = []
  config.jwt.issuers.forEach((iss, i) => {
    for (const name of ['jwksFile', 'secretFile', 'caFile', 'bearerTokenFile'] as const) {
      const value = iss[name]
      if (value !== undefined) files.push({ path: ['jwt', 'issuers', i, name], name, value })
    }
  })
  config.signedAgents.directories.forEach((dir, i) => {
    if (dir.caFile !== undefined)
      files.push({ path: ['signedAgents', 'directories', i, 'caFile'], name: 'caFile', value: dir.caFile })
  })
  const https = config.listen.https
  if (https) {
    for (const name of ['cert', 'key', 'clientCA'] as const) {
      const value = https[name]
      if (value !== undefined) files.push({ path: ['listen', 'https', name], name, value, readAtStart: true })
    }
  }
  const upstreamTls = config.upstreamTls
  if (upstreamTls) {
    for (const name of ['ca', 'cert', 'key'] as const) {
      const value = upstreamTls[name]
      if (value !== undefined) files.push({ path: ['upstreamTls', name], name, value, readAtStart: true })
    }
  }
  const fingerprintKeyFile = config.apiKeys.fingerprintKeyFile
  if (fingerprintKeyFile !== undefined)
    files.push({
      path: ['apiKeys', 'fingerprintKeyFile'],
      name: 'fingerprintKeyFile',
      value: fingerprintKeyFile,
      readAtStart: true,
    })
  const tokenFile = config.adminAccess.tokenFile
  if (tokenFile !== undefined)
    files.push({
      path: ['adminAccess', 'tokenFile'],
      name: 'tokenFile',
      value: tokenFile,
      readAtStart: true,
      // read again every 30 s (a Secret mounted or rotated later), and fails closed meanwhile
      tolerated: {
        hint: 'run starts and reloads without it: the operator endpoints answer loopback peers only until it can be read',
      },
    })
  const auditOutput = config.audit.output
  if (auditOutput !== 'stdout' && auditOutput !== 'off')
    files.push({
      path: ['audit', 'output'],
      name: 'output',
      value: auditOutput,
      readAtStart: true,
      createdAtStart: true,
    })
  return files
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path)
    return true
  } catch {
    return false
  }
}

/**
 * A named file that is missing is an error: the sidecar would fail every refresh, so it does not start (or
 * reload) with it; the admin token's is a warning (it is read again until it is there). The audit output
 * need not be there (the start creates it), but one the start could not open (a directory, a path through
 * a file) is an error. An absolute path whose directory is missing too is most likely mounted only where the
 * sidecar runs (a Kubernetes secret, a service account token): not reported, so a config can be checked
 * elsewhere. Relative paths start at the working directory, as the sidecar reads them.
 */
async function fileProblems(
  config: Config,
  locate: Locate,
  file: string,
  which: true | 'start',
): Promise<Diagnostic[]> {
  const out: Diagnostic[] = []
  const present = new Set<string>()
  for (const ref of referencedFiles(config)) {
    if (which === 'start' && ref.readAtStart) continue
    let problem: string | undefined
    try {
      if ((await stat(ref.value)).isDirectory()) problem = 'is a directory'
      else present.add(ref.value)
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code
      if (code === 'ENOTDIR') problem = 'a part of its path is a file, not a directory'
      else if (code !== 'ENOENT') problem = (e as Error).message
      else if (ref.createdAtStart) continue
      else if (!isAbsolute(ref.value) || (await exists(dirname(ref.value)))) problem = 'file not found'
    }
    if (problem === undefined) continue
    out.push({
      file,
      ...locate(ref.path),
      message: `${ref.name} "${ref.value}": ${problem}`,
      hint: ref.tolerated?.hint ?? 'relative paths start at the working directory of the sidecar',
      severity: ref.tolerated ? 'warning' : 'error',
    })
  }
  if (which === 'start') return out
  // the secret files that are here are read as the start and every reload read them (a fingerprint key too
  // short), so check refuses what they would; the reason never quotes the secret
  for (const source of CREDENTIAL_SOURCES) {
    for (const secret of source.secretFiles?.(config) ?? []) {
      if (!present.has(secret.path)) continue
      try {
        await secret.read(secret.path)
      } catch (e) {
        out.push({
          file,
          ...locate(secret.setting.split('.')),
          message: `${secret.setting.slice(secret.setting.lastIndexOf('.') + 1)}: ${(e as Error).message}`,
          hint: 'run refuses to start with it, and a reload to apply it',
          severity: 'error',
        })
      }
    }
  }
  // the TLS sets whose files are all here are read as the start reads them, so check refuses what run would
  for (const issue of await tlsFileIssues(config, (f) => present.has(f))) {
    out.push({
      file,
      ...locate(issue.path, issue.at),
      message: issue.message,
      hint: issue.hint,
      severity: issue.severity,
    })
  }
  return out
}

export interface LoadOptions {
  /**
   * `true` (`check`, a reload): also report files the config names that are missing, secret and TLS files the
   * start would refuse, and a certificate outside its dates. `'start'` (a start): only the missing files the
   * start does not read itself (the key sources), which it would otherwise start without; the TLS files and
   * the fingerprint key it refuses with lines of its own, and the admin token's it logs.
   */
  checkFiles?: boolean | 'start'
}

/**
 * A file's bytes as UTF-8 text (a byte order mark dropped), or where it stops being UTF-8. Read leniently, each
 * invalid byte became U+FFFD: a Latin-1 "é" in a pattern that then never matched, without a word.
 */
export function decodeText(bytes: Uint8Array, file: string): { text: string } | { error: Diagnostic } {
  const at = (line: number, col: number, message: string, hint: string) => ({
    error: { file, line, col, message, hint, severity: 'error' as const },
  })
  if ((bytes[0] === 0xff && bytes[1] === 0xfe) || (bytes[0] === 0xfe && bytes[1] === 0xff))
    return at(1, 1, 'the file is UTF-16 (its byte order mark says so), not UTF-8', 'save the file as UTF-8')
  try {
    return { text: new TextDecoder('utf-8', { fatal: true }).decode(bytes) }
  } catch {
    // the first invalid byte, found by feeding the text one byte at a time (a newline byte is never part of
    // a multi-byte sequence, so lines are counted on the bytes)
    const decoder = new TextDecoder('utf-8', { fatal: true })
    let line = 1
    let lineText = ''
    for (let i = 0; i < bytes.length; i++) {
      try {
        lineText += decoder.decode(bytes.subarray(i, i + 1), { stream: true })
      } catch {
        break
      }
      if (bytes[i] === 0x0a) {
        line++
        lineText = ''
      }
    }
    return at(line, lineText.length + 1, 'not UTF-8 text', 'save the file as UTF-8')
  }
}

export async function loadConfigFile(path: string, opts: LoadOptions = {}): Promise<LoadResult> {
  let bytes: Uint8Array
  try {
    bytes = await readFile(path)
  } catch (e) {
    const message = readProblem(e)
    return { ok: false, errors: [{ file: path, line: 1, col: 1, message, severity: 'error' }], warnings: [] }
  }
  const decoded = decodeText(bytes, path)
  if ('error' in decoded) return { ok: false, errors: [decoded.error], warnings: [] }
  const { result, locate } = parseLocated(decoded.text, path)
  if (!opts.checkFiles || !result.ok) return result
  const found = await fileProblems(result.config, locate, path, opts.checkFiles)
  const errors = found.filter((d) => d.severity === 'error').sort(byPosition)
  const warnings = [...result.warnings, ...found.filter((d) => d.severity === 'warning')].sort(byPosition)
  return errors.length ? { ok: false, errors, warnings } : { ...result, warnings }
}
