// Process and runtime metrics every Node service exports (process_* CPU, memory, file descriptors, start
// time; nodejs_* event-loop lag, heap, GC, handles) from prom-client's default collector, appended to the
// hand-rendered nhi_* families on /metrics.
// prom-client is loaded a while after the listeners are up (or at the first scrape, if that comes first), so
// the sidecar's cold start and its first requests do not pay for it (≈ 30 ms of compiling and running its
// collectors on a 2-core machine), and it is CommonJS: only `default` (module.exports) is read, the one shape Node's loader and the bundle share.
import type { OpenMetricsContentType, Registry } from 'prom-client'

type PromClient = typeof import('prom-client')

interface Registries {
  text: Registry
  openMetrics: Registry<OpenMetricsContentType>
}

export class ProcessMetrics {
  private registries: Promise<Registries | undefined> | undefined

  /** Starts collecting (event-loop lag and GC are observed continuously); idempotent, never throws. */
  start(): Promise<unknown> {
    this.registries ??= import('prom-client').then(
      // the types describe module.exports as the namespace; at run time it is `default`
      (m) => create((m as unknown as { default: PromClient }).default),
      () => undefined,
    )
    return this.registries
  }

  /** The default metrics in the requested format, without a trailing `# EOF`; a scrape starts collecting. */
  async render(openMetrics: boolean): Promise<string> {
    void this.start()
    const registries = await this.registries
    if (!registries) return ''
    try {
      // prom-client writes NaN (an event-loop histogram without samples yet) as "Nan": OpenMetrics allows
      // only "NaN"
      const text = (await (openMetrics ? registries.openMetrics : registries.text).metrics())
        .replace(/ Nan$/gm, ' NaN')
        // prom-client's totals of active handles/requests/resources are gauges named like counters, which
        // Prometheus lint rejects ("non-counter metrics should not have _total suffix"); they are the sums of
        // nodejs_active_handles/requests/resources by type, exported beside them, so they are left out
        .replace(ACTIVE_TOTAL, '')
      return openMetrics ? text.replace(/# EOF\n?$/, '') : text
    } catch {
      return ''
    }
  }

  stop(): void {
    void this.registries?.then((r) => {
      r?.text.clear()
      r?.openMetrics.clear()
    })
  }
}

const ACTIVE_TOTAL = /^(?:# (?:HELP|TYPE) )?nodejs_active_(?:handles|requests|resources)_total[ {].*\n/gm

// One registry per format: prom-client renames counters in place when it renders OpenMetrics, so one
// registry cannot serve both formats.
function create(prom: PromClient): Registries {
  const text = new prom.Registry()
  const openMetrics = new prom.Registry<OpenMetricsContentType>()
  openMetrics.setContentType(prom.Registry.OPENMETRICS_CONTENT_TYPE)
  prom.collectDefaultMetrics({ register: text })
  prom.collectDefaultMetrics({ register: openMetrics })
  return { text, openMetrics }
}
