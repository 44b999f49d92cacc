// AWS ALB mutual TLS headers. Verify mode sends the leaf the load balancer verified against its trust store
// in X-Amzn-Mtls-Clientcert-Leaf (URL-encoded PEM, + = / left as is) plus -Subject, -Serial-Number, …; the
// leaf is the one header believed.
// Passthrough mode sends the client's chain in X-Amzn-Mtls-Clientcert *without verifying it* (AWS: "targets
// should verify the client certificate chain"): anyone can present a self-signed certificate naming any
// SPIFFE ID there, so that chain is never a verified identity here, only a cert_untrusted failure.
import type { IncomingHttpHeaders } from 'node:http'
import type { CertEvidence, Failure } from '../../types.ts'
import { sha256Hex } from '../../util/fingerprint.ts'
import { certEvidenceFromPem, firstPemCertificate } from '../certificate.ts'
import { urlDecode } from './decode.ts'
import {
  ALB_CERT_HEADER,
  ALB_LEAF_HEADER,
  ALB_SAN_HEADER,
  ALB_SERIAL_HEADER,
  ALB_SUBJECT_HEADER,
  headerText,
  malformed,
  singleCertificateHeader,
} from './headers.ts'

/** undefined when no ALB header is present. */
export function albEvidence(headers: IncomingHttpHeaders): CertEvidence | Failure | undefined {
  // A passthrough chain means the load balancer is in passthrough mode, where it sets no -Leaf of its own:
  // a -Leaf next to it is the client's, passed on as sent, however it names the caller.
  if (headers[ALB_CERT_HEADER] !== undefined) return passthroughChain(headerText(headers, ALB_CERT_HEADER))
  const leaf = singleCertificateHeader(headers, ALB_LEAF_HEADER)
  if (leaf === 'repeated') return malformed('ALB client certificate header sent more than once')
  if (leaf !== undefined) {
    const pem = urlDecode(leaf)
    if (pem === undefined) return malformed('ALB client certificate is not URL-encoded PEM')
    return certEvidenceFromPem(pem, 'xfcc', true, 'alb')
  }
  // Verify mode sends the leaf it verified with every request, next to its -Subject, -Issuer, …: name
  // headers without it are not the load balancer's (nor is -San, which it never sends) but a client's,
  // passed on as sent, whatever they name
  if (
    headers[ALB_SUBJECT_HEADER] !== undefined ||
    headers[ALB_SAN_HEADER] !== undefined ||
    headers[ALB_SERIAL_HEADER] !== undefined
  ) {
    return {
      failed: true,
      source: 'xfcc',
      reason: 'untrusted_forwarder',
      detail: 'ALB client certificate names without the verified leaf (X-Amzn-Mtls-Clientcert-Leaf)',
    }
  }
  return undefined
}

/** ALB passthrough mode's chain: nobody verified it, so it is reported, never believed */
function passthroughChain(encoded: string | undefined): Failure {
  const pem = encoded === undefined ? undefined : urlDecode(encoded)
  const der = pem === undefined ? undefined : firstPemCertificate(pem)
  if (der === undefined) return malformed('ALB client certificate is not URL-encoded PEM')
  return {
    failed: true,
    source: 'xfcc',
    reason: 'cert_untrusted',
    detail:
      'ALB passthrough mode: the load balancer forwarded this chain without verifying it (use its verify mode)',
    fingerprint: sha256Hex(der).slice(0, 16),
  }
}
