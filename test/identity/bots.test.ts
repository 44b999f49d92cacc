// Verified bots: a user agent claiming a well-known crawler is verified only from its operator's published
// ranges (or by reverse-then-forward DNS when enabled), the range files refresh with the JWKS rules (last
// good keeps serving), and only a trusted proxy can say where a client is.

import { execFile } from 'node:child_process'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { rm, writeFile } from 'node:fs/promises'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { configSchema } from '../../src/config/schema.ts'
import { semanticCheck } from '../../src/config/semantic.ts'
import { dnsSuffixProducts } from '../../src/identity/bots/dns.ts'
import {
  OperatorRanges,
  parseRangeDocument,
  rangeFileProducts,
  SHIPPED_RANGES,
  snapshotFiles,
} from '../../src/identity/bots/ranges.ts'
import { BotVerifier } from '../../src/identity/bots/verify.ts'
import { clientAddress } from '../../src/identity/client-address.ts'
import { AttributionPipeline } from '../../src/pipeline/index.ts'
import { CidrSet } from '../../src/util/cidr.ts'
import { startDns } from '../helpers/dns.ts'
import { eventually } from '../helpers/eventually.ts'

const GOOGLEBOT = 'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)'
const GPTBOT =
  'Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)'
const BINGBOT = 'Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)'

function verifyConfig(verify: Record<string, unknown> = {}, forwarded: Record<string, unknown> = {}) {
  return configSchema.parse({ bots: { verify }, forwardedClientCert: forwarded })
}

function req(headers: Record<string, string>) {
  return { method: 'GET', path: '/', url: '/', headers }
}

