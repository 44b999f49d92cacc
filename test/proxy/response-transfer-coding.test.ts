// An HTTP/1.1 upstream answering in a transfer coding other than plain `chunked` (`gzip`, `gzip, chunked`):
// the proxy decodes `chunked` only, so passing the body on would hand the client coded bytes with nothing
// saying so (Transfer-Encoding is hop-by-hop and never forwarded). Such a response is answered 502 and
// counted, as nginx does, through both HTTP/1.1 engines (plain requests, and requests that announce trailers).
import t from 'tap'
import { startBin } from '../helpers/bin.ts'
import { metricValue, scrapeUntil } from '../helpers/metrics.ts'
import { rawExchange, scriptedUpstream } from '../helpers/net.ts'

const ANSWERS: Record<string, string> = {
  '/gzip':
    'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nCODED',
  '/gzip-chunked':
    'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Type: text/plain\r\n\r\n5\r\nCODED\r\n0\r\n\r\n',
  '/chunked':
    'HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\nContent-Type: text/plain\r\n\r\n5\r\nplain\r\n0\r\n\r\n',
}

t.test('a response in a transfer coding other than chunked is a 502, not coded bytes', async (t) => {
  const up = await scriptedUpstream(t, ({ path, socket }) => {
    socket.end(ANSWERS[path] ?? 'HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n')
    return undefined
  })
  const sidecar = await startBin(t, { upstream: up.url })
  const port = Number(new URL(sidecar.proxyUrl).port)

  for (const path of ['/gzip', '/gzip-chunked']) {
    const plain = await rawExchange(port, `GET ${path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n`)
    t.match(plain, /^HTTP\/1\.1 502 /, `${path}: 502`)
    t.notMatch(plain, /CODED/, `${path}: the coded bytes never reach the client`)
    // a request announcing trailers takes the other HTTP/1.1 engine
    const withTrailers = await rawExchange(
      port,
      `POST ${path} HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\nConnection: close\r\n\r\n2\r\nhi\r\n0\r\nx-checksum: 1\r\n\r\n`,
    )
    t.match(withTrailers, /^HTTP\/1\.1 502 /, `${path}, request with trailers: 502`)
    t.notMatch(withTrailers, /CODED/)
  }
  const chunked = await rawExchange(port, 'GET /chunked HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n')
  t.match(chunked, /^HTTP\/1\.1 200 /, 'plain chunked (any letter case) is served')
  t.match(chunked, /plain/)

  const samples = await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_upstream_errors_total', {}) >= 4,
    'the four refused responses counted',
  )
  t.equal(metricValue(samples, 'nhi_upstream_errors_total', {}), 4)
})

t.test('an answer without content may name the coding its content would have had', async (t) => {
  // RFC 9112 §6.1: a response to HEAD, or a 304, may carry the Transfer-Encoding a GET's answer would have;
  // there are no coded bytes to hand over
  const up = await scriptedUpstream(t, ({ head }) =>
    head.startsWith('HEAD ')
      ? 'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Type: text/plain\r\n\r\n'
      : 'HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: gzip, chunked\r\nETag: "v1"\r\n\r\n',
  )
  const sidecar = await startBin(t, { upstream: up.url })
  const port = Number(new URL(sidecar.proxyUrl).port)
  const head = await rawExchange(port, 'HEAD /doc HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n')
  t.match(head, /^HTTP\/1\.1 200 /, 'HEAD: 200')
  t.match(head, /content-type: text\/plain/i, 'HEAD: its fields')
  const notModified = await rawExchange(
    port,
    'GET /doc HTTP/1.1\r\nHost: app\r\nIf-None-Match: "v1"\r\nConnection: close\r\n\r\n',
  )
  t.match(notModified, /^HTTP\/1\.1 304 /, '304 passed on')
  t.match(notModified, /etag: "v1"/i, '304: its fields')
  t.notMatch(`${head}${notModified}`, /transfer-encoding: gzip/i, 'the coding stays on the upstream hop')
})
