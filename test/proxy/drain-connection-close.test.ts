// Once the drain begins, every HTTP/1.1 response the proxy sends carries `Connection: close`, also the answer to
// a request that was already in flight then: a client told `keep-alive` sends its next request on a
// connection the proxy closes at the end of the drain, and a POST lost that way cannot be retried.
import t from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { rawClient, scriptedUpstream } from '../helpers/net.ts'
import { startProxy } from '../helpers/proxy-fixture.ts'

for (const how of ['drain()', 'close()'] as const) {
  t.test(`a request in flight when ${how} begins is answered with Connection: close`, async (t) => {
    const held: { answer: () => void }[] = []
    const up = await scriptedUpstream(t, ({ socket }) => {
      held.push({
        answer: () => socket.write('HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nheld ok', 'latin1'),
      })
      return undefined
    })
    const { port, proxy, pipeline } = await startProxy(t, { upstream: up.url })
    const client = await rawClient(port)
    t.teardown(() => client.socket.destroy())
    client.socket.write('POST /held HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi')
    await eventually(() => held.length === 1, { what: 'the request at the upstream' })
    let closed: Promise<void> | undefined
    if (how === 'drain()') proxy.drain()
    else closed = proxy.close(5000)
    held[0]!.answer()
    await eventually(() => client.text().endsWith('held ok'), { what: 'the answer' })
    t.match(client.text(), /^HTTP\/1\.1 200 OK\r\n/)
    t.match(client.text(), /\r\nConnection: close\r\n/i, 'the client is told to close')
    t.notMatch(client.text(), /keep-alive/i, 'and not to keep the connection')
    await eventually(() => client.closed(), { what: 'the connection closed by the proxy' })
    await closed
    const [event] = await pipeline.waitForEvents(1)
    t.equal(event!.status, 200)
    t.equal(pipeline.events.length, 1, 'recorded once')
  })
}

t.test('a request that comes during the drain delay is answered with Connection: close', async (t) => {
  const up = await scriptedUpstream(t, () => 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok')
  const { port, proxy } = await startProxy(t, { upstream: up.url })
  proxy.drain()
  const client = await rawClient(port)
  t.teardown(() => client.socket.destroy())
  client.socket.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n')
  await eventually(() => client.closed(), { what: 'the connection closed after the answer' })
  t.match(client.text(), /^HTTP\/1\.1 200 OK\r\n/)
  t.match(client.text(), /\r\nConnection: close\r\n/i)
})

/** the status and Connection field of each answer read so far, in order */
function answers(text: string): string[] {
  return text
    .split(/(?=HTTP\/1\.1 )/)
    .map((a) => `${a.slice(9, 12)} ${/\r\nConnection: ([a-z-]+)/i.exec(a)?.[1]?.toLowerCase()}`)
}

const PIPELINE = ['/1', '/2', '/3'].map((p) => `GET ${p} HTTP/1.1\r\nHost: x\r\n\r\n`).join('')

for (const when of ['sent during the drain', 'in flight when the drain begins'] as const) {
  t.test(`pipelined requests ${when}: each is answered, the last with Connection: close`, async (t) => {
    const held: (() => void)[] = []
    const up = await scriptedUpstream(t, ({ path, socket }) => {
      held.push(() => socket.write(`HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n${path.slice(1)}!`, 'latin1'))
      return undefined
    })
    const { port, proxy, pipeline } = await startProxy(t, { upstream: up.url })
    if (when === 'sent during the drain') proxy.drain()
    const client = await rawClient(port)
    t.teardown(() => client.socket.destroy())
    client.socket.write(PIPELINE)
    await eventually(() => held.length === 3, { what: 'the three requests at the upstream' })
    if (when === 'in flight when the drain begins') proxy.drain()
    for (const answer of held) answer()
    await eventually(() => client.closed(), { what: 'the connection closed after the last answer' })
    t.same(answers(client.text()), ['200 keep-alive', '200 keep-alive', '200 close'])
    t.match(client.text(), /1!HTTP[\s\S]*2!HTTP[\s\S]*3!$/, 'in order, every body')
    const events = await pipeline.waitForEvents(3)
    t.same(events.map((e) => `${e.path} ${e.status}`).sort(), ['/1 200', '/2 200', '/3 200'])
  })
}

t.test('a request sent behind an answer that said close is not forwarded, and recorded once', async (t) => {
  let finish: (() => void) | undefined
  const up = await scriptedUpstream(t, ({ path, socket }) => {
    if (path !== '/1') return 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nno'
    socket.write('HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nha', 'latin1')
    finish = () => socket.write('lf', 'latin1')
    return undefined
  })
  const { port, proxy, pipeline } = await startProxy(t, { upstream: up.url })
  proxy.drain()
  const client = await rawClient(port)
  t.teardown(() => client.socket.destroy())
  client.socket.write('GET /1 HTTP/1.1\r\nHost: x\r\n\r\n')
  await eventually(() => client.text().endsWith('ha'), { what: 'the head of the first answer' })
  t.match(client.text(), /\r\nConnection: close\r\n/i)
  client.socket.write('POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi')
  await eventually(() => pipeline.events.length === 1, { what: 'the second request recorded' })
  finish?.()
  await eventually(() => client.closed(), { what: 'the connection closed after the first answer' })
  t.match(client.text(), /half$/, 'the first answer is complete')
  const events = await pipeline.waitForEvents(2)
  t.same(
    events.map((e) => `${e.path} ${e.status}`),
    ['/2 499', '/1 200'],
  )
  t.same(
    up.seen.map((s) => s.head.split('\r\n')[0]),
    ['GET /1 HTTP/1.1'],
    'only the first reached the upstream',
  )
  t.equal(proxy.inFlight(), 0)
})
