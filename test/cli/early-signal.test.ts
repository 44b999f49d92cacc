// A SIGTERM that comes while `nhi-proxy run` is still starting ends it cleanly (exit 0, never by the signal)
// and at once, without serving. Each case pins the signal to a moment of the start instead of a time after
// spawn: the bundle's main chunk is delivered through a FIFO, so the process is loading its code until the
// test writes it; a JWKS endpoint holds its answer, so the start waits for the first key fetch.
import { execFileSync, spawn } from 'node:child_process'
import { once } from 'node:events'
import { constants, cpSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { open } from 'node:fs/promises'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { stringify } from 'yaml'
import { eventually, GiveUp } from '../helpers/eventually.ts'
import { freePort } from '../helpers/net.ts'
import { scratchDir } from '../helpers/scratch.ts'
import { assertFreshBundle, BUNDLE, outputComplete, ROOT, spawnCli } from '../helpers/sidecar.ts'

// generous for a loaded machine, far below what a start that ran on would take: the JWKS start timeout (5 s)
// and then the drain delay the configs set (60 s)
const PROMPT_MS = 20_000

async function writeConfig(dir: string, config: Record<string, unknown>): Promise<string> {
  const path = join(dir, 'config.yaml')
  const port = await freePort()
  writeFileSync(
    path,
    stringify({
      upstream: 'http://127.0.0.1:9',
      listen: { http: `127.0.0.1:${port}` },
      admin: '127.0.0.1:0',
      audit: { output: 'off' },
      timeouts: { drainDelay: '60s' },
      ...config,
    }),
  )
  return path
}

/** resolves with the exit of `child` (code and signal), or with undefined when it is still running after ms */
async function exitWithin(
  child: ReturnType<typeof spawn>,
  exited: Promise<number | null>,
  ms: number,
): Promise<{ code: number | null; signal: NodeJS.Signals | null } | undefined> {
  const late = new AbortController()
  const result = await Promise.race([
    exited.then((code) => ({ code, signal: child.signalCode })),
    delay(ms, undefined, { signal: late.signal }).catch(() => undefined),
  ])
  late.abort()
  return result
}

/**
 * The three checks of a stop signal honoured: the process exits within PROMPT_MS of it, by its own exit 0
 * rather than by the signal. Resolves with how it ended (undefined: still running).
 */
async function exitsCleanly(
  t: Test,
  proc: { child: ReturnType<typeof spawn>; exited: Promise<number | null>; stderr: () => string },
  context = '',
) {
  const stopped = await exitWithin(proc.child, proc.exited, PROMPT_MS)
  t.ok(stopped, `exited within ${PROMPT_MS} ms of the signal${context}`)
  t.equal(stopped?.signal, null, 'not ended by the signal')
  t.equal(stopped?.code, 0, `exit 0 (stderr: ${proc.stderr().trim()})`)
  return stopped
}

const started = (stderr: string) => stderr.split('\n').some((l) => l.includes('"event":"started"'))

/**
 * `node ARGS…` (`args` is given the bin: a copy of the bundle whose main chunk is a FIFO). Resolves once a
 * process has begun to read the chunk (the bin's own statements have run, the CLI has not loaded); it stays
 * there until `finish` writes the chunk. `detached`: in a process group of its own, to signal as a terminal
 * does.
 */
async function spawnLoading(
  t: Test,
  name: string,
  args: (dir: string, bin: string) => Promise<string[]>,
  { detached = false } = {},
) {
  assertFreshBundle()
  const dir = await scratchDir(name)
  const dist = join(dir, 'dist')
  cpSync(join(ROOT, 'dist'), dist, { recursive: true })
  const main = /import\("\.\/(chunks\/main-[^"]+\.mjs)"\)/.exec(readFileSync(BUNDLE, 'utf8'))?.[1]
  if (main === undefined) throw new Error('the bin does not import a main chunk: update this test')
  const chunk = join(dist, main)
  const code = readFileSync(chunk)
  renameSync(chunk, `${chunk}.real`)
  execFileSync('mkfifo', [chunk])

  const child = spawn(process.execPath, await args(dir, join(dist, 'nhi-proxy.mjs')), {
    cwd: ROOT,
    stdio: ['ignore', 'ignore', 'pipe'],
    detached,
  })
  let stderr = ''
  child.stderr!.setEncoding('utf8')
  child.stderr!.on('data', (c: string) => {
    stderr += c
  })
  const exited = outputComplete(child)
  // opening the write end waits for the reader: from then on the process is loading the CLI
  const writer = open(chunk, 'w')
  t.teardown(async () => {
    if (detached) {
      try {
        process.kill(-child.pid!, 'SIGKILL')
      } catch {
        // the group is gone already
      }
    } else if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    // a write end still waiting for a reader that never came is released by a reader of our own
    const reader = await open(chunk, constants.O_RDONLY | constants.O_NONBLOCK).catch(() => undefined)
    await (await writer.catch(() => undefined))?.close().catch(() => {})
    await reader?.close()
    await exited
  })
  const first = await Promise.race([writer, exited.then(() => undefined)])
  if (first === undefined) throw new Error(`exited before loading its code: ${stderr}`)
  return {
    child,
    exited,
    stderr: () => stderr,
    async finish() {
      // a process the signal ended reads no further (EPIPE): its exit says how it ended
      await first.writeFile(code).catch(() => {})
      await first.close().catch(() => {})
    },
  }
}

