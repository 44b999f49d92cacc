// `workers: 2` as users run it (the built bundle): requests spread over both workers are all in the one
// /metrics, the identity cap holds for the pod, the audit file gets every line whole, a reload reaches
// every worker and is logged once (a bad one is rejected once), a killed worker is replaced, SIGTERM drains
// in-flight requests.
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { Agent, createServer, type IncomingMessage, request } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import t from 'tap'
import { stringify } from 'yaml'
import { reloadOutcome } from '../../src/workers.ts'
import { eventually } from '../helpers/eventually.ts'
import { childPids, twoWorkerPodFiles } from '../helpers/pod.ts'
import { replaceFile, scratchDir } from '../helpers/scratch.ts'
import { runCli, startSidecarFromFile } from '../helpers/sidecar.ts'
import { run, skipWithout, systemTool } from '../helpers/tools.ts'
import { startUpstream } from '../helpers/upstream.ts'

interface Outcome {
  status: number
  body: string
}

/** one request on a fresh connection: the cluster hands each new connection to the next worker */
function get(url: string, userAgent: string): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const req = request(url, { agent: false, headers: { 'user-agent': userAgent } }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => {
        body += c
      })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}

interface Sample {
  name: string
  labels: Record<string, string>
  value: number
}

function samples(body: string): Sample[] {
  const out: Sample[] = []
  for (const line of body.split('\n')) {
    const m = /^([a-z_:]+)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (!m) continue
    const labels: Record<string, string> = {}
    for (const l of (m[2] ?? '').matchAll(/([a-z_]+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!
    out.push({ name: m[1]!, labels, value: Number(m[3]) })
  }
  return out
}

const sum = (all: Sample[], name: string, where: (l: Record<string, string>) => boolean = () => true) =>
  all.filter((s) => s.name === name && where(s.labels)).reduce((n, s) => n + s.value, 0)

t.test('workers: 2', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const { auditFile, configFile, config } = await twoWorkerPodFiles('workers', upstream.url)
  const base = {
    timeouts: { drain: '10s' },
    metrics: { maxIdentities: 4, maxUnverifiedIdentities: 4 },
  }
  await writeFile(configFile, config(base))
  const sidecar = await startSidecarFromFile(t, configFile)
  const proxy = sidecar.proxyUrl
  const admin = sidecar.adminUrl
  const metrics = async () => samples(await (await fetch(`${admin}/metrics`)).text())
  const primaryPid = sidecar.process.child.pid!
  const workerPids = () => childPids(primaryPid)

  t.equal(workerPids().length, 2, 'two worker processes')
  const ready = await fetch(`${admin}/readyz`)
  t.equal(ready.status, 200)
  t.match(await ready.json(), { ok: true, checks: { workers: true }, workers: { configured: 2, ready: 2 } })

  const sent = 40
  await t.test('every request in one /metrics, the identity cap held for the pod', async (t) => {
    // four at a time, so both workers hand over audit lines at the same moments
    for (let i = 0; i < sent; i += 4) {
      const batch = [0, 1, 2, 3].map((j) => get(`${proxy}/hello`, `client-${(i + j) % 10}`))
      for (const r of await Promise.all(batch)) t.equal(r.status, 200)
    }
    const m = await metrics()
    t.equal(sum(m, 'nhi_requests_total'), sent, 'the sum over the workers equals the requests sent')
    const perWorker = m.filter((s) => s.name === 'nhi_worker_requests_total')
    t.equal(perWorker.length, 2)
    t.equal(sum(m, 'nhi_worker_requests_total'), sent)
    t.ok(
      perWorker.every((s) => s.value > 0),
      `both workers served: ${perWorker.map((s) => s.value).join(' + ')}`,
    )
    const named = new Set(
      m
        .filter((s) => s.name === 'nhi_requests_total' && s.labels['identity'] !== '__overflow__')
        .map((s) => s.labels['identity']),
    )
    t.equal(named.size, 4, 'four identities have their own series: the cap of the pod, not of each worker')
    t.equal(sum(m, 'nhi_identities'), 4)
    const overflowed = sum(m, 'nhi_requests_total', (l) => l['identity'] === '__overflow__')
    t.ok(overflowed >= 6, `the other six identities' requests are __overflow__ (${overflowed})`)
    t.equal(sum(m, 'nhi_identity_overflow_total'), overflowed, 'and counted in the overflow counter')
    t.equal(sum(m, 'nhi_request_duration_seconds_count'), sent, 'histograms are summed over the workers')
    t.equal(
      sum(m, 'nhi_request_duration_seconds_bucket', (l) => l['le'] === '+Inf'),
      sent,
      'bucket by bucket',
    )
    t.ok(
      m.some((s) => s.name === 'nhi_build_info'),
      'one build info',
    )
    t.equal(m.filter((s) => s.name === 'nhi_build_info').length, 1)
    const text = await (await fetch(`${admin}/metrics`)).text()
    const promtool = systemTool('promtool')
    t.test(
      'promtool check metrics accepts the merged exposition',
      { skip: skipWithout('promtool', promtool) },
      async (t) => {
        const r = await run(promtool!, ['check', 'metrics'], { input: text })
        t.equal(r.code, 0, `promtool check metrics: ${r.stderr}`)
      },
    )
    const om = await (
      await fetch(`${admin}/metrics`, { headers: { accept: 'application/openmetrics-text' } })
    ).text()
    t.ok(om.endsWith('# EOF\n'), 'OpenMetrics: one exposition, one # EOF')
    t.equal(om.match(/# EOF/g)?.length, 1)
    t.equal(sum(samples(om), 'nhi_requests_total'), sent)
    // two scrapes at once: each worker answers the second from the snapshot the first moved on from, so
    // the primary gets a whole snapshot for it and both bodies still hold every request
    const formats: Record<string, string>[] = [{}, { accept: 'application/openmetrics-text' }]
    const both = await Promise.all(
      formats.map(async (headers) => samples(await (await fetch(`${admin}/metrics`, { headers })).text())),
    )
    for (const m of both) t.equal(sum(m, 'nhi_requests_total'), sent, 'concurrent scrapes agree')
    const view = (await (await fetch(`${admin}/identities`)).json()) as {
      identities: { name: string; source: string; requests: number }[]
      totals: { requests: number }
    }
    t.equal(view.totals.requests, sent, '/identities merges every worker')
    t.equal(
      new Set(view.identities.map((r) => `${r.source} ${r.name}`)).size,
      view.identities.length,
      'one row per identity',
    )
    const ring = (await (await fetch(`${admin}/audit?limit=1000`)).json()) as { events: { path: string }[] }
    t.equal(ring.events.length, sent, '/audit queries every worker')
    const lines = await eventually(
      () => {
        const text = readFileSync(auditFile, 'utf8')
        const all = text.split('\n').filter(Boolean)
        return all.length >= sent ? { text, all } : undefined
      },
      { what: 'every audit line in the file' },
    )
    t.equal(lines.all.length, sent, 'one line per request')
    t.ok(lines.text.endsWith('\n'))
    t.ok(
      lines.all.every((l) => {
        try {
          return JSON.parse(l).type === 'audit'
        } catch {
          return false
        }
      }),
      'every line is whole JSON',
    )
  })

  await t.test('a reload reaches every worker; a bad config is rejected once', async (t) => {
    const from = sidecar.process.stderr().length
    await replaceFile(
      configFile,
      config({
        ...base,
        identities: [{ name: 'reloaded', kind: 'service', match: { userAgent: 'probe' } }],
      }),
    )
    await sidecar.process.waitForLog(
      (l) => l['event'] === 'config_reloaded' && l['worker'] === undefined,
      from,
    )
    const before = await metrics()
    for (let i = 0; i < 6; i++) t.equal((await get(`${proxy}/after`, 'probe')).status, 200)
    const after = await metrics()
    // the pod's identity slots are taken (maxIdentities: 4): the audit trail names every request
    const attributed = await eventually(
      () => {
        const lines = readFileSync(auditFile, 'utf8')
          .split('\n')
          .filter((l) => l.includes('"path":"/after"'))
        return lines.length === 6 ? lines : undefined
      },
      { what: 'the audit lines of the requests after the reload' },
    )
    t.ok(
      attributed.every((l) => JSON.parse(l).identity === 'ua:reloaded'),
      'every request got the new rule',
    )
    for (const w of ['1', '2']) {
      const served =
        sum(after, 'nhi_worker_requests_total', (l) => l['worker'] === w) -
        sum(before, 'nhi_worker_requests_total', (l) => l['worker'] === w)
      t.ok(served > 0, `worker ${w} served some of them`)
    }
    const reloadedLines = sidecar.process
      .stderr()
      .slice(from)
      .split('\n')
      .filter((l) => l.includes('"config_reloaded"'))
    t.equal(
      reloadedLines.length,
      1,
      `one config_reloaded line for the reload, the primary's: ${reloadedLines}`,
    )

    const badFrom = sidecar.process.stderr().length
    await replaceFile(configFile, 'workers: 2\nupstream: [not a url\n')
    await sidecar.process.waitForLog((l) => l['event'] === 'config_reload_failed', badFrom)
    t.equal((await get(`${proxy}/still`, 'probe')).status, 200, 'the last good config keeps serving')
    const still = await eventually(
      () =>
        readFileSync(auditFile, 'utf8')
          .split('\n')
          .find((l) => l.includes('"path":"/still"')),
      { what: 'the audit line of the request after the bad config' },
    )
    t.equal(JSON.parse(still).identity, 'ua:reloaded', 'with the last good rules')
    const m = await metrics()
    t.ok(sum(m, 'nhi_config_reloads_total', (l) => l['result'] === 'failure') >= 1, 'counted')
    const failures = sidecar.process
      .stderr()
      .slice(badFrom)
      .split('\n')
      .filter((l) => l.includes('"config_reload_failed"'))
    t.ok(
      failures.every((l) => !l.includes('"worker"')),
      'reported by the primary only: no worker saw it',
    )
    await replaceFile(configFile, config(base))
    await sidecar.process.waitForLog(
      (l) => l['event'] === 'config_reloaded' && l['worker'] === undefined,
      badFrom,
    )
  })

  await t.test('/events streams the requests of every worker', async (t) => {
    const received = new Set<string>()
    const stream = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = request(`${admin}/events`, (res) => resolve(res))
      req.on('error', reject)
      req.end()
    })
    t.teardown(() => stream.destroy())
    t.equal(stream.statusCode, 200)
    stream.setEncoding('utf8')
    let buffered = ''
    stream.on('data', (chunk: string) => {
      buffered += chunk
      for (let end = buffered.indexOf('\n\n'); end !== -1; end = buffered.indexOf('\n\n')) {
        const frame = buffered.slice(0, end)
        buffered = buffered.slice(end + 2)
        if (frame.startsWith('data: ')) received.add((JSON.parse(frame.slice(6)) as { path: string }).path)
      }
    })
    // consecutive new connections go to alternate workers: a run of them all streamed means both forward
    let i = 0
    const run = 6
    await eventually(
      async () => {
        t.equal((await get(`${proxy}/watch/${i++}`, 'watcher')).status, 200)
        for (let k = 0; k + run <= i; k++) {
          if (Array.from({ length: run }, (_, j) => `/watch/${k + j}`).every((p) => received.has(p)))
            return true
        }
        return false
      },
      { what: `${run} consecutive requests in the live stream` },
    )
  })

  await t.test('a killed worker is logged and replaced', async (t) => {
    const [victim] = workerPids()
    const from = sidecar.process.stderr().length
    process.kill(victim!, 'SIGKILL')
    const exited = await sidecar.process.waitForLog((l) => l['event'] === 'worker_exited', from)
    t.equal(exited['signal'], 'SIGKILL')
    await eventually(
      async () => {
        const r = await fetch(`${admin}/readyz`)
        const body = (await r.json()) as { workers: { ready: number } }
        return r.status === 200 && body.workers.ready === 2
      },
      { what: 'the replacement worker to serve' },
    )
    const pids = workerPids()
    t.equal(pids.length, 2)
    t.notOk(pids.includes(victim!), 'a new process')
    const m = await metrics()
    t.equal(sum(m, 'nhi_worker_restarts_total'), 1)
    for (let i = 0; i < 4; i++) t.equal((await get(`${proxy}/again`, 'client-0')).status, 200)
  })

  await t.test('SIGTERM drains in-flight requests on every worker, then exits 0', async (t) => {
    const slow = [get(`${proxy}/slow/1500`, 'slow-0'), get(`${proxy}/slow/1500`, 'slow-1')]
    await eventually(() => upstream.received.filter((r) => r.url.startsWith('/slow/')).length === 2, {
      what: 'the slow requests at the upstream',
    })
    sidecar.process.kill('SIGTERM')
    const unready = await eventually(
      async () => {
        const r = await fetch(`${admin}/readyz`)
        return r.status === 503 ? ((await r.json()) as { checks: { draining: boolean } }) : undefined
      },
      { what: '/readyz to fail while the workers drain' },
    )
    t.equal(unready.checks.draining, true, '/readyz fails while the workers drain')
    const code = await sidecar.process.exited
    t.equal(code, 0)
    const draining = sidecar.process
      .stderr()
      .split('\n')
      .filter((l) => l.includes('"event":"draining"') && l.includes('"level":30'))
    t.equal(draining.length, 1, `one draining line at info for the pod, not one per worker: ${draining}`)
    for (const r of await Promise.all(slow)) t.equal(r.status, 200, 'finished during the drain')
    const lines = readFileSync(auditFile, 'utf8').split('\n').filter(Boolean)
    t.equal(lines.filter((l) => l.includes('"path":"/slow/1500"')).length, 2, 'their audit lines written')
    t.throws(() => execFileSync('pgrep', ['-P', String(primaryPid)]), 'no worker left behind')
  })
})

t.test(
  'an identity the pod admitted keeps its requests on a worker whose own table other names filled',
  async (t) => {
    const upstream = await startUpstream()
    t.teardown(() => upstream.close())
    const { configFile, config } = await twoWorkerPodFiles('workers-admitted', upstream.url)
    await writeFile(configFile, config({ metrics: { maxIdentities: 2, maxUnverifiedIdentities: 2 } }))
    const sidecar = await startSidecarFromFile(t, configFile)
    // one keep-alive connection per worker: the cluster hands new connections to the workers in turn
    const agents = [0, 1].map(() => new Agent({ keepAlive: true, maxSockets: 1 }))
    t.teardown(() => {
      for (const a of agents) a.destroy()
    })
    const send = (worker: 0 | 1, userAgent: string) =>
      new Promise<number>((resolve, reject) => {
        const req = request(
          `${sidecar.proxyUrl}/x`,
          { agent: agents[worker], headers: { 'user-agent': userAgent } },
          (res) => {
            res.resume()
            res.on('end', () => resolve(res.statusCode ?? 0))
          },
        )
        req.on('error', reject)
        req.end()
      })
    const metrics = async () => samples(await (await fetch(`${sidecar.adminUrl}/metrics`)).text())
    t.equal(await send(0, 'first/1.0'), 200)
    t.equal(await send(1, 'second/1.0'), 200)
    // the scrape that admits both for the pod, as one process admitted them at their first request
    await eventually(async () => sum(await metrics(), 'nhi_requests_total') === 2, { what: 'two requests' })
    t.same(
      (await metrics()).filter((s) => s.name === 'nhi_worker_requests_total').map((s) => s.value),
      [1, 1],
      'precondition: each connection went to its own worker',
    )
    // the second worker's table fills with a name the pod folds; then the first worker's caller comes to it
    t.equal(await send(1, 'third/1.0'), 200)
    t.equal(await send(1, 'first/1.0'), 200)
    const m = await eventually(
      async () => {
        const m = await metrics()
        return sum(m, 'nhi_requests_total') === 4 ? m : undefined
      },
      { what: 'four requests' },
    )
    const of = (name: string) => sum(m, 'nhi_requests_total', (l) => l['identity'] === name)
    t.equal(of('ua:first'), 2, 'both requests of the first caller are its own, as in one process')
    t.equal(of('ua:second'), 1)
    t.equal(of('__overflow__'), 1, 'the third, which found the cap full, is __overflow__')
    t.equal(sum(m, 'nhi_identity_overflow_total'), 1)
  },
)

t.test('a worker that cannot listen stops the start with exit 2, and no worker is left behind', async (t) => {
  const taken = createServer()
  await new Promise<void>((done) => taken.listen(0, '127.0.0.1', done))
  t.teardown(() => taken.close())
  const port = (taken.address() as AddressInfo).port
  const dir = await scratchDir('workers')
  const file = join(dir, 'config.yaml')
  await writeFile(
    file,
    stringify({
      listen: { http: `127.0.0.1:${port}` },
      admin: '127.0.0.1:0',
      workers: 2,
      audit: { output: 'off' },
    }),
  )
  // runCli settles once every process holding the output pipes is gone: a lingering worker keeps them open
  const r = await runCli(['run', '-c', file])
  t.equal(r.code, 2)
  t.same(
    r.stderr.split('\n').filter(Boolean),
    [`nhi-proxy: cannot listen on 127.0.0.1:${port}: address in use`],
    "the workers' reason, once for the pod",
  )
})

// The primary's verdict on a reload from its workers' answers: a config no worker could apply is a failed
// reload (the pod keeps its last good config, and replacement workers start with that one), where the
// primary once took it as its own anyway, served it at /config, switched to its admin token, and forked
// every replacement with a config that could not start.
t.test('a reload no worker applied fails for the pod; one some applied replaces the others', async (t) => {
  t.same(reloadOutcome([true, true]), { applied: true, replace: [], reasons: [] }, 'every worker applied it')
  t.same(
    reloadOutcome([true, 'Invalid IP address: dns.example', undefined]),
    { applied: true, replace: [1, 2], reasons: ['Invalid IP address: dns.example'] },
    'one worker applied it: the others are replaced with it',
  )
  t.same(
    reloadOutcome(['Invalid IP address: dns.example', 'Invalid IP address: dns.example']),
    { applied: false, replace: [], reasons: ['Invalid IP address: dns.example'] },
    'none could: the reload failed, with the reason, and no worker is replaced',
  )
  t.same(
    reloadOutcome(['cannot read x', undefined]),
    { applied: false, replace: [1], reasons: ['cannot read x'] },
    'none could: only the worker that never answered is replaced (on the last good config)',
  )
  t.same(reloadOutcome([]), { applied: true, replace: [], reasons: [] }, 'no worker serving: nothing to ask')
})
