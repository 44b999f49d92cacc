// `fleet --serve` on loopback against DNS rebinding: a web page on attacker.example that re-resolves its name
// to 127.0.0.1 reaches the page server from the operator's browser as same-origin, with `Host:
// attacker.example`. Only IP literals and localhost name a loopback listener, so any other Host is refused
// before Prometheus is queried, and the fleet's identities never reach that page.
import { once } from 'node:events'
import { createServer, request } from 'node:http'
import type { AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import { freePort } from '../helpers/net.ts'
import { spawnCli } from '../helpers/sidecar.ts'

/** A Prometheus API stand-in: every instant query answers one series of the identity `secret-exporter`. */
async function fakePrometheus(t: Test): Promise<string> {
  const server = createServer((req, res) => {
    req.resume()
    req.on('end', () => {
      const result = [
        {
          metric: { identity: 'secret-exporter', kind: 'job', service: 'billing', verified: 'true' },
          value: [Date.now() / 1000, '3'],
        },
      ]
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ status: 'success', data: { resultType: 'vector', result } }))
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => server.close())
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

function get(port: number, path: string, host: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, headers: { host }, agent: false }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => {
        body += c
      })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    })
    req.on('error', reject)
    req.end()
  })
}

t.test('fleet --serve on loopback answers only Host names that cannot be rebound', async (t) => {
  const prometheus = await fakePrometheus(t)
  const port = await freePort()
  const served = spawnCli(['fleet', '--prometheus', prometheus, '--serve', String(port)])
  t.teardown(() => served.kill())
  await served.waitFor(/fleet view of .* on http:\/\//)

  for (const host of [`127.0.0.1:${port}`, `localhost:${port}`, `[::1]:${port}`]) {
    const page = await get(port, '/', host)
    t.equal(page.status, 200, `Host ${host}: the page`)
    t.match(page.body, /secret-exporter/)
  }
  for (const path of ['/', '/ui', '/fleet.json']) {
    for (const host of [`attacker.example:${port}`, 'attacker.example', '127.0.0.1.attacker.example']) {
      const res = await get(port, path, host)
      t.equal(res.status, 403, `Host ${host} ${path}: refused`)
      t.notMatch(res.body, /secret-exporter/, 'no identity in the answer')
    }
  }
  served.kill()
  t.equal(await served.exited, 0)
})
