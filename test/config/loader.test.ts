import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import {
  type Diagnostic,
  formatDiagnostic,
  loadConfigFile,
  parseConfigText,
} from '../../src/config/loader.ts'
import { scratchDirSync } from '../helpers/scratch.ts'

function errorsOf(text: string): Diagnostic[] {
  const r = parseConfigText(text, 'c.yaml')
  if (r.ok) throw new Error(`expected errors, config was valid`)
  return r.errors
}
function warningsOf(text: string): Diagnostic[] {
  const r = parseConfigText(text, 'c.yaml')
  if (!r.ok) throw new Error(`unexpected errors: ${r.errors.map(formatDiagnostic).join('; ')}`)
  return r.warnings
}
const lines = (ds: Diagnostic[]) => ds.map(formatDiagnostic)

t.test('an empty file is the defaults', async (t) => {
  for (const text of ['', '# only a comment\n', '---\n']) {
    const r = parseConfigText(text, 'c.yaml')
    t.ok(r.ok, JSON.stringify(text))
    if (r.ok) {
      t.equal(r.config.upstream, 'http://127.0.0.1:3000')
      t.equal(r.config.policy.mode, 'off')
      t.equal(r.config.jwt.clockSkew, 30_000)
      t.same(r.warnings, [])
    }
  }
})

t.test('unknown keys point at the key with a did-you-mean from the schema', async (t) => {
  t.same(lines(errorsOf('upstreem: http://x:1\n')), [
    'c.yaml:1:1 unknown key "upstreem" (hint: did you mean "upstream"?)',
  ])
  const nested = 'identities:\n  - name: a\n    match:\n      spifee: "spiffe://x/y"\n'
  t.same(lines(errorsOf(nested)), [
    'c.yaml:4:7 unknown key "spifee" in identities[0].match (hint: did you mean "spiffe"?)',
  ])
  const far = errorsOf('policy:\n  zzzzzzzz: 1\n')
  t.equal(far[0]?.line, 2)
  t.equal(far[0]?.col, 3)
  t.match(far[0]?.hint, /valid keys: mode, (.*, )?rules/)
})

t.test('bad types, enums and durations', async (t) => {
  t.same(lines(errorsOf('metrics:\n  maxIdentities: lots\n')), [
    'c.yaml:2:18 metrics.maxIdentities: expected a whole number of at least 1',
  ])
  t.same(lines(errorsOf('policy:\n  mode: enforcing\n')), [
    'c.yaml:2:9 policy.mode: invalid value "enforcing" (hint: did you mean "enforce"? one of: off, observe, enforce)',
  ])
  t.same(lines(errorsOf('jwt:\n  clockSkew: 30 seconds\n')), [
    'c.yaml:2:14 jwt.clockSkew: invalid duration "30 seconds" (hint: durations look like 500ms, 30s, 5m, 24h, 7d or a number of seconds)',
  ])
  t.same(lines(errorsOf('identities:\n  - name: a\n    match: { method: 7 }\n')), [
    'c.yaml:3:22 identities[0].match.method: expected text or a list, got 7',
  ])
  t.same(lines(errorsOf('listen:\n  https: { address: ":8443" }\n')), [
    'c.yaml:2:10 listen.https.cert: missing required key "cert"',
    'c.yaml:2:10 listen.https.key: missing required key "key"',
  ])
  t.same(lines(errorsOf('- a\n- b\n')), ['c.yaml:1:1 expected a mapping of keys'])
  // YAML's own tags make values no config key takes: said as what they are, not as a mapping
  t.same(
    lines(errorsOf('service: !!binary aGVsbG8=\nupstream: !!timestamp 2001-12-14\nadmin: !!set {a, b}\n')),
    [
      'c.yaml:1:19 service: expected text, got binary data (!!binary)',
      'c.yaml:2:23 upstream: expected text, got a timestamp (!!timestamp)',
      'c.yaml:3:14 admin: expected text, got a set (!!set)',
    ],
  )
})

