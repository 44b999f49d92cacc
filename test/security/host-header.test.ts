// A request that names its host ambiguously is refused with 400 before anything reads it, end to end through the
// built bundle over raw sockets: more than one Host line (RFC 9112 §3.2: the proxy would read the first while a
// proxy in front may have routed on the last), an HTTP/1.1 request with none (upgrades included), an
// absolute-form target naming another authority than Host (RFC 9112 §3.2.2), and over
// HTTP/2 a `host` that names another authority than `:authority` (RFC 9113 §8.3.1); two `host` fields on an
// HTTP/2 stream never get that far.
import { once } from 'node:events'
import { connect as h2connect } from 'node:http2'
import { connect } from 'node:net'
import t from 'tap'
import { request } from 'undici'
import { startBin } from '../helpers/bin.ts'
import { eventually } from '../helpers/eventually.ts'
import { FLAG, FRAME, frame, headerBlock, hpackString, PREFACE, stream1Answer } from '../helpers/h2-frames.ts'
import { metricValue, scrapeUntil } from '../helpers/metrics.ts'
import { startUpstream } from '../helpers/upstream.ts'

t.setTimeout(120_000)

/** writes `data` on a fresh connection; resolves with what came back once the proxy closed it */
async function exchange(port: number, data: string | Buffer): Promise<Buffer> {
  const socket = connect(port, '127.0.0.1')
  await once(socket, 'connect')
  const parts: Buffer[] = []
  socket.on('data', (c: Buffer) => parts.push(c))
  socket.on('error', () => {})
  const closed = once(socket, 'close')
  socket.write(data)
  await closed
  return Buffer.concat(parts)
}

const statusLine = (answer: Buffer) => answer.toString('latin1').split('\r\n')[0]

/**
 * A GET on stream 1 of a prior-knowledge h2c connection, its header block encoded by hand: node:http2's client
 * refuses to send a second `host` field, which any other client can.
 */
function h2cGet(path: string, fields: [string, string][]): Buffer {
  const block = Buffer.concat([
    Buffer.from([0x82, 0x86]), // :method GET, :scheme http (static table)
    Buffer.from([0x04]), // :path, literal value without indexing
    hpackString(path),
    headerBlock(fields),
  ])
  return Buffer.concat([
    PREFACE,
    frame(FRAME.SETTINGS, 0, 0, Buffer.alloc(0)),
    frame(FRAME.HEADERS, FLAG.END_STREAM | FLAG.END_HEADERS, 1, block),
  ])
}

/** HPACK static table entries 8 to 14 (RFC 7541 Appendix A) */

/**
 * What answered stream 1: `status N` from the response HEADERS (when N is one of HPACK's static-table
 * statuses), or `reset N` with the RST_STREAM error code
 */
function h2cAnswer(port: number, path: string, fields: [string, string][]): Promise<string> {
  return stream1Answer(port, [h2cGet(path, fields)])
}

t.test('more than one Host, or none on HTTP/1.1, is refused with 400 and never forwarded', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const sidecar = await startBin(t, { service: 'hosts', upstream: upstream.url })
  const port = Number(new URL(sidecar.proxyUrl).port)
  const reached = (path: string) => upstream.received.some((r) => r.url === path)
  const ws =
    'Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n'

  // answered by the proxy's pipeline: each is one 400 exchange in metrics and audit
  const refused: [string, string][] = [
    ['two Host lines', 'GET /two HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n'],
    [
      'the same Host twice',
      'GET /same HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\nConnection: close\r\n',
    ],
    ['HOST and host', 'GET /upper HTTP/1.1\r\nHOST: a.example\r\nhost: b.example\r\nConnection: close\r\n'],
    ['host and hOsT', 'GET /mixed HTTP/1.1\r\nhost: a.example\r\nhOsT: b.example\r\nConnection: close\r\n'],
    ['two Host lines on HTTP/1.0', 'GET /ten HTTP/1.0\r\nHost: a.example\r\nHost: b.example\r\n'],
    [
      'two Host lines on a websocket upgrade',
      `GET /ws-two HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n${ws}`,
    ],
    ['no Host on a websocket upgrade', `GET /ws-none HTTP/1.1\r\n${ws}`],
    ['no Host on HTTP/1.1', 'GET /none HTTP/1.1\r\nConnection: close\r\n'],
    // past the 2,000 header lines node:http keeps by default (about 10 KB, well under maxHeaderBytes)
    [
      'a second Host behind 2,100 short lines',
      `GET /far HTTP/1.1\r\nHost: a.example\r\n${'a:\r\n'.repeat(2_100)}Host: b.example\r\nConnection: close\r\n`,
    ],
    [
      'no Host on an h2c upgrade offer',
      'GET /h2c-none HTTP/1.1\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nConnection: Upgrade, HTTP2-Settings\r\n',
    ],
  ]
  for (const [i, [name, head]] of refused.entries()) {
    const path = /^GET (\S+)/.exec(head)![1]!
    const answer = await exchange(port, `${head}X-Request-Id: host-${i}\r\n\r\n`)
    t.match(statusLine(answer), /^HTTP\/1\.1 400 /, `${name}: 400`)
    t.match(answer.toString('latin1'), /exactly one Host header/, `${name}: the answer says why`)
    t.notOk(reached(path), `${name}: the upstream never got it`)
  }
  const one = await exchange(port, 'GET /one HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n')
  t.match(statusLine(one), /^HTTP\/1\.1 200 /, 'one Host: forwarded')
  t.equal(upstream.received.find((r) => r.url === '/one')?.headers.host, 'a.example', 'with its Host')
  const old = await exchange(port, 'GET /ten-none HTTP/1.0\r\n\r\n')
  t.match(statusLine(old), /^HTTP\/1\.1 200 /, 'no Host on HTTP/1.0 (which needs none): forwarded')

  const samples = await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_requests_total', { service: 'hosts', code: '400' }) >= refused.length,
    'the refusals to be recorded',
  )
  t.equal(
    metricValue(samples, 'nhi_requests_total', { service: 'hosts', code: '400' }),
    refused.length,
    'every refusal by the pipeline is one request recorded as 400',
  )
  const audit = await eventually(async () => {
    const r = await request(`${sidecar.adminUrl}/audit?request_id=host-0`)
    return (JSON.parse(await r.body.text()) as { events: Record<string, unknown>[] }).events[0]
  })
  t.equal(audit['status'], 400, 'and audited as 400')
})

