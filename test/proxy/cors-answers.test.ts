// The answers the proxy gives a browser's cross-origin request on its own behalf (a policy deny, a gRPC-Web
// status, an upstream it cannot reach) carry the CORS fields the upstream itself answered that Origin with, so
// the page reads the real answer instead of an opaque network error. Nothing is invented: an origin the
// upstream never allowed, or answered without CORS, gets no CORS field, `*` stays `*` and never goes with
// credentials, `grpc-status` is exposed only where the upstream exposed it, and a reload forgets what was
// learnt. The built proxy runs in front of a real upstream that serves CORS as an API for an SPA does.
import { once } from 'node:events'
import {
  createServer,
  type IncomingHttpHeaders,
  type IncomingMessage,
  request,
  type Server,
  type ServerResponse,
} from 'node:http'
import {
  connect,
  createServer as createH2cServer,
  type Http2ServerRequest,
  type Http2ServerResponse,
} from 'node:http2'
import t, { type Test } from 'tap'
import { launchChromium, skipWithoutChromium } from '../helpers/browser.ts'
import { type Answer, exchange } from '../helpers/http.ts'
import { listenUntilTeardown } from '../helpers/net.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

/** the SPA's origin: allowed with credentials, `grpc-status` and `grpc-message` exposed */
const APP = 'https://app.example'
/** allowed as `*` (and a credentials flag a browser would refuse with it), nothing exposed */
const PUBLIC = 'https://public.example'
/** answered without any CORS field */
const QUIET = 'https://quiet.example'
/** answered with the SPA's origin, as an upstream with one fixed allowed origin does */
const EVIL = 'https://evil.example'
const NEVER = 'https://never.example'

const GRPC_WEB = 'application/grpc-web+proto'

/**
 * An API that serves CORS per Origin, preflights included, over node:http or node:http2's compatibility API;
 * `allowed` are treated as APP is. /demo.Echo/Silent is never answered.
 */
function corsHandler(allowed: readonly string[] = [APP]) {
  return (req: IncomingMessage | Http2ServerRequest, res: ServerResponse | Http2ServerResponse): void => {
    req.resume()
    if (req.url === '/demo.Echo/Silent') return
    const origin = req.headers.origin
    const fields: Record<string, string> = { vary: 'Origin' }
    if (origin !== undefined && allowed.includes(origin)) {
      fields['access-control-allow-origin'] = origin
      fields['access-control-allow-credentials'] = 'true'
    } else if (origin === PUBLIC) {
      fields['access-control-allow-origin'] = '*'
      fields['access-control-allow-credentials'] = 'true'
    } else if (origin === EVIL) fields['access-control-allow-origin'] = APP
    if (req.method === 'OPTIONS' && req.headers['access-control-request-method'] !== undefined) {
      if (fields['access-control-allow-origin'] !== undefined) {
        fields['access-control-allow-methods'] = 'GET, POST'
        fields['access-control-allow-headers'] = 'content-type, x-grpc-web, x-user-agent'
      }
      res.writeHead(204, fields)
      res.end()
      return
    }
    if (fields['access-control-allow-credentials'] !== undefined && origin !== PUBLIC)
      fields['access-control-expose-headers'] = 'grpc-status, grpc-message'
    if (req.headers['content-type'] === GRPC_WEB) {
      res.writeHead(200, { ...fields, 'content-type': GRPC_WEB, 'grpc-status': '0', 'content-length': '0' })
      res.end()
      return
    }
    res.writeHead(200, { ...fields, 'content-type': 'application/json' })
    res.end('{"ok":true}')
  }
}

function corsUpstream(allowed?: readonly string[]): Server {
  return createServer(corsHandler(allowed))
}

const POLICY = {
  mode: 'enforce',
  rules: [
    // no caller has this identity: every request there is denied (preflights, OPTIONS, are not covered)
    { route: '/admin/**', methods: ['GET', 'POST'], allow: [{ identity: 'svc/ops' }] },
    { route: '/demo.Echo/Admin', methods: ['POST'], allow: [{ identity: 'svc/ops' }] },
  ],
}

