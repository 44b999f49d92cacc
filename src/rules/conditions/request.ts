// Conditions on the request itself rather than its credentials (header, remoteAddr, path, method): any of
// them makes a rule set per-request, which turns the classification cache off.
import { isCredentialHeader, REDACTED } from '../../config/redact.ts'
import type { ConnectionInfo, EvidenceSet, RequestInfo } from '../../types.ts'
import { CidrSet } from '../../util/cidr.ts'
import { headerText } from '../../util/header-text.ts'
import { type CompiledPattern, compilePattern, pathWithoutTrailingSlash } from '../pattern.ts'
import { addCaptures, type Condition, matchInto, type Scratch, show } from './condition.ts'

export class HeaderCondition implements Condition {
  readonly label = 'header'
  readonly perRequest = true
  readonly captures: readonly string[]
  private readonly headers: { name: string; p: CompiledPattern; credential: boolean }[]
  /** `apiKeyHeader`: the config's apiKeys.header, a credential header too */
  constructor(cfg: Record<string, string>, apiKeyHeader?: string) {
    this.headers = Object.entries(cfg).map(([name, p]) => ({
      name: name.toLowerCase(),
      p: compilePattern(p),
      // the value is a credential, and a pattern without a wildcard is the credential itself: explain's
      // trace shows neither
      credential: isCredentialHeader(name, apiKeyHeader),
    }))
    this.captures = this.headers.flatMap((h) => h.p.captures)
  }
  test(_e: EvidenceSet, req: RequestInfo, _c: ConnectionInfo, s: Scratch): boolean {
    for (const h of this.headers) {
      // HTTP/2 carries the host in :authority, and the upstream gets it as its Host (proxy/headers.ts)
      const raw = req.headers[h.name] ?? (h.name === 'host' ? req.headers[':authority'] : undefined)
      const line = Array.isArray(raw) ? raw[0] : raw
      if (line === undefined) {
        s.reason = `header.${h.name}: not present`
        return false
      }
      const value = headerText(line)
      if (h.credential) {
        const m = h.p.match(value)
        if (!m) {
          s.reason = `header.${h.name}: ${REDACTED} does not match ${REDACTED}`
          return false
        }
        if (h.p.captures.length) addCaptures(s, m)
      } else if (!matchInto(h.p, value, `header.${h.name}`, s)) return false
    }
    return true
  }
}

export class RemoteAddrCondition implements Condition {
  readonly label = 'remoteAddr'
  readonly perRequest = true
  readonly captures: readonly string[] = []
  private readonly set: CidrSet
  constructor(private readonly cidrs: string[]) {
    this.set = new CidrSet(cidrs)
  }
  test(_e: EvidenceSet, _r: RequestInfo, conn: ConnectionInfo, s: Scratch): boolean {
    if (this.set.has(conn.remoteAddress)) return true
    s.reason = `remoteAddr: ${show(conn.remoteAddress)} is not in ${this.cidrs.join(', ')}`
    return false
  }
}

export class PathCondition implements Condition {
  readonly label = 'path'
  readonly perRequest = true
  constructor(private readonly p: CompiledPattern) {}
  get captures(): readonly string[] {
    return this.p.captures
  }
  test(_e: EvidenceSet, req: RequestInfo, _c: ConnectionInfo, s: Scratch): boolean {
    // a trailing slash is optional, as for policy routes: the request is named by the path it is decided by
    return matchInto(this.p, pathWithoutTrailingSlash(req.path), 'path', s)
  }
}

export class MethodCondition implements Condition {
  readonly label = 'method'
  readonly perRequest = true
  readonly captures: readonly string[] = []
  private readonly methods: ReadonlySet<string>
  constructor(m: string | string[]) {
    this.methods = new Set((Array.isArray(m) ? m : [m]).map((x) => x.toUpperCase()))
  }
  test(_e: EvidenceSet, req: RequestInfo, _c: ConnectionInfo, s: Scratch): boolean {
    if (this.methods.has(req.method.toUpperCase())) return true
    s.reason = `method: ${show(req.method)} is not ${[...this.methods].join('|')}`
    return false
  }
}
