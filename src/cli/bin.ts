#!/usr/bin/env node
// The package's bin and the image's entry point. It turns on V8's compile cache (Node ≥ 22.1) before the
// command line and its dependencies are loaded: a start then reuses the code compiled by an earlier one
// instead of parsing about a megabyte of JavaScript again (the largest single part of a cold start).
// The cache lives in NODE_COMPILE_CACHE, else in the temp directory; where it cannot be written, or on
// Node 20, nothing changes but the time. NODE_DISABLE_COMPILE_CACHE=1 turns it off.
import module from 'node:module'
import { catchStopSignals, ignoreGroupSignals, ignoreHangupWhileStarting } from './stop-signals.ts'

// Before anything is loaded: a SIGTERM while the CLI loads is the command's to act on (a clean exit 0), not
// Node's default kill. Only for the commands that run until stopped; a worker process of `workers: N`
// leaves signals to its primary (src/workers.ts).
const SERVING_COMMANDS = new Set(['run', 'demo', 'demo-idp'])
const command = process.argv[2] ?? ''
if (process.env['NHI_WORKER_SLOT'] !== undefined) {
  // a worker: the SIGINT of a terminal's Ctrl-C and a hang-up reach every process of the group, and are
  // its primary's to act on (runWorker ignores them once it runs). One that came while the worker still
  // loaded would end it by the signal, and the primary's start with it ("a worker could not start", exit 2).
  // A SIGTERM to the whole group (systemd's KillMode=control-group, `tini -g`) is the primary's too while the
  // worker starts: the primary ends the start and the workers with it. One sent to this worker alone is kept
  // and drains it once it serves, as it would have later (runWorker).
  if (command === 'run') {
    ignoreGroupSignals()
    catchStopSignals(['SIGTERM'])
  }
} else if (SERVING_COMMANDS.has(command)) {
  catchStopSignals()
  // SIGHUP asks a running sidecar to reload (a config management tool may send it right after a start);
  // until `run` takes it, Node's default would end the process. The config is read after this anyway, so
  // there is nothing to remember. A demo keeps the default: a closed terminal ends it.
  if (command === 'run') ignoreHangupWhileStarting()
}

const cache = module as { enableCompileCache?: () => unknown; flushCompileCache?: () => void }
try {
  cache.enableCompileCache?.()
} catch {
  // a cache that cannot be set up costs compile time, never the start
}
await import('./main.ts')
// Node writes the cache when the process exits, and a sidecar is often killed rather than exited: write it
// once a start has loaded what it loads (prom-client comes a second after listening), out of its way
setTimeout(() => {
  try {
    cache.flushCompileCache?.()
  } catch {
    // as above
  }
}, 5000).unref()
