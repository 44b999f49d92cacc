import { readdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { Agent, request } from 'undici'
import { stringify } from 'yaml'
import { golden } from '../helpers/golden.ts'
import { metricValue, scrapeUntil } from '../helpers/metrics.ts'
import { scratchDirSync } from '../helpers/scratch.ts'
import { runCli, startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

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

// a typo in a case's peer matched no trustedProxies or remoteAddr CIDR, and the case passed on what it was not
t.test("a case's remoteAddr that is not an IP address is reported with line:col and exits 1", async (t) => {
  const dir = scratchDirSync('ruletest-remote-addr')
  const file = join(dir, 'peer.test.yaml')
  writeFileSync(
    file,
    stringify({
      config: join(process.cwd(), 'config/examples/mesh-xfcc.yaml'),
      tests: [
        { name: 'a typo', request: { remoteAddr: '10.0.0.300' }, expect: { kind: 'unknown' } },
        { name: 'v6', request: { remoteAddr: '::1' }, expect: { kind: 'unknown' } },
      ],
    }),
  )
  const r = await run([file])
  t.equal(r.code, 1)
  t.match(r.text, `${file}:5:19 tests[0].request.remoteAddr: expected an IP address, e.g. 10.0.0.7 or ::1`)
  t.notMatch(r.text, /^ok 1 - a typo$/m, 'the case is not run')
})

t.test(
  'with the policy off the decision is none, as the audit line says it; allow, as files said before, passes too',
  async (t) => {
    const dir = scratchDirSync('ruletest-policy-off')
    writeFileSync(join(dir, 'config.yaml'), 'upstream: http://127.0.0.1:3000\n')
    writeFileSync(
      join(dir, 'off.test.yaml'),
      stringify({
        config: 'config.yaml',
        tests: [
          {
            name: 'nothing decided',
            request: { path: '/admin' },
            expect: { decision: 'none', policyRule: 'off' },
          },
          { name: 'forwarded, as allow said', request: { path: '/admin' }, expect: { decision: 'allow' } },
          { name: 'not denied', request: { path: '/admin' }, expect: { decision: 'deny' } },
          { name: 'not would_deny either', request: { path: '/admin' }, expect: { decision: 'would_deny' } },
        ],
      }),
    )
    const r = await run([join(dir, 'off.test.yaml')])
    t.equal(r.code, 1, r.text)
    t.match(r.text, /^ok 1 - nothing decided$/m)
    t.match(r.text, /^ok 2 - forwarded, as allow said$/m)
    t.match(r.text, /^not ok 3 - not denied$/m)
    t.match(r.text, /decision: expected "deny", got "none"/)
    t.match(r.text, /^not ok 4 - not would_deny either$/m)
  },
)

t.test(
  'a crawler from its published ranges is verified, as on the live proxy, directly or behind a trusted proxy',
  async (t) => {
    const dir = scratchDirSync('ruletest-crawler-ranges')
    writeFileSync(
      join(dir, 'config.yaml'),
      'upstream: http://127.0.0.1:3000\nforwardedClientCert: { trustedProxies: [127.0.0.1/32], format: xfcc }\n',
    )
    const googlebot = 'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)'
    const verified = { identity: 'googlebot', kind: 'bot', verified: true }
    const claimed = { identity: 'ua:googlebot', kind: 'bot', verified: false }
    writeFileSync(
      join(dir, 'crawlers.test.yaml'),
      stringify({
        config: 'config.yaml',
        tests: [
          {
            name: 'from its ranges',
            request: { remoteAddr: '66.249.66.1', userAgent: googlebot },
            expect: verified,
          },
          {
            name: 'behind the trusted proxy',
            request: { headers: { 'x-forwarded-for': '66.249.66.1' }, userAgent: googlebot },
            expect: verified,
          },
          {
            name: 'from elsewhere',
            request: { remoteAddr: '203.0.113.9', userAgent: googlebot },
            expect: claimed,
          },
          {
            name: 'its ranges named by an untrusted peer',
            request: {
              remoteAddr: '203.0.113.9',
              headers: { 'x-forwarded-for': '66.249.66.1' },
              userAgent: googlebot,
            },
            expect: claimed,
          },
        ],
      }),
    )
    const r = await run([join(dir, 'crawlers.test.yaml')])
    t.equal(r.code, 0, r.text)
    t.match(r.text, /# 4 tests, 4 passed, 0 failed/)
  },
)

t.test('a subject with two CNs is named as the live proxy names it, mTLS or forwarded', async (t) => {
  const dir = scratchDirSync('ruletest-multi-cn')
  // the forwarded case comes from 127.0.0.1 (no remoteAddr): the proxy in front, trusted for XFCC
  writeFileSync(
    join(dir, 'config.yaml'),
    'upstream: http://127.0.0.1:3000\nforwardedClientCert: { trustedProxies: [127.0.0.1/32], format: xfcc }\n',
  )
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

t.test(
  'a forwarded Subject the live proxy reads as malformed is malformed in rule tests and explain too',
  async (t) => {
    const upstream = await startUpstream()
    t.teardown(() => upstream.close())
    const sidecar = await startTestSidecar(t, {
      upstream: upstream.url,
      forwardedClientCert: { trustedProxies: ['127.0.0.2/32'], format: 'xfcc' },
      // the live proxy matches the Subject with its hex pairs of UTF-8 written out
      identities: [{ name: 'acme/{w}', kind: 'service', match: { cert: { subject: 'CN=Ω-{w},O=acme' } } }],
    })
    const fromEnvoy = new Agent({ localAddress: '127.0.0.2' })
    t.teardown(() => fromEnvoy.close())
    const ua = 'curl/8.5.0'
    const dns = 'worker.acme.example'
    const sha256 = 'ab'.repeat(32)
    const subjects = [
      { label: 'hex pairs that are not UTF-8', subject: 'CN=\\FF\\FE-worker,O=acme', malformed: true },
      { label: 'a BER-valued CN', subject: 'CN=#0C03616263,O=acme', malformed: true },
      { label: 'hex pairs of UTF-8', subject: 'CN=\\CE\\A9-worker,O=acme', malformed: false },
    ]
    const xfcc = (subject: string) => `Hash=${sha256};Subject="${subject}";DNS=${dns}`

    // what the live proxy makes of each, from the trusted Envoy's address
    const live: { identity: string; source: string; verified: boolean }[] = []
    for (const { subject } of subjects) {
      const res = await request(`${sidecar.proxyUrl}/echo`, {
        dispatcher: fromEnvoy,
        headers: { 'x-forwarded-client-cert': xfcc(subject), 'user-agent': ua },
      })
      t.equal(res.statusCode, 200)
      const seen = JSON.parse(await res.body.text()).headers as Record<string, string>
      live.push({
        identity: decodeURIComponent(seen['x-nhi-identity']!),
        source: seen['x-nhi-source']!,
        verified: seen['x-nhi-verified'] === 'true',
      })
    }
    t.same(
      live.map((l) => `${l.identity} ${l.source}`),
      ['ua:curl useragent', 'ua:curl useragent', 'acme/worker xfcc'],
      'live: the element that names nothing is dropped, the request attributed by its user agent',
    )
    const samples = await scrapeUntil(
      sidecar.adminUrl,
      (s) => metricValue(s, 'nhi_auth_failures_total', { source: 'xfcc', reason: 'malformed' }) >= 2,
      'two malformed XFCC failures',
    )
    t.equal(metricValue(samples, 'nhi_auth_failures_total', { source: 'xfcc', reason: 'malformed' }), 2)

    // the same certificates as rule test cases, expecting what the live proxy gave
    const dir = scratchDirSync('ruletest-forwarded-subject')
    const cert = (subject: string) => ({ subject, dns: [dns], sha256, forwarded: true })
    const tests = subjects.map(({ label, subject }, i) => ({
      name: label,
      request: { remoteAddr: '127.0.0.2', userAgent: ua, cert: cert(subject) },
      expect: live[i],
    }))
    tests.push({
      name: 'expecting the forwarded certificate',
      request: { remoteAddr: '127.0.0.2', userAgent: ua, cert: cert(subjects[0]!.subject) },
      expect: { identity: dns, source: 'xfcc', verified: true },
    })
    const file = join(dir, 'forwarded-subject.test.yaml')
    writeFileSync(file, stringify({ config: sidecar.configPath, tests }))
    const r = await run([file])
    t.equal(r.code, 1, r.text)
    t.match(r.text, /^ok 1 - hex pairs that are not UTF-8$/m, 'named as the live proxy names it')
    t.match(r.text, /^ok 2 - a BER-valued CN$/m, 'named as the live proxy names it')
    t.match(r.text, /^ok 3 - hex pairs of UTF-8$/m, 'its subject matched as the live proxy matches it')
    t.match(r.text, /^not ok 4 - expecting the forwarded certificate$/m, 'the certificate names nothing')
    t.match(
      r.text,
      /^ {2}not verified: xfcc malformed: x-forwarded-client-cert Subject has hex escapes that are not UTF-8$/m,
      'the failure is reported as a bad token is',
    )
    t.match(r.text, /# 4 tests, 3 passed, 1 failed/)

    // explain, with the header as the live proxy got it
    for (const [i, { label, subject, malformed }] of subjects.entries()) {
      const e = await runCli([
        'explain',
        '-c',
        sidecar.configPath,
        '-H',
        `x-forwarded-client-cert: ${xfcc(subject)}`,
        '--ua',
        ua,
        '--remote-addr',
        '127.0.0.2',
        '--json',
      ])
      t.equal(e.code, 0, e.stderr)
      const report = JSON.parse(e.stdout) as {
        identity: { name: string; source: string; verified: boolean }
        evidence: { failures?: { source: string; reason: string }[] }
      }
      const { name, source, verified } = report.identity
      t.same({ identity: name, source, verified }, live[i], `explain: ${label} named as live`)
      t.same(
        (report.evidence.failures ?? []).map((f) => `${f.source} ${f.reason}`),
        malformed ? ['xfcc malformed'] : [],
        `explain: ${label}`,
      )
    }
  },
)