// the yaml library only warns of a tag it cannot resolve, and reads the value as a string: accepted, `!env TOKEN`
// was the text "TOKEN" where a secret was meant
t.test('a YAML tag the config cannot resolve is an error at the tag', async (t) => {
  t.same(lines(errorsOf('service: x\napiKeys:\n  header: !env API_KEY_HEADER\n')), [
    'c.yaml:3:11 YAML tag !env is not supported: the config is plain YAML, which gives a tag no meaning (hint: remove the tag, and quote the value if it is text)',
  ])
  t.same(lines(errorsOf('listen:\n  http: !!int 127.0.0.1:0\nmetrics: { maxIdentities: !!bool 10 }\n')), [
    'c.yaml:2:9 YAML tag !!int does not fit its value (hint: remove the tag, and quote the value if it is text)',
    'c.yaml:3:27 YAML tag !!bool does not fit its value (hint: remove the tag, and quote the value if it is text)',
  ])
  const r = parseConfigText('service: !!str x\nmetrics: { maxIdentities: !!int 100 }\n', 'c.yaml')
  t.ok(
    r.ok && r.config.service === 'x' && r.config.metrics.maxIdentities === 100,
    'a core tag that fits: its value',
  )
})

t.test('YAML syntax errors carry their position', async (t) => {
  const e = errorsOf('service: x\nidentities: [ a, b\nmetrics: {}\n')
  t.ok(e.length > 0)
  t.ok((e[0]?.line ?? 0) >= 2, 'points into the broken flow sequence, not at the top')
  t.same(lines(errorsOf('service: "x\n')).length, 1)
  const tab = errorsOf('service: x\n\tupstream: y\n')
  t.equal(tab[0]?.line, 2)
  t.match(e[0]?.message, /^YAML syntax error: /)
  const dup = errorsOf('service: a\nservice: b\n')
  t.equal(dup[0]?.line, 2)
  t.match(dup[0]?.message, /unique/)
})

// an alias whose anchor is not set before it was reported at 1:1, whatever line it was on
t.test('an alias that names no anchor set before it is an error at the alias', async (t) => {
  t.same(lines(errorsOf('service: x\nlimits:\n  maxConnections: *nowhere\n')), [
    'c.yaml:3:19 YAML error: alias *nowhere names no anchor set before it (hint: set &nowhere on a value above it)',
  ])
  t.same(lines(errorsOf('timeouts:\n  idle: *wait\n  upstream: &wait 30s\n')), [
    'c.yaml:2:9 YAML error: alias *wait names no anchor set before it (hint: set &wait on a value above it)',
  ])
  const r = parseConfigText('timeouts:\n  upstream: &wait 30s\n  idle: *wait\n', 'c.yaml')
  t.ok(r.ok && r.config.timeouts.idle === 30_000, 'an alias after its anchor is its value')
})

t.test('bad CIDRs in trustedProxies and remoteAddr', async (t) => {
  t.same(
    lines(errorsOf('forwardedClientCert:\n  format: xfcc\n  trustedProxies: [10.0.3.17, 10.0.0.300/8]\n')),
    [
      'c.yaml:3:31 invalid CIDR "10.0.0.300/8": "10.0.0.300" is not an IP address (hint: use the front proxy\'s own address, e.g. 10.0.3.17 or 10.0.3.16/28)',
    ],
  )
  const e = errorsOf('identities:\n  - name: a\n    match:\n      remoteAddr:\n        - 10.0.0.0/33\n')
  t.same(lines(e), [
    'c.yaml:5:11 invalid CIDR "10.0.0.0/33": prefix must be 0-32 (hint: use e.g. 10.0.0.0/8 or 192.168.1.10)',
  ])
})

