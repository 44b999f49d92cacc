// The README's commands, run as a reader would run them, so the README cannot drift from the product. Every
// ```sh block of the five-minute guide and of "Provoke every anomaly" runs against the built bundle: `npx
// nhi-proxy` becomes `node dist/nhi-proxy.mjs`, the well-known ports (8080, 8443, 9464, 9400) become free
// loopback ports and the placeholder upstream http://127.0.0.1:3000 a real test upstream. A ```yaml block
// whose first line is `# <file>.yaml` is written to that file first. Long-running commands (`run`, `demo`,
// `demo-idp`) start in the background; the other lines of a block run as one `sh -e` script, so a failing
// command fails the test. Every other ```sh command in the README must be listed in SKIPPED with the reason.
import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { symlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { parse } from 'yaml'
import { eventually } from '../helpers/eventually.ts'
import { freePort } from '../helpers/net.ts'
import { scratchDir } from '../helpers/scratch.ts'
import { assertFreshBundle, BUNDLE, combinedOutput, ROOT } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

/** Sections whose commands run; `setup` is what the section's prose tells the reader to have running. */
const TESTED: Array<{ heading: string; setup?: string }> = [
  { heading: '## Five-minute guide' },
  {
    heading: '### Provoke every anomaly',
    setup:
      'npx nhi-proxy demo --listen 127.0.0.1:8080 --https 127.0.0.1:8443 --admin 127.0.0.1:9464 --idp 127.0.0.1:9400 --rate 1',
  },
]

/** Commands elsewhere in the README that do not run here, and why (reviewed; a stale entry fails the test). */
const SKIPPED: Record<string, string> = {
  'npm ci && npm start':
    'installs the dependencies (done before any test runs) and starts `nhi-proxy demo`, which this test and e2e-demo run',
  'npm test': 'the test suite itself',
  'OTEL_EXPORTER_OTLP_ENDPOINT=http://otel-collector:4318 nhi-proxy run -c nhi-proxy.yaml':
    'needs a collector at that address (otlp-export starts sidecars exporting to a real OTLP receiver)',
  'docker build -t registry.example.com/nhi-proxy:0.1.0 .':
    'needs a container engine (the image layout is staged and started by packaging-docker)',
  'docker push registry.example.com/nhi-proxy:0.1.0': 'needs a container engine and a registry',
  'helm install checkout-nhi ./helm/nhi-proxy --namespace shop --set image.repository=registry.example.com/nhi-proxy --set upstream=http://checkout.shop.svc:8080 --set serviceName=checkout':
    'needs a Kubernetes cluster (helm-chart renders the chart and dry-runs it through kubectl)',
  'helm install shop ./helm/nhi-proxy -n shop -f helm/nhi-proxy/examples/sidecar-values.yaml --set image.repository=registry.example.com/nhi-proxy':
    'needs a Kubernetes cluster (helm-chart renders the sidecar example)',
  'kubectl -n shop port-forward deploy/shop-nhi-proxy 9464': 'needs a Kubernetes cluster',
  'open http://127.0.0.1:9464/ui': 'opens a browser through the port-forward to a cluster',
  'curl http://127.0.0.1:9464/metrics': 'through the port-forward to a cluster',
  'npm ci': 'installs the dependencies (done before any test runs)',
  'nhi-proxy inventory --prometheus http://prometheus.monitoring:9090 --window 7d --csv > nhi-inventory.csv':
    'needs a Prometheus scraping a fleet (fleet-inventory runs inventory against a real one scraping three sidecars)',
  'nhi-proxy fleet --prometheus http://prometheus.monitoring:9090 --window 24h':
    'needs a Prometheus scraping a fleet (fleet-inventory runs fleet against a real one scraping three sidecars)',
  'npm run build': 'builds the bundle every end-to-end test runs (done before the tests)',
  'npm run bench':
    'a benchmark of minutes on a quiet machine, run on its own (bench-smoke covers its plumbing)',
  'npm run soak': 'a 30-minute soak, run on its own',
  'npx tap test/e2e/core.test.ts': 'the test runner itself',
  'npm pack': 'builds the package tarball; artifact-package packs, installs and runs it',
  'node scripts/node-versions.mjs':
    'downloads Node 22, 24 and 26 builds from the npm registry; .ci/run does it before its extra runs',
  'PATH="$PWD/.cache/node-26/bin:$PATH" npx tap test/proxy/streaming.test.ts':
    'the test runner on another Node; .ci/run runs the whole suite on Node 22, 24 and 26',
}

/** What some commands must print, beyond exiting 0 (the substring picks the command's block). */
const EXPECT: Array<{ command: string; output: RegExp; absent?: RegExp }> = [
  // the guide's own rules must all be reachable: no "can never match" warning
  { command: 'nhi-proxy check rules.yaml', output: /rules\.yaml: ok/, absent: /warning/ },
  { command: 'nhi-proxy explain -c rules.yaml', output: /identity: ua:gptbot\n\s+kind=agent/ },
  { command: 'grep nhi_requests_total', output: /^nhi_requests_total\{/m },
  {
    command: 'explain -c local-jwt.yaml --token',
    output: /identity: ci\/nightly-etl\n\s+kind=job source=jwt verified=true/,
  },
]

interface Block {
  lang: string
  body: string
  line: number
  /** the headings it sits under, e.g. ["## Five-minute guide", "### 2. Write your first rule"] */
  headings: string[]
}

function parseBlocks(markdown: string): Block[] {
  const blocks: Block[] = []
  const headings: string[] = []
  const lines = markdown.split('\n')
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!
    const heading = /^(#{1,6}) /.exec(line)
    if (heading) {
      headings.splice(heading[1]!.length - 1)
      headings[heading[1]!.length - 1] = line
      continue
    }
    const fence = /^```(\w*)$/.exec(line)
    if (!fence) continue
    const start = i
    const body: string[] = []
    for (i++; i < lines.length && lines[i] !== '```'; i++) body.push(lines[i]!)
    blocks.push({
      lang: fence[1]!,
      body: body.join('\n'),
      line: start + 1,
      headings: headings.filter(Boolean),
    })
  }
  return blocks
}

/** Drops a trailing ` # comment` outside quotes. */
function stripComment(line: string): string {
  let quote: string | undefined
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!
    if (quote) {
      if (c === quote) quote = undefined
    } else if (c === "'" || c === '"') quote = c
    else if (c === '#' && (i === 0 || /\s/.test(line[i - 1]!))) return line.slice(0, i).trimEnd()
  }
  return line.trimEnd()
}

/** Lines with `\` continuations joined, comments and blank lines dropped. */
function logicalLines(body: string): string[] {
  const out: string[] = []
  let pending = ''
  for (const raw of body.split('\n')) {
    const line = stripComment(raw)
    if (line.endsWith('\\')) {
      pending += `${line.slice(0, -1).trim()} `
      continue
    }
    const full = (pending + line.trim()).trim()
    pending = ''
    if (full) out.push(full)
  }
  return out
}

const BACKGROUND = /^npx nhi-proxy (demo-idp|demo|run)\b/

const readme = readFileSync(join(ROOT, 'README.md'), 'utf8')
const blocks = parseBlocks(readme)
const isTested = (b: Block) => TESTED.some((s) => b.headings.includes(s.heading))

t.test('every README shell command is either run below or skipped with a reason', async (t) => {
  const outside = blocks.filter((b) => b.lang === 'sh' && !isTested(b)).flatMap((b) => logicalLines(b.body))
  for (const command of outside) t.ok(SKIPPED[command], `listed in SKIPPED: ${command}`)
  for (const command of Object.keys(SKIPPED))
    t.ok(outside.includes(command), `SKIPPED entry still in the README: ${command}`)
  for (const section of TESTED)
    t.ok(
      blocks.some((b) => b.lang === 'sh' && b.headings.includes(section.heading)),
      `${section.heading} has commands`,
    )
})

t.test('the README commands work against the built bundle', async (t) => {
  assertFreshBundle()
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const dir = await scratchDir('readme')
  // the reader's working directory is a clone: the shipped configs are where the README says
  await symlink(join(ROOT, 'config'), join(dir, 'config'))
  await symlink(join(ROOT, 'schema'), join(dir, 'schema'))

  const ports: Record<string, number> = {}
  for (const well of ['8080', '8443', '9464', '9400']) ports[well] = await freePort()
  const substitute = (text: string) =>
    text
      .replaceAll('npx nhi-proxy', `'${process.execPath}' '${BUNDLE}'`)
      .replaceAll('http://127.0.0.1:3000', upstream.url)
      .replace(
        /\b(?:0\.0\.0\.0|127\.0\.0\.1|localhost):(8080|8443|9464|9400)\b/g,
        (_, port: string) => `127.0.0.1:${ports[port]}`,
      )
  const adminUrl = `http://127.0.0.1:${ports['9464']}`

  // long-running commands, by subcommand: a new `run` replaces the previous one (same ports)
  const background = new Map<string, { child: ChildProcess; output: () => string }>()
  const stop = async (name: string) => {
    const bg = background.get(name)
    if (!bg) return
    background.delete(name)
    const running = () => bg.child.exitCode === null && bg.child.signalCode === null
    if (running()) {
      const exited = once(bg.child, 'exit')
      bg.child.kill('SIGTERM')
      // a `run` drains for the default drain delay (5 s) first; a second signal skips it, as a reader's
      // second Ctrl-C does (runtime/drain.test.ts tests the drain itself)
      await eventually(() => !running() || /SIGTERM, draining/.test(bg.output()), {
        what: `${name} to start draining`,
      })
      if (running()) bg.child.kill('SIGTERM')
      await exited
    }
  }
  const stopAll = async () => {
    for (const name of [...background.keys()]) await stop(name)
  }
  t.teardown(stopAll)
  const startBackground = async (command: string, where: string) => {
    const sub = BACKGROUND.exec(command)![1]!
    await stop(sub)
    let line = command
    // a `run` the reader starts on the config's own addresses listens on the test ports instead
    if (sub === 'run' && !/--listen\b/.test(line)) line += ' --listen 127.0.0.1:8080'
    if (sub === 'run' && !/--admin\b/.test(line)) line += ' --admin 127.0.0.1:9464'
    const child = spawn('sh', ['-c', `exec ${substitute(line)}`], {
      cwd: dir,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    const output = combinedOutput(child)
    background.set(sub, { child, output })
    const ready =
      sub === 'demo-idp' ? `http://127.0.0.1:${ports['9400']}/openid/v1/jwks` : `${adminUrl}/healthz`
    await eventually(
      async () => {
        if (child.exitCode !== null) throw new Error(`exited ${child.exitCode}: ${output()}`)
        return (await fetch(ready)).ok
      },
      { timeoutMs: 20_000, what: `${where}: \`${command}\` to be up` },
    )
    t.pass(`${where}: ${command}`)
  }
  const runScript = (script: string) =>
    new Promise<{ code: number; output: string }>((resolve) => {
      execFile('sh', ['-ec', substitute(script)], { cwd: dir, timeout: 30_000 }, (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0
        resolve({ code, output: stdout + stderr })
      })
    })

  for (const section of TESTED) {
    await stopAll()
    if (section.setup) await startBackground(section.setup, `setup of ${section.heading}`)
    for (const block of blocks.filter((b) => b.headings.includes(section.heading))) {
      const where = `README.md:${block.line}`
      const file = /^# ([\w.-]+\.ya?ml)$/.exec(block.body.split('\n')[0] ?? '')?.[1]
      if (block.lang === 'yaml' && file) {
        await writeFile(join(dir, file), substitute(block.body))
        continue
      }
      if (block.lang !== 'sh') continue
      // background commands start first, in order; the rest of the block is one script
      const script: string[] = []
      for (const raw of block.body.split('\n')) {
        const command = stripComment(raw).trim()
        if (BACKGROUND.test(command)) await startBackground(command, where)
        else script.push(raw)
      }
      if (logicalLines(script.join('\n')).length === 0) continue
      const r = await runScript(script.join('\n'))
      t.equal(r.code, 0, `${where}: the commands succeed`, { output: r.output, script: script.join('\n') })
      for (const e of EXPECT.filter((x) => block.body.includes(x.command))) {
        t.match(r.output, e.output, `${where}: \`${e.command}\` prints what the README implies`)
        if (e.absent) t.notMatch(r.output, e.absent, `${where}: \`${e.command}\` has no ${e.absent}`)
      }
    }
  }
  for (const [name, bg] of background)
    t.ok(bg.child.exitCode === null, `the background \`${name}\` still runs`, { output: bg.output() })
})

t.test('every issuer in the README names its audiences', async (t) => {
  const issuers: Array<{ line: number; issuer: Record<string, unknown> }> = []
  const walk = (node: unknown, line: number) => {
    if (Array.isArray(node)) for (const item of node) walk(item, line)
    else if (node && typeof node === 'object') {
      const o = node as Record<string, unknown>
      if (typeof o['issuer'] === 'string' && ('jwksUri' in o || 'jwksFile' in o || 'discovery' in o))
        issuers.push({ line, issuer: o })
      for (const v of Object.values(o)) walk(v, line)
    }
  }
  for (const b of blocks.filter((b) => b.lang === 'yaml')) {
    let doc: unknown
    try {
      doc = parse(b.body)
    } catch {
      continue // a Helm template fragment, not a config
    }
    walk(doc, b.line)
  }
  t.ok(issuers.length >= 4, `${issuers.length} issuer examples found`)
  for (const { line, issuer } of issuers)
    t.ok(
      Array.isArray(issuer['audiences']) && issuer['audiences'].length > 0,
      `README.md:${line}: ${issuer['issuer']} has audiences`,
    )
})
