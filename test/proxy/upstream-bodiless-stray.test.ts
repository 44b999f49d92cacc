// An answer without content (a 204, a 304, any answer to HEAD) ends at its head. An upstream that writes
// content after it anyway (an application sending a body with its 204, a 304 with its page) would otherwise
// have those bytes read as the next response on the kept-alive connection: another client's request would get
// them. Each case is scripted byte for byte on a raw upstream socket:
//  a. the bytes come in the same write as the head;
//  b. they come later, while the connection is idle in the engine's pool.
// Both close the connection and count as the upstream's error without failing the answer already given.
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
