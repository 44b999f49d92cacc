// A response trailer whose name the response head's Connection listed: the upstream declared that field its
// own hop's (RFC 9110 §7.6.1), so it stays there wherever in the message it comes, as the same name would in
// the header section. Through both HTTP/1.1 engines (plain requests, and requests that send trailers).
import { connect as h2connect, type IncomingHttpHeaders } from 'node:http2'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { startBin } from '../helpers/bin.ts'
import { rawExchange, scriptedUpstream } from '../helpers/net.ts'

const ANSWER =
  'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: X-Hop-Secret\r\nContent-Type: text/plain\r\n\r\n' +
  '2\r\nok\r\n0\r\nx-hop-secret: s3cret\r\nX-Checksum: abc\r\n\r\n'

t.test("trailers named in the response head's Connection stay on the upstream's hop", async (t) => {
  const up = await scriptedUpstream(t, ({ socket }) => {
    socket.end(ANSWER)
    return undefined
  })
  const sidecar = await startBin(t, { upstream: up.url })
  const port = Number(new URL(sidecar.proxyUrl).port)

  const requests = {
    'plain request': 'GET / HTTP/1.1\r\nHost: app\r\nTE: trailers\r\nConnection: close\r\n\r\n',
    // a request that sends trailers takes the other HTTP/1.1 engine
    'request with trailers':
      'POST / HTTP/1.1\r\nHost: app\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\nConnection: close\r\n\r\n' +
      '2\r\nhi\r\n0\r\nx-sum: 1\r\n\r\n',
  }
  for (const [name, request] of Object.entries(requests)) {
    const answer = await rawExchange(port, request)
    t.match(answer, /^HTTP\/1\.1 200 /, `${name}: 200`)
    const trailers = answer.slice(answer.lastIndexOf('\r\n0\r\n') + 5)
    t.match(trailers, /^x-checksum: abc\r\n/im, `${name}: an ordinary trailer goes on`)
    t.notMatch(answer, /s3cret|x-hop-secret/i, `${name}: the field the head's Connection named does not`)
  }
})

/** GET / over HTTP/2 with `te: trailers`: how its stream ended, its body and its trailers */
async function h2Get(t: Test, url: string) {
  const session = h2connect(url)
  session.on('error', () => {})
  t.teardown(() => session.destroy())
  const stream = session.request({ ':path': '/', te: 'trailers' })
  stream.on('error', () => {})
  let trailers: IncomingHttpHeaders | undefined
  stream.on('trailers', (h) => {
    trailers = h
  })
  let body = ''
  stream.setEncoding('latin1')
  stream.on('data', (c: string) => {
    body += c
  })
  await new Promise((resolve) => stream.on('close', resolve))
  return { rstCode: stream.rstCode, body, trailers }
}

t.test("an HTTP/2 client gets an HTTP/1.1 upstream's trailers under their own names", async (t) => {
  const up = await scriptedUpstream(
    t,
    () =>
      'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: X-Hop-Secret\r\n\r\n' +
      '2\r\nok\r\n0\r\nX-Checksum: abc\r\nx-hop-secret: s3cret\r\nX-Multi: 1\r\nx-multi: 2\r\n' +
      'Content-Type: text/plain\r\ncontent-type: text/html\r\n\r\n',
  )
  const sidecar = await startBin(t, { upstream: up.url })
  const { rstCode, body, trailers } = await h2Get(t, sidecar.proxyUrl)
  t.equal(rstCode, 0, 'the stream ends normally')
  t.equal(body, 'ok')
  t.equal(trailers?.['x-checksum'], 'abc', 'a trailer arrives by its name')
  t.equal(trailers?.['x-multi'], '1, 2', 'a repeated trailer arrives with each of its values')
  // node:http2 refuses a repeated single-value field: the first is kept, as for a header
  t.equal(trailers?.['content-type'], 'text/plain', 'a repeated single-value trailer keeps its first value')
  t.notOk(trailers !== undefined && '0' in trailers, 'no trailer named after its position')
  t.equal(trailers?.['x-hop-secret'], undefined, "the field the head's Connection named stays behind")
})

t.test('a Content-Length trailer stays behind: clients fail a whole response over one', async (t) => {
  // RFC 9110 §6.5.1: framing is no trailer's business. llhttp (node:http, undici) refuses the response as
  // Content-Length with Transfer-Encoding, nghttp2 resets the stream, while the proxy records a success
  const up = await scriptedUpstream(t, ({ socket }) => {
    socket.end(
      'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nContent-Length: 9\r\nX-Checksum: abc\r\n\r\n',
    )
    return undefined
  })
  const sidecar = await startBin(t, { upstream: up.url })

  const h1 = await request(sidecar.proxyUrl, { headers: { te: 'trailers' } })
    .then(async (res) => ({ status: res.statusCode, body: await res.body.text(), trailers: res.trailers }))
    .catch((err: Error) => ({ status: 0, body: err.message, trailers: {} as Record<string, string> }))
  t.same(
    { status: h1.status, body: h1.body, checksum: h1.trailers['x-checksum'] },
    { status: 200, body: 'ok', checksum: 'abc' },
    'HTTP/1.1: the response and its other trailer arrive',
  )

  const h2 = await h2Get(t, sidecar.proxyUrl)
  t.equal(h2.rstCode, 0, 'HTTP/2: the stream ends normally')
  t.equal(h2.body, 'ok')
  t.equal(h2.trailers?.['x-checksum'], 'abc', 'HTTP/2: the other trailer arrives')
})
