// Names of every header that can carry a forwarded client certificate, and what we send upstream.
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http'
import { LRUCache } from 'lru-cache'
import type { CertEvidence, Failure, ForwardedCertFormat } from '../../types.ts'
import { normalizeHeaderName } from '../../util/header-names.ts'
import { lruGet } from '../../util/lru-get.ts'
import { rfc4514Subject } from '../certificate.ts'

export const XFCC_HEADER = 'x-forwarded-client-cert'
export const CLIENT_CERT_HEADER = 'client-cert'
export const CLIENT_CERT_CHAIN_HEADER = 'client-cert-chain'
export const ALB_CERT_HEADER = 'x-amzn-mtls-clientcert'
export const ALB_LEAF_HEADER = 'x-amzn-mtls-clientcert-leaf'
export const ALB_SUBJECT_HEADER = 'x-amzn-mtls-clientcert-subject'
export const ALB_SAN_HEADER = 'x-amzn-mtls-clientcert-san'
export const ALB_SERIAL_HEADER = 'x-amzn-mtls-clientcert-serial-number'
/** The header nginx's $ssl_client_escaped_cert is conventionally set in: the one the nginx format reads. */
export const NGINX_CERT_HEADER = 'x-ssl-client-cert'
/** Other spellings front proxies have used for the same thing; never read, always stripped. */
export const NGINX_CERT_HEADERS = ['ssl-client-cert', NGINX_CERT_HEADER] as const

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

export { FORWARDED_CERT_FORMATS, type ForwardedCertFormat } from '../../types.ts'

const ALB_PREFIX = 'x-amzn-mtls-clientcert'
const CERT_HEADER_SET = new Set(FORWARDED_CERT_HEADERS)
const FORMAT_HEADERS: Record<Exclude<ForwardedCertFormat, 'alb'>, ReadonlySet<string>> = {
  xfcc: new Set([XFCC_HEADER]),
  rfc9440: new Set([CLIENT_CERT_HEADER, CLIENT_CERT_CHAIN_HEADER]),
  nginx: new Set([NGINX_CERT_HEADER]),
}

/**
 * Whether `name` is a header the proxy of `format` sets, under the exact spelling it sets it in (Node hands us
 * names lower-cased; an underscore spelling is never the proxy's).
 */
export function isFormatHeader(name: string, format: ForwardedCertFormat): boolean {
  if (format === 'alb') return name.startsWith(ALB_PREFIX) && normalizeHeaderName(name) === name
  return FORMAT_HEADERS[format].has(name)
}

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

/** a forwarded certificate header that does not hold what its format says */
export function malformed(detail: string): Failure {
  return { failed: true, source: 'xfcc', reason: 'malformed', detail }
}

/**
 * A header that carries one PEM certificate (nginx's, ALB's -Leaf), or undefined as headerText. A PEM holds no
 * comma, so one here is the ", " Node joins repeated lines with: a proxy that adds its line after the
 * client's instead of replacing it (HAProxy's `add-header`) leaves the client's first, and which line is
 * the proxy's cannot be told. `repeated` then, never the first line.
 */
