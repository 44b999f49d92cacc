import { once } from 'node:events'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { createApiKeyExtractor } from '../../src/identity/sources/apikey.ts'
import { fingerprint, sha256Hex } from '../../src/util/fingerprint.ts'

const BILLING_KEY = 'nhi_live_5f2b8c1e9a7d4e3f'
const CRON_KEY = 'nhi_live_cron_0011223344'

const extractor = createApiKeyExtractor({
  header: 'X-Service-Token',
  keys: [
    { name: 'billing-export', kind: 'job', team: 'finance', sha256: sha256Hex(BILLING_KEY) },
    { name: 'nightly-cron', sha256: sha256Hex(CRON_KEY).toUpperCase() },
  ],
})

const server = createServer(async (req, res) => {
  const r = await extractor.extract(
    { method: 'GET', path: '/', url: '/', headers: req.headers },
    { remoteAddress: req.socket.remoteAddress ?? '', remotePort: 0, tls: false },
  )
  res.end(JSON.stringify(r ?? null))
})
server.listen(0, '127.0.0.1')
await once(server, 'listening')
const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`
t.teardown(() => new Promise<void>((r) => server.close(() => r())))

async function send(headers: Record<string, string>): Promise<{ text: string; body: unknown }> {
  const text = await (await fetch(url, { headers })).text()
  return { text, body: JSON.parse(text) }
}

t.test('a configured key is recognised by its hash', async (t) => {
  const { body } = await send({ 'x-service-token': BILLING_KEY })
  t.same(body, {
    source: 'apikey',
    verified: true,
    name: 'billing-export',
    fingerprint: fingerprint(BILLING_KEY),
    kind: 'job',
    team: 'finance',
  })
  const cron = (await send({ 'X-Service-Token': CRON_KEY })).body
  t.match(cron, { name: 'nightly-cron', verified: true }, 'upper-case configured hash and header name')
})

t.test('an unknown key is a failure that never echoes the key', async (t) => {
  const guess = `${BILLING_KEY}x`
  const { text, body } = await send({ 'x-service-token': guess })
  t.same(body, { failed: true, source: 'apikey', reason: 'apikey_unknown', fingerprint: fingerprint(guess) })
  t.notOk(text.includes(guess), 'raw key not in the result')
})

t.test('no key, or a key in another header, is no evidence', async (t) => {
  t.equal((await send({})).body, null)
  t.equal((await send({ 'x-api-key': BILLING_KEY })).body, null)
  t.equal(extractor.header, 'x-service-token')
})
