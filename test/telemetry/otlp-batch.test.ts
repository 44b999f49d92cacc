// The bytes requests cross to the OTLP export thread in: what the export thread reads back must build the
// same span fields and the same audit line as the request itself, whatever the request carried, across
// batches, when the identity table starts over and when a new thread starts from the table's prelude.
import t from 'tap'
import {
  type OtlpBatch,
  OtlpBatchReader,
  OtlpBatchWriter,
  TABLE_SLOTS,
} from '../../src/telemetry/otlp-batch.ts'
import { otlpRecord } from '../../src/telemetry/otlp-record.ts'
import type { RequestEvent } from '../../src/types.ts'
import { identity, requestEvent, SAMPLE_IDENTITIES } from '../helpers/events.ts'

function readAll(reader: OtlpBatchReader, batch: OtlpBatch): RequestEvent[] {
  const out: RequestEvent[] = []
  reader.read(batch, (e) => out.push(e))
  return out
}

const exported = (e: RequestEvent) => otlpRecord(e, true)

t.test('every field of every kind of request comes back as it went in', async (t) => {
  const events: RequestEvent[] = [
    requestEvent(),
    requestEvent({
      identity: SAMPLE_IDENTITIES[1]!,
      parentSpanId: '00f067aa0ba902b7',
      traceFlags: '00',
      host: 'orders.internal:8443',
      fingerprints: { jwt: 'a1b2c3d4e5f60718', cert: '0011223344556677', apikey: 'ffeeddccbbaa9988' },
      failures: [
        { failed: true, source: 'jwt', reason: 'expired' },
        { failed: true, source: 'apikey', reason: 'unknown_key' },
      ],
      anomalies: ['token_shared', 'unknown_kid'],
      decision: { decision: 'deny', rule: 'jobs-only' },
      status: 403,
      durationMs: 0.123456,
      upstreamMs: 0,
    }),
    // the same method, route, service… as the previous record, then different ones
    requestEvent({ identity: SAMPLE_IDENTITIES[1]!, host: 'orders.internal:8443', traceFlags: '00' }),
    requestEvent({
      identity: SAMPLE_IDENTITIES[2]!,
      method: 'POST',
      path: '/ördérs/"quoted"\\back\u0001',
      route: 'other',
      clientAddress: '2001:db8::7',
      upstreamError: 'timeout',
      status: 504,
      bytesIn: 2 ** 40,
      bytesOut: 0,
    }),
    // a field present in the previous record and absent here
    requestEvent({ identity: SAMPLE_IDENTITIES[3]!, method: 'POST' }),
    // behind a trusted proxy: the client it forwarded for, and the proxy as the peer
    requestEvent({ clientAddress: '203.0.113.7', peerAddress: '10.0.0.2' }),
    requestEvent({
      identity: identity('orders-client', {
        kind: 'service',
        source: 'mtls',
        verified: true,
        rule: 'spiffe',
      }),
      method: 'POST',
      path: '/orders.v1.Orders/Get',
      grpcStatus: 14,
      status: 200,
    }),
    requestEvent({
      identity: SAMPLE_IDENTITIES[6]!,
      grpcStatus: 0,
      decision: { decision: 'allow', rule: 'r' },
    }),
    // claims are JSON: a lone surrogate is possible there, and the audit line escapes it
    requestEvent({
      identity: identity('bad\ud800name', {
        kind: 'human',
        source: 'jwt',
        team: 'ünï',
        attributes: { sub: 'x\udc00', iss: 'https://idp.example' },
      }),
    }),
  ]
  const writer = new OtlpBatchWriter()
  for (const e of events) t.ok(writer.write(e))
  t.equal(writer.records, events.length)
  const batch = writer.take()
  t.equal(writer.records, 0, 'the next batch starts empty')
  const back = readAll(new OtlpBatchReader(), batch)
  t.equal(back.length, events.length)
  for (let i = 0; i < events.length; i++) t.same(exported(back[i]!), exported(events[i]!), `request ${i}`)
  t.match(
    exported(back[3]!).line,
    /"path":"\/ördérs\/\\"quoted\\"\\\\back\\u0001"/,
    'the line escapes as JSON does',
  )
  t.match(
    exported(back[5]!).line,
    /"client_address":"203\.0\.113\.7","peer_address":"10\.0\.0\.2"/,
    'the line names the trusted proxy as the audit file does',
  )
  t.equal(back.at(-1)!.identity.name, 'bad\ud800name', 'a lone surrogate arrives unchanged')
  t.match(exported(back.at(-1)!).line, /"sub":"x\\udc00"/)
})