t.test('trusted proxies need the header format they set, and broad ranges are flagged', async (t) => {
  t.same(lines(errorsOf('forwardedClientCert:\n  trustedProxies: [10.0.3.17]\n')), [
    'c.yaml:2:20 trusted proxy "10.0.3.17" has no header format, so no forwarded certificate from it is believed (hint: set forwardedClientCert.format (xfcc | rfc9440 | alb | nginx) to the one header that proxy sets, or write the entry as {cidr, format})',
  ])
  t.same(lines(errorsOf('forwardedClientCert:\n  trustedProxies: [{ cidr: 10.0.3.17 }]\n')).length, 1)
  t.same(lines(errorsOf('forwardedClientCert:\n  format: haproxy\n')).length, 1, 'unknown format')
  t.same(
    warningsOf(
      'forwardedClientCert:\n  format: nginx\n  trustedProxies: [10.0.3.17/32, 10.1.0.0/16, "fd00::/48"]\n',
    ),
    [],
  )
  t.same(warningsOf('forwardedClientCert:\n  trustedProxies: [{ cidr: 10.0.3.17, format: alb }]\n'), [])
  const broad = warningsOf(
    'forwardedClientCert:\n  format: xfcc\n  trustedProxies:\n    - 10.0.0.0/8\n    - 0.0.0.0/0\n    - "fd00::/8"\n    - "::ffff:10.0.0.0/104"\n    - { cidr: 172.16.0.0/12, format: nginx }\n    - "::/80"\n    - "0:0:0:0:0:FFFF:0:0/96"\n    - "::/0"\n    - "::ffff:10.1.0.0/112"\n    - "2001:db8::/96"\n',
  )
  t.same(lines(broad), [
    'c.yaml:4:7 warning: trusted proxy range "10.0.0.0/8" covers 16,777,216 IPv4 addresses: every host in it can claim to be any client certificate (hint: list only the front proxy\'s own addresses (IPv4 /16 or longer, IPv6 /48 or longer))',
    'c.yaml:5:7 warning: trusted proxy range "0.0.0.0/0" covers every IPv4 address: every host in it can claim to be any client certificate (hint: list only the front proxy\'s own addresses (IPv4 /16 or longer, IPv6 /48 or longer))',
    'c.yaml:6:7 warning: trusted proxy range "fd00::/8" covers an IPv6 /8: every host in it can claim to be any client certificate (hint: list only the front proxy\'s own addresses (IPv4 /16 or longer, IPv6 /48 or longer))',
    'c.yaml:7:7 warning: trusted proxy range "::ffff:10.0.0.0/104" covers 16,777,216 IPv4 addresses: every host in it can claim to be any client certificate (hint: list only the front proxy\'s own addresses (IPv4 /16 or longer, IPv6 /48 or longer))',
    'c.yaml:8:15 warning: trusted proxy range "172.16.0.0/12" covers 1,048,576 IPv4 addresses: every host in it can claim to be any client certificate (hint: list only the front proxy\'s own addresses (IPv4 /16 or longer, IPv6 /48 or longer))',
    // an IPv6 range holding the v4-mapped part of IPv4, however it is spelt, trusts those IPv4 peers
    'c.yaml:9:7 warning: trusted proxy range "::/80" covers every IPv4 address: every host in it can claim to be any client certificate (hint: list only the front proxy\'s own addresses (IPv4 /16 or longer, IPv6 /48 or longer))',
    'c.yaml:10:7 warning: trusted proxy range "0:0:0:0:0:FFFF:0:0/96" covers every IPv4 address: every host in it can claim to be any client certificate (hint: list only the front proxy\'s own addresses (IPv4 /16 or longer, IPv6 /48 or longer))',
    'c.yaml:11:7 warning: trusted proxy range "::/0" covers every IPv6 address and every IPv4 address: every host in it can claim to be any client certificate (hint: list only the front proxy\'s own addresses (IPv4 /16 or longer, IPv6 /48 or longer))',
  ])
})

