// `workers: 2`: a bug that escapes every handler in one worker (a planted one, from outside) ends that worker
// alone with the internal_error line — naming its slot, as every other line a worker writes does — and exit 3;
// the primary logs the exit and starts a new worker in the slot, which serves.

import { writeFile } from 'node:fs/promises'
import t from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { childPids, freshGet, twoWorkerPodFiles, workerSlot } from '../helpers/pod.ts'
import { startSidecarFromFile } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const logLines = (stderr: string, event: string) =>
  stderr
    .split('\n')
    .filter((l) => l.startsWith('{') && l.includes(`"event":"${event}"`))
    .map((l) => JSON.parse(l) as Record<string, unknown>)

// every process of the pod loads it (workers inherit the environment); only the one signalled throws
const PLANT = `data:text/javascript,${encodeURIComponent(
  "process.on('SIGUSR2', () => { throw new Error('planted bug') })",
)}`

t.test(
  'an internal error in one worker: its line names the slot, exit 3, the slot is restarted',
  async (t) => {
    const upstream = await startUpstream()
    t.teardown(() => upstream.close())
    const pod = await twoWorkerPodFiles('workers-internal-error', upstream.url)
    await writeFile(pod.configFile, pod.config({}))
    const sidecar = await startSidecarFromFile(t, pod.configFile, {
      env: { NODE_OPTIONS: `${process.env['NODE_OPTIONS'] ?? ''} --import ${PLANT}`.trim() },
    })
    const cli = sidecar.process
    const [victim] = childPids(cli.child.pid!)
    const slot = workerSlot(victim!)
    process.kill(victim!, 'SIGUSR2')
    await eventually(() => logLines(cli.stderr(), 'worker_restarted').length > 0, {
      what: 'the slot to be restarted',
    })
    const [internal, ...more] = logLines(cli.stderr(), 'internal_error')
    t.same(more, [], 'one internal_error line')
    t.equal(
      internal?.['worker'],
      Number(slot),
      'it names the worker slot, a number as in the primary’s lines',
    )
    t.equal((internal?.['err'] as { message?: string } | undefined)?.message, 'planted bug', 'with the error')
    t.equal(internal?.['level'], 60, 'at level fatal')
    const exited = logLines(cli.stderr(), 'worker_exited')
    t.equal(exited.length, 1)
    t.equal(exited[0]?.['worker'], Number(slot), 'the primary names the same slot')
    t.equal(exited[0]?.['code'], 3, 'exit 3: an internal error')
    t.equal(logLines(cli.stderr(), 'worker_restarted')[0]?.['worker'], Number(slot))
    await eventually(
      async () => {
        const r = await fetch(`${sidecar.adminUrl}/readyz`)
        return r.status === 200 && ((await r.json()) as { workers: { ready: number } }).workers.ready === 2
      },
      { what: 'two workers serving again', timeoutMs: 15_000 },
    )
    const statuses = await Promise.all([1, 2, 3, 4].map(() => freshGet(sidecar.proxyUrl, 'curl/8.5.0')))
    t.same(statuses, [200, 200, 200, 200], 'the pod serves on both workers')
  },
)
