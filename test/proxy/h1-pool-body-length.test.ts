// The HTTP/1.1 engine on its own, for what no client of the proxy can make it do through node:http: a
// request body that does not match the Content-Length it was announced with (node:http's parser holds
// HTTP/1.1 clients to it, nghttp2 HTTP/2 ones; the engine checks again, since a mismatch on a kept-alive
// connection would make the upstream read one request's bytes as another's).
import { once } from 'node:events'
import { type AddressInfo, createServer, type Socket } from 'node:net'
import { Readable } from 'node:stream'
import t from 'tap'
import { H1Pool, type UpstreamHandler } from '../../src/proxy/h1-pool.ts'
import { eventually } from '../helpers/eventually.ts'

async function upstream() {
  const closed: Socket[] = []
  const received: string[] = []
  const server = createServer((s) => {
    s.on('data', (c: Buffer) => received.push(c.toString('latin1')))
    s.on('close', () => closed.push(s))
    s.on('error', () => {})
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return { port: (server.address() as AddressInfo).port, closed, received, server }
}

function outcome(): { handler: UpstreamHandler; done: Promise<{ error?: string; status?: number }> } {
  let settle!: (r: { error?: string; status?: number }) => void
  const done = new Promise<{ error?: string; status?: number }>((r) => {
    settle = r
  })
  let status = 0
  return {
    done,
    handler: {
      onConnect() {},
      onHeaders(s) {
        status = s
        return true
      },
      onData: () => true,
      onComplete: () => settle({ status }),
      onError: (err) => settle({ error: (err as { code?: string }).code ?? err.message }),
    },
  }
}

const options = (port: number) => ({
  host: '127.0.0.1',
  port,
  hostHeader: `127.0.0.1:${port}`,
  connectTimeout: 2_000,
  headersTimeout: 2_000,
  bodyTimeout: 2_000,
  keepAliveTimeout: 4_000,
})

t.test('a body shorter or longer than its Content-Length fails and closes the connection', async (t) => {
  const up = await upstream()
  t.teardown(() => up.server.close())
  const pool = new H1Pool(options(up.port))
  t.teardown(() => pool.destroy())
  for (const [what, chunks] of [
    ['shorter', ['abc']],
    ['longer', ['abcdefghij', 'kl']],
  ] as const) {
    const closedBefore = up.closed.length
    const o = outcome()
    pool.dispatch(
      {
        method: 'POST',
        path: `/${what}`,
        headers: { 'content-length': '10' },
        body: Readable.from(chunks.map((c) => Buffer.from(c))),
      },
      o.handler,
    )
    t.same(await o.done, { error: 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH' }, `${what}: the request fails`)
    // the upstream sees its connection end: nothing more is ever sent on it
    await eventually(() => up.closed.length > closedBefore, {
      what: `${what}: the upstream connection to close`,
    })
    t.pass(`${what}: the connection is closed`)
  }
  const sent = up.received.join('')
  t.notMatch(sent, /abcdefghijkl/, 'no byte past the announced length was sent')
})
