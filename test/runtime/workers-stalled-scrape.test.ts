// `workers: 2`: a worker whose event loop is stuck (here: SIGSTOP) answers nothing until the watchdog replaces
// it, up to about 15 s later. /metrics, /readyz and /identities waited for it up to 10 s each and then
// answered, past Prometheus' usual 10 s scrape timeout: the whole pod's metrics went missing meanwhile. They
// answer within 2 s now, /metrics with the stalled worker's last numbers (no counter goes back, which
// Prometheus would read as a reset) and a gauge that says which worker they come from.
import { writeFile } from 'node:fs/promises'
import t, { type Test } from 'tap'
import { eventually } from '../helpers/eventually.ts'
import {
  metricValue,
  parseMetrics,
  type Sample,
  scrape,
  scrapeUntil,
  seriesCount,
} from '../helpers/metrics.ts'
import { childPids, probeWorkers, twoWorkerPodFiles, workerSlot } from '../helpers/pod.ts'
import { startSidecarFromFile } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const STALE = 'nhi_worker_metrics_stale'
/** well below a 10 s scrape timeout, with room for a loaded test machine over the pod's 2 s */
const IN_TIME_MS = 3_000

const resume = (pid: number) => {
  try {
    process.kill(pid, 'SIGCONT')
  } catch {
    // replaced: the process is gone
  }
}

async function timedGet(url: string): Promise<{ status: number; text: string; ms: number }> {
  const start = performance.now()
  const res = await fetch(url)
  const text = await res.text()
  return { status: res.status, text, ms: Math.round(performance.now() - start) }
}

/** a pod whose two workers both served requests of one identity, and its /metrics then */
async function servedPod(t: Test, name: string) {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const pod = await twoWorkerPodFiles(name, upstream.url)
  await writeFile(pod.configFile, pod.config({}))
  const sidecar = await startSidecarFromFile(t, pod.configFile)
  const { statuses, identities } = await probeWorkers(
    sidecar.proxyUrl,
    pod.auditFile,
    '/before/',
    6,
    'stall-probe/1.0',
  )
  t.same(new Set(statuses), new Set([200]))
  const who = { identity: identities[0]! }
  const before = await scrapeUntil(
    sidecar.adminUrl,
    (m) => metricValue(m, 'nhi_requests_total', who) >= 6,
    'the six requests counted',
  )
  t.equal(metricValue(before, 'nhi_requests_total', who), 6)
  const served = (m: Sample[], worker: string) => metricValue(m, 'nhi_worker_requests_total', { worker })
  t.ok(served(before, '1') > 0 && served(before, '2') > 0, 'precondition: both workers served some')
  const [victim] = childPids(sidecar.process.child.pid!)
  const label = workerSlot(victim!)
  return { sidecar, pod, who, before, served, victim: victim!, label, other: label === '1' ? '2' : '1' }
}

