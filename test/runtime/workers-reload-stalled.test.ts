// `workers: 2`: a worker that does not apply a reloaded config must not go on serving the old one (a key the
// reload revoked would still be accepted there). A worker stalled past the primary's answer deadline (here:
// SIGSTOP) is replaced, and its successor starts with the current config; when the stall ends there is no
// worker left that still holds the old rules.
import { writeFile } from 'node:fs/promises'
import t from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { childPids, probeWorkers, twoWorkerPodFiles } from '../helpers/pod.ts'
import { replaceFile } from '../helpers/scratch.ts'
import { startSidecarFromFile } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const resume = (pid: number) => {
  try {
    process.kill(pid, 'SIGCONT')
  } catch {
    // replaced: the process is gone
  }
}

t.test('a worker that does not answer a reload is replaced by one with the new config', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const pod = await twoWorkerPodFiles('workers-reload-stalled', upstream.url)
  const { auditFile, configFile } = pod
  const config = (rule: string) =>
    pod.config({
      identities: [{ name: rule, kind: 'service', match: { userAgent: 'probe' } }],
    })
  await writeFile(configFile, config('before'))
  const sidecar = await startSidecarFromFile(t, configFile)
  const cli = sidecar.process

  const [victim] = childPids(cli.child.pid!)
  process.kill(victim!, 'SIGSTOP')
  t.teardown(() => resume(victim!))
  const from = cli.stderr().length
  await replaceFile(configFile, config('after'))
  // the primary waits 10 s for each worker's answer
  const incomplete = await cli.waitForLog((l) => l['event'] === 'config_reload_incomplete', from, 30_000)
  t.equal(incomplete['workers'], 1, 'one worker did not apply it')
  const replaced = await cli.waitForLog((l) => l['event'] === 'worker_replaced', from)
  t.equal(replaced['reason'], 'no_answer', 'replaced because it never answered')
  // the stall ends: a worker still holding the old rules would serve with them now
  resume(victim!)
  await eventually(
    async () => {
      const r = await fetch(`${sidecar.adminUrl}/readyz`)
      return r.status === 200 && ((await r.json()) as { workers: { ready: number } }).workers.ready === 2
    },
    { what: 'two workers serving again' },
  )
  t.notOk(childPids(cli.child.pid!).includes(victim!), 'the stalled worker is gone')

  const { statuses, identities } = await probeWorkers(sidecar.proxyUrl, auditFile, '/after-reload/', 8)
  t.same(new Set(statuses), new Set([200]), 'every request served')
  t.same(new Set(identities), new Set(['ua:after']), `every worker serves the reloaded rules: ${identities}`)
  const m = await (await fetch(`${sidecar.adminUrl}/metrics`)).text()
  t.notMatch(m, /nhi_worker_requests_total\{[^}]*\} 0\n/, 'both workers served some of them')
})
