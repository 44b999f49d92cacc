// Bundles the CLI and its dependencies into dist/nhi-proxy.mjs, the file the image and `bin` start.
// A few files instead of some hundreds of ES modules take roughly a third off the time from `node` to
// the first proxied request (module resolution and loading dominate a sidecar's cold start). Code that
// `run` does not need (demo, rule tests, explain, the full HTTP client) goes to chunks loaded on demand.
// The bundle is self-contained: at run time it loads Node built-ins and its own files only, which is why
// package.json lists no `dependencies` and the image has no node_modules (checked below, after the build).
import { readFileSync, rmSync } from 'node:fs'
import { isBuiltin } from 'node:module'
import { resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'

const root = fileURLToPath(new URL('..', import.meta.url))
const { version } = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'))

const outdir = process.env.NHI_BUNDLE_OUTDIR ?? 'dist'
// dist/ holds the bundle and nothing else: chunk names carry content hashes, so without this every build
// would leave the previous build's chunks behind (and whatever else once landed there would ship)
rmSync(resolve(root, outdir), { recursive: true, force: true })

// A package imported lazily (`await import('pkg')`) lands in a chunk of its own. When the package is
// CommonJS, that chunk's namespace has only `default` (module.exports), whatever Node's own loader would
// offer: named exports read from it are undefined at run time in the bundle and nowhere else. Each such
// import is listed here once its importer was checked to read `.default`; any other fails the build.
const LAZY_COMMONJS_READ_THROUGH_DEFAULT = new Set(['undici', 'prom-client', 'http-message-signatures'])
// Dependency files whose lazy imports the sidecar never reaches: @opentelemetry/resources loads a
// machine-id reader per platform for its hostDetector; OTLP export uses the envDetector only.
// (matched by suffix: metafile paths are relative to the working directory, which may not hold node_modules)
const UNREACHED_LAZY_IMPORTERS = [
  'node_modules/@opentelemetry/resources/build/src/detectors/platform/node/machine-id/getMachineId.js',
]

const result = await build({
  absWorkingDir: root,
  metafile: true,
  // the JWT verification worker and the OTLP export thread are files of their own, started as worker threads
  entryPoints: {
    // a few lines that turn on the compile cache, then import the CLI (a chunk of its own)
    'nhi-proxy': 'src/cli/bin.ts',
    'jwt-verify-worker': 'src/identity/jwt/verify-worker.ts',
    'otlp-export-worker': 'src/telemetry/otlp-worker.ts',
  },
  outdir,
  outExtension: { '.js': '.mjs' },
  chunkNames: 'chunks/[name]-[hash]',
  splitting: true,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  // Whitespace and syntax only: identifiers keep their names, so stack traces read as the sources do (a
  // source map maps them back to src/) without esbuild's keepNames, which wraps every function a closure
  // creates in a call that redefines its `name` — per request on the hot path (≈ 3 % of an h2c call's CPU)
  // and ≈ 7 ms at start.
  minifyWhitespace: true,
  minifySyntax: true,
  minifyIdentifiers: false,
  sourcemap: 'linked',
  legalComments: 'external',
  define: { __NHI_VERSION__: JSON.stringify(version), __NHI_BUNDLED__: 'true' },
  // CommonJS dependencies call require() for node built-ins; an ES module has to provide it
  banner: {
    js: "import { createRequire as __nhiRequire } from 'node:module';const require=__nhiRequire(import.meta.url);",
  },
  logLevel: 'warning',
})

const unchecked = []
for (const [file, input] of Object.entries(result.metafile.inputs)) {
  if (UNREACHED_LAZY_IMPORTERS.some((unreached) => file.endsWith(unreached))) continue
  for (const imp of input.imports) {
    if (imp.kind !== 'dynamic-import' || imp.external) continue
    const target = result.metafile.inputs[imp.path]
    const specifier = imp.original ?? imp.path
    if (target?.format === 'cjs' && !LAZY_COMMONJS_READ_THROUGH_DEFAULT.has(specifier)) {
      unchecked.push(`${file}: import('${specifier}') is CommonJS: read it through .default, then list it`)
    }
  }
}
// Everything the bundle imports must be in it, or a Node built-in: anything left external would have to come
// from a node_modules that neither the installed package nor the image has. (`node:` names are built-ins
// only, also one this Node does not have, such as node:sqlite on Node 20, which undici asks for lazily.)
for (const [file, input] of Object.entries(result.metafile.inputs)) {
  for (const imp of input.imports) {
    if (!imp.external || imp.path === '<runtime>') continue
    if (imp.path.startsWith('node:') || isBuiltin(imp.path)) continue
    unchecked.push(`${file}: ${imp.kind} '${imp.path}' is left to node_modules at run time: bundle it`)
  }
}
if (unchecked.length) {
  process.stderr.write(
    `the bundle would not work as built (scripts/bundle.mjs):\n  ${unchecked.join('\n  ')}\n`,
  )
  process.exit(1)
}
