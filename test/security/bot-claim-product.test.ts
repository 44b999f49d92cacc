// A verified bot is verified as the product its user agent is named after. The operator claim is read from
// anywhere in the user agent while the name comes from the classifier, whose first match may be another
// product: "… Googlebot/2.1 … ClaudeBot/1.0" from Google's crawler ranges was the verified identity
// `claudebot` (agent_operator Anthropic, bot_verified_by=ranges), though Anthropic publishes no ranges and
// nothing about ClaudeBot was checked. Together with any address that passes one operator's check (ranges or
// DNS), every product name could be had verified.
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import t from 'tap'
import { configSchema } from '../../src/config/schema.ts'
import { claimedOperators, operatorVouchesFor } from '../../src/identity/bots/claims.ts'
import { classifyUserAgent } from '../../src/identity/useragent.ts'
import { AttributionPipeline } from '../../src/pipeline/index.ts'

const GOOGLE_RANGE = '66.249.66.1' // in the shipped googlebot.json snapshot

t.test('a Google-range address verifies Google products only', async (t) => {
  const engine = new AttributionPipeline(configSchema.parse({}))
  t.teardown(() => engine.close())
  const from = async (ua: string) =>
    (await engine.evaluate(
      { method: 'GET', path: '/', url: '/', headers: { 'user-agent': ua } },
      { remoteAddress: GOOGLE_RANGE, remotePort: 1, tls: false },
    )) as Awaited<ReturnType<AttributionPipeline['evaluate']>>

  const real = await from('Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)')
  t.equal(real.identity.name, 'googlebot')
  t.equal(real.identity.verified, true, 'the real crawler stays verified')

  for (const [ua, name] of [
    ['Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html) ClaudeBot/1.0', 'claudebot'],
    ['Mozilla/5.0 (compatible; GPTBot/1.2; +https://openai.com/gptbot) Googlebot/2.1', 'gptbot'],
  ] as const) {
    const r = await from(ua)
    t.equal(r.identity.verified, false, `${name}: not verified by Google's ranges`)
    t.equal(r.identity.name, `ua:${name}`)
    t.notOk(r.identity.attributes['bot_verified_by'])
  }
})

t.test('every product an operator is checked for is one its ranges and names vouch for', async (t) => {
  // one user agent per product the claims list names (docs/reference.md "Built-in knowledge")
  const products: [string, string][] = [
    ['Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)', 'Google'],
    ['Googlebot-Image/1.0', 'Google'],
    ['Googlebot-News/1.0', 'Google'],
    ['Googlebot-Video/1.0', 'Google'],
    ['Mozilla/5.0 (compatible; Google-InspectionTool/1.0;)', 'Google'],
    ['Mozilla/5.0 (compatible; GoogleOther)', 'Google'],
    ['Mozilla/5.0 (compatible; GoogleOther-Image/1.0)', 'Google'],
    ['GoogleOther-Video/1.0', 'Google'],
    ['Mozilla/5.0 (compatible; Storebot-Google/1.0)', 'Google'],
    [
      'Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0.6422.175 Mobile Safari/537.36 (compatible; Google-CloudVertexBot; +https://cloud.google.com/enterprise-search)',
      'Google',
    ],
    ['Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)', 'Bing'],
    ['Mozilla/5.0 (Windows NT 10.0; Win64; x64) BingPreview/1.0b', 'Bing'],
    ['Mozilla/5.0 (compatible; adidxbot/2.0; +http://www.bing.com/bingbot.htm)', 'Bing'],
    ['msnbot/2.0b (+http://search.msn.com/msnbot.htm)', 'Bing'],
    [
      'Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)',
      'OpenAI',
    ],
    [
      'Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; OAI-SearchBot/1.0; +https://openai.com/searchbot)',
      'OpenAI',
    ],
    [
      'Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko); compatible; ChatGPT-User/1.0; +https://openai.com/bot',
      'OpenAI',
    ],
    [
      'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/13.1.1 Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)',
      'Apple',
    ],
    [
      'Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; PerplexityBot/1.0; +https://perplexity.ai/perplexitybot)',
      'Perplexity',
    ],
    [
      'Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; Perplexity-User/1.0; +https://perplexity.ai/perplexity-user)',
      'Perplexity',
    ],
  ]
  for (const [ua, operator] of products) {
    const ev = classifyUserAgent(ua)
    t.same(claimedOperators(ev), [operator], `${ev.product}: claims ${operator}`)
    t.ok(operatorVouchesFor(operator, ev), `${ev.product}: one of ${operator}'s products`)
  }
})

