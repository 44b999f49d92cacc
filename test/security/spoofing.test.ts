// Header spoofing through the real proxy: identity headers, forwarded client certificates and
// x-forwarded-* from an untrusted peer must not change the identity, and must not reach the upstream as
// if the proxy had said them. The trusted forwarder is 127.0.0.2, everyone else is 127.0.0.1.
import { connect } from 'node:net'
import pino from 'pino'
import t from 'tap'
import { Agent, request } from 'undici'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const _silent = pino({ level: 'silent' })
const ADMIN_SPIFFE = 'spiffe://cluster.local/ns/prod/sa/admin'

t.test('spoofed identity, forwarded-cert and forwarded-for headers', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const sidecar = await startTestSidecar(t, {
    service: 'orders',
    upstream: upstream.url,
    forwardedClientCert: { trustedProxies: ['127.0.0.2/32'], format: 'xfcc', toUpstream: 'sanitize_set' },
    identities: [
      { name: '{ns}/{sa}', kind: 'service', match: { spiffe: 'spiffe://cluster.local/ns/{ns}/sa/{sa}' } },
      { name: 'internal-network', kind: 'service', match: { remoteAddr: ['10.0.0.0/8'] } },
      {
        name: 'header-says-admin',
        kind: 'human',
        match: { header: { 'x-nhi-identity': 'admin' }, verified: true },
      },
    ],
  })
  const proxy = sidecar.proxyUrl
  const admin = sidecar.adminUrl
  const fromTrusted = new Agent({ localAddress: '127.0.0.2' })
  t.teardown(() => fromTrusted.close())

  const echo = async (headers: Record<string, string>, dispatcher?: Agent) => {
    const res = await request(`${proxy}/echo`, { headers, ...(dispatcher ? { dispatcher } : {}) })
    t.equal(res.statusCode, 200)
    return JSON.parse(await res.body.text()).headers as Record<string, string | undefined>
  }
  const spoof = {
    'x-nhi-identity': 'admin',
    'x-nhi-kind': 'human',
    'x-nhi-source': 'mtls',
    'x-nhi-verified': 'true',
    'x-nhi-extra': 'anything',
    'x-forwarded-client-cert': `By=spiffe://cluster.local/ns/mesh/sa/gw;URI=${ADMIN_SPIFFE}`,
    'client-cert': ':MIIBdummy:',
    'x-forwarded-for': '10.0.0.5',
    'x-forwarded-proto': 'https',
    'x-forwarded-host': 'admin.internal',
  }

  // control: the same XFCC from the trusted forwarder does name the workload
  const trusted = await echo({ 'x-forwarded-client-cert': spoof['x-forwarded-client-cert'] }, fromTrusted)
  t.equal(trusted['x-nhi-identity'], 'prod/admin', 'control: XFCC honoured from the trusted proxy')
  t.equal(trusted['x-nhi-source'], 'xfcc')

  const m0 = await scrape(admin)
  const seen = await echo(spoof)
  t.not(seen['x-nhi-identity'], 'prod/admin', 'untrusted XFCC does not name the identity')
  t.not(seen['x-nhi-identity'], 'internal-network', 'x-forwarded-for does not satisfy remoteAddr')
  t.not(seen['x-nhi-identity'], 'admin')
  t.not(seen['x-nhi-identity'], 'header-says-admin', 'the spoofed header is not evidence of verification')
  t.equal(seen['x-nhi-verified'], 'false')
  t.equal(seen['x-nhi-source'], 'anonymous')
  t.notOk(seen['x-nhi-extra'], 'every incoming x-nhi-* is stripped')
  t.notOk(seen['x-forwarded-client-cert'], 'untrusted XFCC not passed upstream')
  t.notOk(seen['client-cert'], 'untrusted Client-Cert not passed upstream')
  const xff = String(seen['x-forwarded-for']).split(/,\s*/)
  t.equal(xff[xff.length - 1], '127.0.0.1', 'x-forwarded-for ends with the real peer')
  t.equal(
    String(seen['x-forwarded-proto']).split(/,\s*/).pop(),
    'http',
    'x-forwarded-proto ends with the real scheme',
  )

  const m1 = await scrape(admin)
  const delta = (name: string, labels: Record<string, string>) =>
    metricValue(m1, name, labels) - metricValue(m0, name, labels)
  t.ok(
    delta('nhi_auth_failures_total', { reason: 'untrusted_forwarder' }) >= 1,
    'untrusted forwarder counted',
  )
  t.ok(
    delta('nhi_credential_anomalies_total', { type: 'spoofed_header' }) >= 1,
    'spoofing counted as an anomaly',
  )
  t.equal(
    metricValue(m1, 'nhi_requests_total', { identity: 'admin' }),
    0,
    'no metric series for the spoofed name',
  )

  // the trusted forwarder cannot set identity headers either, nor pick remoteAddr through x-forwarded-for
  const viaTrusted = await echo(
    { 'x-nhi-identity': 'admin', 'x-nhi-verified': 'true', 'x-forwarded-for': '10.0.0.5' },
    fromTrusted,
  )
  t.not(viaTrusted['x-nhi-identity'], 'admin', 'x-nhi-* stripped from a trusted proxy too')
  t.not(
    viaTrusted['x-nhi-identity'],
    'internal-network',
    'remoteAddr is the socket, even behind a trusted proxy',
  )
  t.equal(viaTrusted['x-nhi-verified'], 'false')
  t.equal(String(viaTrusted['x-forwarded-for']).split(/,\s*/).pop(), '127.0.0.2')

  // header name case and duplicates do not sneak identity headers through
  const res = await request(`${proxy}/echo`, {
    headers: ['X-NHI-Identity', 'admin', 'x-nhi-identity', 'root', 'X-Nhi-Verified', 'true'],
  })
  const dupSeen = JSON.parse(await res.body.text()).headers as Record<string, string>
  t.equal(dupSeen['x-nhi-verified'], 'false')
  t.notOk(['admin', 'root'].includes(dupSeen['x-nhi-identity']!), 'mixed-case duplicates stripped')
  t.notOk(
    upstream.received.some((r) => ['admin', 'root'].includes(String(r.headers['x-nhi-identity']))),
    'the upstream never received a spoofed identity',
  )
})

