// Client certificates → CertEvidence. Used once per TLS connection (mTLS) and by the forwarded-cert parsers.
import { X509Certificate } from 'node:crypto'
import type { TLSSocket } from 'node:tls'
import { LRUCache } from 'lru-cache'
import type { CertEvidence, Failure } from '../types.ts'
import { sha256Hex } from '../util/fingerprint.ts'
import { lruGet } from '../util/lru-get.ts'
import { parseSpiffeId } from './spiffe.ts'

export type CertSource = CertEvidence['source']
export type ForwardedVia = NonNullable<CertEvidence['via']>

const SPIFFE_SCHEME_RE = /^spiffe:/i

/**
 * Parses the verified peer certificate of a TLS connection. No certificate → undefined; a chain the TLS
 * stack did not verify → Failure (cert_expired / cert_not_yet_valid / cert_untrusted); invalid SPIFFE SAN →
 * Failure spiffe_invalid. `anchors` are the client CA certificates the listener verifies against: a
 * certificate outside its dates is cert_expired or cert_not_yet_valid only when its chain to them would be
 * taken but for its dates.
 */
export function parsePeerCertificate(
  socket: TLSSocket,
  anchors: readonly X509Certificate[],
): CertEvidence | Failure | undefined {
  let x: X509Certificate | undefined
  try {
    x = socket.getPeerX509Certificate()
  } catch {
    return undefined
  }
  if (!x) return undefined
  // One walk serves both outcomes: the X509Certificate Node links to what the peer sent. On Node 20, taking
  // it empties getPeerCertificate(true)'s chain, so the chain is never read a second way.
  const sent = sentIssuers(x)
  // Node sets `authorized` on the first handshake only, and only ever to true: a renegotiation (which the
  // listener refuses, see listeners.ts) with a certificate that does not verify leaves it true beside that
  // handshake's authorizationError. Any verify error makes the certificate unverified.
  if (!socket.authorized || socket.authorizationError) {
    const code = errorCode(socket.authorizationError)
    // OpenSSL reports the last error it met, and it checks dates after trust: a self-made certificate that
    // has expired (or is not valid yet) is reported that way, which says nothing about a workload's credential
    const dated = code === 'CERT_HAS_EXPIRED' || code === 'CERT_NOT_YET_VALID'
    // and a date is the last error it reports, not the only one: a chain it would refuse for more than its
    // dates (through a certificate that is no CA, not for client authentication, signed with SHA-1) is no
    // credential that ran out either
    const path = dated ? pathToAnchor(x, sent, anchors) : undefined
    const chain = path && rootedChain(path, anchors)
    const anchored = chain !== undefined && undatedChainProblem(chain) === undefined
    return {
      failed: true,
      source: 'mtls',
      reason: !anchored
        ? 'cert_untrusted'
        : code === 'CERT_HAS_EXPIRED'
          ? 'cert_expired'
          : 'cert_not_yet_valid',
      detail: code ?? 'client certificate not verified',
      fingerprint: sha256Hex(x.raw).slice(0, 16),
      attributes: safeAttributes(x),
    }
  }
  const ev = certEvidenceFromX509(x, 'mtls', true)
  if ('failed' in ev) return ev
  // the credential lasts as long as its verified chain: an intermediate that expires before the leaf ends it
  // on that date, when the listener starts refusing the chain
  for (const c of sent) {
    const ms = Date.parse(c.validTo)
    if (!Number.isFinite(ms)) continue
    const end = Math.floor(ms / 1000)
    if (ev.notAfter === undefined || end < ev.notAfter) ev.notAfter = end
  }
  return ev
}

/**
 * The certificates the peer sent above its leaf, in issuing order, as Node links them through
 * `issuerCertificate` (the listener's own client CA is not among them: OpenSSL's verified chain is not
 * exposed).
 */
function sentIssuers(leaf: X509Certificate): X509Certificate[] {
  const out: X509Certificate[] = []
  try {
    let c = leaf.issuerCertificate
    while (c !== undefined && c !== leaf && !out.includes(c) && out.length < MAX_CHAIN) {
      out.push(c)
      c = c.issuerCertificate
    }
  } catch {
    // an unreadable chain anchors nothing and says nothing more than the leaf about its expiry
  }
  return out
}

const MAX_CHAIN = 10

/** `issuer`'s key signed `cert` and its subject is `cert`'s issuer */
export function issuedBy(cert: X509Certificate, issuer: X509Certificate): boolean {
  try {
    return cert.checkIssued(issuer) && cert.verify(issuer.publicKey)
  } catch {
    return false
  }
}

