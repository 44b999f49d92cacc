// SPIFFE IDs against the SPIFFE-ID standard (standards/SPIFFE-ID.md §2), generated: valid IDs (trust domains
// of [a-z0-9._-] up to and past 255 bytes, paths of 0–5 segments of [a-zA-Z0-9._-], dots that are no dot
// segment, Kubernetes-shaped `/ns/NS/sa/SA` paths, totals around 2048 bytes) and near-valid ones made from
// them: a character inserted, deleted or replaced (separators, `%`, `@`, `:`, `?`, `#`, white space, control
// characters, non-ASCII ones that fold to ASCII letters), a letter's case changed or the whole ID upper-cased,
// a separator doubled, a character percent-encoded, a port, userinfo, query, fragment, trailing slash or dot
// segment added; and arbitrary text. parseSpiffeId must take exactly the IDs the reference below takes, with
// its trust domain and path, and every place an ID is read must agree: a certificate's URI SAN (an
// X.509-SVID), a JWT-SVID's `sub` under the `spiffe` profile, and the Kubernetes namespace/service account.
//
// The reference reads the standard's text: the scheme `spiffe`, then `//` and the authority (up to the first
// `/`, `?` or `#`), which is the trust domain: not empty, only [a-z0-9._-] (so no userinfo, no port, no
// percent-encoding, lower case), at most 255 bytes; then no path or one of `/`-separated segments that are not
// empty, not `.` or `..`, only [a-zA-Z0-9._-] (so no trailing slash, no percent-encoding); no query or
// fragment; at most 2048 bytes in all. The scheme is written in lower case: §2.4 reads scheme and trust domain
// case-insensitively, but §2.1 says the trust domain MUST be lowercase, and an ID is compared as the text it
// is (policy patterns, metrics), so `SPIFFE://…` is refused rather than taken as another spelling of an ID
// (as go-spiffe does); a URI SAN of that scheme in any case is still a SPIFFE ID, an invalid one
// (docs/reference.md, "Built-in knowledge").
import fc from 'fast-check'
import t from 'tap'
import { certEvidenceFromFields } from '../../src/identity/certificate.ts'
import { profileIdentity } from '../../src/identity/profiles.ts'
import { isSpiffeId, parseSpiffeId, spiffeNamespaceServiceAccount } from '../../src/identity/spiffe.ts'
import type { JwtEvidence } from '../../src/types.ts'
import { applyEdit } from '../helpers/edits.ts'
import { checkBothSides, checkProperty } from '../helpers/property.ts'

// ---- the reference -----------------------------------------------------------------------------------------

const LOWER = 'abcdefghijklmnopqrstuvwxyz'
const DIGITS = '0123456789'
const TRUST_DOMAIN_CHARS = `${LOWER}${DIGITS}._-`
const SEGMENT_CHARS = `${TRUST_DOMAIN_CHARS}${LOWER.toUpperCase()}`

interface ReferenceId {
  trustDomain: string
  path: string
}

const only = (text: string, allowed: string) => [...text].every((c) => allowed.includes(c))

function referenceSpiffeId(s: string): ReferenceId | undefined {
  if (Buffer.byteLength(s, 'utf8') > 2048) return undefined
  if (s.slice(0, 'spiffe://'.length) !== 'spiffe://') return undefined
  const rest = s.slice('spiffe://'.length)
  let end = 0
  while (end < rest.length && !'/?#'.includes(rest[end]!)) end++
  const trustDomain = rest.slice(0, end)
  if (trustDomain === '' || trustDomain.length > 255 || !only(trustDomain, TRUST_DOMAIN_CHARS))
    return undefined
  const path = rest.slice(end)
  if (path === '') return { trustDomain, path }
  // a query or fragment right after the authority
  if (path[0] !== '/') return undefined
  for (const segment of path.slice(1).split('/')) {
    if (segment === '' || segment === '.' || segment === '..' || !only(segment, SEGMENT_CHARS))
      return undefined
  }
  return { trustDomain, path }
}

/** `/ns/NS/sa/SA` and nothing else → "NS/SA" */
function referenceNamespaceServiceAccount(id: ReferenceId): string | undefined {
  const segments = id.path.split('/').slice(1)
  return segments.length === 4 && segments[0] === 'ns' && segments[2] === 'sa'
    ? `${segments[1]}/${segments[3]}`
    : undefined
}

// ---- generated IDs -----------------------------------------------------------------------------------------

const chars = (alphabet: string, minLength: number, maxLength: number) =>
  fc.array(fc.constantFrom(...alphabet), { minLength, maxLength }).map((cs) => cs.join(''))

