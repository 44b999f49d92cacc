// match.userAgent: a pattern over the User-Agent, or builtin:bots | builtin:agents | builtin:browsers.
import { evidenceOf } from '../../identity/sources/source.ts'
import type { ConnectionInfo, EvidenceSet, RequestInfo, UserAgentEvidence } from '../../types.ts'
import { type CompiledPattern, compilePattern } from '../pattern.ts'
import { type Condition, matchInto, type Scratch, show } from './condition.ts'

const UA_BUILTIN: Record<string, string> = {
  'builtin:bots': 'bot',
  'builtin:agents': 'agent',
  'builtin:browsers': 'browser',
}

export class UserAgentCondition implements Condition {
  readonly label = 'userAgent'
  readonly perRequest = false
  private readonly category: string | undefined
  private readonly p: CompiledPattern | undefined
  constructor(private readonly source: string) {
    this.category = UA_BUILTIN[source]
    this.p = this.category === undefined ? compilePattern(source, { ignoreCase: true }) : undefined
  }
  get captures(): readonly string[] {
    return this.p?.captures ?? []
  }
  test(ev: EvidenceSet, _r: RequestInfo, _c: ConnectionInfo, s: Scratch): boolean {
    const ua = evidenceOf<UserAgentEvidence>(ev, 'useragent')
    if (!ua || ua.ua === '') {
      s.reason = 'userAgent: no user agent'
      return false
    }
    if (this.category !== undefined) {
      if (ua.category === this.category) return true
      s.reason = `userAgent: ${show(ua.product)} is a ${ua.category}, not ${this.source}`
      return false
    }
    return matchInto(this.p!, ua.ua, 'userAgent', s)
  }
}
