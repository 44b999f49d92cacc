import { createHash } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { renderExplain } from '../../src/cli/explain-render.ts'
import { golden } from '../helpers/golden.ts'
import { alterSignature, createSigningKey, mintToken, startJwksServer } from '../helpers/jwks.ts'
import { limiter } from '../helpers/limit.ts'
import { createCA, generateKey, issueCert, makeCertificate } from '../helpers/pki.ts'
import { scratchDirSync } from '../helpers/scratch.ts'
import { runCli } from '../helpers/sidecar.ts'

// the subtests share nothing (each its own configs, keys and servers) and spend their time waiting on CLI
// processes: side by side, with at most four CLI processes of this file running at once
t.jobs = 4
const cliGate = limiter(4)

const GOOGLEBOT = 'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)'

interface ExplainArgs {
  config: string
  headers?: string[]
  token?: string
  cert?: string
  ua?: string
  method?: string
  path?: string
  json?: boolean
}

/** `nhi-proxy explain` through the built bundle */
async function explain(o: ExplainArgs): Promise<{ code: number; text: string }> {
  const args = ['explain', '-c', o.config]
  for (const h of o.headers ?? []) args.push('-H', h)
  if (o.token !== undefined) args.push('--token', o.token)
  if (o.cert !== undefined) args.push('--cert', o.cert)
  if (o.ua !== undefined) args.push('--ua', o.ua)
  if (o.method !== undefined) args.push('--method', o.method)
  if (o.path !== undefined) args.push('--path', o.path)
  if (o.json) args.push('--json')
  const r = await cliGate(() => runCli(args))
  return { code: r.code, text: r.stdout }
}

t.test('explain a crawler: every rule tried, why it failed, identity and policy', async (t) => {
  const r = await explain({
    config: 'config/examples/public-api-with-bots.yaml',
    ua: GOOGLEBOT,
    path: '/api/v1/search',
    headers: ['X-Api-Key: not-a-real-key', 'Accept: application/json'],
  })
  t.equal(r.code, 0)
  t.equal(r.text, golden('explain-crawler.txt', r.text))
  t.notMatch(r.text, /not-a-real-key/, 'credentials are never echoed')
})

t.test('an api key is never echoed, under the configured header or another spelling of it', async (t) => {
  const key = 'partner-key-5b2e9d71c4'
  const dir = scratchDirSync('explain-apikey')
  const config = join(dir, 'c.yaml')
  const sha256 = createHash('sha256').update(key).digest('hex')
  writeFileSync(
    config,
    `apiKeys:\n  header: x-service-token\n  keys: [{ name: partner, sha256: ${sha256} }]\n`,
  )
  const cases = ['X-Service-Token', 'x_service_token', 'X_API_KEY'].flatMap((header) =>
    [false, true].map((json) => ({ header, json })),
  )
  const [runs, r] = await Promise.all([
    Promise.all(cases.map(({ header, json }) => explain({ config, headers: [`${header}: ${key}`], json }))),
    explain({ config, headers: [`X-Service-Token: ${key}`] }),
  ])
  cases.forEach(({ header, json }, i) => {
    const out = runs[i]!
    t.equal(out.code, 0)
    t.notMatch(out.text, key, `${header}${json ? ' (--json)' : ''}: the key is not printed`)
    t.match(out.text, /<redacted>/, `${header}${json ? ' (--json)' : ''}: its header is shown masked`)
  })
  t.match(r.text, /apikey +verified name=partner/, 'the key is still read from the configured header')
})

// Credentials come in headers and query parameters of every vendor's naming: only authorization, cookie and
// the api-key header were masked, and a token in the path's query string was printed as given.
t.test('a -H without a colon is refused without echoing it: it is often a credential', async (t) => {
  for (const header of [
    'Authorization Bearer s3cret-bearer-7',
    's3cret-bare-token-8',
    'X-Api-Key=s3cret-9',
  ]) {
    const r = await explain({ config: 'config/examples/public-api-with-bots.yaml', headers: [header] })
    t.equal(r.code, 1, `${header.slice(0, 13)}…: exit 1`)
    t.match(r.text, /-H/, 'the message names the flag')
    t.notMatch(r.text, /s3cret/, `${header.slice(0, 13)}…: not printed`)
    const json = await explain({
      config: 'config/examples/public-api-with-bots.yaml',
      headers: [header],
      json: true,
    })
    t.notMatch(json.text, /s3cret/, `${header.slice(0, 13)}…: not in the --json errors either`)
  }
})

