// Bytes node:http's parser refuses (garbage, a header it cannot read, a head over limits.maxHeaderBytes) behind
// valid requests an HTTP/1.1 client pipelined on the same connection: each of those requests gets its own answer,
// in order, then the refusal, then the connection closes (as nginx does), and nothing after the refused bytes is
// read as a request. The upstream carries those requests out: a client told 400 in place of their answers
// never learns what became of them. A request head the header deadline cuts short is answered (408) the same
// way. End to end through the built sidecar, raw sockets on both sides.

import { once } from 'node:events'
import { STATUS_CODES } from 'node:http'
import { connect, type Socket } from 'node:net'
import t, { type Test } from 'tap'
import { type BinSidecar, startBin } from '../helpers/bin.ts'
import { eventually, stillTrueFor } from '../helpers/eventually.ts'
import { metricValue, scrape, scrapeUntil } from '../helpers/metrics.ts'
import { type RawClient, rawClient, type ScriptedUpstream, scriptedUpstream } from '../helpers/net.ts'

t.setTimeout(120_000)

const MAX_HEADER_BYTES = 4096
const get = (path: string) => `GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n`
/** node:http's answers to what its parser refuses, as the client reads them */
const refusal = (status: number) => `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nConnection: close\r\n\r\n`

/** the upstream's answer to `path`: the status its `/sNNN` segment names (200 without one), a body naming the path */
function answerTo(path: string): string {
  const status = Number(/\/s(\d{3})/.exec(path)?.[1] ?? 200)
  const body = `answer to ${path}`
  return `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Length: ${body.length}\r\n\r\n${body}`
}

/**
 * The upstream: answers at once, but holds a request whose path has a `/held` segment until the test releases
 * it, so the refused bytes reach the proxy while that answer is still to come.
 */
async function holdingUpstream(t: Test) {
  const held = new Map<string, Socket>()
  const upstream = await scriptedUpstream(t, ({ path, socket }) => {
    if (!path.includes('/held')) return answerTo(path)
    held.set(path, socket)
    return undefined
  })
  const release = (path: string) => held.get(path)?.write(answerTo(path), 'latin1')
  return { upstream, held, release }
}

const forwarded = (upstream: ScriptedUpstream, path: string) =>
  upstream.seen.some((r) => r.head.startsWith(`GET ${path} `))

/** the status lines the client read, in order */
const statuses = (client: RawClient) =>
  [...client.text().matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => Number(m[1]))

interface AuditEvent {
  path: string
  status: number
}

async function audited(sidecar: BinSidecar, count: number): Promise<AuditEvent[]> {
  await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_requests_total') >= count,
    `${count} requests recorded`,
  )
  const ring = (await (await fetch(`${sidecar.adminUrl}/audit?limit=100`)).json()) as { events: AuditEvent[] }
  return ring.events
}

