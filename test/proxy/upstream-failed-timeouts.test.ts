// An upstream that does not answer within timeouts.upstream is handed to the operator's log (onUpstreamFailed)
// on every forwarding path, not only the HTTP/1.1 engine's: a request that announces trailers (node:http) and
// an HTTP/2 upstream answered 504 and left nothing in the log but the metric.
import { once } from 'node:events'
import { createServer, request } from 'node:http'
import { createServer as createH2cServer } from 'node:http2'
import type { AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import { defaultConfig } from '../../src/config/schema.ts'
import type { UpstreamFailed } from '../../src/proxy/forwarder.ts'
import { startProxy } from '../helpers/proxy-fixture.ts'

const timeouts = { ...defaultConfig().timeouts, upstream: 200 }

function recorder() {
  const calls: string[] = []
  const failed: UpstreamFailed = (reason, err) => {
    calls.push(`${reason} ${String((err as { code?: unknown }).code)}`)
  }
  return { calls, failed }
}

async function silentHttp1(t: Test): Promise<string> {
  const up = createServer(() => {})
  up.listen(0, '127.0.0.1')
  await once(up, 'listening')
  t.teardown(() => {
    up.closeAllConnections()
    up.close()
  })
  return `http://127.0.0.1:${(up.address() as AddressInfo).port}`
}

t.test('HTTP/1.1 upstream, a plain request (the engine): the timeout is reported', async (t) => {
  const { calls, failed } = recorder()
  const p = await startProxy(t, { upstream: await silentHttp1(t), timeouts, onUpstreamFailed: failed })
  t.equal((await fetch(`${p.url}/x`)).status, 504)
  t.same(calls, ['timeout UND_ERR_HEADERS_TIMEOUT'])
})

t.test(
  'HTTP/1.1 upstream, a request that announces trailers (node:http): the timeout is reported',
  async (t) => {
    const { calls, failed } = recorder()
    const p = await startProxy(t, { upstream: await silentHttp1(t), timeouts, onUpstreamFailed: failed })
    const status = await new Promise<number>((resolve, reject) => {
      const r = request(
        `${p.url}/x`,
        { method: 'POST', headers: { trailer: 'x-sum', 'transfer-encoding': 'chunked' } },
        (res) => {
          res.resume()
          resolve(res.statusCode ?? 0)
        },
      )
      r.on('error', reject)
      r.write('abc')
      r.addTrailers({ 'x-sum': '1' })
      r.end()
    })
    t.equal(status, 504)
    t.same(calls, ['timeout UND_ERR_HEADERS_TIMEOUT'])
  },
)

t.test('HTTP/2 upstream: the timeout is reported', async (t) => {
  const up = createH2cServer()
  up.on('stream', () => {})
  up.listen(0, '127.0.0.1')
  await once(up, 'listening')
  t.teardown(() => up.close())
  const { calls, failed } = recorder()
  const p = await startProxy(t, {
    upstream: `h2c://127.0.0.1:${(up.address() as AddressInfo).port}`,
    timeouts,
    onUpstreamFailed: failed,
  })
  t.equal((await fetch(`${p.url}/x`)).status, 504)
  t.same(calls, ['timeout UND_ERR_HEADERS_TIMEOUT'])
})
