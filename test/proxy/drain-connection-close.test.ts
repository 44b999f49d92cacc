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
