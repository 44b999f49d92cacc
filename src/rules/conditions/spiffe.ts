// match.spiffe: the SPIFFE ID of the strongest client certificate that carries one.
import type { ConnectionInfo, EvidenceSet, RequestInfo } from '../../types.ts'
import type { CompiledPattern } from '../pattern.ts'
import { type Condition, matchInto, type Scratch } from './condition.ts'

export class SpiffeCondition implements Condition {
  readonly label = 'spiffe'
  readonly perRequest = false
  constructor(private readonly p: CompiledPattern) {}
  get captures(): readonly string[] {
    return this.p.captures
  }
  test(ev: EvidenceSet, _r: RequestInfo, _c: ConnectionInfo, s: Scratch): boolean {
    // the strongest certificate carrying a SPIFFE ID decides
    let sawCert = false
    for (const c of ev.credentials) {
      const cert = c.source.certificate?.(c.evidence)
      if (cert === undefined) continue
      if (cert.spiffeId !== undefined) return matchInto(this.p, cert.spiffeId, 'spiffe', s)
      sawCert = true
    }
    s.reason = sawCert ? 'spiffe: certificate has no SPIFFE ID' : 'spiffe: no client certificate'
    return false
  }
}
