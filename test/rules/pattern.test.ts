import fc from 'fast-check'
import t from 'tap'
import {
  compilePattern,
  compileTemplate,
  normalisePattern,
  patternCaptures,
  patternError,
  patternExtent,
  segmentParam,
} from '../../src/rules/pattern.ts'
import { compileRoutes, routeError } from '../../src/rules/routes.ts'
import { PROPERTY_SEED } from '../helpers/property.ts'

const SEG = { separator: '/' }

t.test('segment mode: {name} captures one segment, * one segment, ** the rest', async (t) => {
  const spiffe = compilePattern('spiffe://cluster.local/ns/{ns}/sa/{sa}', SEG)
  t.same(spiffe.match('spiffe://cluster.local/ns/ci/sa/nightly'), { ns: 'ci', sa: 'nightly' })
  t.equal(spiffe.match('spiffe://cluster.local/ns/ci/sa/a/b'), null, 'a capture never spans segments')
  t.equal(spiffe.match('spiffe://cluster.local/ns//sa/x'), null, 'a capture is never empty')
  t.same(spiffe.captures, ['ns', 'sa'])

  const star = compilePattern('/api/*/orders', SEG)
  t.ok(star.match('/api/v1/orders'))
  t.notOk(star.match('/api/v1/v2/orders'))

  const rest = compilePattern('/admin/**', SEG)
  for (const p of ['/admin', '/admin/', '/admin/users', '/admin/a/b/c']) t.ok(rest.match(p), p)
  t.notOk(rest.match('/administrator'))
  t.notOk(rest.match('/other/admin'))
  t.ok(compilePattern('**', SEG).match('/anything/at/all'))
  t.ok(compilePattern('/a/**/z', SEG).match('/a/b/c/z'))
  t.ok(compilePattern('/a/**/z', SEG).match('/a/z'))

  const mid = compilePattern('/files/{name}.tgz', SEG)
  t.same(mid.match('/files/web-1.2.tgz'), { name: 'web-1.2' })
})

t.test('value mode: whole value, * any run of characters', async (t) => {
  const repo = compilePattern('{repo}')
  t.same(repo.match('acme/web'), { repo: 'acme/web' }, 'pattern without / captures the whole value')
  t.same(compilePattern('{org}/{repo}').match('acme/web'), { org: 'acme', repo: 'web' })
  const ua = compilePattern('kube-probe/*')
  t.ok(ua.match('kube-probe/1.30'))
  const glob = compilePattern('Mozilla*Chrome*')
  t.ok(glob.match('Mozilla/5.0 (X11) Chrome/126 Safari'), 'no / in pattern: * crosses slashes')
  t.notOk(glob.match('curl/8'))
  t.ok(compilePattern('*').match(''), '* matches the empty value')
  t.notOk(compilePattern('{x}').match(''), 'a capture is never empty')
  t.ok(compilePattern('GPTBot*', { ignoreCase: true }).match('gptbot/1.2'))
  t.notOk(compilePattern('GPTBot*').match('gptbot/1.2'))
})

t.test('literals are escaped, never regex', async (t) => {
  const p = compilePattern('a.b+(c)?[d]$^|\\')
  t.ok(p.match('a.b+(c)?[d]$^|\\'))
  t.notOk(p.match('aXbb(c)[d]'))
  t.ok(compilePattern('x.y').literal)
  t.notOk(compilePattern('x.y').match('xzy'))
})

t.test('malformed patterns are reported, not thrown at match time', async (t) => {
  t.match(patternError('{ns'), /unclosed/)
  t.match(patternError('a}b'), /unmatched/)
  t.match(patternError('{1x}'), /invalid capture name/)
  t.match(patternError('{a}/{a}'), /used twice/)
  t.match(patternError('/a**', SEG), /whole segment/)
  t.equal(patternError('/a/**', SEG), undefined)
  t.throws(() => compilePattern('{ns'))
})

t.test('templates fill captures', async (t) => {
  const tpl = compileTemplate('{ns}/{sa}')
  t.equal(tpl.render({ ns: 'ci', sa: 'nightly' }), 'ci/nightly')
  t.equal(tpl.render({ ns: 'ci' }), 'ci/unknown')
  t.equal(compileTemplate('plain').render({}), 'plain')
  t.equal(compileTemplate('ai/{agent}!').render({ agent: 'gptbot' }), 'ai/gptbot!')
})

