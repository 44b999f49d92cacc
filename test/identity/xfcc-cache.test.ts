// A forwarded certificate header is read once and its answer kept (forwardedClientCert, "answers kept"): the
// same XFCC value from a trusted front proxy gets the same evidence object from its second sight on, a
// malformed one the same failure, and a flood of values sent once each neither enters the cache nor pushes a
// kept one out. What is kept never answers a question it was not found for: a peer the config does not trust
// for the header's format gets untrusted_forwarder for a value that is cached, and a reload that changes
// trustedProxies, format or toUpstream is answered afresh (through the built bundle, from two loopback
// addresses, towards an upstream that records what it received).
import { createServer, request as httpRequest, type IncomingHttpHeaders } from 'node:http'
import t from 'tap'
import { Agent, request } from 'undici'
import { loadCertificateDecoder } from '../../src/identity/certificate.ts'
import { createForwardedCertExtractor } from '../../src/identity/sources/forwarded-cert.ts'
import type { CertEvidence, ConnectionInfo, Failure } from '../../src/types.ts'
import { sha256Hex } from '../../src/util/fingerprint.ts'
import { eventually } from '../helpers/eventually.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { listenTcp } from '../helpers/trailers.ts'

t.setTimeout(120_000)
await loadCertificateDecoder()

const OTHER_PEER = '127.0.0.2'
const xfcc = (sa: string) => {
  const uri = `spiffe://cluster.local/ns/orders/sa/${sa}`
  return `By=spiffe://cluster.local/ns/mesh/sa/gateway;Hash=${sha256Hex(uri)};Subject="CN=${sa},O=orders";URI=${uri}`
}
const MALFORMED = 'By=spiffe://cluster.local/ns/mesh/sa/gateway;Hash="unclosed'

type Result = CertEvidence | Failure | undefined

/** one GET on a new connection from `localAddress` (default 127.0.0.1); resolves with status and body */
function get(
  port: number,
  headers: Record<string, string>,
  localAddress = '127.0.0.1',
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { host: '127.0.0.1', port, path: '/', localAddress, agent: false, headers },
      (res) => {
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (s: string) => {
          body += s
        })
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
      },
    )
    req.on('error', reject)
    req.end()
  })
}

t.test('in process: the answer for a header value is kept from its second sight on', async (t) => {
  // only 127.0.0.1 is trusted: 127.0.0.2 is a peer on the same host the config does not name
  const ex = createForwardedCertExtractor({
    trustedProxies: ['127.0.0.1/32'],
    format: 'xfcc',
    toUpstream: 'sanitize_set',
  })
  t.teardown(() => ex.close?.())
  const results: Result[] = []
  const server = createServer(async (req, res) => {
    const info = { method: req.method ?? 'GET', path: '/', url: req.url ?? '/', headers: req.headers }
    const conn: ConnectionInfo = { remoteAddress: req.socket.remoteAddress ?? '', remotePort: 0, tls: false }
    results.push(await ex.extract(info, conn))
    res.end(String(results.length - 1))
  })
  const port = await listenTcp(server)
  t.teardown(() => {
    server.closeAllConnections()
    server.close()
  })
  const send = async (value: string, from?: string): Promise<Result> =>
    results[Number((await get(port, { 'x-forwarded-client-cert': value }, from)).body)]
  const pool = new Agent({ connections: 16 })
  t.teardown(() => pool.close())
  const sendPooled = async (value: string) => {
    const res = await request(`http://127.0.0.1:${port}/`, {
      headers: { 'x-forwarded-client-cert': value },
      dispatcher: pool,
    })
    return results[Number(await res.body.text())]
  }

  const value = xfcc('worker')
  const first = (await send(value)) as CertEvidence
  t.equal(first.spiffeId, 'spiffe://cluster.local/ns/orders/sa/worker', 'the first request is read')
  const second = await send(value)
  const third = await send(value)
  t.same(second, first, 'the second is read alike')
  t.equal(third, second, 'from the second sight on, the same evidence object')

  const bad = (await send(MALFORMED)) as Failure
  t.equal(bad.reason, 'malformed', 'a malformed value fails')
  const bad2 = await send(MALFORMED)
  t.equal(await send(MALFORMED), bad2, 'a malformed value: the same failure from the second sight on')
  t.same(bad2, bad, 'and the same failure as the first')

  const other = (await send(value, OTHER_PEER)) as Failure
  t.match(
    other,
    { failed: true, reason: 'untrusted_forwarder', attributes: { peer: OTHER_PEER } },
    'the cached value from a peer not trusted: untrusted_forwarder, named with that peer',
  )

  // 5,000 values sent once each: more than the cache holds, none of them a second time
  const flood = Array.from({ length: 5_000 }, (_, i) => xfcc(`flood-${i}`))
  let next = 0
  const lane = async () => {
    while (next < flood.length) await sendPooled(flood[next++]!)
  }
  await Promise.all(Array.from({ length: 16 }, lane))
  t.equal(await send(value), third, 'a flood of values sent once does not push the kept answer out')
  // its first sight may have been forgotten under the flood (four later keys in its slot bucket): then this
  // is its first again, and the next the second
  await send(flood[0]!)
  const again = await send(flood[0]!)
  t.equal(await send(flood[0]!), again, 'a flood value that comes again is kept in turn')
})