const trustDomain = fc.oneof(
  { arbitrary: chars(TRUST_DOMAIN_CHARS, 1, 12), weight: 6 },
  { arbitrary: fc.constantFrom('example.org', 'cluster.local', 'td', '127.0.0.1', 'a_b-c.d'), weight: 2 },
  // either side of the 255-byte bound
  {
    arbitrary: fc
      .tuple(fc.integer({ min: 253, max: 257 }), fc.constantFrom(...TRUST_DOMAIN_CHARS))
      .map(([n, c]) => c.repeat(n)),
    weight: 1,
  },
)
const segment = fc.oneof(
  { arbitrary: chars(SEGMENT_CHARS, 1, 8), weight: 6 },
  { arbitrary: fc.constantFrom('ns', 'sa', 'default', 'payments'), weight: 2 },
  // dots that are a segment's characters, and the dot segments themselves
  { arbitrary: fc.constantFrom('...', '.a', 'a.', '.hidden', '..a', '-', '_', '.', '..'), weight: 1 },
)
const kubernetesPath = fc
  .tuple(
    fc.array(segment, { maxLength: 1 }),
    segment,
    segment,
    fc.array(segment, { maxLength: 1 }),
    fc.boolean(),
  )
  .map(([before, ns, sa, after, swap]) => [
    ...before,
    swap ? 'sa' : 'ns',
    ns,
    swap ? 'ns' : 'sa',
    sa,
    ...after,
  ])
const path = fc.oneof(fc.array(segment, { maxLength: 5 }), kubernetesPath)

const plainId = fc
  .tuple(trustDomain, path)
  .map(([td, segments]) => `spiffe://${td}${segments.map((s) => `/${s}`).join('')}`)

/** padded with one more segment to a total around the 2048-byte bound */
const longId = fc
  .tuple(plainId, fc.integer({ min: 2045, max: 2051 }), fc.constantFrom(...SEGMENT_CHARS))
  .map(([id, total, c]) => (total - id.length - 1 >= 1 ? `${id}/${c.repeat(total - id.length - 1)}` : id))

const id = fc.oneof({ arbitrary: plainId, weight: 8 }, { arbitrary: longId, weight: 1 })

// what a mutation puts in: the grammar's own characters, the URI delimiters, white space, controls, and
// non-ASCII characters, some of which a case-insensitive or Unicode-aware match folds to ASCII letters
// (U+212A KELVIN SIGN to k, U+017F LONG S to s, U+0130 to i)
const inserted = fc.oneof(
  { arbitrary: fc.constantFrom(...SEGMENT_CHARS), weight: 4 },
  { arbitrary: fc.constantFrom('/', ':', '@', '?', '#', '%', '%2F', '%41', '[', ']', '.', '..'), weight: 4 },
  { arbitrary: fc.constantFrom(' ', '\t', '\n', '\r', '\0', '\x7f', '\u00a0', '\u2028'), weight: 2 },
  {
    arbitrary: fc.constantFrom('\u00e9', '\u212a', '\u017f', '\u0130', '\uff41', '\u{1f600}', '\u00df'),
    weight: 2,
  },
)

type Mutation =
  | { kind: 'insert' | 'replace'; at: number; text: string }
  | { kind: 'delete' | 'flip-case'; at: number }
  | { kind: 'double' | 'percent-encode'; at: number }
  | { kind: 'upper-case' }
  | { kind: 'append'; text: string }
  | { kind: 'userinfo'; text: string }

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), text: inserted }),
  fc.record({ kind: fc.constant('replace' as const), at: fc.nat(), text: inserted }),
  fc.record({ kind: fc.constantFrom('delete', 'flip-case', 'double', 'percent-encode'), at: fc.nat() }),
  fc.record({ kind: fc.constant('upper-case' as const) }),
  fc.record({
    kind: fc.constant('append' as const),
    text: fc.constantFrom(
      '/',
      '//',
      '?',
      '?x=1',
      '#',
      '#f',
      ':8080',
      ':',
      '/.',
      '/..',
      '/a/',
      ' ',
      '\n',
      '%00',
    ),
  }),
  fc.record({ kind: fc.constant('userinfo' as const), text: fc.constantFrom('user@', 'u:p@', '@', ':') }),
)

