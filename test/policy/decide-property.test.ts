// decide() takes the request's method and every method an override names (X-HTTP-Method-Override and its
// spellings, `?_method=`) over the rules in one pass, matching each rule's route at most once. It must decide
// exactly as the plain reading of the policy does: each method on its own, first rule whose methods and
// route match, the request's own method first, then the override methods in order, the first that is not
// allowed deciding. The reference below is that reading; route and identity patterns are matched by
// pattern.ts as the policy does (their own semantics are tested in test/rules).
import fc from 'fast-check'
import t from 'tap'
import type { Config } from '../../src/config/schema.ts'
import { compilePolicy } from '../../src/policy/policy.ts'
import { compilePattern, pathPatternWithoutTrailingSlash } from '../../src/rules/pattern.ts'
import type { Identity, Kind, PolicyDecision, RequestInfo, Source } from '../../src/types.ts'
import { checkProperty } from '../helpers/property.ts'

type PolicyConfig = Config['policy']
type AllowConfig = PolicyConfig['rules'][number]['allow'][number]

const OVERRIDE_HEADERS = ['x-http-method-override', 'x-http-method', 'x-method-override']

function decodeQueryPart(s: string): string {
  try {
    return decodeURIComponent(s.replaceAll('+', ' '))
  } catch {
    return s
  }
}

/** the methods the request's override headers, then its `_method` query parameters, name */
function referenceOverrides(req: RequestInfo): string[] {
  const methods: string[] = []
  for (const [name, value] of Object.entries(req.headers)) {
    if (!OVERRIDE_HEADERS.includes(name.toLowerCase().replaceAll('_', '-'))) continue
    for (const part of String(value).split(',')) if (part.trim()) methods.push(part.trim().toUpperCase())
  }
  const q = req.url.indexOf('?')
  if (q === -1) return methods
  for (const pair of req.url.slice(q + 1).split('&')) {
    const eq = pair.indexOf('=')
    if (eq === -1) continue
    const name = decodeQueryPart(pair.slice(0, eq)).split('\0')[0]!.trimStart().replace(/[. ]/g, '_')
    if (name !== '_method') continue
    const method = decodeQueryPart(pair.slice(eq + 1))
      .trim()
      .toUpperCase()
    if (method) methods.push(method)
  }
  return methods
}

function referenceAllows(a: AllowConfig, id: Identity): boolean {
  if (a.kind !== undefined && id.kind !== a.kind) return false
  if (a.team !== undefined && id.team !== a.team) return false
  const verified = a.verified ?? (a.identity !== undefined && a.source === undefined ? true : undefined)
  if (verified !== undefined && id.verified !== verified) return false
  if (a.source !== undefined && ![a.source].flat().includes(id.source)) return false
  if (a.identity !== undefined && compilePattern(a.identity).match(id.name) === null) return false
  return true
}

function referenceDecide(cfg: PolicyConfig, id: Identity, req: RequestInfo): PolicyDecision {
  const ignoreCase = cfg.pathCase === 'insensitive'
  const path = req.path.length > 1 && req.path.endsWith('/') ? req.path.slice(0, -1) : req.path
  const decideFor = (method: string): PolicyDecision => {
    for (const r of cfg.rules) {
      const methods = r.methods?.map((m) => m.toUpperCase()) ?? []
      if (methods.length > 0 && !methods.includes(method) && !(method === 'HEAD' && methods.includes('GET')))
        continue
      const route = compilePattern(pathPatternWithoutTrailingSlash(r.route), { separator: '/', ignoreCase })
      if (route.match(path) === null) continue
      const allowed = r.allow.some((a) => referenceAllows(a, id))
      const denied = cfg.mode === 'enforce' ? 'deny' : 'would_deny'
      return { decision: allowed ? 'allow' : denied, rule: r.name ?? r.route }
    }
    return { decision: 'allow', rule: 'default' }
  }
  const own = decideFor(req.method.toUpperCase())
  if (own.decision !== 'allow') return own
  for (const method of referenceOverrides(req)) {
    const other = decideFor(method)
    if (other.decision !== 'allow') return other
  }
  return own
}

// small alphabets, so that routes, methods and identities often meet
const segment = fc.constantFrom('a', 'b', 'A', '*', '**')
const route = fc
  .tuple(fc.array(segment, { maxLength: 3 }), fc.boolean())
  .map(([segments, slash]) => `/${segments.join('/')}${slash && segments.length > 0 ? '/' : ''}`)
