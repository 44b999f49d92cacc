// From the attacker's side, through the built bundle: identity names reach the upstream in x-nhi-identity,
// percent-encoded when they are not printable ASCII. A name that merely contains "%" escapes (a username the
// caller chose, captured from its token) must not read as another identity: decoding the header must give
// back the name the proxy attributed, so "%61dmin" is not "admin" and "caf%C3%A9" is not "café", and neither is
// "admin " (a header value's leading and trailing spaces are dropped by whoever parses it) "admin".
import t from 'tap'
import { request } from 'undici'
import { mintToken, startUpstreamAndJwks } from '../helpers/jwks.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

t.test('x-nhi-identity decodes to the attributed name, whatever "%" the name holds', async (t) => {
  const { upstream, key, jwks } = await startUpstreamAndJwks(t)
  const sidecar = await startTestSidecar(t, {
    upstream: upstream.url,
    jwt: { issuers: [{ issuer: jwks.url, jwksUri: jwks.jwksUri, audiences: ['orders'] }] },
    identities: [
      { name: '{user}', kind: 'human', match: { jwt: { claims: { preferred_username: '{user}' } } } },
    ],
  })
  const seen = new Map<string, string>()
  // a space at either end of a header value is not part of it (RFC 9110 §5.5): every HTTP parser drops it
  const names = [
    'admin',
    '%61dmin',
    'café',
    'caf%C3%A9',
    'caf%25C3%25A9',
    '100%',
    'a%2Fb',
    'a/b',
    'admin ',
    ' admin',
  ]
  for (const user of names) {
    const token = await mintToken(key, { preferred_username: user }, { issuer: jwks.url, audience: 'orders' })
    const res = await request(`${sidecar.proxyUrl}/echo`, { headers: { authorization: `Bearer ${token}` } })
    const headers = JSON.parse(await res.body.text()).headers as Record<string, string>
    t.equal(headers['x-nhi-verified'], 'true', `${user}: verified`)
    const header = headers['x-nhi-identity']!
    t.match(header, /^[\x20-\x7e]+$/, `${user}: printable ASCII`)
    t.equal(decodeURIComponent(header), user, `${user}: the header decodes to the name (${header})`)
    t.notOk(seen.has(header), `${user}: not the header of ${seen.get(header)}`)
    seen.set(header, user)
  }
  t.equal(seen.get('admin'), 'admin', 'a printable ASCII name without "%" is sent as it is')
})

// A token's claims are JSON, which can hold a lone UTF-16 surrogate; UTF-8 cannot. Sent as U+FFFD, `a\ud800`
// reached the upstream as the header of `a\ufffd`, another identity (two series, two audit names): it is
// written as its escape, as the metrics label and the audit line write it.
t.test('a lone surrogate in a name is its escape in x-nhi-identity, not U+FFFD', async (t) => {
  const { upstream, key, jwks } = await startUpstreamAndJwks(t)
  const sidecar = await startTestSidecar(t, {
    upstream: upstream.url,
    jwt: { issuers: [{ issuer: jwks.url, jwksUri: jwks.jwksUri, audiences: ['orders'] }] },
    identities: [
      { name: '{user}', kind: 'human', match: { jwt: { claims: { preferred_username: '{user}' } } } },
    ],
  })
  const cases = [
    ['a\ud800', 'a%5Cud800'],
    ['a\udc00b', 'a%5Cudc00b'],
    ['a\ufffd', 'a%EF%BF%BD'],
    ['a\ud83d\ude00', 'a%F0%9F%98%80'],
  ]
  for (const [user, sent] of cases) {
    const token = await mintToken(key, { preferred_username: user }, { issuer: jwks.url, audience: 'orders' })
    const res = await request(`${sidecar.proxyUrl}/echo`, { headers: { authorization: `Bearer ${token}` } })
    const headers = JSON.parse(await res.body.text()).headers as Record<string, string>
    t.equal(headers['x-nhi-identity'], sent, `${JSON.stringify(user)}: sent as ${sent}`)
  }
})