t.test('captures used in templates must be defined by a match pattern', async (t) => {
  const text =
    'identities:\n  - name: "{ns}/{sa}"\n    team: "{team}"\n    match: { spiffe: "spiffe://c/ns/{ns}/sa/{sa}" }\n'
  t.same(lines(errorsOf(text)), [
    'c.yaml:3:11 {team} is not captured by any match pattern of this rule (hint: captures available: ns, sa, bot, agent, product)',
  ])
  // {bot} without a userAgent condition is allowed but flagged
  const w = warningsOf('identities:\n  - name: "{bot}"\n    match: { path: "/x" }\n')
  t.match(w[0]?.message, /only set when the request has a user agent/)
  t.same(warningsOf('identities:\n  - name: "{bot}"\n    match: { userAgent: "builtin:bots" }\n'), [])
})

t.test('invalid patterns, templates and builtins', async (t) => {
  t.match(
    errorsOf('identities:\n  - name: a\n    match: { spiffe: "spiffe://x/{ns" }\n')[0]?.message,
    /unclosed "\{"/,
  )
  t.match(errorsOf('identities:\n  - name: a\n    match: { path: "/a**" }\n')[0]?.message, /whole segment/)
  t.match(errorsOf('identities:\n  - name: "{a"\n    match: {}\n')[0]?.message, /invalid template/)
  const ua = errorsOf('identities:\n  - name: a\n    match: { userAgent: "builtin:robots" }\n')[0]
  t.match(ua?.hint, /builtin:bots/)
  t.match(
    errorsOf('policy:\n  rules:\n    - route: "/a/{x"\n      allow: []\n')[0]?.message,
    /invalid route pattern/,
  )
  t.match(
    errorsOf('policy:\n  rules:\n    - route: "admin"\n      allow: []\n')[0]?.message,
    /must start with/,
  )
  t.match(errorsOf('metrics:\n  routes: ["/a/**/b"]\n')[0]?.message, /last segment/)
})

t.test('shadowed rules are warnings pointing at the unreachable rule', async (t) => {
  const text = [
    'identities:',
    '  - name: "{ns}/{sa}"',
    '    match: { spiffe: "spiffe://c/ns/{ns}/sa/{sa}" }',
    '  - name: special',
    '    match: { spiffe: "spiffe://c/ns/{a}/sa/{b}", path: "/admin/**" }',
    '  - name: any',
    '    match: {}',
    '  - name: never',
    '    match: { userAgent: "builtin:bots" }',
    '',
  ].join('\n')
  const w = warningsOf(text)
  t.same(
    w.map((d) => [d.line, d.message]),
    [
      [4, 'rule is unreachable: identities[0] matches every request it does'],
      [8, 'rule is unreachable: identities[2] matches every request it does'],
    ],
  )
  // a narrower earlier rule does not shadow a broader later one
  const ok =
    'identities:\n  - name: a\n    match: { spiffe: "spiffe://c/ns/x/sa/{sa}" }\n  - name: b\n    match: { spiffe: "spiffe://c/ns/{ns}/sa/{sa}" }\n'
  t.same(warningsOf(ok), [])
  // different methods: not provably shadowed
  const m =
    'identities:\n  - name: a\n    match: { method: GET }\n  - name: b\n    match: { method: [GET, POST] }\n'
  t.same(warningsOf(m), [])
  const m2 =
    'identities:\n  - name: a\n    match: { method: [get, post] }\n  - name: b\n    match: { method: POST }\n'
  t.equal(warningsOf(m2).length, 1)
})

