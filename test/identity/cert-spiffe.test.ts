import t from 'tap'
import { isSpiffeId, parseSpiffeId, spiffeNamespaceServiceAccount } from '../../src/identity/spiffe.ts'

// Cases follow the SPIFFE-ID standard §2 (scheme, trust domain, path, length) and the conformance
// cases the reference SDKs (go-spiffe) test against.
const VALID = [
  'spiffe://trustdomain',
  'spiffe://trustdomain/path',
  'spiffe://trustdomain/path/element',
  'spiffe://staging.example.com/payments/mysql',
  'spiffe://staging.example.com/payments/web-fe',
  'spiffe://k8s-west.example.com/ns/staging/sa/default',
  'spiffe://example.com/9eebccd2-12bf-40a6-b262-65fe0487d453',
  'spiffe://cluster.local/ns/default/sa/bookinfo-productpage',
  'spiffe://a.b-c_d/e.f-g_h/UPPER',
  'spiffe://td/...',
  `spiffe://td/${'a'.repeat(2048 - 'spiffe://td/'.length)}`,
]

const INVALID: [string, RegExp][] = [
  ['', /empty/],
  ['spiffe://', /trust domain is missing/],
  ['spiffe:///path', /trust domain is missing/],
  ['http://trustdomain/path', /scheme/],
  ['SPIFFE://trustdomain/path', /scheme/],
  ['spiffe:trustdomain/path', /scheme/],
  ['spiffe://TrustDomain/path', /trust domain has characters/],
  ['spiffe://trust$domain/path', /trust domain has characters/],
  ['spiffe://trustdomain:8080/path', /port/],
  ['spiffe://user@trustdomain/path', /userinfo/],
  ['spiffe://trustdomain/', /trailing slash/],
  ['spiffe://trustdomain/path/', /trailing slash/],
  ['spiffe://trustdomain//path', /empty path segment/],
  ['spiffe://trustdomain/./path', /dot segment/],
  ['spiffe://trustdomain/path/..', /dot segment/],
  ['spiffe://trustdomain/pa$th', /characters outside/],
  ['spiffe://trustdomain/pa%41th', /characters outside/],
  ['spiffe://trustdomain/path?query=1', /query/],
  ['spiffe://trustdomain/path#fragment', /fragment/],
  [`spiffe://td/${'a'.repeat(2048)}`, /2048/],
  [`spiffe://${'a'.repeat(256)}/x`, /255/],
]

t.test('valid SPIFFE IDs parse into trust domain and path', async (t) => {
  for (const id of VALID) {
    const r = parseSpiffeId(id)
    t.notOk('error' in r, `${id.slice(0, 60)} is valid`)
  }
  t.same(parseSpiffeId('spiffe://example.org/ns/a/sa/b'), { trustDomain: 'example.org', path: '/ns/a/sa/b' })
  t.same(parseSpiffeId('spiffe://example.org'), { trustDomain: 'example.org', path: '' })
})

t.test('invalid SPIFFE IDs are rejected with the reason', async (t) => {
  for (const [id, why] of INVALID) {
    const r = parseSpiffeId(id)
    t.ok('error' in r && why.test(r.error), `${id.slice(0, 60)} → ${'error' in r ? r.error : 'accepted'}`)
    t.notOk(isSpiffeId(id))
  }
})

t.test('kubernetes-style SPIFFE paths give namespace/serviceaccount', async (t) => {
  t.equal(spiffeNamespaceServiceAccount('spiffe://cluster.local/ns/ci/sa/nightly'), 'ci/nightly')
  t.equal(spiffeNamespaceServiceAccount('spiffe://cluster.local/payments/api'), undefined)
  t.equal(spiffeNamespaceServiceAccount('spiffe://cluster.local/ns/ci/sa/nightly/extra'), undefined)
})
