// Audit lines are batched into larger writes, but a line on a quiet proxy still reaches the file within the
// flush interval, without waiting for more traffic or a shutdown.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import fs from 'node:fs'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { configSchema } from '../../src/config/schema.ts'
import {
  AUDIT_BATCH_CHARS,
  AUDIT_FLUSH_MS,
  AUDIT_MAX_PENDING_BYTES,
  AuditLog,
} from '../../src/telemetry/audit.ts'
import { requestEvent } from '../helpers/events.ts'
import { eventually } from '../helpers/eventually.ts'
import { scratchDir } from '../helpers/scratch.ts'
import { TS_NODE_FLAGS } from '../helpers/sidecar.ts'

t.test('a lone audit line is flushed within the flush interval', async (t) => {
  const file = join(await scratchDir('audit-flush'), 'audit.log')
  const audit = new AuditLog(configSchema.parse({ audit: { output: file } }).audit)
  t.teardown(() => audit.close())
  const event = requestEvent()
  audit.record(event)
  const text = await eventually(
    async () => {
      const written = await readFile(file, 'utf8').catch(() => '')
      return written.includes('\n') ? written : undefined
    },
    { timeoutMs: AUDIT_FLUSH_MS * 3, what: 'the line on disk' },
  ).catch(() => readFile(file, 'utf8').catch(() => ''))
  const lines = text.split('\n').filter(Boolean)
  t.equal(lines.length, 1, 'the line is on disk before close()')
  const rec = JSON.parse(lines[0]!) as Record<string, unknown>
  t.equal(rec['type'], 'audit')
  t.equal(rec['request_id'], event.requestId)
})

t.test('a burst is batched and nothing is lost on close', async (t) => {
  const file = join(await scratchDir('audit-burst'), 'audit.log')
  const audit = new AuditLog(configSchema.parse({ audit: { output: file } }).audit)
  const ids = new Set<string>()
  for (let i = 0; i < 5000; i++) {
    const e = requestEvent()
    ids.add(e.requestId)
    audit.record(e)
  }
  await audit.close()
  const lines = (await readFile(file, 'utf8')).split('\n').filter(Boolean)
  t.equal(lines.length, 5000, 'every line written')
  t.ok(
    lines.every((l) => ids.has((JSON.parse(l) as { request_id: string }).request_id)),
    'every line is whole JSON',
  )
})

t.test('lines reach the output in large batches: a few writes for thousands of lines', async (t) => {
  const file = join(await scratchDir('audit-batches'), 'audit.log')
  const audit = new AuditLog(configSchema.parse({ audit: { output: file } }).audit)
  // the destination writes through fs.write, and fs.writeSync when it flushes on close: count the audit writes
  const original = { write: fs.write, writeSync: fs.writeSync }
  let writes = 0
  let bytes = 0
  const counted = (f: (...args: unknown[]) => unknown) =>
    function (this: unknown, ...args: unknown[]) {
      const data = args[1]
      const text = Buffer.isBuffer(data) ? data.toString('latin1', 0, 15) : data
      if (typeof text === 'string' && text.startsWith('{"type":"audit"')) {
        writes++
        bytes += Buffer.byteLength(data as string | Buffer)
      }
      return f.apply(this, args)
    }
  fs.write = counted(original.write as (...args: unknown[]) => unknown) as typeof fs.write
  fs.writeSync = counted(original.writeSync as (...args: unknown[]) => unknown) as typeof fs.writeSync
  t.teardown(() => {
    fs.write = original.write
    fs.writeSync = original.writeSync
  })
  // the file is open before the lines come, as on a running proxy
  await eventually(() => fs.existsSync(file), { what: 'the audit file to be opened' })
  for (let i = 0; i < 5000; i++) audit.record(requestEvent())
  await audit.close()
  const lines = (await readFile(file, 'utf8')).split('\n').filter(Boolean)
  t.equal(lines.length, 5000, 'every line written')
  const batches = Math.ceil(bytes / AUDIT_BATCH_CHARS)
  t.ok(
    writes >= 1 && writes <= batches + 2,
    `${writes} writes for ${bytes} bytes (batches of ${AUDIT_BATCH_CHARS})`,
  )
})

t.test('a stalled output drops and counts lines instead of buffering without bound', async (t) => {
  // stdout is a pipe nobody reads: it fills after 64 KiB and every later line waits in the destination
  const child = spawn(
    process.execPath,
    [
      ...TS_NODE_FLAGS,
      join(import.meta.dirname, '..', 'fixtures', 'audit-stalled-stdout.ts'),
      '40000',
      String(Math.floor((40_000 * 1024 - 2 * AUDIT_MAX_PENDING_BYTES) / 1024)),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  )
  t.teardown(() => {
    child.kill('SIGKILL')
  })
  let stderr = ''
  await new Promise<void>((resolve, reject) => {
    child.stderr.setEncoding('utf8')
    child.stderr.on('data', (c: string) => {
      stderr += c
      if (stderr.includes('"dropped"')) resolve()
    })
    child.once('exit', (code) => reject(new Error(`child exited (${code}) before reporting: ${stderr}`)))
  })
  child.kill('SIGKILL')
  await once(child, 'exit')
  const report = JSON.parse(stderr.trim().split('\n').pop() ?? '{}') as { dropped?: number }
  // 40,000 lines of ~1 KiB are ~40 MiB; at most AUDIT_MAX_PENDING_BYTES (16 MiB) may wait
  const lineBytes = 40_000 * 1024
  t.ok(
    (report.dropped ?? 0) >= Math.floor((lineBytes - 2 * AUDIT_MAX_PENDING_BYTES) / 1024),
    `lines beyond the pending bound are dropped and counted in nhi_audit_dropped_lines_total (${report.dropped})`,
  )
})