t.test('duplicate rule names, issuers and api keys', async (t) => {
  const dup =
    'identities:\n  - name: a\n    rule: r\n    match: { path: /a }\n  - name: b\n    rule: r\n    match: { path: /b }\n'
  t.same(lines(errorsOf(dup)), ['c.yaml:6:11 duplicate rule name "r" (also identities[0])'])
  const w = warningsOf('identities:\n  - name: a\n    match: { jwt: { issuer: https://idp.example.com } }\n')
  t.match(w[0]?.message, /not configured in jwt.issuers/)
  t.equal(w[0]?.line, 3)
  const key =
    'apiKeys:\n  keys: [{ name: export, sha256: "' +
    'a'.repeat(64) +
    '" }]\nidentities:\n  - name: a\n    match: { apiKey: exprot }\n'
  t.same(lines(errorsOf(key)), [
    'c.yaml:5:22 no api key named "exprot" in apiKeys.keys (hint: configured: export)',
  ])
  const reserved = errorsOf(
    'apiKeys:\n  keys:\n    - { name: anonymous, sha256: "' +
      'a'.repeat(64) +
      '" }\n    - { name: "ua:curl", sha256: "' +
      'b'.repeat(64) +
      '" }\n',
  )
  t.match(lines(reserved), [/c\.yaml:3:15 .*"anonymous" is reserved/, /c\.yaml:4:15 .*"ua:curl" is reserved/])
  const noSource = errorsOf('jwt:\n  issuers:\n    - issuer: https://idp\n      audiences: [orders]\n')
  t.same(lines(noSource), [
    'c.yaml:3:7 issuer "https://idp" has no key source (hint: set jwksUri, jwksFile or discovery: true (public keys), or secretFile (HS256/384/512))',
  ])
  t.ok(
    parseConfigText(
      'jwt:\n  issuers:\n    - { issuer: a, algorithms: [HS256], secretFile: /s, audiences: [b] }\n',
      'c',
    ).ok,
    'a shared secret alone is a key source (HMAC tokens only)',
  )
  const hs = errorsOf(
    'jwt:\n  issuers:\n    - issuer: https://idp\n      discovery: true\n      audiences: any\n      algorithms: [HS256]\n',
  )
  t.match(hs[0]?.message, /HS256 need a shared secret/)
  t.equal(hs[0]?.line, 6)
  t.ok(
    parseConfigText(
      'jwt:\n  issuers:\n    - { issuer: a, jwksFile: /k, algorithms: [HS256], secretFile: /s, audiences: [b] }\n',
      'c',
    ).ok,
  )
  const twice = errorsOf(
    'jwt:\n  issuers:\n    - { issuer: https://idp, jwksFile: /a, audiences: [x] }\n' +
      '    - { issuer: https://idp, jwksFile: /b, audiences: [y] }\n',
  )
  t.same(lines(twice), [
    'c.yaml:4:17 duplicate issuer "https://idp" (also jwt.issuers[0]): only one of them would be used (hint: merge the two entries (several audiences, algorithms and one key source per issuer))',
  ])
  const sameKey = errorsOf(
    'apiKeys:\n  keys:\n    - { name: a, sha256: "' +
      'c'.repeat(64) +
      '" }\n    - { name: b, sha256: "' +
      'C'.repeat(64) +
      '" }\n',
  )
  t.same(lines(sameKey), [
    'c.yaml:4:26 the same key as apiKeys.keys[0]: only one of the two names would be used (hint: list each key once)',
  ])
})

t.test('an api key header no request can carry is a config error', async (t) => {
  const keys = `  keys: [{ name: a, sha256: "${'a'.repeat(64)}" }]\n`
  // a key is read from a header of exactly that name: with one HTTP cannot send, every key is silently unused
  for (const header of ['""', '"x api key"', '"x-api-key:"', '":path"', '"x-api-kéy"']) {
    const errors = errorsOf(`apiKeys:\n  header: ${header}\n${keys}`)
    t.match(lines(errors), [/^c\.yaml:2:11 apiKeys\.header: /], header)
  }
  for (const header of ['x-api-key', 'X-Partner-Token', 'x_api_key', 'api-key~v2.1']) {
    t.ok(parseConfigText(`apiKeys:\n  header: "${header}"\n${keys}`, 'c.yaml').ok, header)
  }
})

