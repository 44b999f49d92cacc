// Audit lines are batched into larger writes, but a line on a quiet proxy still reaches the file within the
// flush interval, without waiting for more traffic or a shutdown.
import { mkdtemp, readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { configSchema } from '../src/config/schema.ts'
import { AUDIT_FLUSH_MS, AuditLog } from '../src/telemetry/audit.ts'
import { requestEvent } from './helpers/events.ts'

t.test('a lone audit line is flushed within the flush interval', async (t) => {
  const file = join(await mkdtemp(join(tmpdir(), 'nhi-audit-flush-')), 'audit.log')
  const audit = new AuditLog(configSchema.parse({ audit: { output: file } }).audit)
  t.teardown(() => audit.close())
  const event = requestEvent()
  audit.record(event)
  await new Promise((r) => setTimeout(r, AUDIT_FLUSH_MS * 3))
  const text = await readFile(file, 'utf8').catch(() => '')
  const lines = text.split('\n').filter(Boolean)
  t.equal(lines.length, 1, 'the line is on disk before close()')
  const rec = JSON.parse(lines[0]!) as Record<string, unknown>
  t.equal(rec['type'], 'audit')
  t.equal(rec['request_id'], event.requestId)
})

t.test('a burst is batched and nothing is lost on close', async (t) => {
  const file = join(await mkdtemp(join(tmpdir(), 'nhi-audit-burst-')), 'audit.log')
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
