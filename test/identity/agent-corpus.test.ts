// Recognition measured against data nobody here wrote: the crawler-user-agents corpus's own examples
// (crawlers, and those it tags ai-crawler) and the user-agents package's real-browser user agents.
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import t from 'tap'
import snapshot from '../../src/identity/agent-data.generated.json' with { type: 'json' }
import { CRAWLER_DATA_VERSION, findCrawler, requiredLiteral } from '../../src/identity/crawlers.ts'
import { classifyUserAgent } from '../../src/identity/useragent.ts'

const require = createRequire(import.meta.url)

interface CorpusEntry {
  pattern: string
  instances: string[]
  tags?: string[]
}

const corpusPath = require.resolve('crawler-user-agents')
const corpus = JSON.parse(readFileSync(corpusPath, 'utf8')) as CorpusEntry[]
const corpusVersion = (
  JSON.parse(readFileSync(join(dirname(corpusPath), 'package.json'), 'utf8')) as { version: string }
).version
const browserList = JSON.parse(
  readFileSync(join(dirname(require.resolve('user-agents')), 'user-agents.json'), 'utf8'),
) as { userAgent: string }[]
const browsers = [...new Set(browserList.map((b) => b.userAgent))]

const pct = (n: number, of: number) => `${n}/${of} = ${((100 * n) / of).toFixed(1)} %`

t.test('the shipped snapshot is the installed crawler-user-agents', async (t) => {
  const hint = 'run `node scripts/refresh-agents.mjs` and commit src/identity/agent-data.generated.json'
  t.equal(snapshot.version, corpusVersion, `snapshot version (${hint})`)
  t.equal(CRAWLER_DATA_VERSION, corpusVersion)
  t.same(
    snapshot.patterns,
    corpus.map((e) => [e.pattern, (e.tags ?? []).includes('ai-crawler') ? 1 : 0]),
    `snapshot patterns and ai-crawler tags (${hint})`,
  )
})

t.test('the literal index finds what trying every pattern in turn finds', async (t) => {
  const ordered = corpus
    .map((e) => ({ re: new RegExp(e.pattern), ai: (e.tags ?? []).includes('ai-crawler') }))
    .sort((a, b) => Number(b.ai) - Number(a.ai))
  const naive = (ua: string) => {
    for (const c of ordered) {
      const m = c.re.exec(ua)
      if (m) return { ai: c.ai, index: m.index, text: m[0] }
    }
    return undefined
  }
  let checked = 0
  let differ = 0
  for (const ua of [...corpus.flatMap((e) => e.instances), ...browsers]) {
    checked++
    const a = findCrawler(ua)
    const b = naive(ua)
    if (JSON.stringify(a) !== JSON.stringify(b)) {
      differ++
      t.same(a, b, ua)
    }
  }
  t.equal(differ, 0, `${checked} user agents, index and full scan agree`)
  t.equal(requiredLiteral('Googlebot\\/'), 'Googlebot/')
  t.equal(requiredLiteral('[cC]laude[bB]ot'), 'laude')
  t.equal(requiredLiteral('ab?cdef'), 'cdef')
  t.equal(requiredLiteral('foo|barbaz'), '')
  t.equal(requiredLiteral('(?:x|y)longer\\dz'), 'longer')
})

t.test('crawlers, AI agents and real browsers from public lists', async (t) => {
  let crawlers = 0
  let crawlersOk = 0
  let ai = 0
  let aiOk = 0
  const missed: string[] = []
  for (const e of corpus) {
    const isAi = (e.tags ?? []).includes('ai-crawler')
    for (const ua of e.instances) {
      const ev = classifyUserAgent(ua)
      crawlers++
      if (ev.category === 'bot' || ev.category === 'agent') crawlersOk++
      else missed.push(`crawler as ${ev.category}: ${ua}`)
      if (isAi) {
        ai++
        if (ev.category === 'agent') aiOk++
        else missed.push(`ai-crawler as ${ev.category}: ${ua}`)
      }
      t.notMatch(ev.product, /^(?:mozilla|compatible)$/, `named after its product token: ${ua}`)
    }
  }
  let humans = 0
  for (const ua of browsers) {
    const ev = classifyUserAgent(ua)
    if (ev.category === 'browser') humans++
    else missed.push(`browser as ${ev.category} ${ev.product}: ${ua}`)
  }
  t.comment(`crawler-user-agents ${corpusVersion}: crawlers → bot/agent ${pct(crawlersOk, crawlers)}`)
  t.comment(`crawler-user-agents ${corpusVersion}: ai-crawler → agent ${pct(aiOk, ai)}`)
  t.comment(`user-agents real browsers → browser (human) ${pct(humans, browsers.length)}`)
  for (const m of missed.slice(0, 20)) t.comment(`missed: ${m}`)
  t.ok(crawlers > 1000 && ai > 50 && browsers.length > 500, 'the lists are not trivially small')
  t.ok(crawlersOk / crawlers >= 0.95, `crawlers → bot/agent ≥ 95 %: ${pct(crawlersOk, crawlers)}`)
  t.ok(aiOk / ai >= 0.9, `AI-tagged → agent ≥ 90 %: ${pct(aiOk, ai)}`)
  t.ok(humans / browsers.length >= 0.95, `real browsers → human ≥ 95 %: ${pct(humans, browsers.length)}`)
})

t.test('agents carry operator and purpose; names are product tokens', async (t) => {
  const gpt = classifyUserAgent(
    'Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)',
  )
  t.same([gpt.category, gpt.product, gpt.operator, gpt.purpose], ['agent', 'gptbot', 'OpenAI', 'training'])
  const user = classifyUserAgent(
    'Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko); compatible; ChatGPT-User/1.0; +https://openai.com/bot',
  )
  t.same([user.product, user.operator, user.purpose], ['chatgpt-user', 'OpenAI', 'assistant'])
  const claude = classifyUserAgent('claude-cli/2.0.14 (external, cli)')
  t.same([claude.product, claude.operator, claude.purpose], ['claude-code', 'Anthropic', 'coding'])
  const bing = classifyUserAgent('Mozilla/5.0 (compatible; bingbot/2.0)')
  t.same([bing.category, bing.product, bing.operator, bing.purpose], ['bot', 'bingbot', undefined, undefined])
  const unknownAi = classifyUserAgent('Mozilla/5.0 (compatible; TavilyBot/1.0; +https://tavily.com/bot)')
  t.same([unknownAi.category, unknownAi.product, unknownAi.operator], ['agent', 'tavilybot', undefined])
  const chrome = classifyUserAgent(
    'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36',
  )
  t.same([chrome.category, chrome.operator, chrome.purpose], ['browser', undefined, undefined])
})