t.test('the shipped snapshot: dated, one entry per published file, every prefix a CIDR', async (t) => {
  t.match(SHIPPED_RANGES.asOf, /^\d{4}-\d{2}-\d{2}$/)
  const operators = new Set(SHIPPED_RANGES.sources.map((s) => s.operator))
  t.ok(operators.has('Google') && operators.has('OpenAI') && operators.has('Apple'))
  for (const s of SHIPPED_RANGES.sources) {
    t.match(s.url, /^https:\/\//)
    t.match(s.creationTime, /^\d{4}-\d{2}-\d{2}T/)
    const doc = { prefixes: s.prefixes.map((p) => (p.includes(':') ? { ipv6Prefix: p } : { ipv4Prefix: p })) }
    t.equal(parseRangeDocument(doc).length, s.prefixes.length, `${s.url}: every prefix is a CIDR`)
  }
})

t.test('range files: the published layout is parsed, junk is refused or skipped', async (t) => {
  const doc = {
    creationTime: '2026-08-20T14:46:45.000000',
    prefixes: [
      { ipv6Prefix: '2001:4860:4801:10::/64' },
      { ipv4Prefix: '66.249.64.0/27' },
      { ipv4Prefix: '66.249.64.1' },
      { ipv4Prefix: 'not-an-address/8' },
      'junk',
    ],
  }
  t.same(parseRangeDocument(doc), ['2001:4860:4801:10::/64', '66.249.64.0/27'])
  t.throws(() => parseRangeDocument({ keys: [] }), /not \{"prefixes"/)
  t.throws(() => parseRangeDocument({ prefixes: [{ ipv4Prefix: 'x' }] }), /no usable prefixes/)
  const r = new OperatorRanges([{ operator: 'Google', products: 'all', prefixes: parseRangeDocument(doc) }])
  t.ok(r.contains('google', '66.249.64.31'))
  t.notOk(r.contains('Google', '66.249.64.32'))
  t.ok(r.contains('Google', '2001:4860:4801:10::1'))
  t.ok(r.contains('Google', '::ffff:66.249.64.5'), 'a v4-mapped peer matches its v4 range')
  t.notOk(r.has('Bing'))
})

t.test('verifyBotClaim against the shipped ranges', async (t) => {
  const v = new BotVerifier(verifyConfig().bots.verify, verifyConfig().forwardedClientCert)
  t.teardown(() => v.close())
  t.equal(v.verifyBotClaim('Google', '66.249.66.1'), 'verified')
  t.equal(v.verifyBotClaim('Google', '203.0.113.9'), 'unverified_claim')
  t.equal(v.verifyBotClaim('Google', '20.171.206.7'), 'unverified_claim', "OpenAI's range is not Google's")
  t.equal(v.verifyBotClaim('OpenAI', '20.171.206.7'), 'verified')
  t.equal(v.verifyBotClaim('OpenAI', '20.171.206.7', 'gptbot'), 'verified', 'a GPTBot address for GPTBot')
  t.equal(
    v.verifyBotClaim('OpenAI', '104.208.184.193', 'gptbot'),
    'unverified_claim',
    "a ChatGPT-User address is not GPTBot's",
  )
  t.equal(v.verifyBotClaim('OpenAI', '104.208.184.193', 'chatgpt-user'), 'verified')
  t.equal(
    v.verifyBotClaim('OpenAI', '104.208.184.193'),
    'verified',
    "without a product: any of OpenAI's files",
  )
  t.equal(v.verifyBotClaim('Apple', '17.241.208.170'), 'verified')
  t.equal(
    v.verifyBotClaim('Bing', '157.55.39.1'),
    'unknown',
    'no Bing ranges shipped: nothing to check against',
  )
  const off = new BotVerifier(verifyConfig({ enabled: false }).bots.verify, { trustedProxies: [] })
  t.equal(off.verifyBotClaim('Google', '203.0.113.9'), 'unknown')
})

t.test('range files vouch for the products their operator publishes them for', async (t) => {
  const openai = (file: string) =>
    rangeFileProducts({ operator: 'OpenAI', url: `https://openai.com/${file}` })
  t.same(openai('gptbot.json'), ['gptbot'])
  t.same(openai('searchbot.json'), ['oai-searchbot'])
  t.same(openai('chatgpt-user.json'), ['chatgpt-user'])
  t.same(
    rangeFileProducts({ operator: 'Perplexity', url: 'https://www.perplexity.ai/perplexity-user.json' }),
    ['perplexity-user'],
  )
  const google = (file: string) =>
    rangeFileProducts({
      operator: 'Google',
      url: `https://developers.google.com/static/search/apis/ipranges/${file}`,
    })
  t.ok(google('googlebot.json').includes('googlebot'))
  for (const file of [
    'special-crawlers.json',
    'user-triggered-fetchers.json',
    'user-triggered-fetchers-google.json',
  ])
    t.notOk(google(file).includes('googlebot'), `${file} does not vouch for Googlebot`)
  t.equal(rangeFileProducts({ operator: 'Bing', url: 'https://www.bing.com/toolbox/bingbot.json' }), 'all')
  t.equal(
    rangeFileProducts({ operator: 'Apple', url: 'https://mirror.example/apple.json' }),
    'all',
    'an operator that publishes one list: any file of it vouches for all its products',
  )
  t.same(
    rangeFileProducts({ operator: 'openai', url: 'https://mirror.example/ranges/chatgpt-user.json?v=2' }),
    ['chatgpt-user'],
    'a mirror keeping the file name',
  )
  t.same(
    rangeFileProducts({ operator: 'OpenAI', url: 'https://mirror.example/x.json', products: ['GPTBot'] }),
    ['gptbot'],
    'products named in the config, in any case',
  )
  t.throws(
    () => rangeFileProducts({ operator: 'OpenAI', url: 'https://mirror.example/openai.json?token=secret' }),
    /^OpenAI publishes one range file per product, and https:\/\/mirror\.example\/openai\.json is not one of them by name: say which products/,
    'a file of a per-product operator that says nothing is refused, its query left out',
  )

  const issues = semanticCheck(
    verifyConfig({
      ranges: [
        { operator: 'OpenAI', url: 'https://mirror.example/openai.json' },
        { operator: 'OpenAI', url: 'https://mirror.example/gptbot.json' },
        { operator: 'OpenAI', url: 'https://mirror.example/x.json', products: ['gptbot'] },
        { operator: 'Bing', url: 'https://mirror.example/bing.json' },
      ],
    }),
  ).filter((i) => i.path[0] === 'bots')
  t.same(
    issues.map((i) => [i.path, i.severity]),
    [[['bots', 'verify', 'ranges', 0, 'url'], 'error']],
    'the config check refuses the file nothing says the products of, and only that one',
  )
  t.match(issues[0]?.hint, /gptbot\.json, searchbot\.json, chatgpt-user\.json/)
})

t.test('reverse DNS domains vouch for the products their operator documents them for', async (t) => {
  const google = (suffix: string, products?: string[]) =>
    dnsSuffixProducts({ operator: 'Google', suffixes: [suffix], products }, suffix)
  const googlebotJson = rangeFileProducts({
    operator: 'Google',
    url: 'https://developers.google.com/static/search/apis/ipranges/googlebot.json',
  })
  t.same(google('googlebot.com'), googlebotJson, "googlebot.com: Google's common crawlers, as googlebot.json")
  t.same(google('.Geo.GoogleBot.com.'), googlebotJson, 'a name under it, in any case, vouches as it does')
  for (const suffix of ['google.com', 'googleusercontent.com'])
    t.notOk(
      (google(suffix) as readonly string[]).includes('googlebot'),
      `${suffix} does not vouch for Googlebot`,
    )
  t.same(google('googleusercontent.com'), [], 'nor does googleusercontent.com for anything')
  t.same(google('google.com', ['GoogleBot']), ['googlebot'], 'products named in the config, in any case')
  t.throws(
    () => google('crawl.example'),
    /^Google documents its crawlers' host names per product, and crawl\.example is not one of its domains/,
  )
  const any = (operator: string, suffix: string) =>
    dnsSuffixProducts({ operator, suffixes: [suffix] }, suffix)
  t.equal(any('Bing', 'search.msn.com'), 'all', 'Bing documents one domain for all its crawlers')
  t.equal(any('apple', 'applebot.apple.com'), 'all', 'so does Apple')
  t.equal(any('Bing', 'msn.com'), 'all', "another domain of such an operator: the operator's choice")
  t.equal(any('Example', 'crawl.example'), 'all', 'an operator documenting nothing')
})

t.test(
  'a snapshot made before files were per product loads; one that cannot say fails clearly',
  async (t) => {
    const old = {
      asOf: '2026-09-15',
      sources: [
        {
          operator: 'OpenAI',
          url: 'https://openai.com/gptbot.json',
          creationTime: 'x',
          prefixes: ['192.0.2.0/24'],
        },
        {
          operator: 'OpenAI',
          url: 'https://openai.com/chatgpt-user.json',
          creationTime: 'x',
          prefixes: ['198.51.100.0/24'],
        },
        {
          operator: 'Bing',
          url: 'https://www.bing.com/toolbox/bingbot.json',
          creationTime: 'x',
          prefixes: ['203.0.113.0/24'],
        },
      ],
    }
    const files = snapshotFiles(old)
    t.same(
      files.map((f) => f.products),
      [['gptbot'], ['chatgpt-user'], 'all'],
    )
    const r = new OperatorRanges(files)
    t.ok(r.contains('OpenAI', '192.0.2.1', 'gptbot'))
    t.notOk(r.contains('OpenAI', '198.51.100.1', 'gptbot'), "ChatGPT-User's range is not GPTBot's")
    t.ok(r.contains('OpenAI', '198.51.100.1', 'chatgpt-user'))
    t.notOk(r.covers('OpenAI', 'oai-searchbot'), 'no file for OAI-SearchBot: nothing to check it against')
    t.ok(r.covers('Bing', 'bingpreview'), "Bing's one list covers every Bing product")
    t.ok(r.contains('Bing', '203.0.113.1', 'msnbot'))
    t.ok(r.contains('OpenAI', '198.51.100.1'), "without a product: any of the operator's ranges")

    t.throws(
      () =>
        snapshotFiles({
          asOf: '2026-09-15',
          sources: [
            { operator: 'OpenAI', url: 'https://mirror.example/all.json', creationTime: 'x', prefixes: [] },
          ],
        }),
      /^ranges-snapshot\.json: OpenAI publishes one range file per product.*refresh it with node scripts\/refresh-bot-ranges\.mjs$/,
    )
    t.ok(
      SHIPPED_RANGES.sources.every(
        (s) => s.operator === 'Apple' || s.operator === 'Bing' || s.products !== undefined,
      ),
      'the shipped snapshot names the products of every per-product file',
    )
  },
)

t.test(
  'the pipeline: in range verified and named without ua:, out of range counted, others untouched',
  async (t) => {
    const engine = new AttributionPipeline(verifyConfig())
    t.teardown(() => engine.close())
    const from = (remoteAddress: string, ua: string) =>
      engine.evaluate(req({ 'user-agent': ua }), { remoteAddress, remotePort: 1, tls: false }) as Awaited<
        ReturnType<AttributionPipeline['evaluate']>
      >
    const real = from('66.249.66.1', GOOGLEBOT)
    t.equal(real.identity.name, 'googlebot')
    t.equal(real.identity.verified, true)
    t.equal(real.identity.kind, 'bot')
    t.equal(real.identity.attributes['bot_verified_by'], 'ranges')
    t.same(real.evidence.anomalies, [])

    const fake = from('203.0.113.9', GOOGLEBOT)
    t.equal(fake.identity.name, 'ua:googlebot', 'the same user agent from elsewhere is not the verified one')
    t.equal(fake.identity.verified, false)
    t.same(fake.evidence.anomalies, ['unverified_claim'])
    t.equal(from('66.249.66.1', GOOGLEBOT).identity.verified, true, 'the identity cache keeps them apart')

    t.equal(from('20.171.206.7', GPTBOT).identity.verified, true, 'GPTBot from an OpenAI range')
    t.same(from('66.249.66.1', GPTBOT).evidence.anomalies, ['unverified_claim'], 'GPTBot from Google is not')
    t.same(from('203.0.113.9', BINGBOT).evidence.anomalies, [], 'no Bing ranges loaded: not counted')
    const curl = from('203.0.113.9', 'curl/8.4.0')
    t.same(curl.evidence.anomalies, [], 'a user agent that claims no crawler operator is never counted')
  },
)

t.test('client address: only a trusted proxy names the client', async (t) => {
  const trusted = new CidrSet(['127.0.0.2/32', '10.0.0.0/30'])
  const google = '66.249.66.1'
  // the attacker connects directly from an untrusted address with every header that can name an address
  const attackerHeaders: Record<string, string>[] = [
    { 'x-forwarded-for': google },
    { 'x-forwarded-for': `${google}, ${google}` },
    { 'x-forwarded-for': `[${google}]:443` },
    { x_forwarded_for: google },
    { 'x-real-ip': google },
    { forwarded: `for=${google}` },
    { 'true-client-ip': google },
    { 'cf-connecting-ip': google },
    { 'x-client-ip': google },
  ]
  for (const h of attackerHeaders) {
    t.equal(clientAddress(h, '203.0.113.9', trusted), '203.0.113.9', `untrusted peer: ${JSON.stringify(h)}`)
    t.equal(
      clientAddress(h, '127.0.0.1', trusted),
      '127.0.0.1',
      `loopback but untrusted: ${JSON.stringify(h)}`,
    )
  }
  // the trusted proxy appends the real peer: what the client put in front of it never counts
  t.equal(clientAddress({ 'x-forwarded-for': `${google}, 203.0.113.9` }, '127.0.0.2', trusted), '203.0.113.9')
  t.equal(clientAddress({ 'x-forwarded-for': google }, '127.0.0.2', trusted), google)
  t.equal(clientAddress({ 'x-forwarded-for': `${google}:51234` }, '::ffff:127.0.0.2', trusted), google)
  // a chain of trusted proxies is walked past, and stops at the first address they did not vouch for
  t.equal(
    clientAddress({ 'x-forwarded-for': `203.0.113.9, ${google}, 10.0.0.1` }, '127.0.0.2', trusted),
    google,
  )
  // garbage where the trusted proxy's entry should be: the proxy itself is the client (never inside a range)
  t.equal(clientAddress({ 'x-forwarded-for': 'unknown' }, '127.0.0.2', trusted), '127.0.0.2')
  t.equal(clientAddress({}, '127.0.0.2', trusted), '127.0.0.2')
  t.equal(clientAddress({ 'x-forwarded-for': google }, '127.0.0.2', new CidrSet([])), '127.0.0.2')
})

t.test(
  'range refresh over HTTP: last good ranges serve through failures, new ones replace them',
  async (t) => {
    let answer: { status: number; body: string } = {
      status: 200,
      body: JSON.stringify({ creationTime: 'x', prefixes: [{ ipv4Prefix: '198.51.100.0/24' }] }),
    }
    let hits = 0
    const server = createServer((_req, res) => {
      hits++
      res.statusCode = answer.status
      res.end(answer.body)
    })
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    t.teardown(() => server.close())
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/bingbot.json?sig=secret`
    const events: { result: string; prefixes: number; error?: string }[] = []
    const cfg = verifyConfig({
      shippedRanges: false,
      ranges: [{ operator: 'Bing', url }],
      refreshInterval: 1,
      retryInterval: '50ms',
    }).bots.verify
    const v = new BotVerifier(
      cfg,
      { trustedProxies: [] },
      {
        observer: {
          refreshed: (_op, _url, result, prefixes, error) => {
            events.push(error === undefined ? { result, prefixes } : { result, prefixes, error })
          },
        },
      },
    )
    t.teardown(() => v.close())
    t.equal(
      v.verifyBotClaim('Bing', '198.51.100.7'),
      'unknown',
      'before the first fetch: nothing to check against',
    )
    await v.start()
    t.equal(v.verifyBotClaim('Bing', '198.51.100.7'), 'verified')
    t.equal(v.verifyBotClaim('Bing', '203.0.113.5'), 'unverified_claim')

    answer = { status: 500, body: 'down' }
    const failure = await eventually(() => events.find((e) => e.result === 'failure'), {
      what: 'a failed refresh',
    })
    t.match(failure.error, /HTTP 500/)
    t.notMatch(failure.error, /secret/, 'the URL query never reaches a log line')
    t.equal(failure.prefixes, 1, 'the last good file is still loaded')
    t.equal(v.verifyBotClaim('Bing', '198.51.100.7'), 'verified', 'the last good ranges keep serving')

    answer = { status: 200, body: '{"prefixes": "not a list"}' }
    const before = hits
    await eventually(() => hits > before + 1, { what: 'retries after a failure come at the retry interval' })
    t.equal(
      v.verifyBotClaim('Bing', '198.51.100.7'),
      'verified',
      'a malformed file does not replace a good one',
    )

    answer = { status: 200, body: JSON.stringify({ prefixes: [{ ipv4Prefix: '203.0.113.0/24' }] }) }
    await eventually(() => v.verifyBotClaim('Bing', '203.0.113.5') === 'verified', { what: 'the new ranges' })
    t.equal(v.verifyBotClaim('Bing', '198.51.100.7'), 'unverified_claim', 'the old ranges are gone')
  },
)

t.test('reverse-then-forward DNS on a loopback DNS server', async (t) => {
  const dns = await startDns({
    ptr: {
      '192.0.2.10': 'crawl-192-0-2-10.googlebot.com',
      '192.0.2.11': 'crawl.googlebot.com.attacker.example',
      '192.0.2.12': 'crawl-192-0-2-12.googlebot.com',
    },
    a: {
      'crawl-192-0-2-10.googlebot.com': '192.0.2.10',
      'crawl.googlebot.com.attacker.example': '192.0.2.11',
      // the attacker controls the PTR of its own address, not Google's forward zone
      'crawl-192-0-2-12.googlebot.com': '192.0.2.99',
    },
  })
  t.teardown(() => dns.socket.close())
  const config = verifyConfig({ dns: { enabled: true, servers: [dns.server], timeout: '2s' } })
  const engine = new AttributionPipeline(config)
  t.teardown(() => engine.close())
  const from = (remoteAddress: string) =>
    engine.evaluate(req({ 'user-agent': GOOGLEBOT }), {
      remoteAddress,
      remotePort: 1,
      tls: false,
    }) as Awaited<ReturnType<AttributionPipeline['evaluate']>>

  const first = from('192.0.2.10')
  t.equal(first.identity.verified, false, 'the first request does not wait for DNS')
  t.same(first.evidence.anomalies, [], 'nor is it counted while the answer is on its way')
  for (const a of ['192.0.2.11', '192.0.2.12', '192.0.2.13']) from(a)
  await engine.settled()

  const later = from('192.0.2.10')
  t.equal(later.identity.verified, true, 'PTR in googlebot.com resolving back to the address')
  t.equal(later.identity.name, 'googlebot')
  t.equal(later.identity.attributes['bot_verified_by'], 'dns')
  t.same(from('192.0.2.11').evidence.anomalies, ['unverified_claim'], 'a look-alike domain is not Google')
  t.same(from('192.0.2.12').evidence.anomalies, ['unverified_claim'], 'forward lookup disagrees with the PTR')
  t.same(from('192.0.2.13').evidence.anomalies, ['unverified_claim'], 'no PTR record')
  t.equal(from('66.249.66.1').identity.attributes['bot_verified_by'], 'ranges', 'ranges are checked first')

  const asked = dns.queries.length
  from('192.0.2.10')
  from('192.0.2.11')
  await engine.settled()
  t.equal(dns.queries.length, asked, 'answers are cached: no new queries')
})

// The reverse zone of an address is its holder's: a client claiming a crawler from its own address can make
// every lookup time out or fail. A failed lookup used to leave the claim "unknown" (neither verified nor
// counted) for as long as the failures went on.
t.test(
  'DNS that never answers: bounded by the timeout, never verified, counted, asked again later',
  async (t) => {
    const dns = await startDns({ ptr: {}, a: {} }, { silent: true })
    t.teardown(() => dns.socket.close())
    const cfg = verifyConfig({
      dns: { enabled: true, servers: [dns.server], timeout: '150ms', cacheTtl: '300ms' },
    }).bots.verify
    const v = new BotVerifier(cfg, { trustedProxies: [] })
    t.teardown(() => v.close())
    const started = Date.now()
    t.equal(v.verifyBotClaim('Bing', '192.0.2.50'), 'unknown', 'the first claim does not wait for the lookup')
    await v.dnsSettled()
    t.ok(Date.now() - started < 2000, 'the lookup gave up within its budget')
    t.equal(
      v.verifyBotClaim('Bing', '192.0.2.50'),
      'unverified_claim',
      'a failed lookup verifies nothing: counted',
    )
    t.equal(v.verifyBotClaim('Google', '192.0.2.50'), 'unknown', 'per operator: Google is asked on its own')
    await v.dnsSettled()
    t.equal(
      v.verifyBotClaim('Google', '192.0.2.50'),
      'unverified_claim',
      'outside Google ranges, lookup failed',
    )
    const asked = dns.queries.length
    // the failure stands for min(cacheTtl, 60 s); then a later claim asks again
    await eventually(
      () => {
        v.verifyBotClaim('Bing', '192.0.2.50')
        return dns.queries.length > asked
      },
      { what: 'a later claim asking again once the failure has expired' },
    )
    t.pass('asked again after the failure expired')
  },
)

// A request is never held for its lookup, so every claim from an address seen for the first time used to be
// neither verified nor counted: a client that never repeats an address was never counted at all.
t.test(
  'a claim answered before its lookup concluded is counted when the lookup finds it false',
  async (t) => {
    const dns = await startDns({ ptr: {}, a: {} }, { silent: true })
    t.teardown(() => dns.socket.close())
    const config = verifyConfig({ dns: { enabled: true, servers: [dns.server], timeout: '150ms' } })
    const found: [string, number][] = []
    const engine = new AttributionPipeline(config, {
      anomalyObserver: { found: (type, count) => found.push([type, count]) },
    })
    t.teardown(() => engine.close())
    const from = (remoteAddress: string, ua = GOOGLEBOT) =>
      engine.evaluate(req({ 'user-agent': ua }), { remoteAddress, remotePort: 1, tls: false }) as Awaited<
        ReturnType<AttributionPipeline['evaluate']>
      >

    for (let i = 0; i < 3; i++) {
      t.same(from('192.0.2.70').evidence.anomalies, [], 'answered while the lookup runs, not counted yet')
    }
    // named after another product: false whatever the lookup answers, so counted with the request
    const misnamed = from(
      '192.0.2.71',
      'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html) ClaudeBot/1.0',
    )
    t.equal(misnamed.identity.name, 'ua:claudebot')
    t.same(misnamed.evidence.anomalies, ['unverified_claim'])
    await engine.settled()
    t.same(found, [['unverified_claim', 3]], 'each request that waited on the failed lookup, once')
    t.same(from('192.0.2.70').evidence.anomalies, ['unverified_claim'], 'later requests: with the request')
    t.equal(found.length, 1, 'and only there')
  },
)

t.test('scripts/refresh-bot-ranges.mjs writes the snapshot from the published files', async (t) => {
  const server = createServer((req, res) => {
    if (req.url?.startsWith('/down')) {
      res.statusCode = 503
      res.end()
      return
    }
    res.end(
      JSON.stringify({
        creationTime: '2026-11-30T10:00:00Z',
        prefixes: [{ ipv4Prefix: '192.0.2.0/24' }, { ipv6Prefix: '2001:db8::/32' }, { ipv4Prefix: 'junk' }],
      }),
    )
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => server.close())
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  const out = join(tmpdir(), `bot-ranges-${process.pid}.json`)
  t.teardown(() => rm(out, { force: true }))
  // a snapshot of the shape before files were per product, whose file fails to fetch this time
  await writeFile(
    out,
    JSON.stringify({
      asOf: '2026-09-15',
      sources: [
        {
          operator: 'OpenAI',
          url: `${base}/down/chatgpt-user.json`,
          creationTime: 'x',
          prefixes: ['198.51.100.0/24'],
        },
        { operator: 'OpenAI', url: `${base}/down/all.json`, creationTime: 'x', prefixes: ['203.0.113.0/24'] },
      ],
    }),
  )
  const run = await promisify(execFile)(process.execPath, [
    'scripts/refresh-bot-ranges.mjs',
    '--out',
    out,
    '--url',
    `Bing=${base}/bingbot.json`,
    '--url',
    `Perplexity=${base}/down.json`,
    '--url',
    `OpenAI=${base}/mirror/gptbot.json`,
    '--url',
    `OpenAI:OAI-SearchBot=${base}/mirror/search.json`,
    '--url',
    `OpenAI=${base}/mirror/openai.json`,
    '--url',
    `OpenAI=${base}/down/chatgpt-user.json`,
    '--url',
    `OpenAI=${base}/down/all.json`,
  ]).catch((err: { stderr?: string }) => {
    t.fail(err.stderr ?? String(err))
    return { stderr: '' }
  })
  t.match(run.stderr, /OpenAI .*\/mirror\/openai\.json: OpenAI publishes one range file per product/)
  t.match(
    run.stderr,
    /\/down\/all\.json: previous entry left out: OpenAI publishes one range file per product/,
  )
  const written = JSON.parse(readFileSync(out, 'utf8'))
  t.match(written.asOf, /^\d{4}-\d{2}-\d{2}$/)
  const fetched = { creationTime: '2026-11-30T10:00:00Z', prefixes: ['192.0.2.0/24', '2001:db8::/32'] }
  t.same(
    written.sources,
    [
      { operator: 'Bing', url: `${base}/bingbot.json`, ...fetched },
      { operator: 'OpenAI', url: `${base}/mirror/gptbot.json`, products: ['gptbot'], ...fetched },
      { operator: 'OpenAI', url: `${base}/mirror/search.json`, products: ['oai-searchbot'], ...fetched },
      {
        operator: 'OpenAI',
        url: `${base}/down/chatgpt-user.json`,
        creationTime: 'x',
        products: ['chatgpt-user'],
        prefixes: ['198.51.100.0/24'],
      },
    ],
    'Bing: one list for all its products; OpenAI: one per product, by file name or as named; an OpenAI ' +
      'file nothing names the products of is left out, fetched or kept; a kept entry of the old shape gets ' +
      'its products; junk prefixes are dropped',
  )
  t.same(
    snapshotFiles(written).map((f) => f.products),
    ['all', ['gptbot'], ['oai-searchbot'], ['chatgpt-user']],
    'and the proxy loads it',
  )
})