t.test('credential-looking headers and query parameters are never echoed', async (t) => {
  const secrets = [
    's3cret-auth-1',
    's3cret-api-2',
    's3cret-goog-3',
    's3cret-amz-4',
    's3cret-query-5',
    's3cret-sig-6',
  ]
  const r = await explain({
    config: 'config/examples/public-api-with-bots.yaml',
    headers: [
      `X-Auth-Token: ${secrets[0]}`,
      `Api-Key: ${secrets[1]}`,
      `X-Goog-Api-Key: ${secrets[2]}`,
      `X-Amz-Security-Token: ${secrets[3]}`,
      'X-Request-Source: batch-reports',
    ],
    path: `/api/v1/search?access_token=${secrets[4]}&page=2&X-Amz-Signature=${secrets[5]}`,
  })
  t.equal(r.code, 0)
  for (const secret of secrets) t.notMatch(r.text, secret, `${secret.slice(0, -2)}…: not printed`)
  t.match(r.text, /x-auth-token: <redacted>/, 'the header is shown, masked')
  t.match(r.text, /x-request-source: batch-reports/, 'a header that names no credential is shown')
  t.match(r.text, /access_token=redacted&page=2&X-Amz-Signature=redacted/, 'the query, secrets masked')
})

t.test('--json carries the same report', async (t) => {
  const r = await explain({
    config: 'config/examples/public-api-with-bots.yaml',
    ua: GOOGLEBOT,
    method: 'GET',
    path: '/',
    json: true,
  })
  t.equal(r.code, 0)
  const report = JSON.parse(r.text)
  t.match(report.identity, { name: 'crawler/googlebot', kind: 'bot', rule: 'crawlers' })
  t.equal(report.trace.length, 3)
  t.equal(report.decision.decision, 'allow')
  t.equal(report.request.method, 'GET')
})

t.test(
  '--json under policy off says the decision as the audit line does: none, nothing decided',
  async (t) => {
    const dir = scratchDirSync('explain-policy-off')
    const config = join(dir, 'off.yaml')
    writeFileSync(config, 'policy:\n  mode: off\n')
    const r = await explain({ config, ua: GOOGLEBOT, json: true })
    t.equal(r.code, 0)
    t.same(JSON.parse(r.text).decision, { decision: 'none', rule: 'off', skipped: true })
    const text = await explain({ config, ua: GOOGLEBOT })
    t.match(text.text, /^policy: off \(not evaluated\)$/m, 'the text says the same')
  },
)

/**
 * A JWKS server with one key, and a config file that trusts it (audience orders) with two identity rules, admins
 * by a groups claim and ci/{repo} by the repository claim of its tokens, then `more`.
 */
async function jwtConfig(t: Test, more = '') {
  const key = await createSigningKey('k1')
  const jwks = await startJwksServer([key])
  t.teardown(() => jwks.close())
  const config = join(scratchDirSync('explain'), 'c.yaml')
  writeFileSync(
    config,
    `jwt:
  issuers:
    - { issuer: "${jwks.url}", jwksUri: "${jwks.jwksUri}", audiences: [orders] }
identities:
  - { name: admins, rule: admins, kind: human, match: { jwt: { claims: { groups: admin } } } }
  - { name: "ci/{repo}", rule: ci, kind: job, match: { jwt: { issuer: "${jwks.url}", claims: { repository: "{repo}" } } } }
${more}`,
  )
  return { key, jwks, config }
}

