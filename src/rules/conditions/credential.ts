// match.verified and match.source: what the strongest credential present is, whichever one a rule matched on.
import { strongest } from '../../identity/builtin.ts'
import type { ConnectionInfo, EvidenceSet, RequestInfo, Source } from '../../types.ts'
import type { Condition, Scratch } from './condition.ts'

export class VerifiedCondition implements Condition {
  readonly label = 'verified'
  readonly perRequest = false
  readonly captures: readonly string[] = []
  constructor(private readonly want: boolean) {}
  test(ev: EvidenceSet, _r: RequestInfo, _c: ConnectionInfo, s: Scratch): boolean {
    if (strongest(ev).verified === this.want) return true
    s.reason = `verified: request is ${this.want ? 'not verified' : 'verified'}`
    return false
  }
}

export class SourceCondition implements Condition {
  readonly label = 'source'
  readonly perRequest = false
  readonly captures: readonly string[] = []
  constructor(private readonly want: Source) {}
  test(ev: EvidenceSet, _r: RequestInfo, _c: ConnectionInfo, s: Scratch): boolean {
    const got = strongest(ev).source
    if (got === this.want) return true
    s.reason = `source: strongest credential is ${got}, not ${this.want}`
    return false
  }
}
