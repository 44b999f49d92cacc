// `workers` has an upper bound: a config or flag asking for more processes than any pod could use is an
// error that names the file, line and column (or the flag), not hundreds of forked Node processes.
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { scratchDirSync } from '../helpers/scratch.ts'
import { runCli } from '../helpers/sidecar.ts'

const dir = scratchDirSync('workers-bound')

t.test('workers above 64 in a config is an error at its value', async (t) => {
  const file = join(dir, 'many.yaml')
  writeFileSync(file, 'upstream: http://127.0.0.1:9\nworkers: 1000\n')
  const r = await runCli(['check', file])
  t.equal(r.code, 1)
  t.match(r.stderr + r.stdout, `${file}:2:10 workers: at most 64 worker processes`)
  const ok = join(dir, 'ok.yaml')
  writeFileSync(ok, 'upstream: http://127.0.0.1:9\nworkers: 64\n')
  t.equal((await runCli(['check', ok])).code, 0, '64 is accepted')
})

t.test('--workers above 64 is refused before anything starts', async (t) => {
  const r = await runCli(['run', '--upstream', 'http://127.0.0.1:9', '--workers', '65'])
  t.not(r.code, 0)
  t.match(r.stderr, /--workers <n>' argument '65' is invalid\. expected a whole number from 1 to 64, or auto/)
})

t.test('a --workers value that is no count names the range and auto', async (t) => {
  for (const value of ['0', 'many', '1.5']) {
    const r = await runCli(['run', '--upstream', 'http://127.0.0.1:9', '--workers', value])
    t.equal(r.code, 1, value)
    t.match(
      r.stderr,
      `--workers <n>' argument '${value}' is invalid. expected a whole number from 1 to 64, or auto`,
      value,
    )
  }
})
