// The container image, checked without a Docker engine: two Dockerfile linters and the image's contract
// (its Node, user, ports, entrypoint, no HEALTHCHECK). test/packaging/layout.test.ts starts the staged runtime.
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { validate } from 'dockerfile-utils'
import t from 'tap'
import { finalStage, instructions } from '../helpers/dockerfile.ts'
import { REPO_ROOT, run } from '../helpers/tools.ts'

const dockerfile = readFileSync(join(REPO_ROOT, 'Dockerfile'), 'utf8')

t.test('dockerfilelint finds no issues', async (t) => {
  const r = await run(join(REPO_ROOT, 'node_modules', '.bin', 'dockerfilelint'), ['Dockerfile'])
  t.equal(r.code, 0, r.stdout + r.stderr)
  t.match(r.stdout, /Issues: None found/)
})

t.test('dockerfile-utils validation is clean', async (t) => {
  t.same(validate(dockerfile), [], 'no syntax or instruction errors')
  // the validator does catch what it should, so an empty list above means something
  const broken = validate('FROM node:26-trixie-slim AS build\nCOPY --fromm=build a b\nEXPOSE http\n')
  t.equal(broken.length, 2, 'a mistyped flag and a bad port are reported')
})

t.test('image contract', async (t) => {
  const all = instructions(dockerfile)
  const froms = all.filter((i) => i.keyword === 'FROM')
  t.ok(froms.length >= 2, 'multi-stage build')
  for (const f of froms) t.match(f.args, /^node:\d+-[a-z]+-slim\b/, `slim Node image: ${f.args}`)
  const major = (s: string) => Number(/^node:(\d+)/.exec(s)?.[1])
  t.ok(
    froms.every((f) => major(f.args) % 2 === 0 && major(f.args) >= 22),
    'an even-numbered (LTS) Node major',
  )
  // the current LTS is the newest major the package supports; the bundle is built on the Node it runs on
  const image = froms.at(-1)!.args.split(' ')[0]!
  t.same(
    froms.map((f) => f.args.split(' ')[0]),
    froms.map(() => image),
    `both stages on ${image}`,
  )
  const engines = (
    JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { engines: { node: string } }
  ).engines.node
  const supported = [...engines.matchAll(/\^(\d+)\./g)].map((m) => Number(m[1]))
  t.equal(major(image), Math.max(...supported), `the newest Node major of engines (${engines})`)
  // CI runs the whole suite on it, and layout.test.ts starts the image's entrypoint on it
  const ciMajors = /^EXTRA_NODE_MAJORS=\(([\d ]+)\)$/m.exec(
    readFileSync(join(REPO_ROOT, '.ci', 'run'), 'utf8'),
  )?.[1]
  t.ok(
    ciMajors?.split(' ').map(Number).includes(major(image)),
    `.ci/run fetches Node ${major(image)} (${ciMajors})`,
  )
  t.ok(
    all.some((i) => i.keyword === 'RUN' && /npm ci\b/.test(i.args) && !/--omit=dev/.test(i.args)),
    'build stage installs dev dependencies to compile',
  )
  t.ok(
    all.some((i) => i.keyword === 'RUN' && /npm run build/.test(i.args)),
    'build stage runs npm run build',
  )
  const firstInstall = all.findIndex((i) => i.keyword === 'RUN' && /npm ci\b/.test(i.args))
  const copiesSrc = all.findIndex((i) => i.keyword === 'COPY' && /^src\b/.test(i.args))
  t.ok(
    firstInstall < copiesSrc && /--ignore-scripts/.test(all[firstInstall]?.args ?? ''),
    "the build stage installs with --ignore-scripts: the package's prepare would build before src/ is there",
  )

  const last = finalStage(all)
  const lastRun = last.filter((i) => i.keyword === 'RUN').map((i) => i.args)
  // the bundle inlines every package it uses (package.json has no dependencies, see package.test.ts): the
  // runtime stage installs nothing and carries no node_modules
  t.same(
    lastRun.filter((r) => /\b(npm|npx|yarn|pnpm|corepack)\b/.test(r)),
    [],
    'runtime stage installs nothing (no npm ci, no package manager at all)',
  )
  const lastCopies = last.filter((i) => i.keyword === 'COPY' || i.keyword === 'ADD').map((i) => i.args)
  t.same(
    lastCopies.filter((c) => /node_modules|package(-lock)?\.json/.test(c)),
    [],
    'runtime stage copies no node_modules and no package.json or lock (the version is in the bundle)',
  )
  t.ok(
    last.some((i) => i.keyword === 'COPY' && /--from=build\s+\S*dist\b/.test(i.args)),
    'runtime copies dist/ from the build stage',
  )
  t.ok(
    last.some((i) => i.keyword === 'COPY' && /^config\b/.test(i.args)),
    'runtime copies config/',
  )
  const users = last.filter((i) => i.keyword === 'USER')
  t.equal(users.length, 1)
  t.match(users[0]?.args, /^[1-9]\d*(:[1-9]\d*)?$/, 'numeric non-root user (runAsNonRoot can verify it)')
  t.notOk(
    all.some((i) => i.keyword === 'HEALTHCHECK'),
    'no HEALTHCHECK: Kubernetes probes do that',
  )
  const exposed = last
    .filter((i) => i.keyword === 'EXPOSE')
    .flatMap((i) => i.args.split(/\s+/))
    .sort()
  t.same(exposed, ['8080', '8443', '9464'])
  t.same(JSON.parse(last.find((i) => i.keyword === 'ENTRYPOINT')?.args ?? 'null'), [
    'node',
    'dist/nhi-proxy.mjs',
  ])
  t.same(JSON.parse(last.find((i) => i.keyword === 'CMD')?.args ?? 'null'), [
    'run',
    '-c',
    '/etc/nhi-proxy/config.yaml',
  ])
  // nothing in the runtime stage writes outside /tmp at run time; volumes would be writable layers
  t.notOk(
    last.some((i) => i.keyword === 'VOLUME'),
    'no VOLUME (read-only root fs plus an emptyDir /tmp)',
  )

  const ignore = readFileSync(join(REPO_ROOT, '.dockerignore'), 'utf8').split('\n')
  for (const p of ['node_modules', 'dist', '.git', '.tools', 'test']) {
    t.ok(ignore.includes(p), `.dockerignore excludes ${p}`)
  }
  t.ok(
    last.some((i) => i.keyword === 'COPY' && /^schema\b/.test(i.args)),
    "runtime copies schema/ (the configs' $schema references)",
  )
  t.ok(
    last.some((i) => i.keyword === 'COPY' && /^LICENSE\b/.test(i.args)),
    'runtime copies LICENSE',
  )
})

