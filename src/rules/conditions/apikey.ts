// match.apiKey: the name of the configured api key presented.
import type { ApiKeyEvidence } from '../../identity/sources/apikey.ts'
import { evidenceOf } from '../../identity/sources/source.ts'
import type { ConnectionInfo, EvidenceSet, RequestInfo } from '../../types.ts'
import type { CompiledPattern } from '../pattern.ts'
import { type Condition, matchInto, type Scratch } from './condition.ts'

export class ApiKeyCondition implements Condition {
  readonly label = 'apiKey'
  readonly perRequest = false
  constructor(private readonly p: CompiledPattern) {}
  get captures(): readonly string[] {
    return this.p.captures
  }
  test(ev: EvidenceSet, _r: RequestInfo, _c: ConnectionInfo, s: Scratch): boolean {
    const key = evidenceOf<ApiKeyEvidence>(ev, 'apikey')
    if (!key) {
      s.reason = 'apiKey: no valid api key'
      return false
    }
    return matchInto(this.p, key.name, 'apiKey', s)
  }
}