t.test('loadConfigFile reads files and reports missing ones', async (t) => {
  const dir = scratchDirSync('config')
  const good = join(dir, 'good.yaml')
  writeFileSync(good, 'service: orders\n')
  const r = await loadConfigFile(good)
  t.ok(r.ok)
  if (r.ok) t.equal(r.config.service, 'orders')
  const missing = await loadConfigFile(join(dir, 'nope.yaml'))
  t.notOk(missing.ok)
  if (!missing.ok) t.match(formatDiagnostic(missing.errors[0]!), /nope\.yaml:1:1 file not found/)
})

// a fingerprint key too short stopped the start and failed a reload after `check` had said ok
t.test('check reads the secret files the start reads, and never quotes them', async (t) => {
  const dir = scratchDirSync('config-secret-files')
  const short = join(dir, 'short.key')
  writeFileSync(short, 'hunter2\n')
  const config = join(dir, 'c.yaml')
  writeFileSync(config, `service: x\napiKeys:\n  fingerprintKeyFile: ${short}\n`)
  const r = await loadConfigFile(config, { checkFiles: true })
  t.notOk(r.ok)
  if (!r.ok) {
    t.same(lines(r.errors), [
      `${config}:3:23 fingerprintKeyFile: ${short} holds 7 bytes; a fingerprint key needs at least 16 (hint: run refuses to start with it, and a reload to apply it)`,
    ])
    t.notMatch(lines(r.errors).join('\n'), 'hunter2')
  }
  writeFileSync(short, 'a-fingerprint-key-long-enough\n')
  t.ok((await loadConfigFile(config, { checkFiles: true })).ok, 'a key of 16 bytes or more passes')
})

// `check` refused a missing key source file, while `run` started without it (every token of the issuer
// unverified until a refresh found the file): a start refuses it too, where `check` does. The TLS files and
// the fingerprint key it reads itself, and refuses with lines of its own (tls-start.test.ts). A missing admin
// token file, which `check` refused too, run and a reload serve without (loopback peers only, read again
// every 30 s): `check` warns about it.
t.test("a start's load reports the missing files it would not read itself", async (t) => {
  const dir = scratchDirSync('config-start-files')
  const config = join(dir, 'c.yaml')
  const missing = (name: string) => join(dir, name)
  writeFileSync(
    config,
    [
      'listen:',
      '  https:',
      `    cert: ${missing('tls.crt')}`,
      `    key: ${missing('tls.key')}`,
      'adminAccess:',
      `  tokenFile: ${missing('admin.token')}`,
      'apiKeys:',
      `  fingerprintKeyFile: ${missing('fingerprint.key')}`,
      'jwt:',
      '  issuers:',
      '    - issuer: https://idp.example',
      `      jwksFile: ${missing('jwks.json')}`,
      `      secretFile: ${missing('hmac.secret')}`,
      '      audiences: [api]',
      '',
    ].join('\n'),
  )
  const r = await loadConfigFile(config, { checkFiles: 'start' })
  t.notOk(r.ok)
  if (!r.ok)
    t.same(
      r.errors.map((d) => `${d.line}:${d.col} ${d.message}`),
      [
        `12:17 jwksFile "${missing('jwks.json')}": file not found`,
        `13:19 secretFile "${missing('hmac.secret')}": file not found`,
      ],
    )
  const checked = await loadConfigFile(config, { checkFiles: true })
  t.equal(
    checked.ok ? 0 : checked.errors.length,
    5,
    'check reports the TLS files and the fingerprint key too',
  )
  // the admin token is read again every 30 s, and until then the operator endpoints answer loopback only
  t.same(
    checked.warnings.filter((d) => d.line === 6).map((d) => `${d.line}:${d.col} ${d.message}`),
    [`6:14 tokenFile "${missing('admin.token')}": file not found`],
    'and the admin token file, which run and a reload serve without, as a warning',
  )
})

