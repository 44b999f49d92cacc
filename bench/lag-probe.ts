// Event-loop delay probe, injected into a process under test with `--import bench/lag-probe.ts`.
// Once a second it appends {t, p50, p99, max (ms), rssMB, heapMB} to $NHI_LAG_FILE and resets the histogram.
import { appendFile } from 'node:fs/promises'
import { monitorEventLoopDelay } from 'node:perf_hooks'

const file = process.env['NHI_LAG_FILE']
if (file) {
  const histogram = monitorEventLoopDelay({ resolution: 10 })
  histogram.enable()
  const timer = setInterval(() => {
    const mem = process.memoryUsage()
    const line = JSON.stringify({
      t: Date.now(),
      p50: histogram.percentile(50) / 1e6,
      p99: histogram.percentile(99) / 1e6,
      max: histogram.max / 1e6,
      rssMB: mem.rss / 1048576,
      heapMB: mem.heapUsed / 1048576,
    })
    histogram.reset()
    appendFile(file, `${line}\n`).catch(() => {})
  }, 1000)
  timer.unref()
}
