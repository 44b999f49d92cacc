// Spellings of identity and forwarded-certificate header names that an upstream framework reads as the same
// header: CGI/WSGI/Rack/PHP turn `X-Nhi-Identity`, `X_NHI_IDENTITY` and `x-nhi_identity` alike into
// HTTP_X_NHI_IDENTITY. Every such spelling is an identity header: stripped before the upstream and counted as
// spoofed, from any peer. The trusted forwarder is 127.0.0.2, everyone else is 127.0.0.1.
import t from 'tap'
import { Agent, request } from 'undici'
import { eventually } from '../helpers/eventually.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { rawExchange } from '../helpers/net.ts'
import { startTestSidecar, type TestSidecar } from '../helpers/sidecar.ts'
import { startUpstream, type TestUpstream } from '../helpers/upstream.ts'

const ADMIN_SPIFFE = 'spiffe://cluster.local/ns/prod/sa/admin'

/**
 * One sidecar with the default config in front of one upstream, started by the first test that asks and
 * shared by the tests that only look at what reaches the upstream (each reads its own request there).
 */
let plain: Promise<{ upstream: TestUpstream; sidecar: TestSidecar }> | undefined
function plainSidecar(): Promise<{ upstream: TestUpstream; sidecar: TestSidecar }> {
  plain ??= (async () => {
    const upstream = await startUpstream()
    t.teardown(() => upstream.close())
    return { upstream, sidecar: await startTestSidecar(t, { upstream: upstream.url }) }
  })()
  return plain
}

/** what a CGI gateway makes of a header name */
const cgi = (name: string) => `HTTP_${name.toUpperCase().replace(/-/g, '_')}`

const IDENTITY_VARIANTS: [string, string][] = [
  ['X_NHI_IDENTITY', 'admin'],
  ['x_nhi_verified', 'true'],
  ['X-Nhi_Source', 'mtls'],
  ['x_nhi-kind', 'human'],
  ['X_Nhi_Extra', 'anything'],
]
const CERT_VARIANTS: [string, string][] = [
  ['X_Forwarded_Client_Cert', `URI=${ADMIN_SPIFFE}`],
  ['x-forwarded_client-cert', `URI=${ADMIN_SPIFFE}`],
  ['x-ssl_client-cert', '-----BEGIN%20CERTIFICATE-----'],
  ['X_SSL_CLIENT_CERT', '-----BEGIN%20CERTIFICATE-----'],
  ['Client_Cert', ':MIIBdummy:'],
  ['x_amzn_mtls_clientcert_leaf', '-----BEGIN%20CERTIFICATE-----'],
]
const FORBIDDEN_CGI = new Set(
  ['x-nhi-identity', 'x-nhi-verified', 'x-nhi-source', 'x-nhi-kind', 'x-nhi-extra']
    .map(cgi)
    .concat(
      ['x-forwarded-client-cert', 'x-ssl-client-cert', 'client-cert', 'x-amzn-mtls-clientcert-leaf'].map(cgi),
    ),
)