// A claim nothing can check (Bing publishes no ranges in the snapshot, and DNS checks are off by default) must
// not hide a false one in the same user agent: "GPTBot/1.2 … bingbot/2.0" from outside OpenAI's ranges was
// checked as a Bing claim only (the first claim in the list), found neither true nor false, and counted
// nothing. Every claim is checked now.
t.test(
  'every operator a user agent claims is checked: an uncheckable claim hides no false one',
  async (t) => {
    const engine = new AttributionPipeline(configSchema.parse({}))
    t.teardown(() => engine.close())
    const from = async (remoteAddress: string, ua: string) =>
      (await engine.evaluate(
        { method: 'GET', path: '/', url: '/', headers: { 'user-agent': ua } },
        { remoteAddress, remotePort: 1, tls: false },
      )) as Awaited<ReturnType<AttributionPipeline['evaluate']>>
    const OPENAI_RANGE = '20.171.206.7'
    const OUTSIDE = '203.0.113.7'
    const GPTBOT =
      'Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)'

    t.same(
      claimedOperators(classifyUserAgent(`${GPTBOT} bingbot/2.0`)),
      ['Bing', 'OpenAI'],
      'both claims are read',
    )
    for (const extra of ['bingbot/2.0', 'BingPreview/1.0b', 'adidxbot/2.0', 'msnbot/2.0b']) {
      const r = await from(OUTSIDE, `${GPTBOT} ${extra}`)
      t.equal(r.identity.name, 'ua:gptbot', `+ ${extra}: still named gptbot`)
      t.equal(r.identity.verified, false)
      t.ok(r.evidence.anomalies.includes('unverified_claim'), `+ ${extra}: the false OpenAI claim is counted`)
    }
    const plain = await from(OUTSIDE, GPTBOT)
    t.ok(plain.evidence.anomalies.includes('unverified_claim'), 'as it is without the extra claim')

    const real = await from(OPENAI_RANGE, `${GPTBOT} bingbot/2.0`)
    t.equal(real.identity.name, 'gptbot', "from OpenAI's range: the claim it is named after holds")
    t.equal(real.identity.verified, true, 'an uncheckable second claim does not undo it')
    t.same(real.evidence.anomalies, [])

    const both = await from(OPENAI_RANGE, `${GPTBOT} Googlebot/2.1`)
    t.equal(
      both.identity.verified,
      false,
      "from OpenAI's range with a Google claim: a false claim, not verified",
    )
    t.ok(both.evidence.anomalies.includes('unverified_claim'), 'and counted')
  },
)

// The claim used to be read only as `Product/version` while the classifier names a user agent after the crawler
// without one: `… compatible; GPTBot; +https://openai.com/gptbot)` was ua:gptbot with agent_operator OpenAI,
// and from any address no unverified_claim was counted. Whatever follows the product, a user agent named after
// an operator's crawler claims that operator.
t.test(
  "a user agent named after an operator's crawler claims that operator, however it is spelt",
  async (t) => {
    const require = createRequire(import.meta.url)
    const corpus = JSON.parse(readFileSync(require.resolve('crawler-user-agents'), 'utf8')) as {
      instances: string[]
    }[]
    const spellings = (ua: string) => [
      ua,
      ua.replace(/(?<=[A-Za-z])\/v?\d[\w.]*/g, ''),
      ua.replace(/(?<=[A-Za-z])\/(?=v?\d)/g, ' '),
      ua.replace(/(?<=[A-Za-z])\/(?=v?\d)/g, '_/'),
    ]
    const operators = ['Google', 'Bing', 'OpenAI', 'Apple', 'Perplexity']
    const unclaimed: string[] = []
    let named = 0
    for (const ua of new Set(corpus.flatMap((e) => e.instances).flatMap(spellings))) {
      const ev = classifyUserAgent(ua)
      for (const operator of operators) {
        if (!operatorVouchesFor(operator, ev)) continue
        named++
        if (!claimedOperators(ev).includes(operator)) unclaimed.push(`${operator}: ${ua}`)
      }
    }
    t.ok(named > 50, `${named} user agents named after a checkable crawler`)
    t.same(unclaimed, [], 'each of them claims its operator')
  },
)
