// The HTTP/1.1 engine's response framing, from the side of an upstream that gets it wrong or unusual: each
// answer is scripted byte for byte on a raw socket. An ambiguous response (Content-Length with
// Transfer-Encoding, two lengths, obs-fold, a name with a space before its colon, a head over 16 KiB, an
// interim answer that closes its connection) is a 502 and its connection is never used again; bytes an
// answer did not announce never reach another request; interim answers are skipped; a connection the
// upstream closed while idle is retried for a request that can be (no body, idempotent method), and only for
// such a request.
import t from 'tap'
import { request } from 'undici'
import { scriptedUpstream } from '../helpers/net.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

const ok = (body = 'ok') => `HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n${body}`
const bytes = (s: string) => [...Buffer.from(s, 'latin1')].map((b) => Buffer.from([b]))

async function get(url: string, init: { method?: string; body?: string } = {}) {
  try {
    const res = await request(url, { method: (init.method ?? 'GET') as 'GET', body: init.body })
    const body = await res.body.text().catch(() => undefined)
    return { status: res.statusCode, body }
  } catch {
    return { status: 0, body: undefined }
  }
}

t.test('ambiguous or malformed response heads are a 502 and their connection is dropped', async (t) => {
  const bad: Record<string, string> = {
    '/cl-te': 'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
    '/cl-differ': 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!',
    '/cl-list-differ': 'HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok!',
    '/cl-sign': 'HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok',
    '/obs-fold': 'HTTP/1.1 200 OK\r\nX-A: b\r\n  c\r\nContent-Length: 2\r\n\r\nok',
    '/space-colon': 'HTTP/1.1 200 OK\r\nX-A : b\r\nContent-Length: 2\r\n\r\nok',
    // chunked by the list rules of RFC 9110, read to the close by llhttp
    '/te-chunked-htab': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\t\r\n\r\n2\r\nok\r\n0\r\n\r\n',
    '/te-twice':
      'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
    '/ctl-in-value': 'HTTP/1.1 200 OK\r\nX-A: b\u0001c\r\nContent-Length: 2\r\n\r\nok',
    '/bare-lf': 'HTTP/1.1 200 OK\nContent-Length: 2\n\nok',
    '/101': 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n',
    // an interim answer that closes its connection is the last message on it: no final answer can follow
    '/interim-close': `HTTP/1.1 100 Continue\r\nConnection: close\r\n\r\n${ok()}`,
    '/interim-http10': `HTTP/1.0 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n${ok()}`,
    '/interim-cl-te': `HTTP/1.1 103 Early Hints\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n${ok()}`,
    '/status-099': 'HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nok',
    '/http2-line': 'HTTP/2 200\r\nContent-Length: 2\r\n\r\nok',
    '/huge-head': `HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(17 * 1024)}\r\nContent-Length: 2\r\n\r\nok`,
  }
  const up = await scriptedUpstream(t, ({ path }) => bad[path] ?? ok(`fine ${path}`))
  const sidecar = await startTestSidecar(t, { upstream: up.url, timeouts: { upstream: '2s' } })
  for (const path of Object.keys(bad)) {
    const before = up.connections()
    const r = await get(`${sidecar.proxyUrl}${path}`)
    t.equal(r.status, 502, `${path}: 502`)
    // the next request must not read what is left of the bad answer: it goes on a new connection
    const next = await get(`${sidecar.proxyUrl}/after${path}`)
    t.same(next, { status: 200, body: `fine /after${path}` }, `${path}: the next request gets its own answer`)
    const after = up.seen.find((s) => s.head.includes(`/after${path} `))
    t.ok(
      after !== undefined && after.conn > before,
      `${path}: the connection of the bad answer was not reused`,
    )
  }
})

