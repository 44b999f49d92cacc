// The otlp_export log line names the collector with its credentials masked (userinfo, query), as /config
// does: at start and when a reload turns export on.
import t from 'tap'
import { stringify } from 'yaml'
import { startBin } from '../helpers/bin.ts'
import { eventually } from '../helpers/eventually.ts'
import { replaceFile } from '../helpers/scratch.ts'

const ENDPOINT = 'http://otel:s3cretOTLP@127.0.0.1:9/?token=qsecret'

t.test('otlp_export at start: the collector URL is masked', async (t) => {
  const sidecar = await startBin(t, { otlp: { endpoint: ENDPOINT } })
  const line = sidecar.logs().find((l) => l['event'] === 'otlp_export')
  t.ok(line, 'export announced')
  t.notMatch(sidecar.stderr(), /s3cretOTLP|qsecret/, 'no credential in the log')
})

t.test('otlp_export after a reload turns export on: masked too', async (t) => {
  const sidecar = await startBin(t, {})
  const base = { listen: { http: '127.0.0.1:0' }, admin: '127.0.0.1:0', audit: { output: 'off' } }
  await replaceFile(sidecar.configPath, stringify({ ...base, otlp: { endpoint: ENDPOINT } }))
  await eventually(() => sidecar.logs().some((l) => l['event'] === 'otlp_export'), {
    timeoutMs: 5000,
    what: 'the otlp_export line',
  })
  t.notMatch(sidecar.stderr(), /s3cretOTLP|qsecret/, 'no credential in the log')
})
