// The module hooks registered by register-ts.mjs (they run on Node's loader thread). A `.ts` file is stripped
// of its types by esbuild and kept in a cache named by a hash of its path and text, so a file is compiled
// once for all the processes that load it until it changes; a cache that cannot be written only costs time.
import { createHash } from 'node:crypto'
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = dirname(dirname(fileURLToPath(import.meta.url)))
const cacheDir = join(root, 'node_modules', '.cache', 'nhi-ts')
/** @type {typeof import('esbuild') | undefined} */
let esbuild
/** @type {string | undefined} */
let version

/**
 * @param {string} url
 * @param {{ format?: string | null }} context
 * @param {(url: string, context: object) => Promise<object>} nextLoad
 */
export async function load(url, context, nextLoad) {
  if (!url.startsWith('file:') || !url.endsWith('.ts')) return nextLoad(url, context)
  const path = fileURLToPath(url)
  const text = await readFile(path, 'utf8')
  version ??= JSON.parse(
    await readFile(join(root, 'node_modules', 'esbuild', 'package.json'), 'utf8'),
  ).version
  const key = createHash('sha256').update(`${version}\0${path}\0${text}`).digest('hex').slice(0, 40)
  const cached = join(cacheDir, `${key}.js`)
  try {
    return { format: 'module', source: await readFile(cached, 'utf8'), shortCircuit: true }
  } catch {
    // not compiled yet
  }
  esbuild ??= await import('esbuild')
  const { code } = await esbuild.transform(text, {
    loader: 'ts',
    format: 'esm',
    sourcemap: 'inline',
    sourcefile: path,
    tsconfigRaw: { compilerOptions: { verbatimModuleSyntax: true } },
  })
  try {
    await mkdir(cacheDir, { recursive: true })
    // written whole under another name first: four test processes may compile the same file at once
    const partial = `${cached}.${process.pid}-${Math.random().toString(36).slice(2)}`
    await writeFile(partial, code)
    await rename(partial, cached)
  } catch {
    // a read-only checkout compiles again next time
  }
  return { format: 'module', source: code, shortCircuit: true }
}
