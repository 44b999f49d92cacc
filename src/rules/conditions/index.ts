// A rule's match block → its conditions, in the order they are checked (and explained).
import type { MatchConfig } from '../../config/schema.ts'
import { compilePattern, pathPatternWithoutTrailingSlash } from '../pattern.ts'
import { ApiKeyCondition } from './apikey.ts'
import { CertCondition } from './cert.ts'
import type { Condition } from './condition.ts'
import { SourceCondition, VerifiedCondition } from './credential.ts'
import { JwtCondition } from './jwt.ts'
import { HeaderCondition, MethodCondition, PathCondition, RemoteAddrCondition } from './request.ts'
import { SpiffeCondition } from './spiffe.ts'
import { UserAgentCondition } from './useragent.ts'

export type { Captures, Condition, Scratch } from './condition.ts'

/** `apiKeyHeader`: the config's apiKeys.header, whose values are credentials wherever a rule names it */
export function compileConditions(m: MatchConfig, apiKeyHeader?: string): Condition[] {
  const out: Condition[] = []
  if (m.spiffe !== undefined) out.push(new SpiffeCondition(compilePattern(m.spiffe, { separator: '/' })))
  if (m.jwt) out.push(new JwtCondition(m.jwt))
  if (m.cert) out.push(new CertCondition(m.cert))
  if (m.apiKey !== undefined) out.push(new ApiKeyCondition(compilePattern(m.apiKey)))
  if (m.header) out.push(new HeaderCondition(m.header, apiKeyHeader))
  if (m.userAgent !== undefined) out.push(new UserAgentCondition(m.userAgent))
  if (m.remoteAddr) out.push(new RemoteAddrCondition(m.remoteAddr))
  if (m.path !== undefined)
    out.push(new PathCondition(compilePattern(pathPatternWithoutTrailingSlash(m.path), { separator: '/' })))
  if (m.method !== undefined) out.push(new MethodCondition(m.method))
  if (m.verified !== undefined) out.push(new VerifiedCondition(m.verified))
  if (m.source !== undefined) out.push(new SourceCondition(m.source))
  return out
}
