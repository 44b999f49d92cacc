// A pod of `workers: N` told to stop while its workers still start (each waits for its first JWKS fetch)
// ends at once with exit 0, its workers with it, and never serves: whether the SIGTERM reaches the primary
// alone (the kubelet's) or the whole process group (systemd's KillMode=control-group, `tini -g`). Before,
// the group's signal killed the starting workers by Node's default action and the start failed ("a worker
// could not start", exit 2), and a SIGTERM to the primary alone waited for the workers to start and then
// drained. A SIGTERM to one starting worker alone drains that worker once it serves, and the pod replaces it;
// one that ends a worker still in Node's own start-up (before the bin's first statement can catch it) is a
// stop of the pod only when the primary is told to stop too.
import { readdir, writeFile } from 'node:fs/promises'
import { createServer, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { eventually } from '../helpers/eventually.ts'
import { createSigningKey } from '../helpers/jwks.ts'
import { freePort } from '../helpers/net.ts'
import { childPids } from '../helpers/pod.ts'
import { scratchDir } from '../helpers/scratch.ts'
import { spawnCli, testConfigYaml } from '../helpers/sidecar.ts'

// generous for a loaded machine, far below what a start that ran on would take: the JWKS start wait (5 s)
// and then the drain delay (60 s)
const PROMPT_MS = 20_000

const alive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/** `run -c config` in a process group of its own, the whole group killed at the end of the test */
function spawnPodGroup(t: Test, config: string, env: NodeJS.ProcessEnv = {}) {
  const proxy = spawnCli(['run', '-c', config], env, { detached: true })
  const primary = proxy.child.pid!
  t.teardown(async () => {
    try {
      process.kill(-primary, 'SIGKILL')
    } catch {
      // the group is gone already
    }
    await proxy.exited
  })
  return { proxy, primary }
}

/**
 * `run` of a `workers: 2` pod in a process group of its own, whose IdP holds every key fetch but the first
 * `answered` ones; resolves once both workers have asked for their keys (both are starting), with their pids.
 */
async function startingPod(
  t: Test,
  opts: { answered: number; drainDelay: string; more?: Record<string, unknown> },
) {
  const key = await createSigningKey('k1', 'ES256')
  const held: ServerResponse[] = []
  let fetches = 0
  const jwks = createServer((_req, res) => {
    if (fetches++ >= opts.answered) return void held.push(res)
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify({ keys: [key.publicJwk] }))
  })
  jwks.listen(0, '127.0.0.1')
  await new Promise((ok) => jwks.once('listening', ok))
  t.teardown(() => {
    for (const res of held) res.destroy()
    jwks.close()
  })
  const config = join(await scratchDir('workers-start-stopped'), 'config.yaml')
  await writeFile(
    config,
    testConfigYaml({
      upstream: 'http://127.0.0.1:9',
      workers: 2,
      timeouts: { drainDelay: opts.drainDelay },
      ...opts.more,
      jwt: {
        issuers: [
          {
            issuer: 'https://idp.start-stopped.example',
            jwksUri: `http://127.0.0.1:${(jwks.address() as AddressInfo).port}/jwks`,
            audiences: ['app'],
          },
        ],
      },
    }),
  )
  const { proxy, primary } = spawnPodGroup(t, config)
  await eventually(() => fetches >= 2, { timeoutMs: PROMPT_MS, what: 'both workers fetching keys' })
  const workers = childPids(primary)
  t.equal(workers.length, 2, 'two worker processes')
  return { proxy, primary, workers }
}

for (const [to, group] of [
  ['the whole process group', true],
  ['the primary alone', false],
] as const) {
  t.test(
    `SIGTERM to ${to} while both workers wait for their keys: exit 0 at once, workers gone`,
    async (t) => {
      const { proxy, primary, workers } = await startingPod(t, { answered: 0, drainDelay: '60s' })
      const signalled = performance.now()
      process.kill(group ? -primary : primary, 'SIGTERM')
      const late = new AbortController()
      const code = await Promise.race([
        proxy.exited,
        delay(PROMPT_MS, 'late' as const, { signal: late.signal }).catch(() => undefined),
      ])
      late.abort()
      t.not(code, 'late', `exited within ${PROMPT_MS} ms, the key fetches still unanswered`)
      t.equal(proxy.child.signalCode, null, 'not ended by the signal')
      t.equal(code, 0, `exit 0 (stderr: ${proxy.stderr().trim()})`)
      t.match(proxy.stderr(), /while starting, exiting before serving/, 'says it stopped before serving')
      t.notMatch(proxy.stderr(), /could not start/, 'not a failed start')
      t.notMatch(proxy.stderr(), /"event":"started"/, 'never started serving')
      t.ok(performance.now() - signalled < PROMPT_MS, 'promptly')
      await eventually(() => workers.every((pid) => !alive(pid)), {
        timeoutMs: PROMPT_MS,
        what: 'the workers gone',
      }).catch((err: Error) => t.fail(err.message))
    },
  )
}

