import { createHash } from 'node:crypto'
import { once } from 'node:events'
import { createServer, type IncomingHttpHeaders } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Duplex } from 'node:stream'
import t from 'tap'
import { WebSocket } from 'undici'
import { eventually } from '../helpers/eventually.ts'
import { startProxy, TestPipeline } from '../helpers/proxy-fixture.ts'

const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'

/** Unmasks client frames (small, unfragmented) and sends them back as server frames. */
function echoFrames(socket: Duplex): void {
  let buffered = Buffer.alloc(0)
  socket.on('data', (chunk: Buffer) => {
    buffered = Buffer.concat([buffered, chunk])
    while (buffered.length >= 2) {
      const opcode = buffered[0]! & 0x0f
      let len = buffered[1]! & 0x7f
      let offset = 2
      if (len === 126) {
        if (buffered.length < 4) return
        len = buffered.readUInt16BE(2)
        offset = 4
      }
      const masked = (buffered[1]! & 0x80) !== 0
      const maskLen = masked ? 4 : 0
      if (buffered.length < offset + maskLen + len) return
      const mask = buffered.subarray(offset, offset + maskLen)
      const payload = Buffer.from(buffered.subarray(offset + maskLen, offset + maskLen + len))
      if (masked) for (let i = 0; i < payload.length; i++) payload[i]! ^= mask[i % 4]!
      buffered = buffered.subarray(offset + maskLen + len)
      if (opcode === 0x8) {
        socket.end(Buffer.from([0x88, 0x00]))
        return
      }
      const header =
        payload.length < 126
          ? Buffer.from([0x80 | opcode, payload.length])
          : Buffer.from([0x80 | opcode, 126, payload.length >> 8, payload.length & 0xff])
      socket.write(Buffer.concat([header, payload]))
    }
  })
}

async function startWsEcho() {
  const upgrades: IncomingHttpHeaders[] = []
  const server = createServer((_req, res) => {
    res.writeHead(426, { 'content-type': 'text/plain' })
    res.end('upgrade required')
  })
  server.on('upgrade', (req, socket: Duplex) => {
    upgrades.push(req.headers)
    if (req.url === '/deny') {
      socket.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 6\r\n\r\ndenied')
      return
    }
    const accept = createHash('sha1').update(`${req.headers['sec-websocket-key']}${WS_GUID}`).digest('base64')
    socket.write(
      `HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ${accept}\r\n\r\n`,
    )
    echoFrames(socket)
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    upgrades,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}

t.test('websocket upgrade is tunnelled with identity headers, attributed and recorded', async (t) => {
  const up = await startWsEcho()
  t.teardown(() => up.close())
  const { port, pipeline } = await startProxy(t, { upstream: up.url })

  const ws = new WebSocket(`ws://127.0.0.1:${port}/chat?room=1`, {
    headers: { 'x-nhi-identity': 'spoofed' },
  } as ConstructorParameters<typeof WebSocket>[1])
  await once(ws, 'open')
  const replies: string[] = []
  ws.addEventListener('message', (e) => replies.push(String(e.data)))
  ws.send('hello')
  ws.send('x'.repeat(300))
  await eventually(() => replies.length >= 2, { timeoutMs: 3000, intervalMs: 10, what: 'two echoed frames' })
  t.same(replies, ['hello', 'x'.repeat(300)], 'frames echoed through the proxy')

  const h = up.upgrades[0]!
  t.equal(h['x-nhi-identity'], 'payments/api', 'identity header added, spoof replaced')
  t.equal(h.upgrade, 'websocket')
  t.match(h.traceparent, /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/)
  t.equal(pipeline.seen[0]!.req.path, '/chat')

  ws.close()
  const [event] = await pipeline.waitForEvents(1)
  t.equal(event!.status, 101)
  t.equal(event!.path, '/chat')
  t.ok(event!.bytesIn > 300, `client→upstream bytes counted (${event!.bytesIn})`)
  t.ok(event!.bytesOut > 300, `upstream→client bytes counted (${event!.bytesOut})`)
})

t.test('an upgrade the upstream refuses reaches the client as a normal response', async (t) => {
  const up = await startWsEcho()
  t.teardown(() => up.close())
  const { port, pipeline } = await startProxy(t, { upstream: up.url })
  const ws = new WebSocket(`ws://127.0.0.1:${port}/deny`)
  const [ev] = await Promise.race([once(ws, 'error'), once(ws, 'close')])
  t.ok(ev, 'websocket failed to open')
  const [event] = await pipeline.waitForEvents(1)
  t.equal(event!.status, 403)
})

t.test('a rejected upgrade never reaches the upstream', async (t) => {
  const up = await startWsEcho()
  t.teardown(() => up.close())
  const pipeline = new TestPipeline(() => ({ reject: { status: 403, body: '{"error":"forbidden"}' } }))
  const { port } = await startProxy(t, { upstream: up.url, pipeline })
  const ws = new WebSocket(`ws://127.0.0.1:${port}/chat`)
  await Promise.race([once(ws, 'error'), once(ws, 'close')])
  const [event] = await pipeline.waitForEvents(1)
  t.equal(event!.status, 403)
  t.equal(up.upgrades.length, 0)
})

t.test('upgrade to an unreachable upstream → 502 on the raw socket', async (t) => {
  const up = await startWsEcho()
  const url = up.url
  await up.close()
  const { port, pipeline } = await startProxy(t, { upstream: url })
  const ws = new WebSocket(`ws://127.0.0.1:${port}/chat`)
  await Promise.race([once(ws, 'error'), once(ws, 'close')])
  const [event] = await pipeline.waitForEvents(1)
  t.equal(event!.status, 502)
  t.equal(event!.upstreamError, 'connect')
})
