// A --prometheus URL fetch() cannot use is said in words: a port the Fetch standard bars (fetch's bare
// "bad port") is named as such, exit 1 before any query; a host name that does not resolve is "host name not
// found (HOST)", as the listeners say it, not getaddrinfo's bare ENOTFOUND.
import { createServer } from 'node:http'
import t from 'tap'
import { listenUntilTeardown } from '../helpers/net.ts'
import { runCli } from '../helpers/sidecar.ts'

// RFC 6761: never resolves
const UNRESOLVABLE = 'nhi-proxy-test.invalid'
const lines = (text: string) => text.split('\n').filter((l) => l !== '')

t.test('a port fetch refuses: named, exit 1, for inventory, fleet and fleet --serve', async (t) => {
  const runs = await Promise.all([
    runCli(['inventory', '--prometheus', 'http://127.0.0.1:6000']),
    runCli(['fleet', '--prometheus', 'http://prometheus:1']),
    runCli(['fleet', '--prometheus', 'http://127.0.0.1:6667', '--serve', '127.0.0.1:0']),
  ])
  for (const [i, port] of [6000, 1, 6667].entries()) {
    const r = runs[i]!
    t.equal(r.code, 1, `port ${port}: exit 1`)
    t.same(lines(r.stderr), [
      `nhi-proxy: --prometheus: port ${port} is one fetch refuses to connect to (reserved for another protocol); put Prometheus on another port, or reach it through one`,
    ])
    t.notMatch(r.stderr, /bad port/)
  }
})

t.test('a redirect to such a port says so', async (t) => {
  const port = await listenUntilTeardown(
    t,
    createServer((_req, res) => {
      res.writeHead(307, { location: 'http://127.0.0.1:6000/api/v1/query' }).end()
    }),
  )
  const r = await runCli(['inventory', '--prometheus', `http://127.0.0.1:${port}`])
  t.equal(r.code, 2)
  t.same(lines(r.stderr), [
    `nhi-proxy: cannot reach Prometheus at http://127.0.0.1:${port}: redirected to a port fetch refuses to connect to (reserved for another protocol)`,
  ])
})

t.test('a host name that does not resolve: named, in the listeners words', async (t) => {
  const [inventory, fleet] = await Promise.all([
    runCli(['inventory', '--prometheus', `http://${UNRESOLVABLE}:9090`]),
    runCli(['fleet', '--prometheus', `http://${UNRESOLVABLE}:9090`]),
  ])
  for (const r of [inventory, fleet]) {
    t.equal(r.code, 2)
    t.same(lines(r.stderr), [
      `nhi-proxy: cannot reach Prometheus at http://${UNRESOLVABLE}:9090: host name not found (${UNRESOLVABLE})`,
    ])
    t.notMatch(r.stderr, /ENOTFOUND|EAI_|getaddrinfo/)
  }
})
