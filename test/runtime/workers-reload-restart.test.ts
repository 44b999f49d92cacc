// `workers: 2`: a reload that comes while a replacement worker is still starting must reach it too. The
// primary hands each new worker the config of the moment it asks, and a reload asks only the workers that
// already serve: a worker that asked before the reload and served after it kept the old config.
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { createServer, request, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import t from 'tap'
import { stringify } from 'yaml'
import { eventually } from '../helpers/eventually.ts'
import { replaceFile, scratchDir } from '../helpers/scratch.ts'
import { startSidecarFromFile } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

/** one request on a fresh connection: the cluster hands each new connection to the next worker */
function get(url: string, userAgent: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(url, { agent: false, headers: { 'user-agent': userAgent } }, (res) => {
      res.resume()
      res.on('end', () => resolve(res.statusCode ?? 0))
    })
    req.on('error', reject)
    req.end()
  })
}

t.test('a reload while a worker is being replaced reaches the replacement', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  // a key server that can hold one fetch: a starting worker waits for its issuers' keys, which keeps
  // the replacement between "given its config" and "serving" for as long as the test needs
  let hold = false
  let held: ServerResponse | undefined
  const jwks = createServer((_req, res) => {
    res.setHeader('content-type', 'application/json')
    if (hold && held === undefined) {
      held = res
      return
    }
    res.end('{"keys":[]}')
  })
  await new Promise<void>((done) => jwks.listen(0, '127.0.0.1', done))
  t.teardown(() => {
    held?.end('{"keys":[]}')
    jwks.closeAllConnections()
    jwks.close()
  })
  const jwksUri = `http://127.0.0.1:${(jwks.address() as AddressInfo).port}/jwks.json`

  const dir = await scratchDir('workers-reload-restart')
  const auditFile = join(dir, 'audit.log')
  const configFile = join(dir, 'config.yaml')
  const config = (rule: string) =>
    stringify({
      listen: { http: '127.0.0.1:0' },
      admin: '127.0.0.1:0',
      upstream: upstream.url,
      workers: 2,
      audit: { output: auditFile },
      timeouts: { drainDelay: '0s' },
      jwt: { issuers: [{ issuer: 'https://idp.test', jwksUri, audiences: ['svc'] }] },
      identities: [{ name: rule, kind: 'service', match: { userAgent: 'probe' } }],
    })
  await writeFile(configFile, config('before'))
  const sidecar = await startSidecarFromFile(t, configFile)
  const admin = sidecar.adminUrl
  const workerPids = () =>
    execFileSync('pgrep', ['-P', String(sidecar.process.child.pid)], { encoding: 'utf8' })
      .split('\n')
      .filter(Boolean)
      .map(Number)

  hold = true
  const [victim] = workerPids()
  const from = sidecar.process.stderr().length
  process.kill(victim!, 'SIGKILL')
  await eventually(() => held !== undefined, { what: "the replacement's key fetch (it is starting)" })

  await replaceFile(configFile, config('after'))
  await sidecar.process.waitForLog((l) => l['event'] === 'config_reloaded' && l['worker'] === undefined, from)
  held!.end('{"keys":[]}')
  await eventually(
    async () => {
      const r = await fetch(`${admin}/readyz`)
      return r.status === 200 && ((await r.json()) as { workers: { ready: number } }).workers.ready === 2
    },
    { what: 'the replacement worker to serve' },
  )

  const sent = 8
  for (let i = 0; i < sent; i++) t.equal(await get(`${sidecar.proxyUrl}/after-reload/${i}`, 'probe'), 200)
  const lines = await eventually(
    () => {
      const all = readFileSync(auditFile, 'utf8')
        .split('\n')
        .filter((l) => l.includes('"path":"/after-reload/'))
      return all.length === sent ? all : undefined
    },
    { what: 'the audit lines of the requests' },
  )
  const identities = lines.map((l) => JSON.parse(l).identity as string)
  t.same(new Set(identities), new Set(['ua:after']), `every worker serves the reloaded rules: ${identities}`)
  const m = await (await fetch(`${admin}/metrics`)).text()
  t.notMatch(m, /nhi_worker_requests_total\{[^}]*\} 0\n/, 'both workers served some of them')
})
