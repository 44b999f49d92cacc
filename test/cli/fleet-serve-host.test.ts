// `fleet --serve` on loopback against DNS rebinding: a web page on attacker.example that re-resolves its name
// to 127.0.0.1 reaches the page server from the operator's browser as same-origin, with `Host:
// attacker.example`. Only IP literals and localhost name a loopback listener, so any other Host is refused
// before Prometheus is queried, and the fleet's identities never reach that page. On any address the names
// people use for it are given with --allow-host; every other name is refused the same way.
import { once } from 'node:events'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import { exchange } from '../helpers/http.ts'
import { freePort } from '../helpers/net.ts'
import { runCli, spawnCli } from '../helpers/sidecar.ts'

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

const get = (port: number, path: string, host: string, address = '127.0.0.1') =>
  exchange({ host: address, port, path, headers: { host } })

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

t.test('fleet --serve --allow-host: IP literals, localhost and the names given, nothing else', async (t) => {
  const prometheus = await fakePrometheus(t)
  // not 127.0.0.1: the listen address itself is accepted because it is the address, not a loopback default
  const served = spawnCli([
    'fleet',
    '--prometheus',
    prometheus,
    '--serve',
    '127.0.0.2:0',
    '--allow-host',
    'fleet.test',
    '--allow-host',
    'Fleet.Example.Internal',
  ])
  t.teardown(() => served.kill())
  const port = Number((await served.waitFor(/on http:\/\/127\.0\.0\.2:(\d+)\//))[1])

  for (const host of [
    `127.0.0.2:${port}`,
    `fleet.test:${port}`,
    'fleet.test',
    `FLEET.TEST:${port}`,
    `fleet.example.internal:${port}`,
    `localhost:${port}`,
  ]) {
    const page = await get(port, '/fleet.json', host, '127.0.0.2')
    t.equal(page.status, 200, `Host ${host}: the fleet`)
    t.match(page.body, /secret-exporter/)
  }
  for (const host of [
    `attacker.example:${port}`,
    `fleet.test.attacker.example:${port}`,
    `xfleet.test:${port}`,
    `example.internal:${port}`,
  ]) {
    const res = await get(port, '/fleet.json', host, '127.0.0.2')
    t.equal(res.status, 403, `Host ${host}: refused`)
    t.match(res.body, /--allow-host/, 'the answer names the flag')
    t.notMatch(res.body, /secret-exporter/, 'no identity in the answer')
  }
  served.kill()
  t.equal(await served.exited, 0)
})

t.test('fleet --allow-host: in the help, a bad value or no --serve is exit 1', async (t) => {
  const help = await runCli(['fleet', '--help'])
  t.match(help.stdout, /--allow-host <name>/, 'the flag')
  t.match(help.stdout, /nhi-proxy fleet .*--serve \S+ --allow-host \S+/, 'an example')

  for (const value of ['fleet.test:9480', 'http://fleet.test', '']) {
    const bad = await runCli([
      'fleet',
      '--prometheus',
      'http://127.0.0.1:1',
      '--serve',
      '127.0.0.2:0',
      '--allow-host',
      value,
    ])
    t.equal(bad.code, 1, `--allow-host "${value}": exit 1`)
    t.match(bad.stderr, /--allow-host/, 'the flag is named')
  }
  const alone = await runCli(['fleet', '--prometheus', 'http://127.0.0.1:1', '--allow-host', 'fleet.test'])
  t.equal(alone.code, 1, '--allow-host without --serve: exit 1')
  t.match(alone.stderr, /--allow-host .*--serve/)
})
