// Verified bots by reverse DNS end to end, on the built bundle: a request is never held for a lookup, so a
// claim from an address seen for the first time is answered before its lookup concludes. A client that
// never repeats an address (an IPv6 /64 holds 2^64) must still have every spoofed claim counted: when the
// lookup it waited on concludes unverified, or at once when no lookup can start for it. Where the operator
// documents its products' host names apart (Google: common crawlers under googlebot.com, special crawlers and
// user-triggered fetchers under google.com), a claim is verified only by its own product's domain.
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { startDns, type Zone } from '../helpers/dns.ts'
import { eventually } from '../helpers/eventually.ts'
import { metricValue, type Sample, scrapeUntil } from '../helpers/metrics.ts'
import { scratchDirSync } from '../helpers/scratch.ts'
import { runCli, startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const GOOGLEBOT = 'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)'
/** a Google crawler outside the shipped ranges, proven by its PTR name resolving back to it */
const CRAWLER = '192.0.2.10'
const CRAWLER_NAME = 'crawl-192-0-2-10.googlebot.com'
/** in-flight lookups allowed at once */
const MAX_INFLIGHT = 64

const unverifiedClaims = (s: Sample[]) =>
  metricValue(s, 'nhi_credential_anomalies_total', { type: 'unverified_claim' })

async function sidecarWithDns(
  t: Test,
  server: string,
  timeout: string,
  dnsConfig: Record<string, unknown> = {},
) {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  return startTestSidecar(t, {
    service: 'shop',
    upstream: upstream.url,
    // the test client connects from 127.0.0.1, a trusted front proxy that names any client address
    forwardedClientCert: { format: 'xfcc', trustedProxies: ['127.0.0.1/32'] },
    bots: { verify: { dns: { enabled: true, servers: [server], timeout, ...dnsConfig } } },
  })
}

let requests = 0
/** a crawler claim (Googlebot unless told) from `address`: what the upstream was told, and its audit record's id */
async function claimFrom(
  sidecar: { proxyUrl: string; adminUrl: string },
  address: string,
  ua = GOOGLEBOT,
): Promise<{ identity: string; verified: string; requestId: string }> {
  const requestId = `claim-${++requests}`
  const res = await request(`${sidecar.proxyUrl}/echo`, {
    headers: { 'user-agent': ua, 'x-forwarded-for': address, 'x-request-id': requestId },
  })
  const h = ((await res.body.json()) as { headers: Record<string, string> }).headers
  return { identity: h['x-nhi-identity']!, verified: h['x-nhi-verified']!, requestId }
}

async function auditAnomalies(adminUrl: string, requestId: string): Promise<unknown> {
  const event = await eventually(
    async () => {
      const r = await request(`${adminUrl}/audit?request_id=${requestId}`)
      return ((await r.body.json()) as { events: Record<string, unknown>[] }).events[0]
    },
    { what: `the audit record of ${requestId}` },
  )
  return event['anomalies']
}

t.test(
  'a claim from a new address is counted when its lookup answers that it is not the operator',
  async (t) => {
    const dns = await startDns({ ptr: { [CRAWLER]: CRAWLER_NAME }, a: { [CRAWLER_NAME]: CRAWLER } })
    t.teardown(() => dns.socket.close())
    const sidecar = await sidecarWithDns(t, dns.server, '2s')

    // the real crawler's first request is answered before its lookup: unverified, and never counted
    t.match(await claimFrom(sidecar, CRAWLER), { identity: 'ua:googlebot', verified: 'false' })
    // a spoofer that never repeats an address: every claim is the first from its address (no PTR: NXDOMAIN)
    const spoofed = [
      ...Array.from({ length: 20 }, (_, i) => `198.51.100.${i + 1}`),
      ...Array.from({ length: 10 }, (_, i) => `2001:db8:0:1::${(i + 1).toString(16)}`),
    ]
    let first: string | undefined
    for (const address of spoofed) {
      const seen = await claimFrom(sidecar, address)
      t.match(seen, { identity: 'ua:googlebot', verified: 'false' }, address)
      first ??= seen.requestId
    }
    t.same(
      await auditAnomalies(sidecar.adminUrl, first!),
      [],
      'the request was answered and recorded before its lookup concluded',
    )
    const samples = await scrapeUntil(
      sidecar.adminUrl,
      (s) => unverifiedClaims(s) >= spoofed.length,
      'every spoofed claim to be counted',
    )
    t.equal(unverifiedClaims(samples), spoofed.length, 'one unverified_claim per spoofed request')

    await eventually(async () => (await claimFrom(sidecar, CRAWLER)).verified === 'true', {
      what: 'the crawler to be verified by DNS',
    })
    const after = await scrapeUntil(
      sidecar.adminUrl,
      (s) => metricValue(s, 'nhi_requests_total', { identity: 'googlebot' }) >= 1,
      'the verified request to be recorded',
    )
    t.equal(unverifiedClaims(after), spoofed.length, 'the crawler that was verified is not counted')
  },
)

t.test('with every lookup running, a claim from a new address is counted at once', async (t) => {
  // a reverse zone that never answers: each lookup runs until its timeout
  const dns = await startDns({ ptr: {}, a: {} }, { silent: true })
  t.teardown(() => dns.socket.close())
  const sidecar = await sidecarWithDns(t, dns.server, '5s')

  const waiting: string[] = []
  for (let i = 0; i < MAX_INFLIGHT; i++) {
    waiting.push((await claimFrom(sidecar, `198.51.100.${i + 1}`)).requestId)
  }
  const unchecked: string[] = []
  for (let i = 0; i < 6; i++) unchecked.push((await claimFrom(sidecar, `203.0.113.${i + 1}`)).requestId)

  for (const id of unchecked) {
    t.same(
      await auditAnomalies(sidecar.adminUrl, id),
      ['unverified_claim'],
      `${id}: no lookup for it, counted`,
    )
  }
  t.same(
    await auditAnomalies(sidecar.adminUrl, waiting[0]!),
    [],
    'a request waiting on its lookup is answered',
  )
  // the lookups time out, which confirms nothing: each request that waited on one is counted then
  const total = MAX_INFLIGHT + unchecked.length
  const samples = await scrapeUntil(
    sidecar.adminUrl,
    (s) => unverifiedClaims(s) >= total,
    'the claims that waited on a lookup to be counted once it timed out',
    { timeoutMs: 20_000 },
  )
  t.equal(
    unverifiedClaims(samples),
    total,
    'the unchecked claims at once, the others once their lookup failed',
  )
})

const GOOGLE_INSPECTION_TOOL = 'Mozilla/5.0 (compatible; Google-InspectionTool/1.0;)'
const VERTEXBOT =
  'Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0.6422.175 Mobile Safari/537.36 (compatible; Google-CloudVertexBot; +https://cloud.google.com/enterprise-search)'
const BINGBOT = 'Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)'
const ADIDXBOT = 'Mozilla/5.0 (compatible; adidxbot/2.0; +http://www.bing.com/bingbot.htm)'
const APPLEBOT =
  'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/13.1.1 ' +
  'Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)'

/**
 * The answer for a claim once the lookup of its address has concluded: a request verified, or one counted
 * with its own request (a cached negative answer). The first requests from an address are answered while the
 * lookup runs, neither.
 */
async function concluded(
  sidecar: { proxyUrl: string; adminUrl: string },
  address: string,
  ua: string,
): Promise<{ identity: string; verified: string; anomalies: unknown }> {
  return eventually(
    async () => {
      const seen = await claimFrom(sidecar, address, ua)
      const anomalies = await auditAnomalies(sidecar.adminUrl, seen.requestId)
      const counted = Array.isArray(anomalies) && anomalies.includes('unverified_claim')
      return seen.verified === 'true' || counted
        ? { identity: seen.identity, verified: seen.verified, anomalies }
        : undefined
    },
    { what: `the lookup of ${address} to conclude` },
  )
}

/** a zone where every PTR name resolves back to its address: each is forward-confirmed */
const confirmed = (names: Record<string, string>): Zone => ({
  ptr: names,
  a: Object.fromEntries(Object.entries(names).map(([address, name]) => [name, address])),
})

const unverified = (name: string) => ({
  identity: `ua:${name}`,
  verified: 'false',
  anomalies: ['unverified_claim'],
})
const verified = (name: string) => ({ identity: name, verified: 'true', anomalies: [] })

// Google documents one host name per class of crawler: its common crawlers (Googlebot and the products
// googlebot.json covers) as crawl-…googlebot.com or geo-crawl-….geo.googlebot.com, its special crawlers as
// rate-limited-proxy-….google.com, its user-triggered fetchers as google-proxy-….google.com. Any of Google's
// domains used to verify any Google claim, so anyone who had a user-triggered fetcher request their URL
// from an address saw it pass as Googlebot.
t.test('DNS verifies a Google claim only under the host names of its own product', async (t) => {
  const names: Record<string, string> = {
    '192.0.2.20': 'rate-limited-proxy-192-0-2-20.google.com',
    '192.0.2.21': 'google-proxy-192-0-2-21.google.com',
    '192.0.2.22': 'crawl-192-0-2-22.googlebot.com',
    '192.0.2.23': 'geo-crawl-192-0-2-23.geo.googlebot.com',
    '192.0.2.30': 'msnbot-192-0-2-30.search.msn.com',
    '192.0.2.31': 'crawl-192-0-2-31.bing.com',
    '192.0.2.40': '192-0-2-40.applebot.apple.com',
    '192.0.2.41': 'crawl-192-0-2-41.apple.com',
  }
  const dns = await startDns(confirmed(names))
  t.teardown(() => dns.socket.close())
  const sidecar = await sidecarWithDns(t, dns.server, '2s')

  t.same(
    await concluded(sidecar, '192.0.2.20', GOOGLEBOT),
    unverified('googlebot'),
    'Googlebot from a special crawler (rate-limited-proxy-….google.com): not verified, counted',
  )
  t.same(
    await concluded(sidecar, '192.0.2.21', GOOGLEBOT),
    unverified('googlebot'),
    'Googlebot from a user-triggered fetcher (google-proxy-….google.com): not verified, counted',
  )
  t.same(
    await concluded(sidecar, '192.0.2.21', GOOGLE_INSPECTION_TOOL),
    unverified('google-inspectiontool'),
    'a common crawler of the googlebot.com family from google.com: not verified',
  )
  t.same(
    await concluded(sidecar, '192.0.2.22', GOOGLEBOT),
    verified('googlebot'),
    'Googlebot from crawl-….googlebot.com: verified',
  )
  t.same(
    await concluded(sidecar, '192.0.2.23', GOOGLEBOT),
    verified('googlebot'),
    'Googlebot from geo-crawl-….geo.googlebot.com: verified',
  )
  t.same(
    await concluded(sidecar, '192.0.2.22', GOOGLE_INSPECTION_TOOL),
    verified('google-inspectiontool'),
    'another common crawler from googlebot.com: verified',
  )
  t.same(
    await concluded(sidecar, '192.0.2.23', VERTEXBOT),
    verified('google-cloudvertexbot'),
    'Google-CloudVertexBot, a common crawler, from geo-crawl-….geo.googlebot.com: verified',
  )
  t.same(
    await concluded(sidecar, '192.0.2.21', VERTEXBOT),
    unverified('google-cloudvertexbot'),
    'Google-CloudVertexBot from a user-triggered fetcher (google-proxy-….google.com): not verified, counted',
  )
  t.same(
    await concluded(sidecar, '192.0.2.20', VERTEXBOT),
    unverified('google-cloudvertexbot'),
    'Google-CloudVertexBot from a special crawler (rate-limited-proxy-….google.com): not verified, counted',
  )

  // Bing and Apple document one domain for all their crawlers: any of their products is verified under it
  t.same(await concluded(sidecar, '192.0.2.30', BINGBOT), verified('bingbot'), 'bingbot from search.msn.com')
  t.same(
    await concluded(sidecar, '192.0.2.30', ADIDXBOT),
    verified('adidxbot'),
    'adidxbot from search.msn.com',
  )
  t.same(
    await concluded(sidecar, '192.0.2.31', BINGBOT),
    unverified('bingbot'),
    'bingbot from bing.com, outside search.msn.com: not verified',
  )
  t.same(
    await concluded(sidecar, '192.0.2.40', APPLEBOT),
    verified('applebot'),
    'Applebot from applebot.apple.com',
  )
  t.same(
    await concluded(sidecar, '192.0.2.41', APPLEBOT),
    unverified('applebot'),
    'Applebot from apple.com, outside applebot.apple.com: not verified',
  )
  t.same(
    await concluded(sidecar, '192.0.2.30', GOOGLEBOT),
    unverified('googlebot'),
    "Googlebot from Bing's domain: not verified",
  )
})

// A config written when domains were per operator lists google.com for all of Google: it still loads, and each
// of its domains vouches for what Google documents it for.
t.test('domains configured per operator, as before', async (t) => {
  const dns = await startDns(
    confirmed({
      '192.0.2.50': 'rate-limited-proxy-192-0-2-50.google.com',
      '192.0.2.51': 'crawl-192-0-2-51.googlebot.com',
    }),
  )
  t.teardown(() => dns.socket.close())
  const sidecar = await sidecarWithDns(t, dns.server, '2s', {
    domains: [{ operator: 'Google', suffixes: ['googlebot.com', 'google.com'] }],
  })
  t.same(
    await concluded(sidecar, '192.0.2.50', GOOGLEBOT),
    unverified('googlebot'),
    'google.com listed for all of Google: Googlebot from a special crawler is not verified',
  )
  t.same(
    await concluded(sidecar, '192.0.2.51', GOOGLEBOT),
    verified('googlebot'),
    'Googlebot from googlebot.com is',
  )
})

t.test('a domain configured for some products vouches for those only', async (t) => {
  const dns = await startDns(confirmed({ '192.0.2.52': 'inspect-192-0-2-52.crawl.example' }))
  t.teardown(() => dns.socket.close())
  const sidecar = await sidecarWithDns(t, dns.server, '2s', {
    domains: [
      { operator: 'Google', suffixes: ['googlebot.com'] },
      { operator: 'Google', suffixes: ['crawl.example'], products: ['google-inspectiontool'] },
    ],
  })
  t.same(
    await concluded(sidecar, '192.0.2.52', GOOGLE_INSPECTION_TOOL),
    verified('google-inspectiontool'),
    'Google-InspectionTool from the domain configured for it',
  )
  t.same(
    await concluded(sidecar, '192.0.2.52', GOOGLEBOT),
    unverified('googlebot'),
    'Googlebot from there: not',
  )
})

t.test(
  'check: a domain vouching for no checked crawler is a warning, one of unknown scope an error',
  async (t) => {
    const dir = scratchDirSync('bot-dns-domains')
    // each file is checked where it is, so that the messages name it as an operator typed it
    const check = (name: string, domains: string) => {
      writeFileSync(
        join(dir, name),
        `upstream: http://127.0.0.1:3000\nbots:\n  verify:\n    dns:\n      enabled: true\n      domains:\n${domains}`,
      )
      return runCli(['check', name], { cwd: dir })
    }
    const old = await check(
      'old.yaml',
      '        - { operator: Google, suffixes: [googlebot.com, google.com] }\n',
    )
    t.equal(old.code, 0, 'a config listing google.com for all of Google still loads')
    t.match(
      old.stdout,
      /^old\.yaml:7:57 warning: google\.com verifies no Google crawler claim: Google documents google\.com for its special crawlers/m,
    )
    const unknown = await check(
      'unknown.yaml',
      '        - { operator: Bing, suffixes: [search.msn.com] }\n        - { operator: Google, suffixes: [googlebot.com, crawl.example] }\n',
    )
    t.equal(unknown.code, 1, 'a Google domain that is not one Google documents, without products: refused')
    t.match(
      unknown.stdout,
      /^unknown\.yaml:8:57 Google documents its crawlers' host names per product, and crawl\.example is not one of its domains: say which products it vouches for .*\(hint: keep a domain Google documents \(googlebot\.com, google\.com, googleusercontent\.com\) or one under it, or add products\)$/m,
    )
    const named = await check(
      'named.yaml',
      '        - { operator: Google, suffixes: [crawl.example], products: [google-inspectiontool] }\n',
    )
    t.equal(named.code, 0, 'the same domain with the products it vouches for')
    t.notMatch(named.stdout, /warning/)
  },
)