/** The certificates from `leaf` through `chain` to the one of `anchors` that issued the last (dates unchecked). */
export function pathToAnchor(
  leaf: X509Certificate,
  chain: readonly X509Certificate[],
  anchors: readonly X509Certificate[],
): X509Certificate[] | undefined {
  const path = [leaf]
  let cert = leaf
  for (let depth = 0; depth <= MAX_CHAIN; depth++) {
    const anchor = anchors.find((a) => issuedBy(cert, a))
    if (anchor) return [...path, anchor]
    const next = chain.find((c) => c !== cert && !c.raw.equals(cert.raw) && issuedBy(cert, c))
    if (!next) return undefined
    path.push(next)
    cert = next
  }
  return undefined
}

/** what certificate-names.ts decodes for undatedChainProblem and the X.509-SVID leaf rule */
export interface ChainExtensions {
  basicConstraints?: { ca: boolean; pathLength?: number }
  /** KeyUsageFlags bits (digitalSignature 1, keyAgreement 16, keyCertSign 32…) */
  keyUsage?: number
  signatureAlgorithm: string
  /** an EC key whose curve is written out in the certificate rather than named by its OID */
  explicitCurve?: boolean
}

/** id-kp-clientAuth */
const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2'
const KU_DIGITAL_SIGNATURE = 1
const KU_KEY_AGREEMENT = 16
const KU_KEY_CERT_SIGN = 32
const KU_CRL_SIGN = 64
/** signatures OpenSSL's security level 1 and above find too weak: MD2, MD5 and SHA-1 with RSA, DSA, ECDSA */
const WEAK_SIGNATURES = new Set([
  '1.2.840.113549.1.1.2',
  '1.2.840.113549.1.1.4',
  '1.2.840.113549.1.1.5',
  '1.2.840.10040.4.3',
  '1.2.840.10045.4.1',
])

/**
 * The OpenSSL security level Node's TLS verifies client certificate chains at: its default, 1 up to Node 22
 * (OpenSSL 3.0, and Node 22 keeps 1 on its OpenSSL 3.5), 2 from Node 24 (OpenSSL 3.2 raised the default). A
 * level applies to every key of the chain, the root's too (EE_KEY_TOO_SMALL, CA_KEY_TOO_SMALL): level 1 is 80
 * bits of security (RSA and DSA keys of 1024 bits, EC curves of 160), level 2 is 112 (2048 and 224). An
 * OpenSSL config or `--tls-cipher-list` that sets another level is not read.
 */
export const TLS_SECURITY_LEVEL: 1 | 2 = Number(process.versions.node.split('.')[0]) >= 24 ? 2 : 1
const MIN_RSA_BITS = TLS_SECURITY_LEVEL === 2 ? 2048 : 1024
const MIN_CURVE_BITS = TLS_SECURITY_LEVEL === 2 ? 224 : 160
/** what a key too small for the listener is, in a message */
const TOO_SMALL = `under RSA-${MIN_RSA_BITS} or a ${MIN_CURVE_BITS}-bit curve`
/** most curves' names say their size (secp112r1, sect131r1, brainpoolP160r1) */
const CURVE_BITS_RE = /\d{3}/
/** the sizes of the curves whose names do not say them (OpenSSL's curve list) */
const CURVES_NAMED_WITHOUT_SIZE = new Map([
  ['wap-wsg-idm-ecid-wtls1', 113],
  ['wap-wsg-idm-ecid-wtls3', 163],
  ['wap-wsg-idm-ecid-wtls4', 113],
  ['wap-wsg-idm-ecid-wtls5', 163],
  ['wap-wsg-idm-ecid-wtls6', 112],
  ['wap-wsg-idm-ecid-wtls7', 160],
  ['wap-wsg-idm-ecid-wtls8', 112],
  ['wap-wsg-idm-ecid-wtls9', 160],
  ['wap-wsg-idm-ecid-wtls10', 233],
  ['wap-wsg-idm-ecid-wtls11', 233],
  ['wap-wsg-idm-ecid-wtls12', 224],
  ['Oakley-EC2N-3', 155],
  ['Oakley-EC2N-4', 185],
])

function keyTooSmall(c: X509Certificate): boolean {
  const key = c.publicKey
  const details = key.asymmetricKeyDetails
  switch (key.asymmetricKeyType) {
    case 'rsa':
    case 'rsa-pss':
    case 'dsa':
      return details?.modulusLength !== undefined && details.modulusLength < MIN_RSA_BITS
    case 'ec': {
      const curve = details?.namedCurve ?? ''
      const bits = CURVES_NAMED_WITHOUT_SIZE.get(curve) ?? Number(CURVE_BITS_RE.exec(curve)?.[0])
      return bits < MIN_CURVE_BITS
    }
    default:
      return false
  }
}

