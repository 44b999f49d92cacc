// The image without a container engine: the runtime stage of the Dockerfile is carried out instruction by
// instruction into a staged root (WORKDIR, COPY, the RUN commands, ENV, USER), the staged tree is made
// read-only, and the image's ENTRYPOINT and CMD start as the image's non-root user with the image's
// environment. The image has no node_modules (the bundle inlines every package it uses), so the staged tree
// must not have one either, nor any directory above it that Node would search. The config "mounted" over
// /etc/nhi-proxy/config.yaml names a JWKS served over HTTP, and a token signed by it must reach a real
// upstream verified; it also turns on what the bundle loads lazily, each from a file of its own: two
// cluster workers, the JWT verification worker thread, OTLP export (its own thread) to a real collector and
// the audit on stdout. An instruction this test cannot carry out fails it (an `npm ci` included), so the
// Dockerfile and this test cannot drift apart. `node` is the image's Node major (the runtime stage's FROM
// line) from .cache/node-<major>/, which CI unpacks for every supported major (scripts/node-versions.mjs),
// copied to the staged root's /usr/local/bin as in the official images, so the entrypoint is tested on the
// Node the image has; without that build the test says so in a skip note and
// runs on the Node that runs it.
import {
  chmodSync,
  copyFileSync,
  cpSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs'
import { basename, dirname, join } from 'node:path'
import t from 'tap'
import { assertProxiedVerified, IDENTITY, jwtScenario, startProcess } from '../helpers/artifact.ts'
import { finalStage, instructions, stage as stageOf } from '../helpers/dockerfile.ts'
import { eventually } from '../helpers/eventually.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { startCollector } from '../helpers/otlp-collector.ts'
import { freshGet } from '../helpers/pod.ts'
import { scratchDirSync } from '../helpers/scratch.ts'
import { REPO_ROOT, run, skipWithout } from '../helpers/tools.ts'

// bundling takes a while on a loaded machine
t.setTimeout(300_000)

const dockerfile = readFileSync(join(REPO_ROOT, 'Dockerfile'), 'utf8')
const pkg = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }
const all = instructions(dockerfile)
const runtime = finalStage(all)
const build = stageOf(all, 'build')
/** the Node major the image runs: node:26-trixie-slim → '26' */
const imageNodeMajor = /^node:(\d+)-/.exec(runtime.find((i) => i.keyword === 'FROM')?.args ?? '')?.[1]

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
        for (const command of args.split(' && ')) runCommand(command, at)
        break
      default:
        throw new Error(`the staged image cannot carry out ${keyword} ${args}`)
    }
  }
  return image
}