t.test('requests pipelined ahead of bytes the parser refuses are answered first', async (t) => {
  const { upstream, held, release } = await holdingUpstream(t)
  const sidecar = await startBin(t, {
    service: 'orders',
    upstream: upstream.url,
    limits: { maxHeaderBytes: MAX_HEADER_BYTES },
    audit: { output: 'off', ringSize: 100 },
  })
  const port = Number(new URL(sidecar.proxyUrl).port)
  /** every request the proxy must answer, with the status the upstream gives it */
  const answered: [string, number][] = []

  t.test('one request, then bytes that are no request: its answer, then 400, then the close', async (t) => {
    const cases: [string, string][] = [
      ['garbage', 'GARBAGE\r\n\r\n'],
      ['a request with an invalid header name', 'GET /invalid HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n'],
    ]
    for (const [name, unreadable] of cases) {
      const slug = name.replaceAll(' ', '-')
      const path = `/${slug}/held`
      const client = await rawClient(port)
      client.socket.write(`${get(path)}${unreadable}`)
      // or the connection already closed, the refusal sent in place of the answer: the assertions below say so
      await eventually(() => held.has(path) || client.closed(), {
        what: `${name}: the upstream to have the request`,
      })
      // a request, were it read: the proxy reads nothing more from this connection
      client.socket.write(get(`/after-${slug}`))
      release(path)
      await eventually(() => client.closed(), { what: `${name}: the connection to close` })
      t.same(statuses(client), [200, 400], `${name}: the request's answer, then the refusal`)
      t.ok(
        client.text().endsWith(`answer to ${path}${refusal(400)}`),
        `${name}: the whole answer, the 400 right after it, then the close`,
      )
      t.notOk(forwarded(upstream, `/after-${slug}`), `${name}: nothing after the refused bytes is forwarded`)
      answered.push([path, 200])
    }
  })

  t.test('the proxy reads nothing after the refused bytes, however much comes', async (t) => {
    const path = '/flood/held'
    const client = await rawClient(port)
    client.socket.write(`${get(path)}GARBAGE\r\n\r\n`)
    await eventually(() => held.has(path) || client.closed(), { what: 'the upstream to have the request' })
    // far more than loopback's socket buffers take in: what the proxy does not read stays with the client
    client.socket.write(Buffer.alloc(16 * 1024 * 1024, 0x61))
    t.ok(
      await stillTrueFor(() => client.socket.writableLength > 0 && !client.closed(), 1000),
      'none of it is read while the answer is to come',
    )
    release(path)
    await eventually(() => client.closed(), { what: 'the connection to close' })
    t.same(statuses(client), [200, 400], 'the answer, then the refusal')
    answered.push([path, 200])
  })

  t.test(
    'after the refusal the proxy ends its side and reads on a while: a client still sending is not reset',
    async (t) => {
      /** a client that keeps its own side open after the proxy's FIN, and says how the connection ended */
      async function halfOpenClient() {
        const socket = connect({ port, host: '127.0.0.1', allowHalfOpen: true })
        await once(socket, 'connect')
        const seen = { text: '', ended: false, closed: false, error: undefined as Error | undefined }
        socket.on('data', (c: Buffer) => {
          seen.text += c.toString('latin1')
        })
        socket.on('end', () => {
          seen.ended = true
        })
        socket.on('error', (e) => {
          seen.error = e
        })
        socket.on('close', () => {
          seen.closed = true
        })
        return { socket, seen }
      }

      const { socket, seen } = await halfOpenClient()
      socket.write(`${get('/linger')}GARBAGE\r\n\r\n`)
      await eventually(() => seen.ended || seen.closed, { what: 'the proxy to end its side' })
      t.ok(seen.ended && !seen.closed, 'the proxy ended its side (a FIN), the connection still open')
      t.ok(seen.text.endsWith(`answer to /linger${refusal(400)}`), 'the answer, then the refusal')
      const write = (data: string | Buffer) =>
        new Promise<Error | null | undefined>((resolve) => socket.write(data, resolve))
      // bytes a client had on the way when the answers came: read and dropped, not met with a reset, which
      // the client would see on its next write (its reading ended with the FIN)
      await write(Buffer.alloc(32 * 1024, 0x61))
      t.ok(
        await stillTrueFor(() => seen.error === undefined && !seen.closed, 300),
        'the connection stays open to those bytes',
      )
      t.notOk((await write('a')) ?? seen.error, "the client's next write is not met with a reset")
      socket.end()
      await eventually(() => seen.closed, { what: 'the connection to close once the client ends its side' })
      t.equal(seen.error, undefined, 'closed without a reset')
      answered.push(['/linger', 200])

      // a client that never ends its side: the proxy closes the connection after a bounded while
      const idle = await halfOpenClient()
      idle.socket.write(`${get('/linger-idle')}GARBAGE\r\n\r\n`)
      await eventually(() => idle.seen.ended, { what: 'the proxy to end its side' })
      // a half-open client learns of the close from what its next bytes meet
      await eventually(
        () => {
          if (!idle.socket.destroyed) idle.socket.write('a')
          return idle.seen.closed
        },
        { what: 'the proxy to close a client that never ends its side' },
      )
      answered.push(['/linger-idle', 200])
    },
  )

  t.test('three pipelined requests, then garbage: three answers in order, then 400', async (t) => {
    const paths = ['/pipelined-1/held', '/pipelined-2/s201', '/pipelined-3/s404']
    const client = await rawClient(port)
    client.socket.write(`${paths.map(get).join('')}GARBAGE\r\n\r\n`)
    // the later two answered by the upstream at once, the first held: the proxy has their answers first
    await eventually(() => (held.has(paths[0]!) && forwarded(upstream, paths[2]!)) || client.closed(), {
      what: 'the upstream to have all three',
    })
    release(paths[0]!)
    await eventually(() => client.closed(), { what: 'the connection to close' })
    t.same(statuses(client), [200, 201, 404, 400], 'each answer in request order, then the refusal')
    t.match(
      client.text(),
      /answer to \/pipelined-1\/held.*answer to \/pipelined-2\/s201.*answer to \/pipelined-3\/s404/s,
      'each answer whole, to its own request',
    )
    t.ok(client.text().endsWith(refusal(400)), 'the 400 last, then the close')
    answered.push(['/pipelined-1/held', 200], ['/pipelined-2/s201', 201], ['/pipelined-3/s404', 404])
  })

  t.test('a request, then a head over limits.maxHeaderBytes: its answer, then 431', async (t) => {
    const path = '/before-431/held'
    const big = `GET /big HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(MAX_HEADER_BYTES)}\r\n\r\n`
    const client = await rawClient(port)
    client.socket.write(`${get(path)}${big}`)
    await eventually(() => held.has(path) || client.closed(), { what: 'the upstream to have the request' })
    release(path)
    await eventually(() => client.closed(), { what: 'the connection to close' })
    t.same(statuses(client), [200, 431], "the request's answer, then the 431")
    t.ok(client.text().endsWith(`answer to ${path}${refusal(431)}`), 'the 431 right after the answer')
    t.notOk(forwarded(upstream, '/big'), 'the head over the limit is not forwarded')
    answered.push([path, 200])
  })

  t.test('an answer under way when the refused bytes come is not cut: 400 after it', async (t) => {
    const path = '/under-way/held'
    const client = await rawClient(port)
    client.socket.write(get(path))
    await eventually(() => held.has(path), { what: 'the upstream to have the request' })
    const answer = answerTo(path)
    const headAndSome = answer.indexOf('\r\n\r\n') + 4 + 'answer'.length
    held.get(path)?.write(answer.slice(0, headAndSome), 'latin1')
    await eventually(() => client.text().includes('answer'), { what: 'the head and the start of the body' })
    client.socket.write('GARBAGE\r\n\r\n')
    held.get(path)?.write(answer.slice(headAndSome), 'latin1')
    await eventually(() => client.closed(), { what: 'the connection to close' })
    t.same(statuses(client), [200, 400], 'the answer, then the refusal')
    t.ok(client.text().endsWith(`answer to ${path}${refusal(400)}`), 'the whole body, then the 400')
    answered.push([path, 200])
  })

  t.test('each request ahead of the refused bytes is recorded once, as answered', async (t) => {
    const events = await audited(sidecar, answered.length)
    t.same(
      events.map((e) => [e.path, e.status]).sort(),
      [...answered].sort(),
      'one audit event per request, with its answer',
    )
    const samples = await scrape(sidecar.adminUrl)
    t.equal(metricValue(samples, 'nhi_requests_total'), answered.length, 'each counted once')
    t.equal(metricValue(samples, 'nhi_requests_total', { code: '499' }), 0, 'none counted as given up on')
  })

  t.test('a request, then one whose body the parser refuses: its answer, then 400', async (t) => {
    const path = '/before-cut/held'
    // a bare LF ends the chunk size line: the refused bytes cut this request, and the refusal is its answer
    const cut = 'POST /cut HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n'
    const client = await rawClient(port)
    client.socket.write(`${get(path)}${cut}`)
    await eventually(() => held.has(path) || client.closed(), { what: 'the upstream to have the request' })
    release(path)
    await eventually(() => client.closed(), { what: 'the connection to close' })
    t.same(statuses(client), [200, 400], "the first request's answer, then the refusal")
    t.ok(client.text().endsWith(`answer to ${path}${refusal(400)}`), 'the 400 right after the answer')
    const events = await audited(sidecar, answered.length + 2)
    t.same(
      events.filter((e) => e.path === path).map((e) => e.status),
      [200],
      'the first request recorded once, as answered',
    )
    t.same(
      events.filter((e) => e.path === '/cut').map((e) => e.status),
      [400],
      'the cut request recorded once, with the refusal its client read as its answer',
    )
  })
})

