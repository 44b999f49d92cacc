// "No raw credentials in any output": requests carry unique credentials (a valid JWT, a forged JWT, an API
// key, a cookie) and the TLS private key sits in the config directory; then every output the sidecar has —
// audit file, operational logs, /metrics (text and OpenMetrics), /config, /audit, /events, /identities,
// /ui, and the 401/403 bodies — is searched for a unique piece of each. None may appear.
import { createHash, randomBytes } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { eventually } from '../helpers/eventually.ts'
import { createSigningKey, mintToken, startUpstreamAndJwks } from '../helpers/jwks.ts'
import { createCA, issueCert } from '../helpers/pki.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

const ISSUER = 'https://idp.secrets.test'

t.test('credentials never appear in any output', async (t) => {
  const { upstream, key, jwks } = await startUpstreamAndJwks(t)
  const ca = await createCA('secrets-ca')
  const server = await issueCert(ca, { cn: 'localhost', dnsSans: ['localhost'], server: true })

  const apiKey = `ak_${randomBytes(18).toString('hex')}`
  const cookie = `sess_${randomBytes(18).toString('hex')}`
  const auditFile = join(ca.dir, 'audit.jsonl')
  // the most talkative log level the sidecar has: whatever it logs, credentials must not be in it
  const sidecar = await startTestSidecar(
    t,
    {
      service: 'orders',
      listen: {
        http: '127.0.0.1:0',
        https: { address: '127.0.0.1:0', cert: server.certFile, key: server.keyFile, clientCA: ca.certFile },
      },
      upstream: upstream.url,
      audit: { output: auditFile, sample: 1 },
      jwt: {
        issuers: [{ issuer: ISSUER, jwksUri: jwks.jwksUri, audiences: ['orders'] }],
        onInvalid: 'reject',
      },
      apiKeys: {
        keys: [{ name: 'export', kind: 'job', sha256: createHash('sha256').update(apiKey).digest('hex') }],
      },
      policy: { mode: 'enforce', rules: [{ route: '/admin/**', allow: [{ kind: 'human' }] }] },
    },
    { env: { NHI_LOG_LEVEL: 'trace' } },
  )
  const proxy = sidecar.proxyUrl
  const admin = sidecar.adminUrl

  // live events, read while the traffic flows
  const sse = new AbortController()
  let events = ''
  let subscribed = false
  const eventsDone = (async () => {
    try {
      const res = await fetch(`${admin}/events`, { signal: sse.signal })
      subscribed = true
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>)
        events += Buffer.from(chunk).toString()
    } catch {
      // aborted
    }
  })()
  await eventually(() => subscribed, { what: 'the /events subscription' })

  const valid = await mintToken(
    key,
    { azp: 'billing' },
    { issuer: ISSUER, audience: 'orders', subject: 'billing' },
  )
  const forged = await mintToken(
    await createSigningKey('k1'),
    { azp: 'x' },
    { issuer: ISSUER, audience: 'orders' },
  )
  const bodies: string[] = []
  const send = async (path: string, headers: Record<string, string>, expected: number) => {
    const res = await request(`${proxy}${path}`, { headers })
    const body = await res.body.text()
    t.equal(res.statusCode, expected, `${path} → ${expected}`)
    if (res.statusCode !== 200) bodies.push(body, JSON.stringify(res.headers))
  }
  await send('/echo', { authorization: `Bearer ${valid}`, cookie: `session=${cookie}` }, 200)
  await send('/echo', { authorization: `Bearer ${forged}`, cookie: `session=${cookie}` }, 401)
  await send('/echo', { 'x-api-key': apiKey, cookie: `session=${cookie}` }, 200)
  await send('/admin/export', { 'x-api-key': apiKey, cookie: `session=${cookie}` }, 403)
  await send('/status/500', { 'x-api-key': apiKey }, 500)
  await send('/echo', { 'x-api-key': `${apiKey}-wrong` }, 200)

  // one live event per request sent above
  await eventually(() => (events.match(/^data: /gm) ?? []).length >= 6, { what: 'six live events' })
  sse.abort()
  await eventsDone

  const get = async (path: string, accept?: string) => {
    const res = await request(`${admin}${path}`, accept ? { headers: { accept } } : {})
    return `${res.statusCode} ${await res.body.text()}`
  }
  const outputs: Record<string, string> = {
    '/metrics': await get('/metrics'),
    '/metrics (OpenMetrics)': await get('/metrics', 'application/openmetrics-text; version=1.0.0'),
    '/config': await get('/config'),
    '/audit': await get('/audit?limit=1000'),
    '/identities': await get('/identities'),
    '/ui': await get('/ui'),
    '/events': events,
    'error bodies': bodies.join('\n'),
  }
  await sidecar.close()
  outputs['audit file'] = await readFile(auditFile, 'utf8').catch(() => '')
  outputs['operational logs'] = sidecar.process.stderr()
  outputs['stdout'] = sidecar.process.stdout()

  t.match(outputs['audit file'], /billing/, 'the audit file names the identity (the search is not vacuous)')
  t.match(outputs['/metrics'], /nhi_requests_total/, 'metrics were served')
  t.match(outputs['/audit'], /billing/, '/audit has the events')
  t.ok(events.length > 0, 'live events were received')
  t.ok(bodies.length >= 6, 'error bodies were captured')
  t.match(outputs['operational logs'], /"event":"started"/, 'the operational log was captured')

  const keyPem = await readFile(server.keyFile, 'utf8')
  const keyLine = keyPem.split('\n').find((l) => l.length > 40 && !l.startsWith('-----'))
  t.ok(keyLine, 'a private key line to search for')
  const secrets: Record<string, string | undefined> = {
    'valid JWT signature': valid.split('.')[2],
    'forged JWT signature': forged.split('.')[2],
    'api key': apiKey,
    'api key body': apiKey.slice(3, 27),
    'wrong api key': `${apiKey}-wrong`,
    cookie,
    'private key': keyLine,
  }
  for (const [where, text] of Object.entries(outputs)) {
    for (const [what, secret] of Object.entries(secrets)) {
      if (secret) t.notOk(text.includes(secret), `${what} not in ${where}`)
    }
  }
})
