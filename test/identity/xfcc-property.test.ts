// The XFCC parser against Envoy's format, generated: elements of random pairs (keys in any letter case, By,
// URI and DNS repeated, values of any printable ASCII and non-ASCII text holding `,;="\` and spaces) are
// written as Envoy's documentation and its own XFCC reader (the `XFCC_VALUE` formatter) have them, joined into
// a list, split over header lines joined as Node joins them, and parsed back: every element must give the
// fields that were written, and the identity must be the one of the rightmost element, the one the trusted hop
// appended. Arbitrary text never throws and stays within the size, element and pair bounds, and a quote in
// an unquoted value makes the header malformed (docs/reference.md, "Deviations and additions", how
// `X-Forwarded-Client-Cert` values are read).
//
// The format: elements separated by `,`, each `;`-separated `Key=Value` pairs; a value holding `,`, `;` or
// `=` is double-quoted, and inside the quotes `\"` is a quote and `\\` a backslash (Envoy's reader unescapes
// both; any other backslash is itself, so a writer may leave it as it is, as Envoy does, or escape it). OWS
// around a separator is no part of a value. Envoy writes Subject quoted, its RFC 4514 text as it is: its own
// escapes keep the quotes closed, and it is read with its backslashes. An empty value (Envoy's `URI=` for a
// certificate without a URI SAN, `Subject=""`) names nothing.
import { isDeepStrictEqual } from 'node:util'
import fc from 'fast-check'
import t from 'tap'
import { loadCertificateDecoder } from '../../src/identity/certificate.ts'
import { MAX_FORWARDED_HEADER_BYTES } from '../../src/identity/forwarded/headers.ts'
import {
  MAX_XFCC_ELEMENTS,
  parseXfcc,
  type XfccElement,
  xfccEvidence,
} from '../../src/identity/forwarded/xfcc.ts'
import { createForwardedCertExtractor } from '../../src/identity/sources/forwarded-cert.ts'
import type { CertEvidence, ConnectionInfo, Failure } from '../../src/types.ts'
import { checkProperty } from '../helpers/property.ts'

// the X.509 name decoder is loaded on demand (as the sidecar does before it reads a certificate)
await loadCertificateDecoder()

/** pairs one element may hold (xfcc.ts) */
const MAX_PAIRS_PER_ELEMENT = 64

const REPEATED = ['by', 'uri', 'dns'] as const
const SINGLE = ['hash', 'cert', 'chain', 'subject'] as const
type Key = (typeof REPEATED)[number] | (typeof SINGLE)[number]

const weighted = <T>(...choices: [T, number][]) =>
  fc.oneof(...choices.map(([value, weight]) => ({ arbitrary: fc.constant(value), weight })))

// printable ASCII, the characters of the grammar more often, and non-ASCII: Latin-1 (what Node makes of a
// header's bytes, U+00A0 among them, which is no OWS), and beyond
const printable = fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c))
const grammar = fc.constantFrom(',', ';', '=', '"', '\\', ' ', '\t')
const nonAscii = fc.constantFrom(
  '\u00a0',
  '\u00e9',
  '\u00ff',
  '\u0100',
  '\u03a9',
  '\u4e2d',
  '\u3000',
  '\u{1f600}',
)
const char = fc.oneof(
  { arbitrary: printable, weight: 6 },
  { arbitrary: grammar, weight: 3 },
  { arbitrary: nonAscii, weight: 1 },
)
const text = fc.array(char, { maxLength: 16 }).map((cs) => cs.join(''))

