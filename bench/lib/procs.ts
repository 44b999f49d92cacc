// Child processes of a bench run: every server runs in its own process so the proxy's CPU time can be read
// from /proc, and every process is killed when the run ends — normally, on an error or on Ctrl-C.
import { type ChildProcess, spawn } from 'node:child_process'
import { once } from 'node:events'
import { readdir, readFile } from 'node:fs/promises'
import { connect } from 'node:net'

export { freePort } from './ports.ts'

/** `node` flags that run a TypeScript file of this repository: scripts/register-ts.mjs strips its types */
export const TS_NODE_FLAGS: readonly string[] = [
  '--import',
  new URL('../../scripts/register-ts.mjs', import.meta.url).href,
]

const live = new Set<ChildProcess>()
let exitHooked = false

function hookExit(): void {
  if (exitHooked) return
  exitHooked = true
  process.on('exit', () => {
    for (const child of live) child.kill('SIGKILL')
  })
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      for (const child of live) child.kill('SIGKILL')
      process.exit(130)
    })
  }
}

export interface ServerProcess {
  readonly name: string
  readonly pid: number
  readonly child: ChildProcess
  /** last lines of stderr, for error messages */
  stderrTail(): string
  stop(): Promise<void>
}

export interface SpawnOptions {
  env?: Record<string, string>
  /** where stdout goes; 'ignore' unless the caller reads it */
  stdout?: 'ignore' | 'pipe'
}

export function spawnProcess(
  name: string,
  command: string,
  args: string[],
  opts: SpawnOptions = {},
): ServerProcess {
  hookExit()
  const child = spawn(command, args, {
    stdio: ['ignore', opts.stdout ?? 'ignore', 'pipe'],
    env: { ...process.env, ...opts.env },
  })
  live.add(child)
  child.once('exit', () => live.delete(child))
  let tail = ''
  child.stderr?.setEncoding('utf8')
  child.stderr?.on('data', (s: string) => {
    tail = (tail + s).slice(-4000)
  })
  if (child.pid === undefined) throw new Error(`${name}: cannot start ${command}`)
  const pid = child.pid
  return {
    name,
    pid,
    child,
    stderrTail: () => tail,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return
      const exited = once(child, 'exit')
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 2000)
      await exited
      clearTimeout(timer)
    },
  }
}

export async function stopAll(procs: Iterable<ServerProcess | undefined>): Promise<void> {
  await Promise.all([...procs].map((p) => p?.stop().catch(() => {})))
}

/** Whether a TCP connection to 127.0.0.1:`port` is accepted right now. */
export function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1')
    s.once('connect', () => {
      s.destroy()
      resolve(true)
    })
    s.once('error', () => resolve(false))
  })
}

/** Waits until every port accepts connections, or the process dies, or the deadline passes. */
export async function waitForPorts(proc: ServerProcess, ports: number[], timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (const port of ports) {
    while (!(await canConnect(port))) {
      if (proc.child.exitCode !== null || proc.child.signalCode !== null) {
        throw new Error(`${proc.name} exited before listening:\n${proc.stderrTail()}`)
      }
      if (Date.now() > deadline)
        throw new Error(`${proc.name} not listening on ${port}:\n${proc.stderrTail()}`)
      await new Promise((r) => setTimeout(r, 25))
    }
  }
}

let clockTicks: number | undefined
async function ticksPerSecond(): Promise<number> {
  if (clockTicks !== undefined) return clockTicks
  // USER_HZ is 100 on every mainstream Linux build; getconf confirms when available
  clockTicks = 100
  try {
    const { execFileSync } = await import('node:child_process')
    const n = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim())
    if (Number.isFinite(n) && n > 0) clockTicks = n
  } catch {}
  return clockTicks
}

/** utime+stime in microseconds of a /proc stat file (a process's, or a thread's under task/) */
async function statCpuMicros(path: string): Promise<number> {
  const stat = await readFile(path, 'utf8')
  // the command name may contain spaces and parentheses: fields start after the last ')'
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return ((Number(fields[11]) + Number(fields[12])) * 1_000_000) / (await ticksPerSecond())
}

/** utime+stime of a process in microseconds, from /proc/<pid>/stat. */
export function cpuMicros(pid: number): Promise<number> {
  return statCpuMicros(`/proc/${pid}/stat`)
}

/** CPU of a process's main thread only (its worker threads are tasks of their own under /proc/<pid>/task). */
export function mainThreadCpuMicros(pid: number): Promise<number> {
  return statCpuMicros(`/proc/${pid}/task/${pid}/stat`)
}

/** CPU of each thread of a process other than its main thread, by thread id (threads that exited are absent). */
export async function otherThreadsCpuMicros(pid: number): Promise<Map<number, number>> {
  const out = new Map<number, number>()
  for (const tid of await readdir(`/proc/${pid}/task`).catch(() => [] as string[])) {
    if (Number(tid) === pid) continue
    const us = await statCpuMicros(`/proc/${pid}/task/${tid}/stat`).catch(() => undefined)
    if (us !== undefined) out.set(Number(tid), us)
  }
  return out
}

/** CPU of a process and its direct children (nginx: master + workers). */
export async function treeCpuMicros(pid: number): Promise<number> {
  let total = await cpuMicros(pid)
  for (const child of await childPids(pid)) total += await cpuMicros(child).catch(() => 0)
  return total
}

export async function childPids(pid: number): Promise<number[]> {
  try {
    const text = await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8')
    return text.split(' ').filter(Boolean).map(Number)
  } catch {
    return []
  }
}

/** Resident set size in bytes, from /proc/<pid>/status. */
export async function rssBytes(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  const m = /VmRSS:\s+(\d+) kB/.exec(status)
  return m ? Number(m[1]) * 1024 : 0
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))
