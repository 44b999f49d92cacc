// A 204 carries no body and must not carry Content-Length (RFC 9110 §8.6). Upstreams send one anyway
// (frameworks that set it on every response); passed on, HTTP/2 clients reset the stream as a protocol error
// and HTTP/1.1 clients may wait for the bytes. The proxy drops it, as nginx does; a 304 keeps its own.
import { connect as h2connect, type IncomingHttpHeaders } from 'node:http2'
import t from 'tap'
import { startBin } from '../helpers/bin.ts'
import { rawExchange, scriptedUpstream } from '../helpers/net.ts'

t.test('Content-Length on a 204 is dropped; a 304 keeps it', async (t) => {
  // a raw upstream: the status comes from the path, every answer claims 5 bytes and sends none
  const up = await scriptedUpstream(t, ({ head }) => {
    const status = head.startsWith('GET /not-modified') ? '304 Not Modified' : '204 No Content'
    return `HTTP/1.1 ${status}\r\nContent-Length: 5\r\nETag: "v1"\r\n\r\n`
  })
  const sidecar = await startBin(t, { upstream: up.url })

  // HTTP/2: the 204 arrives as a 204, not as a reset stream
  const session = h2connect(sidecar.proxyUrl)
  session.on('error', () => {})
  t.teardown(() => session.destroy())
  const h2Status = async (path: string) => {
    const stream = session.request({ ':path': path })
    stream.on('error', () => {})
    const closed = new Promise((resolve) => stream.on('close', resolve))
    let headers: IncomingHttpHeaders | undefined
    stream.on('response', (h) => {
      headers = h
    })
    stream.resume()
    await closed
    return { headers, rstCode: stream.rstCode }
  }
  const noContent = await h2Status('/delete')
  t.equal(noContent.headers?.[':status'], 204, 'HTTP/2: 204')
  t.equal(noContent.rstCode, 0, 'HTTP/2: not reset')
  t.equal(noContent.headers?.['content-length'], undefined, 'HTTP/2: no Content-Length')
  const notModified = await h2Status('/not-modified')
  t.equal(notModified.headers?.[':status'], 304)
  t.equal(
    notModified.headers?.['content-length'],
    '5',
    "HTTP/2: a 304's Content-Length is the representation's, kept",
  )

  // HTTP/1.1: two requests on one connection, the second answered after the first's 204
  const raw = await rawExchange(
    Number(new URL(sidecar.proxyUrl).port),
    'DELETE /a HTTP/1.1\r\nHost: app\r\n\r\nGET /not-modified HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n',
  )
  const [first, second] = raw.split(/(?=HTTP\/1\.1 )/)
  t.match(first, /^HTTP\/1\.1 204 /)
  t.notMatch(first, /content-length/i, 'HTTP/1.1: the 204 has no Content-Length')
  t.match(second, /^HTTP\/1\.1 304 /, 'the next response on the connection follows')
  t.match(second, /content-length: 5/i)
})