t.test(
  'through the bundle: a cached answer is not reused for an untrusted peer or across reloads',
  async (t) => {
    interface Seen {
      identity?: string
      source?: string
      verified?: string
      xfcc?: string
    }
    const seen = new Map<string, Seen>()
    const upstream = createServer((req, res) => {
      const h: IncomingHttpHeaders = req.headers
      const one = (name: string) => (typeof h[name] === 'string' ? (h[name] as string) : undefined)
      const label = one('x-case')
      if (label !== undefined) {
        const identity = one('x-nhi-identity')
        seen.set(label, {
          ...(identity !== undefined ? { identity: decodeURIComponent(identity) } : {}),
          ...(one('x-nhi-source') !== undefined ? { source: one('x-nhi-source') } : {}),
          ...(one('x-nhi-verified') !== undefined ? { verified: one('x-nhi-verified') } : {}),
          ...(one('x-forwarded-client-cert') !== undefined ? { xfcc: one('x-forwarded-client-cert') } : {}),
        })
      }
      res.end('ok')
    })
    const upstreamPort = await listenTcp(upstream)
    t.teardown(() => {
      upstream.closeAllConnections()
      upstream.close()
    })
    const config = (forwardedClientCert: Record<string, unknown>) => ({
      service: 'orders',
      upstream: `http://127.0.0.1:${upstreamPort}`,
      forwardedClientCert,
    })
    const sidecar = await startTestSidecar(
      t,
      config({ trustedProxies: ['127.0.0.1/32'], format: 'xfcc', toUpstream: 'sanitize_set' }),
    )
    const proxyPort = sidecar.proxyAddress.port
    let n = 0
    /** one request with `value`, from 127.0.0.1 or OTHER_PEER; what the upstream received */
    const send = async (value: string, from?: string): Promise<Seen> => {
      const label = `r${n++}`
      const res = await get(proxyPort, { 'x-forwarded-client-cert': value, 'x-case': label }, from)
      t.equal(res.status, 200, `${label} answered`)
      return eventually(() => seen.get(label), { what: `the upstream to receive ${label}` })
    }
    /** the answer to `value` once it is surely cached (sent three times, the last answer returned) */
    const cached = async (value: string, from?: string) => {
      await send(value, from)
      await send(value, from)
      return send(value, from)
    }
    const value = xfcc('worker')
    const spiffe = 'spiffe://cluster.local/ns/orders/sa/worker'
    const rewritten = `Hash=${sha256Hex(spiffe)};Subject="CN=worker,O=orders";URI=${spiffe}`
    const believed = { identity: spiffe, source: 'xfcc', verified: 'true', xfcc: rewritten }

    t.match(
      await cached(value),
      believed,
      'trusted for xfcc: believed, and described upstream (sanitize_set)',
    )
    const notBelieved = await send(value, OTHER_PEER)
    t.not(notBelieved.identity, spiffe, 'the same value from a peer not trusted is not believed')
    t.equal(notBelieved.verified, 'false', 'and its request is not verified')
    t.equal(notBelieved.xfcc, undefined, "and the client's header does not reach the upstream")

    t.ok(
      await sidecar.reload(
        config({ trustedProxies: [`${OTHER_PEER}/32`], format: 'xfcc', toUpstream: 'sanitize_set' }),
      ),
      'reloaded: trustedProxies names the other peer instead',
    )
    const afterMove = await send(value)
    t.not(afterMove.identity, spiffe, 'the peer no longer trusted: the value it sent before is not believed')
    t.equal(afterMove.xfcc, undefined, 'nor sent upstream')
    t.match(await cached(value, OTHER_PEER), believed, 'the newly trusted peer: believed')

    t.ok(
      await sidecar.reload(
        config({ trustedProxies: [{ cidr: '127.0.0.1/32', format: 'rfc9440' }], toUpstream: 'sanitize_set' }),
      ),
      'reloaded: 127.0.0.1 trusted for Client-Cert only',
    )
    const otherFormat = await send(value)
    t.not(
      otherFormat.identity,
      spiffe,
      'an XFCC header from a peer trusted for another format is not believed',
    )
    t.equal(otherFormat.xfcc, undefined, 'nor sent upstream')

    t.ok(
      await sidecar.reload(
        config({ trustedProxies: ['127.0.0.1/32'], format: 'xfcc', toUpstream: 'forward' }),
      ),
      'reloaded: toUpstream forward',
    )
    t.match(
      await cached(value),
      { ...believed, xfcc: value },
      "forward: believed, and the front proxy's own header sent on as it came",
    )

    t.ok(
      await sidecar.reload(
        config({ trustedProxies: ['127.0.0.1/32'], format: 'xfcc', toUpstream: 'sanitize' }),
      ),
      'reloaded: toUpstream sanitize',
    )
    const sanitized = await cached(value)
    t.match(sanitized, { identity: spiffe, verified: 'true' }, 'sanitize: believed')
    t.equal(sanitized.xfcc, undefined, 'and no XFCC upstream')
  },
)
