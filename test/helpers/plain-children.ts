// Preloaded into every test process (package.json "tap"."node-arg"), before any test code runs.
//
// tap starts each test file with its process-tracking preload (@tapjs/processinfo) and hands that preload on to
// every process the test starts: it adds an `--import` to the child's NODE_OPTIONS, also when the spawn passes
// an env of its own. In the child the preload records every file loaded through a module hook and turns source
// maps on, which for our bundle means parsing its source map: about 1 s of CPU per `node dist/nhi-proxy.mjs`
// (a quarter-second `explain` took 1.5 s), across the hundreds of sidecars and CLI runs the suite starts. The
// recording only serves coverage, which this project leaves off. And the end-to-end tests must start the
// product exactly as users do, without a test runner's preload inside it. So: children start plain.
// test/packaging/plain-children.test.ts fails if a child still gets the preload.
import { createRequire } from 'node:module'

const TRACKING_ENV = /^_TAPJS_PROCESSINFO_/
const TRACKING_PRELOAD = /@tapjs[\\/]processinfo/

interface SpawnHooks {
  removeAllListeners(): void
}

// the hook that re-adds the preload to every spawn's env (a process-wide singleton, whichever copy loads it)
try {
  const hooks = createRequire(import.meta.url)('process-on-spawn') as SpawnHooks
  hooks.removeAllListeners()
} catch {
  // not under tap (a test file run with plain node): nothing to undo
}

const nodeOptions = process.env['NODE_OPTIONS']
if (nodeOptions !== undefined) {
  const kept = nodeOptions
    .split(/\s+/)
    .filter((option) => option !== '' && !TRACKING_PRELOAD.test(option))
    .join(' ')
  if (kept === '') delete process.env['NODE_OPTIONS']
  else process.env['NODE_OPTIONS'] = kept
}
for (const name of Object.keys(process.env)) {
  if (TRACKING_ENV.test(name)) delete process.env[name]
}
