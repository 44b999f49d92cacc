// Classification is remembered per evidence object (a cached token's evidence is the same object on every
// request) and per evidence key, from a key's second request on: the remembered identity belongs to that rule
// set only, and never to another credential.
import t from 'tap'
import { parseConfigText } from '../../src/config/loader.ts'
import type { Config } from '../../src/config/schema.ts'
import { xfccEvidence } from '../../src/identity/forwarded/xfcc.ts'
import { classifyUserAgent } from '../../src/identity/useragent.ts'
import { compileRules } from '../../src/rules/rule-set.ts'
import type { CertEvidence, ConnectionInfo, JwtEvidence, RequestInfo } from '../../src/types.ts'
import { sha256Hex } from '../../src/util/fingerprint.ts'
import { evidenceSet } from '../helpers/evidence.ts'

function config(yaml: string): Config {
  const r = parseConfigText(yaml, 'test.yaml')
  if (!r.ok) throw new Error(r.errors.map((e) => e.message).join('\n'))
  return r.config
}
function jwt(sub: string): JwtEvidence {
  const claims = { iss: 'https://idp.example.com', sub }
  return {
    source: 'jwt',
    verified: true,
    issuer: claims.iss,
    claims,
    alg: 'RS256',
    fingerprint: sha256Hex(sub).slice(0, 16),
  }
}
const req: RequestInfo = { method: 'GET', path: '/', url: '/', headers: {} }
const conn: ConnectionInfo = { remoteAddress: '127.0.0.1', remotePort: 5000, tls: false }
const rulesFor = (team: string) =>
  compileRules(
    config(`identities:
  - name: "{sub}"
    team: ${team}
    match: { jwt: { claims: { sub: "{sub}" } } }`),
  )

t.test(
  'the same evidence object: one identity per rule set, a reloaded rule set decides afresh',
  async (t) => {
    const alice = jwt('alice')
    const before = rulesFor('payments')
    const once = before.classify(evidenceSet({ jwt: alice }), req, conn)
    t.equal(once.name, 'alice')
    const first = before.classify(evidenceSet({ jwt: alice }), req, conn)
    t.not(first, once, 'worked out again on its second request, and kept')
    t.equal(first.name, 'alice')
    t.equal(first.team, 'payments')
    t.equal(before.classify(evidenceSet({ jwt: alice }), req, conn), first, 'remembered for the same object')
    // a reload compiles a new rule set: the same credential gets the new rules' identity
    const after = rulesFor('billing')
    const reloaded = after.classify(evidenceSet({ jwt: alice }), req, conn)
    t.equal(reloaded.team, 'billing')
    t.not(reloaded, first)
    t.equal(
      before.classify(evidenceSet({ jwt: alice }), req, conn).team,
      'payments',
      'the old set is unchanged',
    )
  },
)

t.test('two credentials never share an identity', async (t) => {
  const rules = rulesFor('payments')
  const alice = jwt('alice')
  const bob = jwt('bob')
  t.equal(rules.classify(evidenceSet({ jwt: alice }), req, conn).name, 'alice')
  t.equal(rules.classify(evidenceSet({ jwt: bob }), req, conn).name, 'bob')
  t.equal(rules.classify(evidenceSet({ jwt: alice }), req, conn).name, 'alice')
  // an equal but distinct evidence object (the token verified again) gets the same identity
  t.equal(rules.classify(evidenceSet({ jwt: jwt('alice') }), req, conn).name, 'alice')
})

t.test('several credentials: remembered for that combination only', async (t) => {
  const rules = compileRules(
    config(`identities:
  - name: "{sub}"
    match: { jwt: { claims: { sub: "{sub}" } } }`),
  )
  const alice = jwt('alice')
  const bob = jwt('bob')
  const ua = classifyUserAgent('curl/8.5.0')
  t.equal(rules.classify(evidenceSet({ jwt: alice, useragent: ua }), req, conn).name, 'alice')
  t.equal(rules.classify(evidenceSet({ jwt: bob, useragent: ua }), req, conn).name, 'bob')
  t.equal(rules.classify(evidenceSet({ jwt: alice, useragent: ua }), req, conn).name, 'alice', 'hit')
  t.equal(
    rules.classify(evidenceSet({ useragent: ua }), req, conn).name,
    'ua:curl',
    'the user agent alone is not alice',
  )
})

