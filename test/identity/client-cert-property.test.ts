// RFC 9440 `Client-Cert` against RFC 8941, generated: byte sequences of random DER-ish bytes (every length
// mod 3, so every padding) written as `:base64:` with or without their padding and with spaces or tabs
// around, and near-valid ones made from them: a colon left out, a character inserted, deleted or replaced
// (white space inside, `=` in the middle, the url-safe `-` and `_`, `,`, `;`, `*`, a non-breaking space,
// non-ASCII and control characters), the url-safe alphabet throughout, padding left out, short or one `=`
// too many, parameters after the item (`;a=1`), several byte sequences as a list with odd spacing (a proxy
// that writes a list, or the header sent twice and joined). The bytes decodeByteSequence takes must be the
// reference's, and a real certificate so written must name the client exactly when its bytes are taken.
//
// The reference parses the field as RFC 8941 §4.2 parses an Item whose bare item is a Byte Sequence
// (§4.2.7): OWS off the field (HTTP), leading and trailing spaces discarded, `:`, the content up to the next
// `:` only of ALPHA, DIGIT, `+`, `/` and `=`, base64-decoded (RFC 4648 §4) with padding synthesized when it is
// left out and non-zero pad bits allowed (as §4.2.7 asks of recipients), but failing where decoding fails: an
// `=` before the end, more than two, padding that does not end the last group of four, a last group of one
// character; then nothing after the item. One deliberate refusal: an item with parameters (`:…:;a=1`) is a
// valid RFC 8941 Item, but RFC 9440 defines no parameters for Client-Cert and the certificate must be the
// whole field, so it is refused like any invalid one (docs/reference.md, "Deviations and additions").
//
// `Client-Cert-Chain` (§2.3: a List of byte sequences, §4.2.1) is never read: the client is named by
// `Client-Cert` alone, so any chain, well-formed (members of random bytes, OWS around the commas) or not,
// leaves the answer as it is.
import fc from 'fast-check'
import t from 'tap'
import { firstPemCertificate, loadCertificateDecoder } from '../../src/identity/certificate.ts'
import { clientCertEvidence, decodeByteSequence } from '../../src/identity/forwarded/client-cert.ts'
import { createForwardedCertExtractor } from '../../src/identity/sources/forwarded-cert.ts'
import type { CertEvidence, ConnectionInfo, Failure } from '../../src/types.ts'
import { sha256Hex } from '../../src/util/fingerprint.ts'
import { applyEdit } from '../helpers/edits.ts'
import { createCA, issueCert } from '../helpers/pki.ts'
import { checkBothSides, checkProperty } from '../helpers/property.ts'

// the X.509 name decoder is loaded on demand (as the sidecar does before it reads a certificate)
await loadCertificateDecoder()

// ---- the reference -----------------------------------------------------------------------------------------

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'

/** RFC 4648 §4 with the padding already off: 6 bits a character, whole bytes kept, the rest pad bits */
function base64Decode(data: string): Buffer | undefined {
  if (data.length % 4 === 1) return undefined
  const out: number[] = []
  let value = 0
  let bits = 0
  for (const c of data) {
    value = (value << 6) | ALPHABET.indexOf(c)
    bits += 6
    if (bits >= 8) {
      bits -= 8
      out.push((value >> bits) & 0xff)
      value &= (1 << bits) - 1
    }
  }
  return Buffer.from(out)
}

type Reading = { bytes: Buffer } | 'parameters' | undefined

function referenceClientCert(field: string): Reading {
  // HTTP takes OWS off the field value; RFC 8941 then discards leading and trailing spaces (none left)
  const s = field.replace(/^[ \t]+|[ \t]+$/g, '')
  if (s[0] !== ':') return undefined
  const end = s.indexOf(':', 1)
  if (end === -1) return undefined
  const content = s.slice(1, end)
  if (![...content].every((c) => ALPHABET.includes(c) || c === '=')) return undefined
  const data = content.replace(/=+$/, '')
  const padding = content.length - data.length
  if (data.includes('=') || padding > 2 || (padding > 0 && content.length % 4 !== 0)) return undefined
  const bytes = base64Decode(data)
  if (!bytes) return undefined
  const rest = s.slice(end + 1)
  if (rest === '') return { bytes }
  return rest[0] === ';' ? 'parameters' : undefined
}

