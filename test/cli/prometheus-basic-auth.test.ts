// `inventory`/`fleet --prometheus http://user:password@host` (a Prometheus behind basic auth): the
// credentials go in an Authorization header (fetch refuses them in a URL), and the password never appears in
// the output, in messages, or in what `fleet --serve` answers to whoever loads its page.
import { once } from 'node:events'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { refusedPort } from '../helpers/net.ts'
import { runCli, spawnCli } from '../helpers/sidecar.ts'

const AUTH = `Basic ${Buffer.from('ops:promPassw0rd').toString('base64')}`

async function fakePrometheus(t: Test): Promise<string> {
  const server = createServer((req, res) => {
    if (req.headers.authorization !== AUTH) {
      res.writeHead(401, { 'content-type': 'application/json' })
      return res.end('{"status":"error","error":"unauthorized"}')
    }
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end('{"status":"success","data":{"resultType":"vector","result":[]}}')
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => server.close())
  return `127.0.0.1:${(server.address() as AddressInfo).port}`
}

t.test('inventory with basic auth in --prometheus: works, never prints the password', async (t) => {
  const host = await fakePrometheus(t)
  const r = await runCli(['inventory', '--prometheus', `http://ops:promPassw0rd@${host}`, '--json'])
  t.equal(r.code, 0, r.stderr)
  t.notMatch(r.stdout + r.stderr, /promPassw0rd/, 'no password in the output')
})

t.test('fleet --serve: the 502 body never carries the password', async (t) => {
  // a port nothing listens on and fetch does not refuse (port 9 and the like are refused as bad flags)
  const port = await refusedPort()
  const cli = spawnCli([
    'fleet',
    '--prometheus',
    `http://ops:promPassw0rd@127.0.0.1:${port}`,
    '--serve',
    '127.0.0.1:0',
  ])
  t.teardown(() => cli.kill())
  const line = await eventually(() => /on (http:\/\/\S+)\//.exec(cli.stdout())?.[1], {
    what: 'the serve line',
  })
  const body = await (await fetch(`${line}/fleet.json`)).text()
  t.notMatch(body, /promPassw0rd/, 'no password in the answer')
  t.notMatch(cli.stdout() + cli.stderr(), /promPassw0rd/, 'no password in the output')
})

t.test('a --prometheus URL that does not parse: the message never carries its password', async (t) => {
  for (const url of [
    'http://ops:promPassw0rd@prometheus:99999',
    'http://ops:promPassw0rd@prom etheus:9090',
  ]) {
    const r = await runCli(['inventory', '--prometheus', url])
    t.equal(r.code, 1, `${url}: a bad URL is a bad flag`)
    t.match(r.stderr, /is not a URL/, 'says why')
    t.notMatch(r.stdout + r.stderr, /promPassw0rd/, `${url}: no password in the message`)
  }
})

t.test('a user or password with a malformed %-escape: a bad flag (exit 1), never served', async (t) => {
  const port = await refusedPort()
  for (const url of [`http://ops:s3cr%zzEt@127.0.0.1:${port}`, `http://o%zzps:s3cr3t@127.0.0.1:${port}`]) {
    const r = await runCli(['fleet', '--prometheus', url])
    t.equal(r.code, 1, `${url}: exit 1: ${r.stderr}`)
    t.match(r.stderr, /--prometheus/, 'the message names the flag')
    t.notMatch(r.stderr, /s3cr/, 'and not the password')
    const served = await runCli(['fleet', '--prometheus', url, '--serve', '127.0.0.1:0'], {
      timeoutMs: 10_000,
    })
    t.equal(served.code, 1, `${url}: --serve refuses it before serving`)
  }
})
