// nginx-style forwarded certificates: $ssl_client_escaped_cert (URL-encoded PEM) or the legacy
// $ssl_client_cert (PEM whose line breaks became tabs or spaces).
import type { CertEvidence, Failure } from '../../types.ts'
import { certEvidenceFromPem } from '../certificate.ts'
import { urlDecode } from './decode.ts'
import { malformed } from './headers.ts'

export function nginxCertEvidence(value: string): CertEvidence | Failure {
  const pem = urlDecode(value)
  if (pem === undefined) return malformed('ssl-client-cert is not URL-encoded PEM')
  return certEvidenceFromPem(pem, 'xfcc', true, 'nginx')
}
