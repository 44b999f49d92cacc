// Replays of a signed agent's request that land where the first use was not seen: after a config reload
// built a new pipeline. The nonces outlive it: a signature verifies once, and every later use is
// signature_replayed.
import { request } from 'node:http'
import t, { type Test } from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { startTestSidecar, type TestSidecar } from '../helpers/sidecar.ts'
import { type AgentKey, createAgentKey, signRequest, startKeyDirectory } from '../helpers/signed-agent.ts'
import { startUpstream } from '../helpers/upstream.ts'

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

interface Setup {
  sidecar: TestSidecar
  key: AgentKey
  url: string
  config: (signedAgents?: Record<string, unknown>) => Record<string, unknown>
  /** sends `headers` on a new connection: whether it verified, and the signature failures of its audit record */
  send(headers: Record<string, string>): Promise<{ verified: boolean; reasons: string[] }>
}

async function setup(t: Test, workers: number): Promise<Setup> {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const key = await createAgentKey()
  const directory = await startKeyDirectory([key])
  t.teardown(() => directory.close())
  const config = (signedAgents: Record<string, unknown> = {}) => ({
    service: 'shop',
    upstream: upstream.url,
    workers,
    signedAgents: { directories: [{ url: directory.url, name: 'agent.example' }], ...signedAgents },
  })
  const sidecar = await startTestSidecar(t, config())
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

for (const workers of [1]) {
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
