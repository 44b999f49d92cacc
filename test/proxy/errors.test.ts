import { once } from 'node:events'
import { createServer } from 'node:http'
import { constants, connect as h2connect, type IncomingHttpHeaders } from 'node:http2'
import { type AddressInfo, connect } from 'node:net'
import t from 'tap'
import { Agent, request } from 'undici'
import { defaultConfig } from '../../src/config/schema.ts'
import type { Forwarder } from '../../src/proxy/forwarder.ts'
import { eventually, stillTrueFor } from '../helpers/eventually.ts'
import { freePort } from '../helpers/net.ts'
import { startProxy } from '../helpers/proxy-fixture.ts'
import { startUpstream } from '../helpers/upstream.ts'

const agent = new Agent()
t.teardown(() => agent.close())

t.test('upstream down → 502, back up → 200', async (t) => {
  const port = await freePort()
  const { url, pipeline, proxy } = await startProxy(t, { upstream: `http://127.0.0.1:${port}` })
  t.equal(await proxy.upstreamReachable(), false)
  const down = await request(`${url}/echo`, { dispatcher: agent })
  t.equal(down.statusCode, 502)
  const body = (await down.body.json()) as Record<string, unknown>
  t.equal(body.error, 'bad_gateway')
  t.notOk(JSON.stringify(body).includes('ECONNREFUSED'), 'no internals leak')

  const up = await startUpstream(port)
  t.teardown(() => up.close())
  const ok = await request(`${url}/echo`, { dispatcher: agent })
  t.equal(ok.statusCode, 200)
  await ok.body.dump()
  const events = await pipeline.waitForEvents(2)
  t.equal(events[0]!.status, 502)
  t.equal(events[0]!.upstreamError, 'connect')
  t.equal(events[1]!.status, 200)
  t.notOk(events[1]!.upstreamError)
  t.equal(
    await eventually(() => proxy.upstreamReachable(), { what: 'the cached reachability to expire' }),
    true,
    'reachability re-checked after the cache expires',
  )
})

t.test('slow upstream → 504', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const timeouts = { ...defaultConfig().timeouts, upstream: 200 }
  const { url, pipeline } = await startProxy(t, { upstream: up.url, timeouts })
  const started = Date.now()
  const res = await request(`${url}/slow/3000`, { dispatcher: agent })
  t.equal(res.statusCode, 504)
  t.equal(((await res.body.json()) as { error: string }).error, 'gateway_timeout')
  t.ok(Date.now() - started < 2000, 'answered at the deadline, not when the upstream finished')
  const [event] = await pipeline.waitForEvents(1)
  t.equal(event!.upstreamError, 'timeout')
  t.equal(event!.status, 504)
  // other requests are unaffected
  const fast = await request(`${url}/echo`, { dispatcher: agent })
  t.equal(fast.statusCode, 200)
  await fast.body.dump()
})

t.test('upstream reset mid-stream aborts the client and is counted; before headers → 502', async (t) => {
  const upstream = createServer((req, res) => {
    if (req.url === '/reset-before') {
      req.socket.destroy()
      return
    }
    res.writeHead(200, { 'content-length': '100000' })
    // cut once the first 1000 bytes are on the wire: the proxy has the headers and part of the body
    res.write(Buffer.alloc(1000, 0x61), () => req.socket.destroy())
  })
  upstream.listen(0, '127.0.0.1')
  await once(upstream, 'listening')
  t.teardown(() => new Promise((r) => upstream.close(r)))
  const { port } = upstream.address() as AddressInfo
  const { url, pipeline } = await startProxy(t, { upstream: `http://127.0.0.1:${port}` })

  const res = await request(`${url}/reset-mid`, { dispatcher: agent })
  t.equal(res.statusCode, 200)
  await t.rejects(res.body.text(), 'client sees the truncated response fail')
  const before = await request(`${url}/reset-before`, { dispatcher: agent })
  t.equal(before.statusCode, 502)
  await before.body.dump()

  const events = await pipeline.waitForEvents(2)
  const mid = events.find((e) => e.path === '/reset-mid')!
  t.equal(mid.upstreamError, 'reset')
  t.equal(mid.bytesOut, 1000)
  const early = events.find((e) => e.path === '/reset-before')!
  t.equal(early.upstreamError, 'reset')
  t.equal(early.status, 502)
})

