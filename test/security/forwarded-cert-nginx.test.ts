// Forwarded client certificates through a real nginx as the trusted front proxy. nginx terminates mTLS with
// the test CA and passes the verified certificate on in X-SSL-Client-Cert ($ssl_client_escaped_cert); it
// forwards every other request header as the client sent it. A client that adds another family of
// forwarded-cert header (X-Forwarded-Client-Cert, Client-Cert, …) naming a forged SPIFFE ID must not come out
// as that ID: nhi-proxy believes only the one format configured for that proxy.
import t from 'tap'
import { Agent, request } from 'undici'
import { eventually } from '../helpers/eventually.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { skipWithoutNginx, startNginxFront } from '../helpers/nginx.ts'
import { createCA, createServerPki, issueCert } from '../helpers/pki.ts'
import { scratchDir } from '../helpers/scratch.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const WORKER = 'spiffe://cluster.local/ns/orders/sa/worker'
const ADMIN = 'spiffe://cluster.local/ns/prod/sa/admin'
const FRONT_ADDRESS = '127.0.0.3'

t.test(
  'a client behind nginx cannot forge a forwarded certificate in another header family',
  {
    skip: skipWithoutNginx,
  },
  async (t) => {
    const dir = await scratchDir('nginx')
    const clientCA = await createCA('client-ca', dir)
    const worker = await issueCert(clientCA, { cn: 'orders-worker', uriSans: [WORKER] })
    // what an attacker can make without the client CA: a self-signed-CA certificate naming the admin
    const evilCA = await createCA('evil-ca', dir)
    const forged = await issueCert(evilCA, { cn: 'admin', uriSans: [ADMIN] })
    const forgedDer = Buffer.from(
      forged.certPem.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, ''),
      'base64',
    )
    const { ca: serverCA, server } = await createServerPki()

    const upstream = await startUpstream()
    t.teardown(() => upstream.close())
    const sidecar = await startTestSidecar(t, {
      service: 'orders',
      upstream: upstream.url,
      forwardedClientCert: {
        // only the front proxy's own address, and the one header it sets
        trustedProxies: [`${FRONT_ADDRESS}/32`],
        format: 'nginx',
        toUpstream: 'sanitize_set',
      },
      identities: [
        { name: '{ns}/{sa}', kind: 'service', match: { spiffe: 'spiffe://cluster.local/ns/{ns}/sa/{sa}' } },
      ],
    })
    const admin = sidecar.adminUrl
    const front = await startNginxFront(t, {
      dir,
      upstreamPort: sidecar.proxyAddress.port,
      bindAddress: FRONT_ADDRESS,
      serverCertFile: server.certFile,
      serverKeyFile: server.keyFile,
      clientCAFile: clientCA.certFile,
      setHeaders: { 'X-SSL-Client-Cert': '$ssl_client_escaped_cert' },
    })

    const tls = { ca: serverCA.certPem, servername: 'localhost' }
    const withCert = new Agent({ connect: { ...tls, cert: worker.certPem, key: worker.keyPem } })
    const noCert = new Agent({ connect: tls })
    t.teardown(() => Promise.all([withCert.close(), noCert.close()]))

    const spoofed = async () =>
      metricValue(await scrape(admin), 'nhi_credential_anomalies_total', { type: 'spoofed_header' })
    const echo = async (agent: Agent, headers: Record<string, string>) => {
      const res = await request(`${front.url}/echo`, { dispatcher: agent, headers })
      t.equal(res.statusCode, 200)
      return JSON.parse(await res.body.text()).headers as Record<string, string | undefined>
    }

    // control: the certificate nginx verified names the workload
    const good = await echo(withCert, {})
    t.equal(good['x-nhi-identity'], 'orders/worker', 'the certificate nginx verified is believed')
    t.equal(good['x-nhi-verified'], 'true')
    t.equal(good['x-nhi-source'], 'xfcc')
    t.notOk(good['x-ssl-client-cert'], 'sanitize_set: the nginx header is replaced by a clean XFCC')
    t.match(good['x-forwarded-client-cert'], `URI=${WORKER}`)

    const forgedHeaders: Record<string, string>[] = [
      { 'X-Forwarded-Client-Cert': `By=spiffe://cluster.local/ns/mesh/sa/gw;URI=${ADMIN}` },
      { 'Client-Cert': `:${forgedDer.toString('base64')}:` },
      { 'Client-Cert': `:${forgedDer.toString('base64')}:`, 'Client-Cert-Chain': ':AAAA:' },
      { 'X-Amzn-Mtls-Clientcert-Leaf': encodeURIComponent(forged.certPem) },
      { 'X-Amzn-Mtls-Clientcert-Subject': 'CN=admin', 'X-Amzn-Mtls-Clientcert-San': `URI:${ADMIN}` },
      { 'Ssl-Client-Cert': encodeURIComponent(forged.certPem) },
      // nginx replaces its own header: with no client certificate it sends none
      { 'X-SSL-Client-Cert': encodeURIComponent(forged.certPem) },
    ]
    for (const [agent, who] of [
      [noCert, 'no certificate'],
      [withCert, 'the worker certificate'],
    ] as const) {
      for (const h of forgedHeaders) {
        const what = `${Object.keys(h).join(' + ')} with ${who}`
        const before = await spoofed()
        const seen = await echo(agent, h)
        t.not(seen['x-nhi-identity'], 'prod/admin', `${what}: not the forged identity`)
        if (agent === withCert) {
          t.equal(seen['x-nhi-identity'], 'orders/worker', `${what}: still the verified worker`)
          t.equal(seen['x-nhi-verified'], 'true')
        } else {
          t.equal(seen['x-nhi-verified'], 'false', `${what}: not verified`)
        }
        for (const name of Object.keys(h)) {
          const v = seen[name.toLowerCase()]
          t.ok(v === undefined || !v.includes('admin'), `${what}: ${name} not passed upstream`)
        }
        t.notOk(String(seen['x-forwarded-client-cert']).includes(ADMIN), `${what}: no forged XFCC upstream`)
        if (!('X-SSL-Client-Cert' in h)) {
          await eventually(async () => (await spoofed()) > before, { what: `spoofed_header for ${what}` })
        }
      }
    }
    t.notOk(
      upstream.received.some((r) => r.headers['x-nhi-identity'] === 'prod/admin'),
      'the upstream never saw the forged identity',
    )
  },
)
