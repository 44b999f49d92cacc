// The product as users start it: the built bundle `dist/nhi-proxy.mjs` (the package `bin` and the image's
// ENTRYPOINT) run as `node dist/nhi-proxy.mjs …` in a child process. Addresses are learnt from the sidecar's
// own machine-readable startup line, reloads from its log, so the end-to-end suites test the artifact that
// ships and nothing inside it.
import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { existsSync, readdirSync, statSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import type { AddressInfo } from 'node:net'
import { join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Test } from 'tap'
import { stringify } from 'yaml'
import { eventually, GiveUp } from './eventually.ts'
import { replaceFile, scratchDir } from './scratch.ts'

export const ROOT = fileURLToPath(new URL('../..', import.meta.url))
export const BUNDLE = join(ROOT, 'dist', 'nhi-proxy.mjs')
/** `node` arguments that start the CLI exactly as the package `bin` and the image do */
export const CLI = [BUNDLE]
/** `node` flags that run a TypeScript file of this repository, as the test runner runs the test files */
export const TS_NODE_FLAGS: readonly string[] = [
  '--import',
  new URL('../../scripts/register-ts.mjs', import.meta.url).href,
]

function newestFile(dir: string): { path: string; mtimeMs: number } {
  let newest = { path: dir, mtimeMs: 0 }
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    const candidate = entry.isDirectory() ? newestFile(path) : { path, mtimeMs: statSync(path).mtimeMs }
    if (candidate.mtimeMs > newest.mtimeMs) newest = candidate
  }
  return newest
}

let bundleChecked = false
/**
 * Throws unless `dist/nhi-proxy.mjs` exists and is newer than every file under src/ and the bundler script:
 * a test must never pass or fail on a stale build.
 */
export function assertFreshBundle(): void {
  if (bundleChecked) return
  if (!existsSync(BUNDLE))
    throw new Error('dist/nhi-proxy.mjs is missing: run `npm run build` before the end-to-end tests')
  const built = statSync(BUNDLE).mtimeMs
  for (const source of [newestFile(join(ROOT, 'src')), newestFile(join(ROOT, 'scripts'))]) {
    if (source.mtimeMs > built)
      throw new Error(
        `dist/nhi-proxy.mjs is older than ${relative(ROOT, source.path)}: run \`npm run build\` so the tests run the current code`,
      )
  }
  bundleChecked = true
}

export interface CliResult {
  code: number
  stdout: string
  stderr: string
}

/** Runs `node dist/nhi-proxy.mjs ARGS…` to completion (cwd: the project root unless given). */
export async function runCli(
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number } = {},
): Promise<CliResult> {
  assertFreshBundle()
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [...CLI, ...args],
      {
        cwd: opts.cwd ?? ROOT,
        env: { ...process.env, ...opts.env },
        timeout: opts.timeoutMs ?? 20_000,
        maxBuffer: 16 * 1024 * 1024,
      },
      (err, stdout, stderr) => {
        // killed at the deadline: the exit code is -1 and stderr says so, even when the process handled the
        // signal and exited with a code of its own (a test reading only the code took that for the product's)
        if (err?.killed === true && err.code !== 'ERR_CHILD_PROCESS_STDIO_MAXBUFFER') {
          const timeoutMs = opts.timeoutMs ?? 20_000
          resolve({ code: -1, stdout, stderr: `${stderr}\n[killed after ${timeoutMs} ms: still running]` })
          return
        }
        const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0
        resolve({ code, stdout, stderr })
      },
    )
  })
}

