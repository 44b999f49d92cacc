// Verified bots end to end, on the built bundle: a Googlebot behind a trusted front proxy that names a
// Google address is a verified `googlebot`; the same user agent from anywhere else is `ua:googlebot`,
// unverified and counted as an `unverified_claim` anomaly, whatever address headers the client sends itself.
import { get as httpGet } from 'node:http'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { eventually } from '../helpers/eventually.ts'
import { metricValue, type Sample, scrapeUntil } from '../helpers/metrics.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const GOOGLEBOT = 'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)'
const GOOGLE_ADDRESS = '66.249.66.1'

/** A sidecar for "shop" in front of a test upstream, behind a front proxy at `proxyAddress` that it trusts. */
async function shopBehindProxy(t: Test, proxyAddress: string) {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  return startTestSidecar(t, {
    service: 'shop',
    upstream: upstream.url,
    forwardedClientCert: { format: 'xfcc', trustedProxies: [`${proxyAddress}/32`] },
  })
}

const unverifiedClaims = (s: Sample[]) =>
  metricValue(s, 'nhi_credential_anomalies_total', { type: 'unverified_claim' })

async function identityOf(
  proxy: string,
  headers: Record<string, string>,
): Promise<{ identity: string; verified: string }> {
  const res = await request(`${proxy}/echo`, { headers })
  const body = (await res.body.json()) as { headers: Record<string, string> }
  return { identity: body.headers['x-nhi-identity']!, verified: body.headers['x-nhi-verified']! }
}

t.test(
  'a trusted proxy on 127.0.0.1 names the client: in range verified, out of range counted',
  async (t) => {
    const sidecar = await shopBehindProxy(t, '127.0.0.1')
    const proxy = sidecar.proxyUrl
    const admin = sidecar.adminUrl

    t.same(await identityOf(proxy, { 'user-agent': GOOGLEBOT, 'x-forwarded-for': GOOGLE_ADDRESS }), {
      identity: 'googlebot',
      verified: 'true',
    })
    t.same(await identityOf(proxy, { 'user-agent': GOOGLEBOT, 'x-forwarded-for': '203.0.113.50' }), {
      identity: 'ua:googlebot',
      verified: 'false',
    })
    // the client wrote a Google address itself; the trusted proxy appended the real one after it
    t.same(
      await identityOf(proxy, {
        'user-agent': GOOGLEBOT,
        'x-forwarded-for': `${GOOGLE_ADDRESS}, 203.0.113.50`,
      }),
      { identity: 'ua:googlebot', verified: 'false' },
    )
    const m = await scrapeUntil(
      admin,
      (s) =>
        metricValue(s, 'nhi_credential_anomalies_total', { type: 'unverified_claim' }) >= 2 &&
        metricValue(s, 'nhi_requests_total', { identity: 'googlebot' }) >= 1,
      'the three requests to be recorded',
    )
    t.equal(metricValue(m, 'nhi_credential_anomalies_total', { type: 'unverified_claim' }), 2)
    t.equal(metricValue(m, 'nhi_requests_total', { identity: 'googlebot' }), 1)
  },
)

t.test('from an untrusted peer no header makes a client look like Google', async (t) => {
  // only 127.0.0.2 is the front proxy; the attacker connects from 127.0.0.1
  const sidecar = await shopBehindProxy(t, '127.0.0.2')
  const proxy = sidecar.proxyUrl
  const admin = sidecar.adminUrl
  const attempts: Record<string, string>[] = [
    { 'x-forwarded-for': GOOGLE_ADDRESS },
    { 'x-forwarded-for': `${GOOGLE_ADDRESS}, ${GOOGLE_ADDRESS}` },
    { 'x-forwarded-for': `${GOOGLE_ADDRESS}, 127.0.0.2` },
    { 'X-Forwarded-For': `[${GOOGLE_ADDRESS}]:443` },
    { x_forwarded_for: GOOGLE_ADDRESS },
    { 'x-real-ip': GOOGLE_ADDRESS },
    { forwarded: `for=${GOOGLE_ADDRESS}` },
    { 'true-client-ip': GOOGLE_ADDRESS },
  ]
  for (const h of attempts) {
    t.same(
      await identityOf(proxy, { 'user-agent': GOOGLEBOT, ...h }),
      { identity: 'ua:googlebot', verified: 'false' },
      JSON.stringify(h),
    )
  }
  t.equal(
    unverifiedClaims(
      await scrapeUntil(admin, (s) => unverifiedClaims(s) >= attempts.length, 'every attempt to be recorded'),
    ),
    attempts.length,
    'every attempt is counted',
  )

  // control: the same request from the trusted proxy's address is verified (node:http, as undici's
  // connect options do not bind a local address)
  const fromProxy = await new Promise<{ identity: string; verified: string }>((resolve, reject) => {
    const r = httpGet(
      {
        host: '127.0.0.1',
        port: sidecar.proxyAddress.port,
        path: '/echo',
        localAddress: '127.0.0.2',
        headers: { 'user-agent': GOOGLEBOT, 'x-forwarded-for': GOOGLE_ADDRESS },
      },
      (res) => {
        let text = ''
        res.setEncoding('utf8')
        res.on('data', (c: string) => {
          text += c
        })
        res.on('end', () => {
          const h = (JSON.parse(text) as { headers: Record<string, string> }).headers
          resolve({ identity: h['x-nhi-identity']!, verified: h['x-nhi-verified']! })
        })
      },
    )
    r.on('error', reject)
  })
  t.same(fromProxy, { identity: 'googlebot', verified: 'true' })
})

