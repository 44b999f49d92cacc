// The bench stops nhi-proxy between rounds (the cold start six times in a row): with the production drain
// delay each stop would wait out the harness's 2 s grace and end in SIGKILL. The bench config sets
// drainDelay 0s, so a stop is a clean exit.
import { rm } from 'node:fs/promises'
import t from 'tap'
import { startNhiWithUpstream } from '../../bench/lib/nhi.ts'
import type { ServerProcess } from '../../bench/lib/procs.ts'
import { newSigningMaterial } from '../../bench/lib/tokens.ts'
import { scratchDir } from '../helpers/scratch.ts'

t.test('a bench nhi-proxy exits 0 on SIGTERM, well within the harness grace', async (t) => {
  const dir = await scratchDir('bench-stop')
  const procs: ServerProcess[] = []
  t.teardown(async () => {
    for (const p of procs) await p.stop()
    await rm(dir, { recursive: true, force: true })
  })
  const key = newSigningMaterial('ES256', 'k1')
  const { nhi } = await startNhiWithUpstream('nhi', dir, procs, [key.publicJwk], {}, { dist: true })
  const start = performance.now()
  await nhi.stop()
  const ms = performance.now() - start
  t.equal(nhi.child.signalCode, null, 'not killed')
  t.equal(nhi.child.exitCode, 0)
  // exit 0 and no signal already prove the stop came before the grace ran out; the time is for the log only,
  // since a loaded machine can stretch it without anything being wrong
  t.comment(`stopped in ${Math.round(ms)} ms`)
})