// the runtime stage installs nothing: an `npm ci` there is an instruction this test refuses to carry out
function runCommand(command: string, at: (p: string) => string): void {
  const printf = /^printf '([^']*)' > (\S+)$/.exec(command)
  const mkdir = /^mkdir -p (\S+)$/.exec(command)
  if (mkdir) {
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
  // the runtime stage's steps before its COPY --from=build go on while the build runs, as a builder with
  // parallel stages does
  const building = run('npm', ['run', 'build', '--silent'], {
    env: { NHI_BUNDLE_OUTDIR: join(buildDir, 'dist') },
    timeoutMs: 120_000,
  })
  const [bundled, staged] = await Promise.all([
    building,
    stageImage(
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
  // the bundle loads Node built-ins only: no node_modules in the image, and none where Node would look for
  // one from it (every directory above the staged app, and the image's HOME), or the runs below prove nothing
  t.same(nodeModulesUnder(root), [], 'no node_modules anywhere in the image')
  const searched = [app]
  while (dirname(searched.at(-1)!) !== searched.at(-1)) searched.push(dirname(searched.at(-1)!))
  t.same(
    searched.map((d) => join(d, 'node_modules')).filter((d) => existsSync(d)),
    [],
    'no node_modules in any directory above the staged app',
  )
  for (const d of ['.node_modules', '.node_libraries']) {
    t.notOk(existsSync(join(image.env['HOME'] ?? '/', d)), `no ${d} in the image's HOME`)
  }

  // the image's command line in the image's environment and nothing else (`env -i`): `node` is the image's
  // Node major, found on PATH as the image finds its own; absolute paths are the staged root's
  t.ok(imageNodeMajor, `the runtime stage names its Node major (${runtime[0]?.args})`)
  const imageNode = join(REPO_ROOT, '.cache', `node-${imageNodeMajor}`, 'bin', 'node')
  const missing = skipWithout(
    `Node ${imageNodeMajor} (the image's) in .cache/node-${imageNodeMajor}`,
    existsSync(imageNode),
  )
  // the binary goes where the official images have it, /usr/local/bin/node of the staged root: the image's
  // user then needs no way into this checkout (a CI clone may sit under a directory only root can enter)
  const node = join(root, 'usr', 'local', 'bin', 'node')
  mkdirSync(dirname(node), { recursive: true })
  copyFileSync(missing ? process.execPath : imageNode, node)
  chmodSync(node, 0o755)
  // besides node_modules above the app and in HOME, Node looks for modules in <its prefix>/lib/node
  t.notOk(existsSync(join(dirname(dirname(node)), 'lib', 'node')), `no lib/node beside ${node}`)
  const imagePath = (arg: string) =>
    arg.startsWith('/') && existsSync(join(root, arg)) ? join(root, arg) : arg
  const envPairs = Object.entries({
    PATH: `${dirname(node)}:/usr/local/bin:/usr/bin:/bin`,
    ...image.env,
  }).map(([k, v]) => `${k}=${v}`)
  const command = (args: string[]) => ['-i', ...envPairs, ...[...image.entrypoint, ...args].map(imagePath)]
  const ENV = '/usr/bin/env'
  // without the image's Node, a visible skip in tap's summary rather than a quiet pass on another one
  t.test(
    `the entrypoint runs on the image's Node ${imageNodeMajor}`,
    {
      skip: missing
        ? `${missing} (node scripts/node-versions.mjs ${imageNodeMajor}): it runs on this Node, ${process.version}, instead`
        : false,
    },
    async (t) => {
      const r = await run(ENV, ['-i', ...envPairs, 'node', '--version'], { cwd: app })
      t.match(r.stdout, new RegExp(`^v${imageNodeMajor}\\.`), `node on the image's PATH: ${r.stdout.trim()}`)
    },
  )

  // two process starts, side by side
  const [version, fallback] = await Promise.all([
    run(ENV, command(['--version']), { cwd: app }),
    run(ENV, command(['check', '/etc/nhi-proxy/config.yaml']), { cwd: app }),
  ])
  t.equal(version.stdout.trim(), pkg.version, `the bundle starts without node_modules ${version.stderr}`)
  // the image's own /etc/nhi-proxy/config.yaml (defaults only) is a valid config
  t.same(image.cmd, ['run', '-c', '/etc/nhi-proxy/config.yaml'])
  t.equal(fallback.code, 0, `the image's default config is valid: ${fallback.stdout}${fallback.stderr}`)

  // a real config mounted over the default one, as a ConfigMap would be; then the whole tree read-only. It
  // turns on every part the bundle starts from a file of its own or loads on demand: two cluster workers
  // (each a `node dist/nhi-proxy.mjs` of its own), one JWT verification thread per worker
  // (dist/jwt-verify-worker.mjs), OTLP spans and log records from each worker's export thread
  // (dist/otlp-export-worker.mjs) to a real collector, and the audit on stdout (written by the primary). Its
  // drain delay (the time a pod's endpoints take to update, 5 s by default) shortened: the stop below still
  // goes through the delay and the drain, without sitting out the default
  const s = await jwtScenario(t)
  const collector = await startCollector()
  t.teardown(() => collector.close())
  const config = edit(s.config, [
    ['audit: { output: "off" }\n', 'audit: { output: stdout }\n'],
    ['jwt:\n', 'jwt:\n  verifyWorkers: 1\n'],
  ])
  writeFileSync(
    join(root, 'etc', 'nhi-proxy', 'config.yaml'),
    `${config}workers: 2\n` +
      `otlp: { endpoint: "${collector.url}", logs: true, scheduledDelay: 100ms }\n` +
      'timeouts: { drainDelay: 500ms }\n',
  )
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
  let stdout = ''
  proc.child.stdout?.setEncoding('utf8')
  proc.child.stdout?.on('data', (c: string) => {
    stdout += c
  })
  await assertProxiedVerified(t, proc, s)
  const started = JSON.parse((await proc.waitFor(/^\{.*"event":"started".*\}$/m))[0]) as {
    listen: string
    metrics: string
    workers?: number
  }
  t.equal(started.workers, 2, 'started as a pod of two workers')
  const admin = started.metrics.replace(/\/metrics$/, '')

  // The first new token a worker sees starts its verification thread and is verified inline meanwhile; a
  // token seen again may be answered from the cache, so each attempt carries a token never seen before, which
  // goes to the thread once it runs (however long it takes to start on a busy machine). Fresh connections go
  // to the workers in turn; /readyz shows the first worker's pool.
  const readyz = async () =>
    (await (await fetch(`${admin}/readyz`)).json()) as {
      ok: boolean
      workers?: { configured: number; ready: number; restarts: number }
      verifyPool?: { workers: number; verified: number }
    }
  const pool = await eventually(
    async () => {
      const token = await s.mint()
      const status = await freshGet(`http://${started.listen}/echo`, { authorization: `Bearer ${token}` })
      if (status !== 200) throw new Error(`a request with the token was answered ${status}`)
      const r = await readyz()
      return (r.verifyPool?.verified ?? 0) > 0 ? r : undefined
    },
    { timeoutMs: 20_000, intervalMs: 100, what: 'a token verified by the verification thread' },
  ).catch((err: Error) => {
    const logs = proc
      .output()
      .split('\n')
      .filter((l) => !l.startsWith('{"type":"audit"'))
    t.fail(`${err.message}\n--- output (audit lines left out) ---\n${logs.join('\n')}`)
    return undefined
  })
  t.ok(pool?.ok, '/readyz ok')
  t.same(pool?.workers, { configured: 2, ready: 2, restarts: 0 }, 'both workers ready, none restarted')
  t.ok((pool?.verifyPool?.workers ?? 0) >= 1, 'the verification thread (jwt-verify-worker.mjs) is running')
  const samples = await scrape(admin)
  for (const worker of ['1', '2']) {
    t.ok(
      metricValue(samples, 'nhi_worker_requests_total', { worker }) > 0,
      `worker ${worker} served requests`,
    )
  }

  const span = await eventually(
    () =>
      collector.spans.find((sp) => sp.attributes['url.path'] === '/echo' && sp.attributes['nhi.verified']),
    { timeoutMs: 30_000, what: 'a request span at the collector' },
  ).catch((err: Error) => {
    t.fail(`${err.message}\n--- output ---\n${proc.output()}`)
    return undefined
  })
  t.equal(span?.attributes['nhi.identity'], IDENTITY, 'OTLP export thread: the span names the identity')
  const log = await eventually(() => collector.logs.find((l) => l.traceId === span?.traceId), {
    timeoutMs: 30_000,
    what: "the span's audit log record at the collector",
  }).catch((err: Error) => {
    t.fail(`${err.message}\n--- output ---\n${proc.output()}`)
    return undefined
  })
  t.ok(log, 'OTLP export thread: the audit record arrived as a log record of the same trace')
  t.notMatch(proc.output(), /otlp_thread_exit/, 'no export thread died')
  const audit = await eventually(
    () => {
      const lines = stdout.split('\n').filter((l) => l.startsWith('{') && l.includes('"path":"/echo"'))
      return lines.length > 0 ? lines.map((l) => JSON.parse(l) as { identity?: string }) : undefined
    },
    { what: 'audit lines on stdout' },
  ).catch(() => [])
  t.ok(audit.length > 0, 'the audit goes to stdout')
  t.equal(audit[0]?.identity, IDENTITY, 'the audit line names the identity')

  await proc.stop()
  t.equal(await proc.exited, 0, 'SIGTERM drains and exits 0')
  t.notMatch(proc.output(), /EACCES|EROFS|permission denied/i, 'nothing tried to write to the read-only tree')
})

/** `text` with each [from, to] replaced once; a `from` that is not there throws (the scenario changed) */
function edit(text: string, changes: [string, string][]): string {
  for (const [from, to] of changes) {
    if (!text.includes(from))
      throw new Error(`the scenario's config has no ${JSON.stringify(from)}:\n${text}`)
    text = text.replace(from, to)
  }
  return text
}

/** every directory named node_modules under `dir` */
function nodeModulesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isDirectory() && e.name === 'node_modules')
    .map((e) => join(e.parentPath, e.name))
}
