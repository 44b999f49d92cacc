// Names of every header that can carry a forwarded client certificate, and what we send upstream.
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http'
import type { CertEvidence } from '../../types.ts'

export const XFCC_HEADER = 'x-forwarded-client-cert'
export const CLIENT_CERT_HEADER = 'client-cert'
export const CLIENT_CERT_CHAIN_HEADER = 'client-cert-chain'
export const ALB_CERT_HEADER = 'x-amzn-mtls-clientcert'
export const ALB_LEAF_HEADER = 'x-amzn-mtls-clientcert-leaf'
export const ALB_SUBJECT_HEADER = 'x-amzn-mtls-clientcert-subject'
export const ALB_SAN_HEADER = 'x-amzn-mtls-clientcert-san'
export const ALB_SERIAL_HEADER = 'x-amzn-mtls-clientcert-serial-number'
export const NGINX_CERT_HEADERS = ['ssl-client-cert', 'x-ssl-client-cert'] as const

/** Headers whose presence means "a client certificate is being forwarded to us". */
export const FORWARDED_CERT_HEADERS: readonly string[] = [
  XFCC_HEADER,
  CLIENT_CERT_HEADER,
  CLIENT_CERT_CHAIN_HEADER,
  ALB_CERT_HEADER,
  ALB_LEAF_HEADER,
  ALB_SUBJECT_HEADER,
  ALB_SAN_HEADER,
  ALB_SERIAL_HEADER,
  ...NGINX_CERT_HEADERS,
]

const ALB_PREFIX = 'x-amzn-mtls-clientcert'

/** Upper bound on any one forwarded-cert header we parse; a cert chain in PEM is a few KiB. */
export const MAX_FORWARDED_HEADER_BYTES = 64 * 1024

/** One header as a string (repeated headers joined with ","), or undefined when absent or over the cap. */
export function headerText(headers: IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name]
  if (v === undefined) return undefined
  const s = Array.isArray(v) ? v.join(',') : v
  if (s.length === 0 || s.length > MAX_FORWARDED_HEADER_BYTES) return undefined
  return s
}

export function hasForwardedCertHeader(headers: IncomingHttpHeaders): boolean {
  for (const name of FORWARDED_CERT_HEADERS) {
    if (headers[name] !== undefined) return true
  }
  return false
}

function isForwardedCertHeader(name: string): boolean {
  const lower = name.toLowerCase()
  return FORWARDED_CERT_HEADERS.includes(lower) || lower.startsWith(ALB_PREFIX)
}

/**
 * Rewrites the forwarded-cert headers of an outgoing request in place.
 * - sanitize: remove all of them
 * - sanitize_set: remove, then describe the client we verified (when we have evidence) in a clean XFCC
 * - forward: keep them only when they came from a trusted proxy
 * Copies from untrusted peers are always removed.
 */
export function sanitizeForwardedCertHeaders(
  headers: OutgoingHttpHeaders | IncomingHttpHeaders,
  trusted: boolean,
  mode: 'sanitize' | 'sanitize_set' | 'forward',
  evidence?: CertEvidence,
): void {
  if (mode === 'forward' && trusted) return
  for (const name of Object.keys(headers)) {
    if (isForwardedCertHeader(name)) delete headers[name]
  }
  if (mode === 'sanitize_set' && evidence) {
    const xfcc = formatXfcc(evidence)
    if (xfcc) headers[XFCC_HEADER] = xfcc
  }
}

const NEEDS_QUOTES_RE = /[,;="\\\s]/

function xfccValue(v: string): string {
  if (!NEEDS_QUOTES_RE.test(v)) return v
  return `"${v.replace(/[\\"]/g, (c) => `\\${c}`)}"`
}

/** One XFCC element (Envoy format) describing a verified client certificate. */
export function formatXfcc(ev: CertEvidence): string {
  const parts: string[] = []
  if (ev.sha256) parts.push(`Hash=${ev.sha256}`)
  if (ev.subject) parts.push(`Subject=${xfccValue(ev.subject)}`)
  for (const uri of ev.uriSans) parts.push(`URI=${xfccValue(uri)}`)
  for (const dns of ev.dnsSans) parts.push(`DNS=${xfccValue(dns)}`)
  return parts.join(';')
}