export interface CliProcess {
  child: ChildProcess
  stdout: () => string
  stderr: () => string
  /** resolves with the first match of `re` in stdout+stderr, or rejects after timeoutMs */
  waitFor(re: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>
  /**
   * resolves with the first JSON log line on stderr, at or after character offset `from`, for which
   * `accept` holds; rejects when the process exits first or after timeoutMs
   */
  waitForLog(
    accept: (line: Record<string, unknown>) => boolean,
    from?: number,
    timeoutMs?: number,
  ): Promise<Record<string, unknown>>
  exited: Promise<number | null>
  kill(signal?: NodeJS.Signals): void
}

/**
 * The exit code once the process has exited and its piped output has been read to the end ('close'): at
 * 'exit' the last lines can still be in the pipes. Bounded, for a descendant that kept the pipes open.
 */
export function outputComplete(child: ChildProcess, boundMs = 5_000): Promise<number | null> {
  return new Promise((resolve) => {
    child.once('close', (code: number | null) => resolve(code))
    child.once('exit', (code: number | null) => setTimeout(() => resolve(code), boundMs).unref())
  })
}

/**
 * A child's stdout and stderr as one text, as they arrive: each stream decoded across its reads, so a character
 * whose UTF-8 bytes a pipe delivers in two reads stays one character.
 */
export function combinedOutput(child: ChildProcess): () => string {
  let text = ''
  for (const stream of [child.stdout, child.stderr]) {
    stream?.setEncoding('utf8')
    stream?.on('data', (c: string) => {
      text += c
    })
  }
  return () => text
}

/** Starts `node dist/nhi-proxy.mjs ARGS…` in the background. */
export function spawnCli(
  args: string[],
  env: NodeJS.ProcessEnv = {},
  /** `detached`: in a process group of its own, to signal the whole group as a terminal or systemd does */
  { detached = false } = {},
): CliProcess {
  assertFreshBundle()
  const child = spawn(process.execPath, [...CLI, ...args], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached,
  })
  let out = ''
  let err = ''
  child.stdout!.setEncoding('utf8')
  child.stdout!.on('data', (c: string) => {
    out += c
  })
  child.stderr!.setEncoding('utf8')
  child.stderr!.on('data', (c: string) => {
    err += c
  })
  let closed = false
  const exited = outputComplete(child).then((code) => {
    closed = true
    return code
  })
  const poll = <T>(probe: () => T | undefined, what: string, timeoutMs: number): Promise<T> =>
    eventually(
      () => {
        const found = probe()
        if (found === undefined && closed)
          throw new GiveUp(`exited ${child.exitCode ?? child.signalCode} before ${what}: ${out}${err}`)
        return found
      },
      { timeoutMs },
    ).catch((e: unknown) => {
      if (e instanceof GiveUp) throw e
      throw new Error(`timeout waiting for ${what}: ${out}${err}`)
    }) as Promise<T>
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    exited,
    kill: (signal = 'SIGTERM') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal)
    },
    waitFor: (re, timeoutMs = 20_000) =>
      poll(() => (out + err).match(re) ?? undefined, String(re), timeoutMs),
    waitForLog: (accept, from = 0, timeoutMs = 20_000) =>
      poll(
        () => {
          const text = err.slice(from)
          // only complete lines: a line still being written is not JSON yet
          for (const line of text.slice(0, text.lastIndexOf('\n') + 1).split('\n')) {
            if (!line.startsWith('{')) continue
            try {
              const parsed = JSON.parse(line) as Record<string, unknown>
              if (accept(parsed)) return parsed
            } catch {
              // not a log line
            }
          }
          return undefined
        },
        'a matching log line',
        timeoutMs,
      ),
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

/** "127.0.0.1:8080" or "[::1]:8080", as the startup line prints listeners */
export function parseHostPort(text: string): AddressInfo {
  const i = text.lastIndexOf(':')
  const host = text.slice(0, i)
  const v6 = host.startsWith('[')
  return {
    address: v6 ? host.slice(1, -1) : host,
    port: Number(text.slice(i + 1)),
    family: v6 ? 'IPv6' : 'IPv4',
  }
}

/** The URL a test reaches a listener at: a wildcard address is reached over loopback of its family. */
export function httpUrl(a: AddressInfo): string {
  if (a.family === 'IPv6') return `http://[${a.address === '::' ? '::1' : a.address}]:${a.port}`
  return `http://${a.address === '0.0.0.0' ? '127.0.0.1' : a.address}:${a.port}`
}

/** A running `nhi-proxy run` child process. */
export interface TestSidecar {
  readonly proxyAddress: AddressInfo
  readonly httpsAddress?: AddressInfo
  readonly adminAddress: AddressInfo
  /** `http://HOST:PORT` of the plain listener (a wildcard listen address is reached over loopback) */
  readonly proxyUrl: string
  /** `http://HOST:PORT` of the admin listener (/metrics, /readyz, the live view) */
  readonly adminUrl: string
  /** the config file it runs */
  readonly configPath: string
  readonly process: CliProcess
  /**
   * With `config`: rewrites the config file (same defaults as at start) and waits for the file watcher's
   * reload; without: sends SIGHUP. Resolves true when the sidecar logged `config_reloaded`, false when it
   * logged `config_reload_failed` (the last good config keeps serving).
   */
  reload(config?: Record<string, unknown>): Promise<boolean>
  /** SIGTERM (drain) and wait for the exit; resolves with the exit code */
  close(): Promise<number | null>
}

