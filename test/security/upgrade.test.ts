// Only WebSocket upgrades are tunnelled (issue 16, item 3). Any other Upgrade token (h2c above all) is
// stripped and the request is served as a plain HTTP/1.1 request on a connection that closes afterwards,
// so nothing the client sends after it can reach the upstream unseen by attribution, policy and audit.
import { createHash } from 'node:crypto'
import { once } from 'node:events'
import { createServer, type IncomingHttpHeaders } from 'node:http'
import { connect as h2connect } from 'node:http2'
import type { AddressInfo } from 'node:net'
import type { Duplex } from 'node:stream'
import t, { type Test } from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { rawClient, scriptedUpstream } from '../helpers/net.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'

/** An upstream that switches to whatever protocol it is asked for and records every byte of the tunnel. */
async function startPermissiveUpstream() {
  const requests: { method: string; url: string; headers: IncomingHttpHeaders }[] = []
  const upgrades: { url: string; headers: IncomingHttpHeaders }[] = []
  let tunnelled = ''
  const sockets = new Set<Duplex>()
  const server = createServer((req, res) => {
    requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers })
    req.resume()
    // /slow: an answer still being waited for when a pipelined request arrives behind it
    const delay = req.url === '/slow' ? 300 : 0
    // /stream: an answer still being written, a chunk every 20 ms for a second
    if (req.url === '/stream') {
      let n = 0
      const timer = setInterval(() => {
        if (++n === 50 || res.destroyed) {
          clearInterval(timer)
          res.end()
        } else res.write(`chunk ${n}\n`)
      }, 20)
      return
    }
    req.on('end', () => setTimeout(() => res.end(`plain ${req.url}`), delay))
  })
  server.on('upgrade', (req, socket, head) => {
    upgrades.push({ url: req.url ?? '', headers: req.headers })
    sockets.add(socket)
    tunnelled += head.toString('latin1')
    socket.on('data', (c: Buffer) => {
      tunnelled += c.toString('latin1')
    })
    socket.on('error', () => {})
    // /no-accept: switches without proving it read the key (a server that switches to anything)
    const key = req.url === '/no-accept' ? undefined : req.headers['sec-websocket-key']
    const accept = key
      ? `sec-websocket-accept: ${createHash('sha1').update(`${key}${WS_GUID}`).digest('base64')}\r\n`
      : ''
    socket.write(
      `HTTP/1.1 101 Switching Protocols\r\nupgrade: ${req.headers.upgrade}\r\nconnection: Upgrade\r\n${accept}\r\n`,
    )
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    upgrades,
    tunnelled: () => tunnelled,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        for (const s of sockets) s.destroy()
        server.close(() => resolve())
      }),
  }
}

function statusOf(text: string): number {
  return Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0)
}

const FORGED =
  'GET /second HTTP/1.1\r\nHost: x\r\nx-nhi-identity: forged-admin\r\nx-nhi-verified: true\r\n\r\n'

async function setup(t: Test) {
  const up = await startPermissiveUpstream()
  t.teardown(() => up.close())
  const sidecar = await startTestSidecar(t, { upstream: up.url })
  return { up, port: sidecar.proxyAddress.port, admin: sidecar.adminAddress.port }
}

t.test('Upgrade: h2c is served as a plain request and nothing after it is tunnelled', async (t) => {
  const { up, port, admin } = await setup(t)
  const c = await rawClient(port)
  c.socket.write(
    'GET /first HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n' +
      'HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n',
  )
  await eventually(() => c.text().includes('\r\n\r\n'), { what: 'an answer to the h2c request' })
  t.equal(statusOf(c.text()), 200, 'answered as a plain HTTP/1.1 request, not 101')
  t.match(c.text(), /connection: close/i, 'and the connection is closed after it')
  if (!c.closed()) c.socket.write(FORGED)
  await eventually(() => c.closed() || up.tunnelled().includes('forged-admin'), {
    what: 'the connection to close (or the forged request to leak)',
    timeoutMs: 5000,
  })
  t.equal(up.upgrades.length, 0, 'the upstream never saw an upgrade')
  t.notMatch(up.tunnelled(), /forged-admin/, 'the forged x-nhi-identity never reached the upstream')
  t.equal(up.requests.length, 1, 'exactly one request reached the upstream')
  const first = up.requests[0]!
  t.equal(first.url, '/first')
  t.equal(first.headers.upgrade, undefined, 'Upgrade stripped')
  t.equal(first.headers['http2-settings'], undefined, 'HTTP2-Settings stripped')
  t.notMatch(String(first.headers.connection ?? ''), /upgrade/i)
  t.equal(first.headers['x-nhi-identity'], 'anonymous', 'identity headers were set by the proxy')
  const metrics = await eventually(
    async () => {
      const text = await (await fetch(`http://127.0.0.1:${admin}/metrics`)).text()
      return /nhi_requests_total\{[^}]*code="200"[^}]*\} 1\b/.test(text) && text
    },
    { what: 'the request in /metrics' },
  )
  t.ok(metrics, 'the request was recorded')
})

