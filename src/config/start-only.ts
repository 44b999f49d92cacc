// Settings read at start only (docs/reference.md "Config file"): the listeners and the admin address, the
// https listener's and upstreamTls's own settings (their files rotate live), timeouts, limits, the audit
// output, the histogram buckets and the number of workers. A reload keeps the running values of these, so
// that what the process reports (/config, the drain timeouts at shutdown) is what it does.
import type { Config } from './schema.ts'

interface StartOnly {
  /** its name as the docs and the warning give it */
  setting: string
  read: (c: Config) => unknown
  /** sets `next`'s value to `running`'s */
  keep: (next: Config, running: Config) => void
}

/** a whole top-level setting */
function topLevel(key: 'listen' | 'admin' | 'upstreamTls' | 'timeouts' | 'limits' | 'workers'): StartOnly {
  return {
    setting: key,
    read: (c) => c[key],
    keep: (next, running) => {
      if (running[key] === undefined) delete next[key]
      else Object.assign(next, { [key]: running[key] })
    },
  }
}

const START_ONLY: readonly StartOnly[] = [
  topLevel('listen'),
  topLevel('admin'),
  topLevel('upstreamTls'),
  topLevel('timeouts'),
  topLevel('limits'),
  topLevel('workers'),
  {
    setting: 'audit.output',
    read: (c) => c.audit.output,
    keep: (next, running) => {
      next.audit = { ...next.audit, output: running.audit.output }
    },
  },
  {
    setting: 'metrics.buckets',
    read: (c) => c.metrics.buckets,
    keep: (next, running) => {
      next.metrics = { ...next.metrics, buckets: running.metrics.buckets }
    },
  },
]

/**
 * `next` with the start-only settings of `running`, and the names of those it would have changed (for the
 * `restart_required` warning). `next` itself is not modified.
 */
export function keepStartOnly(running: Config, next: Config): { config: Config; changed: string[] } {
  const config: Config = { ...next }
  const changed: string[] = []
  for (const s of START_ONLY) {
    if (JSON.stringify(s.read(running)) === JSON.stringify(s.read(next))) continue
    changed.push(s.setting)
    s.keep(config, running)
  }
  return { config, changed }
}
