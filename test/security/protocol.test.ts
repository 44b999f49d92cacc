// Protocol abuse over raw sockets: smuggling, size limits, slow clients, idle floods, clients that stop
// reading, websocket misuse. After each abuse the proxy must still serve a normal request.
import { once } from 'node:events'
import { connect as h2connect } from 'node:http2'
import { connect, type Socket } from 'node:net'
import pino from 'pino'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { eventually, stillTrueFor } from '../helpers/eventually.ts'
import { metricValue, type Sample, scrape, scrapeUntil } from '../helpers/metrics.ts'
import { rawClient } from '../helpers/net.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const _silent = pino({ level: 'silent' })

interface Exchange {
  text: string
  closed: boolean
  ms: number
}

function open(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1', () => resolve(s))
    s.on('error', reject)
  })
}

/** Writes `data`, then collects whatever comes back until the peer closes or `waitMs` passes. */
async function exchange(port: number, data: string | string[], waitMs = 1500, gapMs = 0): Promise<Exchange> {
  const started = Date.now()
  const s = await open(port)
  let text = ''
  let closed = false
  s.on('data', (c: Buffer) => {
    text += c.toString('latin1')
  })
  s.on('error', () => {})
  const done = new Promise<void>((resolve) => {
    s.on('close', () => {
      closed = true
      resolve()
    })
    setTimeout(resolve, waitMs)
  })
  for (const chunk of Array.isArray(data) ? data : [data]) {
    if (closed) break
    s.write(chunk)
    if (gapMs) await new Promise((r) => setTimeout(r, gapMs))
  }
  await done
  s.destroy()
  return { text, closed, ms: Date.now() - started }
}

const statusOf = (text: string) => Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0)

