// Event-loop delay probe, injected into a process under test with `--import bench/lag-probe.ts`.
// Once a second it appends {t, p50, p99, max (ms of delay beyond the sampling interval), rssMB, heapMB} to $NHI_LAG_FILE and resets the histogram.
import { appendFile } from 'node:fs/promises'
import { monitorEventLoopDelay } from 'node:perf_hooks'

const file = process.env['NHI_LAG_FILE']
if (file) {
  // the histogram records whole timer intervals, so each sample includes the resolution: subtract it
  const RESOLUTION_MS = 10
  const delay = (ns: number) => Math.max(0, ns / 1e6 - RESOLUTION_MS)
  const histogram = monitorEventLoopDelay({ resolution: RESOLUTION_MS })
  histogram.enable()
  const timer = setInterval(() => {
    const mem = process.memoryUsage()
    const line = JSON.stringify({
      t: Date.now(),
      p50: delay(histogram.percentile(50)),
      p99: delay(histogram.percentile(99)),
      max: delay(histogram.max),
      rssMB: mem.rss / 1048576,
      heapMB: mem.heapUsed / 1048576,
    })
    histogram.reset()
    appendFile(file, `${line}\n`).catch(() => {})
  }, 1000)
  timer.unref()
}
