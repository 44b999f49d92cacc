// timeouts.tunnelIdle through the built sidecar: an established websocket tunnel, or an HTTP/2 upstream stream
// that has answered, in which no byte moves either way for that long is cut on both sides and counted; one that
// keeps moving bytes (either way) stays open however long it lasts.
import { createHash, randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { createServer } from 'node:http'
import {
  type ClientHttp2Stream,
  constants,
  createServer as createH2cServer,
  connect as h2connect,
  type ServerHttp2Stream,
} from 'node:http2'
import { type AddressInfo, connect, type Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import t, { type Test } from 'tap'
import { eventually, stillTrueFor } from '../helpers/eventually.ts'
import { metricValue, scrapeUntil } from '../helpers/metrics.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'
const IDLE_MS = 300
/**
 * the idle time of the tests that keep a tunnel open with a message every 100 ms: several ticks' margin, so a
 * test machine that stalls a timer for a few hundred milliseconds does not read as silence
 */
const ACTIVE_IDLE_MS = 1000
/** long enough that each direction alone keeps the tunnel open for longer than the idle time */
const ACTIVE_MS = 2 * ACTIVE_IDLE_MS + 400
const COUNTER = 'nhi_tunnels_idle_closed_total'

// the tests share nothing (each its own upstream and sidecar) and mostly wait on idle timers: run side by side
t.jobs = 3

/** one unfragmented text frame; client frames are masked (RFC 6455 §5.3) */
function wsFrame(text: string, masked: boolean): Buffer {
  const payload = Buffer.from(text)
  if (!masked) return Buffer.concat([Buffer.from([0x81, payload.length]), payload])
  const mask = randomBytes(4)
  for (let i = 0; i < payload.length; i++) payload[i]! ^= mask[i % 4]!
  return Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, payload])
}

/** a websocket upstream that accepts every handshake and keeps the socket for the test to drive */
async function startWsUpstream(t: Test) {
  const sockets: Duplex[] = []
  let received = 0
  let closed = 0
  const server = createServer((_req, res) => res.end())
  server.on('upgrade', (req, socket: Duplex) => {
    sockets.push(socket)
    socket.on('error', () => {})
    socket.on('data', (c: Buffer) => {
      received += c.length
    })
    // as a websocket server does: the proxy's end of the connection is gone, so is this one
    socket.once('end', () => socket.end())
    socket.once('close', () => {
      closed++
    })
    const accept = createHash('sha1').update(`${req.headers['sec-websocket-key']}${WS_GUID}`).digest('base64')
    socket.write(
      `HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ${accept}\r\n\r\n`,
    )
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy()
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  )
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    socket: () => sockets[0],
    received: () => received,
    closed: () => closed,
  }
}

/** a raw websocket client through the proxy: resolves once the 101 has arrived */
async function openWs(t: Test, port: number) {
  const socket: Socket = connect(port, '127.0.0.1')
  t.teardown(() => socket.destroy())
  socket.on('error', () => {})
  let text = ''
  let closed = false
  socket.on('data', (c: Buffer) => {
    text += c.toString('latin1')
  })
  socket.once('close', () => {
    closed = true
  })
  await once(socket, 'connect')
  socket.write(
    `GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\n\r\n`,
  )
  await eventually(() => text.includes('\r\n\r\n'), { what: 'the handshake answer' })
  t.match(text, /^HTTP\/1\.1 101 /, 'the tunnel is established')
  return { socket, text: () => text, closed: () => closed }
}

