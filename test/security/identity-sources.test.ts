// /identities never merges two different sources into one entry. Before, the identity table was keyed by
// name only: an api key named `payments` and a JWT caller a rule also names `payments` shared one entry
// (one request count, one first/last seen, one credential expiry, whichever source came last), and the
// metrics rendered one set of series for both.
import { createHash } from 'node:crypto'
import t from 'tap'
import { request } from 'undici'
import { mintToken, startUpstreamAndJwks } from '../helpers/jwks.ts'
import { metricValue, parseMetrics } from '../helpers/metrics.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

const ISSUER = 'https://idp.sources.test.example'
const KEY = 'the-payments-api-key-for-this-test'

interface Row {
  name: string
  source: string
  verified: boolean
  requests: number
  credentialExpiry?: string
  job?: { consecutiveFailures: number }
}

t.test('an api key and a JWT caller with the same name are two identities', async (t) => {
  const { upstream, key, jwks } = await startUpstreamAndJwks(t)
  const sidecar = await startTestSidecar(t, {
    service: 'ledger',
    upstream: upstream.url,
    apiKeys: {
      header: 'x-api-key',
      keys: [{ name: 'payments', kind: 'job', sha256: createHash('sha256').update(KEY).digest('hex') }],
    },
    jwt: { issuers: [{ issuer: ISSUER, jwksUri: jwks.jwksUri, audiences: ['ledger'] }] },
    identities: [{ name: 'payments', kind: 'job', match: { jwt: { issuer: ISSUER } } }],
    cost: { perRequest: 0.001 },
  })
  const proxy = sidecar.proxyUrl
  const admin = sidecar.adminUrl
  const token = await mintToken(key, {}, { issuer: ISSUER, audience: 'ledger', subject: 'payments' })

  const send = async (headers: Record<string, string>) => {
    const res = await request(`${proxy}/echo`, { method: 'POST', headers, body: 'some bytes' })
    const echoed = JSON.parse(await res.body.text()) as { headers: Record<string, string> }
    return echoed.headers
  }
  for (let i = 0; i < 3; i++) {
    const h = await send({ 'x-api-key': KEY })
    t.same([h['x-nhi-identity'], h['x-nhi-source'], h['x-nhi-verified']], ['payments', 'apikey', 'true'])
  }
  for (let i = 0; i < 5; i++) {
    const h = await send({ authorization: `Bearer ${token}` })
    t.same([h['x-nhi-identity'], h['x-nhi-source'], h['x-nhi-verified']], ['payments', 'jwt', 'true'])
  }

  const view = (await (await fetch(`${admin}/identities`)).json()) as {
    tracked: number
    identities: Row[]
    edges: { caller: string; callerSource?: string; requests: number }[]
  }
  const rows = view.identities.filter((r) => r.name === 'payments')
  t.same(
    rows.map((r) => [r.source, r.verified, r.requests]).sort(),
    [
      ['apikey', true, 3],
      ['jwt', true, 5],
    ],
    '/identities: one entry per source, each with its own count',
  )
  t.equal(view.tracked, 2, 'two entries count against maxIdentities')
  t.notOk(rows.find((r) => r.source === 'apikey')?.credentialExpiry, 'the key entry has no token expiry')
  t.ok(rows.find((r) => r.source === 'jwt')?.credentialExpiry, 'the token entry has the token expiry')
  t.same(
    view.edges
      .filter((e) => e.caller === 'payments')
      .map((e) => [e.callerSource, e.requests])
      .sort(),
    [
      ['apikey', 3],
      ['jwt', 5],
    ],
    'edges keep the sources apart',
  )

  // the audit ring (and the live stream) take the source next to the name
  const audit = (await (await fetch(`${admin}/audit?identity=payments&source=jwt&limit=100`)).json()) as {
    events: { source: string }[]
  }
  t.same(
    audit.events.map((e) => e.source),
    ['jwt', 'jwt', 'jwt', 'jwt', 'jwt'],
    '/audit?identity=payments&source=jwt: the token caller only',
  )

  const text = await (await fetch(`${admin}/metrics`)).text()
  const samples = parseMetrics(text)
  const seen = new Set<string>()
  const duplicates: string[] = []
  for (const s of samples) {
    const key = `${s.name}{${Object.entries(s.labels)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([k, v]) => `${k}=${JSON.stringify(v)}`)
      .join(',')}}`
    if (seen.has(key)) duplicates.push(key)
    seen.add(key)
  }
  t.same(duplicates, [], '/metrics: no two samples share a name and label set')
  // every per-identity family carries the source, so each caller's series are its own
  const perIdentity = samples.filter((s) => s.labels.identity === 'payments')
  t.ok(perIdentity.length > 0)
  t.same(
    [...new Set(perIdentity.filter((s) => !s.labels.source).map((s) => s.name))],
    [],
    'every per-identity sample has a source label',
  )
  t.equal(metricValue(samples, 'nhi_requests_total', { identity: 'payments', source: 'apikey' }), 3)
  t.equal(metricValue(samples, 'nhi_requests_total', { identity: 'payments', source: 'jwt' }), 5)
  t.equal(
    metricValue(samples, 'nhi_request_duration_seconds_count', { identity: 'payments', source: 'jwt' }),
    5,
  )
  t.equal(
    metricValue(samples, 'nhi_request_bytes_total', { identity: 'payments', source: 'apikey' }),
    3 * 'some bytes'.length,
  )
  for (const source of ['apikey', 'jwt']) {
    t.equal(
      samples.filter(
        (s) =>
          s.name === 'nhi_identity_last_seen_timestamp_seconds' &&
          s.labels.identity === 'payments' &&
          s.labels.source === source,
      ).length,
      1,
      `one last-seen series for the ${source} caller`,
    )
    t.equal(
      metricValue(samples, 'nhi_job_consecutive_failures', { identity: 'payments', source }) >= 0 &&
        samples.some(
          (s) =>
            s.name === 'nhi_job_last_success_timestamp_seconds' &&
            s.labels.identity === 'payments' &&
            s.labels.source === source,
        ),
      true,
      `job series for the ${source} caller`,
    )
  }
  t.equal(
    samples.filter(
      (s) => s.name === 'nhi_credential_expiry_timestamp_seconds' && s.labels.identity === 'payments',
    ).length,
    1,
    'only the token caller has a credential expiry',
  )
})
