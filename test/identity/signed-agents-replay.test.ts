// Replays of a signed agent's request that land where the first use was not seen: on another worker of
// `workers: 2` (each new connection goes to the next worker), or after a config reload built a new pipeline.
// The nonces of the pod outlive both: a signature verifies once, and every later use is signature_replayed.
import { request } from 'node:http'
import t, { type Test } from 'tap'
import { Client } from 'undici'
import { eventually } from '../helpers/eventually.ts'
import { metricValue, scrapeUntil } from '../helpers/metrics.ts'
import type { TestSidecar } from '../helpers/sidecar.ts'
import { type AgentKey, signRequest, startSignedAgentSidecar } from '../helpers/signed-agent.ts'

/** GET `url` on a connection of its own; whether the proxy forwarded it as a verified identity */
function sendFresh(url: string, headers: Record<string, string>): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const req = request(url, { agent: false, headers }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => {
        body += c
      })
      res.on('end', () => {
        try {
          const echoed = JSON.parse(body).headers as Record<string, string>
          resolve(echoed['x-nhi-verified'] === 'true')
        } catch (err) {
          reject(new Error(`status ${res.statusCode}: ${body.slice(0, 200)}: ${err}`))
        }
      })
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}

// the tests share nothing (each its own sidecar, upstream and key directory): run side by side
t.jobs = 4

interface Setup {
  sidecar: TestSidecar
  key: AgentKey
  url: string
  config: (signedAgents?: Record<string, unknown>) => Record<string, unknown>
  /** sends `headers` on a new connection: whether it verified, and the signature failures of its audit record */
  send(headers: Record<string, string>): Promise<{ verified: boolean; reasons: string[] }>
}

async function setup(t: Test, workers: number): Promise<Setup> {
  const { sidecar, key, config } = await startSignedAgentSidecar(t, {}, { workers })
  const url = `${sidecar.proxyUrl}/echo`
  let n = 0
  return {
    sidecar,
    key,
    url,
    config,
    async send(headers) {
      const requestId = `replay-${workers}-${++n}`
      const verified = await sendFresh(url, {
        'user-agent': 'ExampleAgent/1.0',
        'x-request-id': requestId,
        ...headers,
      })
      const audit = await eventually(async () => {
        const r = await fetch(`${sidecar.adminUrl}/audit?request_id=${requestId}`)
        return ((await r.json()) as { events: Record<string, unknown>[] }).events[0]
      })
      const reasons = (audit['failures'] as { source: string; reason: string }[])
        .filter((f) => f.source === 'signature')
        .map((f) => f.reason)
      return { verified, reasons }
    },
  }
}

t.test('workers: 2: a signature verifies once in the pod, whichever worker its replays reach', async (t) => {
  const { sidecar, key, url, send } = await setup(t, 2)
  const signed = await signRequest(key, url)
  const sent = 10
  const outcomes = []
  for (let i = 0; i < sent; i++) outcomes.push(await send(signed))
  const samples = await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_worker_requests_total') >= sent,
    'every request counted',
  )
  const perWorker = ['1', '2'].map((worker) => metricValue(samples, 'nhi_worker_requests_total', { worker }))
  t.ok(
    perWorker.every((n) => n > 0),
    `both workers served the signed request: ${perWorker.join(' + ')}`,
  )
  t.equal(outcomes.filter((o) => o.verified).length, 1, 'verified exactly once')
  t.ok(outcomes[0]!.verified, 'the first use')
  t.same(
    outcomes.slice(1).map((o) => o.reasons),
    Array.from({ length: sent - 1 }, () => ['signature_replayed']),
    'every other use is a replay',
  )
  t.equal(
    metricValue(samples, 'nhi_auth_failures_total', { source: 'signature', reason: 'signature_replayed' }),
    sent - 1,
    'and counted as replays',
  )
})

t.test('workers: 2: a primary that does not answer about a nonce fails the signature closed', async (t) => {
  const { sidecar, key, url, send } = await setup(t, 2)
  // the primary hands new connections to the workers: this one, made now, is served by its worker alone
  const client = new Client(new URL(url).origin, { headersTimeout: 10_000, bodyTimeout: 10_000 })
  t.teardown(() => client.close())
  const get = async (headers: Record<string, string>) => {
    const res = await client.request({ method: 'GET', path: '/echo', headers })
    const echoed = ((await res.body.json()) as { headers: Record<string, string> }).headers
    return echoed['x-nhi-verified'] === 'true'
  }
  const agent = { 'user-agent': 'ExampleAgent/1.0' }
  t.ok(await get({ ...agent, ...(await signRequest(key, url)) }), 'control: a signature verifies')
  const primary = sidecar.process.child
  // stopped, the primary keeps its end of every worker's channel open but answers nothing
  primary.kill('SIGSTOP')
  let stopped = true
  const resume = () => {
    if (stopped) primary.kill('SIGCONT')
    stopped = false
  }
  t.teardown(resume)
  const signed = await signRequest(key, url)
  const started = Date.now()
  let verified: boolean
  try {
    verified = await get({ ...agent, 'x-request-id': 'unanswered', ...signed })
  } finally {
    resume()
  }
  const waited = Date.now() - started
  t.notOk(verified, 'not verified while the pod cannot tell whether it is a replay')
  t.ok(waited < 5_000, `answered after a short wait (${waited} ms)`)
  const audit = await eventually(async () => {
    const r = await fetch(`${sidecar.adminUrl}/audit?request_id=unanswered`)
    return ((await r.json()) as { events: Record<string, unknown>[] }).events[0]
  })
  t.match(audit['failures'], [{ source: 'signature', reason: 'replay_cache_full' }])
  t.ok((await send(await signRequest(key, url))).verified, 'verified again once the primary answers')
})

for (const workers of [1, 2]) {
  t.test(`workers: ${workers}: a config reload forgets no nonce`, async (t) => {
    const { sidecar, key, url, config, send } = await setup(t, workers)
    const signed = await signRequest(key, url)
    t.ok((await send(signed)).verified, 'first use verifies')
    t.ok(await sidecar.reload(config({ maxAge: '4m' })), 'reloaded')
    const replay = await send(signed)
    t.notOk(replay.verified, 'the same signature after the reload does not')
    t.same(replay.reasons, ['signature_replayed'])
    t.ok((await send(await signRequest(key, url))).verified, 'a new signature still verifies')

    // a smaller cache keeps every live nonce: new signatures are refused until enough of them expire
    const others = [await signRequest(key, url), await signRequest(key, url)]
    for (const s of others) t.ok((await send(s)).verified, 'another new signature verifies')
    t.ok(await sidecar.reload(config({ maxAge: '4m', nonceCacheSize: 2 })), 'reloaded with a smaller cache')
    for (const s of [signed, ...others])
      t.same((await send(s)).reasons, ['signature_replayed'], 'still a replay')
    const refused = await send(await signRequest(key, url))
    t.notOk(refused.verified, 'a new signature is refused while more live nonces are kept than fit')
    t.same(refused.reasons, ['replay_cache_full'])
  })
}