t.test(
  'SIGTERM to each starting worker alone: each drains once it serves and is replaced, the pod starts',
  async (t) => {
    // the first key fetch is answered, the other held: one worker serves seconds before its sibling
    const { proxy, primary, workers } = await startingPod(t, { answered: 1, drainDelay: '0s' })
    for (const pid of workers) process.kill(pid, 'SIGTERM')
    // the worker whose keys came serves, drains and exits while its sibling still waits for its keys (5 s)
    await proxy.waitFor(/"event":"started"/, 30_000)
    await eventually(() => workers.every((pid) => !alive(pid)), {
      timeoutMs: PROMPT_MS,
      what: 'both signalled workers gone',
    })
    await eventually(() => proxy.stderr().match(/"event":"worker_restarted"/g)?.length === 2, {
      timeoutMs: PROMPT_MS,
      what: 'a new worker in the place of each',
    })
    t.equal(childPids(primary).length, 2, 'two workers serve on')
    t.equal(proxy.child.exitCode, null, 'the pod runs on')
    t.notMatch(proxy.stderr(), /could not start/, 'not a failed start')
    // the start lasts until every slot listens, the replaced one too: its new worker waits out the JWKS start
    // wait (5 s) from its start on, while its sibling's ends about a second earlier
    const time = (event: string) =>
      Number(new RegExp(`"time":(\\d+),[^\\n]*"event":"${event}"`).exec(proxy.stderr())?.[1])
    t.ok(
      time('started') - time('worker_restarted') >= 4_500,
      `"started" once the first replacement listens too (${time('started') - time('worker_restarted')} ms after it was started)`,
    )
  },
)