/** sends `send()` every 100 ms for `ms` */
async function every100ms(ms: number, send: () => void): Promise<void> {
  const until = Date.now() + ms
  while (Date.now() < until) {
    send()
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

async function expectCounted(t: Test, adminUrl: string, protocol: string, n: number) {
  const samples = await scrapeUntil(
    adminUrl,
    (s) => metricValue(s, COUNTER, { protocol }) >= n,
    `${COUNTER}{protocol="${protocol}"} to reach ${n}`,
  )
  t.equal(metricValue(samples, COUNTER, { protocol }), n, `counted as protocol="${protocol}"`)
}

for (const workers of [1, 2]) {
  t.test(`a silent websocket tunnel is closed on both ends (workers: ${workers})`, async (t) => {
    const up = await startWsUpstream(t)
    const sidecar = await startTestSidecar(
      t,
      { upstream: up.url, workers, timeouts: { tunnelIdle: `${IDLE_MS}ms` } },
      { env: { NHI_LOG_LEVEL: 'debug' } },
    )
    const started = Date.now()
    const client = await openWs(t, sidecar.proxyAddress.port)
    await eventually(() => client.closed() && up.closed() === 1, {
      what: 'both sockets of the silent tunnel to close',
      timeoutMs: 5000,
    })
    t.ok(Date.now() - started >= IDLE_MS - 50, 'closed after the idle time, not at once')
    await expectCounted(t, sidecar.adminUrl, 'websocket', 1)
    t.equal(
      metricValue(await scrapeUntil(sidecar.adminUrl, () => true, 'a scrape'), COUNTER, {
        protocol: 'http2',
      }),
      0,
    )
    const line = await sidecar.process.waitForLog((l) => l['event'] === 'tunnel_idle_closed')
    t.match(line, { level: 20, protocol: 'websocket' }, 'logged at debug')
  })
}

t.test('a websocket tunnel with a message every 100 ms either way stays open', async (t) => {
  const up = await startWsUpstream(t)
  const sidecar = await startTestSidecar(t, {
    upstream: up.url,
    timeouts: { tunnelIdle: `${ACTIVE_IDLE_MS}ms` },
  })
  const client = await openWs(t, sidecar.proxyAddress.port)
  const open = () => !client.closed() && up.closed() === 0
  // client → upstream only, then upstream → client only: each direction alone keeps the tunnel
  await every100ms(ACTIVE_MS / 2, () => client.socket.write(wsFrame('ping', true)))
  t.ok(open(), 'open while the client sends')
  await every100ms(ACTIVE_MS / 2, () => up.socket()!.write(wsFrame('tick', false)))
  t.ok(open(), `open after ${ACTIVE_MS} ms of traffic`)
  await eventually(() => up.received() > 0 && client.text().includes('tick'), { what: 'both directions' })
  // the same tunnel, once silent, is cut: the clock was running all along and traffic restarted it
  await eventually(() => client.closed() && up.closed() === 1, { what: 'the now silent tunnel to close' })
  await expectCounted(t, sidecar.adminUrl, 'websocket', 1)
})

/** an h2c upstream that answers headers at once and then sends DATA only when the test says so */
async function startH2cUpstream(t: Test) {
  const streams: ServerHttp2Stream[] = []
  const closes: number[] = []
  let received = 0
  const server = createH2cServer()
  server.on('stream', (stream) => {
    streams.push(stream)
    stream.on('error', () => {})
    stream.on('data', (c: Buffer) => {
      received += c.length
    })
    stream.once('close', () => closes.push(stream.rstCode))
    stream.respond({ ':status': 200, 'content-type': 'text/plain' })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        for (const s of streams) s.destroy()
        server.close(() => resolve())
      }),
  )
  return {
    url: `h2c://127.0.0.1:${(server.address() as AddressInfo).port}`,
    stream: () => streams[0],
    /** the RST_STREAM code of each upstream stream that closed */
    closes,
    received: () => received,
  }
}

/** one h2c stream through the proxy, resolved once its response headers arrived */
async function openH2(t: Test, url: string, upload = false) {
  const session = h2connect(url)
  session.on('error', () => {})
  t.teardown(() => session.destroy())
  const stream: ClientHttp2Stream = upload
    ? session.request({ ':path': '/stream', ':method': 'POST' }, { endStream: false })
    : session.request({ ':path': '/stream' })
  stream.on('error', () => {})
  let body = ''
  let closed = false
  stream.setEncoding('utf8')
  stream.on('data', (c: string) => {
    body += c
  })
  stream.once('close', () => {
    closed = true
  })
  const [headers] = (await once(stream, 'response')) as [Record<string, string | number>]
  t.equal(headers[':status'], 200, 'the upstream answered')
  return { stream, body: () => body, closed: () => closed }
}

t.test('an answered h2c upstream stream that goes silent is reset on both sides', async (t) => {
  const up = await startH2cUpstream(t)
  const sidecar = await startTestSidecar(
    t,
    { upstream: up.url, timeouts: { tunnelIdle: `${IDLE_MS}ms` } },
    { env: { NHI_LOG_LEVEL: 'debug' } },
  )
  const started = Date.now()
  const client = await openH2(t, sidecar.proxyUrl)
  await eventually(() => client.closed() && up.closes.length === 1, {
    what: 'both streams to be reset',
    timeoutMs: 5000,
  })
  t.ok(Date.now() - started >= IDLE_MS - 50, 'reset after the idle time, not at once')
  t.equal(client.stream.rstCode, constants.NGHTTP2_CANCEL, 'the client stream is reset with CANCEL')
  t.equal(up.closes[0], constants.NGHTTP2_CANCEL, 'the upstream stream is reset with CANCEL')
  await expectCounted(t, sidecar.adminUrl, 'http2', 1)
  const line = await sidecar.process.waitForLog((l) => l['event'] === 'tunnel_idle_closed')
  t.match(line, { level: 20, protocol: 'http2' }, 'logged at debug')

  // an HTTP/1.1 client of the same upstream: its connection is closed
  const socket = connect(sidecar.proxyAddress.port, '127.0.0.1')
  t.teardown(() => socket.destroy())
  socket.on('error', () => {})
  const closed = once(socket, 'close')
  socket.write('GET /stream HTTP/1.1\r\nHost: x\r\n\r\n')
  await closed
  t.pass('the HTTP/1.1 connection was closed')
  await eventually(() => up.closes.length === 2, { what: 'the second upstream stream to be reset' })
  t.equal(up.closes[1], constants.NGHTTP2_CANCEL)
  await expectCounted(t, sidecar.adminUrl, 'http2', 2)
})

t.test('an answered h2c upstream stream with data every 100 ms either way stays open', async (t) => {
  const up = await startH2cUpstream(t)
  const sidecar = await startTestSidecar(t, {
    upstream: up.url,
    timeouts: { tunnelIdle: `${ACTIVE_IDLE_MS}ms` },
  })
  const client = await openH2(t, sidecar.proxyUrl, true)
  const open = () => !client.closed() && up.closes.length === 0
  // upstream → client only (a server stream), then client → upstream only (an upload the upstream answered
  // before it ended): each direction alone keeps the stream
  let sent = 0
  await every100ms(ACTIVE_MS / 2, () => {
    up.stream()!.write(`chunk ${sent++}\n`)
  })
  t.ok(open(), 'open while the upstream streams')
  await every100ms(ACTIVE_MS / 2, () => client.stream.write('up'))
  t.ok(await stillTrueFor(open, 50), `open after ${ACTIVE_MS} ms`)
  await eventually(() => up.received() > 0, { what: 'the upload to reach the upstream' })
  client.stream.end()
  up.stream()!.end('done\n')
  await eventually(() => client.closed(), { what: 'the response to end' })
  t.equal(client.stream.rstCode, constants.NGHTTP2_NO_ERROR, 'ended normally, not reset')
  t.equal(client.body().split('\n').length - 1, sent + 1, 'every chunk arrived')
  t.equal(up.closes[0], constants.NGHTTP2_NO_ERROR)
  const samples = await scrapeUntil(sidecar.adminUrl, () => true, 'a scrape')
  t.equal(metricValue(samples, COUNTER, { protocol: 'http2' }), 0, 'nothing was cut')
})
