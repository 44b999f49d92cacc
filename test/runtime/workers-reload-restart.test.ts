// `workers: 2`: what the primary tells the workers while a replacement worker is still starting must reach
// it too. A reload: the primary hands each new worker the config of the moment it asks, and a reload asks
// only the workers that already serve, so a worker that asked before the reload and served after it kept the
// old config. A SIGTERM: a replacement that was not serving yet missed the drain and served on until the
// primary killed it at the drain deadline.
import { writeFile } from 'node:fs/promises'
import { createServer, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { stringify } from 'yaml'
import { eventually } from '../helpers/eventually.ts'
import { childPids, probeWorkers } from '../helpers/pod.ts'
import { replaceFile, scratchDir } from '../helpers/scratch.ts'
import { startSidecarFromFile, startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

/** the slots of the workers that logged their drain */
const drainedWorkers = (log: string) =>
  log
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((l) => l['event'] === 'draining' && l['worker'] !== undefined)
    .map((l) => String(l['worker']))
    .sort()

/**
 * A key server that can hold one fetch: a starting worker waits for its issuers' keys, which keeps a
 * replacement between "given its config" and "serving" for as long as the test needs.
 */
async function holdingKeyServer(t: Test) {
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
  return {
    uri: `http://127.0.0.1:${(jwks.address() as AddressInfo).port}/jwks.json`,
    hold: () => {
      hold = true
    },
    held: () => held !== undefined,
    release: () => held?.end('{"keys":[]}'),
  }
}

t.test('a reload while a worker is being replaced reaches the replacement', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const keys = await holdingKeyServer(t)
  const jwksUri = keys.uri

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

  keys.hold()
  const [victim] = childPids(sidecar.process.child.pid!)
  const from = sidecar.process.stderr().length
  process.kill(victim!, 'SIGKILL')
  await eventually(keys.held, { what: "the replacement's key fetch (it is starting)" })

  await replaceFile(configFile, config('after'))
  await sidecar.process.waitForLog((l) => l['event'] === 'config_reloaded' && l['worker'] === undefined, from)
  keys.release()
  await eventually(
    async () => {
      const r = await fetch(`${admin}/readyz`)
      return r.status === 200 && ((await r.json()) as { workers: { ready: number } }).workers.ready === 2
    },
    { what: 'the replacement worker to serve' },
  )

  const { statuses, identities } = await probeWorkers(sidecar.proxyUrl, auditFile, '/after-reload/', 8)
  t.same(new Set(statuses), new Set([200]), 'every request served')
  t.same(new Set(identities), new Set(['ua:after']), `every worker serves the reloaded rules: ${identities}`)
  const m = await (await fetch(`${admin}/metrics`)).text()
  t.notMatch(m, /nhi_worker_requests_total\{[^}]*\} 0\n/, 'both workers served some of them')
})

t.test('a SIGTERM while a worker is being replaced drains the replacement too', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const keys = await holdingKeyServer(t)
  const dir = await scratchDir('workers-drain-restart')
  const configFile = join(dir, 'config.yaml')
  // a drain deadline far beyond the bound below: a worker that missed the drain is killed only then
  const drainMs = 60_000
  await writeFile(
    configFile,
    stringify({
      listen: { http: '127.0.0.1:0' },
      admin: '127.0.0.1:0',
      upstream: upstream.url,
      workers: 2,
      audit: { output: 'off' },
      timeouts: { drainDelay: '0s', drain: `${drainMs / 1000}s` },
      jwt: { issuers: [{ issuer: 'https://idp.test', jwksUri: keys.uri, audiences: ['svc'] }] },
    }),
  )
  const sidecar = await startSidecarFromFile(t, configFile)
  const cli = sidecar.process

  keys.hold()
  const [victim] = childPids(cli.child.pid!)
  const fromKill = cli.stderr().length
  process.kill(victim!, 'SIGKILL')
  const exited = await cli.waitForLog((l) => l['event'] === 'worker_exited', fromKill)
  const slot = String(exited['worker'])
  await eventually(keys.held, { what: "the replacement's key fetch (it is starting)" })

  const fromTerm = cli.stderr().length
  cli.kill('SIGTERM')
  const draining = await cli.waitForLog(
    (l) => l['event'] === 'draining' && l['worker'] === undefined,
    fromTerm,
  )
  t.equal(draining['workers'], 1, 'the SIGTERM came while the replacement was not serving yet')
  keys.release()

  const boundMs = 20_000
  await eventually(() => cli.child.exitCode !== null || cli.child.signalCode !== null, {
    timeoutMs: boundMs,
    what: `the pod to exit within ${boundMs} ms of SIGTERM (the drain deadline is ${drainMs} ms)`,
  })
  t.equal(await cli.exited, 0, 'the pod exits 0')
  t.same(
    drainedWorkers(cli.stderr().slice(fromTerm)),
    ['1', '2'],
    `both workers drained, the replacement (worker ${slot}) too`,
  )
})

t.test('a SIGTERM as soon as a replacement worker is forked drains it too', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const drainMs = 60_000
  const sidecar = await startTestSidecar(t, {
    upstream: upstream.url,
    workers: 2,
    timeouts: { drainDelay: '0s', drain: `${drainMs / 1000}s` },
  })
  const cli = sidecar.process
  const [victim] = childPids(cli.child.pid!)
  const fromKill = cli.stderr().length
  process.kill(victim!, 'SIGKILL')
  // most often before the replacement has even asked for its config
  const forked = await cli.waitForLog((l) => l['event'] === 'worker_restarted', fromKill)
  const fromTerm = cli.stderr().length
  cli.kill('SIGTERM')

  const boundMs = 20_000
  await eventually(() => cli.child.exitCode !== null || cli.child.signalCode !== null, {
    timeoutMs: boundMs,
    what: `the pod to exit within ${boundMs} ms of SIGTERM (the drain deadline is ${drainMs} ms)`,
  })
  t.equal(await cli.exited, 0, 'the pod exits 0')
  t.same(drainedWorkers(cli.stderr().slice(fromTerm)), ['1', '2'], 'both workers drained')
  t.throws(() => process.kill(Number(forked['pid']), 0), 'the replacement is gone')
})
