// Settings read at start only (docs/reference.md "Config file"): the listeners and the admin address, the
// https listener's and upstreamTls's own settings (their files rotate live), timeouts, limits, the audit
// output, the histogram buckets and the number of workers. A reload keeps the running values of these, so
// that what the process reports (/config, the drain timeouts at shutdown) is what it does.
import type { Config } from './schema.ts'

/** each start-only setting: its name as the docs and the warning give it, and how to read and keep it */
const START_ONLY: readonly {
  setting: string
  read: (c: Config) => unknown
  keep: (next: Config, running: Config) => void
}[] = [
  {
    setting: 'listen',
    read: (c) => c.listen,
    keep: (n, r) => {
      n.listen = r.listen
    },
  },
  {
    setting: 'admin',
    read: (c) => c.admin,
    keep: (n, r) => {
      n.admin = r.admin
    },
  },
  {
    setting: 'upstreamTls',
    read: (c) => c.upstreamTls,
    keep: (n, r) => {
      if (r.upstreamTls === undefined) delete n.upstreamTls
      else n.upstreamTls = r.upstreamTls
    },
  },
  {
    setting: 'timeouts',
    read: (c) => c.timeouts,
    keep: (n, r) => {
      n.timeouts = r.timeouts
    },
  },
  {
    setting: 'limits',
    read: (c) => c.limits,
    keep: (n, r) => {
      n.limits = r.limits
    },
  },
  {
    setting: 'workers',
    read: (c) => c.workers,
    keep: (n, r) => {
      n.workers = r.workers
    },
  },
  {
    setting: 'audit.output',
    read: (c) => c.audit.output,
    keep: (n, r) => {
      n.audit = { ...n.audit, output: r.audit.output }
    },
  },
  {
    setting: 'metrics.buckets',
    read: (c) => c.metrics.buckets,
    keep: (n, r) => {
      n.metrics = { ...n.metrics, buckets: r.metrics.buckets }
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