const method = fc.constantFrom('GET', 'get', 'HEAD', 'POST', 'post', 'DELETE', 'delete', 'PUT', 'PATCH')
const kind = fc.constantFrom<Kind>('human', 'service', 'bot', 'unknown')
const source = fc.constantFrom<Source>('jwt', 'useragent', 'anonymous')
const allow = fc.record(
  {
    identity: fc.constantFrom('ops/*', 'alice', '*'),
    kind,
    team: fc.constantFrom('platform', 'web'),
    verified: fc.boolean(),
    source: fc.oneof(source, fc.array(source, { minLength: 1, maxLength: 2 })),
  },
  { requiredKeys: [] },
)
const rule = fc.record(
  {
    name: fc.constantFrom('r1', 'r2', 'r3', 'r4'),
    route,
    methods: fc.array(method, { maxLength: 3 }),
    allow: fc.array(allow, { maxLength: 2 }),
  },
  { requiredKeys: ['route', 'allow'] },
)
const policy: fc.Arbitrary<PolicyConfig> = fc.record({
  mode: fc.constantFrom('observe', 'enforce'),
  pathCase: fc.constantFrom('sensitive', 'insensitive'),
  rules: fc.array(rule, { maxLength: 5 }),
})
const identity: fc.Arbitrary<Identity> = fc
  .record({
    name: fc.constantFrom('ops/rotator', 'alice', 'bob', 'ops/a/b'),
    kind,
    source,
    verified: fc.boolean(),
    team: fc.option(fc.constantFrom('platform', 'web'), { nil: undefined }),
  })
  .map(({ team, ...id }) => ({ ...id, ...(team !== undefined ? { team } : {}), attributes: {} }))
const overrideHeader = fc.tuple(
  fc.constantFrom(
    'x-http-method-override',
    'X-HTTP-Method-Override',
    'x-http-method',
    'x_method_override',
    'X_Http_Method',
    'x-other',
    'user-agent',
  ),
  fc.constantFrom('DELETE', 'delete', 'put, get', ' ', 'post,,delete', 'GET', 'head', 'PATCH'),
)
const queryPair = fc.constantFrom(
  '_method=delete',
  '_method=',
  '%5Fmethod=PUT',
  '_method%00x=post',
  '.method=get',
  '+_method=head',
  '_method=%E0',
  '_method=pat+ch',
  '_method%=x',
  'method=DELETE',
  'x=1',
  'y',
)
const request: fc.Arbitrary<RequestInfo> = fc
  .record({
    // overrides are a POST's, mostly
    method: fc.oneof({ weight: 2, arbitrary: fc.constant('POST') }, { weight: 3, arbitrary: method }),
    segments: fc.array(fc.constantFrom('a', 'b', 'A', 'c'), { maxLength: 4 }),
    slash: fc.boolean(),
    headers: fc.array(overrideHeader, { maxLength: 3 }),
    query: fc.option(fc.array(queryPair, { maxLength: 3 }), { nil: undefined }),
  })
  .map(({ method, segments, slash, headers, query }) => {
    const path = `/${segments.join('/')}${slash && segments.length > 0 ? '/' : ''}`
    return {
      method,
      path,
      url: query === undefined ? path : `${path}?${query.join('&')}`,
      headers: Object.fromEntries(headers),
    }
  })

t.test('property: decide() decides as each method taken on its own over the rules', async (t) => {
  let byOverride = 0
  let denied = 0
  checkProperty(
    t,
    'the same decision and rule as the reference',
    fc.property(policy, identity, request, (cfg, id, req) => {
      const got = compilePolicy(cfg).decide(id, req)
      const want = referenceDecide(cfg, id, req)
      if (want.decision !== 'allow') denied++
      const ownOnly = referenceDecide(cfg, id, { ...req, headers: {}, url: req.path })
      if (ownOnly.decision === 'allow' && want.decision !== 'allow') byOverride++
      return got.decision === want.decision && got.rule === want.rule && Object.keys(got).length === 2
    }),
    5000,
  )
  // the cases that matter were drawn: a fair share denied, some of them only for an override's method
  t.ok(denied > 500, `denials drawn (${denied})`)
  t.ok(byOverride > 100, `denials that only an override method gets drawn (${byOverride})`)
})
