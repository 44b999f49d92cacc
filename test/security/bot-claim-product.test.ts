// A verified bot is verified as the product its user agent is named after. The operator claim is read from
// anywhere in the user agent while the name comes from the classifier, whose first match may be another
// product: "… Googlebot/2.1 … ClaudeBot/1.0" from Google's crawler ranges was the verified identity
// `claudebot` (agent_operator Anthropic, bot_verified_by=ranges), though Anthropic publishes no ranges and
// nothing about ClaudeBot was checked. Together with any address that passes one operator's check (ranges or
// DNS), every product name could be had verified.
import t from 'tap'
import { configSchema } from '../../src/config/schema.ts'
import { claimedOperator, operatorVouchesFor } from '../../src/identity/bots/claims.ts'
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
    ['Mozilla/5.0 (compatible; Storebot-Google/1.0)', 'Google'],
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
    t.equal(claimedOperator(ev), operator, `${ev.product}: claims ${operator}`)
    t.ok(operatorVouchesFor(operator, ev), `${ev.product}: one of ${operator}'s products`)
  }
})
