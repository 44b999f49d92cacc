// Bundles the CLI and its dependencies into dist/nhi-proxy.mjs, the file the image and `bin` start.
// A few files instead of some hundreds of ES modules take roughly a third off the time from `node` to
// the first proxied request (module resolution and loading dominate a sidecar's cold start). Code that
// `run` does not need (demo, rule tests, explain, the full HTTP client) goes to chunks loaded on demand.
import { readFileSync, rmSync } from 'node:fs'
import { resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'

const root = fileURLToPath(new URL('..', import.meta.url))
const { version } = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'))

const outdir = process.env.NHI_BUNDLE_OUTDIR ?? 'dist'
// chunk names carry content hashes: without this, every build would leave the previous build's chunks behind
rmSync(resolve(root, outdir, 'chunks'), { recursive: true, force: true })

await build({
  absWorkingDir: root,
  entryPoints: { 'nhi-proxy': 'src/cli/main.ts' },
  outdir,
  outExtension: { '.js': '.mjs' },
  chunkNames: 'chunks/[name]-[hash]',
  splitting: true,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  minify: true,
  // readable names in stack traces; a source map maps them back to src/
  keepNames: true,
  sourcemap: 'linked',
  legalComments: 'external',
  define: { __NHI_VERSION__: JSON.stringify(version) },
  // CommonJS dependencies call require() for node built-ins; an ES module has to provide it
  banner: {
    js: "import { createRequire as __nhiRequire } from 'node:module';const require=__nhiRequire(import.meta.url);",
  },
  logLevel: 'warning',
})