t.test(
  'HTTP/2: a host that names another authority than :authority, or two of them, is refused',
  async (t) => {
    const upstream = await startUpstream()
    t.teardown(() => upstream.close())
    const sidecar = await startBin(t, { service: 'h2hosts', upstream: upstream.url })
    const port = Number(new URL(sidecar.proxyUrl).port)
    const reached = (path: string) => upstream.received.some((r) => r.url === path)

    const session = h2connect(sidecar.proxyUrl)
    t.teardown(() => session.close())
    const get = async (path: string, headers: Record<string, string>) => {
      const stream = session.request({ ':path': path, ...headers })
      stream.on('error', () => {})
      const [res] = (await once(stream, 'response')) as [Record<string, unknown>]
      stream.resume()
      await once(stream, 'close')
      return Number(res[':status'])
    }
    t.equal(
      await get('/differ', { ':authority': 'a.example', host: 'b.example' }),
      400,
      'host ≠ :authority: 400',
    )
    t.notOk(reached('/differ'), 'the upstream never got it')
    t.equal(
      await get('/normalised', { ':authority': 'a.example', host: 'A.Example:80' }),
      200,
      'the same authority in another case, with its default port: forwarded',
    )
    t.equal(await get('/host-only', { host: 'b.example' }), 200, 'a host alone: forwarded')
    t.equal(upstream.received.find((r) => r.url === '/host-only')?.headers.host, 'b.example', 'as the Host')

    // nghttp2 takes a second host field for a malformed request (RFC 9113 §8.1.1) and resets the stream itself
    t.equal(
      await h2cAnswer(port, '/h2-two', [
        [':authority', 'a.example'],
        ['host', 'a.example'],
        ['host', 'b.example'],
      ]),
      'reset 1',
      'two host fields: the stream is reset with PROTOCOL_ERROR',
    )
    t.notOk(reached('/h2-two'), 'the upstream never got it')
    t.equal(
      await h2cAnswer(port, '/h2-one', [
        [':authority', 'a.example'],
        ['host', 'a.example'],
      ]),
      'status 200',
      'the hand-encoded request with one host: forwarded',
    )
    const samples = await scrapeUntil(
      sidecar.adminUrl,
      (s) => metricValue(s, 'nhi_requests_total', { service: 'h2hosts', code: '400' }) >= 1,
      'the refusal to be recorded',
    )
    t.equal(
      metricValue(samples, 'nhi_requests_total', { service: 'h2hosts', code: '400' }),
      1,
      'recorded as 400',
    )
  },
)