t.test('the answers waited for keep their own deadlines', async (t) => {
  const HEADERS_MS = 300
  const { upstream, held, release } = await holdingUpstream(t)
  const sidecar = await startBin(t, {
    service: 'orders',
    upstream: upstream.url,
    timeouts: { headers: `${HEADERS_MS}ms`, upstream: '2s' },
    audit: { output: 'off', ringSize: 100 },
  })
  const port = Number(new URL(sidecar.proxyUrl).port)

  t.test('not the header deadline node:http runs for the refused bytes', async (t) => {
    const client = await rawClient(port)
    client.socket.write(`${get('/slow/held')}GARBAGE\r\n\r\n`)
    await eventually(() => held.has('/slow/held') || client.closed(), {
      what: 'the upstream to have the request',
    })
    t.ok(
      await stillTrueFor(() => !client.closed(), 5 * HEADERS_MS),
      'the connection stays open past timeouts.headers while the answer is to come',
    )
    release('/slow/held')
    await eventually(() => client.closed(), { what: 'the connection to close' })
    t.same(statuses(client), [200, 400], 'the answer, then the refusal')
  })

  t.test('an answer that never comes is bounded by timeouts.upstream: 504, then 400', async (t) => {
    const client = await rawClient(port)
    client.socket.write(`${get('/never/held')}GARBAGE\r\n\r\n`)
    await eventually(() => held.has('/never/held') || client.closed(), {
      what: 'the upstream to have the request',
    })
    await eventually(() => client.closed(), { what: 'the connection to close' })
    t.same(statuses(client), [504, 400], 'the 504 of the upstream deadline, then the refusal')
    t.ok(client.text().endsWith(refusal(400)), 'the 400 last, then the close')
  })

  t.test('each recorded once, as answered', async (t) => {
    const events = await audited(sidecar, 2)
    t.same(events.map((e) => [e.path, e.status]).sort(), [
      ['/never/held', 504],
      ['/slow/held', 200],
    ])
  })
})

