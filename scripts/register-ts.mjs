// `node --import ./scripts/register-ts.mjs FILE.ts`: runs the TypeScript sources directly (the test runner's
// processes and the benchmark's helpers). Types are stripped by esbuild, one file at a time, into a cache
// under node_modules/.cache; nothing is type-checked here (`npm run typecheck` does that).
//
// Why not tsx, which did this before: its loader costs about 0.5 s of CPU in every process it starts (its
// hooks thread loads a resolver and a CommonJS layer this project does not use), and the test suite starts
// a few hundred such processes on two cores. This hook only loads `.ts` files and leaves every resolution
// to Node, because every import in the project names the file it means, extension included.
import { register } from 'node:module'

register('./ts-hooks.mjs', import.meta.url)