t.test('other upgrade tokens and mixed lists never open a non-websocket tunnel', async (t) => {
  const { up, port } = await setup(t)
  for (const token of ['h2c', 'TLS/1.0', 'foo', 'h2c, websocket-ish', 'HTTP/2.0']) {
    const c = await rawClient(port)
    c.socket.write(`GET /t HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: ${token}\r\n\r\n${FORGED}`)
    await eventually(() => c.closed(), { what: `the connection for "${token}" to close`, timeoutMs: 5000 })
    t.equal(statusOf(c.text()), 200, `"${token}": plain answer`)
  }
  t.equal(up.upgrades.length, 0, 'no upgrade reached the upstream')
  t.notMatch(up.tunnelled(), /forged-admin/)
  t.notOk(
    up.requests.some((r) => r.url === '/second' || r.headers['x-nhi-identity'] === 'forged-admin'),
    'the pipelined forged request was never forwarded',
  )
})

t.test('a non-websocket upgrade with a body is refused with 400', async (t) => {
  const { up, port } = await setup(t)
  const c = await rawClient(port)
  c.socket.write(
    'POST /t HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: h2c\r\nContent-Length: 5\r\n\r\nhello',
  )
  await eventually(() => c.closed(), { what: 'the connection to close' })
  t.equal(statusOf(c.text()), 400)
  t.equal(up.requests.length + up.upgrades.length, 0, 'nothing reached the upstream')
})

t.test('HTTP2-Settings never crosses the proxy, even without an upgrade', async (t) => {
  const { up, port } = await setup(t)
  const res = await fetch(`http://127.0.0.1:${port}/x`, { headers: { 'http2-settings': 'AAMAAABk' } })
  t.equal(res.status, 200)
  await res.text()
  t.equal(up.requests[0]!.headers['http2-settings'], undefined)
})

t.test('a websocket offer is tunnelled as websocket only, whatever the case and the list', async (t) => {
  const { up, port } = await setup(t)
  for (const token of ['WebSocket', 'h2c, websocket']) {
    const c = await rawClient(port)
    c.socket.write(
      `GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: ${token}\r\n` +
        'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
    )
    await eventually(() => c.text().includes('\r\n\r\n'), { what: `the answer to "${token}"` })
    t.equal(statusOf(c.text()), 101, `"${token}": switched`)
    c.socket.destroy()
  }
  t.same(
    up.upgrades.map((u) => u.headers.upgrade),
    ['websocket', 'websocket'],
    'the upstream was offered websocket and nothing else',
  )
})

t.test('a websocket upgrade that is not a websocket handshake is refused', async (t) => {
  const { up, port } = await setup(t)
  for (const req of [
    // no Sec-WebSocket-Key: not a handshake any websocket server would accept
    'GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n',
    // RFC 6455 §4.1: the handshake is a GET
    'POST /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n' +
      'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
  ]) {
    const c = await rawClient(port)
    c.socket.write(req + FORGED)
    await eventually(() => c.closed(), { what: 'the connection to close' })
    t.equal(statusOf(c.text()), 400)
  }
  t.equal(up.upgrades.length, 0)
  t.notMatch(up.tunnelled(), /forged-admin/)
})

