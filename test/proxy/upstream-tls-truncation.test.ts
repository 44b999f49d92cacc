// A body that ends with its connection (HTTP/1.1 without Content-Length or chunked, or HTTP/1.0) from an
// https:// upstream is whole only when the upstream's close_notify came before the TCP close (RFC 8446 §6.1,
// RFC 5246 §7.2.1): a bare FIN is unauthenticated, an on-path attacker's or a crashed upstream's. Node reads
// both as the socket's 'end', so a cut body went out as a complete 200. Now such a cut is an upstream failure,
// as a reset mid-body is: the HTTP/1.1 client's connection closes without the last chunk, the HTTP/2 client's
// stream is reset with INTERNAL_ERROR, it counts as reason="reset" and is logged as upstream_failed. A clean
// close (close_notify, then FIN) stays a 200 with the whole body, also after the proxy held the upstream back for
// a slow client, and a body whose framing gives its end is unaffected by a bare FIN after it. Requests that
// announce trailers, which go through node:http instead of the HTTP/1.1 engine, get the same. The upstream is a
// node:tls server on a TCP socket of its own, so the test can close the TCP socket under the TLS one.
import { type ClientHttp2Stream, constants, connect as h2connect } from 'node:http2'
import { createServer, type Socket } from 'node:net'
import { TLSSocket } from 'node:tls'
import t, { type Test } from 'tap'
import { type BinSidecar, startBin } from '../helpers/bin.ts'
import { eventually } from '../helpers/eventually.ts'
import { metricValue, scrapeUntil } from '../helpers/metrics.ts'
import { listenUntilTeardown, rawClient } from '../helpers/net.ts'
import { type CA, createCA, issueCert, type KeyPair } from '../helpers/pki.ts'

t.setTimeout(120_000)

let ca: CA
let server: KeyPair
t.before(async () => {
  ca = await createCA('tls-truncation-ca')
  server = await issueCert(ca, {
    cn: 'localhost',
    dnsSans: ['localhost'],
    ipSans: ['127.0.0.1'],
    server: true,
  })
})

/** more than the kernel buffers between the upstream and the client hold, so a client that stops reading holds the upstream back */
const BIG = 16 * 1024 * 1024
const closeDelimited = (version = '1.1') => `HTTP/${version} 200 OK\r\ncontent-type: text/plain\r\n\r\n`

/** closes the TCP socket under the TLS one once what was written went out: a FIN, no close_notify */
function cutAfter(tls: TLSSocket, raw: Socket, bytes: string): void {
  tls.write(bytes, 'latin1', () => raw.destroy())
}

/** The answers by path. Each request comes on a new TLS connection: close-delimited bodies end theirs. */
const ANSWERS: Record<string, (tls: TLSSocket, raw: Socket) => void> = {
  '/cut': (tls, raw) => cutAfter(tls, raw, `${closeDelimited()}first part, `),
  '/cut-http10': (tls, raw) => cutAfter(tls, raw, `${closeDelimited('1.0')}first part, `),
  '/clean': (tls) => {
    tls.write(`${closeDelimited()}first part, `, 'latin1')
    tls.end('second part')
  },
  '/clean-big': (tls) => {
    tls.write(closeDelimited(), 'latin1')
    // in pieces, so that what is left to send shows how far the answer got
    const piece = Buffer.alloc(64 * 1024, 'b')
    for (let sent = 0; sent < BIG; sent += piece.length) tls.write(piece)
    tls.end()
  },
  '/length-then-fin': (tls, raw) =>
    cutAfter(tls, raw, 'HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nwhole body'),
  '/chunked-then-fin': (tls, raw) =>
    cutAfter(tls, raw, 'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\nwhole body\r\n0\r\n\r\n'),
}

/** the upstream, and the sidecar in front of it; `upstreams` keeps each path's TLS socket, to see it held back */
async function start(t: Test): Promise<{ sidecar: BinSidecar; upstreams: Map<string, TLSSocket> }> {
  const upstreams = new Map<string, TLSSocket>()
  const tcp = createServer((raw) => {
    raw.on('error', () => {})
    const tls = new TLSSocket(raw, { isServer: true, cert: server.certPem, key: server.keyPem })
    tls.on('error', () => {})
    let pending = ''
    tls.on('data', (c: Buffer) => {
      pending += c.toString('latin1')
      const end = pending.indexOf('\r\n\r\n')
      if (end === -1) return
      const head = pending.slice(0, end)
      // a chunked body (a request that announces trailers) is answered once it has ended, trailers and all
      if (
        /\r\ntransfer-encoding: *chunked/i.test(head) &&
        !/(?:^|\r\n)0\r\n(?:[^\r\n]+\r\n)*\r\n$/.test(pending.slice(end + 4))
      )
        return
      const path = /^[A-Z]+ (\S+)/.exec(head)?.[1] ?? '/'
      pending = ''
      upstreams.set(path, tls)
      const script = ANSWERS[path]
      if (script) script(tls, raw)
      else tls.end('HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n')
    })
  })
  const port = await listenUntilTeardown(t, tcp)
  const sidecar = await startBin(t, {
    service: 'tls-truncation',
    upstream: `https://localhost:${port}`,
    upstreamTls: { ca: ca.certFile },
  })
  return { sidecar, upstreams }
}