/** the built proxy, enforcing POLICY, in front of `upstream` */
async function sidecarBefore(t: Test, upstream: Server, scheme = 'http') {
  const upPort = await listenUntilTeardown(t, upstream)
  const config = { service: 'web', upstream: `${scheme}://127.0.0.1:${upPort}`, policy: POLICY }
  const sidecar = await startTestSidecar(t, config)
  return { sidecar, config, port: sidecar.proxyAddress.port }
}

function h1(port: number, method: string, path: string, headers: Record<string, string>): Promise<Answer> {
  return exchange({ host: '127.0.0.1', port, method, path, headers })
}

const get = (port: number, path: string, origin?: string) =>
  h1(port, 'GET', path, origin === undefined ? {} : { origin })
const preflight = (port: number, path: string, origin: string) =>
  h1(port, 'OPTIONS', path, { origin, 'access-control-request-method': 'POST' })
const grpcWeb = (port: number, path: string, origin: string, extra: Record<string, string> = {}) =>
  h1(port, 'POST', path, { origin, 'content-type': GRPC_WEB, 'x-grpc-web': '1', ...extra })

/**
 * A chunked POST that announces a trailer section: the proxy forwards it through node:http, not through its
 * HTTP/1.1 engine
 */
function withTrailers(port: number, path: string, headers: Record<string, string>): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port,
        method: 'POST',
        path,
        agent: false,
        headers: { ...headers, 'transfer-encoding': 'chunked', trailer: 'x-checksum' },
      },
      (res) => {
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (c: string) => {
          body += c
        })
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }))
        res.on('error', reject)
      },
    )
    req.on('error', reject)
    req.write('x')
    req.addTrailers({ 'x-checksum': 'abc123' })
    req.end()
  })
}

/** one GET on a prior-knowledge h2c connection: its status and header fields */
async function h2Get(port: number, path: string, origin: string): Promise<Answer> {
  const session = connect(`http://127.0.0.1:${port}`)
  session.on('error', () => {})
  try {
    const stream = session.request({ ':path': path, origin })
    const [headers] = (await once(stream, 'response')) as [IncomingHttpHeaders & { ':status'?: number }]
    stream.resume()
    await once(stream, 'end')
    return { status: Number(headers[':status']), headers, body: '' }
  } finally {
    session.close()
  }
}

/** the CORS fields of an answer, for comparing whole */
function corsOf(a: Answer): Record<string, string> {
  const out: Record<string, string> = {}
  for (const [name, value] of Object.entries(a.headers))
    if (name.startsWith('access-control-') && typeof value === 'string') out[name] = value
  return out
}

const varies = (a: Answer) =>
  String(a.headers.vary ?? '')
    .split(',')
    .some((v) => v.trim().toLowerCase() === 'origin')

const APP_GRANT = {
  'access-control-allow-origin': APP,
  'access-control-allow-credentials': 'true',
  'access-control-expose-headers': 'grpc-status, grpc-message',
}