t.test(
  'a request head the header deadline cuts short is answered 408 after the requests ahead of it',
  async (t) => {
    const HEADERS_MS = 300
    const { upstream, held, release } = await holdingUpstream(t)
    const sidecar = await startBin(t, {
      service: 'orders',
      upstream: upstream.url,
      timeouts: { headers: `${HEADERS_MS}ms`, upstream: '30s' },
      audit: { output: 'off', ringSize: 100 },
    })
    const port = Number(new URL(sidecar.proxyUrl).port)
    const path = '/ahead/held'
    const client = await rawClient(port)
    client.socket.write(`${get(path)}GET /unfinished HTTP/1.1\r\nHost: x\r\n`)
    await eventually(() => held.has(path) || client.closed(), { what: 'the upstream to have the request' })
    t.ok(
      await stillTrueFor(() => !client.closed(), 5 * HEADERS_MS),
      'the connection stays open past the deadline while the answer ahead is to come',
    )
    // the end of the head, past its deadline: no request any more, never forwarded
    client.socket.write('\r\n')
    release(path)
    await eventually(() => client.closed(), { what: 'the connection to close' })
    t.same(statuses(client), [200, 408], 'the answer ahead, then the 408')
    t.ok(
      client.text().endsWith(`answer to ${path}${refusal(408)}`),
      'the whole answer, the 408 right after it',
    )
    t.notOk(forwarded(upstream, '/unfinished'), 'the head finished past its deadline is not forwarded')
    const events = await audited(sidecar, 1)
    t.same(
      events.map((e) => [e.path, e.status]),
      [[path, 200]],
      'the request ahead recorded with its answer; the unfinished head is no request',
    )
    const samples = await scrape(sidecar.adminUrl)
    t.equal(metricValue(samples, 'nhi_requests_total'), 1, 'counted once')
    t.equal(metricValue(samples, 'nhi_requests_total', { code: '499' }), 0, 'not as given up on')
  },
)
