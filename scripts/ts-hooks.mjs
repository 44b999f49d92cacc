// The module hooks registered by register-ts.mjs: `load` for Node's loader thread (module.register), and
// `loadSync` for the in-thread hooks of newer Node (module.registerHooks). A `.ts` file is stripped of its
// types by esbuild and kept in a cache named by a hash of its path and text, so a file is compiled once for
// all the processes that load it until it changes; a cache that cannot be written only costs time.
import { createHash } from 'node:crypto'
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = dirname(dirname(fileURLToPath(import.meta.url)))
const cacheDir = join(root, 'node_modules', '.cache', 'nhi-ts')
const esbuildPackage = join(root, 'node_modules', 'esbuild', 'package.json')
/** @type {string | undefined} */
let version

/** @param {string} url */
const isTypeScript = (url) => url.startsWith('file:') && url.endsWith('.ts')

/** @param {string} path @param {string} text */
function cachePath(path, text) {
  const key = createHash('sha256').update(`${version}\0${path}\0${text}`).digest('hex').slice(0, 40)
  return join(cacheDir, `${key}.js`)
}

/** @param {string} path */
const transformOptions = (path) => ({
  loader: /** @type {const} */ ('ts'),
  format: /** @type {const} */ ('esm'),
  sourcemap: /** @type {const} */ ('inline'),
  sourcefile: path,
  tsconfigRaw: { compilerOptions: { verbatimModuleSyntax: true } },
})

/** written whole under another name first: several test processes may compile the same file at once */
const partialPath = (cached) => `${cached}.${process.pid}-${Math.random().toString(36).slice(2)}`

/** @param {string} source */
const loaded = (source) => ({ format: 'module', source, shortCircuit: true })

/**
 * @param {string} url
 * @param {{ format?: string | null }} context
 * @param {(url: string, context: object) => Promise<object>} nextLoad
 */
export async function load(url, context, nextLoad) {
  if (!isTypeScript(url)) return nextLoad(url, context)
  const path = fileURLToPath(url)
  const text = await readFile(path, 'utf8')
  version ??= JSON.parse(await readFile(esbuildPackage, 'utf8')).version
  const cached = cachePath(path, text)
  try {
    return loaded(await readFile(cached, 'utf8'))
  } catch {
    // not compiled yet
  }
  const { code } = await (await import('esbuild')).transform(text, transformOptions(path))
  try {
    await mkdir(cacheDir, { recursive: true })
    const partial = partialPath(cached)
    await writeFile(partial, code)
    await rename(partial, cached)
  } catch {
    // a read-only checkout compiles again next time
  }
  return loaded(code)
}

/**
 * `load` for module.registerHooks: the same cache, read and written synchronously on the main thread.
 * @param {string} url
 * @param {{ format?: string | null }} context
 * @param {(url: string, context: object) => object} nextLoad
 */
export function loadSync(url, context, nextLoad) {
  if (!isTypeScript(url)) return nextLoad(url, context)
  const path = fileURLToPath(url)
  const text = readFileSync(path, 'utf8')
  version ??= JSON.parse(readFileSync(esbuildPackage, 'utf8')).version
  const cached = cachePath(path, text)
  try {
    return loaded(readFileSync(cached, 'utf8'))
  } catch {
    // not compiled yet
  }
  const esbuild = createRequire(import.meta.url)('esbuild')
  const { code } = esbuild.transformSync(text, transformOptions(path))
  try {
    mkdirSync(cacheDir, { recursive: true })
    const partial = partialPath(cached)
    writeFileSync(partial, code)
    renameSync(partial, cached)
  } catch {
    // a read-only checkout compiles again next time
  }
  return loaded(code)
}