t.test('a client that goes away aborts the upstream request and is recorded once', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const { url, pipeline } = await startProxy(t, { upstream: up.url })
  const controller = new AbortController()
  const pending = request(`${url}/slow/5000`, { dispatcher: agent, signal: controller.signal })
  // go away once the request is at the upstream, i.e. really in flight
  await eventually(() => up.received.some((r) => r.url === '/slow/5000'), { what: 'the upstream request' })
  controller.abort()
  await t.rejects(pending)
  const [event] = await pipeline.waitForEvents(1)
  t.equal(event!.status, 499)
  t.notOk(event!.upstreamError, 'not an upstream failure')
  t.ok(await stillTrueFor(() => pipeline.events.length === 1, 100), 'no second record follows')
  t.equal(pipeline.events.length, 1)
})

t.test('setUpstream switches the target', async (t) => {
  const a = await startUpstream()
  const b = await startUpstream()
  t.teardown(() => a.close())
  t.teardown(() => b.close())
  const { url, proxy } = await startProxy(t, { upstream: a.url })
  await (await request(`${url}/echo`, { dispatcher: agent })).body.dump()
  proxy.setUpstream(b.url)
  await (await request(`${url}/echo`, { dispatcher: agent })).body.dump()
  t.equal(a.received.length, 1)
  t.equal(b.received.length, 1)
  t.throws(() => proxy.setUpstream('ftp://example.com'))
  t.throws(() => proxy.setUpstream('not a url'))
})

t.test(
  'an internal error after the response started cuts it as an error: HTTP/1.1 closes, HTTP/2 resets with INTERNAL_ERROR',
  async (t) => {
    // a forwarder that fails after writing the head and part of the body: what an internal error in the forward
    // step looks like once the client has its status line
    const failing: Forwarder = {
      async forward(_req, res) {
        res.writeHead(200, { 'content-type': 'text/plain' })
        res.write('partial')
        await new Promise((resolve) => setImmediate(resolve))
        throw new Error('internal failure mid-response')
      },
      async upgrade() {
        return { status: 0, upstreamMs: 0, bytesOut: 0 }
      },
      prune() {},
      async close() {},
    }
    const { url, port } = await startProxy(t, { upstream: 'http://127.0.0.1:9', forwarder: failing })

    const socket = connect(port, '127.0.0.1')
    let raw = ''
    socket.setEncoding('latin1')
    socket.on('data', (c: string) => {
      raw += c
    })
    socket.write('GET /x HTTP/1.1\r\nHost: app\r\n\r\n')
    await once(socket, 'close')
    t.match(raw, /^HTTP\/1\.1 200 /, 'HTTP/1.1: the head was sent')
    t.match(raw, /transfer-encoding: chunked/i)
    t.notMatch(
      raw,
      /\r\n0\r\n\r\n$/,
      'HTTP/1.1: no last chunk, the connection closed: the body reads as cut short',
    )

    const session = h2connect(url)
    session.on('error', () => {})
    t.teardown(() => session.destroy())
    const stream = session.request({ ':path': '/x' })
    stream.on('error', () => {})
    let body = ''
    stream.setEncoding('utf8')
    stream.on('data', (c: string) => {
      body += c
    })
    const closed = new Promise((resolve) => stream.on('close', resolve))
    const [headers] = (await once(stream, 'response')) as [IncomingHttpHeaders]
    t.equal(headers[':status'], 200)
    await closed
    t.equal(body, 'partial')
    t.equal(
      stream.rstCode,
      constants.NGHTTP2_INTERNAL_ERROR,
      'reset with INTERNAL_ERROR, which a client reads as a failed response, not NO_ERROR, which it reads as complete',
    )
  },
)
