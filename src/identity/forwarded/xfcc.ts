// Envoy / Istio x-forwarded-client-cert. Grammar: elements separated by ","; each element is ";"-separated
// Key=Value pairs; keys are case-insensitive; a value may be double-quoted (commas and semicolons inside quotes
// do not split), where `\"` is a quote and `\\` a backslash, and any other backslash is itself, as Envoy's own
// XFCC reader (the XFCC_VALUE formatter) has it: Envoy's docs escape only the quote, so a writer that follows
// them leaves a backslash as it is. Several header lines are one list (Node joins them with ", ").
// Envoy writes Subject's RFC 4514 text between the quotes as it is, its own escapes (`\"`, `\\`, `\,`,
// `\CE`) included, so a quoted Subject keeps its backslashes: dropping them would merge hex pairs into
// text and turn escaped commas into separators.
// Each hop APPENDS its own element (Envoy's append_forward), so everything left of the rightmost element is
// whatever the client, or a hop before the trusted one, chose to send: only the RIGHTMOST element, the one
// the trusted proxy itself added, describes a certificate that proxy verified.
import { LRUCache } from 'lru-cache'
import type { CertEvidence, Failure } from '../../types.ts'
import { lruGet } from '../../util/lru-get.ts'
import {
  type CertFields,
  certEvidenceFromFields,
  certEvidenceFromX509,
  derSubject,
  dnWithUtf8,
  firstPemCertificate,
  readCommonName,
  rfc4514Subject,
  x509FromDer,
} from '../certificate.ts'
import { sha256HexOrUndefined, urlDecode } from './decode.ts'
import { malformed } from './headers.ts'

export interface XfccElement {
  by: string[]
  hash?: string
  /** URL-encoded PEM, as sent */
  cert?: string
  chain?: string
  subject?: string
  uri: string[]
  dns: string[]
}

export const MAX_XFCC_ELEMENTS = 32
const MAX_PAIRS_PER_ELEMENT = 64

const isOws = (c: string | undefined) => c === ' ' || c === '\t'

/**
 * OWS (spaces and tabs) around a separator is no part of a key or value, as in any HTTP field; other
 * whitespace is, such as the U+00A0 a header's byte 0xA0 reads as (String.trim() would drop it). A loop, not
 * a regex: `[\t ]+$` backtracks through a long run of spaces once per space.
 */
function trimOws(s: string): string {
  let start = 0
  let end = s.length
  while (start < end && isOws(s[start])) start++
  while (end > start && isOws(s[end - 1])) end--
  return start === 0 && end === s.length ? s : s.slice(start, end)
}

function newElement(): XfccElement {
  return { by: [], uri: [], dns: [] }
}

function assign(el: XfccElement, key: string, value: string): void {
  if (value === '') return
  switch (key) {
    case 'by':
      el.by.push(value)
      break
    case 'hash':
      el.hash = value
      break
    case 'cert':
      el.cert = value
      break
    case 'chain':
      el.chain = value
      break
    case 'subject':
      el.subject = value
      break
    case 'uri':
      el.uri.push(value)
      break
    case 'dns':
      el.dns.push(value)
      break
  }
}

