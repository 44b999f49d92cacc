// Start the real CLI (`nhi-proxy run|demo`) as a child process and learn its addresses from its own output.
import { type ChildProcess, spawn } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import pino from 'pino'
import type { Test } from 'tap'
import { configSchema } from '../../src/config/schema.ts'
import { type Sidecar, startSidecar } from '../../src/runtime.ts'

export const ROOT = fileURLToPath(new URL('../..', import.meta.url))
export const CLI = ['--import', 'tsx', 'src/cli/main.ts']

export interface CliProcess {
  child: ChildProcess
  stdout: () => string
  stderr: () => string
  /** resolves with the first match of `re` in stdout+stderr, or rejects after timeoutMs */
  waitFor(re: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>
  exited: Promise<number | null>
  kill(signal?: NodeJS.Signals): void
}

export function spawnCli(args: string[], env: NodeJS.ProcessEnv = {}): CliProcess {
  const child = spawn(process.execPath, [...CLI, ...args], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  let err = ''
  child.stdout!.on('data', (c: Buffer) => {
    out += c.toString()
  })
  child.stderr!.on('data', (c: Buffer) => {
    err += c.toString()
  })
  const exited = once(child, 'exit').then(([code]) => code as number | null)
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    exited,
    kill: (signal = 'SIGTERM') => {
      if (child.exitCode === null) child.kill(signal)
    },
    waitFor(re, timeoutMs = 20_000) {
      return new Promise((resolve, reject) => {
        const started = Date.now()
        const poll = () => {
          const m = (out + err).match(re)
          if (m) return resolve(m)
          if (child.exitCode !== null)
            return reject(new Error(`exited ${child.exitCode} before ${re}: ${out}${err}`))
          if (Date.now() - started > timeoutMs)
            return reject(new Error(`timeout waiting for ${re}: ${out}${err}`))
          setTimeout(poll, 50)
        }
        poll()
      })
    },
  }
}

/** `nhi-proxy demo` with every listener on an ephemeral port, so demos in parallel test files never clash. */
export function spawnDemo(opts: { admin?: string; rate?: number } = {}): CliProcess {
  const ephemeral = '127.0.0.1:0'
  return spawnCli([
    'demo',
    ...['--listen', ephemeral, '--https', ephemeral, '--idp', ephemeral],
    ...['--admin', opts.admin ?? ephemeral, '--rate', String(opts.rate ?? 30)],
  ])
}

/**
 * The sidecar in-process on ephemeral loopback ports with the audit trail off and a silent log, closed at
 * the end of the test. `config` is the config file's content (it wins over these defaults).
 */
export async function startTestSidecar(t: Test, config: Record<string, unknown>): Promise<Sidecar> {
  const sidecar = await startSidecar({
    config: configSchema.parse({
      listen: { http: '127.0.0.1:0' },
      admin: '127.0.0.1:0',
      audit: { output: 'off' },
      ...config,
    }),
    log: pino({ level: 'silent' }),
  })
  t.teardown(() => sidecar.close())
  return sidecar
}
