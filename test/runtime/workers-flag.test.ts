// `run --workers N` overrides the file's `workers` as --listen overrides listen.http: /config shows the
// workers the pod runs, and a reload of a file whose `workers` now says what the flag says (or anything
// else: the flag wins at the next start too) warns of no restart that would change nothing.
import t from 'tap'
import { childPids } from '../helpers/pod.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

t.test('--workers 2 over a file without workers', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const sidecar = await startTestSidecar(t, { upstream: upstream.url }, { args: ['--workers', '2'] })
  t.equal(childPids(sidecar.process.child.pid!).length, 2, 'two worker processes')
  const config = (await (await fetch(`${sidecar.adminUrl}/config`)).json()) as { workers: unknown }
  t.equal(config.workers, 2, '/config shows the workers the pod runs')

  const from = sidecar.process.stderr().length
  t.ok(await sidecar.reload({ upstream: upstream.url, workers: 2 }), 'reloaded')
  t.notMatch(
    sidecar.process.stderr().slice(from),
    /workers_unchanged/,
    'no warning that a restart is needed to run the workers it runs',
  )
})
