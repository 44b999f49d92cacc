// `workers: 2`: what the primary tells the workers while a replacement worker is still starting must reach
// it too. A reload: the primary hands each new worker the config of the moment it asks, and a reload asks
// only the workers that already serve, so a worker that asked before the reload and served after it kept the
// old config; one that came to serve while the reload still waited for the other worker's answer kept it
// too, as the pod's config changes only once every answer is in. A SIGTERM: a replacement that was not serving yet missed the drain and served on until the
// primary killed it at the drain deadline.
import { writeFile } from 'node:fs/promises'
import { createServer, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { createSigningKey } from '../helpers/jwks.ts'
import { childPids, probeWorkers, twoWorkerPodFiles } from '../helpers/pod.ts'
import { replaceFile } from '../helpers/scratch.ts'
import { startSidecarFromFile, startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

/** a worker logs its part of the pod's drain at debug level: the tests that count the drained workers see it */
const DEBUG_LOG = { env: { NHI_LOG_LEVEL: 'debug' } }

/** the slots of the workers that logged their drain */
const drainedWorkers = (log: string) =>
  log
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((l) => l['event'] === 'draining' && l['worker'] !== undefined)
    .map((l) => String(l['worker']))
    .sort()

/**
 * A key server that holds the fetches of the paths it is told to: a worker waits for its issuers' keys when it
 * starts and when it applies a config that names new ones, which keeps it between "handed a config" and
 * "serving with it" for as long as the test needs.
 */
async function holdingKeyServer(t: Test) {
  const holding = new Set<string>()
  const held = new Map<string, ServerResponse[]>()
  // a key set with a key in it: a worker that got it reports its keys loaded (check jwks)
  const keySet = JSON.stringify({ keys: [(await createSigningKey('k1', 'ES256')).publicJwk] })
  const answer = (res: ServerResponse) => {
    res.setHeader('content-type', 'application/json')
    res.end(keySet)
  }
  const jwks = createServer((req, res) => {
    const path = req.url ?? '/'
    if (!holding.has(path)) return answer(res)
    held.set(path, [...(held.get(path) ?? []), res])
  })
  await new Promise<void>((done) => jwks.listen(0, '127.0.0.1', done))
  const release = (path: string) => {
    holding.delete(path)
    for (const res of held.get(path) ?? []) answer(res)
    held.delete(path)
  }
  t.teardown(() => {
    for (const path of [...holding]) release(path)
    jwks.closeAllConnections()
    jwks.close()
  })
  return {
    uri: (path = '/jwks.json') => `http://127.0.0.1:${(jwks.address() as AddressInfo).port}${path}`,
    hold: (path = '/jwks.json') => {
      holding.add(path)
    },
    /** how many fetches of `path` are held */
    held: (path = '/jwks.json') => held.get(path)?.length ?? 0,
    release: (path = '/jwks.json') => release(path),
  }
}

t.test('a reload while a worker is being replaced reaches the replacement', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const keys = await holdingKeyServer(t)

  const pod = await twoWorkerPodFiles('workers-reload-restart', upstream.url)
  const { auditFile, configFile } = pod
  // each config names its own key path, so a worker applying it fetches keys the test can hold
  const keyPath = (rule: string) => `/${rule}.json`
  const config = (rule: string) =>
    pod.config({
      jwt: {
        issuers: [{ issuer: 'https://idp.test', jwksUri: keys.uri(keyPath(rule)), audiences: ['svc'] }],
      },
      identities: [{ name: rule, kind: 'service', match: { userAgent: 'probe' } }],
    })
  await writeFile(configFile, config('before'))
  const sidecar = await startSidecarFromFile(t, configFile)
  const admin = sidecar.adminUrl
  const cli = sidecar.process
  const bothServing = () =>
    eventually(
      async () => {
        const r = await fetch(`${admin}/readyz`)
        return r.status === 200 && ((await r.json()) as { workers: { ready: number } }).workers.ready === 2
      },
      { what: 'the replacement worker to serve' },
    )
  const everyWorkerServes = async (t: Test, rule: string) => {
    const { statuses, identities } = await probeWorkers(sidecar.proxyUrl, auditFile, `/${rule}/`, 8)
    t.same(new Set(statuses), new Set([200]), 'every request served')
    t.same(
      new Set(identities),
      new Set([`ua:${rule}`]),
      `every worker serves the reloaded rules: ${identities}`,
    )
    const m = await (await fetch(`${admin}/metrics`)).text()
    t.notMatch(m, /nhi_worker_requests_total\{[^}]*\} 0\n/, 'both workers served some of them')
  }

  await t.test('a reload that ends before the replacement serves', async (t) => {
    keys.hold(keyPath('before'))
    const [victim] = childPids(cli.child.pid!)
    const from = cli.stderr().length
    process.kill(victim!, 'SIGKILL')
    await eventually(() => keys.held(keyPath('before')) === 1, {
      what: "the replacement's key fetch (it is starting)",
    })

    await replaceFile(configFile, config('after'))
    await cli.waitForLog((l) => l['event'] === 'config_reloaded' && l['worker'] === undefined, from)
    const starting = await fetch(`${admin}/readyz`)
    t.equal(starting.status, 503, 'not ready while a worker is starting')
    t.match(
      ((await starting.json()) as { checks: Record<string, boolean> }).checks,
      { workers: false, listeners: false, upstream: true, jwks: true },
      'the starting worker is what the workers and listeners checks say, not the upstream and keys',
    )
    keys.release(keyPath('before'))
    await bothServing()
    await everyWorkerServes(t, 'after')
  })

  await t.test('a replacement that serves while the reload waits for the other worker', async (t) => {
    keys.hold(keyPath('after'))
    const [victim] = childPids(cli.child.pid!)
    const from = cli.stderr().length
    process.kill(victim!, 'SIGKILL')
    await eventually(() => keys.held(keyPath('after')) === 1, {
      what: "the replacement's key fetch (it is starting)",
    })
    // the serving worker's answer waits for the keys the new config names
    keys.hold(keyPath('again'))
    await replaceFile(configFile, config('again'))
    await eventually(() => keys.held(keyPath('again')) === 1, {
      what: "the serving worker's key fetch for the reloaded config",
    })
    keys.release(keyPath('after'))
    await bothServing()
    keys.release(keyPath('again'))

    const reloaded = await cli.waitForLog(
      (l) => l['event'] === 'config_reloaded' && l['worker'] === undefined,
      from,
    )
    t.equal(reloaded['workers'], 2, 'the replacement is counted among the workers that applied it')
    await everyWorkerServes(t, 'again')
  })
})

