// `workers: 2` while the IdP is down: a worker that starts then (the primary replacing one that crashed)
// verifies tokens with the last good keys of the pod, as its sibling does. It fetched the keys itself and
// nothing else: its fetch failed, and every token on it was attributed unverified (keys_unavailable) while
// the other worker verified the same tokens, until the IdP came back.
import { writeFile } from 'node:fs/promises'
import t, { type Test } from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { mintToken, startUpstreamAndJwks } from '../helpers/jwks.ts'
import { metricValue, scrape, scrapeUntil } from '../helpers/metrics.ts'
import { childPids, probeWorkers, twoWorkerPodFiles } from '../helpers/pod.ts'
import { startSidecarFromFile } from '../helpers/sidecar.ts'

const ISSUER = 'https://idp.workers-outage.test'
/** requests per probe, each on a fresh connection: the workers take them in turn */
const PROBES = 8

t.test('a worker started during an IdP outage verifies with the keys of the pod', async (t) => {
  const { upstream, key, jwks } = await startUpstreamAndJwks(t)
  const { auditFile, configFile, config } = await twoWorkerPodFiles('workers-jwks-outage', upstream.url)
  await writeFile(
    configFile,
    config({ jwt: { issuers: [{ issuer: ISSUER, jwksUri: jwks.jwksUri, audiences: ['svc'] }] } }),
  )
  const sidecar = await startSidecarFromFile(t, configFile)
  const cli = sidecar.process
  const admin = sidecar.adminUrl

  /** PROBES requests with a token never seen before, so no worker answers from its verification cache */
  const everyRequestVerified = async (t: Test, prefix: string) => {
    const token = await mintToken(key, { azp: prefix }, { issuer: ISSUER, audience: 'svc', subject: 'svc-a' })
    const { statuses, records } = await probeWorkers(sidecar.proxyUrl, auditFile, prefix, PROBES, {
      authorization: `Bearer ${token}`,
    })
    t.same(new Set(statuses), new Set([200]), 'every request served')
    t.same(
      records.map((r) => ({ source: r['source'], verified: r['verified'], failures: r['failures'] })),
      Array.from({ length: PROBES }, () => ({ source: 'jwt', verified: true, failures: [] })),
      'every request verified',
    )
    const seen = upstream.received.filter((r) => r.url.startsWith(prefix))
    t.same(
      seen.map((r) => r.headers['x-nhi-verified']),
      Array.from({ length: PROBES }, () => 'true'),
      'the upstream got x-nhi-verified: true on every request',
    )
  }

  await t.test('with the IdP up, both workers verify', (t) => everyRequestVerified(t, '/up/'))

  await t.test('the IdP down, a replaced worker verifies with the keys of the pod', async (t) => {
    jwks.fault = 503
    const hits = jwks.hits
    const [victim] = childPids(cli.child.pid!)
    const from = cli.stderr().length
    process.kill(victim!, 'SIGKILL')
    const exited = await cli.waitForLog((l) => l['event'] === 'worker_exited', from)
    const slot = String(exited['worker'])
    await cli.waitForLog((l) => l['event'] === 'worker_restarted', from)
    // the replacement's own fetch fails: the keys it serves with can only be the ones it was handed
    const failed = await cli.waitForLog(
      (l) => l['event'] === 'jwks_refresh_failed' && String(l['worker']) === slot,
      from,
    )
    t.ok(jwks.hits > hits, 'the replacement asked the IdP, which answered 503')
    t.equal(failed['keys'], 1, 'its fetch failed, and it still has the key the pod had')
    await eventually(
      async () => {
        const r = await fetch(`${admin}/readyz`)
        return r.status === 200 && ((await r.json()) as { workers: { ready: number } }).workers.ready === 2
      },
      { what: 'the replacement worker to serve' },
    )
    const readyz = (await (await fetch(`${admin}/readyz`)).json()) as { checks: Record<string, boolean> }
    t.equal(readyz.checks['jwks'], true, "/readyz: every worker has the issuer's keys")

    // the replacement's count starts from 0: what it counts from here on is probes it served
    const before = await scrape(admin)
    const total = metricValue(before, 'nhi_worker_requests_total')
    const replacement = metricValue(before, 'nhi_worker_requests_total', { worker: slot })
    await everyRequestVerified(t, '/down/')
    const after = await scrapeUntil(
      admin,
      (s) => metricValue(s, 'nhi_worker_requests_total') >= total + PROBES,
      'the probes counted',
    )
    t.ok(
      metricValue(after, 'nhi_worker_requests_total', { worker: slot }) > replacement,
      `the replacement (worker ${slot}) served some of them`,
    )
  })
})
