import { connect, type Socket } from 'node:net'
import { setImmediate as tick } from 'node:timers/promises'
import t from 'tap'
import { configSchema } from '../../src/config/schema.ts'
import { Telemetry } from '../../src/telemetry/index.ts'
import { startAdmin } from '../helpers/admin.ts'
import { identity, requestEvent } from '../helpers/events.ts'
import { eventually } from '../helpers/eventually.ts'

function newTelemetry(live?: { maxSubscribers?: number; heartbeatMs?: number }) {
  return new Telemetry(configSchema.parse({ service: 'checkout', audit: { output: 'off', ringSize: 100 } }), {
    version: 'test',
    live,
  })
}

/** Reads an SSE stream through fetch and collects the parsed `data:` payloads. */
async function subscribe(url: string, signal: AbortSignal) {
  const res = await fetch(url, { signal })
  const events: Record<string, unknown>[] = []
  const comments: string[] = []
  let buffer = ''
  const done = (async () => {
    const decoder = new TextDecoder()
    try {
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        buffer += decoder.decode(chunk, { stream: true })
        let end = buffer.indexOf('\n\n')
        while (end >= 0) {
          const frame = buffer.slice(0, end)
          buffer = buffer.slice(end + 2)
          for (const line of frame.split('\n')) {
            if (line.startsWith('data: ')) events.push(JSON.parse(line.slice(6)))
            else if (line.startsWith(':')) comments.push(line)
          }
          end = buffer.indexOf('\n\n')
        }
      }
    } catch {
      // aborted by the test
    }
  })()
  return { res, events, comments, done }
}

async function until(cond: () => boolean, timeoutMs = 5000): Promise<void> {
  await eventually(cond, { timeoutMs, intervalMs: 10 })
}

t.test('identity and source together pick one of the identities that share a name', async (t) => {
  const telemetry = newTelemetry({ heartbeatMs: 1000 })
  const url = await startAdmin(t, telemetry)
  const abort = new AbortController()
  t.teardown(() => abort.abort())
  const keyOnly = await subscribe(`${url}/events?identity=payments&source=apikey`, abort.signal)
  await until(() => telemetry.liveStats().subscribers === 1)
  telemetry.record(requestEvent({ requestId: 'jwt-1', identity: identity('payments', { source: 'jwt' }) }))
  telemetry.record(requestEvent({ requestId: 'key-1', identity: identity('payments', { source: 'apikey' }) }))
  // frames on one stream arrive in order: had the jwt event been sent, it would come first
  await until(() => keyOnly.events.length >= 1)
  t.same(
    keyOnly.events.map((e) => [e['id'], e['source']]),
    [['key-1', 'apikey']],
  )
  const audit = telemetry.auditQuery({ identity: 'payments', source: 'jwt' })
  t.same(
    audit.map((r) => [r.request_id, r.source]),
    [['jwt-1', 'jwt']],
    'the audit ring filters by source too',
  )
})

t.test('live events stream through a real socket, with identity filter and heartbeats', async (t) => {
  const telemetry = newTelemetry({ heartbeatMs: 50 })
  const url = await startAdmin(t, telemetry)
  const abort = new AbortController()
  t.teardown(() => abort.abort())
  const all = await subscribe(`${url}/events`, abort.signal)
  const bots = await subscribe(`${url}/events?identity=googlebot`, abort.signal)
  t.equal(all.res.status, 200)
  t.match(all.res.headers.get('content-type'), /^text\/event-stream/)
  await until(() => telemetry.liveStats().subscribers === 2)

  telemetry.record(requestEvent({ requestId: 'a', identity: identity('payments/api') }))
  telemetry.record(
    requestEvent({
      requestId: 'b',
      identity: identity('googlebot', { kind: 'bot', source: 'useragent', verified: false }),
      status: 404,
    }),
  )
  await until(() => all.events.length === 2 && bots.events.length === 1)
  t.match(all.events[1], {
    id: 'b',
    identity: 'googlebot',
    kind: 'bot',
    source: 'useragent',
    verified: false,
    status: 404,
    method: 'GET',
    route: '/api/v1/orders/:id',
    service: 'checkout',
  })
  t.equal(bots.events[0]?.['id'], 'b', 'filtered subscriber only sees its identity')
  await until(() => all.comments.some((c) => c.includes('heartbeat')))
  abort.abort()
  await until(() => telemetry.liveStats().subscribers === 0)
  t.pass('closed subscribers are removed')
})

t.test('a reader that never reads is dropped from, not buffered for; others keep receiving', async (t) => {
  const telemetry = newTelemetry()
  const url = await startAdmin(t, telemetry)
  const { port } = new URL(url)
  const stalled: Socket = connect({ host: '127.0.0.1', port: Number(port) })
  t.teardown(() => stalled.destroy())
  await new Promise((r) => stalled.once('connect', r))
  stalled.write(`GET /events HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`)
  stalled.pause() // never read: the kernel buffers fill up, then the server sees backpressure
  const abort = new AbortController()
  t.teardown(() => abort.abort())
  const healthy = await subscribe(`${url}/events`, abort.signal)
  await until(() => telemetry.liveStats().subscribers === 2)

  const padding = 'x'.repeat(400)
  let maxBuffered = 0
  for (let batch = 0; batch < 100; batch++) {
    for (let i = 0; i < 500; i++) {
      telemetry.record(requestEvent({ path: `/${padding}/${batch}/${i}`, requestId: `bulk-${batch}-${i}` }))
    }
    maxBuffered = Math.max(maxBuffered, telemetry.liveStats().bufferedBytes)
    await tick()
  }
  const stats = telemetry.liveStats()
  t.ok(stats.dropped > 0, `events were dropped for the stalled client (${stats.dropped})`)
  // 50,000 events × ~600 bytes would be ~30 MB if the server buffered them for the stalled socket
  t.ok(maxBuffered < 256 * 1024, `at most ${maxBuffered} bytes were ever queued`)

  // the healthy reader may still be draining the bulk (events for a busy reader are dropped), so markers
  // are sent until one arrives
  let marker = 0
  await until(() => {
    telemetry.record(requestEvent({ requestId: `final-marker-${++marker}` }))
    return healthy.events.some((e) => String(e['id']).startsWith('final-marker-'))
  })
  t.pass('the healthy subscriber still receives events')
})

t.test('the subscriber cap answers 503 instead of growing without bound', async (t) => {
  const telemetry = newTelemetry({ maxSubscribers: 2 })
  const url = await startAdmin(t, telemetry)
  const abort = new AbortController()
  t.teardown(() => abort.abort())
  await subscribe(`${url}/events`, abort.signal)
  await subscribe(`${url}/events`, abort.signal)
  const third = await fetch(`${url}/events`)
  t.equal(third.status, 503)
  t.match(await third.json(), { error: /too many/ })
})