t.test('an identity is kept from its second request on; one-off credentials never evict it', async (t) => {
  const rules = compileRules(
    config(`identities:
  - name: "{sub}"
    match: { jwt: { claims: { sub: "{sub}" } } }`),
    { cacheSize: 4 },
  )
  // equal but distinct evidence objects each time (a token verified again): only the key cache can answer
  const classify = (sub: string) => rules.classify(evidenceSet({ jwt: jwt(sub) }), req, conn)
  const once = classify('alice')
  const kept = classify('alice')
  t.not(kept, once, 'seen once: not kept, so the second request works it out again')
  t.equal(classify('alice'), kept, 'kept from the second request on')
  for (let i = 0; i < 40; i++) t.equal(classify(`once-${i}`).name, `once-${i}`)
  t.equal(classify('alice'), kept, 'forty one-off credentials, ten times the cache: still kept')
  const back = classify('once-3')
  t.equal(classify('once-3'), back, 'a one-off that comes back is kept from then on')
})

t.test(
  'one certificate forwarded with more or fewer of its fields: each request named by what it came with',
  async (t) => {
    const rules = compileRules(
      config(`identities:
  - name: "{ns}/{sa}"
    match: { spiffe: "spiffe://prod.example/ns/{ns}/sa/{sa}" }`),
    )
    // a front proxy sends the Hash of the certificate and the fields it is set to forward (Envoy's
    // set_current_client_cert_details); each XFCC header read makes a new evidence object
    const hash = sha256Hex('one client certificate')
    const classify = (xfcc: string) => {
      const ev = xfccEvidence(xfcc)
      if ('failed' in ev) throw new Error(ev.reason)
      return rules.classify(evidenceSet({ xfcc: ev }), req, conn)
    }
    const withUri = `Hash=${hash};URI=spiffe://prod.example/ns/pay/sa/api`
    const withSubject = `Hash=${hash};Subject="CN=orders,O=acme"`
    const hashOnly = `Hash=${hash}`
    for (let i = 0; i < 3; i++) t.equal(classify(withUri).name, 'pay/api', 'named by its SPIFFE ID, and kept')
    const bare = classify(hashOnly)
    t.equal(bare.name, hash.slice(0, 16), 'the hash alone names no SPIFFE ID')
    t.equal(bare.attributes['spiffe_id'], undefined)
    for (let i = 0; i < 3; i++) t.equal(classify(withSubject).name, 'orders', 'named by its subject')
    t.equal(classify(withUri).name, 'pay/api', 'still named by its SPIFFE ID')
    t.equal(classify(hashOnly).attributes['cert_subject'], undefined, 'no subject it was not sent with')
  },
)

t.test(
  'one mTLS certificate on connections that expire apart: each request keeps its own expiry',
  async (t) => {
    const rules = compileRules(
      config(`identities:
  - name: "{ns}/{sa}"
    match: { spiffe: "spiffe://prod.example/ns/{ns}/sa/{sa}" }`),
    )
    // The listener works an mTLS certificate's expiry out from the chain the client sent (an intermediate
    // that runs out first ends it): one certificate sent with its intermediate and without it (the listener's
    // client CA holds that one too) is the same hash with two expiries. Each connection's evidence is an object
    // of its own.
    const sha256 = sha256Hex('one client certificate')
    const leafEnds = 1_900_000_000
    const intermediateEnds = 1_899_000_000
    const connection = (notAfter: number): CertEvidence => ({
      source: 'mtls',
      verified: true,
      spiffeId: 'spiffe://prod.example/ns/pay/sa/api',
      uriSans: ['spiffe://prod.example/ns/pay/sa/api'],
      dnsSans: [],
      sha256,
      notAfter,
    })
    const classify = (notAfter: number) =>
      rules.classify(evidenceSet({ mtls: connection(notAfter) }), req, conn)
    for (let i = 0; i < 3; i++) {
      const withIntermediate = classify(intermediateEnds)
      t.equal(withIntermediate.name, 'pay/api')
      t.equal(withIntermediate.expiresAt, intermediateEnds, 'sent with its intermediate: when that ends')
    }
    for (let i = 0; i < 3; i++)
      t.equal(classify(leafEnds).expiresAt, leafEnds, 'sent alone: when the certificate itself ends')
    t.equal(classify(intermediateEnds).expiresAt, intermediateEnds, 'and with its intermediate again')
  },
)
