import { execFileSync } from 'node:child_process'
import { get as httpGet } from 'node:http'
import t from 'tap'
import { Agent, request } from 'undici'
import { HttpProxyForwarder } from '../../bench/lib/http-proxy-forwarder.ts'
import { downstreamHeaders, upstreamHeaders } from '../../src/proxy/headers.ts'
import { requestId, traceContext } from '../../src/proxy/ids.ts'
import { stillTrueFor } from '../helpers/eventually.ts'
import { SERVICE_IDENTITY, startProxy, TestPipeline } from '../helpers/proxy-fixture.ts'
import { TS_NODE_FLAGS } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const agent = new Agent()

function nodeGetJson(
  url: string,
  headers: Record<string, string>,
): Promise<{ url: string; headers: Record<string, string> }> {
  return new Promise((resolve, reject) => {
    const req = httpGet(url, { headers, agent: false }, (res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => {
        text += c
      })
      res.on('end', () => resolve(JSON.parse(text)))
    })
    req.on('error', reject)
  })
}
t.teardown(() => agent.close())

t.test('headers sent upstream', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const { url, pipeline } = await startProxy(t, { upstream: up.url })

  // node:http lets a test send the hop-by-hop headers undici refuses to send
  const echo = await nodeGetJson(`${url}/echo?x=1`, {
    'x-nhi-identity': 'admin',
    'X-NHI-Kind': 'human',
    'x-nhi-anything': 'spoof',
    authorization: 'Bearer abc.def.ghi',
    traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
    tracestate: 'congo=t61rcWkgMzE',
    'x-request-id': 'req-123',
    'x-forwarded-for': '203.0.113.7',
    'x-forwarded-proto': 'https',
    connection: 'keep-alive, x-drop-me',
    'x-drop-me': 'gone',
    'keep-alive': 'timeout=5',
    'proxy-authorization': 'Basic Zm9v',
    te: 'trailers',
    'x-custom': 'kept',
  })
  const h = echo.headers
  t.equal(echo.url, '/echo?x=1', 'path and query forwarded')
  t.equal(h['x-nhi-identity'], SERVICE_IDENTITY.name, 'spoofed identity replaced')
  t.equal(h['x-nhi-kind'], 'service')
  t.equal(h['x-nhi-source'], 'jwt')
  t.equal(h['x-nhi-verified'], 'true')
  t.notOk('x-nhi-anything' in h, 'unknown incoming x-nhi-* stripped')
  t.equal(h.authorization, 'Bearer abc.def.ghi', 'authorization unchanged')
  t.match(h.traceparent, /^00-4bf92f3577b34da6a3ce929d0e0e4736-[0-9a-f]{16}-01$/, 'trace continued')
  t.not(h.traceparent, '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', 'new span for our hop')
  t.equal(h.tracestate, 'congo=t61rcWkgMzE', 'tracestate kept')
  t.equal(h['x-request-id'], 'req-123', 'request id kept')
  t.equal(h['x-forwarded-for'], '203.0.113.7, 127.0.0.1', 'xff appended with the real peer')
  t.equal(h['x-forwarded-proto'], 'http', "a client's own x-forwarded-proto is replaced by this hop's")
  t.match(h['x-forwarded-host'], /^127\.0\.0\.1:\d+$/)
  t.notOk('x-drop-me' in h, 'header named in Connection stripped')
  t.notOk('keep-alive' in h)
  t.notOk('proxy-authorization' in h)
  t.equal(h.te, 'trailers', 'te: trailers kept')
  t.equal(h['x-custom'], 'kept')

  const [event] = await pipeline.waitForEvents(1)
  t.equal(event!.requestId, 'req-123')
  t.equal(event!.traceId, '4bf92f3577b34da6a3ce929d0e0e4736')
  t.equal(h.traceparent, `00-${event!.traceId}-${event!.spanId}-01`, 'event carries the ids sent upstream')
  t.equal(event!.path, '/echo', 'path without query')
  t.equal(event!.status, 200)
  t.equal(event!.service, 'checkout')
  t.equal(event!.clientAddress, '127.0.0.1')
  t.ok(event!.bytesOut > 0)
})

t.test('ids are created when missing or invalid', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const { url, pipeline } = await startProxy(t, { upstream: up.url })
  const res = await request(`${url}/echo`, {
    dispatcher: agent,
    headers: {
      traceparent: '00-00000000000000000000000000000000-00f067aa0ba902b7-01',
      tracestate: 'dropped=1',
      'x-request-id': 'x'.repeat(129),
    },
  })
  const { headers: h } = (await res.body.json()) as { headers: Record<string, string> }
  t.match(h.traceparent, /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/)
  t.notMatch(h.traceparent, /^00-0{32}/, 'all-zero trace id replaced')
  t.notOk('tracestate' in h, 'tracestate dropped with an invalid parent')
  t.match(h['x-request-id'], /^[0-9a-f-]{36}$/, 'overlong request id replaced')
  const [event] = await pipeline.waitForEvents(1)
  t.equal(event!.requestId, h['x-request-id'])
})