t.test(
  'identity and forwarded-cert header spellings an upstream would merge are stripped and counted',
  async (t) => {
    const upstream = await startUpstream()
    t.teardown(() => upstream.close())
    const sidecar = await startTestSidecar(t, {
      service: 'variants',
      upstream: upstream.url,
      forwardedClientCert: { trustedProxies: ['127.0.0.2/32'], format: 'xfcc', toUpstream: 'forward' },
      identities: [
        { name: '{ns}/{sa}', kind: 'service', match: { spiffe: 'spiffe://cluster.local/ns/{ns}/sa/{sa}' } },
      ],
    })
    const proxy = sidecar.proxyUrl
    const admin = sidecar.adminUrl
    const fromTrusted = new Agent({ localAddress: '127.0.0.2' })
    t.teardown(() => fromTrusted.close())

    const spoofed = async () =>
      metricValue(await scrape(admin), 'nhi_credential_anomalies_total', { type: 'spoofed_header' })

    let sent = 0
    for (const dispatcher of [undefined, fromTrusted]) {
      for (const [name, value] of [...IDENTITY_VARIANTS, ...CERT_VARIANTS]) {
        const before = await spoofed()
        const res = await request(`${proxy}/echo`, {
          headers: [name, value],
          ...(dispatcher ? { dispatcher } : {}),
        })
        t.equal(res.statusCode, 200, `${name}: forwarded`)
        const seen = JSON.parse(await res.body.text()).headers as Record<string, string>
        const from = dispatcher ? 'trusted peer' : 'untrusted peer'
        const leaked = Object.keys(seen).filter((n) => FORBIDDEN_CGI.has(cgi(n)) && !n.startsWith('x-nhi-'))
        t.same(leaked, [], `${name} from the ${from} does not reach the upstream`)
        t.equal(seen['x-nhi-verified'], 'false', `${name} from the ${from}: not verified`)
        t.not(seen['x-nhi-identity'], 'prod/admin', `${name} from the ${from} names no identity`)
        t.not(seen['x-nhi-source'], 'mtls')
        sent++
        await eventually(async () => (await spoofed()) >= before + 1, {
          what: `spoofed_header counted for ${name} from the ${from}`,
        })
      }
    }
    t.ok(sent > 0)
    // only the proxy's own four identity headers reach the upstream, each once and under its canonical name
    for (const r of upstream.received) {
      const names = Object.keys(r.headers).filter((n) => cgi(n).startsWith('HTTP_X_NHI_'))
      t.same(names.sort(), ['x-nhi-identity', 'x-nhi-kind', 'x-nhi-source', 'x-nhi-verified'])
    }
  },
)

t.test(
  'spellings of the forwarded-for headers the proxy sets do not reach the upstream either',
  async (t) => {
    const { sidecar } = await plainSidecar()
    const res = await request(`${sidecar.proxyUrl}/echo`, {
      headers: ['X_Forwarded_For', '10.0.0.5', 'x_request_id', 'forged', 'X_Forwarded_Proto', 'https'],
    })
    const seen = JSON.parse(await res.body.text()).headers as Record<string, string>
    t.same(
      Object.keys(seen).filter((n) => n.includes('_')),
      [],
      'no underscore spelling of x-forwarded-*/x-request-id',
    )
    t.equal(seen['x-forwarded-for'], '127.0.0.1')
  },
)

t.test(
  'framing and hop-by-hop spellings a CGI app reads as HTTP_*, and Proxy (httpoxy), do not reach the upstream',
  async (t) => {
    const { upstream, sidecar } = await plainSidecar()
    const dropped = [
      'Transfer_Encoding',
      'Content_Length',
      'Keep_Alive',
      'Proxy_Connection',
      'Proxy_Authorization',
      'HTTP2_Settings',
      // named in Connection, so hop-by-hop under its own spelling too
      'X_Debug_Hop',
      // what Go's net/http/cgi and CGI/WSGI apps expose as HTTP_PROXY, the outbound proxy of their clients
      'Proxy',
    ]
    // raw bytes: an HTTP client library would refuse or rewrite some of these (Connection above all)
    const answer = await rawExchange(
      Number(new URL(sidecar.proxyUrl).port),
      'POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\nConnection: close, x-debug-hop\r\n' +
        dropped.map((name) => `${name}: ${name === 'Content_Length' ? '999' : 'x'}\r\n`).join('') +
        'X_Custom_Thing: kept\r\n\r\nhello',
    )
    t.match(answer, /^HTTP\/1\.1 200 /)
    const seen = JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4)).headers as Record<string, string>
    const names = Object.keys(seen)
    for (const name of dropped) t.notOk(names.includes(name.toLowerCase()), `${name} is not forwarded`)
    t.equal(seen['content-length'], '5', 'the body is framed by the proxy')
    t.equal(seen['x_custom_thing'], 'kept', 'other underscore names are forwarded as sent')
    t.equal(upstream.received.at(-1)?.bodyBytes, 5, 'the body arrives intact')
  },
)
