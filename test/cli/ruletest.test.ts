import { readdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { golden } from '../helpers/golden.ts'
import { scratchDirSync } from '../helpers/scratch.ts'
import { runCli } from '../helpers/sidecar.ts'

async function run(files: string[]): Promise<{ code: number; text: string }> {
  const r = await runCli(['test', ...files])
  return { code: r.code, text: r.stdout }
}

const exampleTests = readdirSync('config/examples')
  .filter((f) => f.endsWith('.test.yaml'))
  .map((f) => `config/examples/${f}`)

t.test('every shipped example has rule tests and they pass', async (t) => {
  const configs = readdirSync('config/examples').filter(
    (f) => f.endsWith('.yaml') && !f.endsWith('.test.yaml'),
  )
  t.ok(configs.length >= 5)
  for (const c of configs)
    t.ok(
      exampleTests.includes(`config/examples/${c.replace(/\.yaml$/, '.test.yaml')}`),
      `${c} has a test file`,
    )
  const r = await run(exampleTests)
  t.equal(r.code, 0, r.text)
  t.notMatch(r.text, /not ok/)
  t.match(r.text, /# \d+ tests, \d+ passed, 0 failed/)
})

t.test('a failing test file exits 1 with expected/actual', async (t) => {
  const r = await run(['test/golden/failing.test.yaml'])
  t.equal(r.code, 1)
  t.equal(r.text, golden('ruletest-failing.txt', r.text))
  t.match(r.text, /^ok 1 - passes$/m)
  t.match(r.text, /^not ok 2 - wrong identity and decision$/m)
  t.match(r.text, /identity: expected "shop\/api", got "shop\/web"/)
  t.match(r.text, /decision: expected "allow", got "deny"/)
  // what the live proxy refuses before rules and policy, or never verifies, cannot pass a rule test
  t.match(r.text, /^not ok 3 - a path the proxy refuses$/m)
  t.match(r.text, /request GET \/admin%2fusers: the proxy refuses this request target with 400/)
  t.match(r.text, /^not ok 4 - a lower-case method$/m)
  t.match(r.text, /request get \/: the proxy refuses this request method with 400/)
  t.match(r.text, /^not ok 5 - a token of an issuer the config does not list$/m)
  t.match(r.text, /not verified: jwt wrong_issuer: issuer https:\/\/unlisted\.example is not configured/)
})

t.test('an invalid test file is reported with line:col and exits 1', async (t) => {
  const r = await run(['test/golden/invalid.test.yaml'])
  t.equal(r.code, 1)
  t.match(
    r.text,
    /test\/golden\/invalid\.test\.yaml:5:15 unknown key "identiy" in tests\[0\]\.expect \(hint: did you mean "identity"\?\)/,
  )
  const missing = await run(['no/such.test.yaml'])
  t.equal(missing.code, 1)
})

t.test('a test file that is not UTF-8 is reported at its first invalid byte and exits 1', async (t) => {
  const dir = scratchDirSync('ruletest-encoding')
  const file = join(dir, 'latin1.test.yaml')
  writeFileSync(
    file,
    Buffer.from(
      `config: ${join(process.cwd(), 'config/examples/mesh-xfcc.yaml')}\ntests:\n  - name: caf\xe9\n`,
      'latin1',
    ),
  )
  const r = await run([file])
  t.equal(r.code, 1)
  t.match(r.text, `${file}:3:14 not UTF-8 text (hint: save the file as UTF-8)`)
})

t.test('a subject with two CNs is named as the live proxy names it, mTLS or forwarded', async (t) => {
  const dir = scratchDirSync('ruletest-multi-cn')
  writeFileSync(join(dir, 'config.yaml'), 'upstream: http://127.0.0.1:3000\n')
  // the same certificate (DER: O=acme, CN=orders, CN=orders-worker) as the audit trail shows an mTLS subject and
  // as Envoy writes XFCC's Subject (RFC 4514 order)
  const cert = (subject: string, forwarded: boolean) =>
    `      cert: { subject: "${subject}", forwarded: ${forwarded} }\n    expect: { identity: orders, rule: "builtin:cert" }\n`
  writeFileSync(
    join(dir, 'multi-cn.test.yaml'),
    'config: config.yaml\ntests:\n' +
      `  - name: over mTLS\n    request:\n${cert('O=acme, CN=orders, CN=orders-worker', false)}` +
      `  - name: in XFCC\n    request:\n${cert('CN=orders-worker,CN=orders,O=acme', true)}`,
  )
  const r = await run([join(dir, 'multi-cn.test.yaml')])
  t.equal(r.code, 0, r.text)
  t.match(r.text, /^ok 1 - over mTLS$/m)
  t.match(r.text, /^ok 2 - in XFCC$/m)
})
