// RFC 9440 Client-Cert: the DER certificate as a structured-field byte sequence, ":base64:".
import type { CertEvidence, Failure } from '../../types.ts'
import { certEvidenceFromX509, x509FromDer } from '../certificate.ts'
import { malformed } from './headers.ts'

const BYTE_SEQUENCE_RE = /^:([A-Za-z0-9+/]*={0,2}):$/

/** Decodes an RFC 8941 byte sequence; undefined when the text is not one. */
export function decodeByteSequence(text: string): Buffer | undefined {
  const m = BYTE_SEQUENCE_RE.exec(text.trim())
  if (!m?.[1]) return undefined
  return Buffer.from(m[1], 'base64')
}

export function clientCertEvidence(value: string): CertEvidence | Failure {
  const der = decodeByteSequence(value)
  const x = der ? x509FromDer(der) : undefined
  if (!x) return malformed('Client-Cert is not a DER byte sequence')
  return certEvidenceFromX509(x, 'xfcc', true, 'client-cert')
}