// `run` stopped on an audit output it could not open (exit 2, "cannot open audit.output") after `check` had
// said ok; one that is not there yet, the start creates, directories and all
t.test('check refuses an audit output the start could not open', async (t) => {
  const dir = scratchDirSync('config-audit-output')
  const config = join(dir, 'c.yaml')
  const plainFile = join(dir, 'plain')
  writeFileSync(plainFile, '')
  const checked = async (output: string) => {
    writeFileSync(config, `service: x\naudit:\n  output: ${output}\n`)
    const r = await loadConfigFile(config, { checkFiles: true })
    return r.ok ? [] : r.errors.map((d) => `${d.line}:${d.col} ${d.message}`)
  }
  t.same(await checked(dir), [`3:11 output "${dir}": is a directory`])
  t.same(await checked(join(plainFile, 'audit.log')), [
    `3:11 output "${join(plainFile, 'audit.log')}": a part of its path is a file, not a directory`,
  ])
  t.same(await checked(join(dir, 'new', 'audit.log')), [], 'a file (and directory) the start creates')
  t.same(await checked(plainFile), [], 'a file it appends to')
  t.same(await checked('off'), [])
})

// `run` refused such a config at start (exit 1) after `check` had said ok, and without a position
t.test('an upstreamTls client certificate without its key, or a key without its certificate', async (t) => {
  const upstream = 'upstream: https://127.0.0.1:3443\n'
  t.same(lines(errorsOf(`${upstream}upstreamTls:\n  cert: /tls/c.pem\n`)), [
    'c.yaml:3:3 upstreamTls.cert needs upstreamTls.key, the key of that client certificate (hint: set both, or neither)',
  ])
  t.same(lines(errorsOf(`${upstream}upstreamTls:\n  ca: /tls/ca.pem\n  key: /tls/k.pem\n`)), [
    'c.yaml:4:3 upstreamTls.key needs upstreamTls.cert, the client certificate it is the key of (hint: set both, or neither)',
  ])
  t.ok(parseConfigText(`${upstream}upstreamTls:\n  cert: /tls/c.pem\n  key: /tls/k.pem\n`, 'c.yaml').ok)
  t.ok(parseConfigText(`${upstream}upstreamTls:\n  ca: /tls/ca.pem\n`, 'c.yaml').ok)
})

// read as UTF-8 with every invalid byte replaced, a Latin-1 "é" became U+FFFD: a pattern that silently never
// matched (with a hint to percent-encode the replacement character), and a UTF-16 file "expected a mapping"
t.test('a config file that is not UTF-8 is an error at the first byte that is not', async (t) => {
  const dir = scratchDirSync('config-encoding')
  const write = (name: string, bytes: Buffer) => {
    writeFileSync(join(dir, name), bytes)
    return join(dir, name)
  }
  const latin1 = await loadConfigFile(
    write(
      'latin1.yaml',
      Buffer.from(
        'service: orders\nidentities:\n  - name: x\n    match: { path: "/caf\xe9/**" }\n',
        'latin1',
      ),
    ),
  )
  t.notOk(latin1.ok)
  if (!latin1.ok)
    t.match(
      formatDiagnostic(latin1.errors[0]!),
      /latin1\.yaml:4:25 not UTF-8 text \(hint: save the file as UTF-8\)$/,
    )
  const utf16 = await loadConfigFile(write('utf16.yaml', Buffer.from('\ufeffservice: orders\n', 'utf16le')))
  t.notOk(utf16.ok)
  if (!utf16.ok) t.match(formatDiagnostic(utf16.errors[0]!), /utf16\.yaml:1:1 the file is UTF-16 .*UTF-8/)
  const cut = await loadConfigFile(
    write('cut.yaml', Buffer.concat([Buffer.from('service: caf'), Buffer.from([0xc3])])),
  )
  t.notOk(cut.ok)
  if (!cut.ok) t.match(formatDiagnostic(cut.errors[0]!), /cut\.yaml:1:13 not UTF-8 text/)
  // UTF-8 with or without a byte order mark, and a real U+FFFD, are fine
  for (const text of ['\ufeffservice: café\n', 'service: café\n', 'service: "a\ufffdb"\n']) {
    const r = await loadConfigFile(write('ok.yaml', Buffer.from(text, 'utf8')))
    t.ok(r.ok, JSON.stringify(text))
  }
})

