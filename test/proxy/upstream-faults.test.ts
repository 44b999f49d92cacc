// A misbehaving upstream on a raw socket: refuses, resets before or during the response, hangs, or speaks
// garbage. Each becomes 502/504 (or a cut response), is counted by reason, and the proxy stays healthy.
import type { Socket } from 'node:net'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { eventually } from '../helpers/eventually.ts'
import { metricValue, scrape, scrapeUntil } from '../helpers/metrics.ts'
import { rawClient, refusedPort, scriptedUpstream } from '../helpers/net.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

/** An HTTP/1.1 "server" that misbehaves according to the path. */
function startBadUpstream(t: Test) {
  return scriptedUpstream(t, ({ path, socket }) => {
    if (path === '/reset-early') socket.resetAndDestroy()
    else if (path === '/reset-mid') {
      socket.write('HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n')
      socket.write('x'.repeat(1000), () => setTimeout(() => socket.resetAndDestroy(), 50))
    } else if (path === '/hang') {
      // never answer
    } else if (path === '/garbage') socket.end('HTTP/1.1 banana\r\n\r\n')
    else if (path === '/binary') socket.end(Buffer.from([0, 1, 2, 255, 254, 13, 10, 13, 10]))
    else return 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'
  })
}

const config = (upstream: string) => ({ service: 'orders', upstream, timeouts: { upstream: '1s' } })

t.test('upstream faults become 502/504, are counted, and the proxy stays healthy', async (t) => {
  const bad = await startBadUpstream(t)
  const sidecar = await startTestSidecar(t, config(bad.url))
  const proxy = sidecar.proxyUrl
  const admin = sidecar.adminUrl
  const errors = async (reason?: string) =>
    metricValue(await scrape(admin), 'nhi_upstream_errors_total', reason ? { reason } : {})
  // The proxy records a request when its downstream response closes, which can come after the client has
  // seen the cut or the 502 and sent its scrape: wait for the count to move, then check it moved by one.
  const counted = async (reason: string | undefined, before: number, what: string) =>
    eventually(
      async () => {
        const delta = (await errors(reason)) - before
        return delta >= 1 ? delta : false
      },
      { what },
    ).catch(() => 0)
  const get = async (path: string) => {
    try {
      const res = await request(`${proxy}${path}`)
      const body = await res.body.text().catch(() => undefined)
      return { status: res.statusCode, body }
    } catch {
      return { status: 0, body: undefined }
    }
  }
  const healthy = async (what: string) => {
    const h = await request(`${admin}/healthz`)
    await h.body.dump()
    t.equal(h.statusCode, 200, `healthz after ${what}`)
    t.equal((await get('/fine')).status, 200, `a normal request after ${what}`)
  }

  for (const [path, status, reason] of [
    ['/reset-early', 502, 'reset'],
    ['/hang', 504, 'timeout'],
    ['/garbage', 502, undefined],
    ['/binary', 502, undefined],
  ] as const) {
    const before = await errors(reason)
    const started = Date.now()
    const r = await get(path)
    t.equal(r.status, status, `${path} → ${status}`)
    t.notMatch(r.body ?? '', /at .*\.ts:\d+|Error:/, `${path}: no stack trace in the body`)
    t.ok(Date.now() - started < 5000, `${path}: answered within bounds`)
    t.equal(
      await counted(reason, before, `${path} counted`),
      1,
      `${path}: counted${reason ? ` as ${reason}` : ''}`,
    )
    await healthy(path)
  }

  // headers already sent: the client sees a cut response, the error is still counted
  const before = await errors('reset')
  const mid = await get('/reset-mid')
  t.ok(
    mid.status === 0 || mid.body === undefined || mid.body.length < 100_000,
    'cut response is not completed',
  )
  t.equal(await counted('reset', before, '/reset-mid counted'), 1, 'reset mid-response counted as reset')
  await healthy('/reset-mid')

  const m = await scrape(admin)
  t.ok(metricValue(m, 'nhi_requests_total', { code: '504' }) >= 1, 'the 504 is in nhi_requests_total')
  t.ok(metricValue(m, 'nhi_requests_total', { code: '502' }) >= 3, 'the 502s are in nhi_requests_total')
})

t.test('a refused connection → 502 counted as connect', async (t) => {
  const sidecar = await startTestSidecar(t, config(`http://127.0.0.1:${await refusedPort()}`))
  const res = await request(`${sidecar.proxyUrl}/x`)
  await res.body.dump()
  t.equal(res.statusCode, 502)
  const m = await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_upstream_errors_total', { reason: 'connect' }) >= 1,
    'the refused connection to be counted',
  )
  t.equal(metricValue(m, 'nhi_upstream_errors_total', { reason: 'connect' }), 1)
  const h = await request(`${sidecar.adminUrl}/healthz`)
  await h.body.dump()
  t.equal(h.statusCode, 200)
})

t.test(
  'an answer the upstream cuts while it waits behind another pipelined one reaches the client cut, in its turn',
  async (t) => {
    let first: Socket | undefined
    let secondGone = false
    const up = await scriptedUpstream(t, ({ path, socket }) => {
      if (path === '/first') {
        first = socket
        return undefined
      }
      socket.once('close', () => {
        secondGone = true
      })
      // a head and 10 of the 100 bytes it announces, then the connection ends
      socket.end(`HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n${'x'.repeat(10)}`)
      return undefined
    })
    const sidecar = await startTestSidecar(t, config(up.url))
    const client = await rawClient(sidecar.proxyAddress.port)
    client.socket.write('GET /first HTTP/1.1\r\nHost: app\r\n\r\nGET /second HTTP/1.1\r\nHost: app\r\n\r\n')
    // the second answer is cut at the proxy (its upstream connection let go) while the first is still to come
    await eventually(() => secondGone, { what: 'the proxy to let the cut upstream connection go' })
    first!.write('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst')
    await eventually(client.closed, { what: 'the proxy to close the client connection' })
    const text = client.text()
    t.match(text, /^HTTP\/1\.1 200 OK\r\n[\s\S]*?\r\n\r\nfirst/, 'the first answer, whole')
    t.equal((text.match(/HTTP\/1\.1 200 OK\r\n/g) ?? []).length, 2, "then the second's head")
    t.ok(text.endsWith('x'.repeat(10)), 'and what came of its body, before the connection closed')
    const m = await scrapeUntil(
      sidecar.adminUrl,
      (s) => metricValue(s, 'nhi_requests_total') >= 2,
      'both requests recorded',
    )
    t.equal(metricValue(m, 'nhi_requests_total', { code: '200' }), 2, 'both recorded as answered 200')
    t.equal(metricValue(m, 'nhi_upstream_errors_total', { reason: 'reset' }), 1, 'the cut counted as reset')
  },
)
