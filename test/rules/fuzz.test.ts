// Property tests for rule patterns and route templates: client-controlled values (paths, header values,
// claims) are matched against operator patterns on every request, so no value may throw, captures must
// mean exactly what was sent, and the route label must stay inside the configured set.
import fc from 'fast-check'
import t from 'tap'
import { compilePattern, compileTemplate, patternError } from '../../src/rules/pattern.ts'
import { compileRoutes, OTHER_ROUTE, routeError } from '../../src/rules/routes.ts'
import { checkProperty } from '../helpers/property.ts'

const RUNS = 1500

const anyText = fc.string({ maxLength: 80, unit: 'binary' })
const patternChars = fc.constantFrom(...'ab/{}*:._-x \\^$().+?|['.split(''), '{n}', '{m}', '**', '/**')
const patternText = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.array(patternChars, { maxLength: 20 }).map((a) => a.join('')),
)

t.test(
  'patterns: arbitrary patterns and values never throw; captures are exactly the declared ones',
  async (t) => {
    checkProperty(
      t,
      'patternError decides compilePattern; match returns null or the declared capture names',
      fc.property(patternText, fc.array(anyText, { maxLength: 5 }), fc.boolean(), (p, values, ignoreCase) => {
        const error = patternError(p)
        let compiled: ReturnType<typeof compilePattern>
        try {
          compiled = compilePattern(p, { ignoreCase })
        } catch {
          return error !== undefined
        }
        if (error !== undefined) return false
        for (const v of values) {
          const m = compiled.match(v)
          if (m === null) continue
          if (Object.keys(m).sort().join() !== [...compiled.captures].sort().join()) return false
          if (Object.values(m).some((c) => c.length === 0)) return false
        }
        return true
      }),
      RUNS,
    )
  },
)

// Patterns made of literals and captures only: the captured values substituted back must reproduce the
// value, because the match is anchored on both ends and nothing else consumes input.
type Part = { lit: string } | { cap: true }
const literal = fc.string({ minLength: 1, maxLength: 6 }).filter((s) => !/[{}*]/.test(s))
const part: fc.Arbitrary<Part> = fc.oneof(
  literal.map((lit) => ({ lit })),
  fc.constant({ cap: true as const }),
)
const capValue = fc.string({ minLength: 1, maxLength: 8 }).filter((s) => !s.includes('/'))

function build(parts: Part[]): { pattern: string; names: string[] } {
  const names: string[] = []
  let pattern = ''
  for (const p of parts) {
    if ('lit' in p) pattern += p.lit
    else {
      const name = `c${names.length}`
      names.push(name)
      pattern += `{${name}}`
    }
  }
  return { pattern, names }
}

t.test('patterns: captures substituted back reproduce the input', async (t) => {
  checkProperty(
    t,
    'a value built from the pattern matches, and render(captures) === value',
    fc.property(
      fc.array(part, { minLength: 1, maxLength: 6 }),
      fc.array(capValue, { minLength: 6, maxLength: 6 }),
      (parts, fills) => {
        const { pattern, names } = build(parts)
        if (patternError(pattern) !== undefined) return true
        const value = compileTemplate(pattern).render(Object.fromEntries(names.map((n, i) => [n, fills[i]!])))
        const m = compilePattern(pattern).match(value)
        if (m === null) return false
        return compileTemplate(pattern).render(m) === value
      },
    ),
    RUNS,
  )
  checkProperty(
    t,
    'for any value that matches, render(captures) === value',
    fc.property(fc.array(part, { minLength: 1, maxLength: 5 }), anyText, (parts, value) => {
      const { pattern } = build(parts)
      if (patternError(pattern) !== undefined) return true
      const m = compilePattern(pattern).match(value)
      return m === null || compileTemplate(pattern).render(m) === value
    }),
    RUNS,
  )
})

