// The ring of recent audit lines: bytes in one store that wraps around. Whatever the line lengths, it must
// hold the newest lines unchanged, newest first, as many as the store and ringSize allow, answer the same
// records as the documented audit record, and keep no reference to the request event it recorded.
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import t from 'tap'
import { toAuditRecord } from '../../src/telemetry/audit.ts'
import { AUDIT_RING_MIN_BYTES, AuditRing, storeBytes } from '../../src/telemetry/audit-ring.ts'
import { identity, requestEvent } from '../helpers/events.ts'
import { rng } from '../helpers/rng.ts'

/** a line of exactly `length` bytes that names its sequence number */
function line(seq: number, length: number): Buffer {
  const head = `{"n":${seq},"pad":"`
  const tail = '"}\n'
  return Buffer.from(head + 'x'.repeat(Math.max(0, length - head.length - tail.length)) + tail)
}

t.test('random line lengths: the newest lines, unchanged and in order, as many as fit', async (t) => {
  for (const [seed, capacity] of [
    [1, 8],
    [2, 128],
    [3, 1000],
    [4, 3],
  ] as const) {
    const random = rng(seed)
    const ring = new AuditRing(capacity)
    const store = storeBytes(capacity)
    const pushed: Buffer[] = []
    let bad = 0
    for (let seq = 0; seq < 6000; seq++) {
      // mostly ordinary lines, now and then a long one (up to half the store, the longest the ring keeps)
      const r = random()
      const length =
        r < 0.9 ? 200 + Math.floor(random() * 1500) : 1000 + Math.floor(random() * (store / 2 - 1000))
      const bytes = line(seq, length)
      // pushed from inside a larger buffer, as the audit batch hands it over
      const batch = Buffer.concat([Buffer.from('prefix'), bytes, Buffer.from('suffix')])
      ring.pushLine(batch, 6, 6 + bytes.length)
      pushed.push(bytes)
      if (seq % 97 !== 0 && seq !== 5999) continue
      const held = [...ring.lines()]
      // newest first, a consecutive run of the newest pushes, byte for byte
      const ok = held.every((b, i) => b.equals(pushed[pushed.length - 1 - i]!))
      // nothing a newer line did not need was dropped: the newest k lines fit whenever they and one
      // skipped end (shorter than the longest line) fit in the store
      let fit = 0
      let bytesSoFar = 0
      const longest = Math.max(...pushed.slice(-capacity).map((b) => b.length))
      for (let i = pushed.length - 1; i >= 0 && fit < capacity; i--) {
        bytesSoFar += pushed[i]!.length
        if (bytesSoFar + longest > store) break
        fit++
      }
      if (!ok || held.length > capacity || held.length < fit || held.length !== ring.size) {
        bad++
        t.fail(
          `seed ${seed}, capacity ${capacity}, after ${seq + 1} lines: held ${held.length}, expected ≥ ${fit}`,
        )
      }
    }
    t.equal(bad, 0, `seed ${seed}, capacity ${capacity}: every check held`)
  }
})

t.test('a line longer than half the store is left to the audit output, the history stays', async (t) => {
  const ring = new AuditRing(4)
  for (let i = 0; i < 4; i++) ring.pushLine(line(i, 300), 0, 300)
  ring.pushLine(line(99, AUDIT_RING_MIN_BYTES / 2 + 1), 0, AUDIT_RING_MIN_BYTES / 2 + 1)
  t.same(
    [...ring.lines()].map((b) => JSON.parse(b.toString()).n),
    [3, 2, 1, 0],
  )
})

t.test('query answers the documented audit record, filtered and limited, newest first', async (t) => {
  const ring = new AuditRing(100)
  const events = [
    requestEvent({ requestId: 'r-1', identity: identity('a/svc', { source: 'jwt' }) }),
    requestEvent({ requestId: 'r-2', identity: identity('a/svc', { source: 'mtls' }) }),
    // a failed jwt attempt of an anonymous caller: its line carries "source":"jwt" inside failures only
    requestEvent({
      requestId: 'r-3',
      identity: identity('anonymous', { source: 'anonymous', verified: false, kind: 'unknown' }),
      failures: [{ failed: true, source: 'jwt', reason: 'expired' }],
      status: 401,
    }),
    requestEvent({ requestId: 'r-"4"\n', path: '/caf\u00e9?q="x"', identity: identity('b \u2028 svc') }),
  ]
  for (const e of events) ring.pushEvent(e)
  const expected = (e: (typeof events)[number]) => JSON.parse(JSON.stringify(toAuditRecord(e)))
  t.same(ring.query({}), events.map(expected).reverse(), 'all, newest first, as toAuditRecord')
  t.same(
    ring.query({ source: 'jwt' }).map((r) => r.request_id),
    ['r-1'],
    'source matches the identity, not a failure',
  )
  t.same(
    ring.query({ identity: 'a/svc' }).map((r) => r.request_id),
    ['r-2', 'r-1'],
  )
  t.same(
    ring.query({ identity: 'a/svc', source: 'mtls' }).map((r) => r.request_id),
    ['r-2'],
  )
  t.same(ring.query({ requestId: 'r-"4"\n' }), [expected(events[3]!)], 'ids that need escaping')
  t.same(ring.query({ identity: 'b \u2028 svc' }).length, 1)
  t.same(
    ring.query({ traceId: events[0]!.traceId }).map((r) => r.request_id),
    ['r-1'],
  )
  t.same(ring.query({ requestId: 'r-' }), [], 'a prefix of an id is no match')
  t.equal(ring.query({ limit: 2 }).length, 2)
})

t.test('resize keeps the newest lines that the new size holds', async (t) => {
  const ring = new AuditRing(10)
  for (let i = 0; i < 10; i++) ring.pushEvent(requestEvent({ requestId: `q-${i}` }))
  ring.resize(3)
  t.same(
    ring.query({}).map((r) => r.request_id),
    ['q-9', 'q-8', 'q-7'],
  )
  ring.resize(50)
  ring.pushEvent(requestEvent({ requestId: 'q-10' }))
  t.same(
    ring.query({}).map((r) => r.request_id),
    ['q-10', 'q-9', 'q-8', 'q-7'],
  )
})

t.test('the ring keeps no reference to the event it recorded', async (t) => {
  setFlagsFromString('--expose-gc')
  const gc = runInNewContext('gc') as () => void
  const ring = new AuditRing(1000)
  // in a frame of its own, so that no register of this one still holds the last event
  const record = (n: number) => {
    const refs: WeakRef<object>[] = []
    for (let i = 0; i < n; i++) {
      const event = requestEvent({ requestId: `w-${i}` })
      ring.pushEvent(event)
      refs.push(new WeakRef(event))
    }
    return refs
  }
  const refs = record(50)
  // WeakRef targets stay alive until the current job ends
  await new Promise((resolve) => setImmediate(resolve))
  gc()
  t.same(
    refs.flatMap((r, i) => (r.deref() === undefined ? [] : [i])),
    [],
    'every recorded event was collected',
  )
  t.equal(ring.query({ limit: 1000 }).length, 50, 'and every one is still answered')
})