t.test('every file the Dockerfile copies from the build context is in the context', async (t) => {
  const rules = readFileSync(join(REPO_ROOT, '.dockerignore'), 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'))
  const matches = (pattern: string, path: string) =>
    pattern.startsWith('*.')
      ? path.endsWith(pattern.slice(1))
      : path === pattern || path.startsWith(`${pattern}/`)
  /** .dockerignore semantics: the last matching rule wins, `!` re-includes */
  const ignored = (path: string) => {
    let out = false
    for (const r of rules) {
      if (r.startsWith('!') ? matches(r.slice(1), path) : matches(r, path)) out = !r.startsWith('!')
    }
    return out
  }
  const copies = instructions(dockerfile).filter((i) => i.keyword === 'COPY' && !/--from=/.test(i.args))
  t.ok(copies.length >= 5, 'the build and runtime stages copy from the context')
  for (const c of copies) {
    const sources = c.args.split(' ').slice(0, -1)
    for (const src of sources) {
      t.ok(existsSync(join(REPO_ROOT, src)), `${src} exists`)
      t.notOk(ignored(src), `${src} is not excluded by .dockerignore`)
    }
  }
  t.ok(ignored('test/x.test.ts') && ignored('README.md') && !ignored('src/cli/main.ts'), 'the matcher works')
})
