// Property tests for the parsers that see raw client input: the XFCC header parser and the SPIFFE ID
// validator. Nothing may throw, and what parses must mean exactly what was sent.
import fc from 'fast-check'
import t from 'tap'
import { loadCertificateDecoder } from '../../src/identity/certificate.ts'
import { MAX_XFCC_ELEMENTS, parseXfcc, xfccEvidence } from '../../src/identity/forwarded/xfcc.ts'
import { hasDuplicateMember } from '../../src/identity/jwt/token.ts'
import { isSpiffeId, parseSpiffeId } from '../../src/identity/spiffe.ts'
import { checkProperty } from '../helpers/property.ts'

// the X.509 name decoder is loaded on demand (as the sidecar does before it reads a certificate)
await loadCertificateDecoder()

// Characters that stress the XFCC grammar: separators, quotes, escapes, whitespace, percent-encoding.
const xfccAlphabet = fc.constantFrom(
  ...'abcXYZ019=;,"\\ \t%/:.-_@'.split(''),
  'By=',
  'Hash=',
  'Cert=',
  'URI=',
  'DNS=',
  'Subject=',
  '%2',
  '\u00e9',
  '\u0000',
)
const xfccText = fc.oneof(
  fc.string({ maxLength: 300 }),
  fc.array(xfccAlphabet, { maxLength: 120 }).map((a) => a.join('')),
)

t.test('XFCC: no input makes the parser throw; output is bounded', async (t) => {
  checkProperty(
    t,
    'parseXfcc / xfccEvidence never throw and stay within bounds',
    fc.property(xfccText, (s) => {
      const parsed = parseXfcc(s)
      if (parsed !== undefined && (parsed.length < 1 || parsed.length > MAX_XFCC_ELEMENTS)) return false
      const ev = xfccEvidence(s)
      if ('failed' in ev) return ev.source === 'xfcc' && typeof ev.reason === 'string'
      // evidence from a header is vouched for by a proxy, never by our own chain check
      return ev.source === 'xfcc' && ev.via === 'xfcc' && Array.isArray(ev.uriSans)
    }),
  )
})

t.test('XFCC: huge element counts are refused, not parsed without bound', async (t) => {
  const many = Array.from({ length: MAX_XFCC_ELEMENTS + 5 }, (_, i) => `By=spiffe://a/${i}`).join(',')
  t.equal(parseXfcc(many), undefined)
  const manyPairs = Array.from({ length: 500 }, () => 'DNS=a').join(';')
  t.equal(parseXfcc(manyPairs), undefined)
})