/** Parses a whole XFCC header value; undefined when it is malformed or exceeds the bounds. */
export function parseXfcc(value: string): XfccElement[] | undefined {
  const elements: XfccElement[] = []
  let el = newElement()
  let pairs = 0
  let i = 0
  const n = value.length
  while (i < n) {
    while (i < n && (value[i] === ' ' || value[i] === '\t')) i++
    const eq = value.indexOf('=', i)
    if (eq === -1) return undefined
    const key = trimOws(value.slice(i, eq)).toLowerCase()
    if (key === '' || /[;,"]/.test(key)) return undefined
    const dn = key === 'subject'
    i = eq + 1
    let v = ''
    if (value[i] === '"') {
      i++
      let closed = false
      while (i < n) {
        const c = value[i]!
        if (c === '\\' && i + 1 < n) {
          const next = value[i + 1]!
          v += dn || (next !== '"' && next !== '\\') ? value.slice(i, i + 2) : next
          i += 2
        } else if (c === '"') {
          closed = true
          i++
          break
        } else {
          v += c
          i++
        }
      }
      if (!closed) return undefined
      while (i < n && (value[i] === ' ' || value[i] === '\t')) i++
      if (i < n && value[i] !== ';' && value[i] !== ',') return undefined
    } else {
      let j = i
      while (j < n && value[j] !== ';' && value[j] !== ',') j++
      v = trimOws(value.slice(i, j))
      if (v.includes('"')) return undefined
      i = j
    }
    if (++pairs > MAX_PAIRS_PER_ELEMENT) return undefined
    assign(el, key, v)
    if (i >= n) break
    const sep = value[i]
    i++
    if (sep === ',') {
      elements.push(el)
      if (elements.length >= MAX_XFCC_ELEMENTS) return undefined
      el = newElement()
      pairs = 0
    }
  }
  elements.push(el)
  return elements
}

/**
 * A Subject as the certificate's characters: the RFC 4514 hex pairs Envoy writes for each byte of a
 * non-ASCII character read as UTF-8 (see dnWithUtf8). A "%" is no escape there (Envoy writes it as it is,
 * and so do we): `caf%C3%A9` is that text, never `café`. Undefined when those hex pairs are not UTF-8.
 */
export function decodeSubject(v: string): string | undefined {
  return dnWithUtf8(v)
}

/** Evidence for the client the trusted hop itself verified: the rightmost element, the one it appended. */
export function xfccEvidence(value: string): CertEvidence | Failure {
  const elements = parseXfcc(value)
  const last = elements ? elements[elements.length - 1] : undefined
  if (!last) return malformed('x-forwarded-client-cert does not parse')
  return xfccElementEvidence(last)
}

export function xfccElementEvidence(el: XfccElement): CertEvidence | Failure {
  if (el.cert !== undefined) {
    const pem = urlDecode(el.cert)
    const der = pem === undefined ? undefined : firstPemCertificate(pem)
    const x = der ? x509FromDer(der) : undefined
    if (!x) return malformed('x-forwarded-client-cert Cert is not a URL-encoded PEM certificate')
    return certEvidenceFromX509(x, 'xfcc', true, 'xfcc')
  }
  const sha256 = sha256HexOrUndefined(el.hash)
  if (!sha256 && el.subject === undefined && el.uri.length === 0 && el.dns.length === 0) {
    return malformed('x-forwarded-client-cert element has no Hash, Cert, Subject, URI or DNS')
  }
  const fields = xfccCertFields(el.subject, el.uri, el.dns, sha256)
  return 'failed' in fields ? fields : certEvidenceFromFields(fields, 'xfcc', true, 'xfcc')
}

/** What an XFCC Subject says: the subject in both orders and its CN, or why it names nothing. */
type ReadSubject = { subject?: string; subjectRfc4514?: string; cn?: string } | Failure

/**
 * Subjects read, by their text as sent: a client's Subject comes again with each of its requests, and reading
 * it (escapes, both orders, the CN) is work done once. Bounded: the key is client input.
 */
const subjectsRead = new LRUCache<string, ReadSubject>({ max: 1024 })

/**
 * The certificate an element's Subject, URI, DNS and Hash describe, or the `malformed` failure of a Subject
 * that names nothing. `nhi-proxy test` reads a forwarded case's subject through here too, so that a rule test
 * names the certificate (or fails to) exactly as the live proxy does.
 */
export function xfccCertFields(
  subjectText: string | undefined,
  uriSans: string[],
  dnsSans: string[],
  sha256: string | undefined,
): CertFields | Failure {
  const fields: CertFields = { uriSans, dnsSans }
  if (sha256) fields.sha256 = sha256
  if (subjectText === undefined) return fields
  let read = lruGet(subjectsRead, subjectText)
  if (read === undefined) {
    read = readSubject(subjectText)
    subjectsRead.set(subjectText, read)
  }
  // a copy: whoever gets a failure may add to it
  if ('failed' in read) return { ...read }
  if (read.subject !== undefined) fields.subject = read.subject
  if (read.subjectRfc4514 !== undefined) fields.subjectRfc4514 = read.subjectRfc4514
  if (read.cn !== undefined) fields.cn = read.cn
  return fields
}

function readSubject(text: string): ReadSubject {
  const subject = decodeSubject(text)
  if (subject === undefined) {
    return malformed('x-forwarded-client-cert Subject has hex escapes that are not UTF-8')
  }
  // Envoy prints Subject in RFC 4514 order (the RDNs reversed): its first CN in DER order is the last one here
  const cn = readCommonName(subject, 'rfc4514')
  if ('malformed' in cn) return malformed(`x-forwarded-client-cert Subject: ${cn.malformed}`)
  const out: ReadSubject = {}
  if (subject) {
    // the certificate's subject as the other paths give it (DER order), and that one in RFC 4514 order again,
    // so that the same certificate has the same two texts on every path
    out.subject = derSubject(subject)
    out.subjectRfc4514 = rfc4514Subject(out.subject)
  }
  if (cn.cn) out.cn = cn.cn
  return out
}
