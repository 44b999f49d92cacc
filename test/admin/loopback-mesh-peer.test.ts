// A local peer is one that connects from 127.0.0.1 or ::1, as `kubectl port-forward` and a process in the
// pod do. A mesh sidecar in the pod forwards every client of the mesh from another loopback address (Istio's
// from 127.0.0.6): taking all of 127.0.0.0/8 for local opened the operator endpoints to each of them.
import { request } from 'node:http'
import t from 'tap'
import { isLoopback } from '../../src/admin/server.ts'
import { configSchema } from '../../src/config/schema.ts'
import { Telemetry } from '../../src/telemetry/index.ts'
import { startAdmin } from '../helpers/admin.ts'

function status(port: number, path: string, localAddress: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, localAddress, agent: false }, (res) => {
      resolve(res.statusCode ?? 0)
      res.destroy()
    })
    req.on('error', reject)
    req.end()
  })
}

t.test('isLoopback: 127.0.0.1 and ::1 (IPv4-mapped too), not the rest of 127.0.0.0/8', async (t) => {
  for (const a of ['127.0.0.1', '::1', '::ffff:127.0.0.1']) t.ok(isLoopback(a), a)
  for (const a of ['127.0.0.6', '::ffff:127.0.0.6', '127.1.2.3', '10.0.0.7', '::ffff:10.0.0.7', '::', ''])
    t.notOk(isLoopback(a), a || '(none)')
  t.notOk(isLoopback(undefined), 'no address')
})

t.test('a client a mesh sidecar forwards from 127.0.0.6 gets the public endpoints only', async (t) => {
  const telemetry = new Telemetry(configSchema.parse({ service: 'shop', audit: { output: 'off' } }), {
    version: 'test',
  })
  const port = Number(new URL(await startAdmin(t, telemetry)).port)
  for (const path of ['/identities', '/audit', '/config', '/ui']) {
    t.equal(await status(port, path, '127.0.0.1'), 200, `${path} from 127.0.0.1`)
    t.equal(await status(port, path, '127.0.0.6'), 403, `${path} from 127.0.0.6: refused`)
  }
  t.equal(await status(port, '/metrics', '127.0.0.6'), 200, '/metrics is public')
})