// the shadowing check compares every rule with every rule before it; it used to tokenize both rules' patterns
// for each pair (3,000 rules took over ten seconds, and a reload holds the proxy's event loop that long). What
// it costs is measured by hand, not here: this checks that at that scale it still finds what it should
t.test(
  'a config of thousands of rules: the shadowing check still finds the one unreachable rule',
  async (t) => {
    const rule = (i: number, name = `svc-${i}`) =>
      `  - name: ${name}\n    match: { spiffe: "spiffe://cluster.local/ns/ns${i}/sa/{sa}", path: "/api/v${i}/**", header: { x-team: "t${i}-*" } }\n`
    const rules = Array.from({ length: 3000 }, (_, i) => rule(i))
    rules.push(rule(1234, 'again-1234'))
    const r = parseConfigText(`identities:\n${rules.join('')}`, 'c.yaml')
    t.ok(r.ok)
    const unreachable = r.warnings.filter((w) => w.message.includes('unreachable'))
    t.equal(unreachable.length, 1, 'one rule shadowed')
    t.match(unreachable[0]?.message, /identities\[1234\]/)
  },
)

// Two trusted issuers whose tokens are named alike can each mint the other's names: a second cluster's admin
// creates the service account `prod/payments`, a second Keycloak realm a client with the first one's id.
t.test('issuers whose names share a namespace are flagged, unless a rule names one of them', async (t) => {
  const issuer = (url: string, profile?: string) =>
    `    - { issuer: "${url}", jwksUri: "${url}/keys", audiences: [orders]${profile ? `, profile: ${profile}` : ''} }\n`
  const config = (issuers: string, rules = '') => `jwt:\n  issuers:\n${issuers}${rules}`
  const clusters =
    issuer('https://oidc.eks.eu-west-1.amazonaws.com/id/PROD') +
    issuer('https://oidc.eks.eu-west-1.amazonaws.com/id/DEV')
  const shared = warningsOf(config(clusters)).filter((w) => /share/.test(w.message))
  t.equal(shared.length, 1, 'two clusters: one warning')
  t.match(shared[0]?.message, /jwt\.issuers\[0\] share the kubernetes profile's names/)
  t.equal(shared[0]?.line, 4, 'at the second issuer')
  t.equal(
    warningsOf(
      config(
        clusters,
        'identities:\n  - name: "dev/{ns}/{sa}"\n    match: { jwt: { issuer: "https://oidc.eks.eu-west-1.amazonaws.com/id/DEV", claims: { sub: "system:serviceaccount:{ns}:{sa}" } } }\n',
      ),
    ).filter((w) => /share/.test(w.message)).length,
    0,
    'a rule naming one cluster’s callers: nothing to flag',
  )
  const realms = issuer('https://sso.example/realms/prod') + issuer('https://sso.example/realms/partners')
  t.equal(warningsOf(config(realms)).filter((w) => /share/.test(w.message)).length, 1, 'two Keycloak realms')
  const twoHosts = issuer('https://idp.a.example') + issuer('https://idp.b.example')
  t.same(
    warningsOf(config(twoHosts)).filter((w) => /share/.test(w.message)),
    [],
    'generic issuers on two hosts: their names start with their own host',
  )
  const sameHost = issuer('https://idp.example/tenant-a') + issuer('https://idp.example/tenant-b')
  t.match(
    warningsOf(config(sameHost)).find((w) => /share/.test(w.message))?.message,
    /share names under idp\.example\//,
    'generic issuers on one host share its names',
  )
  const svids = issuer('https://spire.prod.example', 'spiffe') + issuer('https://spire.dev.example', 'spiffe')
  t.equal(warningsOf(config(svids)).filter((w) => /share/.test(w.message)).length, 1, 'two JWT-SVID issuers')
})