// A value of arbitrary text, serialised with XFCC quoting (backslash escapes).
const fieldValue = fc.string({ minLength: 1, maxLength: 40 })
const quote = (v: string) => `"${v.replace(/[\\"]/g, (c) => `\\${c}`)}"`
// Subject as Envoy quotes it: RFC 4514 text whose own escapes stay, read back as the text between the quotes;
// a quote no backslash stands before, and a backslash dangling at the end, are escaped to keep it closed
const dnText = (v: string) =>
  v.replace(/\\[\s\S]|\\$|"/g, (m) => (m === '"' ? '\\"' : m === '\\' ? '\\\\' : m))
const randomCase = (key: string, flips: boolean[]) =>
  [...key].map((c, i) => (flips[i % flips.length] ? c.toUpperCase() : c.toLowerCase())).join('')

const element = fc.record({
  by: fc.array(fieldValue, { maxLength: 2 }),
  subject: fc.option(fieldValue, { nil: undefined }),
  uri: fc.array(fieldValue, { maxLength: 2 }),
  dns: fc.array(fieldValue, { maxLength: 3 }),
  flips: fc.array(fc.boolean(), { minLength: 1, maxLength: 7 }),
})

t.test('XFCC: quoted values round-trip exactly, whatever they contain', async (t) => {
  checkProperty(
    t,
    'serialise → parse returns the same fields in the same order',
    fc.property(fc.array(element, { minLength: 1, maxLength: 4 }), (els) => {
      const text = els
        .map((e) => {
          const pairs: string[] = []
          for (const v of e.by) pairs.push(`${randomCase('by', e.flips)}=${quote(v)}`)
          if (e.subject !== undefined) pairs.push(`${randomCase('subject', e.flips)}="${dnText(e.subject)}"`)
          for (const v of e.uri) pairs.push(`${randomCase('uri', e.flips)}=${quote(v)}`)
          for (const v of e.dns) pairs.push(`${randomCase('dns', e.flips)}=${quote(v)}`)
          if (pairs.length === 0) pairs.push('Hash=""')
          return pairs.join(';')
        })
        .join(',')
      const parsed = parseXfcc(text)
      if (!parsed || parsed.length !== els.length) return false
      return els.every((e, i) => {
        const p = parsed[i]!
        return (
          JSON.stringify(p.by) === JSON.stringify(e.by) &&
          p.subject === (e.subject === undefined ? undefined : dnText(e.subject)) &&
          JSON.stringify(p.uri) === JSON.stringify(e.uri) &&
          JSON.stringify(p.dns) === JSON.stringify(e.dns)
        )
      })
    }),
  )
})

// Valid SPIFFE IDs by construction, from the spec's alphabets.
const tdChar = fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz0123456789.-_'.split(''))
const segChar = fc.constantFrom(...'abcxyzABCXYZ0123456789.-_'.split(''))
const trustDomain = fc.array(tdChar, { minLength: 1, maxLength: 30 }).map((a) => a.join(''))
const segment = fc
  .array(segChar, { minLength: 1, maxLength: 12 })
  .map((a) => a.join(''))
  .filter((s) => s !== '.' && s !== '..')
const validSpiffe = fc
  .tuple(trustDomain, fc.array(segment, { maxLength: 6 }))
  .map(([td, segs]) => `spiffe://${td}${segs.map((s) => `/${s}`).join('')}`)

t.test('SPIFFE: arbitrary text never throws; what validates re-serialises to itself', async (t) => {
  const text = fc.oneof(
    fc.string({ maxLength: 200 }),
    fc.string({ maxLength: 100 }).map((s) => `spiffe://${s}`),
    fc.tuple(validSpiffe, fc.string({ maxLength: 5 })).map(([id, s]) => id + s),
  )
  checkProperty(
    t,
    'parse(x) is an error, or trustDomain + path === x',
    fc.property(text, (s) => {
      const r = parseSpiffeId(s)
      if ('error' in r) return typeof r.error === 'string' && !isSpiffeId(s)
      return `spiffe://${r.trustDomain}${r.path}` === s && isSpiffeId(s)
    }),
  )
})

t.test('SPIFFE: valid by construction validates; each spec violation is rejected', async (t) => {
  checkProperty(
    t,
    'constructed IDs validate',
    fc.property(validSpiffe, (id) => isSpiffeId(id)),
  )
  const violations: Array<[string, (id: string) => string]> = [
    ['uppercase trust domain', (id) => id.replace('spiffe://', 'spiffe://A')],
    ['port', (id) => id.replace(/^(spiffe:\/\/[^/]+)/, '$1:8443')],
    ['userinfo', (id) => id.replace('spiffe://', 'spiffe://user@')],
    ['query', (id) => `${id}?x=1`],
    ['fragment', (id) => `${id}#frag`],
    ['trailing slash', (id) => `${id}/`],
    ['empty segment', (id) => `${id}//x`],
    ['dot segment', (id) => `${id}/../x`],
    ['single dot segment', (id) => `${id}/./x`],
    ['percent-encoded segment', (id) => `${id}/%2e%2e`],
    ['wrong scheme', (id) => id.replace('spiffe://', 'SPIFFE://')],
    ['no scheme', (id) => id.replace('spiffe://', '')],
    ['too long', (id) => `${id}/${'a'.repeat(2048)}`],
  ]
  for (const [name, mutate] of violations) {
    checkProperty(
      t,
      `rejected: ${name}`,
      fc.property(validSpiffe, (id) => !isSpiffeId(mutate(id))),
    )
  }
})

t.test('XFCC + SPIFFE: a URI SAN becomes the SPIFFE ID only when it is exactly one valid ID', async (t) => {
  checkProperty(
    t,
    'one valid URI → spiffeId; an invalid spiffe URI → spiffe_invalid failure',
    fc.property(
      fc.oneof(
        validSpiffe,
        validSpiffe.map((s) => `${s}/`),
        validSpiffe.map((s) => s.toUpperCase()),
      ),
      (uri) => {
        const ev = xfccEvidence(`By=spiffe://proxy/a;URI=${quote(uri)}`)
        if (isSpiffeId(uri)) return !('failed' in ev) && ev.spiffeId === uri
        if ('failed' in ev) return ev.reason === 'spiffe_invalid'
        // not recognised as a spiffe URI at all (e.g. upper-case scheme): never a SPIFFE identity
        return ev.spiffeId === undefined
      },
    ),
  )
  const two = xfccEvidence('URI=spiffe://a/x;URI=spiffe://a/y')
  t.ok('failed' in two && two.reason === 'spiffe_invalid', 'two URI SANs are not an X.509-SVID')
})

t.test('JWT JSON: duplicate member names are found at any depth, and only then', async (t) => {
  const json = fc.jsonValue({ maxDepth: 3 })
  checkProperty(
    t,
    'JSON.stringify output never has duplicates',
    fc.property(json, (v) => !hasDuplicateMember(JSON.stringify(v))),
  )
  checkProperty(
    t,
    'a repeated member anywhere is detected, even spelled with escapes',
    fc.property(
      fc.dictionary(fc.string({ maxLength: 6 }), json, { minKeys: 1, maxKeys: 4 }),
      fc.boolean(),
      fc.boolean(),
      (obj, nest, escaped) => {
        const [name] = Object.keys(obj)
        const text = JSON.stringify(obj)
        const key =
          escaped && name
            ? `"${[...name].map((c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`).join('')}"`
            : JSON.stringify(name)
        const dup = `${text.slice(0, -1)},${key}:1}`
        return hasDuplicateMember(nest ? `{"a":[1,${dup}]}` : dup)
      },
    ),
  )
  t.notOk(
    hasDuplicateMember('{"a":{"b":1},"b":2,"c":"{\\"a\\":1,\\"a\\":2}"}'),
    'same name at different depths',
  )
  // objects past 16 members are compared through a Set: both sides of that switch, at every position
  checkProperty(
    t,
    'objects with many members: a repeat is found before and after the switch to a Set, and only a repeat',
    fc.property(
      fc.uniqueArray(fc.string({ minLength: 1, maxLength: 3, unit: 'grapheme-ascii' }), {
        minLength: 1,
        maxLength: 40,
        size: 'max',
      }),
      fc.nat(),
      fc.boolean(),
      (names, pick, nest) => {
        const members = names.map((n, i) => `${JSON.stringify(n)}:${i % 3 === 0 ? '{"x":1}' : i}`)
        const clean = `{${members.join(',')}}`
        const repeated = JSON.stringify(names[pick % names.length]!)
        const dup = `{${members.join(',')},${repeated}:0}`
        const wrap = (s: string) => (nest ? `{"a":[1,${s}],"b":${s}}` : s)
        return !hasDuplicateMember(wrap(clean)) && hasDuplicateMember(wrap(dup))
      },
    ),
  )
  t.notOk(
    hasDuplicateMember('{"a":"a","b":["a","b"],"c":{"a":{"a":1}}}'),
    'a name repeated as a value or in an inner object',
  )
  t.ok(hasDuplicateMember('{"a":{"b":{"c":1}},"d":[{"e":1,"e":2}]}'), 'a repeat in an object inside an array')
  t.ok(hasDuplicateMember('{"a":{"b":1},"a":2}'), 'a repeat after an inner object')
})
