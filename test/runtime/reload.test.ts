// Hot reload and signals: a valid change applies without dropping in-flight requests, an invalid one is
// rejected and counted while the last good config keeps serving, ConfigMap `..data` swaps are seen,
// SIGHUP reloads, SIGTERM drains and exits 0.
import { mkdir, rename, symlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { createServerPki, mtlsListen } from '../helpers/pki.ts'
import { replaceFile, scratchDir } from '../helpers/scratch.ts'
import { spawnCli, startSidecarFromFile, startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

// drainDelay 0s: on SIGTERM the drain goes straight to the in-flight requests instead of first answering
// new ones for the production 5 s at every stop (the delay itself is tested in drain.test.ts)
function configText(upstream: string, namePrefix: string, extra = ''): string {
  return `service: reload-test
listen: { http: 127.0.0.1:0 }
admin: 127.0.0.1:0
upstream: ${upstream}
audit: { output: off }
timeouts: { drainDelay: 0s }
identities:
  - name: "${namePrefix}-{team}"
    kind: service
    match: { header: { x-team: "{team}" } }
${extra}`
}

async function identityOf(proxy: string, path = '/echo'): Promise<string> {
  const res = await fetch(`${proxy}${path}`, { headers: { 'x-team': 'blue' } })
  const body = (await res.json()) as { headers: Record<string, string> }
  return body.headers['x-nhi-identity'] ?? ''
}

const until = (cond: () => Promise<boolean>): Promise<boolean> =>
  eventually(cond, { timeoutMs: 8000, intervalMs: 50 })

t.test('file change reloads without dropping in-flight requests; broken file keeps last good', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const dir = await scratchDir('reload')
  const file = join(dir, 'config.yaml')
  await writeFile(file, configText(upstream.url, 'team'))
  const sidecar = await startSidecarFromFile(t, file)
  const proxy = sidecar.proxyUrl
  const admin = sidecar.adminUrl

  t.equal(await identityOf(proxy), 'ua:team-blue')
  const loadedAt = metricValue(await scrape(admin), 'nhi_config_last_reload_success_timestamp_seconds')
  t.ok(
    loadedAt > Date.now() / 1000 - 60,
    'the config the sidecar started with is its last successful load, before any reload',
  )
  t.equal(
    metricValue(await scrape(admin), 'nhi_config_reloads_total', { result: 'success' }),
    0,
    'not a reload',
  )

  const inFlight = fetch(`${proxy}/slow/1200`, { headers: { 'x-team': 'blue' } })
  await eventually(() => upstream.received.some((r) => r.url === '/slow/1200'), {
    what: 'the request in flight',
  })
  await replaceFile(file, configText(upstream.url, 'squad'))
  t.ok(
    await until(
      async () => metricValue(await scrape(admin), 'nhi_config_reloads_total', { result: 'success' }) === 1,
    ),
    'reload counted as success',
  )
  t.equal(await identityOf(proxy), 'ua:squad-blue', 'new rules apply to new requests')
  const slow = await inFlight
  t.equal(slow.status, 200, 'the in-flight request finished')
  t.equal(await slow.text(), 'slow ok')

  await replaceFile(file, configText(upstream.url, 'broken', 'metrics: { maxIdentitis: 5 }\n'))
  t.ok(
    await until(
      async () => metricValue(await scrape(admin), 'nhi_config_reloads_total', { result: 'failure' }) >= 1,
    ),
    'broken reload counted as failure',
  )
  t.equal(await identityOf(proxy), 'ua:squad-blue', 'last good config keeps serving')
  t.ok(
    metricValue(await scrape(admin), 'nhi_config_last_reload_success_timestamp_seconds') >= loadedAt,
    'the good reload moved the timestamp, the broken one did not take it back',
  )
})

t.test('Kubernetes ConfigMap ..data symlink swap is picked up', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const dir = await scratchDir('cm')
  // the kubelet's layout: config.yaml → ..data/config.yaml, ..data → ..2026_v1 (swapped atomically)
  await mkdir(join(dir, '..v1'))
  await writeFile(join(dir, '..v1', 'config.yaml'), configText(upstream.url, 'v1'))
  await symlink('..v1', join(dir, '..data'))
  await symlink('..data/config.yaml', join(dir, 'config.yaml'))
  const sidecar = await startSidecarFromFile(t, join(dir, 'config.yaml'))
  const proxy = sidecar.proxyUrl
  t.equal(await identityOf(proxy), 'ua:v1-blue')

  await mkdir(join(dir, '..v2'))
  await writeFile(join(dir, '..v2', 'config.yaml'), configText(upstream.url, 'v2'))
  await symlink('..v2', join(dir, '..data_tmp'))
  await rename(join(dir, '..data_tmp'), join(dir, '..data'))
  t.ok(await until(async () => (await identityOf(proxy)) === 'ua:v2-blue'), 'new ConfigMap version applied')
})