t.test('a 101 that is not a websocket answer to this handshake opens no tunnel (502)', async (t) => {
  const { up, port } = await setup(t)
  const c = await rawClient(port)
  c.socket.write(
    'GET /no-accept HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n' +
      'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
  )
  await eventually(() => c.closed(), { what: 'the connection to close' })
  t.equal(statusOf(c.text()), 502)
  t.equal(up.upgrades.length, 1, 'the upstream was asked')
  t.equal(up.tunnelled(), '', 'but nothing was tunnelled')
})

t.test(
  "the upstream's 101 reaches the client without its hop-by-hop fields, other bytes as sent",
  async (t) => {
    // a raw upstream, so that the 101 carries exactly these lines
    const up = await scriptedUpstream(t, ({ head }) => {
      const key = /sec-websocket-key: (\S+)/i.exec(head)?.[1] ?? ''
      const accept = createHash('sha1').update(`${key}${WS_GUID}`).digest('base64')
      return (
        'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n' +
        'Connection: Upgrade, X-Upstream-Hop\r\nConnection: keep-alive\r\nX-Upstream-Hop: internal\r\n' +
        'Keep-Alive: timeout=5\r\nX-Menu: caf\xe9\r\nSet-Cookie: s=1\r\n' +
        `Sec-WebSocket-Accept: ${accept}\r\n\r\nhello`
      )
    })
    const sidecar = await startTestSidecar(t, { upstream: up.url })
    const c = await rawClient(sidecar.proxyAddress.port)
    c.socket.write(
      'GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n' +
        'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
    )
    await eventually(() => c.text().endsWith('\r\n\r\nhello'), { what: 'the 101 and the first tunnel bytes' })
    const head = c.text().slice(0, c.text().indexOf('\r\n\r\n') + 2)
    t.equal(statusOf(head), 101)
    t.match(head, /\r\nupgrade: websocket\r\n/i, 'the switch is announced')
    t.match(head, /\r\nconnection: upgrade\r\n/i)
    t.match(head, /\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK\+xOo=\r\n/)
    t.match(head, /\r\nSet-Cookie: s=1\r\n/, 'an end-to-end field is forwarded')
    t.match(
      head,
      /\r\nX-Menu: caf\xe9\r\n/,
      'a value byte outside ASCII is forwarded as the upstream sent it',
    )
    t.notMatch(head, /x-upstream-hop|internal/i, 'a field the upstream named in Connection is not forwarded')
    t.notMatch(head, /keep-alive/i, 'nor are Keep-Alive and the upstream own Connection lines')
    t.equal(head.match(/\r\nconnection:/gi)?.length, 1, 'one Connection line')
  },
)

/** the status codes of every HTTP/1.1 response head in `text`, in the order they arrived */
function statuses(text: string): number[] {
  return [...text.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => Number(m[1]))
}

const WS_HANDSHAKE =
  'GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n' +
  'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n'

t.test('an upgrade or CONNECT pipelined behind a request is answered after it, in order', async (t) => {
  // Node hands the socket over for an upgrade or CONNECT as soon as it parses one, while the answer to the
  // request ahead of it may still be on its way: answering at once put the second answer first (or threw,
  // ending the process)
  const { up, port } = await setup(t)
  const behindSlow: [string, string, number][] = [
    ['CONNECT', 'CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n', 501],
    ['Upgrade: h2c', 'GET /h2c HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n', 200],
    ['a websocket handshake', WS_HANDSHAKE, 101],
    [
      'a websocket offer that is no handshake',
      'POST /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n',
      400,
    ],
  ]
  for (const [what, second, status] of behindSlow) {
    const c = await rawClient(port)
    c.socket.write(`GET /slow HTTP/1.1\r\nHost: x\r\n\r\n${second}`)
    await eventually(() => statuses(c.text()).length === 2, { what: `both answers (${what})` })
    t.same(statuses(c.text()), [200, status], `${what}: the earlier request's answer first`)
    t.ok(
      c.text().indexOf('plain /slow') < c.text().lastIndexOf('HTTP/1.1 '),
      `${what}: its body before the next head`,
    )
    c.socket.destroy()
  }
  // the proxy's own refusal ahead of a CONNECT, all in one write
  const refused = await rawClient(port)
  refused.socket.write('GET /%2f HTTP/1.1\r\nHost: a\r\n\r\nCONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n')
  await eventually(() => refused.closed(), { what: 'the CONNECT connection to close' })
  t.same(statuses(refused.text()), [400, 501], "the 400, then the CONNECT's 501")
  t.equal(up.upgrades.length, 1, 'only the websocket handshake reached the upstream as an upgrade')
})

