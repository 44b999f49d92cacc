// User agent → category (browser | bot | agent | unknown) and a short product name. The local overlay of
// AI agents (agents.ts, with operator and purpose) wins; then the maintained crawler corpus (crawlers.ts:
// entries tagged ai-crawler are agents, the rest bots); then the isbot library for bots, HTTP libraries and
// probes the corpus does not list. Results are cached per user agent string, from its second request on
// (util/second-sight.ts): user agents that are never sent again do not push the common ones out.
import { isbot, isbotMatch } from 'isbot'
import { LRUCache } from 'lru-cache'
import type { UserAgentCategory, UserAgentEvidence } from '../types.ts'
import { headerText } from '../util/header-text.ts'
import { cutWhole } from '../util/lone-surrogate.ts'
import { SecondSight } from '../util/second-sight.ts'
import { type AgentPurpose, findAgent } from './agents.ts'
import { findCrawler } from './crawlers.ts'

/** Longer user agents are classified by their first 512 characters. */
export const MAX_UA_LENGTH = 512
const CACHE_SIZE = 5000
const MAX_PRODUCT_LENGTH = 40

const cache = new LRUCache<string, UserAgentEvidence>({ max: CACHE_SIZE })
const admission = new SecondSight(CACHE_SIZE)

const BROWSERS: readonly (readonly [RegExp, string])[] = [
  [/\bEdg(?:e|A|iOS)?\//, 'edge'],
  [/\bOPR\/|\bOpera\b/, 'opera'],
  [/\bSamsungBrowser\//, 'samsung'],
  [/\bFirefox\/|\bFxiOS\//, 'firefox'],
  [/\bChrome\/|\bCriOS\/|\bChromium\//, 'chrome'],
  [/\bVersion\/[\d.]+.*\bSafari\/|\bMobile\/\w+ Safari\//, 'safari'],
]
const ENGINE_RE = /\bAppleWebKit\/|\bGecko\/|\bTrident\/|\bPresto\//
const TOKEN_CHAR_RE = /[A-Za-z0-9-]/
/** "name/version …" or "name …" at the start of a UA that does not pretend to be a browser */
const LEADING_PRODUCT_RE = /^([A-Za-z][A-Za-z0-9-]*)/
/** a program announcing itself as "name/version", which isbot leaves alone when comments follow */
const PROGRAM_RE = /^[A-Za-z][A-Za-z0-9._-]*\/v?\d/

/** Words in a crawler's user agent that never name it. */
const NOT_A_NAME = new Set([
  'mozilla',
  'compatible',
  'http',
  'https',
  'www',
  'windows',
  'linux',
  'macintosh',
  'applewebkit',
  'khtml',
  'like',
  'gecko',
  'chrome',
  'safari',
  'mobile',
  'version',
])
const WORD_RE = /[A-Za-z][A-Za-z0-9-]*/g

function evidence(
  ua: string,
  category: UserAgentCategory,
  product: string,
  operator?: string,
  purpose?: AgentPurpose,
): UserAgentEvidence {
  const ev: UserAgentEvidence = { source: 'useragent', verified: false, ua, category, product }
  if (operator) ev.operator = operator
  if (purpose) ev.purpose = purpose
  // cached and shared between requests, so nobody may change it
  return Object.freeze(ev)
}

/** The word around isbot's match, e.g. "Google" in "Googlebot/2.1" → "googlebot". */
function productAround(ua: string, fragment: string | null, from = 0): string {
  let at = fragment ? ua.indexOf(fragment, from) : -1
  if (at < 0) at = 0
  let start = at
  while (start > 0 && TOKEN_CHAR_RE.test(ua[start - 1]!)) start--
  let end = at
  while (end < ua.length && TOKEN_CHAR_RE.test(ua[end]!)) end++
  const product = ua
    .slice(start, end)
    .replace(/^-+|-+$/g, '')
    .toLowerCase()
  return product.slice(0, MAX_PRODUCT_LENGTH) || 'bot'
}

/** Programs name themselves first ("curl/8.4.0"); crawlers posing as Mozilla are named where isbot matched. */
function botProduct(ua: string): string {
  const lead = ua.startsWith('Mozilla/') ? undefined : LEADING_PRODUCT_RE.exec(ua)?.[1]
  if (lead) return lead.toLowerCase().slice(0, MAX_PRODUCT_LENGTH)
  const around = productAround(ua, isbotMatch(ua))
  if (!NOT_A_NAME.has(around)) return around
  // isbot matched the whole "Mozilla/5.0 (compatible; AcmeBot/1.0)": the first word that can name a product
  for (const w of ua.matchAll(WORD_RE)) {
    if (NOT_A_NAME.has(w[0].toLowerCase())) continue
    const name = productAround(ua, w[0], w.index)
    if (!NOT_A_NAME.has(name)) return name
  }
  return around
}

/**
 * The product token inside a corpus match, widened to the whole word of the user agent: "bingbot" in
 * "Mozilla/5.0 (compatible; bingbot/2.0)", never "mozilla" or "compatible".
 */
function crawlerProduct(ua: string, index: number, text: string): string | undefined {
  // a pattern that matched the crawler's info URL ("yandex.com/bots") names it poorly: the bot word wins
  if (/\.[A-Za-z]{2}/.test(text) || /:\/\/\S*$/.test(ua.slice(0, index))) {
    const named = botProduct(ua)
    if (named !== 'bot' && !NOT_A_NAME.has(named)) return named
  }
  for (const w of text.matchAll(WORD_RE)) {
    if (NOT_A_NAME.has(w[0].toLowerCase())) continue
    const name = productAround(ua, ua.slice(index + w.index, index + w.index + w[0].length), index + w.index)
    if (!NOT_A_NAME.has(name)) return name
  }
  return undefined
}

function classify(ua: string): UserAgentEvidence {
  const agent = findAgent(ua)
  if (agent) return evidence(ua, 'agent', agent.product, agent.operator, agent.purpose)
  const crawler = findCrawler(ua)
  if (crawler) {
    const product = crawlerProduct(ua, crawler.index, crawler.text) ?? botProduct(ua)
    return evidence(ua, crawler.ai ? 'agent' : 'bot', product)
  }
  if (isbot(ua) || (!ua.startsWith('Mozilla/') && PROGRAM_RE.test(ua)))
    return evidence(ua, 'bot', botProduct(ua))
  if (ua.startsWith('Mozilla/') && ENGINE_RE.test(ua)) {
    for (const [re, product] of BROWSERS) {
      if (re.test(ua)) return evidence(ua, 'browser', product)
    }
    return evidence(ua, 'browser', 'browser')
  }
  return evidence(ua, 'unknown', 'unknown')
}

export function classifyUserAgent(ua: string | undefined): UserAgentEvidence {
  const trimmed = (ua ?? '').trim()
  // explain's and test's user agents are text, which can hold characters outside the BMP: the cut keeps each whole
  const text = cutWhole(trimmed, MAX_UA_LENGTH)
  if (text === '') return evidence('', 'unknown', 'unknown')
  const hit = cache.get(text)
  if (hit) return hit
  // the header's bytes as the text the client wrote, once per user agent rather than per request
  const ev = classify(headerText(text, text.length < trimmed.length))
  if (admission.seen(text)) cache.set(text, ev)
  return ev
}

/** Entries in the classification cache (bounded by its LRU). */
export function userAgentCacheSize(): number {
  return cache.size
}
