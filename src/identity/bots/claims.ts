// Which operator a user agent claims to be, for the crawlers whose operators publish how to check the claim
// (IP range files or reverse DNS). Only the products an operator's range files cover are listed: a product
// crawling from other addresses (Google's AdsBot, its user-triggered fetchers) would otherwise be counted
// as a spoof whenever it is the real thing.
import type { UserAgentEvidence } from '../../types.ts'

/**
 * A product token as the classifier reads one, in any letter case (`GoogleBot/2.1` is named googlebot, so it
 * claims Google), with or without a version after it (`GPTBot;`, `Googlebot 2.1`, `Googlebot_/2.1` are named
 * after the crawler as well), but not a word of a URL (`+http://www.bing.com/bingbot.htm` is no claim).
 */
const product = (...names: string[]): RegExp =>
  new RegExp(`(?<![\\w/.])(?:${names.join('|')})(?![A-Za-z0-9.-])`, 'i')

const CLAIMS: readonly (readonly [RegExp, string])[] = [
  [
    product(
      'Googlebot(?:-Image|-News|-Video)?',
      'Google-InspectionTool',
      'GoogleOther(?:-Image|-Video)?',
      'Storebot-Google',
      'Google-CloudVertexBot',
    ),
    'Google',
  ],
  [product('bingbot', 'BingPreview', 'adidxbot', 'msnbot'), 'Bing'],
  [product('GPTBot', 'OAI-SearchBot', 'ChatGPT-User'), 'OpenAI'],
  [product('Applebot'), 'Apple'],
  [product('PerplexityBot', 'Perplexity-User'), 'Perplexity'],
]

// Evidence objects are shared per user agent string by the classifier's bounded cache, so this map is as
// bounded as that cache and needs no limit of its own.
const seen = new WeakMap<UserAgentEvidence, readonly string[]>()
const NO_CLAIMS: readonly string[] = Object.freeze([])

/** The products (as the classifier names them) an operator's ranges and DNS names vouch for. */
const PRODUCTS: ReadonlyMap<string, ReadonlySet<string>> = new Map([
  [
    'Google',
    new Set([
      'googlebot',
      'googlebot-image',
      'googlebot-news',
      'googlebot-video',
      'google-inspectiontool',
      'googleother',
      // claimed by the pattern above, so they must be vouched for too or the real crawlers count as spoofs
      'googleother-image',
      'googleother-video',
      'storebot-google',
      // a common crawler (googlebot.json's ranges, googlebot.com's names): left out, the real one was never
      // verified and a false claim of it never counted
      'google-cloudvertexbot',
    ]),
  ],
  ['Bing', new Set(['bingbot', 'bingpreview', 'adidxbot', 'msnbot'])],
  ['OpenAI', new Set(['gptbot', 'oai-searchbot', 'chatgpt-user'])],
  ['Apple', new Set(['applebot'])],
  ['Perplexity', new Set(['perplexitybot', 'perplexity-user'])],
])

/**
 * Whether a checked claim of `operator` may verify this user agent: its name is one of that operator's
 * products. The claim is found anywhere in the user agent, the name is the classifier's first match: a
 * user agent carrying two products ("Googlebot/2.1 … ClaudeBot/1.0") must not make `claudebot` verified by
 * Google's ranges.
 */
export function operatorVouchesFor(operator: string, ua: UserAgentEvidence): boolean {
  return PRODUCTS.get(operator)?.has(ua.product) === true
}

/**
 * Whether a user agent named `product` (as the classifier names it) has its claim to crawl for `operator`
 * (any case) checked: what a domain or range file vouching for nothing else can ever verify.
 */
export function isCheckedProduct(operator: string, product: string): boolean {
  const op = operator.toLowerCase()
  for (const [name, products] of PRODUCTS) {
    if (name.toLowerCase() === op && products.has(product.toLowerCase())) return true
  }
  return false
}

/**
 * Every operator `ua` claims to crawl for (empty when it claims none this proxy can check). A user agent is
 * one string the client writes: it may carry several claims ("GPTBot/1.2 … bingbot/2.0"), and each is
 * checked, so that adding a claim nothing can check cannot hide a false one. The product the classifier
 * named it after is always one of them: a user agent named after an operator's crawler however it spells
 * the crawler (the classifier's patterns and these need not agree) has that claim checked.
 */
export function claimedOperators(ua: UserAgentEvidence): readonly string[] {
  if (ua.category !== 'bot' && ua.category !== 'agent') return NO_CLAIMS
  let ops = seen.get(ua)
  if (ops === undefined) {
    const found: string[] = []
    for (const [re, operator] of CLAIMS) {
      if (operatorVouchesFor(operator, ua) || re.test(ua.ua)) found.push(operator)
    }
    ops = found.length === 0 ? NO_CLAIMS : Object.freeze(found)
    seen.set(ua, ops)
  }
  return ops
}
