// Rapid reset (CVE-2023-44487) sent in the very bytes that carry the h2c preface. The plain listener reads
// those bytes itself to tell HTTP/2 from HTTP/1.1 and hands them to the HTTP/2 session in one piece:
// node:http2 then takes every HEADERS and RST_STREAM in them before it announces the first stream, so each
// stream is already reset when the proxy first sees it. Those resets count against
// limits.http2MaxResetsPerSecond like any other.
import { once } from 'node:events'
import { connect as tcpConnect } from 'node:net'
import t from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { FLAG, FRAME, frame, goawayCode, headerBlock, PREFACE } from '../helpers/h2-frames.ts'
import { metricValue, scrapeUntil } from '../helpers/metrics.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

t.setTimeout(60_000)

for (const [name, code] of [
  ['CANCEL', 8],
  ['NO_ERROR', 0],
] as const) {
  t.test(`streams opened and reset (${name}) in the preface's own write are counted`, async (t) => {
    const up = await startUpstream()
    t.teardown(() => up.close())
    const sidecar = await startTestSidecar(t, { upstream: up.url, limits: { http2MaxResetsPerSecond: 20 } })
    const socket = tcpConnect(sidecar.proxyAddress.port, '127.0.0.1')
    socket.on('error', () => {})
    const chunks: Buffer[] = []
    socket.on('data', (c: Buffer) => chunks.push(c))
    t.teardown(() => socket.destroy())
    await once(socket, 'connect')
    const rst = Buffer.alloc(4)
    rst.writeUInt32BE(code)
    const parts = [PREFACE, frame(FRAME.SETTINGS, 0, 0, Buffer.alloc(0))]
    // 200 streams, ten times the budget, well within one read of the socket
    for (let i = 0; i < 200; i++) {
      const id = 1 + 2 * i
      const fields = [
        [':method', 'GET'],
        [':scheme', 'http'],
        [':authority', 'app'],
        [':path', '/slow/2000'],
      ] as const
      parts.push(frame(FRAME.HEADERS, FLAG.END_HEADERS | FLAG.END_STREAM, id, headerBlock(fields)))
      parts.push(frame(FRAME.RST_STREAM, 0, id, rst))
    }
    socket.write(Buffer.concat(parts))
    await eventually(() => socket.destroyed || socket.readableEnded, {
      what: 'the resetting connection to be closed',
    })
    t.equal(goawayCode(Buffer.concat(chunks)), 11, 'GOAWAY ENHANCE_YOUR_CALM')
    const samples = await scrapeUntil(
      sidecar.adminUrl,
      (s) => metricValue(s, 'nhi_http2_connections_closed_total', { reason: 'rapid_reset' }) === 1,
      'the connection counted as a rapid reset',
    )
    t.equal(metricValue(samples, 'nhi_http2_connections_closed_total', { reason: 'rapid_reset' }), 1)
  })
}
