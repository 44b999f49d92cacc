// A response trailer whose name the response head's Connection listed: the upstream declared that field its
// own hop's (RFC 9110 §7.6.1), so it stays there wherever in the message it comes, as the same name would in
// the header section. Through both HTTP/1.1 engines (plain requests, and requests that send trailers).
import t from 'tap'
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
