// The image without a container engine: the runtime stage of the Dockerfile is carried out instruction by
// instruction into a staged root (WORKDIR, COPY, the RUN commands, ENV, USER), the staged tree is made
// read-only, and the image's ENTRYPOINT and CMD start as the image's non-root user with the image's
// environment. The config "mounted" over /etc/nhi-proxy/config.yaml names a JWKS served over HTTP, and a
// token signed by it must reach a real upstream verified. An instruction this test cannot carry out fails
// it, so the Dockerfile and this test cannot drift apart.
import { chmodSync, cpSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { basename, dirname, join } from 'node:path'
import t, { type Test } from 'tap'
import { assertProxiedVerified, jwtScenario, startProcess } from '../helpers/artifact.ts'
import { finalStage, instructions, stage as stageOf } from '../helpers/dockerfile.ts'
import { scratchDirSync } from '../helpers/scratch.ts'
import { REPO_ROOT, run } from '../helpers/tools.ts'

// bundling and installing production dependencies take a while on a loaded machine
t.setTimeout(300_000)

const dockerfile = readFileSync(join(REPO_ROOT, 'Dockerfile'), 'utf8')
const pkg = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as {
  version: string
  devDependencies: Record<string, string>
}
const all = instructions(dockerfile)
const runtime = finalStage(all)
const build = stageOf(all, 'build')

interface Image {
  /** the staged root filesystem: image paths are `root` + path */
  root: string
  workdir: string
  env: Record<string, string>
  user?: { uid: number; gid: number }
  entrypoint: string[]
  cmd: string[]
}

/**
 * Carries out the runtime stage into `root`; `built` resolves to the directory holding the build stage's
 * WORKDIR once its build is done (undefined when it failed): only COPY --from=build waits for it.
 */
async function stageImage(
  t: Test,
  root: string,
  built: Promise<string | undefined>,
  buildWorkdir: string,
): Promise<Image> {
  const image: Image = { root, workdir: '/', env: {}, entrypoint: [], cmd: [] }
  const at = (p: string) => join(root, p.startsWith('/') ? p : join(image.workdir, p))
  for (const { keyword, args } of runtime) {
    switch (keyword) {
      case 'FROM':
      case 'EXPOSE':
        break
      case 'ENV':
        for (const kv of args.split(' ')) {
          const i = kv.indexOf('=')
          image.env[kv.slice(0, i)] = kv.slice(i + 1)
        }
        break
      case 'WORKDIR':
        image.workdir = args
        mkdirSync(at(args), { recursive: true })
        break
      case 'USER': {
        const [uid, gid] = args.split(':').map(Number)
        image.user = { uid: uid ?? Number.NaN, gid: gid ?? uid ?? Number.NaN }
        break
      }
      case 'ENTRYPOINT':
        image.entrypoint = JSON.parse(args)
        break
      case 'CMD':
        image.cmd = JSON.parse(args)
        break
      case 'COPY': {
        const words = args.split(' ')
        const from = /^--from=(\S+)$/.exec(words[0] ?? '')?.[1]
        if (from !== undefined && from !== 'build') throw new Error(`COPY from an unknown stage: ${args}`)
        const [dest = '', ...rest] = (from ? words.slice(1) : words).reverse()
        const sources = rest.reverse()
        const buildDir = from ? await built : undefined
        if (from && buildDir === undefined) throw new Error(`the build stage failed: cannot COPY ${args}`)
        for (const src of sources) {
          const source = from
            ? join(buildDir!, src.replace(new RegExp(`^${buildWorkdir}/?`), ''))
            : join(REPO_ROOT, src)
          const target = dest.endsWith('/') || sources.length > 1 ? join(at(dest), basename(src)) : at(dest)
          cpSync(source, target, { recursive: true })
        }
        break
      }
      case 'RUN':
        for (const command of args.split(' && ')) await runCommand(t, command, image, at)
        break
      default:
        throw new Error(`the staged image cannot carry out ${keyword} ${args}`)
    }
  }
  return image
}

async function runCommand(t: Test, command: string, image: Image, at: (p: string) => string): Promise<void> {
  const printf = /^printf '([^']*)' > (\S+)$/.exec(command)
  const mkdir = /^mkdir -p (\S+)$/.exec(command)
  if (command.startsWith('npm ci ')) {
    // the image's install; from the local cache where possible, the registry otherwise
    const args = [...command.split(' ').slice(1), '--prefer-offline', '--loglevel=error']
    // (the image's HOME=/tmp would mean an empty npm cache: everything from the registry)
    const env = { NODE_ENV: image.env['NODE_ENV'] }
    const r = await run('npm', args, { cwd: at(image.workdir), env, timeoutMs: 180_000 })
    t.equal(r.code, 0, `${command}: ${r.stderr}`)
  } else if (command === 'npm cache clean --force') {
    // shrinks the image layer; the staged tree has no layer, and the host's cache is not ours to clean
  } else if (mkdir) {
    mkdirSync(at(mkdir[1]!), { recursive: true })
  } else if (printf) {
    writeFileSync(at(printf[2]!), printf[1]!.replace(/\\n/g, '\n'))
  } else {
    throw new Error(`the staged image cannot carry out RUN ${command}`)
  }
}

