// attribute() must not throw, but a bug could make it: a request it fails for must not get past an enforced
// policy. Under `policy.mode: enforce` it is answered 500 (a gRPC call: a gRPC status) and never forwarded;
// otherwise it goes on as anonymous. Either way it is counted in nhi_attribution_errors_total, recorded like
// any request, and logged at most once a minute. No client can cause this, so the test breaks the running
// pipeline in-process.
import { once } from 'node:events'
import { connect } from 'node:http2'
import pino from 'pino'
import t, { type Test } from 'tap'
import { configSchema } from '../../src/config/schema.ts'
import {
  ATTRIBUTION_ERROR_LOG_INTERVAL_MS,
  attributionErrorReporter,
  startSidecar,
} from '../../src/runtime.ts'
import type { Recorder, RequestEvent } from '../../src/types.ts'
import { eventually } from '../helpers/eventually.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { startUpstream } from '../helpers/upstream.ts'

const SECRET = 'internal detail 7f3a'

async function brokenSidecar(t: Test, mode: 'enforce' | 'observe') {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const events: RequestEvent[] = []
  const recorder: Recorder = { name: 'events', record: (e) => void events.push(e) }
  const logLines: Record<string, unknown>[] = []
  const log = pino({ level: 'info' }, { write: (line: string) => void logLines.push(JSON.parse(line)) })
  const sidecar = await startSidecar({
    config: configSchema.parse({
      service: 'orders',
      listen: { http: '127.0.0.1:0' },
      admin: '127.0.0.1:0',
      upstream: upstream.url,
      audit: { output: 'off' },
      timeouts: { drainDelay: '0s' },
      policy: { mode, rules: [{ route: '/admin/**', allow: [{ identity: 'ops', verified: true }] }] },
    }),
    log,
    recorders: [recorder],
  })
  t.teardown(() => sidecar.close())
  const pipeline = sidecar.pipeline()
  let calls = 0
  // the first call throws, the next rejects, and so on
  pipeline.attribute = () => {
    calls++
    if (calls % 2 === 1) throw new Error(SECRET)
    return Promise.reject(new Error(SECRET))
  }
  return {
    upstream,
    events,
    logLines,
    proxy: `http://127.0.0.1:${sidecar.proxyAddress.port}`,
    admin: `http://127.0.0.1:${sidecar.adminAddress.port}`,
  }
}

const failures = (lines: Record<string, unknown>[]) => lines.filter((l) => l.event === 'attribution_failed')

t.test('enforce: answered 500, never forwarded, counted, recorded, logged once', async (t) => {
  const s = await brokenSidecar(t, 'enforce')
  for (const path of ['/admin/users', '/echo', '/admin/users', '/echo']) {
    const res = await fetch(`${s.proxy}${path}`)
    t.equal(res.status, 500, `${path} refused`)
    const body = await res.text()
    t.same(JSON.parse(body), { error: 'internal_error', message: 'the proxy failed to handle the request' })
    t.notMatch(body, SECRET, 'the error text stays in the log')
  }

  // a gRPC call gets the refusal as a gRPC status
  const session = connect(s.proxy)
  session.on('error', () => {})
  t.teardown(() => session.destroy())
  const stream = session.request({
    ':method': 'POST',
    ':path': '/orders.v1.Orders/Get',
    'content-type': 'application/grpc',
    te: 'trailers',
  })
  stream.end()
  const [headers] = (await once(stream, 'response')) as [Record<string, string | number>]
  stream.resume()
  t.equal(headers[':status'], 200)
  t.equal(headers['grpc-status'], '2', 'UNKNOWN, as for any 500 of the proxy')

  t.equal(s.upstream.received.length, 0, 'the upstream never saw a request')
  await eventually(() => s.events.length === 5, { what: 'five recorded requests' })
  t.same(
    s.events.map((e) => [e.identity.name, e.status]),
    [
      ['anonymous', 500],
      ['anonymous', 500],
      ['anonymous', 500],
      ['anonymous', 500],
      ['anonymous', 200],
    ],
  )
  t.equal(s.events[4]!.grpcStatus, 2)
  const m = await scrape(s.admin)
  t.equal(metricValue(m, 'nhi_attribution_errors_total', { service: 'orders' }), 5)
  t.equal(metricValue(m, 'nhi_requests_total', { identity: 'anonymous', code: '500' }), 4)
  const logged = failures(s.logLines)
  t.equal(logged.length, 1, 'one log line, not one per request')
  t.match(logged[0], { level: 50, refused: true, unlogged: 0, err: { message: SECRET } })
})

t.test('observe: forwarded as anonymous, counted, recorded, logged once', async (t) => {
  const s = await brokenSidecar(t, 'observe')
  for (const path of ['/admin/users', '/echo']) {
    const res = await fetch(`${s.proxy}${path}`)
    t.equal(res.status, 200, `${path} forwarded`)
    await res.arrayBuffer()
  }
  t.same(
    s.upstream.received.map((r) => [r.url, r.headers['x-nhi-identity']]),
    [
      ['/admin/users', 'anonymous'],
      ['/echo', 'anonymous'],
    ],
  )
  await eventually(() => s.events.length === 2, { what: 'two recorded requests' })
  t.same(
    s.events.map((e) => [e.identity.name, e.status]),
    [
      ['anonymous', 200],
      ['anonymous', 200],
    ],
  )
  const m = await scrape(s.admin)
  t.equal(metricValue(m, 'nhi_attribution_errors_total', { service: 'orders' }), 2)
  const logged = failures(s.logLines)
  t.equal(logged.length, 1)
  t.match(logged[0], { refused: false, err: { message: SECRET } })
})

t.test(
  'the log: the first failure, then at most one line a minute with how many went unlogged',
  async (t) => {
    const lines: Record<string, unknown>[] = []
    const log = pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line)) })
    let counted = 0
    let now = 1_000_000
    const report = attributionErrorReporter(log, { attributionFailed: () => void counted++ }, () => now)
    for (let i = 0; i < 5; i++) report(new Error(`failure ${i}`), true)
    now += ATTRIBUTION_ERROR_LOG_INTERVAL_MS - 1
    report(new Error('failure 5'), true)
    now += 1
    report(new Error('failure 6'), false)
    t.equal(counted, 7, 'every failure counted')
    t.same(
      lines.map((l) => [(l.err as { message: string }).message, l.refused, l.unlogged]),
      [
        ['failure 0', true, 0],
        ['failure 6', false, 5],
      ],
    )
  },
)
