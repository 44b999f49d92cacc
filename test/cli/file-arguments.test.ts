// A file named on the command line that cannot be read is said as a config file's is (FILE: file not found,
// FILE: is a directory, not a file), exit 1, one line, never Node's errno text: explain's --cert, and the
// files of `test` (the test file and the config it names).
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { scratchDirSync } from '../helpers/scratch.ts'
import { runCli } from '../helpers/sidecar.ts'

const dir = scratchDirSync('file-arguments')
const missing = join(dir, 'no-such.pem')
const directory = join(dir, 'certs.d')
mkdirSync(directory)
const notPem = join(dir, 'not-pem.txt')
writeFileSync(notPem, 'hello\n')

const lines = (text: string) => text.split('\n').filter((l) => l !== '')

t.test('explain --cert: a missing file, a directory, a file without a certificate', async (t) => {
  const [gone, dirArg, text] = await Promise.all([
    runCli(['explain', '--cert', missing]),
    runCli(['explain', '--cert', directory]),
    runCli(['explain', '--cert', notPem]),
  ])
  t.equal(gone.code, 1, 'missing: exit 1')
  t.same(
    lines(gone.stdout + gone.stderr),
    [`${missing}: file not found`],
    'missing: as a config file says it',
  )
  t.equal(dirArg.code, 1, 'directory: exit 1')
  t.same(lines(dirArg.stdout + dirArg.stderr), [`${directory}: is a directory, not a file`])
  t.equal(text.code, 1, 'no certificate: exit 1')
  t.same(lines(text.stdout + text.stderr), [`${notPem}: no PEM certificate in the file`])
  for (const r of [gone, dirArg, text]) t.notMatch(r.stdout + r.stderr, /ENOENT|EISDIR|errno|open '/)
})

t.test('explain --cert --json: the same words in the errors document', async (t) => {
  const r = await runCli(['explain', '--cert', missing, '--json'])
  t.equal(r.code, 1)
  t.same(JSON.parse(r.stdout), { errors: [`${missing}: file not found`] })
})

t.test('test: a missing test file, and a test file whose config is missing', async (t) => {
  const orphan = join(dir, 'orphan.test.yaml')
  writeFileSync(orphan, 'config: gone.yaml\ntests:\n  - name: a\n    expect: { kind: unknown }\n')
  const r = await runCli(['test', join(dir, 'no-such.test.yaml'), orphan])
  t.equal(r.code, 1)
  t.match(r.stdout, `${join(dir, 'no-such.test.yaml')}:1:1 file not found`)
  t.match(r.stdout, `${join(dir, 'gone.yaml')}:1:1 file not found`)
  t.notMatch(r.stdout + r.stderr, /ENOENT|errno/)
})