t.test('trace and request id rules', async (t) => {
  t.equal(traceContext(undefined).continued, false)
  t.equal(
    traceContext('ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01').continued,
    false,
    'version ff',
  )
  t.equal(traceContext('00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01').continued, false)
  t.equal(
    traceContext('00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01').continued,
    false,
    'uppercase',
  )
  t.equal(traceContext('00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x').continued, false)
  const future = traceContext('01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra')
  t.equal(future.continued, true, 'future versions may carry more fields')
  t.equal(future.traceparent.slice(0, 35), '00-4bf92f3577b34da6a3ce929d0e0e4736')
  t.match(future.traceparent, /-00$/, 'flags kept')
  const reserved = traceContext('00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fd')
  t.equal(reserved.flags, '01', 'reserved flags zeroed: only sampled and random are defined')
  t.match(reserved.traceparent, /-01$/)
  t.equal(traceContext('02-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-8a-x').flags, '02')
  t.equal(requestId('abc'), 'abc')
  t.not(requestId('has space'), 'has space')
  t.not(requestId('tab\there'), 'tab\there')
  t.not(requestId(''), '')
  const ids = new Set(Array.from({ length: 2000 }, () => traceContext(undefined).traceId))
  t.equal(ids.size, 2000, 'trace ids do not repeat')
  const fresh = traceContext(undefined)
  t.match(fresh.traceparent, /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/)
  t.equal(fresh.traceparent, `00-${fresh.traceId}-${fresh.spanId}-01`, 'the ids are those of the header')
  t.not(traceContext(undefined).traceparent, fresh.traceparent, 'each trace its own header')
})

t.test(
  'created request ids: UUID-shaped, a per-process prefix and a counter that never repeats',
  async (t) => {
    // 300 ids carry the counter over two hex digits (…0ff → …100)
    const created = Array.from({ length: 300 }, () => requestId(undefined))
    for (const id of created) t.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/)
    t.equal(new Set(created).size, created.length, 'no id repeats')
    t.ok(
      created.every((id) => id.slice(0, 24) === created[0]!.slice(0, 24)),
      'one random prefix for the process',
    )
    const counters = created.map((id) => Number.parseInt(id.slice(24), 16))
    t.ok(
      counters.every((n, i) => i === 0 || n === counters[i - 1]! + 1),
      'the counter counts up by one, hex digits carried',
    )
    // another process (a restart, another worker) draws another prefix
    const other = execFileSync(
      process.execPath,
      [
        ...TS_NODE_FLAGS,
        '-e',
        `import('${new URL('../../src/proxy/ids.ts', import.meta.url).href}').then((m) => process.stdout.write(m.requestId(undefined)))`,
      ],
      { encoding: 'utf8' },
    )
    t.match(other, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/)
    t.not(other.slice(0, 24), created[0]!.slice(0, 24), 'another process, another prefix')
  },
)

t.test("a trusted proxy's Forwarded gets this hop's RFC 7239 element appended", async (t) => {
  const forwarded = (headers: Record<string, string>, clientIp: string, proto: 'http' | 'https') =>
    upstreamHeaders(
      headers,
      SERVICE_IDENTITY,
      traceContext(undefined),
      'rid',
      clientIp,
      proto,
      undefined,
      true,
    )['forwarded']
  t.equal(
    forwarded({ host: 'api', forwarded: 'for=10.0.0.5' }, '2001:db8::7', 'https'),
    'for=10.0.0.5, for="[2001:db8::7]";proto=https;host=api',
    'an IPv6 node is bracketed and quoted',
  )
  t.equal(
    forwarded({ forwarded: 'for=10.0.0.5' }, '192.0.2.1', 'http'),
    'for=10.0.0.5, for=192.0.2.1;proto=http',
    'no host= without a Host',
  )
  t.equal(
    forwarded({ host: 'a"b\\c', forwarded: 'for=_x' }, '', 'http'),
    'for=_x, for=unknown;proto=http;host="a\\"b\\\\c"',
    'a host that is not a token is a quoted-string; an address that is not an IP is unknown',
  )
  t.equal(forwarded({ host: 'api' }, '192.0.2.1', 'http'), undefined, 'none added to a request without one')
})