t.test('a policy deny carries the CORS fields the upstream answered the origin with', async (t) => {
  const { port } = await sidecarBefore(t, corsUpstream())

  const first = await get(port, '/admin/users', APP)
  t.equal(first.status, 403, 'denied')
  t.same(corsOf(first), {}, 'before the upstream answered the origin: no CORS field is invented')

  const pre = await preflight(port, '/api/users', APP)
  t.equal(pre.status, 204, 'the preflight is forwarded and answered by the upstream')
  const afterPreflight = await get(port, '/admin/users', APP)
  t.equal(afterPreflight.status, 403)
  t.same(
    corsOf(afterPreflight),
    { 'access-control-allow-origin': APP, 'access-control-allow-credentials': 'true' },
    'learnt from the preflight: the origin and the credentials flag, as the upstream sent them',
  )
  t.ok(varies(afterPreflight), 'Vary: Origin')
  t.equal(afterPreflight.headers['content-type'], 'application/json', 'still the JSON deny')
  t.match(JSON.parse(afterPreflight.body), { error: 'forbidden' })

  t.equal((await get(port, '/api/users', APP)).status, 200, 'an actual request to the upstream')
  const denied = await get(port, '/admin/users', APP)
  t.same(corsOf(denied), APP_GRANT, "the actual answer's expose list too")
  t.ok(varies(denied), 'Vary: Origin')

  const overH2 = await h2Get(port, '/admin/users', APP)
  t.equal(overH2.status, 403, 'HTTP/2: denied')
  t.same(corsOf(overH2), APP_GRANT, 'HTTP/2: the same CORS fields')
  t.ok(varies(overH2), 'HTTP/2: Vary: Origin')

  t.same(corsOf(await get(port, '/admin/users')), {}, 'a request without Origin: none')

  t.equal((await get(port, '/api/users', QUIET)).status, 200)
  const quiet = await get(port, '/admin/users', QUIET)
  t.equal(quiet.status, 403)
  t.same(corsOf(quiet), {}, 'an origin the upstream answered without CORS: none')
  t.notOk(varies(quiet), 'and nothing else changed')

  await get(port, '/api/users', EVIL)
  t.same(corsOf(await get(port, '/admin/users', EVIL)), {}, 'an origin the upstream named another for: none')
  t.same(corsOf(await get(port, '/admin/users', NEVER)), {}, 'an origin never seen: none')

  await get(port, '/api/users', PUBLIC)
  const wildcard = await get(port, '/admin/users', PUBLIC)
  t.same(
    corsOf(wildcard),
    { 'access-control-allow-origin': '*' },
    '`*` as `*`, without the credentials flag the upstream sent with it',
  )
})

t.test('gRPC-Web answers of the proxy carry them, exposing what the upstream exposed', async (t) => {
  const upstream = corsUpstream()
  const { port } = await sidecarBefore(t, upstream)

  for (const origin of [APP, PUBLIC, QUIET]) {
    t.equal((await preflight(port, '/demo.Echo/Say', origin)).status, 204)
    t.equal((await grpcWeb(port, '/demo.Echo/Say', origin)).headers['grpc-status'], '0', 'a call answered')
  }
  const denied = await grpcWeb(port, '/demo.Echo/Admin', APP)
  t.equal(denied.status, 200, 'deny: HTTP 200')
  t.equal(denied.headers['grpc-status'], '7', 'PERMISSION_DENIED, trailers-only')
  t.same(
    corsOf(denied),
    APP_GRANT,
    'the CORS fields, grpc-status and grpc-message exposed as the upstream did',
  )
  t.ok(varies(denied), 'Vary: Origin')

  const wildcard = await grpcWeb(port, '/demo.Echo/Admin', PUBLIC)
  t.equal(wildcard.headers['grpc-status'], '7')
  t.same(
    corsOf(wildcard),
    { 'access-control-allow-origin': '*' },
    'nothing exposed the upstream did not expose',
  )

  t.same(corsOf(await grpcWeb(port, '/demo.Echo/Admin', QUIET)), {}, 'the origin without CORS: none')

  // the upstream goes down: what the proxy answers in its place
  upstream.closeAllConnections()
  await new Promise((resolve) => upstream.close(resolve))
  const down = await grpcWeb(port, '/demo.Echo/Say', APP)
  t.equal(down.headers['grpc-status'], '14', 'upstream down: UNAVAILABLE')
  t.same(corsOf(down), APP_GRANT, 'with the CORS fields the upstream gave the origin')
  const bad = await get(port, '/api/users', APP)
  t.equal(bad.status, 502, 'a plain request: 502')
  t.same(corsOf(bad), APP_GRANT, 'with them too')
  t.same(corsOf(await grpcWeb(port, '/demo.Echo/Say', QUIET)), {}, 'the origin without CORS: none')
})

