import { createHash } from 'node:crypto'
import { once } from 'node:events'
import { createServer, type IncomingHttpHeaders } from 'node:http'
import { type AddressInfo, connect, createServer as createNetServer } from 'node:net'
import type { Duplex } from 'node:stream'
import t from 'tap'
import { WebSocket } from 'undici'
import { defaultConfig } from '../../src/config/schema.ts'
import { eventually } from '../helpers/eventually.ts'
import { rawClient, scriptedUpstream } from '../helpers/net.ts'
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

/** an upstream that takes websocket handshakes and never answers them; tells when their connections close */
async function startSilentWsUpstream() {
  const sockets: Duplex[] = []
  const closed: Duplex[] = []
  const server = createServer()
  server.on('upgrade', (_req, socket: Duplex) => {
    sockets.push(socket)
    socket.on('error', () => {})
    socket.once('close', () => closed.push(socket))
    // node:http hands the socket over half-open and not reading: read it, and close it when the proxy does
    socket.once('end', () => socket.destroy())
    socket.resume()
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    sockets,
    closed,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy()
        server.close(() => resolve())
      }),
  }
}

for (const how of ['closes', 'resets'] as const) {
  t.test(`a client that ${how} its connection while the upstream has not answered the upgrade`, async (t) => {
    const up = await startSilentWsUpstream()
    t.teardown(() => up.close())
    const config = defaultConfig()
    // the upstream deadline is far off: only the client's leaving can end the exchange in time
    const { port, pipeline } = await startProxy(t, {
      upstream: up.url,
      timeouts: { ...config.timeouts, upstream: 60_000 },
    })
    const client = connect(port, '127.0.0.1')
    client.on('error', () => {})
    await once(client, 'connect')
    client.write(
      'GET /chat HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n',
    )
    await eventually(() => up.sockets.length === 1, {
      timeoutMs: 5000,
      what: 'the handshake at the upstream',
    })
    if (how === 'closes') client.destroy()
    else client.resetAndDestroy()
    await eventually(() => up.closed.length === 1, {
      timeoutMs: 3000,
      what: "the upstream's connection closed after the client left",
    })
    const [event] = await pipeline.waitForEvents(1, 3000)
    t.equal(event!.status, 499, 'recorded as the client closing')
    t.equal(event!.upstreamError, undefined, 'not an upstream error')
    t.equal(up.sockets.length, 1, 'the handshake reached the upstream once')
  })
}

