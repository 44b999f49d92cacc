// The HTTP/1.1 engine on its own, over real loopback sockets: the moments between two events of one socket
// that a test through the proxy cannot aim at.
import { createServer, type Socket } from 'node:net'
import { Readable } from 'node:stream'
import t, { type Test } from 'tap'
import { H1Pool, type H1Request, type UpstreamHandler } from '../../src/proxy/h1-pool.ts'
import { eventually } from '../helpers/eventually.ts'
import { listenUntilTeardown, scriptedUpstream } from '../helpers/net.ts'

interface Outcome {
  status: number
  body: string
  error?: string
}

function pool(t: Test, port: number, headersTimeout = 2000): H1Pool {
  const p = new H1Pool({
    host: '127.0.0.1',
    port,
    hostHeader: 'app',
    connectTimeout: 2000,
    headersTimeout,
    bodyTimeout: 2000,
    keepAliveTimeout: 4000,
  })
  t.teardown(() => p.destroy())
  return p
}

function send(p: H1Pool, request: Partial<H1Request> = {}): Promise<Outcome> {
  return new Promise((resolve) => {
    let status = 0
    let body = ''
    const handler: UpstreamHandler = {
      onConnect() {},
      onHeaders(s) {
        status = s
        return true
      },
      onData(chunk) {
        body += chunk.toString('latin1')
        return true
      },
      onComplete() {
        resolve({ status, body })
      },
      onError(err) {
        resolve({ status, body, error: (err as { code?: string }).code ?? err.message })
      },
    }
    p.dispatch({ method: 'GET', path: '/', headers: {}, body: null, ...request }, handler)
  })
}

/** the pool's idle connections (private): the test aims at the moment one is destroyed but not yet closed */
function idleSockets(p: H1Pool): Socket[] {
  return (p as unknown as { idle: { socket: Socket }[] }).idle.map((c) => c.socket)
}

t.test('a request is never written on an idle connection the pool has just destroyed', async (t) => {
  const up = await scriptedUpstream(t, ({ head, socket: s }) => {
    if (!head.startsWith('GET ')) return 'HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone'
    // bytes no request asked for: the pool destroys the idle connection on them
    setTimeout(() => s.write('noise'), 20)
    return 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'
  })
  const p = pool(t, up.port)
  t.same(await send(p), { status: 200, body: 'ok' }, 'the first answer')
  const [socket] = idleSockets(p)
  t.ok(socket, 'its connection went idle')
  // the pool reads the noise first and destroys the connection; this listener runs right after it, before the
  // socket's 'close' event (a later phase of the loop): a request arriving then, a POST that the keep-alive
  // retry does not cover, must not be written on it
  const post = await new Promise<Outcome>((resolve) => {
    socket!.once('data', () => {
      t.ok(socket!.destroyed, 'the noise destroyed the idle connection')
      resolve(
        send(p, {
          method: 'POST',
          headers: { 'content-length': '3' },
          body: Readable.from([Buffer.from('abc')]),
        }),
      )
    })
  })
  t.same(post, { status: 201, body: 'done' }, 'the POST went out on a new connection')
  t.equal(up.connections(), 2, 'two upstream connections')
  t.equal(up.seen.filter((r) => r.head.startsWith('POST ')).length, 1, 'the POST reached the upstream once')
})

t.test(
  'a request the keep-alive race takes as its pool closes (a reload let it go) is retried, not failed',
  async (t) => {
    let raced: Socket | undefined
    const up = await scriptedUpstream(t, ({ path, socket: s }) => {
      if (path !== '/raced' || raced !== undefined) return 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'
      raced = s
      return undefined
    })
    const p = pool(t, up.port)
    t.same(await send(p), { status: 200, body: 'ok' }, 'the first answer, its connection kept')
    const outcome = send(p, { path: '/raced' })
    await eventually(() => raced !== undefined, { what: 'the request on the kept connection' })
    // a reload's prune: no new request on this pool, those it has finish
    void p.close()
    // the upstream had just given up the idle connection: it closes it without an answer
    raced!.end()
    t.same(await outcome, { status: 200, body: 'ok' }, 'answered on a new connection')
    t.equal(up.connections(), 2, 'the retry opened a second connection')
    t.same(await send(p), { status: 0, body: '', error: 'UND_ERR_DESTROYED' }, 'a new request is refused')
  },
)

t.test(
  'a head that arrives a byte at a time, or 1xx after 1xx, does not move the head deadline',
  async (t) => {
    const answers: Record<string, string> = {
      '/dribble': `HTTP/1.1 200 OK\r\nX-Pad: ${'a'.repeat(40)}\r\nContent-Length: 2\r\n\r\nok`,
      '/hints': 'HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n'.repeat(60),
    }
    const up = await scriptedUpstream(t, ({ path, socket: s }) => {
      const answer = answers[path]!
      const step = answer.startsWith('HTTP/1.1 103') ? answer.length / 60 : 1
      let at = 0
      // each piece well within the deadline of the one before, the whole far past it
      const timer = setInterval(() => {
        if (s.destroyed || at >= answer.length) return clearInterval(timer)
        s.write(answer.slice(at, at + step))
        at += step
      }, 50)
      return undefined
    })
    const p = pool(t, up.port, 400)
    for (const path of Object.keys(answers)) {
      const started = Date.now()
      const outcome = await send(p, { path })
      t.same(outcome, { status: 0, body: '', error: 'UND_ERR_HEADERS_TIMEOUT' }, `${path}: headers timeout`)
      t.ok(Date.now() - started < 2000, `${path}: within the deadline's reach, not at the end of the head`)
    }
  },
)

