// The bench's cold start mode in its quickest form: real starts of the bundle, timed to the first proxied
// 200, with the process's CPU time, a baseline build alternating with it, and nothing left running.
import { join } from 'node:path'
import t from 'tap'
import { COLD_START_TARGET_MS, coldStartMarkdown, runColdStart } from '../../bench/lib/cold-start.ts'
import { REPO_ROOT } from '../../bench/lib/nhi.ts'
import { childPids } from '../../bench/lib/procs.ts'
import { targetLine } from '../../bench/lib/report.ts'
import { assertFreshBundle } from '../helpers/sidecar.ts'

t.setTimeout(120_000)

t.test('cold start mode, tiny: two starts each of this build and a baseline', async (t) => {
  assertFreshBundle()
  const before = new Set(await childPids(process.pid))
  const r = await runColdStart({
    starts: 2,
    dist: true,
    // the same bundle under another name: the comparison machinery, not a difference, is under test
    baseline: join(REPO_ROOT, 'dist', 'nhi-proxy.mjs'),
    // the bundle was just built and read by other tests: no unrecorded start to warm the page cache first
    warmStarts: 0,
    log: () => {},
  })
  t.equal(r.variants.length, 2, 'this build and the baseline')
  for (const v of r.variants) {
    t.equal(v.samples.length, 2, `${v.how}: one sample per start`)
    for (const s of v.samples) {
      t.ok(s.listenMs > 0 && s.listenMs <= s.firstOkMs, 'listening before (or when) the first 200 came')
      t.ok(s.cpuMs > 0 && s.cpuMs < 60_000, `CPU time read from the process: ${s.cpuMs.toFixed(0)} ms`)
    }
  }
  t.equal(r.targets[0]?.target, COLD_START_TARGET_MS)
  t.equal(r.targets[0]?.value, r.variants[0]?.medianMs, 'the target is judged on this build')
  const md = coldStartMarkdown(r, targetLine)
  t.match(md, /^(PASS|MISS) {2}cold start to first proxied 200 ≤ 400 ms: .*median of 2/m)
  t.match(md, /\| CPU time at the first 200 \|/)
  const after = (await childPids(process.pid)).filter((p) => !before.has(p))
  t.same(after, [], 'no child process outlives the run')
})
