// A verified name is the credential's text (here a token's claim), which an IdP may fill with whatever a user
// typed. It leaves the proxy percent-encoded in `x-nhi-identity` (up to 9 bytes a character) and on every
// series line and audit line of the identity, so it is capped at 512 characters (docs/reference.md,
// "Deviations"): a longer one is cut and ends with `…#` and 16 hex digits of the whole name's SHA-256, so
// that two long names that begin alike stay two identities. Before the cap, a claim of a few thousand
// characters made the head (that header beside the token) larger than the upstream takes: every request of that
// caller failed there.
import { createHash } from 'node:crypto'
import t from 'tap'
import { request } from 'undici'
import { eventually } from '../helpers/eventually.ts'
import { mintToken, startUpstreamAndJwks } from '../helpers/jwks.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

const ISSUER = 'https://idp.long-names.test'
const AUDIENCE = 'orders'

/** what the docs say a verified name over 512 UTF-16 units becomes */
function capped(name: string): string {
  if (name.length <= 512) return name
  let cut = name.slice(0, 494)
  const last = cut.charCodeAt(cut.length - 1)
  if (last >= 0xd800 && last <= 0xdbff) cut = cut.slice(0, -1)
  return `${cut}…#${createHash('sha256').update(name, 'utf16le').digest('hex').slice(0, 16)}`
}

t.test('a verified name over 512 characters is cut with its digest; the caller is served', async (t) => {
  const { upstream, key, jwks } = await startUpstreamAndJwks(t)
  const sidecar = await startTestSidecar(t, {
    upstream: upstream.url,
    audit: { output: 'off', ringSize: 100 },
    jwt: { issuers: [{ issuer: ISSUER, jwksUri: jwks.jwksUri, audiences: [AUDIENCE] }] },
    identities: [
      {
        name: '{who}',
        kind: 'service',
        match: { jwt: { issuer: ISSUER, claims: { preferred_username: '{who}' } } },
      },
    ],
  })
  // uncut, each of the first two makes the head more than Node's 16 KiB: 1,700 three-byte characters are
  // 15.3 KB percent-encoded beside a token of 7.3 KB, 1,000 astral ones 12 KB beside 5.5 KB (a token is at
  // most 8 KiB, so no claim is longer than these by much)
  const cases = [
    { what: 'BMP, 1,700 units', who: '\u4e2d'.repeat(1700) },
    { what: 'astral, 2,000 units', who: '\u{1F600}'.repeat(1000) },
    // cut at 494, where the second half of a surrogate pair falls: the cut keeps the character whole
    { what: 'an odd cut', who: `x${'\u{1F600}'.repeat(400)}` },
    { what: 'same beginning, other end (1)', who: `${'a'.repeat(600)}-one` },
    { what: 'same beginning, other end (2)', who: `${'a'.repeat(600)}-two` },
    { what: 'exactly 512', who: 'b'.repeat(512) },
    { what: 'a lone surrogate past the cut', who: `${'c'.repeat(600)}\ud800` },
    { what: 'U+FFFD in its place', who: `${'c'.repeat(600)}\ufffd` },
  ]
  for (const c of cases) {
    const token = await mintToken(key, { preferred_username: c.who }, { issuer: ISSUER, audience: AUDIENCE })
    const res = await request(`${sidecar.proxyUrl}/echo`, {
      headers: { authorization: `Bearer ${token}`, 'x-request-id': `long-${cases.indexOf(c)}` },
    })
    await res.body.dump()
    t.equal(res.statusCode, 200, `${c.what}: served`)
    const got = upstream.received.at(-1)?.headers['x-nhi-identity']
    const name = decodeURIComponent(String(got))
    t.equal(name, capped(c.who), `${c.what}: x-nhi-identity is the capped name`)
    t.ok(name.length <= 512, `${c.what}: at most 512 units`)
    t.ok(String(got).length < 10_000, `${c.what}: the header is bounded`)
  }
  const ring = await eventually(
    async () => {
      const body = (await (await fetch(`${sidecar.adminUrl}/audit?limit=100`)).json()) as {
        events: { id?: string; request_id?: string; identity: string; verified: boolean }[]
      }
      return body.events.length >= cases.length ? body.events : undefined
    },
    { what: 'the audit ring holds every request' },
  )
  const names = new Set(ring.map((e) => e.identity))
  t.equal(names.size, cases.length, 'every name is its own identity, the two alike beginnings included')
  for (const c of cases) t.ok(names.has(capped(c.who)), `${c.what}: the audit line names the capped name`)
  t.ok(
    ring.every((e) => e.verified),
    'every one stays verified',
  )
})