t.test(
  'over TLS the connect deadline covers the handshake, and no request is written before it',
  async (t) => {
    // a TCP server that accepts and never answers the ClientHello
    let received = ''
    const server = createServer((s) => {
      s.on('error', () => {})
      s.on('data', (c: Buffer) => {
        received += c.toString('latin1')
      })
    })
    const p = new H1Pool({
      host: '127.0.0.1',
      port: await listenUntilTeardown(t, server),
      hostHeader: 'app',
      connectTimeout: 300,
      headersTimeout: 5000,
      bodyTimeout: 5000,
      keepAliveTimeout: 5000,
      tls: {},
    })
    t.teardown(() => p.destroy())
    const started = Date.now()
    t.same(await send(p), { status: 0, body: '', error: 'UND_ERR_CONNECT_TIMEOUT' }, 'a connect timeout')
    t.ok(Date.now() - started < 3000, 'at the connect deadline, not the headers deadline')
    t.ok(received.length > 0, 'a ClientHello reached the server')
    t.notMatch(received, /GET \/ HTTP\/1\.1/, 'the request was not written')
  },
)

/** the value the engine makes of `x-f: <raw>` sent as a response header and as a trailer, or its error code */
async function fieldBothWays(t: Test, raw: string): Promise<{ header: string; trailer: string }> {
  const up = await scriptedUpstream(t, ({ path }) =>
    path === '/header'
      ? `HTTP/1.1 200 OK\r\nX-F:${raw}\r\nContent-Length: 2\r\n\r\nok`
      : `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-f\r\n\r\n2\r\nok\r\n0\r\nX-F:${raw}\r\n\r\n`,
  )
  const p = pool(t, up.port)
  const read = (path: string) =>
    new Promise<string>((resolve) => {
      let value = '(absent)'
      p.dispatch(
        { method: 'GET', path, headers: {}, body: null },
        {
          onConnect() {},
          onHeaders(_status, rawHeaders) {
            for (let i = 0; i + 1 < rawHeaders.length; i += 2)
              if (String(rawHeaders[i]).toLowerCase() === 'x-f') value = String(rawHeaders[i + 1])
            return true
          },
          onData: () => true,
          onComplete(trailers) {
            for (let i = 0; trailers !== null && i + 1 < trailers.length; i += 2)
              if (trailers[i]!.toLowerCase() === 'x-f') value = trailers[i + 1]!
            resolve(value)
          },
          onError(err) {
            resolve(`error ${(err as { code?: string }).code}`)
          },
        },
      )
    })
  return { header: await read('/header'), trailer: await read('/trailer') }
}

t.test(
  'a trailer value is trimmed as a header value is: SP and HTAB only, other bytes judged alike',
  async (t) => {
    const cases: [name: string, raw: string, expected: string][] = [
      ['SP and HTAB around', ' \t spaced\tvalue \t ', 'spaced\tvalue'],
      // latin1 0xA0, which String.prototype.trim takes for whitespace: part of the value
      ['NBSP around', '\u00a0kept\u00a0', '\u00a0kept\u00a0'],
      ['OWS then NBSP', ' \u00a0kept\u00a0 ', '\u00a0kept\u00a0'],
      // a control character, which trim also strips: the response is malformed either way
      ['VT before', '\u000bv', 'error UND_ERR_PARSER'],
      ['FF after', ' v\u000c', 'error UND_ERR_PARSER'],
      ['CR after', ' v\r', 'error UND_ERR_PARSER'],
    ]
    for (const [name, raw, expected] of cases) {
      const seen = await fieldBothWays(t, raw)
      t.same(seen, { header: expected, trailer: expected }, `${name}: header and trailer alike`)
    }
  },
)

