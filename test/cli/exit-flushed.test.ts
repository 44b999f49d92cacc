// The line saying why the process ends reaches a log reader that fell behind. Node writes to a pipe
// asynchronously once it is full, and process.exit drops what is still queued: src/cli/exit-flushed.ts waits
// (bounded) for stdout and stderr to empty first. A FIFO filled to capacity stands for the reader that fell
// behind: the child's write finds it full, as a container's log pipe is when its reader stalls.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import { once } from 'node:events'
import { closeSync, constants, openSync, readSync, writeSync } from 'node:fs'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { transform } from 'esbuild'
import t from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { scratchDir } from '../helpers/scratch.ts'
import { combinedOutput, ROOT } from '../helpers/sidecar.ts'

/** a FIFO whose buffer is full: `writer` for the child's stderr, `drain()` reads what is there now */
async function fullPipe(): Promise<{ writer: number; drain(): string; close(): void }> {
  const path = join(await scratchDir('exit-flushed'), 'log.fifo')
  execFileSync('mkfifo', [path])
  const reader = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK)
  const writer = openSync(path, constants.O_WRONLY | constants.O_NONBLOCK)
  const filler = Buffer.alloc(4096, 0x2e)
  for (;;) {
    try {
      if (writeSync(writer, filler) < filler.length) break
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EAGAIN') break
      throw err
    }
  }
  const chunk = Buffer.alloc(64 * 1024)
  return {
    writer,
    drain() {
      let text = ''
      for (;;) {
        let n: number
        try {
          n = readSync(reader, chunk)
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'EAGAIN') return text
          throw err
        }
        if (n === 0) return text
        text += chunk.subarray(0, n).toString('latin1')
      }
    },
    close() {
      closeSync(reader)
    },
  }
}

/** the child's stderr is the full pipe (the parent's copy of its write end is closed once it is handed over) */
function spawnInto(pipe: { writer: number }, args: string[]): ChildProcess & { stdoutText: () => string } {
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', pipe.writer] })
  closeSync(pipe.writer)
  // stderr is the FIFO, not a pipe of ours: this is stdout alone
  return Object.assign(child, { stdoutText: combinedOutput(child) })
}

const EXITER = `
import { exitFlushed } from './exit-flushed.mjs'
process.stderr.write('THE LAST LINE\\n')
// stdout is the test's own pipe: once this line is there, the stderr line was written and queued
process.stdout.write('written\\n')
if (process.argv[2] === 'plain') process.exit(2)
exitFlushed(2, Number(process.argv[3] ?? 60_000))
`

/**
 * The child runs plain JavaScript: the helper's source with its types stripped here. The test suite's
 * TypeScript hook would start esbuild's service in the child, and that Go process turns the inherited stderr
 * back into a blocking descriptor, the one case where Node's write would wait instead of queueing.
 */
async function exiterScript(): Promise<string> {
  const dir = await scratchDir('exit-flushed-child')
  const source = await readFile(join(ROOT, 'src/cli/exit-flushed.ts'), 'utf8')
  await writeFile(
    join(dir, 'exit-flushed.mjs'),
    (await transform(source, { loader: 'ts', format: 'esm' })).code,
  )
  await writeFile(join(dir, 'exiter.mjs'), EXITER)
  return join(dir, 'exiter.mjs')
}

t.test('a line queued behind a full pipe goes out before the exit, with the exit code', async (t) => {
  const script = await exiterScript()
  const pipe = await fullPipe()
  t.teardown(() => pipe.close())
  const child = spawnInto(pipe, [script, 'flushed'])
  const exited = once(child, 'exit')
  await eventually(() => child.stdoutText().includes('written'), { what: 'the child wrote its line' })
  t.equal(child.exitCode, null, 'still running: the line waits for the reader')
  let read = ''
  await eventually(
    async () => {
      read += pipe.drain()
      return child.exitCode !== null
    },
    { what: 'the child exits once the pipe drains' },
  )
  const [code] = await exited
  read += pipe.drain()
  t.equal(code, 2)
  t.ok(read.endsWith('THE LAST LINE\n'), 'the line came out, after the bytes that filled the pipe')
})

t.test('process.exit itself drops that line (why the helper exists)', async (t) => {
  const script = await exiterScript()
  const pipe = await fullPipe()
  t.teardown(() => pipe.close())
  const child = spawnInto(pipe, [script, 'plain'])
  const [code] = await once(child, 'exit')
  t.equal(code, 2)
  t.notMatch(pipe.drain(), /THE LAST LINE/, 'lost with the process')
})

t.test('a reader that never reads does not keep the process: it exits after the bound', async (t) => {
  const script = await exiterScript()
  const pipe = await fullPipe()
  t.teardown(() => pipe.close())
  const child = spawnInto(pipe, [script, 'flushed', '300'])
  const [code] = await once(child, 'exit')
  t.equal(code, 2, 'the code stands')
})

// The product's own start failure cannot be timed against a full pipe from outside (nothing tells the test when
// its line was written), so its exits that report why are checked to be the helper's.
t.test("the CLI's ends that report why go through exitFlushed, not process.exit", async (t) => {
  const main = await readFile(join(ROOT, 'src/cli/main.ts'), 'utf8')
  for (const [where, text] of [
    ['fail', /\nfunction fail\([\s\S]*?\n}\n/.exec(main)?.[0]],
    ['the internal-error handler', /const die = [\s\S]*?\n {2}}\n/.exec(main)?.[0]],
    ['the end of a drain', /stopped\.then\([\s\S]*?\)\n/.exec(main)?.[0]],
  ] as const) {
    t.ok(text, `${where} found`)
    t.match(text, /exitFlushed\(/, `${where}: exitFlushed`)
    t.notMatch(text, /process\.exit\(/, `${where}: no bare process.exit`)
  }
})
