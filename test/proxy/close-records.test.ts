// proxy.close() resolves only once every exchange it cut has been recorded: its caller closes telemetry next,
// and a record after that is lost (the audit's one line per request, and the request's metrics). And an
// exchange its client cut is recorded then, not left in flight for shutdown to find.
import { request } from 'node:http'
import t from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { holdExchanges, startHoldingUpstream } from '../helpers/holding-upstream.ts'
import { rawClient, scriptedUpstream } from '../helpers/net.ts'
import { startProxy, TestPipeline } from '../helpers/proxy-fixture.ts'

// generous for a loaded machine, far below the drain a stuck exchange would otherwise hold shutdown for
const PROMPT_MS = 3000

t.test(
  'an HTTP/1.1 request, an HTTP/2 stream and a websocket tunnel cut by close() are recorded',
  async (t) => {
    const up = await startHoldingUpstream()
    t.teardown(() => up.close())
    const { url, proxy, pipeline } = await startProxy(t, { upstream: up.url })
    const held = await holdExchanges(url)
    await eventually(() => up.received.length === 3, { what: 'both requests and the tunnel at the upstream' })

    await proxy.close(0)
    const recorded = pipeline.events.map((e) => `${e.path} ${e.status}`).sort()
    t.same(
      recorded,
      ['/h1-slow 499', '/h2-slow 499', '/ws-session 101'],
      'each recorded by the time close() resolves: a cut request as the client cancelled, the tunnel as answered',
    )
    const h1 = pipeline.events.find((e) => e.path === '/h1-slow')
    t.equal(h1?.upstreamError, undefined, 'the cut is not an upstream failure')
    const tunnel = pipeline.events.find((e) => e.path === '/ws-session')
    t.ok((tunnel?.bytesIn ?? 0) > 0, `the tunnel's bytes from the client are counted (${tunnel?.bytesIn})`)
    t.ok((tunnel?.bytesOut ?? 0) > 0, `the tunnel's bytes to the client are counted (${tunnel?.bytesOut})`)
    await held.settled
    t.equal(pipeline.events.length, 3, 'recorded once each')
  },
)

t.test('a request still being identified when close() gives up on it is recorded as it stands', async (t) => {
  const up = await startHoldingUpstream()
  t.teardown(() => up.close())
  // an identification that never ends (a key fetch that hangs, say)
  const pipeline = new TestPipeline((req) => (req.path === '/stuck' ? new Promise<never>(() => {}) : {}))
  const { url, proxy } = await startProxy(t, { upstream: up.url, pipeline })
  const answered = new Promise<string>((resolve) => {
    const req = request(`${url}/stuck`, { agent: false }, (res) => resolve(String(res.statusCode)))
    req.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message))
    req.end()
  })
  await eventually(() => pipeline.seen.length === 1, { what: 'the request at the pipeline' })

  const start = performance.now()
  await proxy.close(0)
  const ms = performance.now() - start
  t.ok(ms < PROMPT_MS, `closed in ${Math.round(ms)} ms`)
  t.same(
    pipeline.events.map((e) => `${e.path} ${e.status}`),
    ['/stuck 499'],
    'recorded by the time close() resolves',
  )
  t.equal(await answered, 'ECONNRESET', 'the client was cut')
  t.same(up.received, [], 'never forwarded')
})

t.test(
  'requests pipelined behind an answer are recorded when their client resets the connection',
  async (t) => {
    const up = await startHoldingUpstream()
    t.teardown(() => up.close())
    const { port, proxy, pipeline } = await startProxy(t, { upstream: up.url })
    const client = await rawClient(port)
    // the first answer never comes: node:http holds the responses to the other two behind it
    client.socket.write(
      ['/first', '/second', '/third'].map((p) => `GET ${p} HTTP/1.1\r\nHost: app\r\n\r\n`).join(''),
    )
    await eventually(() => up.received.length === 3, { what: 'the three requests at the upstream' })

    client.socket.resetAndDestroy()
    const events = await pipeline.waitForEvents(3)
    t.same(
      events.map((e) => `${e.path} ${e.status}`).sort(),
      ['/first 499', '/second 499', '/third 499'],
      'each recorded as the client cancelled, the two that waited behind the first included',
    )
    const start = performance.now()
    await proxy.close(0)
    const ms = performance.now() - start
    t.ok(ms < PROMPT_MS, `nothing left in flight for close(): closed in ${Math.round(ms)} ms`)
  },
)

t.test(
  'a pipelined request the upstream already answered is recorded as 499 when its client leaves before its turn',
  async (t) => {
    let secondAnswered = false
    const up = await scriptedUpstream(t, ({ path, socket }) => {
      if (path === '/first') return undefined
      // the proxy closes the upstream connection once it has read the whole answer (Connection: close)
      socket.once('close', () => {
        secondAnswered = true
      })
      return 'HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecond'
    })
    const { port, pipeline } = await startProxy(t, { upstream: up.url })
    for (const leave of ['reset', 'close'] as const) {
      secondAnswered = false
      pipeline.events.length = 0
      const client = await rawClient(port)
      client.socket.write('GET /first HTTP/1.1\r\nHost: app\r\n\r\nGET /second HTTP/1.1\r\nHost: app\r\n\r\n')
      await eventually(() => secondAnswered, { what: "the proxy to have the upstream's whole second answer" })
      if (leave === 'reset') client.socket.resetAndDestroy()
      else client.socket.destroy()
      const events = await pipeline.waitForEvents(2)
      t.same(
        events.map((e) => `${e.path} ${e.status} ${e.bytesOut}`).sort(),
        ['/first 499 0', '/second 499 0'],
        `${leave}: neither answer reached the client, whatever the upstream had answered`,
      )
      t.equal(client.text(), '', `${leave}: the client read nothing`)
    }
  },
)

t.test(
  'a client pipelining dozens of requests adds one close listener to its connection, not one each',
  async (t) => {
    const up = await startHoldingUpstream()
    t.teardown(() => up.close())
    const warnings: string[] = []
    const onWarning = (w: Error) => warnings.push(`${w.name}: ${w.message}`)
    process.on('warning', onWarning)
    t.teardown(() => process.off('warning', onWarning))
    const { port, pipeline } = await startProxy(t, { upstream: up.url })
    const client = await rawClient(port)
    const paths = Array.from({ length: 40 }, (_, i) => `/p${i}`)
    client.socket.write(paths.map((p) => `GET ${p} HTTP/1.1\r\nHost: app\r\n\r\n`).join(''))
    await eventually(() => up.received.length >= 1, { what: 'the first request at the upstream' })
    // node:http parses the pipelined requests as they come; each waits behind the first answer, which never comes
    await eventually(() => pipeline.seen.length >= 40, { what: 'all forty requests attributed' })
    client.socket.resetAndDestroy()
    const events = await pipeline.waitForEvents(40)
    t.equal(events.filter((e) => e.status === 499).length, 40, 'every one recorded as cancelled')
    // a warning is emitted on the next tick after the listener that crossed the limit
    await new Promise((resolve) => setImmediate(resolve))
    t.same(
      warnings.filter((w) => w.startsWith('MaxListenersExceededWarning')),
      [],
      'no listener-leak warning',
    )
  },
)
