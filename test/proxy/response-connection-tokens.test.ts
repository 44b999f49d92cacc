// Response headers an upstream names in `Connection` are hop-by-hop (RFC 9110 §7.6.1) and must not reach the
// client, however the upstream spreads its Connection field over lines: a field sent as several lines is one
// comma-separated list (RFC 9110 §5.3).
import { once } from 'node:events'
import { connect as h2connect } from 'node:http2'
import t from 'tap'
import { rawExchange, scriptedUpstream } from '../helpers/net.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

/** one HTTP/1.1 request on its own connection; the response head as sent, lower-cased */
async function responseHead(port: number): Promise<string> {
  const text = await rawExchange(port, 'GET /page HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n')
  return text.slice(0, text.indexOf('\r\n\r\n')).toLowerCase()
}

const SPLIT_CONNECTION =
  'HTTP/1.1 200 OK\r\n' +
  'Connection: x-internal-token\r\n' +
  'Connection: keep-alive\r\n' +
  'X-Internal-Token: s3cr3t\r\n' +
  'Connection: close, X-Debug-Route\r\n' +
  'X-Debug-Route: pod-7\r\n' +
  'X-Kept: yes\r\n' +
  'Content-Length: 2\r\n\r\nok'

t.test('headers named on any of several Connection lines of a response are not forwarded', async (t) => {
  const up = await scriptedUpstream(t, () => SPLIT_CONNECTION)
  const sidecar = await startTestSidecar(t, { upstream: up.url })

  const head = await responseHead(sidecar.proxyAddress.port)
  t.match(head, /^http\/1\.1 200 /, 'answered')
  t.match(head, /\r\nx-kept: yes(\r\n|$)/, 'an end-to-end header is forwarded')
  t.notMatch(head, /x-internal-token|s3cr3t/, 'the header named on the first Connection line is dropped')
  t.notMatch(head, /x-debug-route|pod-7/, 'the header named on the last Connection line is dropped')

  // the same response to an HTTP/2 client
  const session = h2connect(sidecar.proxyUrl)
  t.teardown(() => session.close())
  session.on('error', () => {})
  const stream = session.request({ ':path': '/page', ':authority': 'app' })
  const [headers] = (await once(stream, 'response')) as [Record<string, unknown>]
  stream.resume()
  await once(stream, 'end')
  t.equal(headers[':status'], 200)
  t.equal(headers['x-kept'], 'yes')
  t.equal(headers['x-internal-token'], undefined, 'HTTP/2: the first line is honoured')
  t.equal(headers['x-debug-route'], undefined, 'HTTP/2: the last line is honoured')
})
