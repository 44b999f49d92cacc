// The ports the bench and the tests hand to child processes: from a range no port-0 listener can be given
// meanwhile, never twice on one machine while their process runs, and a port that stays closed for
// "upstream down" tests.
import { type ChildProcess, spawn } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { readdir } from 'node:fs/promises'
import { connect, createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import t, { type Test } from 'tap'
import { freePort, refusedPort } from '../helpers/net.ts'
import { scratchDir } from '../helpers/scratch.ts'
import { TS_NODE_FLAGS } from '../helpers/sidecar.ts'
import { REPO_ROOT, run } from '../helpers/tools.ts'

const ephemeralLow = Number(
  readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0],
)

t.test('freePort: below the ephemeral range, free, never the same twice', async (t) => {
  const ports: number[] = []
  for (let i = 0; i < 40; i++) ports.push(await freePort())
  t.equal(new Set(ports).size, ports.length, 'forty distinct ports')
  t.ok(
    ports.every((p) => p >= 20_000 && p < ephemeralLow),
    `all in 20000-${ephemeralLow - 1}, where port 0 never lands`,
  )
  // a port 0 listener lands in the ephemeral range, so it cannot take one of these before its owner binds it
  const server = createServer().listen(0, '127.0.0.1')
  await new Promise((resolve) => server.once('listening', resolve))
  const kernelPort = (server.address() as { port: number }).port
  t.ok(kernelPort >= ephemeralLow, 'port 0 gives a port of the ephemeral range')
  server.close()
})

t.test('refusedPort: connections are refused', async (t) => {
  const port = await refusedPort()
  const code = await new Promise<string | undefined>((resolve) => {
    const socket = connect({ host: '127.0.0.1', port })
    socket.once('connect', () => {
      socket.destroy()
      resolve('connected')
    })
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code))
  })
  t.equal(code, 'ECONNREFUSED')
  t.ok(port >= 1000 && port < 1024, 'a privileged port fetch does not block')
})

const PROCS = join(REPO_ROOT, 'bench', 'lib', 'procs.ts')
const PORTS = join(REPO_ROOT, 'bench', 'lib', 'ports.ts')
/** where every process on the machine reserves the ports it hands out: shared memory on Linux */
const SHARED_MEMORY = existsSync('/dev/shm')
const DIR = SHARED_MEMORY ? '/dev/shm/nhi-proxy-ports' : join(tmpdir(), 'nhi-proxy-ports')

/**
 * A test process that says "ready", waits for "go" on stdin, then runs `work` (an expression of an array
 * of ports, with `freePort` or `reservePort` imported) and prints the ports as JSON; it keeps them until its
 * stdin ends, then exits.
 */
const picker = (work: string) => `
  import { createInterface } from 'node:readline'
  ${
    work.includes('freePort')
      ? `import { freePort } from ${JSON.stringify(PROCS)}`
      : `import { reservePort } from ${JSON.stringify(PORTS)}`
  }
  const [dir, lo, hi] = JSON.parse(process.argv[1] ?? '[]')
  const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]()
  console.log('ready')
  await lines.next()
  console.log(JSON.stringify(await (async () => ${work})()))
  while (!(await lines.next()).done) {}
`

interface Picker {
  child: ChildProcess
  lines: AsyncIterator<string>
}

/** `count` pickers running `work`, started together once all are up; resolves with each one's ports. */
async function pickTogether(
  t: Test,
  count: number,
  work: string,
  args: unknown[] = [],
): Promise<{ pickers: Picker[]; ports: number[][] }> {
  const pickers: Picker[] = []
  for (let i = 0; i < count; i++) {
    const child = spawn(
      process.execPath,
      [...TS_NODE_FLAGS, '--input-type=module', '-e', picker(work), JSON.stringify(args)],
      { stdio: ['pipe', 'pipe', 'inherit'] },
    )
    child.stdin!.on('error', () => {})
    t.teardown(() => {
      child.stdin?.end()
      if (child.exitCode === null) child.kill()
    })
    pickers.push({ child, lines: createInterface({ input: child.stdout! })[Symbol.asyncIterator]() })
  }
  for (const p of pickers) t.equal((await p.lines.next()).value, 'ready', 'a picker is up')
  for (const p of pickers) p.child.stdin!.write('go\n')
  const ports: number[][] = []
  for (const p of pickers) {
    const line = await p.lines.next()
    ports.push(line.done ? [] : (JSON.parse(line.value) as number[]))
  }
  return { pickers, ports }
}

/** Ends the pickers (closing their stdin) and waits until they have exited. */
async function endAll(pickers: Picker[]): Promise<void> {
  await Promise.all(
    pickers.map(async ({ child }) => {
      const exited = child.exitCode === null ? once(child, 'exit') : undefined
      child.stdin!.end()
      await exited
    }),
  )
}

/** ports handed to more than one of `lists` */
function twice(lists: number[][]): number[] {
  const seen = new Set<number>()
  const dup = new Set<number>()
  for (const list of lists) for (const p of new Set(list)) (seen.has(p) ? dup : seen).add(p)
  return [...dup].sort((a, b) => a - b)
}

/** the pid a reservation file names, undefined when there is none */
function owner(dir: string, port: number): number | undefined {
  try {
    return Number(readFileSync(join(dir, String(port)), 'latin1').split(' ')[0])
  } catch {
    return undefined
  }
}