t.test('raw-socket abuse leaves the proxy serving', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const sidecar = await startTestSidecar(t, {
    service: 'orders',
    upstream: upstream.url,
    timeouts: { headers: '1s', request: '2s', upstream: '2s' },
    limits: { maxHeaderBytes: 8192 },
  })
  const port = sidecar.proxyAddress.port
  const proxy = `http://127.0.0.1:${port}`
  const stillServing = async (t: Test, what: string) => {
    const res = await request(`${proxy}/echo`)
    await res.body.dump()
    t.equal(res.statusCode, 200, `still serving after ${what}`)
  }
  const smuggled = () => upstream.received.filter((r) => r.url.startsWith('/smuggled')).length

  t.test('request smuggling: ambiguous framing is refused and nothing is smuggled', async (t) => {
    const smuggle = 'GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n'
    const body = `0\r\n\r\n${smuggle}`
    const cases: Array<[string, string]> = [
      [
        'CL + TE',
        `POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: ${body.length}\r\nTransfer-Encoding: chunked\r\n\r\n${body}`,
      ],
      [
        'duplicate Content-Length',
        `POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: ${5 + smuggle.length}\r\n\r\nhello${smuggle}`,
      ],
      [
        'TE: xchunked',
        `POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: ${body.length}\r\nTransfer-Encoding: xchunked\r\n\r\n${body}`,
      ],
      [
        'TE with leading space',
        `POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: ${body.length}\r\nTransfer-Encoding:  chunked\r\n\r\n${body}`,
      ],
      [
        'TE with a tab',
        `POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: ${body.length}\r\nTransfer-Encoding:\tchunked\r\n\r\n${body}`,
      ],
      [
        'TE chunked, identity',
        `POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n${body}`,
      ],
      [
        'obs-fold TE',
        `POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: ${body.length}\r\nTransfer-Encoding: x\r\n chunked\r\n\r\n${body}`,
      ],
      [
        'bare LF line endings',
        `POST /echo HTTP/1.1\nHost: x\nContent-Length: 0\nX: a\rTransfer-Encoding: chunked\n\n${body}`,
      ],
    ]
    for (const [name, raw] of cases) {
      const before = smuggled()
      const r = await exchange(port, raw, 800)
      const statuses = [...r.text.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => Number(m[1]))
      t.ok(statuses.length <= 1, `${name}: at most one response on the connection`, { statuses })
      t.equal(smuggled() - before, 0, `${name}: no smuggled request reached the upstream`)
      if (
        [
          'CL + TE',
          'duplicate Content-Length',
          'TE: xchunked',
          'TE with leading space',
          'TE with a tab',
        ].includes(name)
      ) {
        t.equal(statuses[0], 400, `${name}: refused with 400`)
      } else if (statuses[0] !== undefined && statuses[0] !== 400) {
        t.equal(statuses[0], 200, `${name}: either refused (400) or one well-framed request`)
      }
    }
    await stillServing(t, 'smuggling attempts')
  })

  t.test(
    'what a client pipelines behind a request that closes its connection is dropped, and that request answered',
    async (t) => {
      // RFC 9112 §9.6: the request that says close is answered, the connection closed after it, and nothing
      // after it forwarded. Node's parser refuses the bytes after it, and its 400 went out in place of the
      // answer, for a request the upstream may have carried out
      const cases: [string, string, boolean][] = [
        [
          'Connection: close',
          'POST /echo?closing HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello',
          false,
        ],
        [
          'HTTP/1.0 without keep-alive',
          'POST /echo?closing HTTP/1.0\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello',
          false,
        ],
        // the bytes come while the answer is still on its way
        [
          'Connection: close, then more',
          'GET /slow/300?closing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
          true,
        ],
      ]
      for (const [name, closing, later] of cases) {
        const before = upstream.received.length
        const behind = 'GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n'
        const client = await rawClient(port)
        if (later) {
          client.socket.write(closing)
          await eventually(() => upstream.received.length > before, {
            what: `${name}: the upstream to have it`,
          })
          client.socket.write(behind)
        } else client.socket.write(`${closing}${behind}`)
        await eventually(() => client.closed(), { what: `${name}: the connection to close after the answer` })
        const statuses = [...client.text().matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => Number(m[1]))
        t.same(statuses, [200], `${name}: one answer, the upstream's`)
        t.match(
          client.text(),
          later ? /slow ok$/ : /"url":"\/echo\?closing"/,
          `${name}: to the request that closed`,
        )
        t.same(
          upstream.received.slice(before).map((r) => r.url),
          [later ? '/slow/300?closing' : '/echo?closing'],
          `${name}: forwarded once, and nothing after it`,
        )
      }
      await stillServing(t, 'requests behind a close')
    },
  )

  t.test('header and URL size limits', async (t) => {
    const bigHeader = await exchange(
      port,
      `GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(10_000)}\r\n\r\n`,
    )
    t.equal(statusOf(bigHeader.text), 431, 'header over maxHeaderBytes → 431')
    const bigUrl = await exchange(port, `GET /echo?${'q'.repeat(10_000)} HTTP/1.1\r\nHost: x\r\n\r\n`)
    t.ok([414, 431].includes(statusOf(bigUrl.text)), 'URL over the limit → 414/431', {
      status: statusOf(bigUrl.text),
    })
    t.equal(upstream.received.filter((r) => r.url.length > 9000).length, 0, 'oversized URL not forwarded')
    await stillServing(t, 'oversized requests')
  })

  t.test('slowloris: headers a byte at a time are cut off after timeouts.headers', async (t) => {
    const head =
      'GET /echo HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n'
    const r = await exchange(port, head.split(''), 6000, 150)
    t.ok(r.closed, 'connection closed', { ms: r.ms })
    t.ok(r.ms < 4000, 'within a few seconds of the 1 s headers timeout', { ms: r.ms })
    t.notOk(statusOf(r.text) === 200, 'the slow request was never answered as normal')
    await stillServing(t, 'slowloris')
  })

  t.test('body trickle is cut off after timeouts.request', async (t) => {
    const head = 'POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n'
    const r = await exchange(port, [head, ...'x'.repeat(60).split('')], 8000, 100)
    t.ok(r.closed, 'connection closed', { ms: r.ms })
    t.ok(r.ms < 6000, 'within a few seconds of the 2 s request timeout', { ms: r.ms })
    await stillServing(t, 'body trickle')
  })

  t.test(
    'HTTP/2: streams whose body never ends, or trickles, are answered 408 after timeouts.request',
    async (t) => {
      const timedOut = (s: Sample[]) => metricValue(s, 'nhi_requests_total', { method: 'POST', code: '408' })
      const before = timedOut(await scrape(sidecar.adminUrl))
      const session = h2connect(proxy)
      session.on('error', () => {})
      t.teardown(() => session.destroy())
      const started = Date.now()
      const open = (path: string, headers: Record<string, string> = {}) => {
        const stream = session.request({ ':method': 'POST', ':path': path, ...headers }, { endStream: false })
        stream.on('error', () => {})
        stream.resume()
        const response = once(stream, 'response').then(([h]) => h as Record<string, unknown>)
        const status = response.then((h) => Number(h[':status']))
        const closed = once(stream, 'close').then(() => Date.now() - started)
        return { stream, response, status, closed }
      }
      // one silent (HEADERS without END_STREAM, then nothing), one fed a byte every 100 ms, and a silent gRPC
      // call, whose client reads a grpc-status rather than an HTTP status
      const silent = open('/echo?h2-silent')
      const trickle = open('/echo?h2-trickle')
      const call = open('/shop.Orders/Upload', { 'content-type': 'application/grpc', te: 'trailers' })
      const feed = setInterval(() => {
        if (!trickle.stream.destroyed) trickle.stream.write('x')
      }, 100)
      t.teardown(() => clearInterval(feed))
      t.equal(await silent.status, 408, 'the silent stream is answered 408')
      t.equal(await trickle.status, 408, 'the trickling stream is answered 408')
      t.match(
        await call.response,
        { ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '4' },
        'the gRPC call ends with DEADLINE_EXCEEDED',
      )
      const ms = Math.max(await silent.closed, await trickle.closed, await call.closed)
      t.ok(ms < 10_000, 'the streams closed within seconds of the 2 s request timeout', { ms })
      const grpcTimedOut = await scrapeUntil(
        sidecar.adminUrl,
        (s) => metricValue(s, 'nhi_grpc_requests_total', { grpc_status: '4' }) >= 1,
        'the timed-out gRPC call recorded',
      )
      t.equal(
        metricValue(grpcTimedOut, 'nhi_grpc_requests_total', { grpc_status: '4' }),
        1,
        'recorded as DEADLINE_EXCEEDED',
      )
      const samples = await scrapeUntil(
        sidecar.adminUrl,
        (s) => timedOut(s) - before >= 2,
        'the two timed-out HTTP/2 requests recorded as 408',
      )
      t.equal(timedOut(samples) - before, 2, 'both recorded as 408')
      // the connection itself goes on: a complete request on it is answered
      const ok = session.request({ ':method': 'POST', ':path': '/echo' })
      ok.on('error', () => {})
      ok.end('done')
      const [h] = await once(ok, 'response')
      ok.resume()
      t.equal(Number((h as Record<string, unknown>)[':status']), 200, 'the same connection still serves')
      await stillServing(t, 'HTTP/2 slow streams')
    },
  )

  t.test('500 idle connections do not starve normal clients', async (t) => {
    const idle = await Promise.all(Array.from({ length: 500 }, () => open(port)))
    for (const s of idle) s.on('error', () => {})
    const started = Date.now()
    await stillServing(t, '500 idle connections')
    t.ok(Date.now() - started < 2000, 'a normal request is answered promptly')
    for (const s of idle) s.destroy()
  })

  t.test('a client that stops reading a large response does not make the proxy buffer it', async (t) => {
    const size = 256 * 1024 * 1024
    const s = await open(port)
    s.on('error', () => {})
    s.write(`GET /bytes/${size} HTTP/1.1\r\nHost: x\r\n\r\n`)
    let got = 0
    s.once('data', (c: Buffer) => {
      got += c.length
      s.pause()
    })
    const rssBefore = process.memoryUsage().rss
    await eventually(() => got > 0, { what: 'the response to start' })
    // a negative assertion: for 2.5 s memory stays far below the unread body
    const bounded = await stillTrueFor(() => process.memoryUsage().rss - rssBefore < 96 * 1024 * 1024, 2500, {
      intervalMs: 100,
    })
    const grown = process.memoryUsage().rss - rssBefore
    t.ok(bounded, 'RSS stayed bounded while the client did not read')
    t.ok(got > 0, 'the response started')
    t.ok(grown < 96 * 1024 * 1024, 'RSS grew far less than the unread body', { grownMiB: grown / 2 ** 20 })
    await stillServing(t, 'a stalled reader')
    s.destroy()
  })

  t.test(
    'a client that stops reading is disconnected after timeouts.idle, HTTP/1.1 and HTTP/2',
    async (t) => {
      // its own sidecar: a short idle time, which the other cases here do not want
      const stalled = await startTestSidecar(t, { upstream: upstream.url, timeouts: { idle: '1s' } })
      const big = 256 * 1024 * 1024
      const recorded = async () =>
        metricValue(await scrape(stalled.adminUrl), 'nhi_requests_total', { method: 'GET', route: 'other' })
      // HTTP/1.1: reads the first bytes, then nothing; the proxy's end shows once the client reads again
      const s = await open(stalled.proxyAddress.port)
      s.on('error', () => {})
      t.teardown(() => s.destroy())
      s.write(`GET /bytes/${big} HTTP/1.1\r\nHost: x\r\n\r\n`)
      await once(s, 'data')
      s.pause()
      // HTTP/2: a stream whose window the client never opens again
      const session = h2connect(stalled.proxyUrl)
      session.on('error', () => {})
      t.teardown(() => session.destroy())
      const stream = session.request({ ':path': `/bytes/${big}` })
      stream.on('error', () => {})
      await once(stream, 'response')
      stream.pause()
      // both exchanges end on the proxy (recorded) while neither client does anything
      await eventually(async () => (await recorded()) >= 2, {
        what: 'both stalled exchanges ended and recorded',
        timeoutMs: 15_000,
      })
      t.equal(await recorded(), 2, 'both recorded once')
      const closed = once(s, 'close')
      s.resume()
      await closed
      t.pass('the HTTP/1.1 connection was closed by the proxy')
      t.ok(
        stream.rstCode !== undefined || stream.destroyed || session.destroyed,
        'the HTTP/2 stream was reset',
        {
          rstCode: stream.rstCode,
        },
      )
      const res = await request(`${stalled.proxyUrl}/echo`)
      await res.body.dump()
      t.equal(res.statusCode, 200, 'the sidecar still serves')
    },
  )

  t.test('websocket abuse', async (t) => {
    const upgrade =
      'GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n' +
      'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n'
    const r = await exchange(
      port,
      [upgrade, '\u0000\u00ff garbage after upgrade \r\n\r\n'.repeat(50)],
      2500,
      50,
    )
    const status = statusOf(r.text)
    t.not(status, 101, 'no 101 from an upstream that does not speak websocket')
    t.ok(r.closed || status >= 400, 'refused or closed', { status })
    const junkUpgrade = await exchange(
      port,
      'GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: \u0001\u0002junk\r\n\r\nGARBAGE\r\n',
      1500,
    )
    t.not(statusOf(junkUpgrade.text), 101, 'junk upgrade token not switched')
    await stillServing(t, 'websocket abuse')
  })
})
