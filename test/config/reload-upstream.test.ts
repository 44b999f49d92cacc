// A reload whose `upstream` is a URL the proxy cannot use (credentials, a query, an unsupported scheme) is
// refused whole: logged as config_reload_failed at FILE:LINE:COL, counted as a failure, the password never
// logged, and the running config (as /config shows it) and its upstream keep serving.
import t from 'tap'
import { stringify } from 'yaml'
import { startBin } from '../helpers/bin.ts'
import { eventually } from '../helpers/eventually.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { replaceFile } from '../helpers/scratch.ts'
import { startUpstream } from '../helpers/upstream.ts'

for (const bad of ['http://ops:hunter2@127.0.0.1:1', 'ftp://127.0.0.1:1', 'http://127.0.0.1:1/?x=1']) {
  t.test(`reload to upstream ${bad}: refused, logged, counted, last good config kept`, async (t) => {
    const upstream = await startUpstream()
    t.teardown(() => upstream.close())
    const sidecar = await startBin(t, { upstream: upstream.url, timeouts: { drainDelay: '0s' } })
    const before = (await (await fetch(`${sidecar.adminUrl}/config`)).json()) as Record<string, unknown>
    const base = { listen: { http: '127.0.0.1:0' }, admin: '127.0.0.1:0', audit: { output: 'off' } }
    await replaceFile(sidecar.configPath, stringify({ ...base, upstream: bad, service: 'after-bad-reload' }))
    await eventually(
      async () =>
        metricValue(await scrape(sidecar.adminUrl), 'nhi_config_reloads_total', { result: 'failure' }) >= 1,
      { what: 'the refused reload counted in nhi_config_reloads_total{result="failure"}' },
    )
    // the log line travels a pipe, the counter an HTTP scrape: either can arrive first
    await eventually(() => sidecar.logs().some((l) => l['event'] === 'config_reload_failed'), {
      what: 'a config_reload_failed log line',
    })
    const line = sidecar.logs().find((l) => l['event'] === 'config_reload_failed')
    t.ok(line, 'a config_reload_failed line says why')
    t.match(String(line?.['msg'] ?? ''), /config\.yaml:\d+:\d+ .*upstream/, 'at FILE:LINE:COL')
    const effective = (await (await fetch(`${sidecar.adminUrl}/config`)).json()) as Record<string, unknown>
    t.equal(effective['service'], before['service'], '/config still shows the config that serves')
    t.notMatch(sidecar.stderr(), /hunter2/, 'no password from the URL in the log')
    const res = await fetch(`${sidecar.proxyUrl}/echo`)
    t.equal(res.status, 200, 'the old upstream keeps serving')
  })
}