t.test(
  'a stalled worker: /metrics answers in time with its last numbers, marked stale, until it answers again',
  async (t) => {
    const { sidecar, pod, who, before, served, victim, label, other } = await servedPod(t, 'stalled-scrape')
    t.same([metricValue(before, STALE, { worker: '1' }), metricValue(before, STALE, { worker: '2' })], [0, 0])
    t.equal(seriesCount(before, STALE), 2, 'one stale marker per worker')

    process.kill(victim, 'SIGSTOP')
    t.teardown(() => resume(victim))
    // at once: each of them waited for the stalled worker on its own
    const [metrics, ready, identities] = await Promise.all([
      timedGet(`${sidecar.adminUrl}/metrics`),
      timedGet(`${sidecar.adminUrl}/readyz`),
      timedGet(`${sidecar.adminUrl}/identities`),
    ])
    t.equal(metrics.status, 200, '/metrics answers during the stall')
    t.ok(metrics.ms < IN_TIME_MS, `/metrics answered in ${metrics.ms} ms`)
    const during = parseMetrics(metrics.text)
    t.equal(metricValue(during, STALE, { worker: label }), 1, 'the stalled worker is marked stale')
    t.equal(metricValue(during, STALE, { worker: other }), 0, 'the other one is not')
    t.equal(
      metricValue(during, 'nhi_requests_total', who),
      6,
      "the stalled worker's counts are still in the pod's counter",
    )
    t.equal(served(during, label), served(before, label), 'its own requests counter holds its last answer')
    t.equal(
      metricValue(during, 'nhi_request_duration_seconds_count', who),
      6,
      'and so does the duration histogram',
    )

    t.equal(ready.status, 503, 'a worker that does not answer is not ready')
    t.ok(ready.ms < IN_TIME_MS, `/readyz answered in ${ready.ms} ms`)
    t.equal((JSON.parse(ready.text) as { workers: { ready: number } }).workers.ready, 1)
    t.equal(identities.status, 200, '/identities answers during the stall')
    t.ok(identities.ms < IN_TIME_MS, `/identities answered in ${identities.ms} ms`)

    resume(victim)
    const after = await eventually(
      async () => {
        const m = await scrape(sidecar.adminUrl)
        return seriesCount(m, STALE) === 2 && metricValue(m, STALE) === 0 ? m : undefined
      },
      { what: 'every worker fresh again', timeoutMs: 20_000 },
    )
    t.ok(metricValue(after, 'nhi_requests_total', who) >= 6, 'the counter did not go back')
    await probeWorkers(sidecar.proxyUrl, pod.auditFile, '/after/', 4, 'stall-probe/1.0')
    const counted = await scrapeUntil(
      sidecar.adminUrl,
      (m) => metricValue(m, 'nhi_requests_total', who) >= 10,
      'the later requests counted',
    )
    t.equal(metricValue(counted, 'nhi_requests_total', who), 10, 'and counts on from there')
  },
)

t.test(
  "a stalled worker the watchdog replaces: every scrape answers in time, its counts stay in the pod's",
  async (t) => {
    const { sidecar, who, before, victim, label } = await servedPod(t, 'stalled-scrape-replaced')
    const cli = sidecar.process
    const from = cli.stderr().length
    process.kill(victim, 'SIGSTOP')
    t.teardown(() => resume(victim))
    const scrapes: { ms: number; requests: number; stale: number }[] = []
    await eventually(
      async () => {
        const r = await timedGet(`${sidecar.adminUrl}/metrics`)
        const m = parseMetrics(r.text)
        scrapes.push({
          ms: r.ms,
          requests: metricValue(m, 'nhi_requests_total', who),
          stale: metricValue(m, STALE, { worker: label }),
        })
        return cli.stderr().slice(from).includes('"event":"worker_restarted"')
      },
      { what: 'the stalled worker replaced', timeoutMs: 40_000 },
    )
    t.ok(
      scrapes.every((s) => s.ms < IN_TIME_MS),
      `every scrape answered in time: ${scrapes.map((s) => s.ms).join(' ')} ms`,
    )
    t.ok(
      scrapes.every((s) => s.requests === metricValue(before, 'nhi_requests_total', who)),
      `the pod's counter neither dropped nor reset: ${scrapes.map((s) => s.requests).join(' ')}`,
    )
    t.ok(
      scrapes.some((s) => s.stale === 1),
      'the stalled worker was marked stale while it did not answer',
    )
    const after = await eventually(
      async () => {
        const m = await scrape(sidecar.adminUrl)
        const fresh = seriesCount(m, STALE) === 2 && metricValue(m, STALE) === 0
        return fresh && seriesCount(m, 'nhi_worker_requests_total') === 2 ? m : undefined
      },
      { what: 'the successor in /metrics, fresh', timeoutMs: 20_000 },
    )
    t.equal(metricValue(after, 'nhi_worker_restarts_total'), 1)
    t.equal(metricValue(after, 'nhi_requests_total', who), 6, "the replaced worker's counts stay")
  },
)