/** a certificate that can issue others: basicConstraints CA:TRUE, or key usage keyCertSign or cRLSign */
function issuingCertificate(x: X509Certificate): boolean {
  const { basicConstraints, keyUsage = 0 } = decoder!.chainExtensions(x.raw)
  return basicConstraints?.ca === true || (keyUsage & (KU_KEY_CERT_SIGN | KU_CRL_SIGN)) !== 0
}

/** issued by itself: the end of a chain OpenSSL trusts */
function selfSigned(c: X509Certificate): boolean {
  return c.subject === c.issuer && issuedBy(c, c)
}

/** a certificate's subject on one line, as messages name it */
export function subjectOf(c: X509Certificate): string {
  return c.subject.split('\n').join(', ')
}

/**
 * `path` (the leaf first, then its issuers up to one of `anchors`, as pathToAnchor finds it) continued through
 * `anchors` to a self-signed one: OpenSSL trusts a chain only up to such a CA (an intermediate alone anchors
 * nothing without X509_V_FLAG_PARTIAL_CHAIN, which Node does not set). undefined when there is none.
 */
export function rootedChain(
  path: readonly X509Certificate[],
  anchors: readonly X509Certificate[],
): X509Certificate[] | undefined {
  const full = [...path]
  for (let top = full.at(-1)!; !selfSigned(top); top = full.at(-1)!) {
    const up = anchors.find((a) => !full.includes(a) && issuedBy(top, a))
    if (up === undefined || full.length > MAX_CHAIN) return undefined
    full.push(up)
  }
  return full
}

/**
 * Why the listener's OpenSSL refuses `chain` (a rootedChain) for a TLS client, its dates aside, in words that
 * follow "certificate"; undefined when only dates could be wrong. These are the checks OpenSSL makes before
 * the dates (X509_verify_cert: chain building, then extensions and purpose, then the security level): every
 * issuer below the root has basicConstraints CA:TRUE within its pathlen, the leaf and intermediates allow
 * client authentication (extended key usage) and the leaf signing (key usage), and none is signed with a
 * digest, or has a key, weaker than its security level (TLS_SECURITY_LEVEL) allows. checkIssued already refused issuers without keyCertSign. Name
 * constraints come after the dates, so OpenSSL reports a violation of them, not the dates. The decoder has to
 * be loaded (loadCertificateDecoder) first.
 */
export function undatedChainProblem(chain: readonly X509Certificate[]): string | undefined {
  if (!decoder) throw new Error('certificate decoder not loaded: await loadCertificateDecoder() first')
  let extensions: ChainExtensions[]
  try {
    extensions = chain.map((c) => decoder!.chainExtensions(c.raw))
  } catch {
    // Node parsed them, so a field the schema decoder reads strictly is off: nothing to call a credential
    return 'chain could not be decoded'
  }
  const leafUsage = extensions[0]!.keyUsage
  if (leafUsage !== undefined && (leafUsage & (KU_DIGITAL_SIGNATURE | KU_KEY_AGREEMENT)) === 0)
    return 'has a key usage that does not allow signing'
  for (const [i, c] of chain.entries()) {
    const root = i === chain.length - 1
    if (keyTooSmall(c))
      return i === 0
        ? `has a key too small for the listener (${TOO_SMALL})`
        : `is issued through ${subjectOf(c)}, whose key is too small for the listener (${TOO_SMALL})`
    // OpenSSL 3 refuses explicit curve parameters on any certificate of the chain (EC_KEY_EXPLICIT_PARAMS)
    if (extensions[i]!.explicitCurve)
      return i === 0
        ? 'has an EC key with explicit curve parameters, which the listener refuses'
        : `is issued through ${subjectOf(c)}, whose EC key has explicit curve parameters, which the listener refuses`
    const purposes = c.keyUsage
    if (!root && purposes !== undefined && !purposes.includes(CLIENT_AUTH))
      return `is not for client authentication (the extended key usage of ${subjectOf(c)} leaves it out)`
    if (!root && WEAK_SIGNATURES.has(extensions[i]!.signatureAlgorithm))
      return `chain has a signature too weak for the listener (SHA-1 or older, on ${subjectOf(c)})`
    if (i === 0) continue
    const bc = extensions[i]!.basicConstraints
    // a self-signed root without basicConstraints is a CA by its keyCertSign; below it, OpenSSL wants CA:TRUE
    if (root ? bc?.ca === false : bc?.ca !== true)
      return `is issued through ${subjectOf(c)}, which is not a CA (basicConstraints)`
    if (bc?.pathLength !== undefined && i - 1 > bc.pathLength)
      return `is issued through ${subjectOf(c)}, which allows ${bc.pathLength} intermediates below it (pathlen)`
  }
  return undefined
}

