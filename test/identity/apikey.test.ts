import { createHash, createHmac } from 'node:crypto'
import { once } from 'node:events'
import { createServer } from 'node:http'
import { connect as connectH2 } from 'node:http2'
import { type AddressInfo, connect } from 'node:net'
import fc from 'fast-check'
import t from 'tap'
import { createApiKeyExtractor, keyDigestHex } from '../../src/identity/sources/apikey.ts'
import { sha256Hex } from '../../src/util/fingerprint.ts'
import { checkProperty } from '../helpers/property.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const BILLING_KEY = 'nhi_live_5f2b8c1e9a7d4e3f'
const CRON_KEY = 'nhi_live_cron_0011223344'

// what apiKeys.fingerprintKeyFile would hold
const FINGERPRINT_KEY = Buffer.from('0123456789abcdef0123456789abcdef')
/** HMAC-SHA256 of the key's sha256 under the fingerprint key, 16 hex digits */
const fingerprint = (key: string) =>
  createHmac('sha256', FINGERPRINT_KEY)
    .update(createHash('sha256').update(key).digest())
    .digest('hex')
    .slice(0, 16)

const extractor = createApiKeyExtractor(
  {
    header: 'X-Service-Token',
    keys: [
      { name: 'billing-export', kind: 'job', team: 'finance', sha256: sha256Hex(BILLING_KEY) },
      { name: 'nightly-cron', sha256: sha256Hex(CRON_KEY).toUpperCase() },
    ],
    fingerprintKeyFile: '/run/secrets/fingerprint.key',
  },
  FINGERPRINT_KEY,
)

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

t.test(
  'a configured key file whose key was not read is a programming error, not a silent pod key',
  async (t) => {
    t.throws(
      () => createApiKeyExtractor({ header: 'x-api-key', keys: [], fingerprintKeyFile: '/k' }),
      /fingerprintKeyFile is configured but its key was not read/,
    )
    const other = [{ name: 'other', sha256: sha256Hex(CRON_KEY) }]
    const podKeyed = createApiKeyExtractor({ header: 'x-api-key', keys: other })
    const again = createApiKeyExtractor({ header: 'x-api-key', keys: other })
    const req = { method: 'GET', path: '/', url: '/', headers: { 'x-api-key': BILLING_KEY } }
    const conn = { remoteAddress: '127.0.0.1', remotePort: 0, tls: false }
    const a = podKeyed.extract(req, conn) as { fingerprint: string }
    t.equal(
      a.fingerprint,
      (again.extract(req, conn) as { fingerprint: string }).fingerprint,
      'one pod key per process',
    )
    t.not(a.fingerprint, fingerprint(BILLING_KEY), 'not the file key')
    t.not(a.fingerprint, sha256Hex(BILLING_KEY).slice(0, 16), 'not the plain sha256 prefix')
  },
)

t.test('no key, or a key in another header, is no evidence', async (t) => {
  t.equal((await send({})).body, null)
  t.equal((await send({ 'x-api-key': BILLING_KEY })).body, null)
  t.equal(extractor.header, 'x-service-token')
})

// A header value is bytes; Node hands them over as one latin1 character per byte, on HTTP/1.1 and HTTP/2
// alike. The configured sha256 is of the key's bytes (`printf %s "$KEY" | sha256sum`), whatever they are.
t.test('a key with bytes outside ASCII is recognised by the sha256 of those bytes', async (t) => {
  const key = Buffer.from('cl\u00e9-partenaire-7f3a', 'utf8')
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const sidecar = await startTestSidecar(t, {
    upstream: upstream.url,
    apiKeys: { keys: [{ name: 'partner', sha256: createHash('sha256').update(key).digest('hex') }] },
  })
  const socket = connect(sidecar.proxyAddress.port, '127.0.0.1')
  // written, not ended: the answer comes on the same connection, which Connection: close then ends
  socket.write(
    Buffer.concat([
      Buffer.from('GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nx-api-key: '),
      key,
      Buffer.from('\r\n\r\n'),
    ]),
  )
  const chunks: Buffer[] = []
  for await (const c of socket) chunks.push(c as Buffer)
  const h1 = Buffer.concat(chunks).toString('latin1')
  t.match(h1, /^HTTP\/1\.1 200 /)
  t.equal(JSON.parse(h1.slice(h1.indexOf('\r\n\r\n') + 4)).headers['x-nhi-identity'], 'partner', 'HTTP/1.1')

  const session = connectH2(sidecar.proxyUrl)
  t.teardown(() => session.close())
  const stream = session.request({ ':path': '/echo', 'x-api-key': key.toString('latin1') })
  stream.end()
  let body = ''
  for await (const c of stream) body += c
  t.equal(JSON.parse(body).headers['x-nhi-identity'], 'partner', 'HTTP/2')
})

// an ASCII key takes the one-shot hash of the string (UTF-8), any other the latin1 bytes Node read it from
t.test('a key is hashed as the bytes it arrived as, whichever way it is hashed', async (t) => {
  const latin1 = fc.string({ unit: fc.integer({ min: 0, max: 0xff }).map((c) => String.fromCharCode(c)) })
  const ascii = fc.string({ unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)) })
  checkProperty(
    t,
    'the sha256 of the key read as latin1',
    fc.property(fc.oneof(ascii, latin1, fc.string({ unit: 'binary' })), (key) => {
      return keyDigestHex(key) === createHash('sha256').update(key, 'latin1').digest('hex')
    }),
    3000,
  )
  t.equal(keyDigestHex(''), createHash('sha256').update('').digest('hex'))
  t.equal(
    keyDigestHex('\u00e9'),
    createHash('sha256')
      .update(Buffer.from([0xe9]))
      .digest('hex'),
    'one byte, é',
  )
})

// as with bearer tokens without jwt.issuers and signatures without signedAgents.directories: a service that
// checks its own keys while the proxy is given none gets neither auth failures nor unsampled audit lines
t.test('without configured keys the key header is the service’s business, not a failure', async (t) => {
  const none = createApiKeyExtractor({ header: 'x-api-key', keys: [] })
  const req = { method: 'GET', path: '/', url: '/', headers: { 'x-api-key': BILLING_KEY } }
  const conn = { remoteAddress: '127.0.0.1', remotePort: 0, tls: false }
  t.equal(none.extract(req, conn), undefined)
})