t.test(
  "a client's Forwarded header is replaced by the proxy's own element; a trusted proxy's is appended to",
  async (t) => {
    // Spring's ForwardedHeaderFilter takes the scheme and host from the first Forwarded element, ahead of any
    // x-forwarded-*; Rack 3 walks the list from the right past its trusted proxy, this sidecar. From an
    // untrusted peer the first element must be this hop's as well as the last, as x-forwarded-proto and
    // -host are; a trusted proxy's elements stay in front of it.
    const upstream = await startUpstream()
    t.teardown(() => upstream.close())
    const send = async (port: number, lines: string) => {
      const before = upstream.received.length
      const answer = await rawExchange(
        port,
        `GET /echo HTTP/1.1\r\nHost: app.example:8080\r\n${lines}Connection: close\r\n\r\n`,
      )
      t.match(answer, /^HTTP\/1\.1 200 /)
      return upstream.received[before]!.headers
    }
    const own = 'for=127.0.0.1;proto=http;host="app.example:8080"'

    const plain = await startTestSidecar(t, { upstream: upstream.url })
    const port = plain.proxyAddress.port
    const one = await send(port, 'Forwarded: for=10.0.0.5;proto=https;host=admin.internal\r\n')
    t.equal(one['forwarded'], own, "the client's element does not reach the upstream")
    const two = await send(port, 'Forwarded: for=10.0.0.5\r\nforwarded: for="[2001:db8::1]";proto=https\r\n')
    t.equal(two['forwarded'], own, 'several Forwarded lines are replaced as one')
    const none = await send(port, '')
    t.notOk('forwarded' in none, 'no Forwarded is added to a request that had none (X-Forwarded-For says it)')

    const behindIngress = await startTestSidecar(t, {
      upstream: upstream.url,
      forwardedClientCert: { trustedProxies: ['127.0.0.1/32'], format: 'xfcc' },
    })
    const viaTrusted = await send(
      behindIngress.proxyAddress.port,
      'Forwarded: for=10.0.0.5\r\nforwarded: for="[2001:db8::1]";proto=https\r\n',
    )
    t.equal(
      viaTrusted['forwarded'],
      `for=10.0.0.5, for="[2001:db8::1]";proto=https, ${own}`,
      "a trusted proxy's elements first, then this hop's",
    )
  },
)