// ---- generated fields --------------------------------------------------------------------------------------

/** DER-ish: a SEQUENCE, SET, INTEGER or OCTET STRING tag and length, then random bytes, or random bytes */
const derish = fc.oneof(
  fc
    .tuple(fc.constantFrom(0x30, 0x31, 0x02, 0x04), fc.uint8Array({ maxLength: 40 }))
    .map(([tag, body]) => Buffer.concat([Buffer.from([tag, body.length]), body])),
  fc.uint8Array({ maxLength: 12 }).map((b) => Buffer.from(b)),
)

const ows = fc.constantFrom('', '', '', ' ', '\t', '  ', ' \t')

interface Written {
  bytes: Buffer
  padded: boolean
  before: string
  after: string
}

const written = fc.record({ bytes: derish, padded: fc.boolean(), before: ows, after: ows })

const base64Of = (w: Pick<Written, 'bytes' | 'padded'>) => {
  const b64 = w.bytes.toString('base64')
  return w.padded ? b64 : b64.replace(/=+$/, '')
}
const fieldOf = (w: Written) => `${w.before}:${base64Of(w)}:${w.after}`

const inserted = fc.oneof(
  fc.constantFrom(...ALPHABET),
  fc.constantFrom(' ', '\t', '  ', '=', '==', '-', '_', '.', ':', ',', ', ', ';', '*', '"', '?'),
  fc.constantFrom(
    '\u00a0',
    '\u00e9',
    '\u00ff',
    '\u0100',
    '\u2028',
    '\u3000',
    '\ufeff',
    '\x01',
    '\x7f',
    '\r\n',
  ),
)

type Mutation =
  | { kind: 'insert' | 'replace'; at: number; text: string }
  | { kind: 'delete'; at: number }
  | { kind: 'drop-colon'; last: boolean }
  | { kind: 'url-safe' }
  | { kind: 'padding'; text: string }
  | { kind: 'parameters'; text: string }
  | { kind: 'list'; other: Written; separator: string }

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constantFrom('insert' as const, 'replace' as const), at: fc.nat(), text: inserted }),
  fc.record({ kind: fc.constant('delete' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('drop-colon' as const), last: fc.boolean() }),
  fc.record({ kind: fc.constant('url-safe' as const) }),
  fc.record({ kind: fc.constant('padding' as const), text: fc.constantFrom('', '=', '==', '===') }),
  fc.record({
    kind: fc.constant('parameters' as const),
    text: fc.constantFrom(
      ';a=1',
      ';a',
      '; b="x"',
      ';c=?0',
      ';d=:AA==:',
      ';a=1;b=2',
      ';A=1',
      ';',
      ';a=',
      ' ;a',
    ),
  }),
  fc.record({
    kind: fc.constant('list' as const),
    other: written,
    separator: fc.constantFrom(',', ', ', ' , ', ',\t', ',,', ', ,'),
  }),
)