t.test(
  'SIGTERM to the primary while one worker serves and the other still starts: what the serving one took completes',
  async (t) => {
    // the upstream answers /ping at once and holds /slow until the test lets it go
    const slow: ServerResponse[] = []
    const upstream = createServer((req, res) => {
      req.resume()
      if (req.url === '/slow') slow.push(res)
      else res.end('pong')
    })
    upstream.listen(0, '127.0.0.1')
    await new Promise((ok) => upstream.once('listening', ok))
    t.teardown(() => {
      for (const res of slow) res.destroy()
      upstream.close()
    })
    const listen = await freePort()
    // the first key fetch is answered, the other held: one worker serves, its sibling waits for its keys
    const { proxy, primary } = await startingPod(t, {
      answered: 1,
      drainDelay: '0s',
      more: {
        upstream: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`,
        listen: { http: `127.0.0.1:${listen}` },
        timeouts: { drainDelay: '0s', drain: '10s' },
      },
    })
    const url = `http://127.0.0.1:${listen}`
    // the listener is open as soon as one worker listens: it serves while its sibling still waits for keys
    await eventually(
      async () => {
        const res = await request(`${url}/ping`)
        return (await res.body.text()) === 'pong'
      },
      { timeoutMs: PROMPT_MS, what: 'a worker serving' },
    )
    t.notMatch(proxy.stderr(), /"event":"started"/, 'the pod has not started yet')
    const inFlight = request(`${url}/slow`).then(
      async (res) => ({ status: res.statusCode, body: await res.body.text() }),
      (err: Error) => ({ status: 0, body: err.message }),
    )
    await eventually(() => slow.length === 1, { what: 'the request at the upstream' })

    process.kill(primary, 'SIGTERM')
    // the worker still starting goes at once
    await eventually(() => childPids(primary).length <= 1, {
      timeoutMs: PROMPT_MS,
      what: 'the starting worker gone',
    })
    slow[0]!.end('done')
    t.same(await inFlight, { status: 200, body: 'done' }, 'the request in flight was answered, not cut')
    const code = await proxy.exited
    t.equal(code, 0, `exit 0 (stderr: ${proxy.stderr().trim()})`)
    t.equal(proxy.child.signalCode, null, 'not ended by the signal')
    // a worker served: "exiting before serving" would tell the operator that nothing was ever answered
    t.match(proxy.stderr(), /while starting, exiting after draining the workers already serving/, 'says so')
    t.notMatch(proxy.stderr(), /before serving/, 'not that nothing served')
  },
)

t.test(
  'SIGTERM to the primary once the worker that served was drained and replaced: says a worker served',
  async (t) => {
    // the first key fetch is answered, the others held: one worker serves, its sibling waits for its keys
    const { proxy, primary, workers } = await startingPod(t, { answered: 1, drainDelay: '0s' })
    // the serving one drains and is replaced at once; the sibling holds its signal until it serves
    for (const pid of workers) process.kill(pid, 'SIGTERM')
    await proxy.waitFor(/"event":"worker_restarted"/, PROMPT_MS)
    t.notMatch(proxy.stderr(), /"event":"started"/, 'the pod has not started yet')
    process.kill(primary, 'SIGTERM')
    t.equal(await proxy.exited, 0, `exit 0 (stderr: ${proxy.stderr().trim()})`)
    // "exiting before serving" would tell the operator that nothing was ever answered
    t.match(proxy.stderr(), /while starting, exiting after draining the workers already serving/, 'says so')
    t.notMatch(proxy.stderr(), /before serving/, 'not that nothing served')
  },
)

/**
 * A `workers: 2` pod (no keys to wait for) whose workers each spend `holdMs` in a preload, before the bin's
 * first statement: a SIGTERM then ends a worker by Node's default action, as one that comes during Node's own
 * start-up does. Resolves once both workers are in the preload, with their pids.
 */
async function preloadingPod(t: Test, holdMs: number) {
  const dir = await scratchDir('workers-preload-stopped')
  const marks = join(dir, 'marks')
  const preload = join(dir, 'hold-worker.mjs')
  await writeFile(
    preload,
    `import cluster from 'node:cluster'
import { mkdirSync, writeFileSync } from 'node:fs'
if (cluster.isWorker) {
  mkdirSync(${JSON.stringify(marks)}, { recursive: true })
  writeFileSync(${JSON.stringify(marks)} + '/' + process.pid, '')
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ${holdMs})
}
`,
  )
  const config = join(dir, 'config.yaml')
  await writeFile(config, testConfigYaml({ upstream: 'http://127.0.0.1:9', workers: 2 }))
  const nodeOptions = `${process.env['NODE_OPTIONS'] ?? ''} --import=${preload}`.trim()
  const { proxy, primary } = spawnPodGroup(t, config, { NODE_OPTIONS: nodeOptions })
  const held = async () => (await readdir(marks).catch(() => [] as string[])).map(Number)
  await eventually(async () => (await held()).length >= 2, {
    timeoutMs: PROMPT_MS,
    what: 'both workers in the preload',
  })
  const workers = await held()
  t.same(workers.sort(), childPids(primary).sort(), 'the two workers are the ones held')
  return { proxy, primary, workers }
}

for (const [which, count] of [
  ['one worker', 1],
  ['every worker', 2],
] as const) {
  t.test(`SIGTERM to ${which} alone in its own start-up: replaced, and the pod starts`, async (t) => {
    const { proxy, primary, workers } = await preloadingPod(t, 1_500)
    const signalled = workers.slice(0, count)
    for (const pid of signalled) process.kill(pid, 'SIGTERM')
    // with every worker gone and none listening yet, nothing but the grace keeps the primary's start going
    const exited = proxy.exited.then((code) => ({ code }))
    const started = proxy.waitFor(/"event":"started"/, 30_000).then(() => 'started' as const)
    t.equal(
      await Promise.race([started, exited]),
      'started',
      `the pod starts (stderr: ${proxy.stderr().trim()})`,
    )
    t.match(proxy.stderr(), /"event":"worker_exited".*"signal":"SIGTERM"/, 'ended by the signal')
    t.equal(
      proxy.stderr().match(/"event":"worker_restarted"/g)?.length,
      count,
      'a new worker in the place of each',
    )
    t.ok(
      signalled.every((pid) => !alive(pid)),
      'the signalled workers are gone',
    )
    t.equal(childPids(primary).length, 2, 'two workers serve')
    t.notMatch(proxy.stderr(), /while starting/, 'not taken for a stop of the pod')
    process.kill(primary, 'SIGTERM')
    t.equal(await proxy.exited, 0, 'a stop later exits 0')
  })
}

t.test(
  'SIGTERM to the group while the workers are in their own start-up: exit 0, none replaced',
  async (t) => {
    const { proxy, primary, workers } = await preloadingPod(t, 3_000)
    process.kill(-primary, 'SIGTERM')
    const code = await proxy.exited
    t.equal(code, 0, `exit 0 (stderr: ${proxy.stderr().trim()})`)
    t.match(proxy.stderr(), /SIGTERM while starting, exiting before serving/, 'a stop before serving')
    t.notMatch(proxy.stderr(), /"event":"worker_restarted"/, 'no worker started in their place')
    t.notMatch(proxy.stderr(), /"event":"started"/, 'never started serving')
    t.ok(
      workers.every((pid) => !alive(pid)),
      'both workers gone',
    )
  },
)
