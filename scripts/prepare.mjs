// npm's `prepare` hook: `npm ci` / `npm install` in a clone leave a working dist/ (and so `npx nhi-proxy`)
// behind. `npm pack` / `npm publish` run `prepack` (which builds) and then `prepare`: no second build there.
// A production-only install of a clone (`npm ci --omit=dev`) has no esbuild: say so instead of failing.
// It also builds tap's plugin set as package.json lists it (scripts/tap-plugins.mjs says why), so a test file
// run with `npx tap FILE` right after `npm ci` gets the hooks `npm test` gives it.
if (process.env.npm_command === 'pack' || process.env.npm_command === 'publish') process.exit(0)
try {
  await import('esbuild')
} catch {
  process.stderr.write('nhi-proxy: esbuild is not installed (dev dependencies omitted); dist/ not built\n')
  process.exit(0)
}
await import('./bundle.mjs')
await import('./tap-plugins.mjs')