t.test('an upgrade or CONNECT whose connection closes before its turn is still recorded', async (t) => {
  const { up, port, admin } = await setup(t)
  let slowSeen = 0
  for (const second of ['CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n', WS_HANDSHAKE]) {
    const c = await rawClient(port)
    c.socket.write(`GET /slow HTTP/1.1\r\nHost: x\r\n\r\n${second}`)
    // the proxy has read both (one write) and forwarded the first: go away before it is answered
    slowSeen++
    await eventually(() => up.requests.filter((r) => r.url === '/slow').length === slowSeen, {
      what: '/slow at the upstream',
    })
    c.socket.destroy()
  }
  // the same behind an answer still streaming when the client leaves: that answer ends with 'close', not
  // 'finish', and still holds the socket
  for (const second of [
    'CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n',
    'GET /y HTTP/1.1\r\nHost: x\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n',
  ]) {
    const c = await rawClient(port)
    c.socket.write(`GET /stream HTTP/1.1\r\nHost: x\r\n\r\n${second}`)
    await eventually(() => c.text().includes('chunk 2'), { what: 'the stream under way' })
    c.socket.destroy()
  }
  const recorded = (text: string) =>
    [...text.matchAll(/^nhi_requests_total\{([^}]*)\} (\d+)/gm)].map(
      (m) => [m[1] ?? '', Number(m[2])] as const,
    )
  const series = await eventually(
    async () => {
      const rows = recorded(await (await fetch(`http://127.0.0.1:${admin}/metrics`)).text())
      return rows.reduce((n, [, v]) => n + v, 0) === 8 && rows
    },
    { what: 'all eight requests recorded' },
  )
  t.ok(
    series.some(([labels, v]) => labels.includes('method="CONNECT"') && v === 2),
    'the CONNECTs among them',
  )
  const after = await fetch(`http://127.0.0.1:${port}/after`)
  t.equal(after.status, 200, 'the proxy still serves')
})

/** the audit line of the request sent with `x-request-id: id`, once recorded */
async function auditOf(adminPort: number, id: string): Promise<Record<string, unknown>> {
  return eventually(
    async () => {
      const res = await fetch(`http://127.0.0.1:${adminPort}/audit?request_id=${id}`)
      return ((await res.json()) as { events: Record<string, unknown>[] }).events[0]
    },
    { what: `the audit line of ${id}` },
  )
}

/** the api key `key-of-deploy` names `deployer` of team platform */
const DEPLOYER = {
  apiKeys: {
    keys: [{ name: 'deploy', sha256: createHash('sha256').update('key-of-deploy').digest('hex') }],
  },
  identities: [{ name: 'deployer', team: 'platform', match: { apiKey: 'deploy' } }],
}

t.test('an upgrade the proxy will not switch to is identified and decided first', async (t) => {
  // these were refused 400 before identification: a request the policy denies was answered 400, not its
  // 403, and every one was recorded as anonymous whoever sent it (found by upgrade-differential.test.ts)
  const up = await startPermissiveUpstream()
  t.teardown(() => up.close())
  const sidecar = await startTestSidecar(t, {
    upstream: up.url,
    ...DEPLOYER,
    policy: { mode: 'enforce', rules: [{ route: '/ws/**', allow: [{ team: 'platform' }] }] },
  })
  const port = sidecar.proxyAddress.port
  const admin = sidecar.adminAddress.port
  const cases: [string, string, number][] = [
    ['a websocket offer without a key', 'Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n', 400],
    [
      'an h2c upgrade with a body',
      'Connection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 5\r\n\r\nhello',
      400,
    ],
  ]
  for (const [i, [what, rest, allowed]] of cases.entries()) {
    for (const key of [undefined, 'key-of-deploy']) {
      const id = `refused-${i}-${key ? 'deployer' : 'anonymous'}`
      const c = await rawClient(port)
      c.socket.write(
        `${i === 1 ? 'POST' : 'GET'} /ws/chat HTTP/1.1\r\nHost: x\r\nx-request-id: ${id}\r\n` +
          `${key ? `x-api-key: ${key}\r\n` : ''}${rest}`,
      )
      await eventually(() => c.closed(), { what: `the connection of ${what} to close` })
      const line = await auditOf(admin, id)
      const expected = key
        ? { status: allowed, identity: 'deployer', decision: 'allow' }
        : { status: 403, identity: 'anonymous', decision: 'deny' }
      t.equal(statusOf(c.text()), expected.status, `${what}, ${key ? 'allowed' : 'denied'}: answered`)
      t.same(
        { status: line['status'], identity: line['identity'], decision: line['decision'] },
        expected,
        `${what}, ${key ? 'allowed' : 'denied'}: recorded as decided`,
      )
    }
  }
  t.equal(up.requests.length + up.upgrades.length, 0, 'nothing reached the upstream')
})

