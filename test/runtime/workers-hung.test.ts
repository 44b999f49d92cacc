// `workers: 2`: a worker whose event loop stops (here: SIGSTOP) still gets connections from the cluster, which
// then hang, and it holds /readyz at 503 for the whole pod while /healthz stays 200, so nothing restarts the
// pod either. The primary notices that it stopped answering, kills it and starts another in its place.
import { writeFile } from 'node:fs/promises'
import t from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { childPids, probeWorkers, twoWorkerPodFiles } from '../helpers/pod.ts'
import { startSidecarFromFile } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const resume = (pid: number) => {
  try {
    process.kill(pid, 'SIGCONT')
  } catch {
    // replaced: the process is gone
  }
}

t.test('a worker that stops answering is replaced without a reload or a probe', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const pod = await twoWorkerPodFiles('workers-hung', upstream.url)
  await writeFile(pod.configFile, pod.config({}))
  const sidecar = await startSidecarFromFile(t, pod.configFile)
  const cli = sidecar.process

  const [victim] = childPids(cli.child.pid!)
  const from = cli.stderr().length
  process.kill(victim!, 'SIGSTOP')
  t.teardown(() => resume(victim!))
  // nothing asks the pod anything meanwhile: the primary has to notice by itself
  const replaced = await cli.waitForLog((l) => l['event'] === 'worker_replaced', from, 40_000)
  t.equal(replaced['reason'], 'no_answer', 'replaced because it stopped answering')
  await eventually(
    async () => {
      const r = await fetch(`${sidecar.adminUrl}/readyz`)
      return r.status === 200 && ((await r.json()) as { workers: { ready: number } }).workers.ready === 2
    },
    { what: 'two workers serving again', timeoutMs: 20_000 },
  )
  t.notOk(childPids(cli.child.pid!).includes(victim!), 'the stalled worker is gone')
  const replacedLines = cli
    .stderr()
    .slice(from)
    .split('\n')
    .filter((l) => l.includes('"event":"worker_replaced"'))
  t.equal(replacedLines.length, 1, 'one line for the one replacement')

  const { statuses } = await probeWorkers(sidecar.proxyUrl, pod.auditFile, '/after-stall/', 6)
  t.same(new Set(statuses), new Set([200]), 'every new connection is served')
})
