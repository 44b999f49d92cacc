// SIGTERM drains like Envoy: /readyz turns 503 at once, the listener keeps accepting new connections for
// timeouts.drainDelay (answering with Connection: close), in-flight requests finish within timeouts.drain,
// then the process exits 0. A rolling-update-like sequence against the built bundle: clients keep opening
// connections through SIGTERM until they have seen the endpoint go unready (and a little after, as
// endpoints propagate); none is refused or reset.
import { request } from 'node:http'
import t from 'tap'
import { startBin } from '../helpers/bin.ts'
import { eventually } from '../helpers/eventually.ts'
import { startUpstream } from '../helpers/upstream.ts'

interface Outcome {
  status?: number
  connection?: string
  body?: string
  error?: string
}

/** one request on a fresh connection (no keep-alive agent), as a client that was just routed here */
function get(url: string): Promise<Outcome> {
  return new Promise((resolve) => {
    const req = request(url, { agent: false }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => {
        body += c
      })
      res.on('end', () => resolve({ status: res.statusCode, connection: res.headers.connection, body }))
      res.on('error', (err) => resolve({ error: err.message }))
    })
    req.on('error', (err) => resolve({ error: (err as NodeJS.ErrnoException).code ?? err.message }))
    req.end()
  })
}

t.test('SIGTERM during steady load: no connection refused or reset, in-flight requests finish', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const sidecar = await startBin(t, {
    upstream: upstream.url,
    timeouts: { drainDelay: '3s', drain: '10s' },
  })
  const slowMs = 4000
  const slow = Array.from({ length: 3 }, () => get(`${sidecar.proxyUrl}/slow/${slowMs}`))
  await eventually(() => upstream.received.filter((r) => r.url.startsWith('/slow/')).length === 3, {
    what: 'the slow requests to reach the upstream',
  })

  // clients: new connections in a loop, through SIGTERM, until each has made `after` requests after it
  // saw /readyz fail (the endpoint leaving the Service), then they move on to other endpoints
  const before: Outcome[] = []
  const during: Outcome[] = []
  let unready = false
  const after = 10
  const clients = Array.from({ length: 4 }, async () => {
    let sinceUnready = 0
    while (sinceUnready < after) {
      const wasUnready = unready
      const outcome = await get(`${sidecar.proxyUrl}/echo`)
      if (wasUnready) {
        during.push(outcome)
        sinceUnready++
      } else before.push(outcome)
    }
  })
  await eventually(() => before.length >= 20, { what: 'steady load before SIGTERM' })

  const sent = Date.now()
  sidecar.child.kill('SIGTERM')
  const status = await eventually(
    async () => {
      const s = (await fetch(`${sidecar.adminUrl}/readyz`)).status
      return s === 503 && s
    },
    { timeoutMs: 2000, intervalMs: 10, what: '/readyz to answer 503' },
  )
  const unreadyAfterMs = Date.now() - sent
  unready = true
  t.equal(status, 503, '/readyz answers 503 right after SIGTERM')
  t.ok(unreadyAfterMs < 1000, `within a second (${unreadyAfterMs} ms)`)

  await Promise.all(clients)
  const all = [...before, ...during]
  t.same(
    all.filter((o) => o.error !== undefined || o.status !== 200),
    [],
    `all ${all.length} requests on new connections answered 200: none refused or reset`,
  )
  t.equal(during.length, 4 * after, 'clients kept connecting after /readyz failed')
  t.ok(
    during.every((o) => o.connection === 'close'),
    'responses during the drain delay carry Connection: close',
  )

  const slowOutcomes = await Promise.all(slow)
  t.same(
    slowOutcomes.map((o) => [o.status, o.body]),
    slowOutcomes.map(() => [200, 'slow ok']),
    'in-flight slow requests finished',
  )
  t.equal(await sidecar.exited, 0, 'exit 0 after the drain')
  t.ok(Date.now() - sent >= 3000, 'not before the drain delay ended')
  t.ok(
    sidecar.logs().some((l) => l['event'] === 'draining'),
    'the drain is logged',
  )
})
