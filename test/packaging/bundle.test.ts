// The bundle (dist/nhi-proxy.mjs, the package's bin and the image's entrypoint) through every command path
// it loads lazily — check, explain, rule tests, schema, demo — and the run path's lazily loaded HTTP client
// fetching a JWKS over real HTTP. A dynamic import that resolves to something unusable in the bundle (and
// only there) fails here. Also the command line's consistency: durations, explain without -c, a busy
// address named, files the config names checked.
import { readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import {
  assertExplainedVerified,
  assertProxiedVerified,
  BUNDLE,
  bundleBuilt,
  jwtScenario,
  startProcess,
} from '../helpers/artifact.ts'
import { eventually } from '../helpers/eventually.ts'
import { scratchDirSync } from '../helpers/scratch.ts'
import { REPO_ROOT, run } from '../helpers/tools.ts'

t.setTimeout(240_000)
// the subtests share nothing (each its own processes, ephemeral ports and temp dirs) and spend most of their
// time waiting on a child process, the demo for the whole of its --duration: run side by side
t.jobs = 4

const bin = (args: string[], opts: { cwd?: string; timeoutMs?: number } = {}) =>
  run(process.execPath, [BUNDLE, ...args], { timeoutMs: 60_000, ...opts })

function tempDir(t: Test): string {
  const dir = scratchDirSync('bundle')
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** the exit code, or 'still running' when the process outlives `ms` */
async function exitWithin(
  exited: Promise<number | null>,
  ms: number,
): Promise<number | null | 'still running'> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<'still running'>((resolve) => {
    timer = setTimeout(() => resolve('still running'), ms)
  })
  try {
    return await Promise.race([exited, late])
  } finally {
    clearTimeout(timer)
  }
}

if (bundleBuilt(t)) {
  // first: the longest, mostly waiting for its --duration while the others run
  t.test(
    'demo (lazily loaded) verifies its identity provider over HTTP and stops after --duration 5s',
    async (t) => {
      const ephemeral = '127.0.0.1:0'
      const args = [
        'demo',
        '--listen',
        ephemeral,
        '--https',
        ephemeral,
        '--idp',
        ephemeral,
        '--admin',
        ephemeral,
      ]
      // the duration counts from the live view line on; the first verified caller shows up well under a
      // second after it, even on a loaded machine
      const proc = startProcess(t, process.execPath, [BUNDLE, ...args, '--duration', '5s'], {
        cwd: REPO_ROOT,
      })
      const [, admin] = await proc.waitFor(/live view\s+(http:\/\/\S+)\/ui/, 60_000)
      const verified = await eventually(
        async () => {
          const r = await fetch(`${admin}/identities`)
          const body = (await r.json()) as {
            identities: { name: string; source: string; verified: boolean }[]
          }
          return body.identities.find((i) => i.source === 'jwt' && i.verified)
        },
        { timeoutMs: 4_500, what: 'a demo caller verified by its JWT' },
      )
      t.ok(verified, `demo token verified against the demo JWKS: ${verified.name}`)
      const code = await exitWithin(proc.exited, 60_000)
      t.equal(code, 0, 'the demo stops by itself after --duration 5s')
    },
  )

  t.test('help and version', async (t) => {
    const [help, version] = await Promise.all([bin(['--help']), bin(['--version'])])
    t.equal(help.code, 0, help.stderr)
    for (const cmd of ['run', 'check', 'explain', 'test', 'demo', 'schema']) {
      t.match(help.stdout, new RegExp(`\\n\\s+${cmd}\\b`))
    }
    const pkg = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }
    t.equal(version.stdout.trim(), pkg.version)
  })

  t.test('check (lazily loaded) validates the shipped config', async (t) => {
    const r = await bin(['check', 'config/nhi-proxy.yaml'])
    t.equal(r.code, 0, r.stdout + r.stderr)
    t.match(r.stdout, /^config\/nhi-proxy\.yaml: ok \(/m)
  })

  t.test('rule tests (lazily loaded) pass on the shipped examples', async (t) => {
    const examples = [
      'github-actions-jobs',
      'kubernetes-sidecar',
      'mesh-xfcc',
      'policy-enforce',
      'public-api-with-bots',
    ].map((n) => `config/examples/${n}.test.yaml`)
    const r = await bin(['test', ...examples])
    t.equal(r.code, 0, r.stdout + r.stderr)
    t.match(r.stdout, /# (\d+) tests, \1 passed, 0 failed/)
  })

  t.test('schema (lazily loaded) prints the shipped JSON Schema', async (t) => {
    const r = await bin(['schema'])
    t.equal(r.code, 0, r.stderr)
    t.equal(r.stdout, readFileSync(join(REPO_ROOT, 'schema', 'nhi-proxy.schema.json'), 'utf8'))
  })

  t.test('explain (lazily loaded) works without -c, on the built-in defaults', async (t) => {
    const [help, r] = await Promise.all([
      bin(['explain', '--help']),
      bin(['explain', '--ua', 'Mozilla/5.0 (compatible; GPTBot/1.2; +https://openai.com/gptbot)']),
    ])
    t.match(
      help.stdout,
      /-c, --config <file>\s+config file \(default: \$NHI_PROXY_CONFIG; none →\s+built-in defaults\)/,
    )
    t.notMatch(help.stdout, /required/)
    t.equal(r.code, 0, r.stdout + r.stderr)
    t.match(r.stdout, /kind=agent source=useragent verified=false/)
    t.match(r.stdout, /note: no config file \(-c\): built-in defaults/)
  })

  t.test('explain --token verifies against a JWKS fetched over HTTP', async (t) => {
    const s = await jwtScenario(t)
    const dir = tempDir(t)
    writeFileSync(join(dir, 'config.yaml'), s.config)
    const r = await bin(['explain', '-c', join(dir, 'config.yaml'), '--token', s.token, '--json'])
    t.equal(r.code, 0, r.stderr)
    assertExplainedVerified(t, r.stdout, s)
  })

  t.test('run: a token verified through a JWKS over HTTP reaches the upstream attributed', async (t) => {
    const s = await jwtScenario(t)
    const dir = tempDir(t)
    // the drain delay shortened from its 5 s default: the stop still goes through the delay and the drain
    writeFileSync(join(dir, 'config.yaml'), `${s.config}timeouts: { drainDelay: 500ms }\n`)
    const proc = startProcess(t, process.execPath, [BUNDLE, 'run', '-c', join(dir, 'config.yaml')], {
      cwd: REPO_ROOT,
    })
    await assertProxiedVerified(t, proc, s)
    await proc.stop()
    t.equal(await proc.exited, 0, 'SIGTERM drains and exits 0')
  })

  t.test('demo --duration rejects what is not a duration, or more than a timer holds', async (t) => {
    const [bad, long] = await Promise.all([
      bin(['demo', '--duration', '20x']),
      // 30 days is more than a timer holds: it used to fire at once, ending the demo after its banner
      bin(['demo', '--duration', '30d']),
    ])
    t.equal(bad.code, 1)
    t.match(bad.stderr, /--duration <duration>' argument '20x' is invalid\. expected a duration such as 20s/)
    t.equal(long.code, 1)
    t.match(long.stderr, /argument '30d' is invalid\. at most 24d/)
  })

  t.test('a bug that escapes every handler: one internal_error line, exit 3', async (t) => {
    // the bug is planted from outside: a preload whose SIGUSR2 handler throws, once the proxy is serving
    const plant = `data:text/javascript,${encodeURIComponent(
      "process.on('SIGUSR2', () => { throw new Error('planted bug') })",
    )}`
    const p = startProcess(t, process.execPath, [
      '--import',
      plant,
      BUNDLE,
      'run',
      '--listen',
      '127.0.0.1:0',
      '--admin',
      '127.0.0.1:0',
    ])
    await p.waitFor(/"event":"started"/)
    p.child.kill('SIGUSR2')
    t.equal(
      await exitWithin(p.exited, 10_000),
      3,
      'exit 3: apart from invalid config (1) and runtime failure (2)',
    )
    const line = p
      .output()
      .split('\n')
      .find((l) => l.includes('"internal_error"'))
    t.ok(line, 'one internal_error line')
    const parsed = JSON.parse(line ?? '{}') as { level?: number; err?: { message?: string; stack?: string } }
    t.equal(parsed.level, 60, 'at level fatal')
    t.equal(parsed.err?.message, 'planted bug', 'with the error')
    t.match(parsed.err?.stack, /planted bug/, 'and its stack')
  })

  t.test('a busy address is named', async (t) => {
    const blocker = createServer()
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r))
    t.teardown(() => blocker.close())
    const port = (blocker.address() as { port: number }).port
    const r = await bin(['run', '--listen', `127.0.0.1:${port}`, '--admin', '127.0.0.1:0'])
    t.equal(r.code, 2, 'runtime failure → 2')
    t.match(r.stderr, `nhi-proxy: cannot listen on 127.0.0.1:${port}: address in use`)
  })

  t.test('check reports missing files the config names at FILE:LINE:COL', async (t) => {
    const dir = tempDir(t)
    writeFileSync(join(dir, 'jwks.json'), '{"keys": []}')
    writeFileSync(join(dir, 'secret'), 'a shared secret of some length')
    const config = (file: (name: string) => string) =>
      [
        'jwt:',
        '  issuers:',
        '    - issuer: https://issuer.example.com',
        `      jwksFile: ${file('jwks.json')}`,
        `      secretFile: ${file('secret')}`,
        '      algorithms: [HS256]',
        '      audiences: [app]',
        '    - issuer: https://cluster.example.com',
        '      jwksUri: https://cluster.example.com/keys',
        `      caFile: ${file('ca.crt')}`,
        `      bearerTokenFile: ${file('token')}`,
        '      audiences: [app]',
        '',
      ].join('\n')
    writeFileSync(join(dir, 'ca.crt'), 'not checked for content')
    writeFileSync(join(dir, 'token'), 'sa-token')
    writeFileSync(
      join(dir, 'present.yaml'),
      config((n) => n),
    )
    writeFileSync(
      join(dir, 'missing.yaml'),
      config((n) => `./typo-${n}`),
    )
    // an absolute path in a directory that does not exist here is mounted where the sidecar runs
    writeFileSync(
      join(dir, 'elsewhere.yaml'),
      config((n) => (n === 'ca.crt' || n === 'token' ? `/var/run/nhi-test-absent-mount/${n}` : n)),
    )
    const [ok, missing, elsewhere] = await Promise.all([
      bin(['check', 'present.yaml'], { cwd: dir }),
      bin(['check', 'missing.yaml'], { cwd: dir }),
      bin(['check', 'elsewhere.yaml'], { cwd: dir }),
    ])
    t.equal(ok.code, 0, ok.stdout)

    t.equal(missing.code, 1, 'missing files are errors')
    t.match(missing.stdout, 'missing.yaml:4:17 jwksFile "./typo-jwks.json": file not found')
    t.match(missing.stdout, 'missing.yaml:5:19 secretFile "./typo-secret": file not found')
    t.match(missing.stdout, 'missing.yaml:10:15 caFile "./typo-ca.crt": file not found')
    t.match(missing.stdout, 'missing.yaml:11:24 bearerTokenFile "./typo-token": file not found')
    t.match(missing.stdout, /^missing\.yaml: 4 errors$/m)

    t.equal(elsewhere.code, 0, elsewhere.stdout)
    t.notMatch(elsewhere.stdout, /absent-mount/)
  })
}