t.test('the runtime stage, staged read-only and started as the image starts it', async (t) => {
  const work = scratchDirSync('image')
  t.teardown(() => rmSync(work, { recursive: true, force: true }))
  const buildWorkdir = build.find((i) => i.keyword === 'WORKDIR')?.args ?? '/'
  const buildDir = join(work, 'build')
  const root = join(work, 'root')
  mkdirSync(buildDir)
  mkdirSync(root)

  // build stage: its last RUN is `npm run build`; the bundle goes to the build stage's dist/
  t.ok(
    build.some((i) => i.keyword === 'RUN' && i.args === 'npm run build'),
    'the build stage runs npm run build',
  )
  // the runtime stage's steps before its COPY --from=build (its npm ci) go on while the build runs, as a
  // builder with parallel stages does
  const building = run('npm', ['run', 'build', '--silent'], {
    env: { NHI_BUNDLE_OUTDIR: join(buildDir, 'dist') },
    timeoutMs: 120_000,
  })
  const [bundled, staged] = await Promise.all([
    building,
    stageImage(
      t,
      root,
      building.then((r) => (r.code === 0 ? buildDir : undefined)),
      buildWorkdir,
    ).catch((err: Error) => err),
  ])
  t.equal(bundled.code, 0, `npm run build: ${bundled.stdout}${bundled.stderr}`)
  if (bundled.code !== 0) return
  if (staged instanceof Error) throw staged
  const image = staged
  const app = join(root, image.workdir)
  t.equal(image.workdir, '/app')
  t.same(image.env, { NODE_ENV: 'production', HOME: '/tmp' })
  t.same(image.user, { uid: 65532, gid: 65532 })
  t.same(image.entrypoint, ['node', 'dist/nhi-proxy.mjs'])
  for (const f of [
    'dist/nhi-proxy.mjs',
    // started as a worker thread by the JWT verification pool
    'dist/jwt-verify-worker.mjs',
    // started as a worker thread when OTLP export is on
    'dist/otlp-export-worker.mjs',
    'config/nhi-proxy.yaml',
    'schema/nhi-proxy.schema.json',
    'LICENSE',
  ]) {
    t.ok(existsSync(join(app, f)), `the image has /app/${f}`)
  }
  for (const dev of Object.keys(pkg.devDependencies)) {
    t.notOk(existsSync(join(app, 'node_modules', dev)), `dev dependency ${dev} is not in the image`)
  }

  // the image's command line in the image's environment and nothing else (`env -i`): `node` is this Node,
  // found on PATH as the image finds its own; absolute paths are the staged root's
  const imagePath = (arg: string) =>
    arg.startsWith('/') && existsSync(join(root, arg)) ? join(root, arg) : arg
  const envPairs = Object.entries({
    PATH: `${dirname(process.execPath)}:/usr/local/bin:/usr/bin:/bin`,
    ...image.env,
  }).map(([k, v]) => `${k}=${v}`)
  const command = (args: string[]) => ['-i', ...envPairs, ...[...image.entrypoint, ...args].map(imagePath)]
  const ENV = '/usr/bin/env'

  // two process starts, side by side
  const [version, fallback] = await Promise.all([
    run(ENV, command(['--version']), { cwd: app }),
    run(ENV, command(['check', '/etc/nhi-proxy/config.yaml']), { cwd: app }),
  ])
  t.equal(
    version.stdout.trim(),
    pkg.version,
    `the bundle starts with production dependencies only ${version.stderr}`,
  )
  // the image's own /etc/nhi-proxy/config.yaml (defaults only) is a valid config
  t.same(image.cmd, ['run', '-c', '/etc/nhi-proxy/config.yaml'])
  t.equal(fallback.code, 0, `the image's default config is valid: ${fallback.stdout}${fallback.stderr}`)

  // a real config mounted over the default one, as a ConfigMap would be; then the whole tree read-only. Its
  // drain delay (the time a pod's endpoints take to update, 5 s by default) shortened: the stop below still
  // goes through the delay and the drain, without sitting out the default
  const s = await jwtScenario(t)
  writeFileSync(join(root, 'etc', 'nhi-proxy', 'config.yaml'), `${s.config}timeouts: { drainDelay: 500ms }\n`)
  chmodSync(work, 0o755)
  const ro = await run('chmod', ['-R', 'a-w', root])
  t.equal(ro.code, 0, `chmod -R a-w: ${ro.stderr}`)
  t.teardown(() => run('chmod', ['-R', 'u+w', root]))

  const asRoot = process.getuid?.() === 0
  if (!asRoot) t.comment('not running as root: the image user cannot be switched to; running as this user')
  const proc = startProcess(t, ENV, command(image.cmd), {
    cwd: app,
    ...(asRoot && image.user ? { uid: image.user.uid, gid: image.user.gid } : {}),
  })
  if (asRoot) {
    const status = readFileSync(`/proc/${proc.child.pid}/status`, 'utf8')
    t.match(status, /^Uid:\s+65532\s+65532\s+65532\s+65532$/m, 'runs as uid 65532')
    t.match(status, /^Gid:\s+65532\s+65532\s+65532\s+65532$/m, 'runs as gid 65532')
  }
  await assertProxiedVerified(t, proc, s)
  await proc.stop()
  t.equal(await proc.exited, 0, 'SIGTERM drains and exits 0')
  t.notMatch(proc.output(), /EACCES|EROFS|permission denied/i, 'nothing tried to write to the read-only tree')
})
