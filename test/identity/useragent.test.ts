import { once } from 'node:events'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { defaultConfig } from '../../src/config/schema.ts'
import { findAgent, KNOWN_AGENTS } from '../../src/identity/agents.ts'
import { userAgentSource } from '../../src/identity/sources/useragent.ts'
import { classifyUserAgent, MAX_UA_LENGTH, userAgentCacheSize } from '../../src/identity/useragent.ts'
import { USER_AGENTS } from '../fixtures/user-agents.ts'

t.test('every real user agent gets its category and product', async (t) => {
  t.ok(USER_AGENTS.length >= 100, `${USER_AGENTS.length} user agents`)
  for (const c of USER_AGENTS) {
    const ev = classifyUserAgent(c.ua)
    t.same([ev.category, ev.product], [c.category, c.product], c.ua || '(empty)')
    t.equal(ev.verified, false)
    t.equal(ev.source, 'useragent')
  }
})

t.test('every listed AI agent is covered by the fixture table', async (t) => {
  const seen = new Set(USER_AGENTS.filter((c) => c.category === 'agent').map((c) => c.product))
  for (const a of KNOWN_AGENTS) t.ok(seen.has(a.product), `fixture has ${a.product}`)
  t.equal(new Set(KNOWN_AGENTS.map((a) => a.product)).size, KNOWN_AGENTS.length, 'products are unique')
  t.equal(findAgent('Applebot-Extended')?.operator, 'Apple')
  t.equal(findAgent('Mozilla/5.0 (compatible; Googlebot/2.1)'), undefined)
})

t.test('long user agents are cut, and the cache stays bounded', async (t) => {
  const long = `Mozilla/5.0 (compatible; Googlebot/2.1; ${'x'.repeat(10_000)})`
  const ev = classifyUserAgent(long)
  t.equal(ev.ua.length, MAX_UA_LENGTH)
  t.equal(ev.product, 'googlebot')
  // a character outside the BMP across the cut is left out whole, not halved into a lone surrogate
  const astral = classifyUserAgent(`curl/8.5 ${'y'.repeat(MAX_UA_LENGTH - 10)}\u{1F600}tail`)
  t.equal(astral.ua, `curl/8.5 ${'y'.repeat(MAX_UA_LENGTH - 10)}`, 'cut before the character')
  // a header's UTF-8 bytes (one latin1 character each, as Node hands them over) are read as the text they encode
  const bytes = (text: string) => Buffer.from(text, 'utf8').toString('latin1')
  t.equal(
    classifyUserAgent(bytes('Bücherwurm/2.1 (+https://bücher.example)')).ua,
    'Bücherwurm/2.1 (+https://bücher.example)',
  )
  t.equal(
    classifyUserAgent('caf\xe9-bot/1').ua,
    'caf\xe9-bot/1',
    'a byte that is not UTF-8 stays the character it was',
  )
  // the cut at 512 bytes splits a two-byte é: the rest is still read as UTF-8, without the half
  const splitAtCut = classifyUserAgent(bytes(`Übersetzer/1 ${'z'.repeat(MAX_UA_LENGTH - 15)}é and more`))
  t.equal(
    splitAtCut.ua,
    `Übersetzer/1 ${'z'.repeat(MAX_UA_LENGTH - 15)}`,
    'a character split by the cut is left out',
  )
  t.equal(classifyUserAgent(undefined).category, 'unknown')
  // each sent twice: the cache keeps a user agent from its second request on
  for (let i = 0; i < 20_000; i++) {
    classifyUserAgent(`client-${i}/1.0`)
    classifyUserAgent(`client-${i}/1.0`)
  }
  t.ok(userAgentCacheSize() >= 4000, `the cache filled (${userAgentCacheSize()})`)
  t.ok(userAgentCacheSize() <= 5000, `and stays bounded (${userAgentCacheSize()})`)
  t.equal(
    classifyUserAgent('client-19999/1.0'),
    classifyUserAgent('client-19999/1.0'),
    'cached result reused',
  )
})

t.test('a user agent is kept from its second request on; one-off user agents never evict it', async (t) => {
  const kept = 'admission-test/3.1 (+https://example.com/bot)'
  const once = classifyUserAgent(kept)
  const second = classifyUserAgent(kept)
  t.not(second, once, 'its second request classifies it again')
  t.same(second, once, 'to the same answer')
  t.equal(classifyUserAgent(kept), second, 'and keeps it')
  // twice the cache in user agents never seen again (a scraper rotating them): none is kept
  const before = userAgentCacheSize()
  for (let i = 0; i < 10_000; i++) classifyUserAgent(`rotating-${i} (compatible; x/${i})`)
  t.equal(userAgentCacheSize(), before, 'the cache did not take any of them')
  t.equal(classifyUserAgent(kept), second, 'the kept user agent is still cached')
})

t.test('the extractor reads the user-agent header of a real request', async (t) => {
  const seen: unknown[] = []
  const server = createServer(async (req, res) => {
    seen.push(
      await userAgentSource
        .create(defaultConfig(), {})!
        .extract(
          { method: 'GET', path: '/', url: '/', headers: req.headers },
          { remoteAddress: '127.0.0.1', remotePort: 0, tls: false },
        ),
    )
    res.end()
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => new Promise<void>((r) => server.close(() => r())))
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`
  await (await fetch(url, { headers: { 'user-agent': 'claude-cli/1.0.83 (external, cli)' } })).arrayBuffer()
  await (await fetch(url, { headers: { 'user-agent': '' } })).arrayBuffer()
  t.match(seen[0], { source: 'useragent', category: 'agent', product: 'claude-code', verified: false })
  t.equal(seen[1], undefined, 'no user agent → no evidence')
})