t.test(
  'SIGTERM while the CLI is still loading its code: exit 0, not killed, never serves',
  { skip: process.platform === 'win32' ? 'needs a FIFO' : false },
  async (t) => {
    const proxy = await spawnLoading(t, 'early-signal-load', async (dir, bin) => [
      bin,
      'run',
      '-c',
      await writeConfig(dir, {}),
    ])
    proxy.child.kill('SIGTERM')
    await proxy.finish()

    await exitsCleanly(t, proxy)
    t.notOk(started(proxy.stderr()), 'never started serving')
    t.match(proxy.stderr(), /SIGTERM while starting/, 'says why it stopped')
  },
)

// the demos start without a config: every address on a port of the system's choosing
for (const [command, addresses] of [
  ['demo', ['--listen', '--https', '--admin', '--idp']],
  ['demo-idp', ['--listen']],
] as const) {
  t.test(
    `SIGTERM while \`${command}\` is still loading its code: exit 0, never serves`,
    { skip: process.platform === 'win32' ? 'needs a FIFO' : false },
    async (t) => {
      const proxy = await spawnLoading(t, `early-signal-${command}`, async (_dir, bin) => [
        bin,
        command,
        ...addresses.flatMap((option) => [option, '127.0.0.1:0']),
      ])
      proxy.child.kill('SIGTERM')
      await proxy.finish()

      await exitsCleanly(t, proxy)
      t.notMatch(proxy.stderr(), /draining/, 'never started serving, so nothing to drain')
      t.match(proxy.stderr(), /SIGTERM while starting/, 'says why it stopped')
    },
  )
}

t.test(
  'SIGHUP while `run` is still loading its code: not killed, it starts and serves, SIGTERM then ends it',
  { skip: process.platform === 'win32' ? 'needs a FIFO' : false },
  async (t) => {
    const proxy = await spawnLoading(t, 'early-signal-hup', async (dir, bin) => [
      bin,
      'run',
      '-c',
      await writeConfig(dir, { timeouts: { drainDelay: '0s' } }),
    ])
    proxy.child.kill('SIGHUP')
    await proxy.finish()

    await eventually(
      () => {
        if (proxy.child.exitCode !== null || proxy.child.signalCode !== null)
          throw new GiveUp(`exited ${proxy.child.exitCode ?? proxy.child.signalCode}: ${proxy.stderr()}`)
        return started(proxy.stderr())
      },
      { timeoutMs: PROMPT_MS, what: 'the started line' },
    ).catch((err: Error) => t.fail(err.message))
    t.equal(proxy.child.signalCode, null, 'not ended by SIGHUP')
    t.ok(started(proxy.stderr()), 'started serving')
    proxy.child.kill('SIGTERM')
    const stopped = await exitWithin(proxy.child, proxy.exited, PROMPT_MS)
    t.equal(stopped?.code, 0, `exit 0 on SIGTERM (stderr: ${proxy.stderr().trim()})`)
  },
)

