// What the client says it is (User-Agent): never verified, but names bots, AI agents and browsers. The
// classifier and its knowledge live in identity/useragent.ts, agents.ts and crawlers.ts.
import type { UserAgentEvidence } from '../../types.ts'
import { BotVerifier } from '../bots/verify.ts'
import { classifyUserAgent } from '../useragent.ts'
import type { CredentialSource } from './source.ts'

/** read on every request: its other spellings (User_Agent) are stripped and counted (pipeline/read-headers.ts) */
const READ_HEADERS = ['user-agent'] as const

export const userAgentSource: CredentialSource<UserAgentEvidence> = {
  name: 'useragent',
  precedence: 50,
  create(config, ctx) {
    // a crawler's claimed operator is checked against its published ranges (or DNS) by the client address
    const bots = new BotVerifier(config.bots.verify, config.forwardedClientCert, {
      observer: ctx.botRangesObserver,
      anomalies: ctx.anomalyObserver,
    })
    return {
      readHeaders: READ_HEADERS,
      extract(req) {
        const ua = req.headers['user-agent']
        if (!ua) return undefined
        const ev = classifyUserAgent(ua)
        // a blank User-Agent says nothing: the request is anonymous
        return ev.ua === '' ? undefined : ev
      },
      attest: (evidence, req, conn) => bots.attest(evidence, req, conn),
      start: () => bots.start(),
      settled: () => bots.dnsSettled(),
      close: () => bots.close(),
    }
  },
  attributes(ua, a, verifiedIdentity) {
    a['ua_product'] ??= ua.product
    a['ua_category'] ??= ua.category
    // who runs the caller and why, as a user agent tells it, is the client's word: a verified identity (a
    // signed agent whose directory entry names no operator, an api key) is not described by it
    if (ua.verified || !verifiedIdentity) {
      if (ua.operator) a['agent_operator'] ??= ua.operator
      if (ua.purpose) a['agent_purpose'] ??= ua.purpose
    }
    if (ua.verifiedBy) a['bot_verified_by'] ??= ua.verifiedBy
  },
  defaultKind(ua) {
    if (ua.category === 'bot' || ua.category === 'agent') return ua.category
    if (ua.category === 'browser') return 'human'
    return 'unknown'
  },
  builtinIdentity(ua) {
    if (ua.category === 'bot' || ua.category === 'agent')
      return { name: ua.product, kind: ua.category, rule: 'builtin:useragent' }
    if (ua.category === 'browser') return { name: 'anonymous', kind: 'human', rule: 'builtin:anonymous' }
    return undefined
  },
  captures(ua, c) {
    c['product'] ??= ua.product
    if (ua.category === 'bot') c['bot'] ??= ua.product
    if (ua.category === 'agent') c['agent'] ??= ua.product
  },
  // a crawler verified by its address is another identity than the same user agent from elsewhere
  cacheKey: (ua) => `${ua.verifiedBy ?? ''}|${ua.ua}`,
  describe(ua) {
    const agent = `${ua.operator ? ` operator=${ua.operator}` : ''}${ua.purpose ? ` purpose=${ua.purpose}` : ''}`
    return `${ua.category} product=${ua.product}${agent}`
  },
}
