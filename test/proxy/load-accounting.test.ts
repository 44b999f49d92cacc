// "Nothing lost": full-speed mixed traffic (JWTs, API keys, user agents, anonymous) with injected upstream
// faults. Every request sent must be answered as expected and counted exactly once in nhi_requests_total,
// per status class. The volume is a count, not a duration, so that a slow machine sends as many requests as a
// fast one (it only takes longer): 640 by default, LOAD_REQUESTS=20000 for a long version.
import { createHash } from 'node:crypto'
import pino from 'pino'
import t from 'tap'
import { Agent, request } from 'undici'
import { eventually } from '../helpers/eventually.ts'
import { mintToken, startUpstreamAndJwks } from '../helpers/jwks.ts'
import { metricValue, parseMetrics } from '../helpers/metrics.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

const _silent = pino({ level: 'silent' })
const ISSUER = 'https://idp.load.test'
const REQUESTS = Number(process.env['LOAD_REQUESTS'] ?? 640)
const CONCURRENCY = 32

t.test('every request sent is counted once, per status class, under load with faults', async (t) => {
  const { upstream, key, jwks } = await startUpstreamAndJwks(t)
  const apiKeys = ['load-key-alpha-7f3a', 'load-key-beta-91c2']
  const sidecar = await startTestSidecar(t, {
    service: 'load',
    upstream: upstream.url,
    // roomy: an ordinary /echo must never reach it on a loaded machine, only the injected hang
    timeouts: { upstream: '2s' },
    jwt: { issuers: [{ issuer: ISSUER, jwksUri: jwks.jwksUri, audiences: ['load'] }] },
    apiKeys: {
      keys: apiKeys.map((k, i) => ({
        name: `key-${i}`,
        kind: 'job' as const,
        sha256: createHash('sha256').update(k).digest('hex'),
      })),
    },
    identities: [
      { name: 'svc/{c}', kind: 'service', match: { jwt: { issuer: ISSUER, claims: { azp: '{c}' } } } },
    ],
    metrics: { routes: ['/echo', '/slow/:ms', '/status/:code'] },
  })
  const proxy = sidecar.proxyUrl
  const admin = sidecar.adminUrl

  const tokens = await Promise.all(
    ['billing', 'shipping', 'search'].map((c) =>
      mintToken(key, { azp: c }, { issuer: ISSUER, audience: 'load' }),
    ),
  )
  const credentials: Record<string, string>[] = [
    ...tokens.map((tk) => ({ authorization: `Bearer ${tk}` })),
    ...apiKeys.map((k) => ({ 'x-api-key': k })),
    { 'user-agent': 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36' },
    { 'user-agent': 'Mozilla/5.0 (compatible; GPTBot/1.2; +https://openai.com/gptbot)' },
    { 'user-agent': 'curl/8.5.0' },
    { authorization: 'Bearer not.a.jwt' },
    {},
  ]
  // path → the only status it may produce; faults: a hang past the upstream timeout, an upstream 503
  const paths: Array<[string, number]> = [
    ['/echo', 200],
    ['/echo', 200],
    ['/echo', 200],
    ['/echo', 200],
    ['/echo', 200],
    ['/echo', 200],
    ['/slow/5000', 504],
    ['/status/503', 503],
  ]

  const dispatcher = new Agent({ connections: CONCURRENCY, pipelining: 1 })
  t.teardown(() => dispatcher.close())
  const sentByClass = new Map<string, number>()
  const unexplained: string[] = []
  let sent = 0
  let i = 0
  const worker = async () => {
    while (i < REQUESTS) {
      const n = i++
      const [path, expected] = paths[n % paths.length]!
      const headers = credentials[n % credentials.length]!
      sent++
      try {
        const res = await request(`${proxy}${path}`, { headers, dispatcher })
        await res.body.dump()
        const cls = `${String(res.statusCode)[0]}xx`
        sentByClass.set(cls, (sentByClass.get(cls) ?? 0) + 1)
        if (res.statusCode !== expected && unexplained.length < 20)
          unexplained.push(`${path}: ${res.statusCode}`)
      } catch (err) {
        if (unexplained.length < 20) unexplained.push(`${path}: ${(err as Error).message}`)
      }
    }
  }
  await Promise.all(Array.from({ length: CONCURRENCY }, worker))
  t.same(unexplained, [], 'no unexplained errors')

  // recording happens after the response; give the last few a moment
  const counted = async () => parseMetrics(await (await fetch(`${admin}/metrics`)).text())
  const samples = await eventually(
    async () => {
      const s = await counted()
      return metricValue(s, 'nhi_requests_total') >= sent ? s : undefined
    },
    { timeoutMs: 3000, intervalMs: 100 },
  ).catch(counted)
  t.equal(metricValue(samples, 'nhi_requests_total'), sent, 'sum(nhi_requests_total) === requests sent')
  const countedByClass = new Map<string, number>()
  for (const s of samples) {
    if (s.name !== 'nhi_requests_total') continue
    const cls = `${(s.labels['code'] ?? '?')[0]}xx`
    countedByClass.set(cls, (countedByClass.get(cls) ?? 0) + s.value)
  }
  t.same(Object.fromEntries(countedByClass), Object.fromEntries(sentByClass), 'each status class matches')
  const timeouts = metricValue(samples, 'nhi_upstream_errors_total', { reason: 'timeout' })
  t.ok(timeouts > 0, 'injected hangs happened')
  t.equal(
    timeouts,
    metricValue(samples, 'nhi_requests_total', { code: '504' }),
    'every 504 is an upstream timeout',
  )
  t.ok(
    metricValue(samples, 'nhi_requests_total', { identity: 'svc/billing', verified: 'true' }) > 0,
    'JWT identities',
  )
  t.ok(metricValue(samples, 'nhi_requests_total', { source: 'apikey' }) > 0, 'API key identities')
  t.ok(metricValue(samples, 'nhi_requests_total', { kind: 'agent' }) > 0, 'AI agent identities')
})
