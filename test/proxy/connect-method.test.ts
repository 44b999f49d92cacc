// CONNECT asks a proxy to open a tunnel to a host the client names. A reverse proxy in front of one service has
// no business doing that: CONNECT is refused with 501 on HTTP/1.1 and HTTP/2 alike, and, like any other request
// the proxy answers itself, it is attributed, counted and audited (an open-proxy probe is worth seeing).
import { connect as h2connect, type IncomingHttpHeaders } from 'node:http2'
import t from 'tap'
import { startBin } from '../helpers/bin.ts'
import { eventually } from '../helpers/eventually.ts'
import { metricValue, scrapeUntil } from '../helpers/metrics.ts'
import { rawExchange } from '../helpers/net.ts'
import { startUpstream } from '../helpers/upstream.ts'

interface AuditEvent {
  method: string
  status: number
  identity: string
  source: string
}

t.test('CONNECT is refused with 501 and recorded, over HTTP/1.1 and HTTP/2', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const sidecar = await startBin(t, { upstream: up.url, audit: { output: 'off', ringSize: 100 } })
  const port = Number(new URL(sidecar.proxyUrl).port)

  // HTTP/1.1: tunnel bytes right after the header block must not reach anything
  const raw = await rawExchange(
    port,
    'CONNECT internal.example:22 HTTP/1.1\r\nHost: internal.example:22\r\nUser-Agent: probe/1.0\r\n\r\nSSH-2.0-probe\r\n',
  )
  t.match(raw, /^HTTP\/1\.1 501 /, 'HTTP/1.1: 501, not a silent close')
  t.match(raw, /CONNECT is not supported/)
  t.match(raw, /connection: close/i, 'the connection is closed after the answer')

  // HTTP/2 (h2c with prior knowledge)
  const session = h2connect(sidecar.proxyUrl)
  session.on('error', () => {})
  t.teardown(() => session.destroy())
  const stream = session.request({
    ':method': 'CONNECT',
    ':authority': 'internal.example:22',
    'user-agent': 'probe/1.0',
  })
  stream.on('error', () => {})
  const [headers] = (await new Promise((resolve) => stream.once('response', (h) => resolve([h])))) as [
    IncomingHttpHeaders,
  ]
  t.equal(headers[':status'], 501, 'HTTP/2: 501, as on HTTP/1.1')
  stream.close()

  t.equal(up.received.length, 0, 'nothing reached the upstream')
  const samples = await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_requests_total', { method: 'CONNECT', code: '501' }) >= 2,
    'both CONNECTs counted',
  )
  t.equal(metricValue(samples, 'nhi_requests_total', { method: 'CONNECT', code: '501' }), 2)
  const events = await eventually(async () => {
    const r = (await (await fetch(`${sidecar.adminUrl}/audit?limit=10`)).json()) as { events: AuditEvent[] }
    return r.events.length >= 2 ? r.events : undefined
  })
  t.same(
    events.map((e) => [e.method, e.status]),
    [
      ['CONNECT', 501],
      ['CONNECT', 501],
    ],
    'both in the audit trail',
  )
})
