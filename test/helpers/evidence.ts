// Evidence for tests that drive classification and anomaly detection without sockets: credentials given by
// source name, added the way the pipeline adds them (strongest first).
import type { ApiKeyEvidence } from '../../src/identity/sources/apikey.ts'
import { sourceNamed } from '../../src/identity/sources/index.ts'
import { addCredential } from '../../src/identity/sources/source.ts'
import type {
  AnomalyType,
  CertEvidence,
  EvidenceSet,
  Failure,
  JwtEvidence,
  SignatureEvidence,
  UserAgentEvidence,
} from '../../src/types.ts'

export interface EvidenceParts {
  jwt?: JwtEvidence
  mtls?: CertEvidence
  xfcc?: CertEvidence
  apikey?: ApiKeyEvidence
  signature?: SignatureEvidence
  useragent?: UserAgentEvidence
  failures?: Failure[]
  anomalies?: AnomalyType[]
}

export function evidenceSet(parts: EvidenceParts = {}): EvidenceSet {
  const set: EvidenceSet = {
    credentials: [],
    failures: parts.failures ?? [],
    anomalies: parts.anomalies ?? [],
  }
  for (const name of ['jwt', 'mtls', 'xfcc', 'apikey', 'signature', 'useragent'] as const) {
    const ev = parts[name]
    // a blank User-Agent is no credential, as on the live proxy
    if (ev !== undefined && !(name === 'useragent' && (ev as UserAgentEvidence).ua === ''))
      addCredential(set, sourceNamed(name), ev)
  }
  return set
}