t.test('a websocket handshake with a body is refused: its body is not tunnel bytes', async (t) => {
  // it was switched, and the body the client framed as HTTP reached the upstream as the tunnel's first bytes
  const { up, port } = await setup(t)
  for (const framing of [
    'Content-Length: 5\r\n\r\nhello',
    'Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n',
  ]) {
    const c = await rawClient(port)
    c.socket.write(`${WS_HANDSHAKE.slice(0, -2)}${framing}${FORGED}`)
    await eventually(() => c.closed() || statusOf(c.text()) === 101, { what: 'the connection to close' })
    t.equal(statusOf(c.text()), 400, `${framing.split(':')[0]}: refused`)
    c.socket.destroy()
  }
  t.equal(up.upgrades.length, 0, 'the upstream was offered no handshake')
  t.equal(up.tunnelled(), '', 'and got no tunnel bytes')
})

t.test('a CONNECT is recorded as who sent it, over HTTP/1.1 and HTTP/2', async (t) => {
  // it was answered 501 before identification, so the audit trail had every open-proxy probe as anonymous,
  // whatever credentials it carried (found by upgrade-differential.test.ts)
  const up = await startPermissiveUpstream()
  t.teardown(() => up.close())
  const sidecar = await startTestSidecar(t, { upstream: up.url, ...DEPLOYER })
  const c = await rawClient(sidecar.proxyAddress.port)
  c.socket.write(
    'CONNECT internal.example:22 HTTP/1.1\r\nHost: internal.example:22\r\nx-request-id: connect-h1\r\n' +
      `x-api-key: key-of-deploy\r\n\r\n${FORGED}`,
  )
  await eventually(() => c.closed(), { what: 'the connection to close' })
  t.equal(statusOf(c.text()), 501)
  const session = h2connect(sidecar.proxyUrl)
  session.on('error', () => {})
  t.teardown(() => session.destroy())
  const stream = session.request({
    ':method': 'CONNECT',
    ':authority': 'internal.example:22',
    'x-request-id': 'connect-h2',
    'x-api-key': 'key-of-deploy',
  })
  stream.on('error', () => {})
  const [headers] = (await once(stream, 'response')) as [IncomingHttpHeaders]
  t.equal(headers[':status'], 501)
  for (const id of ['connect-h1', 'connect-h2']) {
    const line = await auditOf(sidecar.adminAddress.port, id)
    t.same(
      { status: line['status'], identity: line['identity'], source: line['source'] },
      { status: 501, identity: 'deployer', source: 'apikey' },
      `${id}: recorded with its identity`,
    )
  }
  // a CONNECT names its host like any HTTP/1.1 request (RFC 9112 §3.2; node:http does not check it for one):
  // without, it is refused before identification as any request that names its host ambiguously
  const hostless = await rawClient(sidecar.proxyAddress.port)
  hostless.socket.write('CONNECT internal.example:22 HTTP/1.1\r\nx-api-key: key-of-deploy\r\n\r\n')
  await eventually(() => hostless.closed(), { what: 'the connection without Host to close' })
  t.equal(statusOf(hostless.text()), 400, 'a CONNECT without Host: 400')
  t.equal(up.requests.length + up.upgrades.length, 0, 'nothing reached the upstream')
})