t.test('route templates', async (t) => {
  const routes = compileRoutes([
    '/api/v1/orders/:id',
    '/api/v1/orders',
    '/healthz',
    '/static/**',
    '/api/*/items/:id',
  ])
  t.equal(routes.match('/api/v1/orders/42'), '/api/v1/orders/:id')
  t.equal(routes.match('/api/v1/orders/42/'), '/api/v1/orders/:id', 'trailing slash')
  t.equal(routes.match('/api/v1/orders'), '/api/v1/orders')
  t.equal(routes.match('/api/v1/orders/42/lines'), 'other')
  t.equal(routes.match('/healthz'), '/healthz')
  t.equal(routes.match('/static'), '/static/**')
  t.equal(routes.match('/static/a/b/c/d/e/f/g/h/i/j'), '/static/**', 'longer than any fixed template')
  t.equal(routes.match('/api/v2/items/9'), '/api/*/items/:id')
  t.equal(routes.match('/'), 'other')
  t.equal(routes.match(''), 'other')
  t.equal(compileRoutes([]).match('/x'), 'other')
  const first = compileRoutes(['/**', '/healthz'])
  t.equal(first.match('/healthz'), '/**', 'first in config order wins')
  t.equal(compileRoutes(['/']).match('/'), '/')
  t.match(routeError('api'), /start with/)
  t.match(routeError('/a/**/b'), /last segment/)
  t.match(routeError('/a/:1'), /invalid parameter/)
  t.match(routeError('/a/b*'), /whole segment/)
})

t.test('one parameter syntax: a whole segment :name is {name} in patterns and route templates', async (t) => {
  t.equal(segmentParam('{id}'), 'id')
  t.equal(segmentParam(':id'), 'id')
  for (const s of ['id', ':1x', '{1x}', ':', '{}', 'a:id', '{id', 'x{id}'])
    t.equal(segmentParam(s), undefined, s)

  const colon = compilePattern('/api/v1/orders/:id/lines/:line', SEG)
  const brace = compilePattern('/api/v1/orders/{id}/lines/{line}', SEG)
  for (const p of ['/api/v1/orders/42/lines/7', '/api/v1/orders/42/lines', '/api/v1/orders//lines/7']) {
    t.same(colon.match(p), brace.match(p), p)
  }
  t.same(colon.match('/api/v1/orders/42/lines/7'), { id: '42', line: '7' })
  t.same(colon.captures, ['id', 'line'])
  t.same(patternCaptures('spiffe://c/ns/:ns/sa/{sa}', SEG), ['ns', 'sa'], 'both spellings in one pattern')
  t.same(compilePattern('spiffe://c/ns/:ns/sa/:sa', SEG).match('spiffe://c/ns/ci/sa/x'), {
    ns: 'ci',
    sa: 'x',
  })
  t.equal(normalisePattern('/a/:x/**', SEG), normalisePattern('/a/{y}/**', SEG), 'same pattern for shadowing')
  t.match(patternError('/a/:id/b/{id}', SEG), /used twice/, 'one name, either spelling, once')

  // ':' stays literal where it does not start a whole segment, or outside segment mode
  t.ok(compilePattern('/v1/projects/p:batchGet', SEG).literal)
  t.ok(compilePattern('spiffe://c/ns/x', SEG).literal)
  t.ok(compilePattern('/a/:1x', SEG).literal, 'not a parameter name: literal, as before')
  t.ok(compilePattern(':id').literal, 'value mode: a header value ":id" is literal text')
  t.same(compilePattern('urn:acme:{x}').match('urn:acme:web'), { x: 'web' })

  const routes = compileRoutes(['/api/v1/orders/{id}', '/api/v2/orders/:id', '/x/{a}/:b'])
  t.equal(routes.match('/api/v1/orders/42'), '/api/v1/orders/{id}')
  t.equal(routes.match('/api/v2/orders/42'), '/api/v2/orders/:id')
  t.equal(routes.match('/x/1/2'), '/x/{a}/:b')
  t.equal(routes.match('/api/v1/orders/42/x'), 'other')
  t.equal(routeError('/a/{id}'), undefined)
  t.match(routeError('/a/{1x}'), /invalid parameter/)
  t.match(routeError('/a/v{id}'), /invalid parameter/, 'a parameter is a whole segment in route templates')
})