t.test('SIGHUP reloads; SIGTERM drains in-flight requests and exits 0', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const dir = await scratchDir('sig')
  const file = join(dir, 'config.yaml')
  await writeFile(file, configText(upstream.url, 'team'))
  const cli = spawnCli(['run', '-c', file])
  t.teardown(() => cli.kill('SIGKILL'))
  const started = await cli.waitFor(/"listen":"127\.0\.0\.1:(\d+)".*"metrics":"(http:[^"]+)\/metrics"/)
  const proxy = `http://127.0.0.1:${started[1]}`
  const admin = started[2]!
  t.equal(await identityOf(proxy), 'ua:team-blue')

  cli.child.kill('SIGHUP')
  t.ok(
    await until(
      async () => metricValue(await scrape(admin), 'nhi_config_reloads_total', { result: 'success' }) === 1,
    ),
    'SIGHUP reloaded the config',
  )

  const inFlight = fetch(`${proxy}/slow/800`)
  await eventually(() => upstream.received.some((r) => r.url === '/slow/800'), {
    what: 'the request in flight',
  })
  cli.child.kill('SIGTERM')
  const res = await inFlight
  t.equal(res.status, 200, 'in-flight request completed during drain')
  t.equal(await res.text(), 'slow ok')
  t.equal(await cli.exited, 0, 'exit code 0 after drain')
  await t.rejects(fetch(`${proxy}/echo`), 'new connections are refused after shutdown')
})

t.test('the test sidecar reload(): a rewritten config applies, a broken one is refused', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const rules = (prefix: string) => ({
    upstream: upstream.url,
    identities: [{ name: `${prefix}-{team}`, kind: 'service', match: { header: { 'x-team': '{team}' } } }],
  })
  const sidecar = await startTestSidecar(t, rules('first'))
  const proxy = sidecar.proxyUrl
  t.equal(await identityOf(proxy), 'ua:first-blue', 'a header-captured name is unverified: a ua: name')
  t.equal(await sidecar.reload(rules('second')), true, 'a valid config reloads')
  t.equal(await identityOf(proxy), 'ua:second-blue', 'and applies to the next request')
  t.equal(
    await sidecar.reload({ ...rules('third'), metrics: { maxIdentitis: 5 } }),
    false,
    'a typo is refused',
  )
  t.equal(await identityOf(proxy), 'ua:second-blue', 'the last good config keeps serving')
  t.equal(await sidecar.reload(), false, 'SIGHUP re-reads the same broken file')
  t.equal(await sidecar.close(), 0, 'SIGTERM exits 0')
})

t.test('config warnings are logged at start, as on a reload', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const dir = await scratchDir('reload-warn')
  const file = join(dir, 'config.yaml')
  // policy mode observe without rules: `check` warns "everything is allowed"
  await writeFile(file, configText(upstream.url, 'team', 'policy: { mode: observe }\n'))
  const sidecar = await startSidecarFromFile(t, file)
  const warned = (from = 0) =>
    sidecar.process.waitForLog(
      (l) => l['level'] === 40 && typeof l['msg'] === 'string' && l['msg'].includes('no policy rules'),
      from,
    )
  const atStart = await warned()
  t.match(
    atStart['msg'],
    /config\.yaml:\d+:\d+ warning: policy mode is "observe" but there are no policy rules/,
  )
  const before = sidecar.process.stderr().length
  t.equal(await sidecar.reload(), true)
  t.ok(await warned(before), 'and again on a reload')
})

