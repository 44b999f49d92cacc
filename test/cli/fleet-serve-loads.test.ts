// `fleet --serve` is a page people leave open (it refreshes every 30 s) and fleet.json something scripts
// poll: loads share one run of the ten Prometheus queries, whose answer serves the loads of the next 5 s, so
// how many screens show the page does not decide how hard Prometheus is queried.
import { once } from 'node:events'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import { type Fleet, fleetQueries } from '../../src/cli/fleet.ts'
import { sharedLoads } from '../../src/cli/fleet-serve.ts'
import { exchange } from '../helpers/http.ts'
import { freePort } from '../helpers/net.ts'
import { spawnCli } from '../helpers/sidecar.ts'

/** A Prometheus API stand-in answering every instant query after `delayMs`, counting them. */
async function countingPrometheus(t: Test, delayMs: number): Promise<{ url: string; queries: () => number }> {
  let queries = 0
  const server = createServer((req, res) => {
    queries++
    req.resume()
    req.on('end', () => {
      const result = [
        {
          metric: { identity: 'nightly-export', kind: 'job', service: 'billing', verified: 'true' },
          value: [Date.now() / 1000, '3'],
        },
      ]
      setTimeout(() => {
        res.writeHead(200, { 'content-type': 'application/json' })
        res.end(JSON.stringify({ status: 'success', data: { resultType: 'vector', result } }))
      }, delayMs)
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => server.close())
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, queries: () => queries }
}

const get = (port: number, path: string) => exchange({ host: '127.0.0.1', port, path })

t.test('twenty loads at once cost Prometheus one run of the queries', async (t) => {
  const prometheus = await countingPrometheus(t, 200)
  const port = await freePort()
  const served = spawnCli(['fleet', '--prometheus', prometheus.url, '--serve', String(port)])
  t.teardown(() => served.kill())
  await served.waitFor(/fleet view of .* on http:\/\//)

  const loads = await Promise.all(
    Array.from({ length: 20 }, (_, i) => get(port, i % 2 === 0 ? '/fleet.json' : '/')),
  )
  for (const load of loads) {
    t.equal(load.status, 200)
    t.match(load.body, /nightly-export/, 'every load shows the fleet')
  }
  const oneRun = Object.keys(fleetQueries('1h')).length
  t.equal(prometheus.queries(), oneRun, `${oneRun} queries for all twenty loads`)
  // a load right after is answered from the same run
  t.equal((await get(port, '/fleet.json')).status, 200)
  t.equal(prometheus.queries(), oneRun, 'nor one more for a load within 5 s')
  served.kill()
  t.equal(await served.exited, 0)
})

t.test('sharedLoads: one run at a time, kept for its freshness, a failure not kept', async (t) => {
  let clock = 0
  let runs = 0
  let fail = false
  const fleet = { services: [] } as unknown as Fleet
  const release: Array<() => void> = []
  const load = sharedLoads(
    () => {
      runs++
      return new Promise<Fleet>((resolve, reject) => {
        release.push(() => (fail ? reject(new Error('prometheus down')) : resolve(fleet)))
      })
    },
    5_000,
    () => clock,
  )
  const a = load()
  const b = load()
  t.equal(runs, 1, 'a load while one runs waits for it')
  release.shift()?.()
  t.equal(await a, fleet)
  t.equal(await b, fleet)
  clock = 4_999
  t.equal(await load(), fleet)
  t.equal(runs, 1, 'kept for 5 s')
  clock = 5_000
  fail = true
  const c = load()
  const d = load()
  t.equal(runs, 2, 'queried again once stale')
  release.shift()?.()
  await t.rejects(c, /prometheus down/)
  await t.rejects(d, /prometheus down/, 'every load waiting on a failed run hears of it')
  fail = false
  const e = load()
  t.equal(runs, 3, 'a failure is not kept: the next load asks again')
  release.shift()?.()
  t.equal(await e, fleet)
})
