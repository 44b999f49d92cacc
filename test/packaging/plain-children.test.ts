// The processes a test starts run as users start them: no test-runner preload rides along in NODE_OPTIONS
// (test/helpers/plain-children.ts says why and how). Checked for both ways the helpers start processes.
import { execFile, spawn } from 'node:child_process'
import { once } from 'node:events'
import { readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t, { type Test } from 'tap'
import { scratchDir } from '../helpers/scratch.ts'

const REPORT = `console.log(JSON.stringify({
  nodeOptions: process.env.NODE_OPTIONS ?? '',
  tracking: Object.keys(process.env).filter((k) => k.startsWith('_TAPJS_PROCESSINFO')),
  sourceMaps: process.sourceMapsEnabled,
  preloads: process.execArgv.filter((a) => /^--(import|require|loader|experimental-loader)\b/.test(a)),
}))`

interface Report {
  nodeOptions: string
  tracking: string[]
  sourceMaps: boolean
  preloads: string[]
}

function assertPlain(t: Test, r: Report, how: string): void {
  t.notMatch(r.nodeOptions, /processinfo/, `${how}: no tracking preload in NODE_OPTIONS`)
  t.same(r.tracking, [], `${how}: no tracking variables`)
  t.equal(r.sourceMaps, false, `${how}: source maps off, as in a user's node`)
  t.same(r.preloads, [], `${how}: no preload arguments`)
}

t.test('execFile with the inherited env', async (t) => {
  const { stdout } = await promisify(execFile)(process.execPath, ['-e', REPORT])
  assertPlain(t, JSON.parse(stdout) as Report, 'execFile')
})

t.test('spawn with an env of its own (the tracking hook used to add itself to it)', async (t) => {
  const child = spawn(process.execPath, ['-e', REPORT], {
    env: { ...process.env, NHI_EXAMPLE: '1' },
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  let out = ''
  child.stdout.setEncoding('utf8')
  child.stdout.on('data', (c: string) => {
    out += c
  })
  await once(child, 'close')
  assertPlain(t, JSON.parse(out) as Report, 'spawn')
})

// tap also puts the tracking preload on each test file's own command line, where it cannot be taken back. The
// `test-env` of package.json's tap block gives it an exclude pattern that matches every file, so it records
// none (coverage is off; the record serves nothing else): ≈ 0.3 s of CPU less per test file. This runs the
// preload as tap runs it, with and without that setting, and reads the record it leaves at exit.
t.test("the test processes' own tracking preload records no file", async (t) => {
  const pkg = JSON.parse(await readFile(new URL('../../package.json', import.meta.url), 'utf8')) as {
    tap: { 'test-env'?: string[] }
  }
  const setting = pkg.tap['test-env']?.find((e) => e.startsWith('_TAPJS_PROCESSINFO_EXCLUDE_='))
  t.ok(setting, 'package.json sets the exclude pattern for the test processes')
  const preload = import.meta.resolve('@tapjs/processinfo/import')
  const tap = import.meta.resolve('tap')
  const recorded = async (env: Record<string, string>): Promise<string[]> => {
    const cwd = await scratchDir('processinfo')
    t.teardown(() => rm(cwd, { recursive: true, force: true }))
    const script = join(cwd, 'loads.mjs')
    await writeFile(script, `await import('node:path'); await import(${JSON.stringify(tap)})\n`)
    await promisify(execFile)(process.execPath, [`--import=${preload}`, script], {
      env: { PATH: process.env['PATH'] ?? '', _TAPJS_PROCESSINFO_CWD_: cwd, ...env },
    })
    // where Node runs module hooks in-thread (24.13+), the preload starts its record with the first file it
    // keeps: one that keeps none writes no record at all
    const dir = join(cwd, '.tap', 'processinfo')
    const [file] = await readdir(dir).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return []
      throw err
    })
    if (file === undefined) return []
    const info = JSON.parse(await readFile(join(dir, file), 'utf8')) as { files: string[] }
    // the entry script is named in the record whatever the pattern; what the pattern stops is the rest
    return info.files.filter((f) => f !== script)
  }
  const [name, ...value] = (setting ?? '=').split('=')
  t.ok((await recorded({})).length > 10, 'without it, every loaded file is recorded (the check can fail)')
  t.same(await recorded({ [name!]: value.join('=') }), [], 'with it, none past the entry script')
})

// tap hands a test file the module hooks of the plugin set it was built with. A runner that finds that build
// out of date rebuilds it only for the next run, so `npm test` brings it in line first
// (scripts/tap-plugins.mjs); without that, the first run after `npm ci` ran every file through ts-node and
// tap's mock loader as well as the project's own type-stripping hook.
t.test('this test process carries only the module hooks of the plugins package.json keeps', async (t) => {
  const hooks = process.execArgv.filter((a) => /^--(import|loader|experimental-loader)\b/.test(a))
  t.ok(
    hooks.some((a) => a === '--import=./scripts/register-ts.mjs'),
    'the type-stripping hook is there (the check can see the hooks at all)',
  )
  t.same(
    hooks.filter((a) => /@tapjs\/(typescript|mock)\//.test(a)),
    [],
    'no ts-node and no mock loader: the plugins package.json switches off',
  )
})
