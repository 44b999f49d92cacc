// The api key header under a spelling an upstream framework merges with it (CGI/WSGI/Rack/PHP make
// `x_api_key` and `X-Api-Key` alike HTTP_X_API_KEY, see src/util/header-names.ts), and as a request trailer.
// The proxy reads the key from its configured header only, so any other way of sending it would reach an
// upstream that authenticates it while the proxy attributed (and decided) the request as someone else: such
// spellings are stripped and counted as spoofed_header, and the configured header never travels as a trailer.
import { createHash } from 'node:crypto'
import { createServer } from 'node:http'
import { createServer as createH2cServer } from 'node:http2'
import t from 'tap'
import { request } from 'undici'
import { eventually } from '../helpers/eventually.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { listenTcp, sidecarFor, upload, upstreamHandler } from '../helpers/trailers.ts'
import { startUpstream } from '../helpers/upstream.ts'

const KEY = 'partner-key-7d1f0c55a3'
const sha256 = (s: string) => createHash('sha256').update(s).digest('hex')
/** what a CGI gateway makes of a header name */
const cgi = (name: string) => `HTTP_${name.toUpperCase().replace(/-/g, '_')}`

t.test('an api key under another spelling never reaches the upstream unattributed', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const sidecar = await startTestSidecar(t, {
    service: 'reports',
    upstream: upstream.url,
    apiKeys: { keys: [{ name: 'partner', sha256: sha256(KEY) }] },
    policy: {
      mode: 'enforce',
      // the partner's key is refused here; browsers and other unverified callers are served
      rules: [{ route: '/echo', allow: [{ verified: false }] }],
    },
  })
  const spoofed = async () =>
    metricValue(await scrape(sidecar.adminUrl), 'nhi_credential_anomalies_total', { type: 'spoofed_header' })
  const send = async (headers: Record<string, string>) => {
    const res = await request(`${sidecar.proxyUrl}/echo`, { headers })
    const text = await res.body.text()
    return { status: res.statusCode, seen: res.statusCode === 200 ? JSON.parse(text).headers : {} }
  }

  // control: the key under its own name is attributed to the partner and refused by the policy
  t.equal((await send({ 'x-api-key': KEY })).status, 403, 'control: x-api-key is the partner, refused')
  t.equal(await spoofed(), 0, 'control: the configured spelling is not spoofed')

  for (const name of ['x_api_key', 'X_API_KEY', 'x-api_key']) {
    const before = await spoofed()
    const { status, seen } = await send({ [name]: KEY })
    t.equal(status, 200, `${name}: not read as the key, so the request is anonymous and served`)
    t.equal(seen['x-nhi-identity'], 'anonymous')
    t.same(
      Object.keys(seen).filter((n) => cgi(n) === 'HTTP_X_API_KEY'),
      [],
      `${name}: the upstream gets no key the proxy did not attribute`,
    )
    await eventually(async () => (await spoofed()) === before + 1, {
      what: `spoofed_header counted for ${name}`,
    })
  }
})

// for each forwarding engine (HTTP/1.1 and h2c upstreams), and again after a reload names another header
t.test('a configured api key header never travels as a request trailer', async (t) => {
  for (const protocol of ['http', 'h2c'] as const) {
    const up = upstreamHandler()
    const server =
      protocol === 'http'
        ? createServer(up.handler)
        : createH2cServer(up.handler as unknown as Parameters<typeof createH2cServer>[0])
    t.teardown(() => server.close())
    const upstream = `${protocol}://127.0.0.1:${await listenTcp(server)}`
    const keyed = (header: string) => ({
      service: 'uploads',
      upstream,
      apiKeys: { header, keys: [{ name: 'billing', sha256: sha256(KEY) }] },
    })
    const { sidecar, port } = await sidecarFor(t, upstream, keyed('x-service-token'))
    const check = async (header: string) => {
      for (const name of [header, header.toUpperCase().replaceAll('-', '_')]) {
        up.seen.length = 0
        const res = await upload(port, '/upload', {
          bytes: 1024,
          trailers: { [name]: KEY, 'x-digest': 'sha-256=abc' },
        })
        t.equal(res.status, 200)
        const seen = up.seen[0]!
        const what = `${protocol}, ${name}`
        t.equal(
          seen.headers['x-nhi-identity'],
          'anonymous',
          `${what}: attributed from the header section only`,
        )
        t.same(
          Object.keys(seen.trailers).filter((n) => n.toLowerCase().replaceAll('_', '-') === header),
          [],
          `${what}: the api key trailer does not reach the upstream`,
        )
        if (protocol === 'http')
          t.equal(seen.headers.trailer, 'x-digest', `${what}: nor does its announcement in Trailer`)
        t.equal(seen.trailers['x-digest'], 'sha-256=abc', `${what}: other trailers still do`)
      }
    }
    await check('x-service-token')
    t.ok(await sidecar.reload(keyed('x-robot-key')), 'reloaded to another key header')
    await check('x-robot-key')
  }
})
