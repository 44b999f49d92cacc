// /metrics answers anyone who reaches the admin port. A client that asks for it and never reads held the
// unsent body (megabytes at metrics.maxIdentities) and its connection for ever: a few hundred of them, one
// per connection the admin port takes, were gigabytes. Only a few scrapes may now be in progress at once,
// and an answer not taken within the send deadline closes its connection.
import { once } from 'node:events'
import { connect, type Socket } from 'node:net'
import t, { type Test } from 'tap'
import { ADMIN_MAX_SCRAPES, type AdminServerOptions } from '../../src/admin/server.ts'
import { configSchema } from '../../src/config/schema.ts'
import { Telemetry } from '../../src/telemetry/index.ts'
import { startAdmin } from '../helpers/admin.ts'
import { eventually } from '../helpers/eventually.ts'

// more than the kernel's socket buffers take, so the answer stays unsent while the client does not read
const BODY = '#'.repeat(16 * 1024 * 1024)

async function admin(t: Test, opts: Pick<AdminServerOptions, 'sendTimeoutMs'> = {}): Promise<number> {
  const telemetry = new Telemetry(configSchema.parse({ service: 'shop', audit: { output: 'off' } }), {
    version: 'test',
  })
  const url = await startAdmin(t, telemetry, {
    scrape: async () => ({ contentType: 'text/plain; version=0.0.4; charset=utf-8', body: BODY }),
    ...opts,
  })
  return Number(new URL(url).port)
}

interface Stalled {
  socket: Socket
  /** bytes of the answer read so far */
  received: number
}

/** ADMIN_MAX_SCRAPES connections that ask for /metrics, take the first bytes of the answer, then stop reading */
async function stalledScrapes(t: Test, port: number): Promise<Stalled[]> {
  const stalled: Stalled[] = []
  t.teardown(() => {
    for (const s of stalled) s.socket.destroy()
  })
  for (let i = 0; i < ADMIN_MAX_SCRAPES; i++) {
    const socket = connect(port, '127.0.0.1')
    const s = { socket, received: 0 }
    socket.on('error', () => {})
    socket.on('data', (chunk: Buffer) => {
      s.received += chunk.length
    })
    stalled.push(s)
    await once(socket, 'connect')
    socket.write('GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n')
    await once(socket, 'data')
    socket.pause()
  }
  return stalled
}

t.test('scrapes past the ones in progress are refused, not held', async (t) => {
  const port = await admin(t)
  await stalledScrapes(t, port)
  const res = await fetch(`http://127.0.0.1:${port}/metrics`)
  t.equal(res.status, 503, `a scrape past the ${ADMIN_MAX_SCRAPES} in progress`)
  t.equal(res.headers.get('retry-after'), '5', 'with Retry-After')
  await res.body?.cancel()
})

t.test('a scrape nobody reads is cut at the send deadline; a live stream is not', async (t) => {
  const port = await admin(t, { sendTimeoutMs: 1_000 })
  const stalled = await stalledScrapes(t, port)
  const events = await fetch(`http://127.0.0.1:${port}/events`)
  t.equal(events.status, 200)
  const reader = events.body!.getReader()
  await reader.read()

  // the server gave the stalled answers up: their slots are free while their clients still read nothing
  const res = await eventually(
    async () => {
      const r = await fetch(`http://127.0.0.1:${port}/metrics`)
      if (r.status === 200) return r
      await r.body?.cancel()
      return undefined
    },
    { what: 'the stalled scrapes given up at the send deadline' },
  )
  t.equal((await res.text()).length, BODY.length, 'then Prometheus scrapes again, the whole body')
  // every stalled answer given up, not only the first: as many scrapes at once as may be in progress are all
  // answered (a connection not yet given up when the client below reads again would get the whole body)
  await eventually(
    async () => {
      const all = await Promise.all(
        Array.from({ length: ADMIN_MAX_SCRAPES }, () => fetch(`http://127.0.0.1:${port}/metrics`)),
      )
      await Promise.all(all.map((r) => r.body?.cancel()))
      return all.every((r) => r.status === 200)
    },
    { what: 'every stalled scrape given up at the send deadline' },
  )
  // and closed their connections: what a stalled client reads now is what the kernel held, then the end
  for (const s of stalled) {
    s.socket.resume()
    await once(s.socket, 'close')
    t.ok(s.received < BODY.length, `a stalled connection closed after ${s.received} bytes of the answer`)
  }

  // the stream has sent nothing (no event, no heartbeat yet) for longer than the deadline
  let ended = false
  const next = reader.read().then(
    (r) => {
      ended ||= r.done
    },
    () => {
      ended = true
    },
  )
  await new Promise((resolve) => setTimeout(resolve, 1_500))
  t.notOk(ended, 'the live stream outlives the send deadline')
  await reader.cancel()
  await next
})