t.test('a crawler name in any letter case is the same claim', async (t) => {
  const sidecar = await shopBehindProxy(t, '127.0.0.1')
  const proxy = sidecar.proxyUrl
  const admin = sidecar.adminUrl
  // user agents match product names case-insensitively, so these are named googlebot / googleother and
  // must be checked like the canonical spelling (as bingbot and GPTBot already were)
  const spellings = [
    'Mozilla/5.0 (compatible; GoogleBot/2.1; +http://www.google.com/bot.html)',
    'GOOGLEBOT/2.1',
    'Mozilla/5.0 (compatible; googleother)',
  ]
  for (const ua of spellings) {
    const outside = await identityOf(proxy, { 'user-agent': ua, 'x-forwarded-for': '203.0.113.50' })
    t.equal(outside.verified, 'false', `${ua} from outside Google's ranges`)
    t.match(outside.identity, /^ua:google/, ua)
    const inside = await identityOf(proxy, { 'user-agent': ua, 'x-forwarded-for': GOOGLE_ADDRESS })
    t.equal(inside.verified, 'true', `${ua} from a Google address is verified`)
    t.match(inside.identity, /^google(bot|other)$/, ua)
  }
  t.equal(
    unverifiedClaims(
      await scrapeUntil(admin, (s) => unverifiedClaims(s) >= spellings.length, 'the claims to be counted'),
    ),
    spellings.length,
    'every claim from outside the ranges is an unverified_claim',
  )
})

t.test('a crawler named without a version is the same claim', async (t) => {
  const sidecar = await shopBehindProxy(t, '127.0.0.1')
  const proxy = sidecar.proxyUrl
  // the classifier names each of these after the crawler (and an AI crawler's operator with it), so the
  // claim is the crawler's as much as with `/version`
  // each from an address of its own product's range file (gptbot.json, searchbot.json, chatgpt-user.json)
  const claims: [ua: string, name: string, operatorAddress: string][] = [
    [
      'Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot; +https://openai.com/gptbot)',
      'gptbot',
      '132.196.86.1',
    ],
    [
      'Mozilla/5.0 (compatible; OAI-SearchBot; +https://openai.com/searchbot)',
      'oai-searchbot',
      '135.234.64.1',
    ],
    [
      'Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko); compatible; ChatGPT-User; +https://openai.com/bot',
      'chatgpt-user',
      '104.208.184.193',
    ],
    ['Mozilla/5.0 (compatible; Googlebot; +http://www.google.com/bot.html)', 'googlebot', GOOGLE_ADDRESS],
    ['Googlebot 2.1 (+http://www.google.com/bot.html)', 'googlebot', GOOGLE_ADDRESS],
    ['Mozilla/5.0 (compatible; Googlebot_/2.1)', 'googlebot', GOOGLE_ADDRESS],
    ['Googlebot-News', 'googlebot-news', GOOGLE_ADDRESS],
    ['Mozilla/5.0 (compatible; GoogleOther-Image/1.0)', 'googleother-image', GOOGLE_ADDRESS],
    ['GoogleOther-Video/1.0', 'googleother-video', GOOGLE_ADDRESS],
    ['Mozilla/5.0 (compatible; Google-CloudVertexBot)', 'google-cloudvertexbot', GOOGLE_ADDRESS],
    ['Mozilla/5.0 (compatible; Applebot; +http://www.apple.com/go/applebot)', 'applebot', '17.241.208.161'],
  ]
  let n = 0
  const send = async (ua: string, address: string) => {
    const requestId = `claim-${++n}`
    const seen = await identityOf(proxy, {
      'user-agent': ua,
      'x-forwarded-for': address,
      'x-request-id': requestId,
    })
    const audit = await eventually(async () => {
      const r = await request(`${sidecar.adminUrl}/audit?request_id=${requestId}`)
      return ((await r.body.json()) as { events: Record<string, unknown>[] }).events[0]
    })
    return { ...seen, anomalies: audit['anomalies'] }
  }
  for (const [ua, name, operatorAddress] of claims) {
    t.same(
      await send(ua, '203.0.113.50'),
      { identity: `ua:${name}`, verified: 'false', anomalies: ['unverified_claim'] },
      `${ua}: from elsewhere, counted`,
    )
    t.same(
      await send(ua, operatorAddress),
      { identity: name, verified: 'true', anomalies: [] },
      `${ua}: from its operator's range, verified`,
    )
  }
  t.same(
    await send(
      'Mozilla/5.0 (compatible; ExampleBot/1.0; +https://example.com/unlike-googlebot.html)',
      '203.0.113.50',
    ),
    { identity: 'ua:examplebot', verified: 'false', anomalies: [] },
    "a crawler's page named after another is no claim",
  )
})