t.test(
  'x-forwarded-proto and -host from an untrusted peer are replaced; from a trusted proxy appended to',
  async (t) => {
    // Express (req.protocol, req.hostname) and Spring read the first value: an appended chain would hand them
    // the client's own scheme and host. Only a trusted proxy's values are kept in front of this hop's.
    const upstream = await startUpstream()
    t.teardown(() => upstream.close())
    const send = async (port: number, lines: string) => {
      const before = upstream.received.length
      const answer = await rawExchange(
        port,
        `GET /echo HTTP/1.1\r\nHost: app.example:8080\r\n${lines}Connection: close\r\n\r\n`,
      )
      t.match(answer, /^HTTP\/1\.1 200 /)
      return upstream.received[before]!.headers
    }
    const forged =
      'X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-For: 10.0.0.5\r\n'

    const plain = await startTestSidecar(t, { upstream: upstream.url })
    const port = plain.proxyAddress.port
    const seen = await send(port, forged)
    t.equal(seen['x-forwarded-proto'], 'http', "this hop's scheme, not the client's")
    t.equal(seen['x-forwarded-host'], 'app.example:8080', "this hop's Host, not the client's")
    t.equal(seen['x-forwarded-for'], '10.0.0.5, 127.0.0.1', 'x-forwarded-for is still appended to')
    const spelled = await send(port, 'X_Forwarded_Proto: https\r\nx_forwarded_host: evil.example\r\n')
    t.equal(spelled['x-forwarded-proto'], 'http')
    t.equal(spelled['x-forwarded-host'], 'app.example:8080')
    t.notOk('x_forwarded_proto' in spelled, 'another spelling does not reach the upstream')
    t.notOk('x_forwarded_host' in spelled)
    const twice = await send(port, 'X-Forwarded-Proto: https\r\nX-Forwarded-Proto: https\r\n')
    t.equal(twice['x-forwarded-proto'], 'http', 'repeated lines are replaced as one')
    const only = await send(port, 'X-Forwarded-Host: evil.example\r\n')
    t.equal(only['x-forwarded-host'], 'app.example:8080', 'a forged host alone is replaced too')
    t.equal(only['x-forwarded-proto'], 'http')
    const none = await send(port, '')
    t.equal(none['x-forwarded-proto'], 'http')
    t.equal(none['x-forwarded-host'], 'app.example:8080')
    t.equal(none['x-forwarded-for'], '127.0.0.1')

    const behindIngress = await startTestSidecar(t, {
      upstream: upstream.url,
      forwardedClientCert: { trustedProxies: ['127.0.0.1/32'], format: 'xfcc' },
    })
    const viaTrusted = await send(behindIngress.proxyAddress.port, forged)
    t.equal(
      viaTrusted['x-forwarded-proto'],
      'https, http',
      "the trusted proxy's scheme first, then this hop's",
    )
    t.equal(viaTrusted['x-forwarded-host'], 'evil.example, app.example:8080')
    t.equal(viaTrusted['x-forwarded-for'], '10.0.0.5, 127.0.0.1')
    const trustedSpelled = await send(behindIngress.proxyAddress.port, 'X_Forwarded_Proto: https\r\n')
    t.equal(
      trustedSpelled['x-forwarded-proto'],
      'http',
      'only the exact name is read, from a trusted proxy too',
    )
    t.notOk('x_forwarded_proto' in trustedSpelled)
  },
)

function rawExchange(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => socket.write(text))
    let out = ''
    socket.setEncoding('latin1')
    socket.on('data', (d: string) => {
      out += d
    })
    socket.on('end', () => resolve(out))
    socket.on('error', reject)
  })
}
