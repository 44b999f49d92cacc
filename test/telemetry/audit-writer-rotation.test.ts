// The audit file rotated (renamed away, a new file opened at the path) while writes are under way: every line
// lands whole in one file, and the old file is let go as soon as no write needs it, not when the queue first
// runs dry, which under steady traffic may be never (a rotated file held open keeps its disk space).
import fs from 'node:fs'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { AuditWriter } from '../../src/telemetry/audit-writer.ts'
import { eventually } from '../helpers/eventually.ts'
import { scratchDir } from '../helpers/scratch.ts'

interface HeldWrite {
  fd: number
  data: Buffer
  callback: (err: NodeJS.ErrnoException | null, written: number) => void
}

/** fs.write held until the test lets each call complete, in whole or in part */
function holdWrites(t: Test): { held: HeldWrite[]; complete(bytes?: number): void } {
  const original = fs.write
  const held: HeldWrite[] = []
  fs.write = ((
    fd: number,
    data: Buffer,
    offset: number,
    length: number,
    _pos: unknown,
    callback: HeldWrite['callback'],
  ) => {
    held.push({ fd, data: data.subarray(offset, offset + length), callback })
  }) as unknown as typeof fs.write
  t.teardown(() => {
    fs.write = original
  })
  return {
    held,
    complete(bytes?: number) {
      const w = held.shift()
      if (w === undefined) throw new Error('no write under way')
      const n = bytes ?? w.data.length
      fs.writeSync(w.fd, w.data, 0, n)
      w.callback(null, n)
    },
  }
}

const isOpen = (fd: number) => {
  try {
    fs.fstatSync(fd)
    return true
  } catch {
    return false
  }
}

/** fs.close is asynchronous: wait for the descriptor to be gone */
const closed = (fd: number) =>
  eventually(() => !isOpen(fd), { timeoutMs: 2000, what: `descriptor ${fd} closed` }).catch(() => false)

t.test('a rotation while a batch is part-written and more keep coming', async (t) => {
  const dir = await scratchDir('audit-rotation')
  const first = join(dir, 'audit.log')
  const oldFd = fs.openSync(first, 'a')
  const dropped: number[] = []
  const writer = new AuditWriter(oldFd, 1 << 20, { dropped: (n) => dropped.push(n), failed: () => {} }, true)
  const writes = holdWrites(t)

  writer.write(Buffer.from('{"n":1}\n'))
  t.equal(writes.held.length, 1, 'the first batch is on its way')
  // the path is rotated: the file renamed away, a new one opened where it was
  fs.renameSync(first, join(dir, 'audit.log.1'))
  const newFd = fs.openSync(first, 'a')
  writer.switchTo(newFd)
  writer.write(Buffer.from('{"n":2}\n'))

  writes.complete(3) // the old file takes part of the first batch
  t.equal(writes.held[0]?.fd, oldFd, "the first batch's rest goes where its beginning went")
  writer.write(Buffer.from('{"n":3}\n'))
  writes.complete()
  t.equal(writes.held[0]?.fd, newFd, 'what was queued after the rotation goes to the new file')
  // the queue is not empty (n:3 waits behind n:2) and never runs dry while traffic lasts
  t.ok(await closed(oldFd), 'the rotated file is let go once its last batch is written')
  writer.write(Buffer.from('{"n":4}\n'))
  while (writes.held.length > 0) writes.complete()

  t.equal(
    fs.readFileSync(join(dir, 'audit.log.1'), 'utf8'),
    '{"n":1}\n',
    'the old file ends with a whole line',
  )
  t.equal(
    fs.readFileSync(first, 'utf8'),
    '{"n":2}\n{"n":3}\n{"n":4}\n',
    'the new file holds whole lines only',
  )
  t.same(dropped, [], 'nothing lost')
  await writer.close(1000)
  t.ok(await closed(newFd), 'close lets the current file go')
})

t.test('a rotation with no write under way lets the old file go at once', async (t) => {
  const dir = await scratchDir('audit-rotation-idle')
  const oldFd = fs.openSync(join(dir, 'a.log'), 'a')
  const writer = new AuditWriter(oldFd, 1 << 20, { dropped: () => {}, failed: () => {} }, true)
  const newFd = fs.openSync(join(dir, 'b.log'), 'a')
  writer.switchTo(newFd)
  t.ok(await closed(oldFd), 'closed')
  await writer.close(1000)
})