// A reload either applies whole or changes nothing: a config that fails late (a secret file that cannot be
// read) used to have switched the admin token already. And settings read at start only keep their running
// values, where /config (and the drain at shutdown) showed and used the reloaded ones.
t.test('a failed reload changes nothing; start-only settings keep their running values', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const dir = await scratchDir('reload-atomic')
  const tokenFile = join(dir, 'admin-token')
  await writeFile(tokenFile, 'first-admin-token\n')
  const missing = join(dir, 'missing')
  const base = { upstream: upstream.url, adminAccess: { tokenFile } }
  const sidecar = await startTestSidecar(t, base)
  const logs = (from: number) => sidecar.process.stderr().slice(from)

  let from = sidecar.process.stderr().length
  t.equal(
    await sidecar.reload({
      ...base,
      adminAccess: { tokenFile: missing },
      apiKeys: { fingerprintKeyFile: missing },
    }),
    false,
    'a config whose fingerprint key file cannot be read fails to reload',
  )
  t.notMatch(logs(from), /admin_token_unreadable/, 'and its admin token file was never read')

  from = sidecar.process.stderr().length
  t.equal(
    await sidecar.reload({
      ...base,
      adminAccess: { tokenFile: missing },
      timeouts: { upstream: '1s' },
      limits: { maxHeaderBytes: 100 },
    }),
    true,
    'a config changing start-only settings reloads',
  )
  t.match(logs(from), /admin_token_unreadable/, 'its admin token file is read once it applies')
  const warning = logs(from)
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .find((l) => l['event'] === 'restart_required')
  t.same(warning?.['settings'], ['timeouts', 'limits'], 'the start-only settings it kept are named')
  const shown = (await (await fetch(`${sidecar.adminUrl}/config`)).json()) as {
    limits: { maxHeaderBytes: number }
    timeouts: { upstream: number }
    adminAccess: { tokenFile?: string }
  }
  t.equal(shown.limits.maxHeaderBytes, 16_384, '/config shows the running limit')
  t.equal(shown.timeouts.upstream, 30_000, 'and the running upstream timeout')
  t.equal(shown.adminAccess.tokenFile, missing, 'and the reloaded admin token file')
  const res = await fetch(`${sidecar.proxyUrl}/echo`, { headers: { 'x-long': 'v'.repeat(500) } })
  t.equal(res.status, 200, 'a 500-byte header is served: the running limit is the one in effect')
  await res.arrayBuffer()
})

// A reload keeps the running values of start-only settings, and so applied a config naming a TLS key file
// that is not there (or a fingerprint key too short to use, failed without a position) after `check` had
// refused it; the next start then stopped on it. A reload refuses what `check` refuses, at FILE:LINE:COL.
t.test(
  'a reload refuses the files check refuses, start-only settings included, at their position',
  async (t) => {
    const upstream = await startUpstream()
    t.teardown(() => upstream.close())
    const { ca, server } = await createServerPki()
    const dir = await scratchDir('reload-files')
    const shortKey = join(dir, 'short.key')
    await writeFile(shortKey, 'short\n')
    const base = { upstream: upstream.url, listen: mtlsListen(server, ca) }
    const sidecar = await startTestSidecar(t, base)
    const refusedAt = async (config: Record<string, unknown>, problem: RegExp) => {
      const from = sidecar.process.stderr().length
      t.equal(await sidecar.reload(config), false, `refused: ${problem}`)
      const failed = await sidecar.process.waitForLog(
        (l) => l['event'] === 'config_reload_failed' && problem.test(String(l['msg'])),
        from,
      )
      t.match(failed['msg'], /config\.yaml:\d+:\d+ /, 'at the position of the setting')
      t.notMatch(sidecar.process.stderr().slice(from), /"event":"config_reloaded"/)
    }
    const missingKey = join(dir, 'missing.key')
    await refusedAt(
      { ...base, listen: { ...base.listen, https: { ...base.listen.https, key: missingKey } } },
      new RegExp(`key "${missingKey}": file not found`),
    )
    await refusedAt(
      { ...base, apiKeys: { fingerprintKeyFile: shortKey } },
      /fingerprintKeyFile: .*short\.key holds 5 bytes; a fingerprint key needs at least 16/,
    )
    t.equal(await sidecar.reload(base), true, 'the files it names being there, it applies')
  },
)
