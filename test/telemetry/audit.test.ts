import { readFile, rm } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { configSchema } from '../../src/config/schema.ts'
import { Telemetry } from '../../src/telemetry/index.ts'
import { startAdmin } from '../helpers/admin.ts'
import { identity, requestEvent } from '../helpers/events.ts'
import { scratchDir } from '../helpers/scratch.ts'

const RAW_TOKEN = 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzZWNyZXQtc3ViamVjdCJ9.c2lnbmF0dXJl'

async function tempDir(t: { teardown(fn: () => unknown): void }): Promise<string> {
  const dir = await scratchDir('audit')
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  return dir
}

async function readLines(path: string): Promise<Record<string, unknown>[]> {
  const text = await readFile(path, 'utf8')
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>)
}

t.test('audit lines carry the forensic fields and never a raw credential', async (t) => {
  const file = join(await tempDir(t), 'logs', 'audit.jsonl')
  const telemetry = new Telemetry(configSchema.parse({ service: 'checkout', audit: { output: file } }), {
    version: 'test',
  })
  const who = identity('ci/export', {
    kind: 'job',
    source: 'jwt',
    verified: true,
    rule: 'github-jobs',
    attributes: { iss: 'https://token.actions.githubusercontent.com', sub: 'repo:acme/export', jti: 'abc-1' },
  })
  telemetry.record(
    requestEvent({
      identity: who,
      traceId: '0af7651916cd43dd8448eb211c80319c',
      spanId: 'b7ad6b7169203331',
      requestId: 'req-audit-1',
      fingerprints: { jwt: '9f86d081884c7d65' },
      status: 502,
      upstreamError: 'connect',
      failures: [
        { failed: true, source: 'apikey', reason: 'apikey_unknown', fingerprint: 'aa11bb22cc33dd44' },
      ],
      anomalies: ['token_shared'],
      decision: { decision: 'would_deny', rule: 'jobs-readonly' },
      clientAddress: '10.1.2.3',
      method: 'POST',
      path: '/api/v1/export',
      route: 'other',
    }),
  )
  await telemetry.close()
  const [line, ...rest] = await readLines(file)
  t.equal(rest.length, 0)
  t.match(line, {
    type: 'audit',
    time: /^\d{4}-\d\d-\d\dT/,
    trace_id: '0af7651916cd43dd8448eb211c80319c',
    span_id: 'b7ad6b7169203331',
    request_id: 'req-audit-1',
    identity: 'ci/export',
    kind: 'job',
    source: 'jwt',
    verified: true,
    rule: 'github-jobs',
    fingerprints: { jwt: '9f86d081884c7d65' },
    iss: 'https://token.actions.githubusercontent.com',
    sub: 'repo:acme/export',
    jti: 'abc-1',
    client_address: '10.1.2.3',
    method: 'POST',
    path: '/api/v1/export',
    route: 'other',
    status: 502,
    duration_ms: 12,
    bytes_in: 100,
    bytes_out: 2000,
    upstream_error: 'connect',
    decision: 'would_deny',
    policy_rule: 'jobs-readonly',
    failures: [{ source: 'apikey', reason: 'apikey_unknown' }],
    anomalies: ['token_shared'],
  })
  t.notOk('level' in (line ?? {}), 'no logger noise in audit lines')
})

t.test('sampling drops only unremarkable requests', async (t) => {
  const file = join(await tempDir(t), 'audit.jsonl')
  const telemetry = new Telemetry(
    configSchema.parse({ service: 'checkout', audit: { output: file, sample: 0.25 } }),
    // deterministic "random": every request draws 0.5, above the 0.25 sample rate
    { version: 'test', audit: { random: () => 0.5 } },
  )
  const ok = (n: number) => requestEvent({ requestId: `ok-${n}`, status: 200 })
  for (let i = 0; i < 20; i++) telemetry.record(ok(i))
  const keep = [
    requestEvent({ requestId: 'status-404', status: 404 }),
    requestEvent({ requestId: 'status-500', status: 500 }),
    requestEvent({ requestId: 'auth-fail', failures: [{ failed: true, source: 'jwt', reason: 'expired' }] }),
    requestEvent({ requestId: 'deny', status: 200, decision: { decision: 'deny', rule: 'r' } }),
    requestEvent({ requestId: 'would-deny', decision: { decision: 'would_deny', rule: 'r' } }),
    requestEvent({ requestId: 'anomaly', anomalies: ['spoofed_header'] }),
  ]
  for (const e of keep) telemetry.record(e)
  // the sampled-out requests are still in the in-memory ring for /audit
  t.equal(telemetry.auditQuery({ requestId: 'ok-3' }).length, 1)
  await telemetry.close()
  const ids = (await readLines(file)).map((l) => l['request_id'])
  t.same(
    ids,
    keep.map((e) => e.requestId),
  )
})