function mutate(s: string, m: Mutation): string {
  switch (m.kind) {
    case 'insert':
    case 'replace':
    case 'delete':
    case 'flip-case':
      return applyEdit(s, m)
    case 'double': {
      const separators = [...s.matchAll(/[/:.]/g)].map((x) => x.index)
      if (separators.length === 0) return s
      const i = separators[m.at % separators.length]!
      return s.slice(0, i) + s[i] + s.slice(i)
    }
    case 'percent-encode': {
      const i = m.at % s.length
      const hex = s.charCodeAt(i).toString(16).padStart(2, '0')
      return `${s.slice(0, i)}%${m.at % 2 ? hex : hex.toUpperCase()}${s.slice(i + 1)}`
    }
    case 'upper-case':
      return s.toUpperCase()
    case 'append':
      return s + m.text
    case 'userinfo':
      return s.replace('://', `://${m.text}`)
  }
}

const nearValid = fc
  .tuple(id, fc.array(mutation, { minLength: 1, maxLength: 2 }))
  .map(([s, ms]) => ms.reduce(mutate, s))

const anyText = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.string({ maxLength: 40, unit: 'binary' }).map((s) => `spiffe://${s}`),
)

const candidate = fc.oneof(
  { arbitrary: id, weight: 3 },
  { arbitrary: nearValid, weight: 6 },
  { arbitrary: anyText, weight: 1 },
)

// ---- the properties ----------------------------------------------------------------------------------------

t.test(
  'parseSpiffeId takes exactly the IDs the standard takes, with their trust domain and path',
  async (t) => {
    checkProperty(
      t,
      'parseSpiffeId and isSpiffeId agree with the reference',
      fc.property(candidate, (s) => {
        const expected = referenceSpiffeId(s)
        const parsed = parseSpiffeId(s)
        if (isSpiffeId(s) !== (expected !== undefined)) return false
        if (expected === undefined) return 'error' in parsed
        return (
          !('error' in parsed) && parsed.trustDomain === expected.trustDomain && parsed.path === expected.path
        )
      }),
      4000,
    )
    checkBothSides(t, candidate, (s) => referenceSpiffeId(s) !== undefined, [400, 1600], 'IDs are valid')
  },
)

t.test('an X.509-SVID URI SAN names the ID exactly when the standard takes it', async (t) => {
  checkProperty(
    t,
    'a lone spiffe: URI SAN (the scheme in any case) is the SPIFFE ID or spiffe_invalid; any other URI is neither',
    fc.property(candidate, (s) => {
      const ev = certEvidenceFromFields({ dnsSans: [], uriSans: [s] }, 'mtls', true)
      if (!/^spiffe:/i.test(s)) return !('failed' in ev) && ev.spiffeId === undefined
      if (referenceSpiffeId(s) !== undefined) return !('failed' in ev) && ev.spiffeId === s
      return 'failed' in ev && ev.reason === 'spiffe_invalid'
    }),
    2000,
  )
  checkProperty(
    t,
    'a valid ID next to another URI SAN is spiffe_invalid (an X.509-SVID carries exactly one)',
    fc.property(id, fc.constantFrom('https://example.org/', 'urn:x', 'spiffe://other/x'), (s, other) => {
      fc.pre(referenceSpiffeId(s) !== undefined)
      const ev = certEvidenceFromFields({ dnsSans: [], uriSans: [s, other] }, 'mtls', true)
      return 'failed' in ev && ev.reason === 'spiffe_invalid'
    }),
    300,
  )
})

t.test('a JWT-SVID subject names a SPIFFE identity exactly when the standard takes it', async (t) => {
  const svid = (sub: string): JwtEvidence => ({
    source: 'jwt',
    verified: true,
    issuer: 'https://spire.example.org',
    claims: { iss: 'https://spire.example.org', sub },
    alg: 'ES256',
    fingerprint: '0123456789abcdef',
    profile: 'spiffe',
  })
  checkProperty(
    t,
    'the spiffe profile names the token by its sub when the sub is a valid SPIFFE ID, and falls back otherwise',
    fc.property(candidate, (s) => {
      fc.pre(s !== '')
      const identity = profileIdentity(svid(s))
      return referenceSpiffeId(s) === undefined
        ? identity.rule === 'builtin:profile:generic'
        : identity.rule === 'builtin:profile:spiffe' && identity.name === s && identity.kind === 'service'
    }),
    2000,
  )
})

t.test('the Kubernetes namespace and service account of a valid ID', async (t) => {
  checkProperty(
    t,
    'spiffeNamespaceServiceAccount gives NS/SA for a path of exactly /ns/NS/sa/SA, nothing otherwise',
    fc.property(id, (s) => {
      const expected = referenceSpiffeId(s)
      fc.pre(expected !== undefined)
      return spiffeNamespaceServiceAccount(s) === referenceNamespaceServiceAccount(expected)
    }),
    2000,
  )
})