t.test('framings that are valid reach the client whole', async (t) => {
  const chunkedWithTrailers =
    'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n' +
    '5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nx-sum: 42\r\n\r\n'
  const answers: Record<string, string | Buffer[]> = {
    '/same-length-twice': 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok',
    '/chunked': chunkedWithTrailers,
    // every byte its own read: head, chunk sizes, chunk ends and trailers split everywhere
    '/chunked-bytewise': bytes(chunkedWithTrailers),
    '/interim':
      'HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n' +
      ok('after hints'),
    '/no-reason': 'HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok',
    '/empty-204': 'HTTP/1.1 204 No Content\r\n\r\n',
  }
  const up = await scriptedUpstream(t, ({ path }) => answers[path] ?? ok(`fine ${path}`))
  const sidecar = await startTestSidecar(t, { upstream: up.url })
  t.same(
    await get(`${sidecar.proxyUrl}/same-length-twice`),
    { status: 200, body: 'ok' },
    'a repeated equal length',
  )
  t.same(
    await get(`${sidecar.proxyUrl}/chunked`),
    { status: 200, body: 'hello world' },
    'chunked with extensions',
  )
  t.same(
    await get(`${sidecar.proxyUrl}/chunked-bytewise`),
    { status: 200, body: 'hello world' },
    'chunked, one byte per read',
  )
  t.same(
    await get(`${sidecar.proxyUrl}/interim`),
    { status: 200, body: 'after hints' },
    '1xx answers skipped',
  )
  t.same(
    await get(`${sidecar.proxyUrl}/no-reason`),
    { status: 200, body: 'ok' },
    'a status line without reason',
  )
  t.same(await get(`${sidecar.proxyUrl}/empty-204`), { status: 204, body: '' }, 'a 204')
  // all of them on one connection: each ended where its framing said
  t.equal(up.connections(), 1, 'one upstream connection carried every answer')

  // HEAD: the announced length has no bytes behind it; the connection is not reused (as undici does, for
  // servers that send a body anyway)
  const head = await request(`${sidecar.proxyUrl}/head`, { method: 'HEAD' })
  await head.body.dump()
  t.equal(head.statusCode, 200, 'HEAD answered')
  t.equal(head.headers['content-length'], `${'fine /head'.length}`, 'HEAD keeps the announced length')
  const headSeen = up.seen.find((s) => s.head.startsWith('HEAD '))
  t.match(headSeen?.head ?? '', /\r\nconnection: close(\r\n|$)/, 'HEAD asks the upstream to close')
})

t.test('a body that ends with the connection, and bytes an answer did not announce', async (t) => {
  const up = await scriptedUpstream(t, ({ path, socket }) => {
    if (path === '/until-close') {
      socket.end('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it')
      return undefined
    }
    // a second, unasked answer glued to the first: it must reach no one
    if (path === '/glued') return `${ok('first')}${ok('smuggled')}`
    if (path === '/idle-noise') {
      setTimeout(() => socket.write(ok('noise')), 50)
      return ok('quiet')
    }
    return ok(`fine ${path}`)
  })
  const sidecar = await startTestSidecar(t, { upstream: up.url })
  t.same(
    await get(`${sidecar.proxyUrl}/until-close`),
    { status: 200, body: 'all of it' },
    'close-delimited body',
  )
  t.same(await get(`${sidecar.proxyUrl}/glued`), { status: 200, body: 'first' }, 'the announced answer only')
  t.same(
    await get(`${sidecar.proxyUrl}/next`),
    { status: 200, body: 'fine /next' },
    'the glued answer reached no one',
  )
  t.same(
    await get(`${sidecar.proxyUrl}/idle-noise`),
    { status: 200, body: 'quiet' },
    'the answer before the noise',
  )
  // wait for the noise to have been sent, then ask again: not "noise"
  await new Promise((r) => setTimeout(r, 150))
  t.same(
    await get(`${sidecar.proxyUrl}/later`),
    { status: 200, body: 'fine /later' },
    'noise on an idle connection reached no one',
  )
})

