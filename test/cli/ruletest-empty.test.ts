// A rule-test file with no cases (`tests: []`, or `tests:` with nothing under it) is an error at its `tests`
// key, exit 1: in CI it would pass while testing nothing, e.g. once every case was deleted in a refactor.
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { scratchDirSync } from '../helpers/scratch.ts'
import { runCli } from '../helpers/sidecar.ts'

const dir = scratchDirSync('ruletest-empty')
writeFileSync(join(dir, 'config.yaml'), 'upstream: http://127.0.0.1:9\n')
const file = (name: string, text: string) => {
  const path = join(dir, name)
  writeFileSync(path, text)
  return path
}
const NO_CASES =
  'tests: no test cases (a rule-test file needs at least one, or it passes while checking nothing) ' +
  '(hint: add a case with a name, a request and what to expect, or drop the file)'

t.test('tests: [] and an empty tests: are errors at the key, exit 1', async (t) => {
  const empty = file('empty.test.yaml', 'config: config.yaml\ntests: []\n')
  const nothing = file('nothing.test.yaml', '# every case was moved elsewhere\nconfig: config.yaml\ntests:\n')
  for (const [path, line] of [
    [empty, 2],
    [nothing, 3],
  ] as const) {
    const r = await runCli(['test', path])
    t.equal(r.code, 1, `${path}: exit 1`)
    t.match(r.stdout, `${path}:${line}:1 ${NO_CASES}\n`, 'one line at the tests key')
    t.match(r.stdout, /# 0 tests, 0 passed, 0 failed, some files could not be loaded/)
  }
})

t.test('beside a file with cases: those run, the run still fails', async (t) => {
  const empty = file('empty2.test.yaml', 'config: config.yaml\ntests: []\n')
  const good = file(
    'good.test.yaml',
    'config: config.yaml\ntests:\n  - name: anonymous\n    expect: { identity: anonymous }\n',
  )
  const r = await runCli(['test', good, empty])
  t.equal(r.code, 1)
  t.match(r.stdout, /ok 1 - anonymous/)
  t.match(r.stdout, `${empty}:2:1 tests: no test cases`)
})
