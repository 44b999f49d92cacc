// with `workers: 2`, an identity that goes idle on one worker but keeps calling through the other
// is a live series in the pod's /metrics; its counters must never go backwards. The primary sums only what
// the workers currently track, so when one worker sweeps the identity (idleTtl) its share vanishes from the
// merged nhi_requests_total (and the duration histogram, bytes...) while the series stays.
import { execFileSync } from 'node:child_process'
import { Agent, request } from 'node:http'
import t, { type Test } from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { metricValue, parseMetrics, seriesCount } from '../helpers/metrics.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

function get(url: string, agent: Agent, ua: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(url, { agent, headers: { 'user-agent': ua } }, (res) => {
      res.resume()
      res.on('end', () => resolve(res.statusCode ?? 0))
    })
    req.on('error', reject)
    req.end()
  })
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/**
 * A `workers: 2` pod in front of a test upstream, and two keep-alive connections, one per worker (the
 * cluster hands connections to its workers in turn): the precondition is checked after the first requests.
 */
async function twoWorkerPod(t: Test, metrics: Record<string, unknown> = {}) {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const sidecar = await startTestSidecar(t, { upstream: upstream.url, workers: 2, metrics })
  const a = new Agent({ keepAlive: true, maxSockets: 1 })
  const b = new Agent({ keepAlive: true, maxSockets: 1 })
  t.teardown(() => {
    a.destroy()
    b.destroy()
  })
  const url = `${sidecar.proxyUrl}/x`
  const scrape = async () => parseMetrics(await (await fetch(`${sidecar.adminUrl}/metrics`)).text())
  /** five requests on each connection, and the scrape that shows each went to its own worker */
  const spread = async (ua: string) => {
    for (let i = 0; i < 5; i++) {
      t.equal(await get(url, a, ua), 200)
      t.equal(await get(url, b, ua), 200)
    }
    const first = await scrape()
    t.same(
      first.filter((s) => s.name === 'nhi_worker_requests_total').map((s) => s.value),
      [5, 5],
      'precondition: each connection went to its own worker',
    )
    return first
  }
  return { sidecar, url, scrape, a, b, spread }
}

t.test(
  'a live identity served by two workers: its counter never decreases when one worker idles it',
  async (t) => {
    const { url, scrape, b, spread } = await twoWorkerPod(t, { idleTtl: '3s' })
    const UA = 'steady-client/1.0'
    const who = { identity: 'ua:steady-client' }
    const first = await spread(UA)
    let sent = 10
    const before = metricValue(first, 'nhi_requests_total', who)
    t.equal(before, sent)

    // the client keeps calling on one connection only, for longer than idleTtl
    // (scraped after every request: Prometheus would see each value)
    let last = before
    const seen: number[] = [before]
    const until = Date.now() + 5000
    while (Date.now() < until) {
      t.equal(await get(url, b, UA), 200)
      sent++
      const v = metricValue(await scrape(), 'nhi_requests_total', who)
      seen.push(v)
      last = Math.max(last, v)
      await sleep(250)
    }
    const after = await scrape()
    const now = metricValue(after, 'nhi_requests_total', who)
    seen.push(now)
    t.ok(
      seen.every((v, i) => i === 0 || v >= seen[i - 1]!),
      `a live counter never goes backwards: ${seen.join(' ')}`,
    )
    t.equal(now, sent, 'every request of the live identity is counted')
    t.equal(metricValue(after, 'nhi_request_duration_seconds_count', who), sent, 'the duration histogram too')
  },
)

// a worker that crashes takes its counts with it; summing only the live workers made the pod's series
// drop to what the survivors had counted, which Prometheus takes for a reset to 0 and so counts the
// survivors' whole totals again as new increase
t.test("a killed worker's counts stay in the pod's counters", async (t) => {
  const { sidecar, url, scrape, a, b, spread } = await twoWorkerPod(t)
  const UA = 'crash-client/1.0'
  const who = { identity: 'ua:crash-client' }
  const first = await spread(UA)
  t.equal(metricValue(first, 'nhi_requests_total', who), 10)

  const workers = execFileSync('pgrep', ['-P', String(sidecar.process.child.pid)], { encoding: 'utf8' })
    .split('\n')
    .filter(Boolean)
    .map(Number)
  t.equal(workers.length, 2)
  const from = sidecar.process.stderr().length
  process.kill(workers[0]!, 'SIGKILL')
  await sidecar.process.waitForLog((l) => l['event'] === 'worker_exited', from)
  const seen: number[] = []
  await eventually(
    async () => {
      const m = await scrape()
      seen.push(metricValue(m, 'nhi_requests_total', who))
      return (
        metricValue(m, 'nhi_worker_restarts_total') === 1 && seriesCount(m, 'nhi_worker_requests_total') === 2
      )
    },
    { what: 'the replacement worker in /metrics' },
  )
  t.ok(
    seen.every((v) => v === 10),
    `the pod's counter neither drops nor resets while the worker is replaced: ${seen.join(' ')}`,
  )
  a.destroy()
  for (let i = 0; i < 4; i++) t.equal(await get(url, b, UA), 200)
  t.equal(await get(url, new Agent(), UA), 200)
  const after = await scrape()
  t.equal(metricValue(after, 'nhi_requests_total', who), 15, 'and goes on counting from there')
  t.equal(metricValue(after, 'nhi_request_duration_seconds_count', who), 15, 'the duration histogram too')
})
