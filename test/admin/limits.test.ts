// The admin port has fixed bounds of its own: at most ADMIN_MAX_CONNECTIONS connections at once, and a
// request's headers within 10 s. A flood of idle or slow connections there cannot take the process's file
// descriptors, and the port serves again once they are gone.
import { once } from 'node:events'
import { connect, type Socket } from 'node:net'
import t from 'tap'
import { ADMIN_MAX_CONNECTIONS } from '../../src/admin/server.ts'
import { startBin } from '../helpers/bin.ts'
import { eventually } from '../helpers/eventually.ts'
import { startUpstream } from '../helpers/upstream.ts'

t.test('admin: connections past the bound are dropped, slow headers are cut, then it serves', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const sidecar = await startBin(t, { upstream: upstream.url })
  const { hostname, port } = new URL(sidecar.adminUrl)
  const extra = 20
  const sockets: Socket[] = []
  const closed = new Set<Socket>()
  t.teardown(() => {
    for (const s of sockets) s.destroy()
  })
  for (let i = 0; i < ADMIN_MAX_CONNECTIONS + extra; i++) {
    const s = connect(Number(port), hostname)
    s.on('error', () => {})
    s.once('close', () => closed.add(s))
    // read what the server sends (its 400 and end), so its close reaches this side
    s.resume()
    sockets.push(s)
    await once(s, 'connect')
    // a request that never ends its headers
    s.write('GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ')
  }
  await eventually(() => closed.size >= extra, {
    what: `the ${extra} connections past ${ADMIN_MAX_CONNECTIONS} dropped`,
  })
  t.ok(closed.size < ADMIN_MAX_CONNECTIONS, `only those past the bound are dropped at once (${closed.size})`)
  await eventually(() => closed.size === sockets.length, {
    timeoutMs: 30_000,
    what: 'every slow request cut at the 10 s headers deadline',
  })
  t.pass('every connection that never finished its headers was closed')
  const res = await fetch(`${sidecar.adminUrl}/healthz`)
  t.equal(res.status, 200, 'the admin port serves again')
})
