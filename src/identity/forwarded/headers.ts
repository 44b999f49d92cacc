// Names of every header that can carry a forwarded client certificate, and what we send upstream.
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http'
import type { CertEvidence } from '../../types.ts'
import { normalizeHeaderName } from '../../util/header-names.ts'

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
const CERT_HEADER_SET = new Set(FORWARDED_CERT_HEADERS)

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

/**
 * Whether `name`, in any spelling an upstream would merge with it (case, "_" for "-"), is a forwarded-cert
 * header. Names that cannot be one (first letter not c/s/x, or too short) return at once.
 */
export function isForwardedCertHeader(name: string): boolean {
  if (name.length < 11) return false
  const c = name.charCodeAt(0) | 0x20
  if (c !== 120 && c !== 99 && c !== 115) return false
  const n = normalizeHeaderName(name)
  return CERT_HEADER_SET.has(n) || n.startsWith(ALB_PREFIX)
}

/** A forwarded-cert header under a spelling no proxy sets (underscores, upper case): always a spoof. */
export function isForwardedCertVariant(name: string): boolean {
  return isForwardedCertHeader(name) && normalizeHeaderName(name) !== name
}

/**
 * Rewrites the forwarded-cert headers of an outgoing request in place.
 * - sanitize: remove all of them
 * - sanitize_set: remove, then describe the client we verified (when we have evidence) in a clean XFCC
 * - forward: keep them only when they came from a trusted proxy
 * Copies from untrusted peers, and every spelling other than the canonical one, are always removed.
 */
export function sanitizeForwardedCertHeaders(
  headers: OutgoingHttpHeaders | IncomingHttpHeaders,
  trusted: boolean,
  mode: 'sanitize' | 'sanitize_set' | 'forward',
  evidence?: CertEvidence,
): void {
  const keep = mode === 'forward' && trusted
  for (const name of Object.keys(headers)) {
    if (!isForwardedCertHeader(name)) continue
    if (keep && normalizeHeaderName(name) === name) continue
    delete headers[name]
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