const PEM_BEGIN = '-----BEGIN CERTIFICATE-----'
const PEM_END = '-----END CERTIFICATE-----'
const PEM_BLOCK_RE = new RegExp(`${PEM_BEGIN}[^-]+${PEM_END}`, 'g')

/** The PEM CERTIFICATE blocks of a bundle, in order, each as its own PEM text. */
export function pemCertificateBlocks(pem: string | undefined): string[] {
  return pem?.match(PEM_BLOCK_RE) ?? []
}

/** The certificates of a PEM bundle (a client CA file); those that do not parse are left out. */
export function pemCertificates(pem: string | undefined): X509Certificate[] {
  const out: X509Certificate[] = []
  for (const block of pemCertificateBlocks(pem)) {
    try {
      out.push(new X509Certificate(block))
    } catch {
      // the listener's own checks refuse such a bundle; here it simply anchors nothing
    }
  }
  return out
}

function errorCode(err: Error | string | null | undefined): string | undefined {
  if (!err) return undefined
  if (typeof err === 'string') return err
  const code = (err as Error & { code?: unknown }).code
  return typeof code === 'string' ? code : err.message
}

function safeAttributes(x: X509Certificate): Record<string, string> {
  const attrs: Record<string, string> = { cert_sha256: sha256Hex(x.raw) }
  const subject = subjectOneLine(x.subject)
  if (subject) attrs['subject'] = subject
  return attrs
}

/** Node prints the subject one RDN per line; we keep it as "CN=a, O=b" in evidence. */
function subjectOneLine(subject: string | undefined): string | undefined {
  if (!subject) return undefined
  return subject.split('\n').filter(Boolean).join(', ')
}

/** the characters RFC 4514 lets a backslash stand before ("CN=a\\,b" is the CN "a,b") */
const DN_SPECIALS = ' "#+,;<=>\\'
// ignoreBOM: U+FEFF at the start of a run is a character of the value, not a byte order mark to drop (the
// CN `\uFEFFadmin` of an Envoy Subject, `CN=\EF\BB\BFadmin`, was read as `admin`)
const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })

function hexDigit(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30
  const l = c | 0x20
  return l >= 0x61 && l <= 0x66 ? l - 0x57 : -1
}

/** the byte of the RFC 4514 hex pair `\XX` at `i`, or -1 when there is none there */
function hexPairAt(s: string, i: number): number {
  if (s.charCodeAt(i) !== 0x5c) return -1
  const hi = hexDigit(s.charCodeAt(i + 1))
  const lo = hi === -1 ? -1 : hexDigit(s.charCodeAt(i + 2))
  return lo === -1 ? -1 : hi * 16 + lo
}

/** consecutive hex pairs from `i`: their bytes, decoded as UTF-8 (undefined when they are not UTF-8) */
function hexRun(s: string, i: number): { end: number; bytes: number[]; text: string | undefined } {
  const bytes: number[] = []
  let end = i
  for (let b = hexPairAt(s, end); b !== -1; b = hexPairAt(s, end)) {
    bytes.push(b)
    end += 3
  }
  let text: string | undefined
  try {
    text = UTF8.decode(Uint8Array.from(bytes))
  } catch {
    text = undefined
  }
  return { end, bytes, text }
}

/**
 * Distinguished-name text with the characters OpenSSL escapes byte by byte under XN_FLAG_RFC2253 (each byte
 * of a non-ASCII UTF-8 character as a hex pair: Envoy's XFCC Subject `CN=\CE\A9`) written out, as Node
 * prints them (`CN=Ω`); escapes of ASCII (specials, control characters) are kept, since writing those out
 * would change how the text splits. Undefined when hex pairs are not UTF-8, which no certificate's subject
 * prints as.
 */
export function dnWithUtf8(subject: string): string | undefined {
  if (!subject.includes('\\')) return subject
  let out = ''
  let from = 0
  for (let i = 0; i < subject.length; i++) {
    if (subject.charCodeAt(i) !== 0x5c) continue
    if (hexPairAt(subject, i) === -1) {
      // an escaped character, possibly a backslash: the text after it is never read as an escape
      i++
      continue
    }
    const run = hexRun(subject, i)
    if (run.text === undefined) return undefined
    if (run.bytes.some((b) => b >= 0x80)) {
      out += subject.slice(from, i)
      let at = i
      for (const ch of run.text) {
        const cp = ch.codePointAt(0)!
        const n = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4
        out += n === 1 ? subject.slice(at, at + 3) : ch
        at += 3 * n
      }
      from = run.end
    }
    i = run.end - 1
  }
  return out + subject.slice(from)
}

