// A test run leaves nothing in the system's temp directory: every directory a test writes comes from
// test/helpers/scratch.ts, whose root goes when the test process exits, however it exits.
import { readdir, readFile } from 'node:fs/promises'
import { join, relative } from 'node:path'
import t from 'tap'
import { scratchDir } from '../helpers/scratch.ts'
import { TS_NODE_FLAGS } from '../helpers/sidecar.ts'
import { REPO_ROOT, run } from '../helpers/tools.ts'

const SCRATCH = join(REPO_ROOT, 'test', 'helpers', 'scratch.ts')

// a test process that makes scratch directories and files, then ends the way the case says
const child = (ending: string) => `
  import { writeFileSync } from 'node:fs'
  import { join } from 'node:path'
  import { scratchDir, scratchDirSync } from ${JSON.stringify(SCRATCH)}
  const a = await scratchDir('a')
  writeFileSync(join(a, 'config.yaml'), 'x')
  writeFileSync(join(scratchDirSync('b'), 'audit.log'), 'y')
  ${ending}
`

for (const [name, ending, code] of [
  ['a clean exit', '', 0],
  ['a failing exit code', 'process.exitCode = 1', 1],
  ['an uncaught error', "throw new Error('boom')", 1],
  ['process.exit() with work pending', 'setInterval(() => {}, 1000); process.exit(3)', 3],
] as const) {
  t.test(`the scratch root is gone after ${name}`, async (t) => {
    const tmp = await scratchDir('tmpdir')
    const r = await run(process.execPath, [...TS_NODE_FLAGS, '--input-type=module', '-e', child(ending)], {
      env: { TMPDIR: tmp },
    })
    t.equal(r.code, code, r.stderr)
    t.same(await readdir(tmp), [], 'nothing left in TMPDIR')
  })
}

t.test('no test makes a temp directory of its own outside the scratch root', async (t) => {
  const offenders: string[] = []
  for (const entry of await readdir(join(REPO_ROOT, 'test'), { recursive: true, withFileTypes: true })) {
    if (!entry.isFile() || !entry.name.endsWith('.ts')) continue
    const file = join(entry.parentPath, entry.name)
    if (file !== SCRATCH && /\bmkdtemp(Sync)?\(/.test(await readFile(file, 'utf8')))
      offenders.push(relative(REPO_ROOT, file))
  }
  t.same(offenders, [], 'mkdtemp is called only by test/helpers/scratch.ts')
})