t.test('sample 1.0 writes every request; "off" writes nothing and still serves /audit', async (t) => {
  const file = join(await tempDir(t), 'all.jsonl')
  const all = new Telemetry(configSchema.parse({ service: 's', audit: { output: file } }), {
    version: 'test',
  })
  for (let i = 0; i < 50; i++) all.record(requestEvent())
  await all.close()
  t.equal((await readLines(file)).length, 50)

  const off = new Telemetry(configSchema.parse({ service: 's', audit: { output: 'off' } }), {
    version: 'test',
  })
  off.record(requestEvent({ requestId: 'still-here' }))
  t.equal(off.auditQuery({ requestId: 'still-here' }).length, 1)
  await off.close()
})

t.test('/audit filters by identity, trace_id and request_id, newest first, bounded ring', async (t) => {
  const telemetry = new Telemetry(
    configSchema.parse({ service: 'checkout', audit: { output: 'off', ringSize: 50 } }),
    { version: 'test' },
  )
  const url = await startAdmin(t, telemetry)
  for (let i = 0; i < 80; i++) {
    telemetry.record(
      requestEvent({
        requestId: `r-${i}`,
        traceId: `trace-${i % 4}`,
        identity: identity(i % 2 ? 'odd' : 'even'),
        fingerprints: { jwt: 'cafe0123deadbeef' },
      }),
    )
  }
  const get = async (q: string) => {
    const res = await fetch(`${url}/audit${q}`)
    t.equal(res.status, 200)
    return ((await res.json()) as { events: Record<string, string>[] }).events
  }
  const newest = await get('')
  t.equal(newest.length, 50, 'ring keeps the newest ringSize events')
  t.equal(newest[0]?.['request_id'], 'r-79')
  t.equal(newest.at(-1)?.['request_id'], 'r-30')

  const odd = await get('?identity=odd&limit=3')
  t.same(
    odd.map((e) => e['request_id']),
    ['r-79', 'r-77', 'r-75'],
  )
  const traced = await get('?trace_id=trace-2')
  t.ok(traced.length > 0 && traced.every((e) => e['trace_id'] === 'trace-2'))
  const one = await get('?request_id=r-42')
  t.equal(one.length, 1)
  t.equal(one[0]?.['identity'], 'even')
  t.same(await get('?request_id=r-3'), [], 'evicted from the ring')
  t.same(await get('?identity=nobody'), [])
  for (const limit of ['-1', '0', '1e3', '2abc', '1.5']) {
    const bad = await fetch(`${url}/audit?limit=${limit}`)
    t.equal(bad.status, 400, `limit=${limit}: 400`)
    await bad.arrayBuffer()
  }
  t.equal((await get('?limit=2')).length, 2, 'limit=2: two events')
  const body = JSON.stringify(await get('?limit=1000'))
  t.notMatch(body, RAW_TOKEN)
})

t.test('a raw token in the request never reaches audit, metrics or the live feed', async (t) => {
  const file = join(await tempDir(t), 'audit.jsonl')
  const telemetry = new Telemetry(configSchema.parse({ service: 'checkout', audit: { output: file } }), {
    version: 'test',
  })
  const url = await startAdmin(t, telemetry)
  // the pipeline only hands over fingerprints; make sure nothing we add re-derives or echoes secrets
  telemetry.record(
    requestEvent({
      identity: identity('u', {
        source: 'jwt',
        attributes: { sub: 'alice', iss: 'https://idp', token: RAW_TOKEN },
      }),
      fingerprints: { jwt: '0123456789abcdef' },
      failures: [{ failed: true, source: 'jwt', reason: 'bad_signature', fingerprint: '0123456789abcdef' }],
    }),
  )
  const [metrics, audit, identities] = await Promise.all([
    fetch(`${url}/metrics`).then((r) => r.text()),
    fetch(`${url}/audit`).then((r) => r.text()),
    fetch(`${url}/identities`).then((r) => r.text()),
  ])
  await telemetry.close()
  const lines = await readFile(file, 'utf8')
  for (const [where, text] of Object.entries({ metrics, audit, identities, lines })) {
    t.notOk(text.includes(RAW_TOKEN), `${where} has no raw token`)
  }
  t.match(lines, '0123456789abcdef', 'the fingerprint is what gets logged')
})