/**
 * One attribute value with its RFC 4514 escapes undone: a backslash before a special character is that
 * character, consecutive hex pairs are the bytes of UTF-8 text. Undefined when they are not UTF-8. A
 * backslash before anything else is kept as it is, as it always was here.
 */
function unescapeDnValue(v: string): string | undefined {
  if (!v.includes('\\')) return v
  let out = ''
  for (let i = 0; i < v.length; i++) {
    const c = v[i]!
    if (c !== '\\') {
      out += c
      continue
    }
    if (hexPairAt(v, i) !== -1) {
      const run = hexRun(v, i)
      if (run.text === undefined) return undefined
      out += run.text
      i = run.end - 1
    } else if (i + 1 < v.length && DN_SPECIALS.includes(v[i + 1]!)) {
      out += v[++i]
    } else {
      out += c
    }
  }
  return out
}

/** One attribute of distinguished-name text and the separator after it ('' after the last). */
interface DnPart {
  /** as written, with the spaces around its separators */
  text: string
  sep: '/' | ',' | '+' | ''
}

/**
 * The attributes of distinguished-name text, as proxies forward it: "/C=US/CN=x" (slash) form or "CN=x, O=y"
 * (comma) form, the latter with RFC 4514 backslash escapes or Node's JSON-quoted values (`O="a, CN=b"`).
 * Separators inside quotes or after a backslash do not split, so a CN= inside another attribute's value is
 * never taken for an attribute; `+` separates the parts of a multi-valued RDN.
 */
function dnParts(subject: string): DnPart[] {
  const slash = subject.startsWith('/')
  const parts: DnPart[] = []
  let start = slash ? 1 : 0
  let quoted = false
  for (let i = start; i <= subject.length; i++) {
    const c = subject[i]
    if (c === '\\' && i + 1 < subject.length) {
      i++
      continue
    }
    if (c === '"') quoted = !quoted
    const end = i === subject.length || (!quoted && (slash ? c === '/' : c === ',' || c === '+'))
    if (!end) continue
    parts.push({
      text: subject.slice(start, i),
      sep: i === subject.length ? '' : (c as DnPart['sep']),
    })
    start = i + 1
  }
  return parts
}

/**
 * How the RDNs of comma-form text are ordered. `der`: as the certificate holds them, the way Node prints a
 * subject (and OpenSSL's slash form, always). `rfc4514`: reversed, the most specific first, as RFC 4514
 * strings are and as Envoy prints XFCC's Subject (X509_NAME_print_ex with XN_FLAG_RFC2253).
 */
export type DnOrder = 'der' | 'rfc4514'

/**
 * The one parser for a common name in distinguished-name text (see dnParts). A subject with several CNs is
 * named by its first CN in DER order, as certificateNames names a certificate: the first CN of slash-form or
 * `der` text, the last of `rfc4514` comma-form text.
 */
export function commonName(subject: string, order: DnOrder = 'der'): string | undefined {
  const read = readCommonName(subject, order)
  return 'malformed' in read ? undefined : read.cn
}

/**
 * commonName, or why the subject's CNs cannot be read: hex pairs that are not UTF-8, or a comma-form `#`
 * value (the hex of a BER encoding, which OpenSSL prints for a CN that is not a string type): neither is
 * ever taken as a name.
 */
export function readCommonName(
  subject: string,
  order: DnOrder = 'der',
): { cn?: string } | { malformed: string } {
  const slash = subject.startsWith('/')
  const last = order === 'rfc4514' && !slash
  let found: string | undefined
  for (const { text: raw } of dnParts(subject)) {
    const text = trimDn(raw)
    if (text.length > 3 && text.slice(0, 3).toUpperCase() === 'CN=') {
      const value = trimDn(text.slice(3))
      // slash form (X509_NAME_oneline) has no such encoding: a "#" there is the CN's own first character
      if (!slash && value.startsWith('#'))
        return { malformed: 'a CN is a hex-encoded BER value, not a string' }
      const cn = unquoteDnValue(value)
      if (cn === undefined) return { malformed: 'a CN has hex escapes that are not UTF-8' }
      if (!cn) continue
      if (!last) return { cn }
      found = cn
    }
  }
  return found === undefined ? {} : { cn: found }
}

/**
 * Text of an attribute without the spaces around it, except a trailing one a backslash escapes: OpenSSL
 * and Node print a value's own trailing space as `\ ` (`CN=a\ ,O=x` is the CN "a "), and an escaped
 * backslash (`\\ `) escapes nothing after it.
 */