/** upstreamHeaders of a request from 192.0.2.1 over http, its peer a trusted proxy or not; `asked` gets each lookup */
const fromPeer = (headers: Record<string, string>, trusted: boolean, asked: string[]) =>
  upstreamHeaders(headers, SERVICE_IDENTITY, traceContext(undefined), 'rid', '192.0.2.1', 'http', undefined, {
    trustedProxy(peer: string) {
      asked.push(peer)
      return trusted
    },
  })

t.test(
  "a client's Forwarded is replaced by this hop's element unless the peer is a trusted proxy",
  async (t) => {
    const asked: string[] = []
    const forwarded = (headers: Record<string, string>, trusted: boolean) =>
      fromPeer(headers, trusted, asked)['forwarded']
    t.equal(
      forwarded({ host: 'api', forwarded: 'proto=https;host=admin.internal, for=10.0.0.5' }, false),
      'for=192.0.2.1;proto=http;host=api',
      "the first element, the one Spring reads, is this hop's",
    )
    t.same(asked, ['192.0.2.1'], 'the peer is asked about it')
    t.equal(
      forwarded({ host: 'api', forwarded: 'proto=https;host=shop.example' }, true),
      'proto=https;host=shop.example, for=192.0.2.1;proto=http;host=api',
    )
    t.equal(forwarded({ host: 'api' }, false), undefined, 'none added to a request without one')
  },
)

t.test('the peer is looked up only for a request carrying a header that depends on it', async (t) => {
  const asked: string[] = []
  const send = (headers: Record<string, string>, trusted: boolean) => fromPeer(headers, trusted, asked)
  const plain = send({ host: 'api', 'user-agent': 'x', 'x-forwarded-for': '10.0.0.5' }, false)
  t.same(asked, [], 'not asked for a request without one')
  t.equal(plain['x-forwarded-for'], '10.0.0.5, 192.0.2.1')
  const forged = send(
    { host: 'api', 'x-real-ip': '10.0.0.5', 'true-client-ip': '10.0.0.5', x_client_ip: '1' },
    false,
  )
  t.same(asked, ['192.0.2.1'], 'asked once for several')
  t.notOk(
    'x-real-ip' in forged || 'true-client-ip' in forged || 'x_client_ip' in forged,
    'dropped from an untrusted peer',
  )
  asked.length = 0
  const kept = send({ host: 'api', 'x-forwarded-proto': 'https', 'cf-connecting-ip': '10.0.0.5' }, true)
  t.same(asked, ['192.0.2.1'], 'asked once, for x-forwarded-proto and the client address together')
  t.equal(kept['cf-connecting-ip'], '10.0.0.5', "a trusted proxy's is forwarded")
  t.equal(kept['x-forwarded-proto'], 'https, http')
})

t.test('all methods are forwarded with their bodies', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const { url, pipeline } = await startProxy(t, { upstream: up.url })
  const methods = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const
  for (const method of methods) {
    const body = method === 'POST' || method === 'PUT' || method === 'PATCH' ? 'hello world' : undefined
    const res = await request(`${url}/echo`, { dispatcher: agent, method, body })
    t.equal(res.statusCode, 200, method)
    const text = await res.body.text()
    if (method === 'HEAD') {
      t.equal(text, '', 'HEAD has no body')
      continue
    }
    const echo = JSON.parse(text) as { method: string; bodyBytes: number }
    t.equal(echo.method, method)
    t.equal(echo.bodyBytes, body ? 11 : 0)
  }
  const events = await pipeline.waitForEvents(methods.length)
  t.same(
    events.map((e) => e.method),
    methods,
  )
  t.same(
    events.map((e) => e.bytesIn),
    methods.map((m) => (m === 'POST' || m === 'PUT' || m === 'PATCH' ? 11 : 0)),
    'bytes in counted',
  )
  t.equal(up.received.length, methods.length)
})

t.test('upstream status and response headers pass through; hop-by-hop ones do not', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const { url, pipeline } = await startProxy(t, { upstream: up.url })
  const res = await request(`${url}/status/418`, { dispatcher: agent })
  t.equal(res.statusCode, 418)
  t.equal(await res.body.text(), 'status 418')
  const [event] = await pipeline.waitForEvents(1)
  t.equal(event!.status, 418)
})

