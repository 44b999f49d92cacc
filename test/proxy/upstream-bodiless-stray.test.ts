// An answer without content (a 204, a 304, any answer to HEAD) ends at its head. An upstream that writes
// content after it anyway (an application sending a body with its 204, a 304 with its page) would otherwise
// have those bytes read as the next response on the kept-alive connection: another client's request would get
// them. Each case is scripted byte for byte on a raw upstream socket:
//  a. the bytes come in the same write as the head;
//  b. they come later, while the connection is idle in the engine's pool;
//  c. they come later still, once the connection carries the next request.
// (a) and (b) close the connection and count as the upstream's error without failing the answer already
// given. (c) cannot be told from that next request's own answer in general: the bytes are taken as its answer
// only if they are a valid response head (else a 502), and an answer whose head announces content it may not
// have (Content-Length or Transfer-Encoding on a 204 or 304) does not give its connection back to the pool.
import type { Socket } from 'node:net'
import t from 'tap'
import { request } from 'undici'
import { eventually } from '../helpers/eventually.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { scriptedUpstream } from '../helpers/net.ts'
import { startTestSidecar, type TestSidecar } from '../helpers/sidecar.ts'

const ok = (body: string) => `HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n${body}`
/** a whole response as another answer's content: what a crafted body would carry */
const SMUGGLED = ok('smuggled')

async function get(url: string, method: 'GET' | 'HEAD' = 'GET') {
  try {
    const res = await request(url, { method })
    const body = await res.body.text().catch(() => undefined)
    return { status: res.statusCode, body }
  } catch {
    return { status: 0, body: undefined }
  }
}

const resets = async (sidecar: TestSidecar) =>
  metricValue(await scrape(sidecar.adminUrl), 'nhi_upstream_errors_total', { reason: 'reset' })

/** the connection (numbered from 1 by the upstream) the request for `path` came on */
const connOf = (seen: { conn: number; head: string }[], path: string) =>
  seen.find((s) => s.head.includes(` ${path} `))?.conn

t.test(
  '(a) content in the same write as a bodiless head: the connection is closed and counted',
  async (t) => {
    const glued: Record<string, string> = {
      '/a-204': `HTTP/1.1 204 No Content\r\n\r\n${SMUGGLED}`,
      '/a-304': `HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n${SMUGGLED}`,
      // to HEAD: the announced length, and then the bytes it announces
      '/a-head': 'HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody',
    }
    const up = await scriptedUpstream(t, ({ path }) => glued[path] ?? ok(`fine ${path}`))
    const sidecar = await startTestSidecar(t, { upstream: up.url })
    const cases: [string, 'GET' | 'HEAD', number][] = [
      ['/a-204', 'GET', 204],
      ['/a-304', 'GET', 304],
      ['/a-head', 'HEAD', 200],
    ]
    for (const [path, method, status] of cases) {
      t.same(await get(`${sidecar.proxyUrl}${path}`, method), { status, body: '' }, `${path}: answered whole`)
      t.same(
        await get(`${sidecar.proxyUrl}/after${path}`),
        { status: 200, body: `fine /after${path}` },
        `${path}: the next request gets its own answer`,
      )
      t.not(connOf(up.seen, `/after${path}`), connOf(up.seen, path), `${path}: on a new connection`)
    }
    const counted = await eventually(async () => ((await resets(sidecar)) >= 3 ? resets(sidecar) : false), {
      what: 'three resets counted',
    })
    t.equal(counted, 3, 'each answer followed by bytes counts as the upstream reset it is')
    const line = await sidecar.process.waitForLog((l) => l['event'] === 'upstream_failed')
    t.equal(line['reason'], 'reset', 'logged as upstream_failed, reason reset')
    t.equal(line['code'], 'ERR_UPSTREAM_EXTRA_BYTES', 'with a code of its own')
    t.match(String(line['detail']), /after a complete response/, 'saying what came')
  },
)