for (const h2 of [false, true]) {
  const over = h2 ? 'an h2c upstream' : 'an HTTP/1.1 upstream'
  t.test(`learnt over ${over}, carried by the answer at a call's grpc-timeout`, async (t) => {
    const handler = corsHandler()
    const upstream = h2 ? (createH2cServer(handler) as unknown as Server) : createServer(handler)
    const { port } = await sidecarBefore(t, upstream, h2 ? 'h2c' : 'http')
    t.equal((await get(port, '/api/users', APP)).status, 200)
    t.same(corsOf(await get(port, '/admin/users', APP)), APP_GRANT, 'a deny')
    const late = await grpcWeb(port, '/demo.Echo/Silent', APP, { 'grpc-timeout': '300m' })
    t.equal(late.headers['grpc-status'], '4', 'DEADLINE_EXCEEDED before the upstream answered')
    t.same(corsOf(late), APP_GRANT, 'with the CORS fields')
    const quiet = await grpcWeb(port, '/demo.Echo/Silent', QUIET, { 'grpc-timeout': '300m' })
    t.equal(quiet.headers['grpc-status'], '4')
    t.same(corsOf(quiet), {}, 'the origin without CORS: none')
  })
}

t.test('learnt from requests with trailers, carried by the answer at their grpc-timeout', async (t) => {
  const { port } = await sidecarBefore(t, corsUpstream())
  const forwarded = await withTrailers(port, '/api/users', { origin: APP })
  t.equal(forwarded.status, 200, 'the upstream answered')
  t.same(corsOf(await get(port, '/admin/users', APP)), APP_GRANT, 'a deny')
  const late = await withTrailers(port, '/demo.Echo/Silent', {
    origin: APP,
    'content-type': GRPC_WEB,
    'x-grpc-web': '1',
    'grpc-timeout': '300m',
  })
  t.equal(late.headers['grpc-status'], '4', 'DEADLINE_EXCEEDED before the upstream answered')
  t.same(corsOf(late), APP_GRANT, 'with the CORS fields')
})

t.test('a reload starts with nothing learnt', async (t) => {
  const { sidecar, config, port } = await sidecarBefore(t, corsUpstream())
  await get(port, '/api/users', APP)
  t.same(corsOf(await get(port, '/admin/users', APP)), APP_GRANT, 'learnt')
  t.ok(await sidecar.reload({ ...config, service: 'web-reloaded' }), 'reloaded')
  t.same(corsOf(await get(port, '/admin/users', APP)), {}, 'after the reload: forgotten')
  await get(port, '/api/users', APP)
  t.same(corsOf(await get(port, '/admin/users', APP)), APP_GRANT, 'learnt again from the next answer')
})

t.test(
  'a page on another origin reads the status of a denied call',
  { skip: skipWithoutChromium },
  async (t) => {
    const page = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/html' })
      res.end('<!doctype html><title>spa</title>')
    })
    const pagePort = await listenUntilTeardown(t, page)
    // the page and the proxy are on loopback both, on other ports: other origins
    const pageOrigin = `http://127.0.0.1:${pagePort}`
    const { sidecar } = await sidecarBefore(t, corsUpstream([pageOrigin]))
    const browser = await launchChromium()
    t.teardown(() => browser.close())
    const tab = await browser.newPage()
    await tab.goto(pageOrigin)
    const read = await tab.evaluate(async (proxy) => {
      const status = (r: Response) => ({ status: r.status, grpcStatus: r.headers.get('grpc-status') })
      const failed = (e: Error) => ({ error: e.message })
      const api = await fetch(`${proxy}/api/users`).then(status, failed)
      const denied = await fetch(`${proxy}/admin/users`).then(status, failed)
      const init = {
        method: 'POST',
        headers: { 'content-type': 'application/grpc-web+proto', 'x-grpc-web': '1' },
      }
      const call = await fetch(`${proxy}/demo.Echo/Say`, init).then(status, failed)
      const deniedCall = await fetch(`${proxy}/demo.Echo/Admin`, init).then(status, failed)
      return { api, denied, call, deniedCall }
    }, sidecar.proxyUrl)
    t.same(read.api, { status: 200, grpcStatus: null }, 'the API answers the page')
    t.same(read.denied, { status: 403, grpcStatus: null }, 'the page reads the 403 of a deny')
    t.same(read.call, { status: 200, grpcStatus: '0' }, 'a gRPC-Web call after its preflight')
    t.same(
      read.deniedCall,
      { status: 200, grpcStatus: '7' },
      'the page reads PERMISSION_DENIED of a denied call',
    )
  },
)