/** an HTTP/1.1 exchange on a raw connection: everything read until the answer ended or the connection closed */
async function h1(
  t: Test,
  sidecar: BinSidecar,
  /** a path to GET, or a whole request */
  request: string,
  /** the end of a whole answer (default: the last chunk) */
  end = '\r\n0\r\n\r\n',
): Promise<{ text: string; closed: boolean }> {
  const client = await rawClient(Number(new URL(sidecar.proxyUrl).port))
  t.teardown(() => client.socket.destroy())
  client.socket.write(request.includes(' ') ? request : `GET ${request} HTTP/1.1\r\nHost: app\r\n\r\n`)
  await eventually(() => client.text().endsWith(end) || client.closed(), {
    what: `the answer to ${request.split('\r\n')[0]}`,
  })
  return { text: client.text(), closed: client.closed() }
}

/** a request that announces trailers, which goes through node:http instead of the HTTP/1.1 engine */
const WITH_TRAILERS = (path: string) =>
  `POST ${path} HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n3\r\nabc\r\n0\r\nx-checksum: 1\r\n\r\n`

/** an HTTP/2 stream to the end: its status, body and the code it was closed with */
async function h2(t: Test, sidecar: BinSidecar, path: string) {
  const session = h2connect(sidecar.proxyUrl)
  session.on('error', () => {})
  t.teardown(() => session.destroy())
  const stream: ClientHttp2Stream = session.request({ ':path': path })
  stream.on('error', () => {})
  let status = 0
  let body = ''
  stream.on('response', (h) => {
    status = Number(h[':status'])
  })
  stream.setEncoding('latin1')
  stream.on('data', (d: string) => {
    body += d
  })
  await new Promise((resolve) => stream.once('close', resolve))
  return { status, body, rstCode: stream.rstCode }
}

/** the data of a chunked body, or undefined when it is not one whole chunked body */
function unchunk(body: string): string | undefined {
  let data = ''
  let at = 0
  for (;;) {
    const eol = body.indexOf('\r\n', at)
    if (eol === -1) return undefined
    const size = Number.parseInt(body.slice(at, eol), 16)
    if (Number.isNaN(size)) return undefined
    if (size === 0) return body.slice(eol) === '\r\n\r\n' ? data : undefined
    data += body.slice(eol + 2, eol + 2 + size)
    at = eol + 2 + size + 2
  }
}

const upstreamFailures = (sidecar: BinSidecar) =>
  sidecar.logs().filter((l) => l['event'] === 'upstream_failed')

t.test(
  'a close-delimited body cut by a bare FIN is an upstream reset: the client sees a cut response, never a whole 200',
  async (t) => {
    const { sidecar } = await start(t)

    const cut = await h1(t, sidecar, '/cut')
    t.match(cut.text, /^HTTP\/1\.1 200 /, 'HTTP/1.1: the head went out before the cut')
    t.match(cut.text, /first part, /, 'HTTP/1.1: with the part of the body that came')
    t.notMatch(cut.text, /\r\n0\r\n\r\n$/, 'HTTP/1.1: no last chunk')
    t.ok(cut.closed, 'HTTP/1.1: the connection closed, so the body reads as cut short')

    const cut10 = await h1(t, sidecar, '/cut-http10')
    t.notMatch(cut10.text, /\r\n0\r\n\r\n$/, 'an HTTP/1.0 answer cut the same way: no last chunk')
    t.ok(cut10.closed, 'an HTTP/1.0 answer cut the same way: the connection closed')

    const stream = await h2(t, sidecar, '/cut')
    t.equal(stream.status, 200, 'HTTP/2: the head went out before the cut')
    t.equal(stream.body, 'first part, ')
    t.equal(
      stream.rstCode,
      constants.NGHTTP2_INTERNAL_ERROR,
      'HTTP/2: the stream reset with INTERNAL_ERROR, not ended as complete',
    )

    const samples = await scrapeUntil(
      sidecar.adminUrl,
      (s) => metricValue(s, 'nhi_upstream_errors_total', { reason: 'reset' }) >= 3,
      'the three cuts to be counted',
    )
    t.equal(
      metricValue(samples, 'nhi_upstream_errors_total', { reason: 'reset' }),
      3,
      'each cut counts as a reset',
    )
    const lines = await eventually(
      () => (upstreamFailures(sidecar).length > 0 ? upstreamFailures(sidecar) : false),
      {
        what: 'the upstream_failed line',
      },
    )
    t.equal(lines.length, 1, 'one line for the three (one per reason and code per interval)')
    t.equal(lines[0]?.['reason'], 'reset')
    t.equal(lines[0]?.['code'], 'ERR_SSL_UNEXPECTED_EOF_WHILE_READING')
    t.match(String(lines[0]?.['detail']), /close_notify/, 'the line says the close_notify was missing')
  },
)

