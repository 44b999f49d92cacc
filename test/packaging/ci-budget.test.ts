// .ci/run leaves out an extra Node version whose whole `npm test` would not end inside CI's 90 minutes (a job
// the limit cuts off reports nothing), and says so. The decision is scripts/ci-budget.mjs, run as .ci/run runs it.
import { readFileSync } from 'node:fs'
import { chmod, copyFile, mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { scratchDir } from '../helpers/scratch.ts'
import { REPO_ROOT, run } from '../helpers/tools.ts'

const SCRIPT = join(REPO_ROOT, 'scripts', 'ci-budget.mjs')

const budget = (...args: string[]) => run(process.execPath, [SCRIPT, ...args])

t.test('a run that ends inside the budget fits, silently', async (t) => {
  // 20 min used, runs of 17 min (20.4 with the margin): ends at 40.4 of 84
  t.same(await budget('1200', '1020'), { code: 0, stdout: '', stderr: '' })
  // one second inside the budget fits: 1199 + 3200 × 1.2 = 5039
  t.equal((await budget('1199', '3200', '5040')).code, 0)
})

t.test('a run that would pass the budget does not fit, and the line says why', async (t) => {
  // three runs of 17 min done (51 min): a fourth ends at ≈ 71.4 min of 84, fits; of 60, does not
  t.equal((await budget('3060', '1020')).code, 0)
  const out = await budget('3060', '1020', '3600')
  t.equal(out.code, 3)
  t.match(
    out.stdout,
    /^51\.0 min used, the longest run took 17\.0 min: another would end after ≈ 71\.4 min, past the 60\.0 min budget\n$/,
  )
  // ending at the budget itself is past it: 1200 + 3840 = 5040
  t.equal((await budget('1200', '3200', '5040')).code, 3)
  // a budget of 0 admits nothing, not even after runs that took no time (whole seconds)
  t.equal((await budget('0', '0', '0')).code, 3)
})

t.test('the default budget leaves 6 of the 90 minutes', async (t) => {
  t.equal((await budget('0', '4199')).code, 0, '69.98 min × 1.2 ends just inside 84 min')
  t.equal((await budget('0', '4200')).code, 3, '70 min × 1.2 ends at 84 min')
})

t.test('arguments that are not whole seconds are a usage error', async (t) => {
  for (const args of [[], ['10'], ['10', 'x'], ['10', '-5'], ['1.5', '10'], ['1', '2', '3', '4']]) {
    const out = await budget(...args)
    t.equal(out.code, 2, `args ${JSON.stringify(args)}`)
    t.match(out.stderr, /^usage: node scripts\/ci-budget\.mjs USED_SECONDS LONGEST_RUN_SECONDS/)
  }
})

t.test('.ci/run asks before every extra Node version, not before the first run', async (t) => {
  const run = readFileSync(join(REPO_ROOT, '.ci', 'run'), 'utf8')
  const loop = /^for major in "\$\{EXTRA_NODE_MAJORS\[@\]\}"; do\n([\s\S]*?)^done$/m.exec(run)?.[1] ?? ''
  t.match(
    loop,
    /node scripts\/ci-budget\.mjs "\$\(\(SECONDS - ci_started\)\)" "\$longest_run"/,
    'the loop consults the budget',
  )
  const ask = loop.indexOf('ci-budget.mjs')
  const suite = loop.indexOf('run_suite')
  t.ok(ask !== -1 && suite !== -1 && ask < suite, 'before the run it decides on')
  t.match(run, /^run_suite\n/m, 'the machine’s own Node runs unconditionally')
  t.match(run, /echo "ci: not run[^"]*"/, 'a left-out version is named in the log')
})

/**
 * .ci/run itself, in a scratch copy of the repository's layout: `npm` is a stand-in whose `test` prints a tap
 * summary of 10 passes and notes which Node directory led PATH, the install and unpack steps are stand-ins,
 * and the budget comes from NHI_CI_BUDGET_SECONDS
 */
async function ciRun(budgetSeconds: number): Promise<{ code: number; out: string; runs: string[] }> {
  const dir = await scratchDir('ci-budget')
  const bin = join(dir, 'bin')
  await mkdir(join(dir, '.ci'), { recursive: true })
  await mkdir(join(dir, 'scripts'), { recursive: true })
  await mkdir(bin, { recursive: true })
  await copyFile(join(REPO_ROOT, '.ci', 'run'), join(dir, '.ci', 'run'))
  await copyFile(SCRIPT, join(dir, 'scripts', 'ci-budget.mjs'))
  await writeFile(join(dir, 'scripts', 'tools.mjs'), '')
  await writeFile(join(dir, 'scripts', 'node-versions.mjs'), '')
  const stub = async (name: string, body: string) => {
    await writeFile(join(bin, name), `#!/usr/bin/env bash\n${body}\n`)
    await chmod(join(bin, name), 0o755)
  }
  for (const tool of ['prometheus', 'promtool', 'wrk', 'nginx', 'apt-get']) await stub(tool, 'exit 0')
  await stub(
    'npm',
    `[ "$1" = test ] || exit 0
echo "\${PATH%%:*}" >> "${join(dir, 'runs.log')}"
echo "# { total: 10, pass: 10, fail: 0 }"`,
  )
  const { code, stdout: out } = await run('bash', [join(dir, '.ci', 'run')], {
    env: { PATH: `${bin}:${process.env.PATH}`, NHI_CI_BUDGET_SECONDS: String(budgetSeconds) },
  })
  const runs = (await readFile(join(dir, 'runs.log'), 'utf8').catch(() => '')).split('\n').filter(Boolean)
  return {
    code,
    out,
    runs: runs.map((p) => (p === bin ? 'machine' : (/node-(\d+)\/bin$/.exec(p)?.[1] ?? p))),
  }
}

t.test('.ci/run: with time to spare, every version runs, newest first after the machine’s', async (t) => {
  const { code, out, runs } = await ciRun(100_000)
  t.equal(code, 0)
  t.same(runs, ['machine', '26', '24', '22'])
  t.notMatch(out, /not run/)
  t.match(out, /\n40 passed, 0 failed\n$/, 'the closing line sums the four runs')
})

t.test('.ci/run: without the time for another run, the extra versions are left out and named', async (t) => {
  const { code, out, runs } = await ciRun(0)
  t.equal(code, 0, 'what ran passed: the job passes')
  t.same(runs, ['machine'], 'only the machine’s own Node ran')
  for (const major of ['26', '24', '22'])
    t.match(
      out,
      new RegExp(
        `ci: not run on node ${major}: .* min used, the longest run took .* past the 0\\.0 min budget`,
      ),
    )
  t.match(
    out,
    /ci: left out to end inside the time limit:\n {2}node 26: [^\n]+\n {2}node 24: [^\n]+\n {2}node 22: [^\n]+\n10 passed, 0 failed\n$/,
  )
})