const segment = fc.stringMatching(/^[a-z0-9._-]{1,8}$/)
const path = fc.array(segment, { maxLength: 6 }).map((s) => `/${s.join('/')}`)

t.test('property: a pattern built from a path matches it and captures its segments', async (t) => {
  fc.assert(
    fc.property(
      fc.array(segment, { minLength: 1, maxLength: 6 }),
      fc.array(fc.boolean(), { minLength: 6, maxLength: 6 }),
      (segs, capture) => {
        const pattern = `/${segs.map((s, i) => (capture[i] ? `{c${i}}` : s)).join('/')}`
        const m = compilePattern(pattern, SEG).match(`/${segs.join('/')}`)
        if (!m) return false
        return segs.every((s, i) => !capture[i] || m[`c${i}`] === s)
      },
    ),
    { seed: PROPERTY_SEED },
  )
  t.pass('held')
})

t.test('property: matching never throws and literal patterns match only themselves', async (t) => {
  fc.assert(
    fc.property(fc.string({ maxLength: 40 }), fc.string({ maxLength: 60 }), (p, v) => {
      if (patternError(p) !== undefined) return true
      const compiled = compilePattern(p)
      const m = compiled.match(v)
      if (compiled.literal) return (m !== null) === (p === v)
      return m === null || typeof m === 'object'
    }),
    { numRuns: 2000, seed: PROPERTY_SEED },
  )
  t.pass('held')
})

t.test('property: ** matches every path under its prefix', async (t) => {
  fc.assert(
    fc.property(path, path, (prefix, rest) => {
      const p = compilePattern(`${prefix === '/' ? '' : prefix}/**`, SEG)
      return p.match(`${prefix === '/' ? '' : prefix}${rest}`) !== null
    }),
    { seed: PROPERTY_SEED },
  )
  t.pass('held')
})

t.test(
  'property: the route templater returns a configured template or "other", consistent with a naive matcher',
  async (t) => {
    const template = fc
      .array(fc.oneof(segment, fc.constant(':id'), fc.constant('*')), { maxLength: 5 })
      .map((s) => `/${s.join('/')}`)
    fc.assert(
      fc.property(fc.array(template, { maxLength: 6 }), path, (templates, p) => {
        const valid = templates.filter((x) => !routeError(x))
        const got = compileRoutes(valid).match(p)
        const naive = valid.find((tpl) => {
          const ts = tpl === '/' ? [] : tpl.split('/').slice(1)
          const ps = p === '/' ? [] : p.split('/').slice(1)
          return ts.length === ps.length && ts.every((s, i) => s === '*' || s.startsWith(':') || s === ps[i])
        })
        return got === (naive ?? 'other')
      }),
      { numRuns: 1000, seed: PROPERTY_SEED },
    )
    t.pass('held')
  },
)

// `check` warns of a policy identity entry no name can equal by its shortest match (semantic.ts): it must be
// exactly the length of the shortest value the matcher takes, or a pattern that can match is warned of, or one
// that cannot is not. Every value over the patterns' own characters up to that length is tried.
t.test('property: patternExtent gives the length of the shortest value a pattern matches', async (t) => {
  const alphabet = ['a', 'c', ':', '/']
  const valuesOf = (length: number): string[] =>
    length === 0 ? [''] : valuesOf(length - 1).flatMap((v) => alphabet.map((c) => v + c))
  const values = Array.from({ length: 6 }, (_, n) => valuesOf(n))
  let checked = 0
  fc.assert(
    fc.property(
      fc.array(fc.constantFrom('a', 'c', '/', '*', '**', '{c}', ':c', '/**'), { maxLength: 6 }),
      (parts) => {
        const p = parts.join('')
        if (patternError(p) !== undefined) return true
        const { shortest } = patternExtent(p)
        if (shortest > 5) return true
        checked++
        const compiled = compilePattern(p)
        const below = values.slice(0, shortest).flat()
        return (
          below.every((v) => compiled.match(v) === null) && values[shortest]!.some((v) => compiled.match(v))
        )
      },
    ),
    { numRuns: 1000, seed: PROPERTY_SEED },
  )
  t.ok(checked > 200, `${checked} valid patterns checked`)
  t.same(patternExtent('/admin/**'), { shortest: 6, prefix: '/admin/' }, '"/admin/**" matches "/admin"')
  t.same(patternExtent('{team}-*'), { shortest: 2, prefix: '' })
})