/** What the test sidecar runs with unless the test's config says otherwise. */
const TEST_DEFAULTS = {
  listen: { http: '127.0.0.1:0' },
  admin: '127.0.0.1:0',
  audit: { output: 'off' },
}
// A test's sidecar stops at once on SIGTERM: waiting out the production drain delay (5 s) at every teardown
// would add minutes to the suite. runtime/drain.test.ts and runtime/shutdown-faults.test.ts set their own and test it.
const TEST_TIMEOUTS = { drainDelay: '0s' }
/** after SIGTERM, the test sidecar is killed (and its teardown fails) when it has not exited by then */
const SIGTERM_EXIT_MS = 15_000

/**
 * The text of a config file with `config` over the test defaults: for a test that writes the file itself, to
 * rewrite it later or to keep its path apart from the sidecar's.
 */
export function testConfigYaml(config: Record<string, unknown>): string {
  const timeouts = config['timeouts'] as Record<string, unknown> | undefined
  return stringify({ ...TEST_DEFAULTS, ...config, timeouts: { ...TEST_TIMEOUTS, ...timeouts } })
}

export interface SidecarOptions {
  /** extra environment (e.g. NHI_LOG_LEVEL) */
  env?: NodeJS.ProcessEnv
  /** extra `run` flags */
  args?: string[]
}

/**
 * `node dist/nhi-proxy.mjs run -c FILE` where FILE holds `config` over test defaults (ephemeral loopback
 * listener and admin, audit off), stopped at the end of the test.
 */
export async function startTestSidecar(
  t: Test,
  config: Record<string, unknown>,
  opts: SidecarOptions = {},
): Promise<TestSidecar> {
  const dir = await scratchDir('sidecar')
  const file = join(dir, 'config.yaml')
  await writeFile(file, testConfigYaml(config))
  return startSidecarFromFile(t, file, opts)
}

/** `node dist/nhi-proxy.mjs run -c FILE` for a config file the test wrote itself, stopped at the end of the test. */
export async function startSidecarFromFile(
  t: Test,
  file: string,
  opts: SidecarOptions = {},
): Promise<TestSidecar> {
  const cli = spawnCli(['run', '-c', file, ...(opts.args ?? [])], opts.env)
  let closing: Promise<number | null> | undefined
  const close = () => {
    closing ??= (async () => {
      cli.kill('SIGTERM')
      const timer = setTimeout(() => cli.kill('SIGKILL'), SIGTERM_EXIT_MS)
      try {
        return await cli.exited
      } finally {
        clearTimeout(timer)
      }
    })()
    return closing
  }
  // a sidecar that does not exit by itself on SIGTERM would sit out a pod's whole termination grace period:
  // every test that leaves the stop to this teardown checks the clean exit (one that stopped the process
  // itself checks what it expects)
  t.teardown(async () => {
    const stoppedByTest = cli.child.exitCode !== null || cli.child.signalCode !== null
    const code = await close()
    if (stoppedByTest || code === 0) return
    throw new Error(
      `the sidecar did not exit 0 within ${SIGTERM_EXIT_MS} ms of SIGTERM (exit ${code ?? cli.child.signalCode}): ${cli.stderr().slice(-2000)}`,
    )
  })
  const started = await cli.waitForLog((l) => l['event'] === 'started')
  const reloadResult = (from: number) =>
    cli
      .waitForLog((l) => l['event'] === 'config_reloaded' || l['event'] === 'config_reload_failed', from)
      .then((l) => l['event'] === 'config_reloaded')
  const proxyAddress = parseHostPort(String(started['listen']))
  const adminAddress = parseHostPort(String(started['admin']))
  return {
    proxyAddress,
    httpsAddress: started['https'] ? parseHostPort(String(started['https'])) : undefined,
    adminAddress,
    proxyUrl: httpUrl(proxyAddress),
    adminUrl: httpUrl(adminAddress),
    configPath: file,
    process: cli,
    async reload(config) {
      const from = cli.stderr().length
      if (config) await replaceFile(file, testConfigYaml(config))
      else cli.kill('SIGHUP')
      return reloadResult(from)
    },
    close,
  }
}