// a Subject as Envoy writes it: RDNs of RFC 4514 text, each value with its specials escaped
const rfc4514Value = (raw: string) =>
  raw
    .replace(/[\\",;+<>=]/g, (c) => `\\${c}`)
    .replace(/^[ #]/, (c) => `\\${c}`)
    .replace(/ $/, '\\ ')
const dnText = fc
  .array(fc.tuple(fc.constantFrom('CN', 'O', 'OU', 'C', 'UID', '2.5.4.45'), text), { maxLength: 3 })
  .map((rdns) => rdns.map(([attr, raw]) => `${attr}=${rfc4514Value(raw)}`).join(','))

const ows = weighted(['', 8], [' ', 3], ['\t', 1], ['  ', 1])
const flips = fc.array(fc.boolean(), { minLength: 1, maxLength: 7 })
const spell = (key: string, flip: boolean[]) =>
  [...key].map((c, i) => (flip[i % flip.length] ? c.toUpperCase() : c.toLowerCase())).join('')

interface Pair {
  key: Key
  value: string
  flip: boolean[]
  /** quoted though nothing in it needs quotes (Envoy quotes Cert and Chain always) */
  quote: boolean
  /** a backslash nothing follows that would make an escape is written `\\` too */
  escapeEvery: boolean
  before: string
  after: string
}

const pairOf = (key: Key) =>
  fc.record({
    key: fc.constant(key),
    value: key === 'subject' ? dnText : text,
    flip: flips,
    quote: fc.boolean(),
    escapeEvery: fc.boolean(),
    before: ows,
    after: ows,
  })

/** an element: each key once at most, By, URI and DNS any number of times, in any order */
const element: fc.Arbitrary<Pair[]> = fc
  .tuple(
    fc.array(fc.oneof(...REPEATED.map(pairOf)), { maxLength: 5 }),
    fc.subarray([...SINGLE]).chain((keys) => fc.tuple(...keys.map(pairOf))),
  )
  .map(([repeated, single]): Pair[] => [...repeated, ...single])
  .filter((pairs) => pairs.length > 0)
  .chain((pairs) => fc.shuffledSubarray(pairs, { minLength: pairs.length }))

const QUOTE_NEEDED = /[,;="]|^[ \t]|[ \t]$/

/** one value as an XFCC writer following Envoy's format writes it */
function writeValue(p: Pair): string {
  if (p.key === 'subject') return `"${p.value}"`
  if (!p.quote && !QUOTE_NEEDED.test(p.value)) return p.value
  let out = '"'
  for (let i = 0; i < p.value.length; i++) {
    const c = p.value[i]!
    const next = p.value[i + 1]
    if (c === '"') out += '\\"'
    else if (c === '\\')
      out += p.escapeEvery || next === '"' || next === '\\' || next === undefined ? '\\\\' : '\\'
    else out += c
  }
  return `${out}"`
}

const writeElement = (pairs: Pair[]) =>
  pairs.map((p) => `${p.before}${spell(p.key, p.flip)}=${writeValue(p)}${p.after}`).join(';')

/** the fields an element was written with, as the parser gives them */
function expected(pairs: Pair[]): XfccElement {
  const el: XfccElement = { by: [], uri: [], dns: [] }
  for (const p of pairs) {
    if (p.value === '') continue
    if (p.key === 'by' || p.key === 'uri' || p.key === 'dns') el[p.key].push(p.value)
    else el[p.key] = p.value
  }
  return el
}

const normalised = (el: XfccElement | undefined) =>
  el && {
    by: el.by,
    hash: el.hash,
    cert: el.cert,
    chain: el.chain,
    subject: el.subject,
    uri: el.uri,
    dns: el.dns,
  }

/** the elements spread over header lines, joined as Node joins repeated lines (", "), or with "," */
const header = fc
  .tuple(
    fc.array(element, { minLength: 1, maxLength: 5 }),
    fc.array(fc.boolean(), { minLength: 5, maxLength: 5 }),
    fc.constantFrom(', ', ','),
  )
  .map(([elements, breaks, join]) => {
    const lines: string[][] = [[]]
    elements.forEach((el, i) => {
      if (i > 0 && breaks[i]) lines.push([])
      lines[lines.length - 1]!.push(writeElement(el))
    })
    return { elements, lines: lines.map((l) => l.join(',')), value: lines.map((l) => l.join(',')).join(join) }
  })

t.test('XFCC written as Envoy writes it parses back to the fields written, element by element', async (t) => {
  checkProperty(
    t,
    'every element gives the keys and values written; the rightmost names the identity',
    fc.property(header, ({ elements, value }) => {
      const parsed = parseXfcc(value)
      if (!parsed || parsed.length !== elements.length) return false
      if (!elements.every((el, i) => isDeepStrictEqual(normalised(parsed[i]), normalised(expected(el)))))
        return false
      // the element the trusted hop appended alone decides: the same answer as that element sent alone, and
      // the SANs written in it
      const last = elements[elements.length - 1]!
      const ev = xfccEvidence(value)
      if (!isDeepStrictEqual(ev, xfccEvidence(writeElement(last)))) return false
      const { uri, dns } = expected(last)
      return 'failed' in ev || (isDeepStrictEqual(ev.uriSans, uri) && isDeepStrictEqual(ev.dnsSans, dns))
    }),
    3000,
  )
})

t.test('XFCC: arbitrary text never throws and stays within the bounds (size, elements, pairs)', async (t) => {
  const token = fc.constantFrom(
    'By=',
    'URI=',
    'DNS=',
    'Subject=',
    'Hash=',
    'Cert=',
    ',',
    ';',
    '"',
    '\\',
    '=',
    ' ',
  )
  const arbitrary = fc.oneof(
    fc.string({ maxLength: 300, unit: 'binary' }),
    fc.array(fc.oneof(token, char), { maxLength: 200 }).map((a) => a.join('')),
    fc.tuple(header, fc.integer({ min: 1, max: 40 })).map(([h, n]) => Array(n).fill(h.value).join(',')),
  )
  checkProperty(
    t,
    'parseXfcc gives nothing, or 1 to MAX_XFCC_ELEMENTS elements of at most 64 pairs; xfccEvidence answers',
    fc.property(arbitrary, (s) => {
      const parsed = parseXfcc(s)
      if (parsed !== undefined) {
        if (parsed.length < 1 || parsed.length > MAX_XFCC_ELEMENTS) return false
        for (const el of parsed) {
          const singles = [el.hash, el.cert, el.chain, el.subject].filter((v) => v !== undefined).length
          if (el.by.length + el.uri.length + el.dns.length + singles > MAX_PAIRS_PER_ELEMENT) return false
        }
      }
      const ev = xfccEvidence(s)
      return 'failed' in ev
        ? ev.source === 'xfcc' && (parsed !== undefined || ev.reason === 'malformed')
        : !!parsed
    }),
    2000,
  )
  checkProperty(
    t,
    'a list parses exactly when it has at most MAX_XFCC_ELEMENTS elements of at most 64 pairs each',
    fc.property(
      fc.array(fc.integer({ min: 1, max: MAX_PAIRS_PER_ELEMENT + 2 }), {
        minLength: 1,
        maxLength: MAX_XFCC_ELEMENTS + 3,
      }),
      (pairCounts) => {
        const value = pairCounts.map((n) => Array(n).fill('DNS=a').join(';')).join(',')
        const fits =
          pairCounts.length <= MAX_XFCC_ELEMENTS && pairCounts.every((n) => n <= MAX_PAIRS_PER_ELEMENT)
        return (parseXfcc(value) !== undefined) === fits
      },
    ),
    300,
  )
  // the header's size: what a trusted proxy sends is read up to 64 KiB, and a longer one is malformed
  const extractor = createForwardedCertExtractor({
    trustedProxies: ['127.0.0.0/8'],
    format: 'xfcc',
    toUpstream: 'sanitize_set',
  })
  const conn: ConnectionInfo = { remoteAddress: '127.0.0.1', remotePort: 0, tls: false }
  checkProperty(
    t,
    'a header of up to MAX_FORWARDED_HEADER_BYTES is read, a longer one is malformed',
    fc.property(
      fc.oneof(
        fc.integer({ min: MAX_FORWARDED_HEADER_BYTES - 3, max: MAX_FORWARDED_HEADER_BYTES + 3 }),
        fc.integer({ min: 100, max: 2 * MAX_FORWARDED_HEADER_BYTES }),
      ),
      (length) => {
        const head = 'By=spiffe://td/gw;URI=spiffe://td/client;DNS='
        const value = head + 'd'.repeat(length - head.length)
        const headers = { 'x-forwarded-client-cert': value }
        const ev = extractor.extract({ method: 'GET', path: '/', url: '/', headers }, conn) as
          | CertEvidence
          | Failure
        if (length > MAX_FORWARDED_HEADER_BYTES) return 'failed' in ev && ev.reason === 'malformed'
        return (
          !('failed' in ev) &&
          ev.spiffeId === 'spiffe://td/client' &&
          ev.dnsSans[0]?.length === length - head.length
        )
      },
    ),
    60,
  )
})

t.test(
  'XFCC: a quote in an unquoted value makes the header malformed; a backslash there is itself',
  async (t) => {
    const unquoted = fc
      .tuple(
        // not empty: a value that starts with a quote is a quoted one
        fc.array(fc.constantFrom(...'abcXYZ019/:.-_@%é'.split('')), { minLength: 1, maxLength: 6 }),
        fc.array(fc.constantFrom(...'abc/:.-'.split('')), { maxLength: 6 }),
      )
      .map(([a, b]) => [a.join(''), b.join('')] as const)
    checkProperty(
      t,
      'a value with a quote, escaped or not, outside quotes: no element is read, whichever element holds it',
      fc.property(
        header,
        unquoted,
        fc.constantFrom('"', '\\"'),
        fc.constantFrom(...REPEATED, ...SINGLE),
        fc.nat(),
        ({ elements }, [head, tail], quote, key, at) => {
          const bad = `${key}=${head}${quote}${tail}`
          const lines = elements.map(writeElement)
          const i = at % lines.length
          lines[i] = `${lines[i]};${bad}`
          const value = lines.join(',')
          const ev = xfccEvidence(value)
          return parseXfcc(value) === undefined && 'failed' in ev && ev.reason === 'malformed'
        },
      ),
      1000,
    )
    checkProperty(
      t,
      'an unquoted value with backslashes is read with them, as written',
      fc.property(
        unquoted,
        fc.array(fc.constantFrom('\\', '\\\\', '\\a', 'x\\'), { minLength: 1, maxLength: 3 }),
        ([head, tail], slashes) => {
          const v = `${head}${slashes.join('')}${tail}`
          return (
            isDeepStrictEqual(parseXfcc(`By=x;URI=${v};DNS=${v}`)?.[0]?.uri, [v]) &&
            parseXfcc(`DNS=${v}`)?.[0]?.dns[0] === v
          )
        },
      ),
      500,
    )
  },
)
