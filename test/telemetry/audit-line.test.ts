// The audit file is written from bytes prepared per identity and per batch, not from strings: what lands in
// the output must still be exactly the lines auditLine() formats, whatever the text and however long the line.
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { configSchema } from '../../src/config/schema.ts'
import { AUDIT_BATCH_CHARS, AuditLog, auditLine } from '../../src/telemetry/audit.ts'
import { identityBytes, LineBuffer, writeAuditLine } from '../../src/telemetry/audit-line.ts'
import type { Identity, RequestEvent } from '../../src/types.ts'
import { identity, requestEvent } from '../helpers/events.ts'
import { scratchDir } from '../helpers/scratch.ts'

const auditConfig = (output: string) => configSchema.parse({ audit: { output } }).audit

function hostileEvents(): RequestEvent[] {
  return [
    requestEvent(),
    requestEvent({ identity: identity('ünï ✓ "quoted" \\ back\nline', { team: 'pay\u0000ments' }) }),
    // a lone surrogate is written as JSON.stringify writes it (\udc00), not as broken UTF-8
    requestEvent({ path: '/a\udc00b/😀', method: 'PROPFIND', clientAddress: '::1' }),
    requestEvent({
      fingerprints: { cert: 'c1', apikey: 'k1' },
      failures: [{ failed: true, source: 'jwt', reason: 'expired', detail: 'd' }],
      anomalies: ['spoofed_header', 'unverified_claim'],
      upstreamError: 'timeout',
      grpcStatus: 14,
      status: 504,
      durationMs: 0.0004,
      upstreamMs: 1e12,
      bytesIn: 2 ** 53,
      bytesOut: Number.NaN,
    }),
    // longer than a whole batch: the buffer grows for it
    requestEvent({ path: `/${'x'.repeat(3 * AUDIT_BATCH_CHARS)}` }),
  ]
}

t.test('the audit file holds exactly the lines auditLine() formats, in order', async (t) => {
  const file = join(await scratchDir('audit-line'), 'audit.log')
  const audit = new AuditLog(auditConfig(file))
  const events: RequestEvent[] = []
  // ≈ 1 MB in all, far below what may wait for the output (larger would be dropped and counted)
  for (let i = 0; i < 3; i++) events.push(...hostileEvents())
  for (let i = 0; i < 400; i++) events.push(...hostileEvents().slice(0, -1))
  for (const e of events) audit.record(e)
  // lines another process formatted go into the same batches
  const foreign = auditLine(requestEvent({ path: '/from-a-worker/ü' }))
  audit.writeLines(foreign)
  await audit.close()
  const want = `${events.map(auditLine).join('')}${foreign}`
  const got = await readFile(file, 'utf8')
  t.equal(got.length, want.length, 'as long as the formatted lines')
  t.ok(got === want, 'byte for byte the formatted lines')
  t.equal(audit.linesWritten, events.length + 1)
  t.equal(audit.linesDropped, 0)
})

t.test("a worker's batches reach its sink as the same text", async (t) => {
  const batches: string[] = []
  const audit = new AuditLog(auditConfig('stdout'), {
    sink: (lines) => {
      batches.push(lines)
      return true
    },
  })
  const events = hostileEvents()
  for (const e of events) audit.record(e)
  await audit.close()
  t.equal(batches.join(''), events.map(auditLine).join(''))
})

t.test('identity fragments: one per identity object, never shared between identities', async (t) => {
  const a = identity('svc-a', { team: 'payments' })
  const b = identity('svc-b', { team: 'payments' })
  t.equal(identityBytes(a), identityBytes(a), 'the same identity object reuses its fragment')
  t.not(identityBytes(a).head.toString(), identityBytes(b).head.toString(), 'two identities, two fragments')
  // a reload that moves svc-a to another team hands out a new identity object: its lines say the new team
  const reloaded = identity('svc-a', { team: 'billing' })
  const before = JSON.parse(auditLine(requestEvent({ identity: a }))) as Record<string, unknown>
  const after = JSON.parse(auditLine(requestEvent({ identity: reloaded }))) as Record<string, unknown>
  t.equal(before['team'], 'payments')
  t.equal(after['team'], 'billing')
  t.equal(after['identity'], 'svc-a')
})

t.test('numbers are written as JSON.stringify writes them', async (t) => {
  const out = new LineBuffer(4)
  const cases = [0, 7, 10, 99, 100, 12345, 2 ** 53 - 1, 2 ** 53, -1, 1.5, 1e21, Number.NaN, -Infinity]
  for (const n of cases) {
    out.length = 0
    out.number(n)
    t.equal(out.toString(), JSON.stringify(n), String(n))
  }
  for (const ms of [0, 0.0004, 0.0005, 0.05, 1, 12.3456, 999.9995, 1e9 - 0.001, 1e9, -3, Number.NaN]) {
    out.length = 0
    out.millis(ms)
    const rounded = Math.round(ms * 1000) / 1000
    const want = ms >= 0 && ms < 1e9 ? rounded.toFixed(3) : JSON.stringify(rounded)
    t.equal(out.toString(), want, `${ms} ms`)
  }
})

t.test(
  'a line written into a buffer with text already in it appends, and the buffer hands over once',
  async (t) => {
    const out = new LineBuffer(16)
    out.ascii('x')
    const e = requestEvent()
    writeAuditLine(out, e)
    const taken = out.take()
    t.equal(taken.toString('utf8'), `x${auditLine(e)}`)
    t.equal(out.length, 0, 'the next batch starts empty')
    t.not(out.bytes, taken, 'in a new buffer: the handed-over bytes are not overwritten')
  },
)

t.test('an event whose line cannot be written leaves no piece of it in the output', async (t) => {
  const file = join(await scratchDir('audit-line-throw'), 'audit.log')
  const audit = new AuditLog(auditConfig(file))
  const before = requestEvent({ path: '/before' })
  const after = requestEvent({ path: '/after' })
  audit.record(before)
  // no valid time: toISOString throws after the line was begun (the telemetry facade counts the failure)
  t.throws(() => audit.record(requestEvent({ time: Number.NaN })))
  audit.record(after)
  await audit.close()
  t.equal(await readFile(file, 'utf8'), `${auditLine(before)}${auditLine(after)}`, 'whole lines only')
  t.equal(audit.linesWritten, 2)
})

t.test("an identity whose fragment cannot be written leaves nothing in the next identity's", async (t) => {
  const broken = identity('svc-broken', { kind: undefined as unknown as Identity['kind'] })
  t.throws(() => identityBytes(broken))
  const next = identity('svc-next')
  const line = auditLine(requestEvent({ identity: next }))
  t.equal((JSON.parse(line) as Record<string, unknown>)['identity'], 'svc-next')
})