/** the pid of a process that has exited */
async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' })
  await once(child, 'exit')
  return child.pid!
}

t.test(
  'freePort in processes picking at once: no port handed out twice while its process runs',
  async (t) => {
    // 3 × 400 of the ≈ 12,700 ports: processes that did not see each other's picks share some (≈ 38 if their
    // picks were independent; fewer, as one's listen check also fails on a port another is checking)
    const { pickers, ports } = await pickTogether(
      t,
      3,
      'await Promise.all(Array.from({ length: 400 }, () => freePort()))',
    )
    t.same(
      ports.map((p) => p.length),
      [400, 400, 400],
      'each process got its 400 ports',
    )
    t.same(twice(ports), [], 'no port went to two processes')
    const held = pickers.map((p, i) => ports[i]!.every((port) => owner(DIR, port) === p.child.pid))
    t.same(held, [true, true, true], "each port's reservation names the process it went to")
    const pids = new Set(pickers.map((p) => p.child.pid))
    await endAll(pickers)
    // another process may reserve a released port right away: only the pickers' own files must be gone
    const left = ports.flat().filter((port) => pids.has(owner(DIR, port)))
    t.same(left, [], 'every reservation is released when its process exits')
  },
)

t.test('reservations taken at once, and over from a dead pid, go to one process each', async (t) => {
  const dir = await scratchDir('ports')
  const dead = await deadPid()
  t.throws(() => process.kill(dead, 0), { code: 'ESRCH' }, 'the dead pid is no process')
  // ports 1-299 free; 300-599 a dead pid's; 600-699 this (live) process's, fresh; 700-799 this process's,
  // made eleven minutes ago, when a pid reused by the OS may have been another process's
  const now = Date.now()
  for (let port = 300; port < 800; port++) {
    const by =
      port < 600
        ? `${dead} ${now}`
        : port < 700
          ? `${process.pid} ${now}`
          : `${process.pid} ${now - 11 * 60_000}`
    writeFileSync(join(dir, String(port)), `${by}\n`)
  }
  const all = 'Array.from({ length: hi - lo }, (_, i) => lo + i)'
  const { pickers, ports } = await pickTogether(
    t,
    4,
    // each process in an order of its own, so that they meet on every kind of port
    `${all}.sort(() => Math.random() - 0.5).filter((port) => reservePort(port, dir))`,
    [dir, 1, 800],
  )
  t.same(twice(ports), [], 'no port went to two processes')
  const taken = new Set(ports.flat())
  const range = (lo: number, hi: number) => Array.from({ length: hi - lo }, (_, i) => lo + i)
  t.same(
    range(1, 300).filter((p) => !taken.has(p)),
    [],
    'every free port went to one of them',
  )
  t.same(
    range(300, 600).filter((p) => !taken.has(p)),
    [],
    "every dead pid's reservation was taken over",
  )
  t.same(
    range(600, 700).filter((p) => taken.has(p)),
    [],
    "a live process's reservation was not",
  )
  t.same(
    range(700, 800).filter((p) => !taken.has(p)),
    [],
    'a reservation older than ten minutes was',
  )
  const owners = pickers.map((p, i) => ports[i]!.every((port) => owner(dir, port) === p.child.pid))
  t.same(owners, [true, true, true, true], 'each reservation file names the process that took it')
  await endAll(pickers)
  t.same(
    (await readdir(dir)).map(Number).sort((a, b) => a - b),
    range(600, 700),
    "at exit each process released its own, and only the live process's reservations are left",
  )
})

t.test(
  'one reservation directory whatever TMPDIR a process has: set, unset, missing or not a directory',
  { skip: SHARED_MEMORY ? false : 'no /dev/shm: the reservations follow TMPDIR' },
  async (t) => {
    const tmp = await scratchDir('tmpdir')
    // two ports, and whether each one's reservation is in the directory every process uses
    const pick = (env: NodeJS.ProcessEnv) =>
      run(
        process.execPath,
        [
          ...TS_NODE_FLAGS,
          '--input-type=module',
          '-e',
          `import { existsSync } from 'node:fs'
           import { freePort } from ${JSON.stringify(PROCS)}
           const ports = [await freePort(), await freePort()]
           console.log(JSON.stringify(ports.map((p) => existsSync(${JSON.stringify(DIR)} + '/' + p))))`,
        ],
        { env },
      )
    const file = join(tmp, 'a-file')
    writeFileSync(file, '')
    const cases = {
      set: tmp,
      unset: undefined,
      'a directory that does not exist': join(tmp, 'not', 'yet'),
      'a file': file,
    }
    const results = await Promise.all(Object.values(cases).map((TMPDIR) => pick({ TMPDIR })))
    for (const [i, name] of Object.keys(cases).entries()) {
      const r = results[i]!
      t.equal(r.code, 0, `TMPDIR ${name}: exit 0`)
      t.equal(r.stderr, '', `TMPDIR ${name}: no warning`)
      t.same(JSON.parse(r.stdout || '[]'), [true, true], `TMPDIR ${name}: both ports reserved in ${DIR}`)
    }
    t.same(await readdir(tmp), ['a-file'], 'nothing left in TMPDIR once the processes exit')
  },
)
