// Behind a trusted proxy the client address is worked out once per request and every stage takes that one:
// the JWT verification queue (a new token), the crawler claim's check against the operator's ranges, the
// token-sharing count and the audit record. On the built bundle, over HTTP/2 (several requests, from
// different forwarded clients, on one connection) and HTTP/1.1: each request's stages name its own client,
// including when the peer is not trusted, when X-Forwarded-For is missing, not an address or over-long.
// The trusted proxy is 127.0.0.2; 127.0.0.1 is anyone else.
import { once } from 'node:events'
import { connect as connectH2 } from 'node:http2'
import { connect } from 'node:net'
import t from 'tap'
import { exchange } from '../helpers/http.ts'
import { mintToken, startUpstreamAndJwks } from '../helpers/jwks.ts'
import { metricValue, scrapeUntil } from '../helpers/metrics.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

const ISSUER = 'https://idp.stages.example'
const TRUSTED = '127.0.0.2'
const GOOGLEBOT = 'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)'
const GOOGLE_ADDRESS = '66.249.66.1'

interface Sent {
  path: string
  token: string
  xff?: string
}

/** the requests one after another as streams of one HTTP/2 (h2c) connection from `localAddress` */
async function h2Send(url: string, localAddress: string, requests: Sent[]): Promise<number[]> {
  const port = Number(new URL(url).port)
  const session = connectH2(url, {
    createConnection: () => connect({ host: '127.0.0.1', port, localAddress }),
  })
  session.on('error', () => {})
  try {
    const statuses: number[] = []
    for (const r of requests) {
      const headers: Record<string, string> = {
        ':path': r.path,
        authorization: `Bearer ${r.token}`,
        'user-agent': GOOGLEBOT,
      }
      if (r.xff !== undefined) headers['x-forwarded-for'] = r.xff
      const stream = session.request(headers)
      const [response] = (await once(stream, 'response')) as [Record<string, string | number>]
      stream.resume()
      await once(stream, 'end')
      statuses.push(Number(response[':status']))
    }
    return statuses
  } finally {
    session.close()
  }
}

/** one HTTP/1.1 GET on a fresh connection from `localAddress`; resolves with the status */
async function h1Send(port: number, localAddress: string, r: Sent): Promise<number> {
  const headers: Record<string, string> = { authorization: `Bearer ${r.token}`, 'user-agent': GOOGLEBOT }
  if (r.xff !== undefined) headers['x-forwarded-for'] = r.xff
  return (await exchange({ host: '127.0.0.1', port, path: r.path, localAddress, headers })).status
}

interface AuditEvent {
  path: string
  client_address: string
  peer_address?: string
  anomalies: string[]
}

t.test('every stage takes the one client address of its request', async (t) => {
  const { upstream, key, jwks } = await startUpstreamAndJwks(t, 'stages-k1')
  const sidecar = await startTestSidecar(t, {
    service: 'shop',
    upstream: upstream.url,
    jwt: { issuers: [{ issuer: ISSUER, jwksUri: jwks.jwksUri, audiences: 'any' }] },
    forwardedClientCert: { trustedProxies: [`${TRUSTED}/32`], format: 'xfcc' },
    // a second client of a token is one too many
    anomalies: { tokenSharedPeers: 1 },
  })
  const port = sidecar.proxyAddress.port
  const token = (subject: string) => mintToken(key, {}, { issuer: ISSUER, subject })
  const [viaH2, garbled, untrusted, padded] = await Promise.all([
    token('via-h2'),
    token('garbled'),
    token('untrusted'),
    token('padded'),
  ])

  // [path, sent from, X-Forwarded-For, client_address, peer_address, anomalies]
  const h2Cases: [string, string | undefined, string, string | undefined, string[]][] = [
    // the client's own entry in front of the proxy's is never read; Googlebot from a Google address
    ['/h2/google', `10.9.9.9, ${GOOGLE_ADDRESS}`, GOOGLE_ADDRESS, TRUSTED, []],
    // the same token from a second forwarded client on the same connection: shared, and a false claim
    ['/h2/elsewhere', '203.0.113.20', '203.0.113.20', TRUSTED, ['token_shared', 'unverified_claim']],
    ['/h2/not-an-address', 'not-an-address', TRUSTED, undefined, ['unverified_claim']],
    // no header: the proxy itself, the same client as the request before it with that token
    ['/h2/no-header', undefined, TRUSTED, undefined, ['unverified_claim']],
  ]
  const h2Tokens = [viaH2, viaH2, garbled, garbled]
  t.same(
    await h2Send(
      sidecar.proxyUrl,
      TRUSTED,
      h2Cases.map(([path, xff], i) => ({ path, token: h2Tokens[i]!, ...(xff === undefined ? {} : { xff }) })),
    ),
    [200, 200, 200, 200],
  )

  const h1Cases: [string, string, string, string, string | undefined, string[]][] = [
    // an untrusted peer naming a Google address, then another address: one client, its own, a false claim
    ['/h1/untrusted-google', '127.0.0.1', GOOGLE_ADDRESS, '127.0.0.1', undefined, ['unverified_claim']],
    ['/h1/untrusted-other', '127.0.0.1', '203.0.113.21', '127.0.0.1', undefined, ['unverified_claim']],
    // an entry too long to be an address: the proxy itself
    ['/h1/over-long', TRUSTED, 'x'.repeat(200), TRUSTED, undefined, ['unverified_claim']],
    // padding in front of the proxy's entry: the entry is still read
    [
      '/h1/padded',
      TRUSTED,
      `${'10.9.9.9, '.repeat(600)}${GOOGLE_ADDRESS}`,
      GOOGLE_ADDRESS,
      TRUSTED,
      ['token_shared'],
    ],
  ]
  const h1Tokens = [untrusted, untrusted, padded, padded]
  for (const [i, [path, from, xff]] of h1Cases.entries())
    t.equal(await h1Send(port, from, { path, token: h1Tokens[i]!, xff }), 200, path)

  const total = h2Cases.length + h1Cases.length
  await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_requests_total', { service: 'shop' }) >= total,
    'every request recorded',
  )
  const events = (
    (await (await fetch(`${sidecar.adminUrl}/audit?limit=100`)).json()) as { events: AuditEvent[] }
  ).events
  const expected = [
    ...h2Cases.map(([path, , client, peer, anomalies]) => ({ path, client, peer, anomalies })),
    ...h1Cases.map(([path, , , client, peer, anomalies]) => ({ path, client, peer, anomalies })),
  ]
  for (const { path, client, peer, anomalies } of expected) {
    const e = events.find((ev) => ev.path === path)
    t.ok(e, `${path} audited`)
    t.equal(e?.client_address, client, `${path}: client_address`)
    t.equal(e?.peer_address, peer, `${path}: peer_address`)
    t.same([...(e?.anomalies ?? [])].sort(), anomalies, `${path}: anomalies`)
  }
})
