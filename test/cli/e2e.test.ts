// The command line as a user meets it: help, version, exit codes, shipped configs.
import { readdirSync } from 'node:fs'
import { createServer } from 'node:net'
import t from 'tap'
import { runCli as cli, ROOT } from '../helpers/sidecar.ts'

t.test('--help teaches and --version answers', async (t) => {
  const help = await cli(['--help'])
  t.equal(help.code, 0)
  for (const cmd of ['run', 'check', 'explain', 'test', 'demo', 'demo-idp', 'schema'])
    t.match(help.stdout, new RegExp(`\\n\\s+${cmd}\\b`))
  t.match(help.stdout, /Exit codes/)
  const runHelp = await cli(['run', '--help'])
  t.match(runHelp.stdout, /--upstream <url>/)
  t.match(runHelp.stdout, /SIGHUP/)
  const version = await cli(['--version'])
  t.match(version.stdout.trim(), /^\d+\.\d+\.\d+$/)
})

t.test('exit codes: 1 for an invalid config, 2 for a port in use', async (t) => {
  const bad = await cli(['run', '--upstream', 'not a url'])
  t.equal(bad.code, 1, 'invalid upstream URL → 1')
  t.match(bad.stderr, /--upstream/)

  const blocker = createServer()
  await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r))
  t.teardown(() => blocker.close())
  const port = (blocker.address() as { port: number }).port
  const busy = await cli(['run', '--listen', `127.0.0.1:${port}`, '--admin', '127.0.0.1:0'])
  t.equal(busy.code, 2, 'port in use → 2')
  t.match(busy.stderr, /address in use/)

  const missing = await cli(['run', '-c', '/nonexistent/nhi.yaml'])
  t.equal(missing.code, 1, 'missing config file → 1')
})

t.test('every shipped config passes check', async (t) => {
  const files = [
    ...readdirSync(`${ROOT}/config`)
      .filter((f) => f.endsWith('.yaml'))
      .map((f) => `config/${f}`),
    ...readdirSync(`${ROOT}/config/examples`)
      .filter((f) => f.endsWith('.yaml') && !f.endsWith('.test.yaml'))
      .map((f) => `config/examples/${f}`),
  ]
  t.ok(files.length >= 5, `found ${files.length} shipped configs`)
  const r = await cli(['check', ...files])
  t.equal(r.code, 0, r.stdout + r.stderr)
})

// `nhi-proxy test … | head`: the reader closes the pipe early. The command used to die on the write that
// failed (EPIPE) with a stack trace and exit 1; now the rest goes unwritten and its exit code is its own.
t.test('a reader that closes the pipe early: no stack trace, the exit code of the checks', async (t) => {
  const { spawn } = await import('node:child_process')
  const run = (files: string[]) =>
    new Promise<{ code: number | null; stderr: string }>((resolve) => {
      const c = spawn(process.execPath, [`${ROOT}/dist/nhi-proxy.mjs`, 'test', ...files], { cwd: ROOT })
      let stderr = ''
      c.stderr.setEncoding('utf8')
      c.stderr.on('data', (d: string) => {
        stderr += d
      })
      // more output than a pipe buffers: the writes after the first chunk meet a closed pipe
      c.stdout.once('data', () => c.stdout.destroy())
      c.on('exit', (code) => resolve({ code, stderr }))
    })
  const many = (file: string) => Array.from({ length: 200 }, () => file)
  const passing = await run(many('config/examples/policy-enforce.test.yaml'))
  t.equal(passing.stderr, '', 'nothing on stderr')
  t.equal(passing.code, 0, 'passing tests: 0')
  const failing = await run(many('test/golden/failing.test.yaml'))
  t.equal(failing.stderr, '', 'nothing on stderr')
  t.equal(failing.code, 1, 'failing tests: still 1')
})
