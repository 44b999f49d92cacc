import { once } from 'node:events'
import { connect } from 'node:net'
import t from 'tap'
import { Agent, request } from 'undici'
import { defaultConfig } from '../../src/config/schema.ts'
import { eventually } from '../helpers/eventually.ts'
import { startProxy } from '../helpers/proxy-fixture.ts'
import { startUpstream } from '../helpers/upstream.ts'

const agent = new Agent()
t.teardown(() => agent.close())

/** Sends raw bytes and collects everything until the server closes (or the deadline passes). */
async function raw(port: number, payload: string, waitMs = 1500): Promise<string> {
  const socket = connect(port, '127.0.0.1')
  await once(socket, 'connect')
  let text = ''
  socket.setEncoding('latin1')
  socket.on('data', (c: string) => {
    text += c
  })
  socket.on('error', () => {})
  socket.write(payload)
  await Promise.race([once(socket, 'close'), new Promise((r) => setTimeout(r, waitMs))])
  socket.destroy()
  return text
}

const SMUGGLING: Record<string, string> = {
  'content-length with transfer-encoding':
    'POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n',
  'two different content-lengths':
    'POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabcGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n',
  'obfuscated transfer-encoding':
    'POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n',
  'space before colon':
    'POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n',
  'bare LF in chunk size line':
    'POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n',
}

t.test('request smuggling attempts get 400 and never reach the upstream as two requests', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const { port } = await startProxy(t, { upstream: up.url })
  for (const [name, payload] of Object.entries(SMUGGLING)) {
    const answer = await raw(port, payload)
    t.match(answer, /^HTTP\/1\.1 400 /, name)
  }
  t.notOk(
    up.received.some((r) => r.url === '/smuggled'),
    'no smuggled request reached the upstream',
  )
})

t.test('oversized headers → 431', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const { port } = await startProxy(t, { upstream: up.url })
  const answer = await raw(port, `GET /echo HTTP/1.1\r\nHost: x\r\nx-big: ${'a'.repeat(20_000)}\r\n\r\n`)
  t.match(answer, /^HTTP\/1\.1 431 /)
  t.equal(up.received.length, 0)
})

t.test('a client that trickles its headers is cut off at the headers deadline', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const timeouts = { ...defaultConfig().timeouts, headers: 300 }
  const { port } = await startProxy(t, { upstream: up.url, timeouts })
  const started = Date.now()
  const answer = await raw(port, 'GET /echo HTTP/1.1\r\nHost: x\r\n', 3000)
  t.match(answer, /^HTTP\/1\.1 408 /)
  t.ok(Date.now() - started < 2000, 'closed promptly')
})

t.test('garbage and a failing client do not disturb other requests', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const { port, url } = await startProxy(t, { upstream: up.url })
  const garbage = await raw(port, '\x00\x01\x02 not http at all\r\n\r\n')
  t.match(garbage, /^HTTP\/1\.1 400 /)
  const absolute = await raw(port, 'GET * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
  t.match(absolute, /^HTTP\/1\.1 400 /, 'asterisk-form is refused without crashing')
  const res = await request(`${url}/echo`, { dispatcher: agent })
  t.equal(res.statusCode, 200)
  await res.body.dump()
})

t.test('graceful close drains an in-flight slow request, then refuses new connections', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const { url, proxy, pipeline } = await startProxy(t, { upstream: up.url })
  const slow = request(`${url}/slow/400`, { dispatcher: agent })
  await eventually(() => proxy.inFlight() > 0, { what: 'the slow request in flight', intervalMs: 5 })
  const started = Date.now()
  const closed = proxy.close(5000)
  const res = await slow
  t.equal(res.statusCode, 200)
  t.equal(await res.body.text(), 'slow ok', 'in-flight request finished')
  await closed
  t.ok(Date.now() - started < 3000, 'close resolved once drained, not at the drain deadline')
  t.equal(proxy.inFlight(), 0)
  const [event] = await pipeline.waitForEvents(1)
  t.equal(event!.status, 200)
  await t.rejects(request(`${url}/echo`, { dispatcher: new Agent() }), 'listener is closed')
})

t.test('graceful close is bounded by the drain deadline', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const { url, proxy, pipeline } = await startProxy(t, { upstream: up.url })
  const slow = request(`${url}/slow/10000`, { dispatcher: agent })
  slow.catch(() => {})
  await eventually(() => proxy.inFlight() > 0, { what: 'the slow request in flight', intervalMs: 5 })
  const started = Date.now()
  await proxy.close(300)
  const took = Date.now() - started
  t.ok(took >= 250 && took < 2000, `close took ${took} ms`)
  await t.rejects(slow, 'the cut request fails on the client')
  const events = await pipeline.waitForEvents(1)
  t.equal(events.length, 1, 'still recorded exactly once')
})

t.test('maxConnections caps concurrent connections', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const limits = { ...defaultConfig().limits, maxConnections: 2 }
  const { port } = await startProxy(t, { upstream: up.url, limits })
  const held = [connect(port, '127.0.0.1'), connect(port, '127.0.0.1')]
  t.teardown(() => {
    for (const s of held) s.destroy()
  })
  await Promise.all(held.map((s) => once(s, 'connect')))
  // the held connections are connected in the kernel before the proxy has accepted them, so a third one
  // made at once may still be counted first: retry until the cap is seen (a proxy without one never drops)
  const third = await eventually(
    async () => ((await raw(port, 'GET /echo HTTP/1.1\r\nHost: x\r\n\r\n', 1000)) === '' ? '' : false),
    { what: 'a third connection to be dropped', timeoutMs: 5000 },
  ).catch(() => 'answered')
  t.equal(third, '', 'the third connection is dropped without an answer')
})
