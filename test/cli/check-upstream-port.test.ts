// What the schema lets through but the proxy cannot use is refused by `check`, a start and a reload alike, at
// FILE:LINE:COL: an upstream URL with credentials or a scheme the proxy does not speak (and its password is
// never echoed), and a port above 65535 (not Node's internal "options.port" message).
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { scratchDirSync } from '../helpers/scratch.ts'
import { runCli } from '../helpers/sidecar.ts'

const dir = scratchDirSync('check-upstream-port')
const file = (name: string, text: string) => {
  const p = join(dir, name)
  writeFileSync(p, text)
  return p
}

t.test('upstream with credentials: check reports it at FILE:LINE:COL, no password anywhere', async (t) => {
  const p = file('cred.yaml', 'upstream: "http://ops:hunter2@127.0.0.1:3000"\n')
  const c = await runCli(['check', p])
  t.equal(c.code, 1, 'check exits 1')
  t.match(c.stdout, /cred\.yaml:1:11 .*upstream/, 'FILE:LINE:COL')
  const r = await runCli(['run', '-c', p, '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0'], {
    timeoutMs: 8000,
  })
  t.equal(r.code, 1, 'run: invalid config is exit 1')
  t.notMatch(r.stderr + r.stdout + c.stdout, /hunter2/, 'the password is never echoed')
})

t.test('upstream ftp://: check reports it', async (t) => {
  const p = file('ftp.yaml', 'upstream: ftp://127.0.0.1:21\n')
  const c = await runCli(['check', p])
  t.equal(c.code, 1)
  t.match(c.stdout, /ftp\.yaml:1:11 .*only http:, https:, h2c:, h2: and unix:/)
})

t.test('port above 65535: check reports it, run says so plainly and exits 1', async (t) => {
  const p = file('port.yaml', 'listen:\n  http: "127.0.0.1:99999"\nadmin: "127.0.0.1:0"\n')
  const c = await runCli(['check', p])
  t.equal(c.code, 1)
  t.match(c.stdout, /port\.yaml:2:9 listen\.http: /)
  const r = await runCli(['run', '-c', p], { timeoutMs: 8000 })
  t.equal(r.code, 1)
  t.notMatch(r.stderr, /options\.port/, "not Node's internal message")
})

t.test(
  'upstream without a scheme: the file and --upstream both say which scheme to add, exit 1',
  async (t) => {
    const p = file('noscheme.yaml', 'upstream: "localhost:3000"\n')
    const c = await runCli(['check', p])
    t.equal(c.code, 1)
    t.match(c.stdout, /noscheme\.yaml:1:11 .*no scheme.*http:\/\/localhost:3000/)
    const r = await runCli(
      ['run', '--upstream', 'localhost:3000', '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0'],
      { timeoutMs: 8000 },
    )
    t.equal(r.code, 1, 'a bad flag value is invalid input (exit 1), not a runtime failure')
    t.match(r.stderr, /--upstream.*no scheme.*http:\/\/localhost:3000/)
    const f = await runCli(
      ['run', '--upstream', 'ftp://127.0.0.1:21', '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0'],
      { timeoutMs: 8000 },
    )
    t.equal(f.code, 1)
    t.match(f.stderr, /--upstream.*only http:, https:, h2c:, h2: and unix:/)
  },
)

t.test('a bad --listen or --admin value: run says why, as check does for the file, exit 1', async (t) => {
  const [admin, listen] = await Promise.all([
    runCli(['run', '--admin', '8080', '--listen', '127.0.0.1:0'], { timeoutMs: 8000 }),
    runCli(['run', '--listen', '127.0.0.1:99999', '--admin', '127.0.0.1:0'], { timeoutMs: 8000 }),
  ])
  t.equal(admin.code, 1)
  t.match(admin.stderr, /invalid --admin "8080": expected HOST:PORT, e\.g\. 0\.0\.0\.0:8080/)
  t.equal(listen.code, 1)
  t.match(listen.stderr, /invalid --listen "127\.0\.0\.1:99999": port must be 0 to 65535/)
})
