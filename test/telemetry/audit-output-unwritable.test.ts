// An `audit.output` file that cannot be opened (a read-only root filesystem, no permission, a parent that is
// a file) stops the start with one line naming it (exit 2), instead of a sidecar that passes /readyz and then
// dies under its first audited request writing to fd -1.
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { stringify } from 'yaml'
import { scratchDirSync } from '../helpers/scratch.ts'
import { runCli } from '../helpers/sidecar.ts'

t.test('audit.output under a regular file: a clear start-up error, no stack trace', async (t) => {
  const dir = scratchDirSync('audit-unwritable')
  const notADir = join(dir, 'plain-file')
  writeFileSync(notADir, 'x')
  const configPath = join(dir, 'config.yaml')
  writeFileSync(
    configPath,
    stringify({
      listen: { http: '127.0.0.1:0' },
      admin: '127.0.0.1:0',
      upstream: 'http://127.0.0.1:9',
      audit: { output: join(notADir, 'audit.log') },
    }),
  )
  const r = await runCli(['run', '-c', configPath], { timeoutMs: 15_000 })
  t.equal(r.code, 2, 'refused to start (a runtime failure, not a bad config file)')
  t.match(
    r.stderr,
    /cannot open audit\.output ".*plain-file\/audit\.log"/,
    'the error names audit.output and the path',
  )
  t.notMatch(r.stderr, /\n\s+at /, 'no stack trace')
})