function mutate(s: string, m: Mutation): string {
  switch (m.kind) {
    case 'insert':
    case 'replace':
    case 'delete':
      return applyEdit(s, m)
    case 'drop-colon': {
      const i = m.last ? s.lastIndexOf(':') : s.indexOf(':')
      return i === -1 ? s : s.slice(0, i) + s.slice(i + 1)
    }
    case 'url-safe':
      return s.replace(/\+/g, '-').replace(/\//g, '_')
    case 'padding': {
      // the padding of the first byte sequence, whatever it was, replaced
      const m2 = /^([ \t]*:[^:=]*)=*:/.exec(s)
      return m2 ? `${m2[1]}${m.text}:${s.slice(m2[0].length)}` : s
    }
    case 'parameters':
      return s.replace(/[ \t]*$/, '') + m.text
    case 'list':
      return s.replace(/[ \t]*$/, '') + m.separator + fieldOf(m.other).trimStart()
  }
}

const nearValid = fc
  .tuple(written, fc.array(mutation, { minLength: 1, maxLength: 2 }))
  .map(([w, ms]) => ms.reduce(mutate, fieldOf(w)))

const field = fc.oneof(
  { arbitrary: written.map(fieldOf), weight: 3 },
  { arbitrary: nearValid, weight: 6 },
  { arbitrary: fc.string({ maxLength: 30 }), weight: 1 },
)

// ---- the properties ----------------------------------------------------------------------------------------

t.test('decodeByteSequence takes exactly the byte sequences RFC 8941 takes, with their bytes', async (t) => {
  checkProperty(
    t,
    'the same bytes as the reference, or nothing where the reference fails or finds parameters',
    fc.property(field, (s) => {
      const expected = referenceClientCert(s)
      const got = decodeByteSequence(s)
      return typeof expected === 'object' ? got?.equals(expected.bytes) === true : got === undefined
    }),
    5000,
  )
  checkProperty(
    t,
    'a byte sequence as written is read back, with or without its padding, whatever OWS is around it',
    fc.property(written, (w) => decodeByteSequence(fieldOf(w))?.equals(w.bytes) === true),
    1000,
  )
  const isByteSequence = (s: string) => typeof referenceClientCert(s) === 'object'
  const sample = checkBothSides(t, field, isByteSequence, [500, 1500], 'fields are byte sequences')
  const withParameters = sample.filter((s) => referenceClientCert(s) === 'parameters').length
  t.ok(withParameters > 20, `${withParameters} of them an item with parameters`)
})

t.test('a real certificate names the client exactly when its byte sequence is taken', async (t) => {
  const ca = await createCA('client-cert-ca')
  const leaf = await issueCert(ca, { cn: 'orders', uriSans: ['spiffe://cluster.local/ns/orders/sa/worker'] })
  const der = firstPemCertificate(leaf.certPem)!
  const caDer = firstPemCertificate(ca.certPem)!
  const leafSha = sha256Hex(der)
  // the certificate written as a proxy writes it, and the near-valid fields made from it
  const certificate = fc.record({
    bytes: fc.constantFrom(der, caDer),
    padded: fc.boolean(),
    before: ows,
    after: ows,
  })
  const certField = fc.oneof(
    certificate.map(fieldOf),
    fc
      .tuple(certificate, fc.array(mutation, { minLength: 1, maxLength: 2 }))
      .map(([w, ms]) => ms.reduce(mutate, fieldOf(w))),
  )
  checkProperty(
    t,
    'the evidence of the bytes the reference takes (their certificate, or malformed), malformed otherwise',
    fc.property(certField, (s) => {
      const expected = referenceClientCert(s)
      const ev = clientCertEvidence(s)
      if (typeof expected !== 'object') return 'failed' in ev && ev.reason === 'malformed'
      const canonical = clientCertEvidence(`:${expected.bytes.toString('base64')}:`)
      if (JSON.stringify(ev) !== JSON.stringify(canonical)) return false
      return !expected.bytes.equals(der) || (!('failed' in ev) && ev.sha256 === leafSha)
    }),
    1500,
  )

  // Client-Cert-Chain: a list of byte sequences (RFC 8941 §4.2.1), or anything, next to the certificate
  const member = fc.oneof(derish, fc.constantFrom(der, caDer)).map((bytes) => `:${bytes.toString('base64')}:`)
  const chain = fc.oneof(
    fc
      .tuple(fc.array(member, { minLength: 1, maxLength: 4 }), fc.constantFrom(',', ', ', ' ,  ', ',\t'))
      .map(([members, separator]) => members.join(separator)),
    field,
  )
  const extractor = createForwardedCertExtractor({
    trustedProxies: ['127.0.0.0/8'],
    format: 'rfc9440',
    toUpstream: 'sanitize_set',
  })
  const conn: ConnectionInfo = { remoteAddress: '127.0.0.1', remotePort: 0, tls: false }
  const extract = (headers: Record<string, string>) =>
    extractor.extract({ method: 'GET', path: '/', url: '/', headers }, conn) as CertEvidence | Failure
  checkProperty(
    t,
    'the answer is the one Client-Cert alone gives, whatever Client-Cert-Chain holds',
    fc.property(certField, chain, (cert, chainValue) => {
      const alone = extract({ 'client-cert': cert })
      const withChain = extract({ 'client-cert': cert, 'client-cert-chain': chainValue })
      return JSON.stringify(alone) === JSON.stringify(withChain)
    }),
    1000,
  )
})
