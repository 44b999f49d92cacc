// An otlp.endpoint the exporter cannot use is refused by `check`, a start and a reload alike, at
// FILE:LINE:COL, never quoting it: a port above 65535, or a password's '#', '?' or '/' that is not
// percent-encoded (the URL does not parse, or parses with the password's rest as a fragment, a path or a
// query, sent to a host made of the password's start). An '@' of the collector's own path or query has the
// same shape, so it is written %40 (`/v1/%40tenant/traces`), which is accepted.
// Started with it, the export thread failed at every restart, its error naming the URL, password and all.
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { CLEAN_OTEL_ENV } from '../helpers/otlp-collector.ts'
import { scratchDirSync } from '../helpers/scratch.ts'
import { runCli, spawnCli, startTestSidecar } from '../helpers/sidecar.ts'

const dir = scratchDirSync('check-otlp-endpoint')
const file = (name: string, text: string) => {
  const p = join(dir, name)
  writeFileSync(p, text)
  return p
}

const REFUSED: [name: string, endpoint: string, message: RegExp][] = [
  ['port', 'http://collector:S3CRET@127.0.0.1:99999', /not a URL the exporter can parse/],
  ['hash', 'http://collector:S3CRET#pw@127.0.0.1:4318', /not a URL the exporter can parse/],
  ['slash', 'http://collector:S3CRET/pw@127.0.0.1:4318', /not a URL the exporter can parse/],
  ['fragment', 'http://collector:1234#S3CRET@127.0.0.1:4318', /a fragment .* %23/],
  ['path-at', 'http://collector:1234/S3CRET@127.0.0.1:4318', /an '@' after the host/],
  ['query-at', 'http://collector:1234?S3CRET@127.0.0.1:4318', /an '@' after the host/],
  // a password with two '/' (a base64 token), a '/' at its end, a '?' then a '=' or '&': the rest of it goes
  // as the path or the query to the host its start names, the real host after it
  ['path-at-deeper', 'http://collector:1234/S3/CRET@127.0.0.1:4318', /an '@' after the host/],
  ['token-two-slashes', 'https://S3/CR/ET@127.0.0.1:4318', /an '@' after the host/],
  ['password-ends-in-slash', 'http://S3CRET:1234/@127.0.0.1:4318', /an '@' after the host/],
  ['query-value-at', 'http://collector:1234?S3=CRET@127.0.0.1:4318', /an '@' after the host/],
  ['query-pair-at', 'http://collector:1234?S3&CRET@127.0.0.1:4318', /an '@' after the host/],
]

for (const [name, endpoint, message] of REFUSED) {
  t.test(`${endpoint}: check and run refuse it at FILE:LINE:COL, the password never echoed`, async (t) => {
    const p = file(`${name}.yaml`, `upstream: http://127.0.0.1:3000\notlp:\n  endpoint: "${endpoint}"\n`)
    const c = await runCli(['check', p])
    t.equal(c.code, 1, 'check exits 1')
    t.match(c.stdout, new RegExp(`${name}\\.yaml:3:13 otlp\\.endpoint: ${message.source}`), 'FILE:LINE:COL')
    const run = spawnCli(
      ['run', '-c', p, '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0'],
      CLEAN_OTEL_ENV,
    )
    t.teardown(() => run.kill('SIGKILL'))
    const started = run
      .waitForLog((l) => l['event'] === 'started')
      .then(() => 'started')
      .catch(() => 'exited')
    t.equal(await Promise.race([run.exited, started]), 1, 'run: invalid config is exit 1, nothing started')
    t.match(run.stderr(), message, 'run says why')
    t.notMatch(c.stdout + c.stderr + run.stdout() + run.stderr(), /S3CRET/, 'the password is never echoed')
  })
}

t.test('percent-encoded, the same password is accepted', async (t) => {
  const p = file('encoded.yaml', 'otlp:\n  endpoint: "http://collector:S3CRET%23pw@127.0.0.1:4318"\n')
  const c = await runCli(['check', p])
  t.equal(c.code, 0, c.stdout)
})

t.test("an '@' of the collector's own path or query, written %40, is accepted", async (t) => {
  for (const [name, endpoint] of [
    ['tenant-path', 'https://collector:4318/v1/%40tenant/traces'],
    ['scoped-path', 'https://collector:4318/%40tenant'],
    ['query', 'https://collector:4318/?k=a%40b'],
    ['query-no-path', 'https://collector:4318?tenant=ops&owner=a%40b'],
    ['userinfo-and-path', 'https://user:S3CRET@collector:4318/v1/%40tenant'],
  ]) {
    const p = file(`${name}.yaml`, `otlp:\n  endpoint: "${endpoint}"\n`)
    const c = await runCli(['check', p])
    t.equal(c.code, 0, `${endpoint}: ${c.stdout}`)
    t.notMatch(c.stdout + c.stderr, /S3CRET/, 'no password echoed')
  }
})

t.test('otlp.timeout 0, which the exporter refuses, is refused too', async (t) => {
  const p = file('timeout.yaml', 'otlp:\n  endpoint: http://127.0.0.1:4318\n  timeout: 0s\n')
  const c = await runCli(['check', p])
  t.equal(c.code, 1)
  t.match(c.stdout, /timeout\.yaml:3:12 otlp\.timeout: must be more than 0/)
})

t.test('a reload to such an endpoint fails; the running config keeps serving, nothing leaks', async (t) => {
  const sidecar = await startTestSidecar(t, { upstream: 'http://127.0.0.1:3000' }, { env: CLEAN_OTEL_ENV })
  const reloaded = await sidecar.reload({
    upstream: 'http://127.0.0.1:3000',
    otlp: { endpoint: 'http://collector:S3CRET@127.0.0.1:99999' },
  })
  t.equal(reloaded, false, 'config_reload_failed')
  t.match(sidecar.process.stderr(), /otlp\.endpoint: not a URL the exporter can parse/)
  const effective = await (await fetch(`${sidecar.adminUrl}/config`)).json()
  t.equal((effective as { otlp: { endpoint?: string } }).otlp.endpoint, undefined, 'export stays off')
  t.notMatch(sidecar.process.stderr() + sidecar.process.stdout(), /S3CRET/, 'the password is never logged')
})
