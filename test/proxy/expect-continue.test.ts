// `Expect: 100-continue` (RFC 9110 §10.1.1) through the built sidecar over raw sockets: the client's body is
// invited only once the request is to be forwarded. A request the policy refuses gets its final status without
// a 100 first (the client is not told to upload what will be thrown away), on a connection closed after it.
import t from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { rawClient } from '../helpers/net.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const head = (path: string) =>
  `PUT ${path} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n`

t.test('100 Continue only for a request that will be forwarded', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const sidecar = await startTestSidecar(t, {
    upstream: upstream.url,
    policy: { mode: 'enforce', rules: [{ route: '/admin/**', allow: [{ identity: 'nobody' }] }] },
  })
  const port = sidecar.proxyAddress.port

  const refused = await rawClient(port)
  refused.socket.write(head('/admin/users'))
  await eventually(() => refused.text().includes('\r\n\r\n'), { what: 'an answer to the refused request' })
  t.match(refused.text(), /^HTTP\/1\.1 403 /, 'the final status first, no 100 Continue')
  t.notMatch(refused.text(), /100 Continue/)
  await eventually(() => refused.closed(), { what: 'the connection to close after the refusal' })
  t.match(refused.text(), /connection: close/i)

  const allowed = await rawClient(port)
  allowed.socket.write(head('/echo'))
  await eventually(() => allowed.text().includes('\r\n\r\n'), { what: 'the invitation to send the body' })
  t.match(allowed.text(), /^HTTP\/1\.1 100 Continue\r\n\r\n$/, 'an allowed request is told to send its body')
  allowed.socket.write('hello')
  await eventually(() => /HTTP\/1\.1 200 /.test(allowed.text()), { what: 'the final answer' })
  await eventually(() => upstream.received.some((r) => r.url === '/echo' && r.bodyBytes === 5), {
    what: 'the body at the upstream',
  })
  t.notOk(
    upstream.received.some((r) => r.url.startsWith('/admin')),
    'the refused request never reached it',
  )
  allowed.socket.destroy()
})
