// Start the real CLI (`nhi-proxy run|demo`) as a child process and learn its addresses from its own output.
import { type ChildProcess, spawn } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'

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