t.test('a SIGTERM while a worker is being replaced drains the replacement too', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const keys = await holdingKeyServer(t)
  // a drain deadline far beyond the bound below: a worker that missed the drain is killed only then
  const drainMs = 60_000
  const sidecar = await startTestSidecar(
    t,
    {
      upstream: upstream.url,
      workers: 2,
      timeouts: { drain: `${drainMs / 1000}s` },
      jwt: { issuers: [{ issuer: 'https://idp.test', jwksUri: keys.uri(), audiences: ['svc'] }] },
    },
    DEBUG_LOG,
  )
  const cli = sidecar.process

  keys.hold()
  const [victim] = childPids(cli.child.pid!)
  const fromKill = cli.stderr().length
  process.kill(victim!, 'SIGKILL')
  const exited = await cli.waitForLog((l) => l['event'] === 'worker_exited', fromKill)
  const slot = String(exited['worker'])
  await eventually(() => keys.held() === 1, { what: "the replacement's key fetch (it is starting)" })

  const fromTerm = cli.stderr().length
  cli.kill('SIGTERM')
  const draining = await cli.waitForLog(
    (l) => l['event'] === 'draining' && l['worker'] === undefined,
    fromTerm,
  )
  t.equal(draining['workers'], 1, 'the SIGTERM came while the replacement was not serving yet')
  keys.release()

  const boundMs = 20_000
  await eventually(() => cli.child.exitCode !== null || cli.child.signalCode !== null, {
    timeoutMs: boundMs,
    what: `the pod to exit within ${boundMs} ms of SIGTERM (the drain deadline is ${drainMs} ms)`,
  })
  t.equal(await cli.exited, 0, 'the pod exits 0')
  t.same(
    drainedWorkers(cli.stderr().slice(fromTerm)),
    ['1', '2'],
    `both workers drained, the replacement (worker ${slot}) too`,
  )
})

t.test('a SIGTERM as soon as a replacement worker is forked drains it too', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const drainMs = 60_000
  const sidecar = await startTestSidecar(
    t,
    { upstream: upstream.url, workers: 2, timeouts: { drain: `${drainMs / 1000}s` } },
    DEBUG_LOG,
  )
  const cli = sidecar.process
  const [victim] = childPids(cli.child.pid!)
  const fromKill = cli.stderr().length
  process.kill(victim!, 'SIGKILL')
  // most often before the replacement has even asked for its config
  const forked = await cli.waitForLog((l) => l['event'] === 'worker_restarted', fromKill)
  const fromTerm = cli.stderr().length
  cli.kill('SIGTERM')

  const boundMs = 20_000
  await eventually(() => cli.child.exitCode !== null || cli.child.signalCode !== null, {
    timeoutMs: boundMs,
    what: `the pod to exit within ${boundMs} ms of SIGTERM (the drain deadline is ${drainMs} ms)`,
  })
  t.equal(await cli.exited, 0, 'the pod exits 0')
  t.same(drainedWorkers(cli.stderr().slice(fromTerm)), ['1', '2'], 'both workers drained')
  t.throws(() => process.kill(Number(forked['pid']), 0), 'the replacement is gone')
})