t.test('(b) content written later, while the connection is idle: closed and counted', async (t) => {
  let held: Socket | undefined
  const up = await scriptedUpstream(t, ({ path, socket }) => {
    if (path === '/b-204' || path === '/b-304') {
      held = socket
      return path === '/b-204' ? 'HTTP/1.1 204 No Content\r\n\r\n' : 'HTTP/1.1 304 Not Modified\r\n\r\n'
    }
    return ok(`fine ${path}`)
  })
  const sidecar = await startTestSidecar(t, { upstream: up.url })
  for (const [path, status] of [
    ['/b-204', 204],
    ['/b-304', 304],
  ] as const) {
    held = undefined
    t.same(await get(`${sidecar.proxyUrl}${path}`), { status, body: '' }, `${path}: answered`)
    const socket = held as Socket | undefined
    t.ok(socket, `${path}: the upstream kept its socket`)
    let closed = false
    socket?.once('close', () => {
      closed = true
    })
    // the answer is complete at the client: its connection is idle in the pool now
    socket?.write(SMUGGLED)
    await eventually(() => closed, { what: `${path}: the proxy to close the connection` })
    t.pass(`${path}: the proxy closed the idle connection the bytes came on`)
    t.same(
      await get(`${sidecar.proxyUrl}/after${path}`),
      { status: 200, body: `fine /after${path}` },
      `${path}: the next request gets its own answer`,
    )
    t.not(connOf(up.seen, `/after${path}`), connOf(up.seen, path), `${path}: on a new connection`)
  }
  const counted = await eventually(async () => ((await resets(sidecar)) >= 2 ? resets(sidecar) : false), {
    what: 'two resets counted',
  })
  t.equal(counted, 2, 'bytes on an idle connection count as the upstream reset they are')
  const line = await sidecar.process.waitForLog((l) => l['event'] === 'upstream_failed')
  t.equal(line['code'], 'ERR_UPSTREAM_EXTRA_BYTES')
  t.match(String(line['detail']), /idle connection/, 'saying where they came')
})

t.test('(c) content written once the connection carries the next request', async (t) => {
  /** per upstream connection: the bytes it writes before its answer to its next request */
  const strays = new WeakMap<Socket, string>()
  const bodiless: Record<string, [head: string, later: string]> = {
    // no framing announced: the bytes can only be judged as a response head, and none of these is one
    '/c-json': ['HTTP/1.1 204 No Content\r\n\r\n', '{"for":"another client"}\n'],
    '/c-html': ['HTTP/1.1 304 Not Modified\r\n\r\n', '<html>\r\n\r\n<p>cached page</p></html>'],
    '/c-partial': ['HTTP/1.1 204 No Content\r\n\r\n', 'not yet a line'],
    // the head announces content a 204 or 304 never has: the connection is not given another request
    '/c-204-length': [`HTTP/1.1 204 No Content\r\nContent-Length: ${SMUGGLED.length}\r\n\r\n`, SMUGGLED],
    '/c-304-length': [`HTTP/1.1 304 Not Modified\r\nContent-Length: ${SMUGGLED.length}\r\n\r\n`, SMUGGLED],
    '/c-204-chunked': [
      'HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n',
      '5\r\nhello\r\n0\r\n\r\n',
    ],
  }
  const up = await scriptedUpstream(t, ({ path, socket }) => {
    const stray = strays.get(socket)
    strays.delete(socket)
    const planned = bodiless[path]
    if (planned !== undefined) strays.set(socket, planned[1])
    return (stray ?? '') + (planned?.[0] ?? ok(`fine ${path}`))
  })
  const sidecar = await startTestSidecar(t, { upstream: up.url, timeouts: { upstream: '2s' } })
  for (const path of ['/c-json', '/c-html', '/c-partial']) {
    t.equal(
      (await get(`${sidecar.proxyUrl}${path}`)).status,
      path === '/c-html' ? 304 : 204,
      `${path}: answered`,
    )
    const next = await get(`${sidecar.proxyUrl}/next${path}`)
    t.equal(next.status, 502, `${path}: the bytes are not a response head: the next request is a 502`)
    t.notMatch(
      next.body ?? '',
      /another client|cached page|not yet/,
      `${path}: none of them reached a client`,
    )
    t.same(
      await get(`${sidecar.proxyUrl}/then${path}`),
      { status: 200, body: `fine /then${path}` },
      `${path}: the one after gets its own answer`,
    )
    t.not(connOf(up.seen, `/then${path}`), connOf(up.seen, path), `${path}: on a new connection`)
  }
  for (const path of ['/c-204-length', '/c-304-length', '/c-204-chunked']) {
    // (a 304's Content-Length is passed on: undici as the client reads the body it announces as cut short)
    const status = path.startsWith('/c-304') ? 304 : 204
    t.equal((await get(`${sidecar.proxyUrl}${path}`)).status, status, `${path}: answered`)
    t.same(
      await get(`${sidecar.proxyUrl}/next${path}`),
      { status: 200, body: `fine /next${path}` },
      `${path}: the next request gets its own answer`,
    )
    t.not(connOf(up.seen, `/next${path}`), connOf(up.seen, path), `${path}: its connection was not reused`)
  }
})
