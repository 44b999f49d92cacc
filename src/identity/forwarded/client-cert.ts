// RFC 9440 Client-Cert: the DER certificate as a structured-field byte sequence, ":base64:".
import type { CertEvidence, Failure } from '../../types.ts'
import { certEvidenceFromX509, x509FromDer } from '../certificate.ts'
import { malformed } from './headers.ts'

// Around the item only what HTTP calls OWS, spaces and tabs (RFC 8941 §4.2 takes spaces off, HTTP tabs too):
// String.trim() also dropped a non-breaking space (a 0xA0 byte), which is no part of the grammar.
const BYTE_SEQUENCE_RE = /^[ \t]*:([A-Za-z0-9+/]*)(={0,2}):[ \t]*$/

/**
 * Decodes an RFC 8941 byte sequence; undefined when the text is not one. Its base64 (RFC 8941 §4.2.7, RFC 4648
 * §4) may leave out the padding, but padding that is there completes the last group of four, and a group of
 * one character is no byte: Buffer.from() would take `:AAAA==:` or `:AAA==:` as whatever it could read.
 */
export function decodeByteSequence(text: string): Buffer | undefined {
  const m = BYTE_SEQUENCE_RE.exec(text)
  if (!m) return undefined
  const base64 = m[1]!
  const padding = m[2]!
  if (base64.length % 4 === 1) return undefined
  if (padding !== '' && (base64.length + padding.length) % 4 !== 0) return undefined
  return Buffer.from(base64, 'base64')
}

export function clientCertEvidence(value: string): CertEvidence | Failure {
  const der = decodeByteSequence(value)
  const x = der ? x509FromDer(der) : undefined
  if (!x) return malformed('Client-Cert is not a DER byte sequence')
  return certEvidenceFromX509(x, 'xfcc', true, 'client-cert')
}