t.test('identities are sent once per table, across batches; a full table starts over', async (t) => {
  const writer = new OtlpBatchWriter()
  const reader = new OtlpBatchReader()
  const first = requestEvent({ identity: SAMPLE_IDENTITIES[1]! })
  writer.write(first)
  const one = writer.take()
  writer.write(requestEvent({ identity: SAMPLE_IDENTITIES[1]! }))
  const two = writer.take()
  t.ok(two.length < one.length - 20, 'the second batch refers to the identity instead of carrying it')
  readAll(reader, one)
  t.same(readAll(reader, two)[0]!.identity.name, SAMPLE_IDENTITIES[1]!.name)

  // the table holds one identity already
  const many = Array.from({ length: TABLE_SLOTS - 1 }, (_, i) => identity(`svc-${i}`, { team: `t${i % 7}` }))
  let refused = 0
  for (const id of many) if (!writer.write(requestEvent({ identity: id }))) refused++
  t.equal(refused, 0, 'the table takes TABLE_SLOTS identities')
  const extra = requestEvent({ identity: identity('one-too-many') })
  t.notOk(writer.write(extra), 'a new identity past the table is refused, nothing written')
  t.equal(writer.records, TABLE_SLOTS - 1)
  const full = writer.take()
  writer.startOver()
  t.ok(writer.write(extra))
  t.ok(writer.write(requestEvent({ identity: many[5]! })), 'an identity of the old table is written again')
  const after = writer.take()
  t.ok(after.reset, 'the batch after the start-over says so')
  const fullBack = readAll(reader, full)
  t.equal(fullBack.at(-1)!.identity.name, `svc-${TABLE_SLOTS - 2}`)
  const afterBack = readAll(reader, after)
  t.same(
    afterBack.map((e) => [e.identity.name, e.identity.team]),
    [
      ['one-too-many', undefined],
      ['svc-5', 't5'],
    ],
  )
})

t.test('a new export thread learns the table from the prelude, then reads what was written', async (t) => {
  const writer = new OtlpBatchWriter()
  writer.write(requestEvent({ identity: SAMPLE_IDENTITIES[0]! }))
  writer.write(requestEvent({ identity: SAMPLE_IDENTITIES[4]! }))
  writer.take() // went to a thread that died with it
  const pending = [
    requestEvent({ identity: SAMPLE_IDENTITIES[4]! }),
    requestEvent({ identity: SAMPLE_IDENTITIES[5]! }),
  ]
  for (const e of pending) writer.write(e)
  const prelude = writer.prelude()
  t.ok(prelude?.reset)
  t.equal(prelude?.records, 0)
  const fresh = new OtlpBatchReader()
  t.same(readAll(fresh, prelude!), [], 'the prelude carries no request')
  const back = readAll(fresh, writer.take())
  for (let i = 0; i < pending.length; i++) t.same(exported(back[i]!), exported(pending[i]!))
  writer.write(pending[0]!)
  const next = writer.take()
  t.throws(
    () => readAll(new OtlpBatchReader(), next),
    /identity slot \d+ unknown/,
    'without the prelude a thread cannot resolve the slot (and says so instead of exporting a wrong one)',
  )
})

t.test('a discarded batch takes its identity definitions with it', async (t) => {
  const writer = new OtlpBatchWriter()
  const reader = new OtlpBatchReader()
  writer.write(requestEvent({ identity: SAMPLE_IDENTITIES[2]! }))
  writer.discard()
  t.equal(writer.records, 0)
  writer.write(requestEvent({ identity: SAMPLE_IDENTITIES[2]! }))
  const batch = writer.take()
  t.ok(batch.reset)
  t.equal(readAll(reader, batch)[0]!.identity.name, SAMPLE_IDENTITIES[2]!.name)
})

t.test(
  'one decision object while the decision is unchanged: the audit line caches its bytes per object',
  async (t) => {
    const allow = { decision: 'allow' as const, rule: 'default' }
    const skipped = { decision: 'allow' as const, rule: 'default', skipped: true }
    const deny = { decision: 'deny' as const, rule: 'jobs-only' }
    const writer = new OtlpBatchWriter()
    const sent = [allow, allow, skipped, skipped, deny, allow].map((decision) => requestEvent({ decision }))
    for (const e of sent.slice(0, 3)) writer.write(e)
    const reader = new OtlpBatchReader()
    const first = readAll(reader, writer.take())
    for (const e of sent.slice(3)) writer.write(e)
    const read = [...first, ...readAll(reader, writer.take())]
    t.same(
      read.map((e) => e.decision),
      sent.map((e) => e.decision),
      'every decision comes back as it went in',
    )
    t.equal(read[1]!.decision, read[0]!.decision, 'the same decision again: the same object')
    t.equal(read[3]!.decision, read[2]!.decision, 'across batches too')
    t.not(read[2]!.decision, read[1]!.decision, 'skipped is a different decision')
    t.not(read[5]!.decision, read[4]!.decision, 'a changed decision: a new object')
    t.same(
      read.map(exported).map((r) => r.line),
      sent.map(exported).map((r) => r.line),
      'the same audit lines',
    )
  },
)