function trimDn(s: string): string {
  let start = 0
  while (s.charCodeAt(start) === 0x20) start++
  let end = s.length
  while (end > start && s.charCodeAt(end - 1) === 0x20) {
    let backslashes = 0
    while (end - 2 - backslashes >= start && s.charCodeAt(end - 2 - backslashes) === 0x5c) backslashes++
    if (backslashes % 2 === 1) break
    end--
  }
  return s.slice(start, end)
}

const DN_ATTRIBUTE_RE = /^[A-Za-z][A-Za-z0-9-]*=|^[0-9]+(?:\.[0-9]+)+=/

/**
 * A subject as Node prints it (RDNs in DER order, "CN=a, O=b") in RFC 4514 order ("O=b,CN=a"), as Envoy
 * writes XFCC's Subject, so that whoever reads the XFCC the proxy sends finds the RDNs where Envoy's put them.
 * Text that is not attribute=value throughout is returned as it is: there is no order to reverse.
 */
export function rfc4514Subject(subject: string): string {
  return reversedDn(subject, ',', '+')
}

/**
 * RFC 4514 text (an XFCC Subject, "CN=a,O=b") in DER order as Node prints a certificate's subject
 * ("O=b, CN=a"), so that a certificate has one subject whichever path brought it. Envoy reverses every
 * attribute, those of a multi-valued RDN included, as Node's printing keeps them: reversing them all again
 * gives Node's text. Slash form is DER order already, and text that is not attribute=value throughout has no
 * order to reverse: both are returned as they are.
 */
export function derSubject(subject: string): string {
  return reversedDn(subject, ', ', ' + ')
}

/**
 * The attributes of comma-form distinguished-name text in reverse order, RDNs joined by `rdnSep`, the parts of
 * a multi-valued RDN by `avaSep`. Escaped and quoted separators stay inside their value (dnParts).
 */
function reversedDn(subject: string, rdnSep: string, avaSep: string): string {
  if (subject.startsWith('/')) return subject
  const parts = dnParts(subject)
  if (parts.length < 2) return subject
  // the spaces around separators are not part of a value; one a backslash escapes is (trimDn)
  const texts = parts.map((p) => trimDn(p.text))
  if (!texts.every((t) => DN_ATTRIBUTE_RE.test(t))) return subject
  let out = ''
  for (let i = parts.length - 1; i >= 0; i--) {
    out += texts[i]!
    if (i > 0) out += parts[i - 1]!.sep === '+' ? avaSep : rdnSep
  }
  return out
}

function unquoteDnValue(v: string): string | undefined {
  if (v.length >= 2 && v.startsWith('"') && v.endsWith('"')) {
    const parsed = unquote(v)
    if (parsed !== v) return parsed
    // not JSON: RFC 4514 quoting
    v = v.slice(1, -1)
  }
  return unescapeDnValue(v)
}

function unquote(v: string): string {
  if (v.length >= 2 && v.startsWith('"') && v.endsWith('"')) {
    try {
      const parsed: unknown = JSON.parse(v)
      if (typeof parsed === 'string') return parsed
    } catch {
      // not JSON-quoted after all; keep as is
    }
  }
  return v
}

export interface SubjectAltNames {
  dns: string[]
  uri: string[]
  email: string[]
  ip: string[]
}

/** What the certificate's DER says about its names, decoded field by field (never from Node's printed text). */
export interface CertificateNames {
  /** the first CN of the subject in DER order, also inside a multi-valued RDN */
  cn?: string
  sans: SubjectAltNames
}

/** one GeneralName (a SAN, a name-constraint subtree) by kind; `other` for the kinds not read (directoryName…) */
export interface GeneralNameValue {
  type: 'dns' | 'uri' | 'email' | 'ip' | 'other'
  value: string
}

export interface NameConstraintSet {
  permitted: GeneralNameValue[]
  excluded: GeneralNameValue[]
}

type Decoder = typeof import('./certificate-names.ts')
let decoder: Decoder | undefined
let loading: Promise<void> | undefined

/**
 * Loads the DER decoder of certificate names (certificate-names.ts). It is an X.509 schema library of some
 * 180 KB that a sidecar without client certificates never needs, so it is not part of the start: the https
 * listener with client certificates, the forwarded-certificate source and `explain --cert` load it before
 * they read a certificate. Idempotent.
 */
export function loadCertificateDecoder(): Promise<void> {
  loading ??= import('./certificate-names.ts').then((m) => {
    decoder = m
  })
  return loading
}

export function certificateDecoderLoaded(): boolean {
  return decoder !== undefined
}

/** See certificate-names.ts; the decoder has to be loaded (loadCertificateDecoder) first. */
export function certificateNames(der: Uint8Array): CertificateNames {
  if (!decoder) throw new Error('certificate decoder not loaded: await loadCertificateDecoder() first')
  return decoder.certificateNames(der)
}