export function singleCertificateHeader(
  headers: IncomingHttpHeaders,
  name: string,
): string | 'repeated' | undefined {
  const v = headerText(headers, name)
  return v !== undefined && (v.includes(',') || Array.isArray(headers[name])) ? 'repeated' : v
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
 * Rewrites the forwarded-cert headers of an outgoing request in place. `format` is the one header format the
 * direct peer is trusted to set (undefined: an untrusted peer).
 * - sanitize: remove all of them
 * - sanitize_set: remove, then describe the client we verified (when we have evidence) in a clean XFCC
 * - forward: keep the trusted proxy's own format, under its own spelling; remove every other one
 */
export function sanitizeForwardedCertHeaders(
  headers: OutgoingHttpHeaders | IncomingHttpHeaders,
  format: ForwardedCertFormat | undefined,
  mode: 'sanitize' | 'sanitize_set' | 'forward',
  evidence?: CertEvidence,
): void {
  const keep = mode === 'forward' ? format : undefined
  // for-in, not Object.keys: this runs on every request's upstream headers, and deleting the name being
  // visited is safe during for-in
  for (const name in headers) {
    if (!isForwardedCertHeader(name)) continue
    if (keep !== undefined && isFormatHeader(name, keep)) continue
    delete headers[name]
  }
  if (mode === 'sanitize_set' && evidence) {
    const xfcc = upstreamXfcc(evidence)
    if (xfcc) headers[XFCC_HEADER] = xfcc
  }
}

/**
 * The XFCC sent upstream for each evidence object: one a cache shares (a forwarded header read before, an
 * mTLS connection's certificate) describes its client again with every request, in the same text. Weak: it
 * lives as long as the evidence does; evidence is never changed once made.
 */
const upstreamXfccs = new WeakMap<CertEvidence, string>()

function upstreamXfcc(ev: CertEvidence): string {
  let text = upstreamXfccs.get(ev)
  if (text === undefined) {
    text = formatXfcc(ev)
    upstreamXfccs.set(ev, text)
  }
  return text
}

/**
 * Whether the request carries a forwarded-cert header its peer may not set: any of them from an untrusted
 * peer (format undefined), or from a trusted one a header of another family or under another spelling.
 */
export function hasForeignForwardedCertHeader(
  headers: IncomingHttpHeaders,
  format: () => ForwardedCertFormat | undefined,
): boolean {
  let f: ForwardedCertFormat | undefined | null = null
  for (const name in headers) {
    if (!isForwardedCertHeader(name)) continue
    if (f === null) f = format()
    if (f === undefined || !isFormatHeader(name, f)) return true
  }
  return false
}

const NEEDS_QUOTES_RE = /[,;="\\\s]/
const UNSAFE_RE = /[^\x20-\x7e]/

/**
 * Each UTF-8 byte of a character outside printable ASCII as `marker` and two upper-case hex digits. Never
 * throws: a lone surrogate becomes U+FFFD on the way to UTF-8.
 */
function escapeOutsideAscii(v: string, marker: '%' | '\\'): string {
  if (!UNSAFE_RE.test(v)) return v
  let out = ''
  for (const b of Buffer.from(v, 'utf8')) {
    out +=
      b < 0x20 || b > 0x7e
        ? `${marker}${b.toString(16).toUpperCase().padStart(2, '0')}`
        : String.fromCharCode(b)
  }
  return out
}

/**
 * Percent-encodes, as UTF-8, every character outside printable ASCII, so the value is a valid header value
 * whatever the certificate said.
 */
export function percentEncodeUnsafe(v: string): string {
  return escapeOutsideAscii(v, '%')
}

/**
 * One XFCC value other than Subject: printable ASCII only, double-quoted with backslash escapes when it holds
 * a separator. A URI or DNS name gets its non-ASCII characters percent-encoded, which is their own escape
 * syntax.
 */
function xfccValue(v: string): string {
  const safe = percentEncodeUnsafe(v)
  if (!NEEDS_QUOTES_RE.test(safe)) return safe
  return `"${safe.replace(/[\\"]/g, (c) => `\\${c}`)}"`
}

/**
 * A Subject as Envoy writes it: its distinguished-name text between double quotes as it is, whose own
 * escapes (`\"`, `\\`) keep the quoting intact, so a reader of Envoy's XFCC reads ours alike (parseXfcc
 * keeps a quoted Subject's backslashes). Only what would end the quotes early is escaped: a `"` no backslash
 * stands before, and a backslash left dangling at the end. Outside printable ASCII is written first in RFC 4514
 * hex pairs (`Ω` → `\CE\A9`), as Envoy (OpenSSL's XN_FLAG_RFC2253) writes it; "%" is itself, as in Envoy's,
 * so that a subject holding `%C3%A9` is never read as one holding `é`.
 */
function xfccSubject(dn: string): string {
  const safe = escapeOutsideAscii(dn, '\\')
  if (!NEEDS_QUOTES_RE.test(safe)) return safe
  let out = '"'
  for (let i = 0; i < safe.length; i++) {
    const c = safe[i]!
    if (c === '\\') out += i + 1 < safe.length ? c + safe[++i] : '\\\\'
    else out += c === '"' ? '\\"' : c
  }
  return `${out}"`
}

/**
 * RFC 4514 order of subjects given without it (evidence a plugin source builds): such a certificate is
 * described again with each of its requests. Bounded: the key is client input.
 */
const rfc4514Subjects = new LRUCache<string, string>({ max: 1024 })

function inRfc4514Order(subject: string, rfc4514: string | undefined): string {
  if (rfc4514 !== undefined) return rfc4514
  let out = lruGet(rfc4514Subjects, subject)
  if (out === undefined) {
    out = rfc4514Subject(subject)
    rfc4514Subjects.set(subject, out)
  }
  return out
}

/**
 * One XFCC element (Envoy format) describing a verified client certificate; always a valid header value. Its
 * Subject is in RFC 4514 order, as Envoy's is, so a reader takes the same CN from it as from the certificate.
 */
export function formatXfcc(ev: CertEvidence): string {
  const parts: string[] = []
  if (ev.sha256) parts.push(`Hash=${xfccValue(ev.sha256)}`)
  if (ev.subject) parts.push(`Subject=${xfccSubject(inRfc4514Order(ev.subject, ev.subjectRfc4514))}`)
  for (const uri of ev.uriSans) parts.push(`URI=${xfccValue(uri)}`)
  for (const dns of ev.dnsSans) parts.push(`DNS=${xfccValue(dns)}`)
  return parts.join(';')
}
