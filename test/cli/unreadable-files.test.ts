// A directory given where a file belongs is named as such by check, run, explain and test (exit 1), not as
// "file not found" or an errno.
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { scratchDirSync } from '../helpers/scratch.ts'
import { runCli } from '../helpers/sidecar.ts'

const dir = join(scratchDirSync('unreadable-files'), 'conf.d')
mkdirSync(dir)

t.test('a directory as the config or test file: "is a directory", exit 1', async (t) => {
  const runs = await Promise.all([
    runCli(['check', dir]),
    runCli(['run', '-c', dir, '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0'], { timeoutMs: 8000 }),
    runCli(['explain', '-c', dir]),
    runCli(['test', dir]),
  ])
  for (const [i, r] of runs.entries()) {
    const name = ['check', 'run', 'explain', 'test'][i]
    t.equal(r.code, 1, `${name}: exit 1`)
    t.match(r.stdout + r.stderr, /conf\.d:1:1 is a directory, not a file/, `${name}: says it is a directory`)
    t.notMatch(r.stdout + r.stderr, /EISDIR|file not found/, `${name}: no errno, no "not found"`)
  }
})
