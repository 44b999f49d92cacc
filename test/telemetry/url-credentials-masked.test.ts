// URLs in the config may carry credentials (userinfo, a token in the query). Wherever the proxy names such
// a URL outside /config — log lines, metric labels on the unauthenticated /metrics — it masks them as /config
// does: the OTLP collector in the otlp_export line, and a signed-agent key directory, whose URL names its key
// set in the nhi_jwks_* labels and the jwks_refresh_failed line.
import t from 'tap'
import { stringify } from 'yaml'
import { startBin } from '../helpers/bin.ts'
import { eventually } from '../helpers/eventually.ts'
import { scrapeUntil } from '../helpers/metrics.ts'
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

t.test('a signed-agent key directory: its URL masked in the nhi_jwks_* labels and the log', async (t) => {
  // nothing listens on port 1: the fetch fails, which is when the log line names the key set
  const url = 'http://agent:s3cretDIR@127.0.0.1:1/.well-known/http-message-signatures-directory?token=dsecret'
  const sidecar = await startBin(t, { signedAgents: { directories: [{ url, name: 'agent.example' }] } })
  const samples = await scrapeUntil(
    sidecar.adminUrl,
    (s) => s.some((x) => x.name === 'nhi_jwks_keys' && x.labels['issuer']?.includes('127.0.0.1:1') === true),
    'the directory key set in /metrics',
  )
  const label = samples.find((x) => x.name === 'nhi_jwks_keys')?.labels['issuer']
  t.equal(
    label,
    'http://redacted@127.0.0.1:1/.well-known/http-message-signatures-directory?token=redacted',
    'named as /config names it',
  )
  const text = await (await fetch(`${sidecar.adminUrl}/metrics`)).text()
  t.notMatch(text, /s3cretDIR|dsecret/, 'no credential in /metrics')
  await eventually(() => sidecar.logs().some((l) => l['event'] === 'jwks_refresh_failed'), {
    timeoutMs: 10_000,
    what: 'the jwks_refresh_failed line',
  })
  t.notMatch(sidecar.stderr(), /s3cretDIR|dsecret/, 'no credential in the log')
})