t.test('reject answers without contacting the upstream', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const pipeline = new TestPipeline(() => ({
    reject: {
      status: 401,
      body: '{"error":"invalid_token"}',
      headers: { 'WWW-Authenticate': 'Bearer error="invalid_token"' },
    },
  }))
  const { url } = await startProxy(t, { upstream: up.url, pipeline })
  const res = await request(`${url}/echo`, { dispatcher: agent, method: 'POST', body: 'x'.repeat(1000) })
  t.equal(res.statusCode, 401)
  t.equal(res.headers['www-authenticate'], 'Bearer error="invalid_token"')
  t.same(await res.body.json(), { error: 'invalid_token' })
  t.equal(up.received.length, 0, 'upstream never saw it')
  const events = await pipeline.waitForEvents(1)
  t.equal(events[0]!.status, 401)
  // the connection stays usable
  const again = await request(`${url}/echo`, { dispatcher: agent })
  t.equal(again.statusCode, 401)
  await again.body.dump()
})

t.test('a failing attribute() makes the request anonymous instead of failing it', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const pipeline = new TestPipeline(() => Promise.reject(new Error('boom')))
  const { url } = await startProxy(t, { upstream: up.url, pipeline })
  const res = await request(`${url}/echo`, { dispatcher: agent })
  t.equal(res.statusCode, 200)
  const { headers } = (await res.body.json()) as { headers: Record<string, string> }
  t.equal(headers['x-nhi-identity'], 'anonymous')
  t.equal(headers['x-nhi-verified'], 'false')
  const [event] = await pipeline.waitForEvents(1)
  t.equal(event!.identity.name, 'anonymous')
})

t.test('identity names that are not header-safe are encoded', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const pipeline = new TestPipeline(() => ({
    identity: { ...SERVICE_IDENTITY, name: 'zoë/api\r\nx-evil: 1' },
  }))
  const { url } = await startProxy(t, { upstream: up.url, pipeline })
  const res = await request(`${url}/echo`, { dispatcher: agent })
  const { headers } = (await res.body.json()) as { headers: Record<string, string> }
  t.equal(headers['x-nhi-identity'], encodeURIComponent('zoë/api\r\nx-evil: 1'))
  t.notOk('x-evil' in headers)
})

t.test('record() is called exactly once per request, with the route from the attribution', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const pipeline = new TestPipeline(() => ({ route: '/bytes/:n' }))
  const { url } = await startProxy(t, { upstream: up.url, pipeline })
  await Promise.all(
    Array.from({ length: 50 }, async () => {
      const res = await request(`${url}/bytes/1000`, { dispatcher: agent })
      await res.body.dump()
    }),
  )
  await pipeline.waitForEvents(50)
  t.ok(await stillTrueFor(() => pipeline.events.length === 50, 100), 'no request is recorded twice')
  t.equal(pipeline.events.length, 50)
  t.equal(new Set(pipeline.events.map((e) => e.requestId)).size, 50)
  t.ok(pipeline.events.every((e) => e.route === '/bytes/:n' && e.bytesOut === 1000 && e.status === 200))
})

t.test('upstream base path is prefixed', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const { url } = await startProxy(t, { upstream: `${up.url}/echo/base/` })
  const res = await request(`${url}/a/b?c=d`, { dispatcher: agent })
  const echo = (await res.body.json()) as { url: string }
  t.equal(echo.url, '/echo/base/a/b?c=d')
})

t.test('response hop-by-hop headers are dropped, repeated headers kept', async (t) => {
  const raw = [
    'Content-Type',
    'text/plain',
    'Set-Cookie',
    'a=1',
    'Set-Cookie',
    'b=2',
    'Connection',
    'keep-alive, X-Hop',
    'X-Hop',
    'secret',
    'Keep-Alive',
    'timeout=5',
    'Transfer-Encoding',
    'chunked',
    'Upgrade',
    'h2c',
    'Trailer',
    'x-checksum',
    'X-Kept',
    'yes',
  ].map((s) => Buffer.from(s))
  t.same(downstreamHeaders(raw), [
    'Content-Type',
    'text/plain',
    'Set-Cookie',
    'a=1',
    'Set-Cookie',
    'b=2',
    'X-Kept',
    'yes',
  ])
})

t.test('the http-proxy baseline forwarder honours the same contract', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const forwarder = new HttpProxyForwarder({ headersTimeout: 5000 })
  const { url, pipeline } = await startProxy(t, { upstream: up.url, forwarder })
  const res = await request(`${url}/echo?q=1`, { dispatcher: agent, headers: { 'x-nhi-identity': 'spoof' } })
  t.equal(res.statusCode, 200)
  const echo = (await res.body.json()) as { url: string; headers: Record<string, string> }
  t.equal(echo.url, '/echo?q=1')
  t.equal(echo.headers['x-nhi-identity'], SERVICE_IDENTITY.name)
  const [event] = await pipeline.waitForEvents(1)
  t.equal(event!.status, 200)
  t.ok(event!.bytesOut > 0)
})