t.test(
  'a clean close (close_notify, then FIN) ends the body whole, and a FIN after a framed body cuts nothing',
  async (t) => {
    const { sidecar, upstreams } = await start(t)

    const clean = await h1(t, sidecar, '/clean')
    t.match(clean.text, /^HTTP\/1\.1 200 /)
    t.match(clean.text, /first part, /)
    t.match(clean.text, /second part\r\n0\r\n\r\n$/, 'HTTP/1.1: the whole body, then the last chunk')

    const stream = await h2(t, sidecar, '/clean')
    t.equal(stream.status, 200)
    t.equal(stream.body, 'first part, second part', 'HTTP/2: the whole body')
    t.equal(stream.rstCode, constants.NGHTTP2_NO_ERROR, 'HTTP/2: the stream ended, not reset')

    const length = await h1(t, sidecar, '/length-then-fin', 'whole body')
    t.match(
      length.text,
      /^HTTP\/1\.1 200 [\s\S]*\r\n\r\nwhole body$/,
      'a Content-Length body, then a bare FIN: whole',
    )
    const chunked = await h1(t, sidecar, '/chunked-then-fin')
    t.match(
      chunked.text,
      /^HTTP\/1\.1 200 [\s\S]*whole body\r\n0\r\n\r\n$/,
      'a chunked body, then a bare FIN: whole',
    )

    // a client that reads nothing for a while: the proxy stops reading the upstream, whose close_notify then
    // comes in the same reads as the last of the body once the client reads again
    const client = await rawClient(Number(new URL(sidecar.proxyUrl).port))
    t.teardown(() => client.socket.destroy())
    client.socket.pause()
    client.socket.write('GET /clean-big HTTP/1.1\r\nHost: app\r\n\r\n')
    // held back: bytes still to send, and none went out since the last look
    let left = -1
    await eventually(
      () => {
        const now = upstreams.get('/clean-big')?.writableLength ?? 0
        const stalled = now > 0 && now === left
        left = now
        return stalled
      },
      { what: 'the upstream held back by the slow client' },
    )
    client.socket.resume()
    await eventually(() => client.text().endsWith('\r\n0\r\n\r\n') || client.closed(), {
      timeoutMs: 30_000,
      what: 'the end of the big answer',
    })
    const body = unchunk(client.text().slice(client.text().indexOf('\r\n\r\n') + 4))
    t.equal(body?.length, BIG, 'the slow client got the whole big body, and its last chunk')
    t.ok(body === Buffer.alloc(BIG, 'b').toString('latin1'), 'the bytes the upstream sent')

    const samples = await scrapeUntil(
      sidecar.adminUrl,
      (s) => metricValue(s, 'nhi_requests_total', { code: '200' }) >= 5,
      'the five answers to be recorded',
    )
    t.equal(metricValue(samples, 'nhi_upstream_errors_total'), 0, 'no upstream error counted')
    t.same(upstreamFailures(sidecar), [], 'no upstream_failed line')
  },
)

t.test(
  'a request that announces trailers (node:http, not the engine) gets the same: cut when cut, whole when clean',
  async (t) => {
    const { sidecar } = await start(t)
    const cut = await h1(t, sidecar, WITH_TRAILERS('/cut'))
    t.match(cut.text, /^HTTP\/1\.1 200 [\s\S]*first part, /, 'the head and the part of the body that came')
    t.notMatch(cut.text, /\r\n0\r\n\r\n$/, 'no last chunk')
    t.ok(cut.closed, 'the connection closed, so the body reads as cut short')
    const samples = await scrapeUntil(
      sidecar.adminUrl,
      (s) => metricValue(s, 'nhi_upstream_errors_total', { reason: 'reset' }) >= 1,
      'the cut to be counted',
    )
    t.equal(metricValue(samples, 'nhi_upstream_errors_total', { reason: 'reset' }), 1, 'counted as a reset')
    const lines = await eventually(
      () => (upstreamFailures(sidecar).length > 0 ? upstreamFailures(sidecar) : false),
      {
        what: 'the upstream_failed line',
      },
    )
    t.equal(lines[0]?.['code'], 'ERR_SSL_UNEXPECTED_EOF_WHILE_READING')

    const clean = await h1(t, sidecar, WITH_TRAILERS('/clean'))
    t.equal(
      unchunk(clean.text.slice(clean.text.indexOf('\r\n\r\n') + 4)),
      'first part, second part',
      'a clean close: the whole body, then the last chunk',
    )
  },
)
