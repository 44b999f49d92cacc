// `node --import ./scripts/register-ts.mjs FILE.ts`: runs the TypeScript sources directly (the test runner's
// processes and the benchmark's helpers). Types are stripped by esbuild, one file at a time, into a cache
// under node_modules/.cache; nothing is type-checked here (`npm run typecheck` does that).
//
// Why not tsx, which did this before: its loader costs about 0.5 s of CPU in every process it starts (its
// hooks thread loads a resolver and a CommonJS layer this project does not use), and the test suite starts
// a few hundred such processes on two cores. This hook only loads `.ts` files and leaves every resolution
// to Node, because every import in the project names the file it means, extension included.
//
// Where Node's in-thread hooks are stable (24.13+, 25.1+; the bar the test runner's own preload uses), they
// replace the loader thread, which costs about 0.2 s of CPU per process to start.
import module from 'node:module'

const [major = 0, minor = 0] = process.versions.node.split('.').map(Number)
const syncHooksStable = major > 25 || (major === 25 && minor >= 1) || (major === 24 && minor >= 13)

if (syncHooksStable && typeof module.registerHooks === 'function') {
  const { loadSync } = await import('./ts-hooks.mjs')
  module.registerHooks({ load: loadSync })
} else module.register('./ts-hooks.mjs', import.meta.url)
