// match.cert: subject, SAN and hash of the strongest client certificate.
import type { MatchConfig } from '../../config/schema.ts'
import { certificateOf } from '../../identity/sources/certificate.ts'
import type { ConnectionInfo, EvidenceSet, RequestInfo } from '../../types.ts'
import { type CompiledPattern, compilePattern } from '../pattern.ts'
import { addCaptures, type Condition, type Scratch, show } from './condition.ts'

export class CertCondition implements Condition {
  readonly label = 'cert'
  readonly perRequest = false
  private readonly subject: CompiledPattern | undefined
  private readonly san: CompiledPattern | undefined
  private readonly sha256: string | undefined
  constructor(cfg: NonNullable<MatchConfig['cert']>) {
    this.subject = cfg.subject !== undefined ? compilePattern(cfg.subject) : undefined
    this.san = cfg.san !== undefined ? compilePattern(cfg.san) : undefined
    this.sha256 = cfg.sha256?.toLowerCase().replaceAll(':', '')
  }
  get captures(): readonly string[] {
    return [...(this.subject?.captures ?? []), ...(this.san?.captures ?? [])]
  }
  private matchSan(sans: readonly string[], s: Scratch): boolean {
    for (const san of sans) {
      const m = this.san!.match(san)
      if (m) {
        if (this.san!.captures.length) addCaptures(s, m)
        return true
      }
    }
    return false
  }
  test(ev: EvidenceSet, _r: RequestInfo, _c: ConnectionInfo, s: Scratch): boolean {
    const cert = certificateOf(ev)
    if (!cert) {
      s.reason = 'cert: no client certificate'
      return false
    }
    if (this.subject) {
      const subject = cert.subject ?? (cert.cn !== undefined ? `CN=${cert.cn}` : undefined)
      if (subject === undefined) {
        s.reason = 'cert.subject: certificate has no subject'
        return false
      }
      // A subject pattern may name the full subject, in DER order (as Node and the audit trail print it) or in
      // RFC 4514 order (as Envoy prints it), or just the common name: each names the certificate on every path.
      const rfc4514 = cert.subjectRfc4514
      const m =
        this.subject.match(subject) ??
        (rfc4514 !== undefined && rfc4514 !== subject ? this.subject.match(rfc4514) : null) ??
        (cert.cn !== undefined ? this.subject.match(cert.cn) : null)
      if (!m) {
        s.reason = `cert.subject: ${show(subject)} does not match ${show(this.subject.source)}`
        return false
      }
      if (this.subject.captures.length) addCaptures(s, m)
    }
    if (this.san) {
      if (!this.matchSan(cert.dnsSans, s) && !this.matchSan(cert.uriSans, s)) {
        s.reason = `cert.san: no SAN matches ${show(this.san.source)}`
        return false
      }
    }
    if (this.sha256 !== undefined && cert.sha256?.toLowerCase() !== this.sha256) {
      s.reason = `cert.sha256: certificate fingerprint ${cert.sha256 ? show(cert.sha256.slice(0, 16)) : 'unknown'}… differs`
      return false
    }
    return true
  }
}
