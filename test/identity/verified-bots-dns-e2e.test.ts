// Verified bots by reverse DNS end to end, on the built bundle: a request is never held for a lookup, so a
// claim from an address seen for the first time is answered before its lookup concludes. A client that
// never repeats an address (an IPv6 /64 holds 2^64) must still have every spoofed claim counted: when the
// lookup it waited on concludes unverified, or at once when no lookup can start for it.
import t, { type Test } from 'tap'
import { request } from 'undici'
import { startDns } from '../helpers/dns.ts'
import { eventually } from '../helpers/eventually.ts'
import { metricValue, type Sample, scrapeUntil } from '../helpers/metrics.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const GOOGLEBOT = 'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)'
/** a Google crawler outside the shipped ranges, proven by its PTR name resolving back to it */
const CRAWLER = '192.0.2.10'
const CRAWLER_NAME = 'crawl-192-0-2-10.googlebot.com'
/** in-flight lookups allowed at once */
const MAX_INFLIGHT = 64

const unverifiedClaims = (s: Sample[]) =>
  metricValue(s, 'nhi_credential_anomalies_total', { type: 'unverified_claim' })

async function sidecarWithDns(t: Test, server: string, timeout: string) {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  return startTestSidecar(t, {
    service: 'shop',
    upstream: upstream.url,
    // the test client connects from 127.0.0.1, a trusted front proxy that names any client address
    forwardedClientCert: { format: 'xfcc', trustedProxies: ['127.0.0.1/32'] },
    bots: { verify: { dns: { enabled: true, servers: [server], timeout } } },
  })
}

let requests = 0
/** a Googlebot claim from `address`: what the upstream was told, and the id its audit record is found by */
async function claimFrom(
  sidecar: { proxyUrl: string; adminUrl: string },
  address: string,
): Promise<{ identity: string; verified: string; requestId: string }> {
  const requestId = `claim-${++requests}`
  const res = await request(`${sidecar.proxyUrl}/echo`, {
    headers: { 'user-agent': GOOGLEBOT, 'x-forwarded-for': address, 'x-request-id': requestId },
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