t.test('an absolute-form target that names another authority than Host is refused', async (t) => {
  // RFC 9112 §3.2.2: the target's authority is the request's host and Host is to be ignored, which is what a
  // proxy in front routes on; the proxy and its upstream would read Host instead
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const sidecar = await startBin(t, { service: 'hosts', upstream: upstream.url })
  const port = Number(new URL(sidecar.proxyUrl).port)
  const reached = (path: string) => upstream.received.some((r) => r.url === path)

  const refused: [string, string][] = [
    ['another host', 'GET http://public.example/other HTTP/1.1\r\nHost: internal.example\r\n'],
    ['another port', 'GET http://a.example:8080/port HTTP/1.1\r\nHost: a.example\r\n'],
    ['user info before the host', 'GET http://a.example@b.example/userinfo HTTP/1.1\r\nHost: a.example\r\n'],
    ['no authority', 'GET http:///empty HTTP/1.1\r\nHost: a.example\r\n'],
  ]
  for (const [name, head] of refused) {
    const path = /\/\/[^/]*(\/\S*)/.exec(head)![1]!
    const answer = await exchange(port, `${head}Connection: close\r\n\r\n`)
    t.match(statusLine(answer), /^HTTP\/1\.1 400 /, `${name}: 400`)
    t.match(answer.toString('latin1'), /same authority as the request target/, `${name}: the answer says why`)
    t.notOk(reached(path), `${name}: the upstream never got it`)
  }

  const same: [string, string][] = [
    ['the same host', 'GET http://a.example/same HTTP/1.1\r\nHost: a.example\r\n'],
    ['in another case', 'GET http://A.Example/case HTTP/1.1\r\nHost: a.example\r\n'],
    ['the default port spelled out', 'GET http://a.example:80/port80 HTTP/1.1\r\nHost: a.example\r\n'],
    ['https and its default port', 'GET https://a.example/tls HTTP/1.1\r\nHost: a.example:443\r\n'],
    ['a query only', 'GET http://a.example?q=1 HTTP/1.1\r\nHost: a.example\r\n'],
  ]
  for (const [name, head] of same) {
    const answer = await exchange(port, `${head}Connection: close\r\n\r\n`)
    t.match(statusLine(answer), /^HTTP\/1\.1 200 /, `${name}: forwarded`)
  }
  t.ok(reached('/same') && reached('/case') && reached('/port80') && reached('/tls') && reached('/?q=1'))
})

t.test('a Host that is not a host[:port] is refused with 400 and never forwarded', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const sidecar = await startBin(t, { service: 'hosts', upstream: upstream.url })
  const port = Number(new URL(sidecar.proxyUrl).port)
  const reached = (path: string) => upstream.received.some((r) => r.url === path)
  // an h2c upstream's framing layer would refuse each of these as :authority: a 502 the client chose
  const malformed = [
    'a b',
    'a.example/evil',
    'user@a.example',
    'a"b',
    '<x>',
    'a.example:80x',
    'caf\u00e9.example',
  ]
  for (const [i, host] of malformed.entries()) {
    const path = `/malformed-${i}`
    const answer = await exchange(
      port,
      Buffer.from(`GET ${path} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`, 'latin1'),
    )
    t.match(statusLine(answer), /^HTTP\/1\.1 400 /, `${JSON.stringify(host)}: 400`)
    t.match(
      answer.toString('latin1'),
      /Host is not a valid host\[:port\]/,
      `${JSON.stringify(host)}: says why`,
    )
    t.notOk(reached(path), `${JSON.stringify(host)}: the upstream never got it`)
  }
  const fine = ['my_host.example:8080', '[::1]:8080', '127.0.0.1', 'a.example:', 'xn--caf-dma.example']
  for (const [i, host] of fine.entries()) {
    const path = `/fine-${i}`
    const answer = await exchange(port, `GET ${path} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`)
    t.match(statusLine(answer), /^HTTP\/1\.1 200 /, `${host}: forwarded`)
    t.equal(upstream.received.find((r) => r.url === path)?.headers.host, host, `${host}: as sent`)
  }
})

t.test('HTTP/2: an authority that is not a host[:port] is refused and never forwarded', async (t) => {
  // nghttp2 lets through every character RFC 3986 allows in an authority, user info and stray colons and
  // brackets included (RFC 9113 §8.3.1 forbids user info there): forwarded, they became the HTTP/1.1 Host
  // that an HTTP/1.1 client is refused for
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const sidecar = await startBin(t, { service: 'h2hosts', upstream: upstream.url })
  const port = Number(new URL(sidecar.proxyUrl).port)
  const reached = (path: string) => upstream.received.some((r) => r.url === path)
  // Node 22 and later reset a stream whose :authority carries user info themselves (PROTOCOL_ERROR) before
  // the proxy sees it; Node 20 hands it over, and the proxy answers 400. Refused either way.
  const refused = /^(status 400|reset 1)$/
  const malformed = ['a.example@evil.example', 'user@a.example:8080', 'a:b:c', 'a.example]']
  for (const [i, authority] of malformed.entries()) {
    const path = `/h2-malformed-${i}`
    t.match(
      await h2cAnswer(port, path, [[':authority', authority]]),
      refused,
      `:authority ${JSON.stringify(authority)}: refused`,
    )
    t.notOk(reached(path), `:authority ${JSON.stringify(authority)}: the upstream never got it`)
  }
  t.match(
    await h2cAnswer(port, '/h2-host-malformed', [
      [':authority', 'user@a.example'],
      ['host', 'user@a.example'],
    ]),
    refused,
    'a host alongside it, naming the same: refused',
  )
  t.notOk(reached('/h2-host-malformed'))
  const fine = ['a.example:8080', '[::1]:8080', 'my_host.example']
  for (const [i, authority] of fine.entries()) {
    const path = `/h2-fine-${i}`
    t.equal(await h2cAnswer(port, path, [[':authority', authority]]), 'status 200', `${authority}: forwarded`)
    t.equal(
      upstream.received.find((r) => r.url === path)?.headers.host,
      authority,
      `${authority}: as the Host`,
    )
  }
})