t.test('an upstream that closes a kept-alive connection as a request goes out on it', async (t) => {
  // every connection answers its first request, then closes when the second arrives, without answering
  const up = await scriptedUpstream(t, ({ path, nth, socket }) => {
    if (nth >= 2) {
      socket.destroy()
      return undefined
    }
    return ok(`fine ${path}`)
  })
  const sidecar = await startTestSidecar(t, { upstream: up.url })
  t.same(await get(`${sidecar.proxyUrl}/one`), { status: 200, body: 'fine /one' }, 'first request')
  t.same(
    await get(`${sidecar.proxyUrl}/two`),
    { status: 200, body: 'fine /two' },
    'a GET is sent again on a new connection',
  )
  const two = up.seen.filter((s) => s.head.includes('/two '))
  t.equal(two.length, 2, 'the GET reached the upstream twice: the closed connection, then a new one')
  const post = await get(`${sidecar.proxyUrl}/three`, { method: 'POST', body: 'once' })
  t.equal(post.status, 502, 'a POST with a body is not sent again')
  t.equal(up.seen.filter((s) => s.head.includes('/three ')).length, 1, 'the POST reached the upstream once')
})

t.test('the request head the upstream receives', async (t) => {
  const up = await scriptedUpstream(t, ({ path }) => ok(`fine ${path}`))
  const sidecar = await startTestSidecar(t, { upstream: up.url })
  await get(`${sidecar.proxyUrl}/post-empty`, { method: 'POST' })
  await get(`${sidecar.proxyUrl}/post-body`, { method: 'POST', body: 'abc' })
  const head = (path: string) => up.seen.find((s) => s.head.includes(`${path} `))?.head ?? ''
  t.match(
    head('/post-empty'),
    /^POST \/post-empty HTTP\/1\.1\r\nhost: [^\r]+\r\nconnection: keep-alive\r\n/,
    'request line, host, connection first',
  )
  t.match(head('/post-empty'), /\r\ncontent-length: 0$/, 'a POST without a body says so')
  t.match(head('/post-body'), /\r\ncontent-length: 3$/, 'the body length comes last')
  t.notMatch(head('/post-body'), /transfer-encoding/i, 'no chunked coding for a body of known length')
})

t.test("an HTTP/1.0 answer's Connection: close wins over a later keep-alive", async (t) => {
  const up = await scriptedUpstream(t, ({ path }) =>
    path === '/http10'
      ? 'HTTP/1.0 200 OK\r\nConnection: close\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok'
      : ok(`fine ${path}`),
  )
  const sidecar = await startTestSidecar(t, { upstream: up.url })
  t.same(await get(`${sidecar.proxyUrl}/http10`), { status: 200, body: 'ok' }, 'answered')
  t.same(
    await get(`${sidecar.proxyUrl}/next`),
    { status: 200, body: 'fine /next' },
    'the next request answered',
  )
  const conn = (path: string) => up.seen.find((s) => s.head.includes(`${path} `))?.conn
  t.not(conn('/next'), conn('/http10'), 'the next request went on a new connection')
})

t.test('an HTTP/1.0 answer with Transfer-Encoding is read, and its connection is not reused', async (t) => {
  // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding may have crossed a hop that did not decode it, and
  // its sender may hold back bytes a reused connection would hand the next request
  const up = await scriptedUpstream(t, ({ path }) =>
    path === '/http10-chunked'
      ? 'HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n'
      : ok(`fine ${path}`),
  )
  const sidecar = await startTestSidecar(t, { upstream: up.url })
  t.same(await get(`${sidecar.proxyUrl}/http10-chunked`), { status: 200, body: 'ok' }, 'answered')
  t.same(
    await get(`${sidecar.proxyUrl}/next`),
    { status: 200, body: 'fine /next' },
    'the next request answered',
  )
  const conn = (path: string) => up.seen.find((s) => s.head.includes(`${path} `))?.conn
  t.not(conn('/next'), conn('/http10-chunked'), 'the next request went on a new connection')
})

t.test('timeouts.upstream: 0 and timeouts.idle: 0 are no deadline, not an immediate one', async (t) => {
  const up = await scriptedUpstream(t, ({ socket }) => {
    // the head, then the body, each after a pause
    setTimeout(() => socket.write('HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nsl'), 300)
    setTimeout(() => socket.write('ow'), 600)
    return undefined
  })
  const sidecar = await startTestSidecar(t, { upstream: up.url, timeouts: { upstream: 0, idle: 0 } })
  t.same(await get(`${sidecar.proxyUrl}/slow`), { status: 200, body: 'slow' }, 'a slow answer still arrives')
})
