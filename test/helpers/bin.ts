// The built bundle (`node dist/nhi-proxy.mjs run -c FILE`) as a child process: what an operator runs, with
// real signals. Its addresses come from its own "started" log line. Run `npm run build` after src changes.
import { type ChildProcess, spawn } from 'node:child_process'
import { existsSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { Test } from 'tap'
import { stringify } from 'yaml'
import { eventually, GiveUp } from './eventually.ts'
import { scratchDirSync } from './scratch.ts'
import { outputComplete, ROOT } from './sidecar.ts'

export const BUNDLE = join(ROOT, 'dist', 'nhi-proxy.mjs')

export interface BinSidecar {
  child: ChildProcess
  /** http://127.0.0.1:PORT of the proxy listener */
  proxyUrl: string
  /** http://127.0.0.1:PORT of the admin listener */
  adminUrl: string
  stderr(): string
  /** operational log lines (JSON) parsed, in order */
  logs(): Record<string, unknown>[]
  exited: Promise<number | null>
  configPath: string
}

/** Starts the bundle on ephemeral loopback ports with `config` (merged over test defaults); killed at teardown. */
export async function startBin(t: Test, config: Record<string, unknown>): Promise<BinSidecar> {
  if (!existsSync(BUNDLE)) throw new Error('dist/nhi-proxy.mjs is missing: run `npm run build` first')
  const dir = scratchDirSync('bin')
  const configPath = join(dir, 'config.yaml')
  writeFileSync(
    configPath,
    stringify({ listen: { http: '127.0.0.1:0' }, admin: '127.0.0.1:0', audit: { output: 'off' }, ...config }),
  )
  const child = spawn(process.execPath, [BUNDLE, 'run', '-c', configPath], {
    cwd: ROOT,
    env: { ...process.env, NHI_LOG_LEVEL: 'info' },
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  let err = ''
  child.stderr!.setEncoding('utf8')
  child.stderr!.on('data', (c: string) => {
    err += c
  })
  const exited = outputComplete(child)
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    await exited
    rmSync(dir, { recursive: true, force: true })
  })
  const logs = () =>
    err
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>)
  const started = await eventually(
    () => {
      if (child.exitCode !== null) throw new GiveUp(`exited ${child.exitCode}: ${err}`)
      return logs().find((l) => l['event'] === 'started')
    },
    { timeoutMs: 20_000, what: 'the "started" log line' },
  )
  return {
    child,
    proxyUrl: `http://${started['listen'] as string}`,
    adminUrl: (started['metrics'] as string).replace(/\/metrics$/, ''),
    stderr: () => err,
    logs,
    exited,
    configPath,
  }
}
