// Rule patterns are matched against client-controlled values (paths, headers, user agents, claims) on every
// request, so matching must take time linear in the value: a pattern like `{a}-{b}-{c}.x` compiled to a
// backtracking RegExp used to block the event loop for seconds on a few KiB of dashes.
import fc from 'fast-check'
import t from 'tap'
import { request } from 'undici'
import { compilePattern, patternError, referenceRegExp } from '../../src/rules/pattern.ts'
import { checkProperty } from '../helpers/property.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const KIB64 = 64 * 1024
const SEG = { separator: '/' }

t.test('a 64 KiB adversarial value is matched in linear time, in both modes', async (t) => {
  const cases: Array<[string, string, { separator?: string; ignoreCase?: boolean }?]> = [
    ['{a}-{b}-{c}.x', '-'.repeat(KIB64)],
    ['{a}-{b}-{c}-{d}!', '-'.repeat(KIB64)],
    ['*a*a*a*a*b', 'a'.repeat(KIB64)],
    ['{a}-{b}-{c}.x', '-'.repeat(KIB64), { ignoreCase: true }],
    ['/x/{a}-{b}-{c}', `/x/${'-'.repeat(KIB64)}/`, SEG],
    ['/**/{a}-{b}/**/z', `/${'-/'.repeat(KIB64 / 2)}`, SEG],
    ['spiffe://td/ns/{ns}/sa/{a}-{b}-{c}.x', `spiffe://td/ns/x/sa/${'-'.repeat(KIB64)}`, SEG],
  ]
  for (const [p, v, opts] of cases) {
    const compiled = compilePattern(p, opts)
    const started = performance.now()
    const m = compiled.match(v)
    const ms = performance.now() - started
    t.equal(m, null, `${p} does not match`)
    // Linear matching takes about a millisecond here; anything super-linear takes seconds to hours on 64 KiB
    // (n^2 alone is 4e9 steps), so the generous bound never trips on a busy machine but catches a regression.
    t.ok(ms < 1000, `${p} against ${v.length} characters took ${ms.toFixed(1)} ms (< 1 s)`)
  }
  // and a long value that does match still yields the greedy captures
  const m = compilePattern('{a}-{b}-{c}').match(`${'x'.repeat(KIB64)}-y-z`)
  t.same(m && { a: m.a!.length, b: m.b, c: m.c }, { a: KIB64, b: 'y', c: 'z' })
})

// The matcher must mean exactly what the RegExp form of the pattern means, captures included (greedy:
// each wildcard takes as much as it can while the rest still matches).
const piece = fc.constantFrom('a', 'b', '-', '/', '{x}', '{y}', '{z}', '*', '**', '/**', '/**/', 'A')
const patternArb = fc.array(piece, { maxLength: 8 }).map((a) => a.join(''))
const valueArb = fc
  .array(fc.constantFrom('a', 'b', '-', '/', 'A', ''), { maxLength: 14 })
  .map((a) => a.join(''))

t.test('property: the linear matcher agrees with the RegExp semantics of every pattern', async (t) => {
  checkProperty(
    t,
    'compilePattern(p).match(v) equals the reference RegExp, captures included',
    fc.property(
      patternArb,
      fc.array(valueArb, { maxLength: 8 }),
      fc.boolean(),
      fc.boolean(),
      (p, values, segment, ignoreCase) => {
        const opts = { ...(segment ? SEG : {}), ignoreCase }
        if (patternError(p, opts) !== undefined) return true
        const compiled = compilePattern(p, opts)
        const re = referenceRegExp(p, opts)
        for (const v of values) {
          const got = compiled.match(v)
          const exp = re.exec(v)
          if ((got === null) !== (exp === null)) return false
          if (got && exp) {
            for (let i = 0; i < compiled.captures.length; i++) {
              if (got[compiled.captures[i]!] !== exp[i + 1]) return false
            }
          }
        }
        return true
      },
    ),
    5000,
  )
})

t.test('a long header against a `{a}-{b}-{c}` rule does not stall the proxy', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const sidecar = await startTestSidecar(t, {
    service: 'orders',
    upstream: upstream.url,
    identities: [{ name: 'tenant/{a}', kind: 'service', match: { header: { 'x-tenant': '{a}-{b}-{c}.x' } } }],
  })
  const proxy = sidecar.proxyUrl
  // first the match (which also warms the connection and the code path up, so the timing below is the rule's)
  const ok = await request(`${proxy}/echo`, { headers: { 'x-tenant': 'acme-eu-1.x' } })
  const okBody = JSON.parse(await ok.body.text()) as { headers: Record<string, string> }
  // a header names nothing verified: the name is in the ua: namespace
  t.equal(okBody.headers['x-nhi-identity'], 'ua:tenant/acme', 'the rule still matches what it should')
  // 12 KiB fits Node's default 16 KiB header limit; the RegExp took minutes on this value
  const started = performance.now()
  const res = await request(`${proxy}/echo`, { headers: { 'x-tenant': '-'.repeat(12 * 1024) } })
  const body = JSON.parse(await res.body.text()) as { headers: Record<string, string> }
  const ms = performance.now() - started
  t.equal(res.statusCode, 200)
  t.notOk(body.headers['x-nhi-identity']?.includes('tenant/'), 'the rule does not match')
  t.ok(ms < 3000, `answered in ${ms.toFixed(0)} ms (< 3 s; the backtracking took minutes)`)
})
