// The runtime layout of the image, staged exactly as the Dockerfile builds it — compiled dist/,
// package*.json, config/ and production-only dependencies — then started. There is no container engine
// here, so this is what proves the image's contents can run.
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { REPO_ROOT, run } from './helpers/tools.ts'

// compiling and installing take a while on a loaded machine; the file must not hit the default limit
t.setTimeout(170_000)

const dockerfile = readFileSync(join(REPO_ROOT, 'Dockerfile'), 'utf8')
const pkg = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as {
  version: string
  devDependencies: Record<string, string>
}

t.test('runtime layout staged like the image runs', { timeout: 160_000 }, async (t) => {
  const stage = mkdtempSync(join(tmpdir(), 'nhi-image-'))
  t.teardown(() => rmSync(stage, { recursive: true, force: true }))

  // build stage: the bundle the image starts (scripts/bundle.mjs, what `npm run build` runs)
  const bundle = await run(process.execPath, [join(REPO_ROOT, 'scripts', 'bundle.mjs')], {
    cwd: REPO_ROOT,
    env: { NHI_BUNDLE_OUTDIR: join(stage, 'dist') },
    timeoutMs: 120_000,
  })
  t.equal(bundle.code, 0, `bundle: ${bundle.stdout}${bundle.stderr}`)
  if (bundle.code !== 0) return

  // runtime stage: package*.json + config/ + production dependencies, no install scripts
  for (const f of ['package.json', 'package-lock.json']) cpSync(join(REPO_ROOT, f), join(stage, f))
  if (existsSync(join(REPO_ROOT, 'config'))) {
    cpSync(join(REPO_ROOT, 'config'), join(stage, 'config'), { recursive: true })
  }
  const ci = await run(
    'npm',
    [
      'ci',
      '--omit=dev',
      '--ignore-scripts',
      '--no-audit',
      '--no-fund',
      '--prefer-offline',
      '--loglevel=error',
    ],
    { cwd: stage, timeoutMs: 120_000 },
  )
  t.equal(ci.code, 0, `npm ci --omit=dev: ${ci.stderr}`)
  for (const dev of Object.keys(pkg.devDependencies)) {
    t.notOk(existsSync(join(stage, 'node_modules', dev)), `dev dependency ${dev} is not in the image`)
  }

  const env = { NODE_ENV: 'production', HOME: join(stage, 'home') }
  const version = await run(process.execPath, ['dist/nhi-proxy.mjs', '--version'], { cwd: stage, env })
  t.equal(version.code, 0, version.stderr)
  t.equal(version.stdout.trim(), pkg.version, 'the bundled CLI starts with production deps only')

  // the image's fallback config (written by the Dockerfile) must be a valid config
  const fallback = /printf '([^']*)'/.exec(dockerfile)?.[1]
  t.ok(fallback, 'Dockerfile writes a fallback config')
  writeFileSync(join(stage, 'config.yaml'), (fallback ?? '').replace(/\\n/g, '\n'))
  const check = await run(process.execPath, ['dist/nhi-proxy.mjs', 'check', 'config.yaml'], {
    cwd: stage,
    env,
  })
  t.equal(check.code, 0, `fallback config is valid: ${check.stdout}${check.stderr}`)
})
