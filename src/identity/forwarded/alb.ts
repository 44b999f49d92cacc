// AWS ALB mutual TLS headers. Passthrough mode sends the client chain as URL-encoded PEM (+ = / left as is)
// in X-Amzn-Mtls-Clientcert; verify mode sends the leaf in -Leaf plus -Subject, -Serial-Number, ….
import type { IncomingHttpHeaders } from 'node:http'
import type { CertEvidence, Failure } from '../../types.ts'
import { certEvidenceFromFields, certEvidenceFromPem, commonName } from '../certificate.ts'
import { urlDecode } from './decode.ts'
import {
  ALB_CERT_HEADER,
  ALB_LEAF_HEADER,
  ALB_SAN_HEADER,
  ALB_SUBJECT_HEADER,
  headerText,
} from './headers.ts'

function malformed(detail: string): Failure {
  return { failed: true, source: 'xfcc', reason: 'malformed', detail }
}

/** undefined when no ALB header is present. */
export function albEvidence(headers: IncomingHttpHeaders): CertEvidence | Failure | undefined {
  const encoded = headerText(headers, ALB_LEAF_HEADER) ?? headerText(headers, ALB_CERT_HEADER)
  if (encoded !== undefined) {
    const pem = urlDecode(encoded)
    if (pem === undefined) return malformed('ALB client certificate is not URL-encoded PEM')
    return certEvidenceFromPem(pem, 'xfcc', true, 'alb')
  }
  const subject = headerText(headers, ALB_SUBJECT_HEADER)
  const san = headerText(headers, ALB_SAN_HEADER)
  if (subject === undefined && san === undefined) return undefined
  const uriSans: string[] = []
  const dnsSans: string[] = []
  // "-San" lists names as "DNS:a, URI:b" (the same text openssl prints)
  for (const part of (san ?? '').split(',')) {
    const p = part.trim()
    if (p.startsWith('URI:')) uriSans.push(p.slice(4))
    else if (p.startsWith('DNS:')) dnsSans.push(p.slice(4))
  }
  const cn = subject === undefined ? undefined : commonName(subject)
  return certEvidenceFromFields(
    { ...(subject ? { subject } : {}), ...(cn ? { cn } : {}), uriSans, dnsSans },
    'xfcc',
    true,
    'alb',
  )
}
