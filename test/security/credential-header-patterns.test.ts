// A rule may match a credential header (Authorization, Cookie, the api-key header, X-Auth-Token…) without
// capturing it, and such a pattern is often the credential itself (`authorization: Bearer <static token>`).
// /config masks it (redactConfig); `check`, a reload's log lines and `explain` quoted it, and `explain`'s rule
// trace quoted the request's credential beside it.
import t from 'tap'
import { formatDiagnostic, parseConfigText } from '../../src/config/loader.ts'
import type { Config } from '../../src/config/schema.ts'
import { compileRules, type RuleTrace } from '../../src/rules/rule-set.ts'
import { evidenceSet } from '../helpers/evidence.ts'

function config(yaml: string): Config {
  const r = parseConfigText(yaml, 'c.yaml')
  if (!r.ok) throw new Error(r.errors.map(formatDiagnostic).join('\n'))
  return r.config
}

t.test('a diagnostic about a credential header pattern does not quote it', async (t) => {
  const text = [
    'apiKeys:',
    '  header: x-partner-key',
    'identities:',
    '  - name: a',
    '    match: { header: { authorization: "Bearer s3cr3t-aaa{tok" } }',
    '  - name: b',
    '    match: { header: { X-Partner-Key: "s3cr3t-bbb}x" } }',
    '  - name: c',
    '    match: { header: { cookie: "sid=s3cr3t-ccc{1}" } }',
    '  - name: d',
    '    match: { header: { x-auth-token: "s3cr3t-ddd{a}{a}" } }',
    '  - name: e',
    '    match: { header: { x-request-source: "batch{" } }',
    '',
  ].join('\n')
  const r = parseConfigText(text, 'c.yaml')
  t.notOk(r.ok)
  if (r.ok) return
  const out = r.errors.map(formatDiagnostic)
  t.equal(out.length, 5, out.join('\n'))
  for (const line of out) t.notMatch(line, /s3cr3t/, `not quoted: ${line}`)
  t.match(out[0], /^c\.yaml:5:\d+ .*authorization.*unclosed "\{"/, 'still says which header and why')
  t.match(out[4], /invalid pattern "batch\{"/, 'a header that names no credential is quoted as before')
})

t.test("explain's rule trace never shows a credential header's value or pattern", async (t) => {
  const rules = compileRules(
    config(
      [
        'apiKeys: { header: x-partner-key }',
        'identities:',
        '  - { name: a, match: { header: { authorization: "Bearer s3cr3t-static-1" } } }',
        '  - { name: b, match: { header: { x-partner-key: "s3cr3t-static-2*" } } }',
        '  - { name: c, match: { header: { x-auth-token: "s3cr3t-static-3" } } }',
        '  - { name: d, match: { header: { x-request-source: "batch" } } }',
        '',
      ].join('\n'),
    ),
    { cacheSize: 0 },
  )
  const trace: RuleTrace[] = []
  const req = {
    method: 'GET',
    path: '/',
    url: '/',
    headers: {
      authorization: 'Bearer s3cr3t-request-1',
      'x-partner-key': 's3cr3t-request-2',
      'x-auth-token': 's3cr3t-request-3',
      'x-request-source': 'reports',
    },
  }
  rules.classify(evidenceSet({}), req, { remoteAddress: '127.0.0.1', remotePort: 1, tls: false }, trace)
  const reasons = trace.flatMap((r) => r.reasons)
  t.equal(reasons.length, 4)
  for (const reason of reasons.slice(0, 3)) {
    t.notMatch(reason, /s3cr3t/, `not shown: ${reason}`)
    t.match(reason, /does not match/, 'still says the rule failed on it')
  }
  t.equal(reasons[3], 'header.x-request-source: "reports" does not match "batch"', 'other headers as before')
})