// A stand-in for the primary of `workers: N`: forks one real worker of the bundle (the process the pod's
// primary forks, NHI_WORKER_SLOT set) and reports on stderr what the worker does, and never sends it the
// config, so the worker stays waiting once it has loaded.
const PRIMARY = `
import cluster from 'node:cluster'
const [bin, ...args] = process.argv.slice(1)
process.on('SIGINT', () => {})
process.on('SIGHUP', () => {})
cluster.setupPrimary({ exec: bin, args, execArgv: [], serialization: 'advanced' })
const worker = cluster.fork({ NHI_WORKER_SLOT: '1' })
worker.on('message', (m) => {
  if (m?.nhi === 'hello') process.stderr.write('worker: hello\\n')
})
worker.on('exit', (code, signal) => {
  process.stderr.write(\`worker: exit \${code} \${signal}\\n\`)
  process.exit(0)
})
`

for (const [signal, what] of [
  ['SIGINT', "a terminal's Ctrl-C"],
  ['SIGHUP', 'a hang-up'],
] as const) {
  t.test(
    `${what} (${signal} to the process group) while a worker of \`workers: N\` loads its code: it carries on`,
    { skip: process.platform === 'win32' ? 'needs a FIFO and process groups' : false },
    async (t) => {
      // the whole group is signalled, as a terminal does: the stand-in primary, then the worker it forked
      const group = await spawnLoading(
        t,
        'early-signal-worker',
        async (dir, bin) => [
          '--input-type=module',
          '-e',
          PRIMARY,
          bin,
          'run',
          '-c',
          await writeConfig(dir, {}),
        ],
        { detached: true },
      )
      process.kill(-group.child.pid!, signal)
      await group.finish()

      await eventually(
        () => {
          if (/worker: exit/.test(group.stderr())) throw new GiveUp(group.stderr())
          return /worker: hello/.test(group.stderr())
        },
        { timeoutMs: PROMPT_MS, what: "the worker's hello" },
      ).catch((err: Error) => t.fail(err.message))
      t.match(group.stderr(), /worker: hello/, 'the worker loaded and asked for its config')
      t.notMatch(group.stderr(), /worker: exit/, 'it did not exit')
    },
  )
}

t.test(
  'SIGTERM while the first JWKS fetch is pending: exit 0 at once, never listens, no drain',
  async (t) => {
    const dir = await scratchDir('early-signal-jwks')
    const held: ServerResponse[] = []
    const jwks = createServer((_req: IncomingMessage, res: ServerResponse) => {
      held.push(res)
    })
    const jwksRequested = once(jwks, 'request')
    jwks.listen(0, '127.0.0.1')
    await once(jwks, 'listening')
    t.teardown(() => {
      for (const res of held) res.destroy()
      jwks.close()
    })
    const jwksUri = `http://127.0.0.1:${(jwks.address() as AddressInfo).port}/jwks`
    const config = await writeConfig(dir, {
      jwt: { issuers: [{ issuer: 'https://idp.early.example', jwksUri, audiences: ['app'] }] },
    })

    const proxy = spawnCli(['run', '-c', config])
    t.teardown(async () => {
      if (proxy.child.exitCode === null && proxy.child.signalCode === null) proxy.kill('SIGKILL')
      await proxy.exited
    })
    await Promise.race([
      jwksRequested,
      proxy.exited.then(() => {
        throw new Error(`exited before fetching its keys: ${proxy.stderr()}`)
      }),
    ])
    proxy.kill('SIGTERM')
    const stopped = await exitsCleanly(t, proxy, ', the key fetch still unanswered')
    if (!stopped) proxy.kill('SIGKILL')
    t.notOk(started(proxy.stderr()), 'never started serving')
  },
)