t.test('bytes the client sends before the upstream answers the upgrade reach it after the 101', async (t) => {
  const up = await startSilentWsUpstream()
  t.teardown(() => up.close())
  const { port, pipeline } = await startProxy(t, { upstream: up.url })
  const client = connect(port, '127.0.0.1')
  client.on('error', () => {})
  t.teardown(() => client.destroy())
  let received = Buffer.alloc(0)
  client.on('data', (c: Buffer) => {
    received = Buffer.concat([received, c])
  })
  await once(client, 'connect')
  const key = 'dGhlIHNhbXBsZSBub25jZQ=='
  client.write(
    'GET /chat HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
      `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
  )
  await eventually(() => up.sockets.length === 1, { timeoutMs: 5000, what: 'the handshake at the upstream' })
  // a masked text frame "early", sent while the upstream has not answered
  const mask = Buffer.from([1, 2, 3, 4])
  const payload = Buffer.from('early').map((b, i) => b ^ mask[i % 4]!)
  client.write(Buffer.concat([Buffer.from([0x81, 0x80 | 5]), mask, payload]))
  const upstream = up.sockets[0]!
  const accept = createHash('sha1').update(`${key}${WS_GUID}`).digest('base64')
  upstream.write(
    `HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ${accept}\r\n\r\n`,
  )
  echoFrames(upstream)
  const echoed = Buffer.from([0x81, 5, ...Buffer.from('early')])
  await eventually(() => received.includes(echoed), { timeoutMs: 5000, what: 'the early frame echoed' })
  t.match(received.toString('latin1'), /^HTTP\/1\.1 101 /, 'the 101 first')
  client.end()
  const [event] = await pipeline.waitForEvents(1)
  t.equal(event!.status, 101)
  t.equal(event!.bytesIn, 11, 'the early frame counted as sent through the tunnel')
})

t.test(
  'an upgrade answered without a tunnel: a client that keeps its side open is disconnected after timeouts.idle',
  async (t) => {
    // an upstream that refuses every handshake it reads; counts the request heads it saw
    const heads: string[] = []
    const refusing = createNetServer((s) => {
      s.on('error', () => {})
      let pending = ''
      s.on('data', (c: Buffer) => {
        pending += c.toString('latin1')
        const end = pending.indexOf('\r\n\r\n')
        if (end === -1) return
        heads.push(pending.slice(0, end))
        pending = ''
        s.write('HTTP/1.1 400 Bad Request\r\ncontent-length: 3\r\n\r\nbad')
      })
    })
    refusing.listen(0, '127.0.0.1')
    await once(refusing, 'listening')
    t.teardown(() => refusing.close())
    const refusingUrl = `http://127.0.0.1:${(refusing.address() as AddressInfo).port}`
    const gone = createNetServer()
    gone.listen(0, '127.0.0.1')
    await once(gone, 'listening')
    const goneUrl = `http://127.0.0.1:${(gone.address() as AddressInfo).port}`
    await new Promise((ok) => gone.close(ok))
    const config = defaultConfig()
    const idle = 300
    for (const c of [
      { what: 'the upstream answers 400', upstream: refusingUrl, status: 400, reject: false },
      { what: 'the proxy refuses it (403)', upstream: refusingUrl, status: 403, reject: true },
      { what: 'the upstream is unreachable (502)', upstream: goneUrl, status: 502, reject: false },
    ]) {
      const pipeline = new TestPipeline(() =>
        c.reject ? { reject: { status: 403, body: '{"error":"forbidden"}' } } : {},
      )
      const { port } = await startProxy(t, {
        upstream: c.upstream,
        pipeline,
        timeouts: { ...config.timeouts, idle },
      })
      // a client that never closes its own side: the proxy's FIN does not end the connection for it
      const client = connect({ port, host: '127.0.0.1', allowHalfOpen: true })
      client.on('error', () => {})
      t.teardown(() => client.destroy())
      let answer = ''
      let ended = false
      let closed = false
      client.on('data', (chunk: Buffer) => {
        answer += chunk.toString('latin1')
      })
      client.on('end', () => {
        ended = true
      })
      client.on('close', () => {
        closed = true
      })
      await once(client, 'connect')
      client.write(
        'GET /chat HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
          'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n' +
          'GET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n',
      )
      await eventually(() => ended, { timeoutMs: 5000, what: `${c.what}: the answer and the proxy's FIN` })
      t.match(answer, new RegExp(`^HTTP/1\\.1 ${c.status} `), `${c.what}: answered ${c.status}`)
      t.equal(answer.match(/HTTP\/1\.1 /g)?.length, 1, `${c.what}: one answer, the bytes after it dropped`)
      // the client goes on sending into a connection whose answer it has: read and dropped, until the proxy
      // closes it (a write then meets the reset of a closed socket)
      client.write('GET /again HTTP/1.1\r\nHost: app\r\n\r\n')
      await eventually(
        () => {
          if (!closed) client.write('x')
          return closed
        },
        {
          timeoutMs: idle * 10,
          what: `${c.what}: the connection closed by the proxy`,
        },
      )
      const [event] = await pipeline.waitForEvents(1)
      t.equal(event!.status, c.status, `${c.what}: recorded ${c.status}`)
      t.equal(pipeline.events.length, 1, `${c.what}: one exchange recorded`)
    }
    t.equal(heads.length, 1, 'only the first handshake reached an upstream, nothing after it')
    t.notOk(heads.join('\n').includes('/smuggled'), 'no byte sent after a handshake became a request')
  },
)

t.test(
  'a handshake with TE: trailers reaches the upstream without TE (no trailers come back through it)',
  async (t) => {
    const up = await scriptedUpstream(t, ({ head }) => {
      const key = /\r\nsec-websocket-key: *(\S+)/i.exec(head)?.[1]
      const accept = createHash('sha1').update(`${key}${WS_GUID}`).digest('base64')
      return `HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ${accept}\r\n\r\n`
    })
    const { port, pipeline } = await startProxy(t, { upstream: up.url })
    const client = await rawClient(port)
    t.teardown(() => client.socket.destroy())
    client.socket.write(
      'GET /chat HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\nConnection: Upgrade, TE\r\nTE: trailers\r\n' +
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n',
    )
    await eventually(() => client.text().includes('\r\n\r\n'), { what: 'the 101' })
    t.match(client.text(), /^HTTP\/1\.1 101 /, 'switched')
    const head = up.seen[0]!.head
    const lines = (name: string) =>
      head
        .split('\r\n')
        .slice(1)
        .filter((line) => line.toLowerCase().startsWith(`${name}:`))
        .map((line) =>
          line
            .slice(name.length + 1)
            .trim()
            .toLowerCase(),
        )
    t.same(lines('te'), [], 'no TE: an upgrade answered without a switch passes on no trailers')
    t.same(lines('connection'), ['upgrade'], 'Connection names the upgrade alone')
    t.same(lines('upgrade'), ['websocket'])
    client.socket.end()
    const [event] = await pipeline.waitForEvents(1)
    t.equal(event!.status, 101)
  },
)
