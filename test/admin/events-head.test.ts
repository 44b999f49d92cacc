// HEAD /events was taken for a subscription: its answer never went out (a HEAD answer has no body, and the
// headers wait for the first body write), and the subscriber it left, never blocked since nothing is ever
// written to it, could not be evicted for a reading client: two HEADs held adminAccess.liveClients 2 until
// liveMaxDuration.
import { request } from 'node:http'
import t from 'tap'
import { configSchema } from '../../src/config/schema.ts'
import { Telemetry } from '../../src/telemetry/index.ts'
import { startAdmin } from '../helpers/admin.ts'

function head(url: string): Promise<{ status: number; type: string | undefined }> {
  return new Promise((resolve, reject) => {
    const req = request(`${url}/events`, { method: 'HEAD', agent: false }, (res) => {
      resolve({ status: res.statusCode ?? 0, type: res.headers['content-type'] })
      res.resume()
    })
    req.setTimeout(3_000, () => req.destroy(new Error('no answer to HEAD /events')))
    req.on('error', reject)
    req.end()
  })
}

t.test('HEAD /events answers the stream headers and holds no subscriber slot', async (t) => {
  const telemetry = new Telemetry(
    configSchema.parse({ service: 'shop', audit: { output: 'off' }, adminAccess: { liveClients: 2 } }),
    { version: 'test' },
  )
  const url = await startAdmin(t, telemetry)
  for (let i = 0; i < 3; i++) {
    t.same(await head(url), { status: 200, type: 'text/event-stream; charset=utf-8' }, `HEAD ${i + 1}`)
  }
  t.equal(telemetry.liveStats().subscribers, 0, 'no subscriber left behind')
  const res = await fetch(`${url}/events`)
  t.equal(res.status, 200, 'a live view still gets its stream')
  await res.body?.cancel()
})
