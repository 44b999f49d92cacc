// `workers: 2`: workers that never come to serve (here: each replacement is stopped with SIGSTOP before it
// listens) neither crash nor answer the watchdog, which pings only serving workers. The primary's /healthz
// fails once no worker has served for longer than the longest restart backoff (30 s), so the kubelet's
// liveness probe restarts the container; it is healthy again as soon as a worker serves.

import { writeFile } from 'node:fs/promises'
import t from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { childPids, twoWorkerPodFiles } from '../helpers/pod.ts'
import { startSidecarFromFile } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const BACKOFF_CAP_MS = 30_000

const resume = (pid: number) => {
  try {
    process.kill(pid, 'SIGCONT')
  } catch {
    // gone already
  }
}

t.test('/healthz fails while no worker has served for longer than the backoff cap', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const pod = await twoWorkerPodFiles('workers-healthz', upstream.url)
  await writeFile(pod.configFile, pod.config({}))
  const sidecar = await startSidecarFromFile(t, pod.configFile)
  const primary = sidecar.process.child.pid!
  const healthz = () => fetch(`${sidecar.adminUrl}/healthz`)

  const first = childPids(primary)
  const stopped = new Set<number>()
  t.teardown(() => {
    for (const pid of stopped) resume(pid)
  })
  /** every replacement is stopped as soon as it is forked, long before it could listen */
  const stopNewWorkers = () => {
    for (const pid of childPids(primary)) {
      if (first.includes(pid) || stopped.has(pid)) continue
      process.kill(pid, 'SIGSTOP')
      stopped.add(pid)
    }
  }
  const killedAt = Date.now()
  for (const pid of first) process.kill(pid, 'SIGKILL')
  await eventually(
    () => {
      stopNewWorkers()
      return stopped.size === 2
    },
    { what: 'both replacements forked and stopped' },
  )
  t.equal((await healthz()).status, 200, 'healthy while the restarts are recent')

  let lastAsked = 0
  const unhealthy = await eventually(
    async () => {
      stopNewWorkers()
      // asked twice a second; new workers are looked for at every turn
      if (Date.now() - lastAsked < 500) return undefined
      lastAsked = Date.now()
      const r = await healthz()
      return r.status === 503 ? ((await r.json()) as { ok: boolean; error: string }) : undefined
    },
    { what: '/healthz 503', timeoutMs: BACKOFF_CAP_MS + 15_000 },
  )
  t.ok(Date.now() - killedAt > BACKOFF_CAP_MS, 'not before the backoff cap')
  t.equal(unhealthy.ok, false)
  t.match(unhealthy.error, /no worker has been serving for \d+ s/)
  t.equal(stopped.size, 2, 'no other worker was started meanwhile')
  t.equal(sidecar.process.child.exitCode, null, 'no crash loop: the workers did not exit')

  for (const pid of stopped) resume(pid)
  await eventually(async () => (await healthz()).status === 200, {
    what: '/healthz 200 once a worker serves',
  })
  await eventually(async () => (await fetch(`${sidecar.adminUrl}/readyz`)).status === 200, {
    what: 'both workers serving',
  })
})