/** See certificate-names.ts; the decoder has to be loaded (loadCertificateDecoder) first. */
export function certificateNameConstraints(der: Uint8Array): NameConstraintSet | undefined {
  if (!decoder) throw new Error('certificate decoder not loaded: await loadCertificateDecoder() first')
  return decoder.nameConstraints(der)
}

/**
 * Whether a DNS name or a URI's host falls within a subtree (RFC 5280 §4.2.1.10): a DNS constraint covers the
 * name and every name below it; a URI constraint is a host, `.example.com` every host below it only.
 */
function withinSubtree(type: 'dns' | 'uri', name: string, constraint: string): boolean {
  const host = name.toLowerCase().replace(/\.$/, '')
  const c = constraint.toLowerCase().replace(/\.$/, '')
  if (c === '') return true
  if (type === 'uri' && c.startsWith('.')) return host.endsWith(c)
  if (host === c) return true
  return type === 'dns' && host.endsWith(c.startsWith('.') ? c : `.${c}`)
}

function uriHost(uri: string): string | undefined {
  try {
    return new URL(uri).hostname || undefined
  } catch {
    return undefined
  }
}

/**
 * The first of the leaf's DNS and URI names that a CA's name constraints rule out, or undefined. Names of a
 * type the CA permits subtrees of must lie within one of them; no name may lie within an excluded one.
 * Constraints of other kinds (directory names, e-mail, IP addresses) are `unchecked`.
 */
export function nameConstraintViolation(
  names: { dns: readonly string[]; uri: readonly string[] },
  nc: NameConstraintSet,
): { violation?: string; unchecked: boolean } {
  const unchecked = [...nc.permitted, ...nc.excluded].some((n) => n.type !== 'dns' && n.type !== 'uri')
  for (const type of ['dns', 'uri'] as const) {
    const permitted = nc.permitted.filter((n) => n.type === type).map((n) => n.value)
    const excluded = nc.excluded.filter((n) => n.type === type).map((n) => n.value)
    for (const name of names[type]) {
      const host = type === 'uri' ? uriHost(name) : name
      if (host === undefined) return { violation: name, unchecked }
      if (permitted.length > 0 && !permitted.some((c) => withinSubtree(type, host, c)))
        return { violation: name, unchecked }
      if (excluded.some((c) => withinSubtree(type, host, c))) return { violation: name, unchecked }
    }
  }
  return { unchecked }
}

export interface CertFields {
  /** in DER order, as Node prints a certificate's subject (see CertEvidence) */
  subject?: string
  subjectRfc4514?: string
  cn?: string
  dnsSans: string[]
  uriSans: string[]
  sha256?: string
  notAfter?: number
  /**
   * the certificate can issue others (basicConstraints CA:TRUE, or key usage keyCertSign or cRLSign): read
   * where the certificate itself is at hand and names a SPIFFE ID
   */
  issuing?: boolean
}

/**
 * Builds evidence from certificate fields, applying the X.509-SVID rule: a SPIFFE ID only when the cert has
 * exactly one URI SAN and it is valid; any spiffe: URI that is invalid or not alone → Failure spiffe_invalid.
 */
export function certEvidenceFromFields(
  fields: CertFields,
  source: CertSource,
  verified: boolean,
  via?: ForwardedVia,
): CertEvidence | Failure {
  const spiffeUris = fields.uriSans.filter((u) => SPIFFE_SCHEME_RE.test(u))
  let spiffeId: string | undefined
  if (spiffeUris.length > 0) {
    const fp = fields.sha256?.slice(0, 16)
    const fail = (detail: string): Failure => ({
      failed: true,
      source,
      reason: 'spiffe_invalid',
      detail,
      ...(fp ? { fingerprint: fp } : {}),
      attributes: fields.sha256 ? { cert_sha256: fields.sha256 } : {},
    })
    if (fields.uriSans.length !== 1) return fail('an X.509-SVID must carry exactly one URI SAN')
    const candidate = spiffeUris[0]!
    const parsed = parseSpiffeId(candidate)
    if ('error' in parsed) return fail(`invalid SPIFFE ID: ${parsed.error}`)
    // X.509-SVID §4.1 and §4.3: a leaf SVID is no CA; one that can sign certificates is a signing
    // certificate presented as a workload's, and names no workload
    if (fields.issuing)
      return fail('an X.509-SVID leaf must not be a CA (basicConstraints CA:TRUE, keyCertSign or cRLSign)')
    spiffeId = candidate
  }
  const ev: CertEvidence = {
    source,
    verified,
    dnsSans: fields.dnsSans,
    uriSans: fields.uriSans,
  }
  if (spiffeId) ev.spiffeId = spiffeId
  if (fields.subject) ev.subject = fields.subject
  if (fields.subject && fields.subjectRfc4514) ev.subjectRfc4514 = fields.subjectRfc4514
  if (fields.cn) ev.cn = fields.cn
  if (fields.sha256) ev.sha256 = fields.sha256
  if (fields.notAfter !== undefined) ev.notAfter = fields.notAfter
  if (via) ev.via = via
  return ev
}

