// The package as a user installs it: `npm pack` from a tree without dist/ (prepack must build it), the
// tarball installed into an empty directory with `npm install`, then `npx nhi-proxy` check, explain, schema
// and a short run verifying a token against a JWKS served over HTTP, at a real upstream; then a run with OTLP
// export on, to a receiver that decodes real protobuf, which needs the export thread's own file
// (dist/otlp-export-worker.mjs) to be in the package and to load from where npm installed it. The bundle
// carries every package it uses, so the package declares no dependencies and installing it installs nothing
// else.
import {
  cpSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import t from 'tap'
import {
  assertExplainedVerified,
  assertProxiedVerified,
  IDENTITY,
  jwtScenario,
  startProcess,
} from '../helpers/artifact.ts'
import { eventually } from '../helpers/eventually.ts'
import { type AttrValue, CLEAN_OTEL_ENV, startCollector } from '../helpers/otlp-collector.ts'
import { scratchDirSync } from '../helpers/scratch.ts'
import { REPO_ROOT, run } from '../helpers/tools.ts'

// packing (a bundle build) and installing take a while on a loaded machine
t.setTimeout(420_000)
// the lifecycle checks (a bundle build of their own) and the pack/install/run sequence share nothing but the
// sources they read: side by side
t.jobs = 2

interface PackedFile {
  path: string
}

const npmVersion = await run('npm', ['--version'], { timeoutMs: 30_000 })

t.test('package.json declares no runtime dependencies: the bundle carries them', async (t) => {
  const pkg = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as Record<string, unknown>
  // dist/ is an esbuild bundle that inlines every package it imports (scripts/bundle.mjs fails the build on
  // anything it would leave to node_modules). A package listed here is one every user and the image install
  // and nobody loads: install time, size and scanner findings for code that never runs. A package the code
  // uses goes to devDependencies, where the build finds it.
  for (const field of ['dependencies', 'optionalDependencies', 'peerDependencies', 'bundleDependencies']) {
    t.same(
      Object.keys((pkg[field] as Record<string, string> | undefined) ?? {}),
      [],
      `no ${field}: the bundle is self-contained, so what the code uses belongs in devDependencies`,
    )
  }
})

t.test('npm lifecycle: npm ci builds dist/, pack rebuilds it, start and test run the bundle', async (t) => {
  const { scripts } = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as {
    scripts: Record<string, string>
  }
  t.equal(scripts['build'], 'node scripts/bundle.mjs')
  t.equal(scripts['prepare'], 'node scripts/prepare.mjs', 'npm ci / npm install in a clone build dist/')
  t.equal(scripts['prepack'], 'npm run build', 'npm pack / publish build dist/ first')
  t.equal(scripts['start'], 'node dist/nhi-proxy.mjs demo', 'npm start runs the bundle')
  t.match(
    scripts['test'],
    /npm run build && node scripts\/tap-plugins\.mjs && tap$/,
    "npm test builds the bundle, then brings tap's plugin build in line, before the tests start",
  )

  // prepare builds on install and stays out of the way on pack, where prepack has just built
  const out = scratchDirSync('prepare')
  t.teardown(() => rmSync(out, { recursive: true, force: true }))
  const prepare = (npmCommand: string, dir: string) =>
    run(process.execPath, ['scripts/prepare.mjs'], {
      env: { npm_command: npmCommand, NHI_BUNDLE_OUTDIR: join(out, dir) },
      timeoutMs: 120_000,
    })
  const onCi = await prepare('ci', 'ci')
  t.equal(onCi.code, 0, onCi.stderr)
  t.ok(existsSync(join(out, 'ci', 'nhi-proxy.mjs')), 'prepare on npm ci writes the bundle')
  const onPack = await prepare('pack', 'pack')
  t.equal(onPack.code, 0, onPack.stderr)
  t.notOk(existsSync(join(out, 'pack')), 'prepare on npm pack leaves the build to prepack')
})

if (npmVersion.code !== 0) {
  t.skip(
    `npm is not available (${npmVersion.stderr.trim() || `exit ${npmVersion.code}`}): cannot pack or install`,
    async () => {},
  )
} else {
  // pack, install and the installed runs one after another (each needs what the one before made); the
  // group as a whole runs beside the lifecycle checks
  t.test('the package as a user gets it: packed, installed, run', async (t) => {
    const work = scratchDirSync('package')
    t.teardown(() => rmSync(work, { recursive: true, force: true }))
    const tree = join(work, 'tree')
    const app = join(work, 'app')
    let tarball = ''
    /** set once the tarball is installed into app/ */
    let installedOk = false

    t.test(
      'npm pack builds dist/ and ships the bundle, config/, schema/, the docs and LICENSE only',
      async (t) => {
        // the project's files as a clone has them: no dist/, so the tarball's dist/ comes from prepack
        mkdirSync(tree)
        for (const f of [
          'package.json',
          'package-lock.json',
          'README.md',
          'SECURITY.md',
          'LICENSE',
          'tsconfig.json',
        ]) {
          cpSync(join(REPO_ROOT, f), join(tree, f))
        }
        for (const d of ['src', 'scripts', 'config', 'schema', 'docs']) {
          cpSync(join(REPO_ROOT, d), join(tree, d), { recursive: true })
        }
        symlinkSync(join(REPO_ROOT, 'node_modules'), join(tree, 'node_modules'), 'dir')
        t.notOk(existsSync(join(tree, 'dist')), 'no dist/ before packing')

        const pack = await run('npm', ['pack', '--json', '--pack-destination', work, '--loglevel=error'], {
          cwd: tree,
          timeoutMs: 180_000,
        })
        t.equal(pack.code, 0, `npm pack: ${pack.stderr}`)
        if (pack.code !== 0) return
        const [info] = JSON.parse(pack.stdout.slice(pack.stdout.indexOf('['))) as {
          filename: string
          files: PackedFile[]
        }[]
        tarball = join(work, info?.filename ?? 'missing.tgz')
        t.ok(existsSync(tarball), `tarball written: ${tarball}`)
        const files = (info?.files ?? []).map((f) => f.path).sort()

        for (const f of [
          'package.json',
          'README.md',
          'LICENSE',
          'dist/nhi-proxy.mjs',
          // started as a thread by file name, so a bundler that inlined or renamed it would break export only
          'dist/otlp-export-worker.mjs',
          'config/nhi-proxy.yaml',
          'schema/nhi-proxy.schema.json',
          // what the README links to, so its links work where the package is installed
          'docs/reference.md',
          'docs/live-view.png',
          'SECURITY.md',
        ]) {
          t.ok(files.includes(f), `ships ${f}`)
        }
        t.ok(
          files.some((f) => /^dist\/chunks\/explain-[\w-]+\.mjs$/.test(f)),
          'ships the lazily loaded chunks',
        )
        const stray = files.filter(
          (f) =>
            !/^(package\.json|README\.md|SECURITY\.md|LICENSE|docs\/(reference\.md|live-view\.png)|dist\/.+\.(mjs|LEGAL\.txt)|config\/.+\.yaml|schema\/.+\.json)$/.test(
              f,
            ),
        )
        t.same(stray, [], 'nothing else: no sources, tests, bench, source maps')
        t.notOk(
          files.some((f) => f.includes('http-proxy')),
          'the http-proxy baseline forwarder is not in the package',
        )
        t.notMatch(
          readFileSync(join(tree, 'dist', 'nhi-proxy.mjs'), 'utf8'),
          /HttpProxyForwarder/,
          'nor in the bundle',
        )

        const pkg = JSON.parse(readFileSync(join(tree, 'package.json'), 'utf8')) as {
          main?: string
          bin: Record<string, string>
          exports?: Record<string, string>
          license: string
        }
        for (const target of [
          ...Object.values(pkg.bin),
          ...(pkg.main ? [pkg.main] : []),
          ...Object.values(pkg.exports ?? {}),
        ]) {
          t.ok(
            files.includes(target.replace(/^\.\//, '')),
            `package.json points at a shipped file: ${target}`,
          )
        }
        t.equal(pkg.license, 'Apache-2.0')
        t.match(
          readFileSync(join(REPO_ROOT, 'LICENSE'), 'utf8'),
          /Apache License\s+Version 2\.0, January 2004/,
        )
      },
    )

    t.test('installed from the tarball: npx nhi-proxy check, explain, schema, run', async (t) => {
      if (!tarball || !existsSync(tarball)) {
        t.fail('no tarball to install (npm pack failed above)')
        return
      }
      mkdirSync(app)
      writeFileSync(join(app, 'package.json'), '{ "name": "nhi-proxy-user", "private": true }\n')
      // --prefer-offline: should a dependency ever come back, from the local cache where it has it
      const install = await run(
        'npm',
        ['install', '--no-audit', '--no-fund', '--prefer-offline', '--loglevel=error', tarball],
        {
          cwd: app,
          timeoutMs: 240_000,
        },
      )
      t.equal(install.code, 0, `npm install <tgz>: ${install.stderr}`)
      if (install.code !== 0) return
      installedOk = true
      const installed = join(app, 'node_modules', 'nhi-proxy')
      // the bundle carries its dependencies: npm installs the package and nothing else (beside it only npm's
      // own bookkeeping), and everything below runs from that
      t.same(
        readdirSync(join(app, 'node_modules'))
          .filter((e) => e !== '.bin' && e !== '.package-lock.json')
          .sort(),
        ['nhi-proxy'],
        'node_modules holds nhi-proxy alone',
      )
      t.notOk(existsSync(join(installed, 'node_modules')), 'nor anything nested under it')
      const npx = (args: string[]) =>
        run('npx', ['--no', '--', 'nhi-proxy', ...args], { cwd: app, timeoutMs: 60_000 })

      const configs = ['config/nhi-proxy.yaml', 'config/examples/kubernetes-sidecar.yaml'].map((f) =>
        join(installed, f),
      )
      const s = await jwtScenario(t)
      writeFileSync(join(app, 'config.yaml'), s.config)
      // independent commands, started together: each is an npx and a node start, slow on a loaded machine
      const [help, check, schema, explain] = await Promise.all([
        npx(['--help']),
        npx(['check', ...configs]),
        npx(['schema']),
        npx(['explain', '-c', 'config.yaml', '--token', s.token, '--json']),
      ])
      t.equal(help.code, 0, help.stderr)
      t.match(help.stdout, /^Usage: nhi-proxy /m)

      t.equal(check.code, 0, check.stdout + check.stderr)
      t.match(check.stdout, /nhi-proxy\.yaml: ok \(/)
      for (const file of configs) {
        const ref = /\$schema=(\S+)/.exec(readFileSync(file, 'utf8'))?.[1]
        t.ok(
          ref && existsSync(resolve(dirname(file), ref)),
          `${file}: $schema ${ref} resolves in the package`,
        )
      }

      t.equal(schema.code, 0, schema.stderr)
      t.equal(schema.stdout, readFileSync(join(installed, 'schema', 'nhi-proxy.schema.json'), 'utf8'))

      t.equal(explain.code, 0, explain.stderr)
      assertExplainedVerified(t, explain.stdout, s)

      const proc = startProcess(t, 'npx', ['--no', '--', 'nhi-proxy', 'run', '-c', 'config.yaml'], {
        cwd: app,
      })
      await assertProxiedVerified(t, proc, s)
      await proc.stop()
    })

    // the installed tarball of the test above: a second pack and install would double the slowest file's time
    t.test(
      'installed from the tarball: OTLP export reaches a collector, without token material',
      async (t) => {
        if (!installedOk) {
          t.fail('no installed package (the install above failed)')
          return
        }
        const collector = await startCollector()
        t.teardown(() => collector.close())
        const s = await jwtScenario(t)
        const config = `${s.config}otlp: { endpoint: "${collector.url}", logs: true, scheduledDelay: 100ms }\n`
        writeFileSync(join(app, 'otlp.yaml'), config)
        const proc = startProcess(t, 'npx', ['--no', '--', 'nhi-proxy', 'run', '-c', 'otlp.yaml'], {
          cwd: app,
          // the runner's own OTEL_* must not redirect or turn off the export under test
          env: { ...process.env, ...CLEAN_OTEL_ENV },
        })
        await proc.waitFor(/"event":"otlp_export"/, 45_000)
        await assertProxiedVerified(t, proc, s)
        const received = s.upstream.received.find((r) => r.url === '/echo')
        const traceparent = String(received?.headers['traceparent'] ?? '')
        const traceId = traceparent.split('-')[1] ?? ''
        t.match(traceId, /^[0-9a-f]{32}$/, 'the upstream got the trace context of the request')

        const span = await eventually(
          () => collector.spans.find((sp) => sp.traceId === traceId && sp.attributes['url.path'] === '/echo'),
          { timeoutMs: 30_000, what: 'the request span at the collector' },
        ).catch((err: Error) => {
          t.fail(`${err.message}\n--- output ---\n${proc.output()}`)
          return undefined
        })
        const log = await eventually(() => collector.logs.find((l) => l.traceId === traceId), {
          timeoutMs: 30_000,
          what: 'the audit log record at the collector',
        }).catch((err: Error) => {
          t.fail(`${err.message}\n--- output ---\n${proc.output()}`)
          return undefined
        })
        t.equal(span?.kind, 2, 'a server span')
        t.equal(span?.attributes['nhi.identity'], IDENTITY, 'the span names the identity the token was given')
        t.equal(span?.attributes['nhi.verified'], true, 'verified through the JWKS over HTTP')
        t.equal(span?.attributes['nhi.source'], 'jwt')
        t.equal(span?.spanId, traceparent.split('-')[2], 'the span is the hop the upstream saw as its parent')
        t.ok(log, 'the audit record arrived as a log record of the same trace')
        t.equal(log?.spanId, span?.spanId, 'the log record belongs to the span')
        t.notMatch(proc.output(), /otlp_thread_exit/, 'the export thread did not die and restart')

        // no part of the token in anything exported: attributes, events, log bodies
        const [header = '', payload = '', signature = ''] = s.token.split('.')
        const texts: string[] = []
        const walk = (v: AttrValue | Record<string, AttrValue>): void => {
          if (typeof v === 'string') texts.push(v)
          else if (Array.isArray(v)) for (const x of v) walk(x)
          else if (v && typeof v === 'object')
            for (const [k, x] of Object.entries(v)) {
              texts.push(k)
              walk(x)
            }
        }
        for (const sp of collector.spans) {
          walk(sp.attributes)
          for (const e of sp.events) walk(e.attributes)
        }
        for (const l of collector.logs) {
          walk(l.attributes)
          walk(l.body)
        }
        t.ok(texts.length > 10, `exported attributes were inspected (${texts.length} strings)`)
        const leaked = texts.filter(
          (x) => x.includes(s.token) || x.includes(header) || x.includes(payload) || x.includes(signature),
        )
        t.same(leaked, [], 'no token material in any exported attribute or log body')
        await proc.stop()
      },
    )
  })
}