t.test('patterns: in segment mode a capture never spans a "/" (no path traversal into a name)', async (t) => {
  const p = compilePattern('spiffe://cluster.local/ns/{ns}/sa/{sa}')
  checkProperty(
    t,
    'captures never contain "/"',
    fc.property(fc.string({ maxLength: 20 }), fc.string({ maxLength: 20 }), (a, b) => {
      const m = p.match(`spiffe://cluster.local/ns/${a}/sa/${b}`)
      return m === null || (!m['ns']!.includes('/') && !m['sa']!.includes('/'))
    }),
    RUNS,
  )
  t.equal(p.match('spiffe://cluster.local/ns/a/b/sa/c'), null, 'an extra segment does not match')
  t.same(p.match('spiffe://cluster.local/ns/../sa/x'), { ns: '..', sa: 'x' }, 'literal dots are values')
})

// Route templates from the configured grammar.
const seg = fc.constantFrom('api', 'v1', 'orders', 'users', 'x', 'healthz', 'a.b', 'with-dash')
const tmplSeg = fc.oneof(
  { weight: 3, arbitrary: seg },
  fc.constant('*'),
  fc.constant(':id'),
  fc.constant(':name'),
)
const template = fc
  .tuple(fc.array(tmplSeg, { maxLength: 5 }), fc.boolean())
  .map(([segs, open]) => `/${[...segs, ...(open ? ['**'] : [])].join('/')}`)
const pathSeg = fc.oneof(
  seg,
  fc.string({ minLength: 1, maxLength: 6 }).filter((s) => !s.includes('/')),
)
const path = fc
  .tuple(fc.array(pathSeg, { maxLength: 7 }), fc.boolean())
  .map(([segs, slash]) => `/${segs.join('/')}${slash && segs.length ? '/' : ''}`)

/** Straightforward segment-by-segment reference for the route grammar. */
function referenceMatch(templates: string[], p: string): string {
  const pathSegs = p.replace(/\/$/, '').split('/').slice(1)
  for (const tpl of templates) {
    if (routeError(tpl) !== undefined) continue
    const segs = tpl === '/' ? [] : tpl.replace(/\/$/, '').split('/').slice(1)
    const open = segs[segs.length - 1] === '**'
    const fixed = open ? segs.slice(0, -1) : segs
    if (open ? pathSegs.length < fixed.length : pathSegs.length !== fixed.length) continue
    if (fixed.every((s, i) => s === '*' || s.startsWith(':') || s === pathSegs[i])) return tpl
  }
  return OTHER_ROUTE
}

t.test(
  'routes: arbitrary input never throws and the label is a configured template or "other"',
  async (t) => {
    checkProperty(
      t,
      'labels stay within the configured set',
      fc.property(fc.array(fc.oneof(template, anyText), { maxLength: 6 }), anyText, (templates, p) => {
        const label = compileRoutes(templates).match(p)
        return label === OTHER_ROUTE || templates.includes(label)
      }),
      RUNS,
    )
  },
)

t.test(
  'routes: first configured template that matches wins, as a plain segment match would say',
  async (t) => {
    checkProperty(
      t,
      'compiled matcher agrees with the reference',
      fc.property(fc.array(template, { minLength: 1, maxLength: 6 }), path, (templates, p) => {
        return compileRoutes(templates).match(p) === referenceMatch(templates, p)
      }),
      RUNS * 2,
    )
    checkProperty(
      t,
      'a path built from a template is labelled with a template that matches it',
      fc.property(template, fc.array(pathSeg, { minLength: 8, maxLength: 8 }), (tpl, fills) => {
        const segs = tpl.split('/').slice(1)
        const concrete = `/${segs
          .map((s, i) =>
            s === '*' || s.startsWith(':') ? fills[i]! : s === '**' ? fills.slice(i).join('/') : s,
          )
          .join('/')}`
        return compileRoutes([tpl]).match(concrete) === tpl
      }),
      RUNS,
    )
  },
)