/** What a certificate says about its names, decoded once: its CN and SANs, its subject in both orders. */
interface DecodedCertificate {
  names: CertificateNames
  subject: string | undefined
  subjectRfc4514: string | undefined
  /** CertFields.issuing, for a certificate that names a SPIFFE ID (false for any other: not read) */
  issuing: boolean
}

/**
 * Decoded certificates by hash. A forwarded certificate arrives again with every request of its client (a TLS
 * connection's own is parsed once anyway), and decoding costs about a millisecond where hashing the DER costs
 * microseconds. Bounded: the key is client input.
 */
const decodedByCertificate = new LRUCache<string, DecodedCertificate>({ max: 1024 })

export function certEvidenceFromX509(
  x: X509Certificate,
  source: CertSource,
  verified: boolean,
  via?: ForwardedVia,
): CertEvidence | Failure {
  // not a property of the certificate: a caller that did not load the decoder is a bug, not a malformed cert
  if (!decoder) throw new Error('certificate decoder not loaded: await loadCertificateDecoder() first')
  const sha256 = sha256Hex(x.raw)
  let decoded = lruGet(decodedByCertificate, sha256)
  try {
    if (!decoded) {
      const subject = subjectOneLine(x.subject)
      const names = certificateNames(x.raw)
      decoded = {
        names,
        subject,
        subjectRfc4514: subject === undefined ? undefined : rfc4514Subject(subject),
        issuing: names.sans.uri.some((u) => SPIFFE_SCHEME_RE.test(u)) && issuingCertificate(x),
      }
      decodedByCertificate.set(sha256, decoded)
    }
  } catch {
    // Node accepted the DER, so the schema decoder rejecting it means a field it reads strictly is off
    return {
      failed: true,
      source,
      reason: 'malformed',
      detail: 'certificate names could not be decoded',
      fingerprint: sha256.slice(0, 16),
      attributes: safeAttributes(x),
    }
  }
  const { names } = decoded
  const notAfterMs = Date.parse(x.validTo)
  const fields: CertFields = {
    dnsSans: names.sans.dns,
    uriSans: names.sans.uri,
    sha256,
    issuing: decoded.issuing,
  }
  if (decoded.subject) {
    fields.subject = decoded.subject
    if (decoded.subjectRfc4514) fields.subjectRfc4514 = decoded.subjectRfc4514
  }
  if (names.cn) fields.cn = names.cn
  if (Number.isFinite(notAfterMs)) fields.notAfter = Math.floor(notAfterMs / 1000)
  return certEvidenceFromFields(fields, source, verified, via)
}

const BASE64_RE = /^[A-Za-z0-9+/]+={0,2}$/

/**
 * DER bytes of the first certificate in PEM-ish text. Tolerates the ways proxies mangle PEM into a header:
 * newlines replaced by spaces or tabs, or missing. Returns undefined when there is no well-formed block.
 */
export function firstPemCertificate(text: string): Buffer | undefined {
  const begin = text.indexOf(PEM_BEGIN)
  if (begin === -1) return undefined
  const end = text.indexOf(PEM_END, begin + PEM_BEGIN.length)
  if (end === -1) return undefined
  const body = text.slice(begin + PEM_BEGIN.length, end).replace(/\s+/g, '')
  if (body.length === 0 || !BASE64_RE.test(body)) return undefined
  return Buffer.from(body, 'base64')
}

/** Parses DER bytes as a certificate; undefined when they are not one. */
export function x509FromDer(der: Buffer): X509Certificate | undefined {
  try {
    return new X509Certificate(der)
  } catch {
    return undefined
  }
}

/** PEM (possibly mangled by a proxy) → evidence; Failure malformed when it is not a certificate. */
export function certEvidenceFromPem(
  pem: string,
  source: CertSource,
  verified: boolean,
  via?: ForwardedVia,
): CertEvidence | Failure {
  const der = firstPemCertificate(pem)
  const x = der ? x509FromDer(der) : undefined
  if (!x) return { failed: true, source, reason: 'malformed', detail: 'not a PEM certificate' }
  return certEvidenceFromX509(x, source, verified, via)
}