t.test('a length or a chunk line with bytes other than digits, SP and HTAB is malformed', async (t) => {
  const chunked = (line: string) =>
    `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n${line}\r\nok\r\n0\r\n\r\n`
  const cases: [name: string, answer: string, expected: Outcome][] = [
    // String.prototype.trim takes latin1 0xA0 for whitespace: not a digit, not OWS
    [
      'NBSP before a length',
      'HTTP/1.1 200 OK\r\nContent-Length: \u00a02\r\n\r\nok',
      { status: 0, body: '', error: 'UND_ERR_PARSER' },
    ],
    [
      'NBSP in a length list',
      'HTTP/1.1 200 OK\r\nContent-Length: 2,\u00a02\r\n\r\nok',
      { status: 0, body: '', error: 'UND_ERR_PARSER' },
    ],
    ['a bare CR after a chunk size', chunked('2\r'), { status: 200, body: '', error: 'UND_ERR_PARSER' }],
    ['a VT after a chunk size', chunked('2\u000b'), { status: 200, body: '', error: 'UND_ERR_PARSER' }],
    ['a NUL in a chunk extension', chunked('2;a\u0000b'), { status: 200, body: '', error: 'UND_ERR_PARSER' }],
    ['a bare CR in a chunk extension', chunked('2;a\rb'), { status: 200, body: '', error: 'UND_ERR_PARSER' }],
    // what stays accepted
    [
      'OWS around a length',
      'HTTP/1.1 200 OK\r\nContent-Length: \t2 , 2 \r\n\r\nok',
      { status: 200, body: 'ok' },
    ],
    ['OWS before an extension', chunked('2 \t;a=b'), { status: 200, body: 'ok' }],
  ]
  const answers = new Map(cases.map(([, answer], i) => [`/${i}`, answer]))
  const up = await scriptedUpstream(t, ({ path }) => answers.get(path))
  const p = pool(t, up.port)
  for (const [i, [name, , expected]] of cases.entries()) {
    const { status, body, error } = await send(p, { path: `/${i}` })
    t.same({ status, body, ...(error === undefined ? {} : { error }) }, expected, name)
  }
})

t.test(
  'a body is chunked when chunked is the last coding, and malformed when anything follows it',
  async (t) => {
    // each answer ends with its connection: a body read to the close would carry the chunked framing with it
    const malformed: Outcome = { status: 0, body: '', error: 'UND_ERR_PARSER' }
    const cases: [coding: string, expected: Outcome][] = [
      ['chunked', { status: 200, body: 'ok' }],
      ['gzip, chunked', { status: 200, body: 'ok' }],
      [',chunked', { status: 200, body: 'ok' }],
      // chunked applied before another coding: the body ends with the connection (RFC 9112 §6.3)
      ['chunked, gzip', { status: 200, body: '2\r\nok\r\n0\r\n\r\n' }],
      // chunked by the list rules, read to the close by llhttp: ambiguous
      ['chunked,', malformed],
      ['chunked;q=1', malformed],
      ['chunked\t', malformed],
    ]
    const up = await scriptedUpstream(t, ({ path, socket }) => {
      const [coding] = cases[Number(path.slice(1))]!
      socket.end(`HTTP/1.1 200 OK\r\nTransfer-Encoding: ${coding}\r\n\r\n2\r\nok\r\n0\r\n\r\n`)
      return undefined
    })
    const p = pool(t, up.port)
    for (const [i, [coding, expected]] of cases.entries())
      t.same(await send(p, { path: `/${i}` }), expected, JSON.stringify(coding))
  },
)

t.test(
  'an upstream that keeps an idle connection a second or less is not sent another request on it',
  async (t) => {
    const answers: Record<string, string> = {
      '/t0': 'HTTP/1.1 200 OK\r\nKeep-Alive: timeout=0\r\nContent-Length: 2\r\n\r\nok',
      '/t1': 'HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1, max=100\r\nContent-Length: 2\r\n\r\nok',
      '/t5': 'HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok',
    }
    const up = await scriptedUpstream(
      t,
      ({ path }) => answers[path] ?? 'HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext',
    )
    const p = pool(t, up.port)
    const conn = (path: string) => up.seen.find((s) => s.head.includes(`${path} `))?.conn
    for (const [path, reused] of [
      ['/t0', false],
      ['/t1', false],
      ['/t5', true],
    ] as const) {
      t.same(await send(p, { path }), { status: 200, body: 'ok' }, `${path}: answered`)
      t.same(
        await send(p, { path: `/after${path}` }),
        { status: 200, body: 'next' },
        `${path}: the next answered`,
      )
      t.equal(
        conn(`/after${path}`) === conn(path),
        reused,
        `${path}: the connection ${reused ? 'is' : 'is not'} reused`,
      )
    }
  },
)

t.test('a head with a bare LF fails when it comes, not at the headers deadline', async (t) => {
  // the upstream then waits: a head it sees as ended, which ends nowhere for a reader of CRLF lines
  const heads = [
    'HTTP/1.1 200 OK\r\nContent-Length: 2\n\r\nok',
    'HTTP/1.1 200 OK\nContent-Length: 2\r\n',
    'HTTP/1.1 200 OK\r\nX-A: b\nContent-Length: 2\r\n',
  ]
  const up = await scriptedUpstream(t, ({ path }) => heads[Number(path.slice(1))])
  const p = pool(t, up.port, 5000)
  for (const [i, head] of heads.entries()) {
    const started = Date.now()
    t.same(
      await send(p, { path: `/${i}` }),
      { status: 0, body: '', error: 'UND_ERR_PARSER' },
      JSON.stringify(head),
    )
    t.ok(Date.now() - started < 2000, `${JSON.stringify(head)}: at once`)
  }
})