t.test('explain a real token verified against a JWKS', async (t) => {
  const { key, jwks, config } = await jwtConfig(
    t,
    'policy:\n  mode: enforce\n  rules: [{ route: "/admin/**", allow: [{ kind: human }] }]\n',
  )
  const token = await mintToken(
    key,
    { repository: 'acme/web' },
    { issuer: jwks.url, audience: 'orders', subject: 'repo:acme/web' },
  )
  const forged = alterSignature(token)
  t.not(forged, token, 'precondition: the forged token is not the signed one')
  const [r, bad] = await Promise.all([
    explain({ config, token, path: '/admin/x' }),
    explain({ config, token: forged }),
  ])
  t.equal(r.code, 0)
  t.match(r.text, /jwt +verified iss=http:\/\/127\.0\.0\.1:\d+ sub=repo:acme\/web alg=RS256/)
  t.match(r.text, /no +#1 admins\n +jwt\.claims\.groups: claim not present/)
  t.match(r.text, /MATCH #2 ci\n +jwt: ok\n +captures: repo=acme\/web/)
  t.match(r.text, /identity: ci\/acme\/web\n +kind=job source=jwt verified=true rule=ci/)
  t.match(r.text, /policy: deny \(mode enforce, rule \/admin\/\*\*\)/)
  t.notMatch(r.text, new RegExp(token.slice(-20)), 'the token itself is never printed')
  t.match(r.text, /authorization: <redacted>/)

  t.equal(bad.code, 0)
  t.match(bad.text, /failure +jwt: bad_signature/)
  t.match(bad.text, /identity: anonymous/)
})

t.test('a token given as -H Authorization is verified as one given with --token', async (t) => {
  const { key, jwks, config } = await jwtConfig(t)
  const token = await mintToken(
    key,
    { repository: 'acme/api' },
    { issuer: jwks.url, audience: 'orders', subject: 'repo:acme/api' },
  )
  const [viaFlag, viaHeader, viaLowerCase] = await Promise.all([
    explain({ config, token, json: true }),
    explain({ config, headers: [`Authorization: Bearer ${token}`], json: true }),
    explain({ config, headers: [`authorization: bearer ${token}`], json: true }),
  ])
  for (const [how, r] of [
    ['--token', viaFlag],
    ['-H Authorization', viaHeader],
    ['-H authorization: bearer', viaLowerCase],
  ] as const) {
    t.equal(r.code, 0, how)
    t.match(JSON.parse(r.text).identity, { name: 'ci/acme/api', verified: true, source: 'jwt' }, how)
  }
})

t.test(
  'explain says when the proxy answers a request itself: 401 for an invalid token, 403 for a deny',
  async (t) => {
    const { key, jwks, config } = await jwtConfig(
      t,
      'policy:\n  mode: enforce\n  rules: [{ route: "/admin/**", allow: [{ kind: human }] }]\n',
    )
    const rejecting = join(scratchDirSync('explain'), 'reject.yaml')
    writeFileSync(
      rejecting,
      readFileSync(config, 'utf8').replace(
        'audiences: [orders] }',
        'audiences: [orders] }\n  onInvalid: reject',
      ),
    )
    const token = await mintToken(key, { repository: 'acme/web' }, { issuer: jwks.url, audience: 'orders' })
    const forged = alterSignature(token)
    const [invalid, invalidJson, attributed, denied, allowed] = await Promise.all([
      explain({ config: rejecting, token: forged }),
      explain({ config: rejecting, token: forged, json: true }),
      explain({ config, token: forged, json: true }),
      explain({ config, token, path: '/admin/x', json: true }),
      explain({ config, token, json: true }),
    ])
    t.match(
      invalid.text,
      /\nanswer: 401 from the proxy, not forwarded: \{"error":"invalid_token","reason":"bad_signature"\}/,
    )
    t.same(JSON.parse(invalidJson.text).reject, {
      status: 401,
      body: '{"error":"invalid_token","reason":"bad_signature"}',
    })
    t.equal(JSON.parse(attributed.text).reject, undefined, 'jwt.onInvalid attribute forwards it, unverified')
    t.equal(JSON.parse(denied.text).reject.status, 403, 'an enforced deny')
    t.equal(JSON.parse(allowed.text).reject, undefined, 'an allowed request is forwarded')
  },
)

t.test(
  'a header given twice is read as the proxy reads the two lines: joined, or the first user agent',
  async (t) => {
    const config = join(scratchDirSync('explain-repeated'), 'c.yaml')
    writeFileSync(
      config,
      'identities:\n  - { rule: tenants, name: "tenant/{tenant}", match: { header: { x-tenant: "{tenant}" } } }\n',
    )
    const [tenants, agents] = await Promise.all([
      explain({
        config,
        headers: ['X-Tenant: acme', 'x-tenant: globex', 'Cookie: a=1', 'Cookie: b=2'],
        json: true,
      }),
      explain({ config, headers: ['User-Agent: curl/8.5.0', 'User-Agent: GPTBot/1.2'], json: true }),
    ])
    const tenantReport = JSON.parse(tenants.text)
    t.equal(tenantReport.identity.name, 'ua:tenant/acme, globex', "a list field's lines joined with ', '")
    t.ok(tenantReport.request.headers.includes('cookie: <redacted>'), 'cookies are still never shown')
    t.equal(JSON.parse(agents.text).identity.name, 'ua:curl', 'the first User-Agent line, as Node keeps it')
  },
)

t.test(
  'two Host lines, or a Host that is not a host[:port], are refused as the proxy refuses them',
  async (t) => {
    const config = 'config/examples/public-api-with-bots.yaml'
    const [twice, malformed, json, one] = await Promise.all([
      explain({ config, headers: ['Host: orders.example', 'host: admin.example'] }),
      explain({ config, headers: ['Host: orders example'] }),
      explain({ config, headers: ['Host: orders.example', 'Host: admin.example'], json: true }),
      explain({ config, headers: ['Host: orders.example:8080'] }),
    ])
    t.equal(twice.code, 1)
    t.match(twice.text, /^Host: the proxy refuses a request with two Host lines with 400/)
    t.equal(malformed.code, 1)
    t.match(malformed.text, /^Host: the proxy refuses this Host with 400 \(not a host\[:port\]\)/)
    t.equal(json.code, 1)
    t.match(JSON.parse(json.text).errors[0], /two Host lines with 400/)
    t.equal(one.code, 0, 'one Host line is explained')
  },
)

t.test('explain a client certificate, verified against the configured clientCA', async (t) => {
  const [ca, other] = await Promise.all([createCA('explain-ca'), createCA('other-ca')])
  const [leaf, stranger] = await Promise.all([
    issueCert(ca, { cn: 'web', uriSans: ['spiffe://example.com/ns/shop/sa/web'] }),
    issueCert(other, { cn: 'x', uriSans: ['spiffe://example.com/ns/shop/sa/web'] }),
  ])
  const dir = scratchDirSync('explain')
  const config = join(dir, 'c.yaml')
  writeFileSync(
    config,
    `listen:
  https: { cert: ${leaf.certFile}, key: ${leaf.keyFile}, clientCA: ${ca.certFile} }
identities:
  - { name: "{ns}/{sa}", rule: workloads, kind: service, match: { spiffe: "spiffe://example.com/ns/{ns}/sa/{sa}", verified: true } }
`,
  )
  const [r, s] = await Promise.all([
    explain({ config, cert: leaf.certFile }),
    explain({ config, cert: stranger.certFile }),
  ])
  t.equal(r.code, 0)
  t.match(r.text, /mtls +verified spiffe:\/\/example\.com\/ns\/shop\/sa\/web/)
  t.match(r.text, /identity: shop\/web\n +kind=service source=mtls verified=true rule=workloads/)
  // as on the listener, a certificate from another issuer is a failure, not unverified evidence
  t.match(s.text, /failure +mtls: cert_untrusted/)
  t.notMatch(s.text, /mtls +unverified/)
  t.match(s.text, /identity: anonymous\n +kind=unknown source=anonymous verified=false/)
  t.match(s.text, /note: certificate is not issued by/)
})

t.test('explain judges a client certificate as the listener does: whole CA bundle, dates', async (t) => {
  const [ca, second] = await Promise.all([createCA('explain-ca'), createCA('second-ca')])
  const dir = scratchDirSync('explain')
  const bundle = join(dir, 'client-ca.pem')
  writeFileSync(bundle, ca.certPem + second.certPem)
  const config = join(dir, 'c.yaml')
  const [leaf, fromSecond, expired] = await Promise.all([
    issueCert(ca, { cn: 'web', uriSans: ['spiffe://example.com/ns/shop/sa/web'] }),
    // the listener verifies against every CA of the bundle
    issueCert(second, { cn: 'batch', uriSans: ['spiffe://example.com/ns/shop/sa/batch'] }),
    // and the listener refuses an expired certificate (cert_expired): it names nobody
    issueCert(ca, { cn: 'web', uriSans: ['spiffe://example.com/ns/shop/sa/web'], days: -1 }),
  ])
  writeFileSync(
    config,
    `listen:
  https: { cert: ${leaf.certFile}, key: ${leaf.keyFile}, clientCA: ${bundle} }
identities:
  - { name: "{ns}/{sa}", rule: workloads, kind: service, match: { spiffe: "spiffe://example.com/ns/{ns}/sa/{sa}", verified: true } }
`,
  )
  const [b, e] = await Promise.all([
    explain({ config, cert: fromSecond.certFile }),
    explain({ config, cert: expired.certFile }),
  ])
  t.equal(b.code, 0)
  t.match(b.text, /identity: shop\/batch\n +kind=service source=mtls verified=true rule=workloads/)
  t.equal(e.code, 0)
  t.match(e.text, /failure +mtls: cert_expired/)
  t.match(e.text, /identity: anonymous\n +kind=unknown source=anonymous verified=false/)
  // and one whose validity starts tomorrow (cert_not_yet_valid), as the listener does
  const early = await issueCert(ca, {
    cn: 'web',
    uriSans: ['spiffe://example.com/ns/shop/sa/web'],
    notBefore: new Date(Date.now() + 86_400_000),
  })
  const n = await explain({ config, cert: early.certFile })
  t.equal(n.code, 0)
  t.match(n.text, /failure +mtls: cert_not_yet_valid/)
  t.match(n.text, /identity: anonymous\n +kind=unknown source=anonymous verified=false/)
})

t.test('bad input exits 1', async (t) => {
  const [badConfig, badHeader, noCert, badAddr] = await Promise.all([
    explain({ config: 'test/golden/bad-config.yaml' }),
    explain({ config: 'config/nhi-proxy.yaml', headers: ['no colon'] }),
    explain({ config: 'config/nhi-proxy.yaml', cert: 'no/such.pem' }),
    // commander checks flags in the bin, not in runExplain: through the bin
    cliGate(() => runCli(['explain', '--remote-addr', 'notanip'], { env: { NHI_PROXY_CONFIG: undefined } })),
  ])
  t.equal(badConfig.code, 1, 'invalid config')
  t.equal(badHeader.code, 1, 'header without a colon')
  t.equal(noCert.code, 1, 'missing certificate file')
  t.equal(badAddr.code, 1, '--remote-addr that is no IP address')
  t.match(badAddr.stderr, /--remote-addr .*expected an IP address/)

  // with --json a script's parser gets JSON whatever happens: the errors as one document
  const [jsonBadConfig, jsonRefused] = await Promise.all([
    explain({ config: 'test/golden/bad-config.yaml', json: true }),
    explain({ config: 'config/nhi-proxy.yaml', path: '/admin%2fusers', json: true }),
  ])
  t.equal(jsonBadConfig.code, 1)
  const configErrors = JSON.parse(jsonBadConfig.text) as { errors: string[] }
  t.match(
    configErrors.errors[0],
    /^test\/golden\/bad-config\.yaml:\d+:\d+ /,
    '--json: the config errors, located',
  )
  t.equal(jsonRefused.code, 1)
  t.match(
    (JSON.parse(jsonRefused.text) as { errors: string[] }).errors,
    [/the proxy refuses this request target with 400/],
    '--json: the refusal',
  )
})

t.test(
  'a method the live proxy refuses (a lower-case letter) is reported refused, not decided',
  async (t) => {
    const config = 'config/examples/policy-enforce.yaml'
    const methods = ['get', 'Delete']
    const [refused, upper] = await Promise.all([
      Promise.all(methods.map((method) => explain({ config, method, path: '/admin/users' }))),
      explain({ config, method: 'GET', path: '/admin/users' }),
    ])
    methods.forEach((method, i) => {
      const r = refused[i]!
      t.equal(r.code, 1, `${method} exits 1`)
      t.equal(
        r.text,
        `${method}: the proxy refuses this request method with 400 (methods are case-sensitive: an HTTP/2 method with a lower-case letter is refused, and HTTP/1.1 cannot send one)\n`,
      )
    })
    t.equal(upper.code, 0)
    t.match(upper.text, /^request: GET \/admin\/users /m)
    t.match(upper.text, /^policy: deny \(mode enforce, rule admin\)$/m)
  },
)

t.test('rendering without the engine: anonymous request, no rules', async (t) => {
  const lines = renderExplain({
    request: { method: 'GET', path: '/', remoteAddr: '10.0.0.1', headers: [] },
    evidence: {
      credentials: [],
      failures: [{ failed: true, source: 'xfcc', reason: 'untrusted_forwarder' }],
      anomalies: ['spoofed_header'],
    },
    trace: [],
    ruleCount: 0,
    identity: {
      name: 'anonymous',
      kind: 'unknown',
      source: 'anonymous',
      verified: false,
      rule: 'builtin:anonymous',
      attributes: {},
    },
    decision: { decision: 'allow', rule: 'off', skipped: true },
    policyMode: 'off',
    route: 'other',
    notes: [],
  })
  const text = `${lines.join('\n')}\n`
  t.equal(text, golden('explain-anonymous.txt', text))
})

/** what a terminal would act on: C0 (but the line breaks of the output), DEL, C1, bidi overrides, separators */
const CONTROL = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u200e\u200f\u2028-\u202e\u2066-\u2069]/

t.test('values from the request are printed with control characters escaped', async (t) => {
  const { key, jwks, config } = await jwtConfig(t)
  const token = await mintToken(
    key,
    { repository: 'acme\nidentity: admin', groups: 'ops\u001b[2J' },
    { issuer: jwks.url, audience: 'orders', subject: 'osc\u001b]0;owned\u0007' },
  )
  // the report, and the lines printed instead of a report
  const [r, path, method, upperMethod, header] = await Promise.all([
    explain({
      config,
      token,
      method: 'GET',
      path: 'http://evil\u001b]0;x\u0007/admin',
      ua: 'rtl\u202etxt.exe',
      headers: ['X-Request-Id: csi\u001b[31mred', 'X-Trace\u0007: cr\roverwritten'],
    }),
    explain({ config, path: '/a\u001b]0;x\u0007' }),
    explain({ config, method: 'get\u001b[2J' }),
    explain({ config, method: 'GET\u009b31M' }),
    explain({ config, headers: ['no colon\u001b[2J'] }),
  ])
  t.equal(r.code, 0)
  t.notMatch(r.text, CONTROL, 'no control character reaches the terminal')
  t.notOk(
    r.text.split('\n').some((line) => line.startsWith('identity: admin')),
    'a newline in a value starts no line of its own',
  )
  t.match(r.text, 'sub=osc\\x1b]0;owned\\x07', 'a claim is shown, escaped')
  t.match(r.text, 'identity: ci/acme\\nidentity: admin', 'the name is shown with the newline as \\n')
  t.match(r.text, 'captures: repo=acme\\nidentity: admin')
  t.match(r.text, 'request: GET http://evil\\x1b]0;x\\x07/admin from')
  t.match(r.text, 'x-request-id: csi\\x1b[31mred')
  t.match(r.text, 'x-trace\\x07: cr\\roverwritten')
  t.match(r.text, 'user-agent: rtl\\u202etxt.exe')

  // the lines printed instead of a report
  for (const [what, out] of [
    ['refused path', path],
    ['refused method', method],
    ['refused method without a lower-case letter', upperMethod],
    ['invalid header', header],
  ] as const) {
    t.equal(out.code, 1, `${what} exits 1`)
    t.notMatch(out.text, CONTROL, `${what}: no control character reaches the terminal`)
  }
  t.match(path.text, '/a\\x1b]0;x\\x07: the proxy refuses this request target')
  t.match(header.text, /^-H #1 is not 'Name: value'/)
  t.match(method.text, 'get\\x1b[2J: the proxy refuses this request method')
  t.match(
    upperMethod.text,
    'GET\\x9b31M: the proxy refuses this request method with 400 (a method is a token',
  )
})

// explain checked a client certificate's path by names, signatures, dates and purpose only. The listener's
// OpenSSL also needs every issuer to be a CA, the names within each CA's name constraints, and the chain to
// end at a self-signed CA in clientCA: explain said `verified` for chains the listener refuses.
t.test(
  'explain refuses the chains the listener refuses: non-CA issuers, name constraints, no root',
  async (t) => {
    const ca = await createCA('explain-strict-ca')
    const dir = scratchDirSync('explain-strict')
    const [notCa, constrained] = await Promise.all([
      issueCert(ca, { cn: 'not-a-ca' }),
      issueCert(ca, {
        cn: 'constrained',
        intermediate: true,
        extensions: ['nameConstraints=critical,permitted;URI:allowed.org'],
      }),
    ])
    const asCa = (pair: typeof notCa, name: string) => ({ ...pair, dir: ca.dir, name })
    const [viaNotCa, allowed, outside] = await Promise.all([
      issueCert(asCa(notCa, 'not-a-ca'), { cn: 'x', uriSans: ['spiffe://allowed.org/ns/a/sa/x'] }),
      issueCert(asCa(constrained, 'constrained'), { cn: 'y', uriSans: ['spiffe://allowed.org/ns/a/sa/y'] }),
      issueCert(asCa(constrained, 'constrained'), { cn: 'z', uriSans: ['spiffe://evil.org/ns/a/sa/z'] }),
    ])
    const file = (name: string, pem: string) => {
      const path = join(dir, name)
      writeFileSync(path, pem)
      return path
    }
    const configWith = (name: string, clientCA: string) =>
      file(name, `listen:\n  https: { cert: ${ca.certFile}, key: ${ca.keyFile}, clientCA: ${clientCA} }\n`)
    const rooted = configWith('rooted.yaml', ca.certFile)
    const interOnly = configWith('inter-only.yaml', file('inter.pem', constrained.certPem))
    const [a, b, c, d] = await Promise.all([
      explain({ config: rooted, cert: file('via-not-ca.pem', viaNotCa.certPem + notCa.certPem) }),
      explain({ config: rooted, cert: file('allowed.pem', allowed.certPem + constrained.certPem) }),
      explain({ config: rooted, cert: file('outside.pem', outside.certPem + constrained.certPem) }),
      explain({ config: interOnly, cert: file('allowed2.pem', allowed.certPem + constrained.certPem) }),
    ])
    t.match(a.text, /failure +mtls: cert_untrusted/, 'issued through a certificate that is not a CA')
    t.match(a.text, /which is not a CA \(basicConstraints\)/)
    t.match(b.text, /source=mtls verified=true/, 'within the name constraints: verified')
    t.match(c.text, /failure +mtls: cert_untrusted/, 'outside them: refused')
    t.match(
      c.text,
      /spiffe:\/\/evil\.org\/ns\/a\/sa\/z, which the name constraints of CN=constrained rule out/,
    )
    t.match(d.text, /failure +mtls: cert_untrusted/, 'an intermediate alone in clientCA anchors nothing')
    t.match(d.text, /which is not self-signed: the listener needs the root CA/)
  },
)

// explain checked the dates of the path up to the first certificate of clientCA it met: an intermediate there
// whose root (in clientCA too) had expired made a verified chain, which the listener's OpenSSL refuses as
// CERT_HAS_EXPIRED at the root.
t.test(
  'explain checks the dates of the root above an intermediate of clientCA, as the listener does',
  async (t) => {
    const dir = scratchDirSync('explain-lapsed-root')
    const key = await generateKey(dir, 'key', 'ec')
    const caExtensions = ['basicConstraints=critical,CA:TRUE', 'keyUsage=critical,keyCertSign,cRLSign']
    const day = 86_400_000
    const root = await makeCertificate(dir, 'lapsed-root', {
      subject: '/CN=lapsed-root',
      key,
      extensions: caExtensions,
      validity: { notBefore: new Date(Date.now() - 10 * day), notAfter: new Date(Date.now() - day) },
      serial: 1,
    })
    const intermediate = await makeCertificate(dir, 'intermediate', {
      subject: '/CN=intermediate',
      key,
      issuer: { certFile: root.certFile, key },
      extensions: caExtensions,
      serial: 2,
    })
    const leaf = await makeCertificate(dir, 'leaf', {
      subject: '/CN=leaf',
      key,
      issuer: { certFile: intermediate.certFile, key },
      extensions: ['extendedKeyUsage=clientAuth'],
      serial: 3,
    })
    const clientCA = join(dir, 'client-ca.pem')
    writeFileSync(clientCA, root.certPem + intermediate.certPem)
    const config = join(dir, 'config.yaml')
    writeFileSync(
      config,
      `listen:\n  https: { cert: ${leaf.certFile}, key: ${key.keyFile}, clientCA: ${clientCA} }\n`,
    )
    const r = await explain({ config, cert: leaf.certFile })
    t.match(r.text, /failure +mtls: cert_expired/, 'the chain has expired at its root')
    t.match(r.text, /CN=lapsed-root/, 'naming the root')
    t.notMatch(r.text, /verified=true/)
  },
)
