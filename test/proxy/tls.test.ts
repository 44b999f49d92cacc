import t from 'tap'
import { Agent, Client, request } from 'undici'
import type { CertEvidence } from '../../src/types.ts'
import { createCA, createServerPki, issueCert } from '../helpers/pki.ts'
import { startMtlsProxy, type Teardown } from '../helpers/proxy-fixture.ts'

const { ca: serverCa, server } = await createServerPki()
const clientCa = await createCA('client-ca')
const otherCa = await createCA('other-ca')
const goodClient = await issueCert(clientCa, {
  cn: 'nightly',
  uriSans: ['spiffe://cluster.local/ns/ci/sa/nightly'],
})
const strangerClient = await issueCert(otherCa, { cn: 'stranger' })

function clientAgent(cert?: { certPem: string; keyPem: string }): Agent {
  return new Agent({
    connect: {
      ca: serverCa.certPem,
      servername: 'localhost',
      ...(cert ? { cert: cert.certPem, key: cert.keyPem } : {}),
    },
  })
}

const startTlsProxy = (t: Teardown, clientCert: 'optional' | 'required') =>
  startMtlsProxy(t, { server, clientCa }, clientCert)

t.test('required mTLS: a trusted client cert is parsed once per connection', async (t) => {
  const { httpsUrl, parser, pipeline, up } = await startTlsProxy(t, 'required')
  // a Client holds exactly one connection, so five sequential requests share it
  const client = new Client(httpsUrl, {
    connect: {
      ca: serverCa.certPem,
      servername: 'localhost',
      cert: goodClient.certPem,
      key: goodClient.keyPem,
    },
  })
  t.teardown(() => client.close())
  for (let i = 0; i < 5; i++) {
    const res = await client.request({ path: '/echo', method: 'GET' })
    t.equal(res.statusCode, 200)
    await res.body.dump()
  }
  t.same(parser.calls, ['nightly'], 'parsePeerCert called once for five keep-alive requests')
  const events = await pipeline.waitForEvents(5)
  t.equal(events.length, 5)
  const conns = new Set(pipeline.seen.map((s) => s.conn))
  t.equal(conns.size, 1, 'the same ConnectionInfo object is reused')
  const conn = pipeline.seen[0]!.conn
  t.equal(conn.tls, true)
  t.equal((conn.peerCert as CertEvidence).cn, 'nightly')
  t.equal((conn.peerCert as CertEvidence).verified, true)
  t.equal(up.received[0]!.headers['x-forwarded-proto'], 'https')
})

t.test('required mTLS rejects clients without a cert or with an untrusted one', async (t) => {
  const { httpsUrl, parser, up } = await startTlsProxy(t, 'required')
  const noCert = clientAgent()
  const stranger = clientAgent(strangerClient)
  t.teardown(() => noCert.close())
  t.teardown(() => stranger.close())
  await t.rejects(
    request(`${httpsUrl}/echo`, { dispatcher: noCert }).then((r) => r.body.text()),
    'no client cert',
  )
  await t.rejects(
    request(`${httpsUrl}/echo`, { dispatcher: stranger }).then((r) => r.body.text()),
    'untrusted CA',
  )
  t.equal(up.received.length, 0, 'nothing reached the upstream')
  t.same(parser.calls, [])
})

t.test('optional mTLS serves clients without a cert and marks untrusted certs unverified', async (t) => {
  const { httpsUrl, parser, pipeline } = await startTlsProxy(t, 'optional')
  const noCert = clientAgent()
  const stranger = clientAgent(strangerClient)
  t.teardown(() => noCert.close())
  t.teardown(() => stranger.close())
  const a = await request(`${httpsUrl}/echo`, { dispatcher: noCert })
  t.equal(a.statusCode, 200)
  await a.body.dump()
  const b = await request(`${httpsUrl}/echo`, { dispatcher: stranger })
  t.equal(b.statusCode, 200)
  await b.body.dump()
  await pipeline.waitForEvents(2)
  t.equal(parser.calls.length, 2)
  t.equal(pipeline.seen[0]!.conn.peerCert, undefined, 'no cert, no evidence')
  t.equal(
    (pipeline.seen[1]!.conn.peerCert as CertEvidence).verified,
    false,
    'untrusted chain is not verified',
  )
})

// A client that offers only `http/1.0` in ALPN (curl --http1.0) got a fatal no_application_protocol alert
// from the TLS listener, where the plain listener served it.
t.test('ALPN: a client offering only http/1.0 is served over TLS', async (t) => {
  const { connect } = await import('node:tls')
  const { httpsUrl } = await startTlsProxy(t, 'optional')
  const port = Number(new URL(httpsUrl).port)
  const answer = await new Promise<string>((resolve, reject) => {
    const socket = connect(
      { host: '127.0.0.1', port, ca: serverCa.certPem, servername: 'localhost', ALPNProtocols: ['http/1.0'] },
      () => socket.write('GET /echo HTTP/1.0\r\nHost: localhost\r\n\r\n'),
    )
    let text = ''
    socket.setEncoding('latin1')
    socket.on('data', (d: string) => {
      text += d
    })
    socket.on('end', () => resolve(text))
    socket.on('error', reject)
  })
  t.match(answer, /^HTTP\/1\.1 200 /, 'answered')
})

/**
 * Renegotiates a TLS 1.2 connection to the listener with a client certificate; resolves with the error the
 * renegotiation ended with, or undefined when the listener went through with it.
 */
async function renegotiation(port: number): Promise<Error | undefined> {
  const { connect } = await import('node:tls')
  const socket = connect({
    host: '127.0.0.1',
    port,
    ca: serverCa.certPem,
    servername: 'localhost',
    cert: goodClient.certPem,
    key: goodClient.keyPem,
    maxVersion: 'TLSv1.2',
    ALPNProtocols: ['http/1.1'],
  })
  socket.on('error', () => {})
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', resolve)
    socket.once('error', reject)
  })
  try {
    return await new Promise<Error | undefined>((resolve) => {
      const started = socket.renegotiate({}, (err) => resolve(err ?? undefined))
      if (!started) resolve(new Error('renegotiation not started'))
      socket.once('close', () => resolve(new Error('closed')))
    })
  } finally {
    socket.destroy()
  }
}

// Node sets `authorized` on a connection's first handshake and never clears it: a client that renegotiated
// with another certificate, one no CA issued, was read as that certificate, verified. The listener refuses
// renegotiation (HTTP/2 forbids it, TLS 1.3 has none), also with material rotated in.
t.test('the TLS listener refuses a client-initiated renegotiation, also after a rotation', async (t) => {
  const { httpsUrl, proxy } = await startTlsProxy(t, 'optional')
  const port = Number(new URL(httpsUrl).port)
  t.ok(await renegotiation(port), 'renegotiation refused')
  proxy.setListenerTls({ cert: server.certPem, key: server.keyPem, ca: clientCa.certPem })
  t.ok(await renegotiation(port), 'renegotiation refused after the listener material was rotated')
})
