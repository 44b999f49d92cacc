import { createHash } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { golden } from '../helpers/golden.ts'
import { limiter } from '../helpers/limit.ts'
import { rng as seededRandom } from '../helpers/rng.ts'
import { scratchDirSync } from '../helpers/scratch.ts'
import { runCli as runCliNow } from '../helpers/sidecar.ts'

// the subtests share nothing (each its own directory and files) and spend their time waiting on CLI
// processes: side by side, with at most four CLI processes of this file running at once
t.jobs = 4
const cliGate = limiter(4)
const runCli: typeof runCliNow = (args, opts) => cliGate(() => runCliNow(args, opts))

/** `nhi-proxy check FILES` in `cwd` (else the project root), without $NHI_PROXY_CONFIG unless `env` sets it */
async function check(
  files: string[],
  env: NodeJS.ProcessEnv = {},
  cwd?: string,
): Promise<{ code: number; text: string }> {
  const r = await runCli(['check', ...files], { cwd, env: { NHI_PROXY_CONFIG: undefined, ...env } })
  return { code: r.code, text: r.stdout }
}

/**
 * A scratch directory to write config files into and check them from, so that messages name each file as
 * written: `write` returns the name of the file it wrote (the lines, each ended by a newline).
 */
function configDir(name: string) {
  const dir = scratchDirSync(name)
  return {
    dir,
    write(file: string, lines: string[]): string {
      writeFileSync(join(dir, file), [...lines, ''].join('\n'))
      return file
    },
    checkFile: (file: string) => check([file], {}, dir),
  }
}

t.test('schema errors: FILE:LINE:COL message (hint), exit 1', async (t) => {
  const r = await check(['test/golden/bad-config.yaml'])
  t.equal(r.code, 1)
  t.equal(r.text, golden('check-bad-config.txt', r.text))
  t.match(
    r.text,
    /^test\/golden\/bad-config\.yaml:3:1 unknown key "upstreem" \(hint: did you mean "upstream"\?\)$/m,
  )
})

t.test('semantic errors and warnings, exit 1', async (t) => {
  const r = await check(['test/golden/semantic-config.yaml'])
  t.equal(r.code, 1)
  t.equal(r.text, golden('check-semantic-config.txt', r.text))
})

t.test('every shipped config is valid', async (t) => {
  const files = [
    'config/nhi-proxy.yaml',
    'config/examples/kubernetes-sidecar.yaml',
    'config/examples/github-actions-jobs.yaml',
    'config/examples/public-api-with-bots.yaml',
    'config/examples/mesh-xfcc.yaml',
    'config/examples/policy-enforce.yaml',
  ]
  const r = await check(files)
  t.equal(r.code, 0, r.text)
  t.notMatch(r.text, /warning/)
  t.equal(r.text.trim().split('\n').length, files.length)
})

t.test('without files: $NHI_PROXY_CONFIG, else config/nhi-proxy.yaml', async (t) => {
  const [env, def, missing] = await Promise.all([
    check([], { NHI_PROXY_CONFIG: 'test/golden/bad-config.yaml' }),
    check([]),
    check(['does/not/exist.yaml']),
  ])
  t.equal(env.code, 1)
  t.match(env.text, /^test\/golden\/bad-config\.yaml:/)
  t.equal(def.code, 0)
  t.match(def.text, /^config\/nhi-proxy\.yaml: ok/)
  t.equal(missing.code, 1)
  t.match(missing.text, /does\/not\/exist\.yaml:1:1 file not found/)
  t.notMatch(missing.text, /hint/, 'a FILE given is the one meant: no hint')
})

t.test('without files where the default is not: the hint names both ways to give a config', async (t) => {
  const elsewhere = scratchDirSync('check-elsewhere')
  const [def, env] = await Promise.all([
    check([], {}, elsewhere),
    check([], { NHI_PROXY_CONFIG: 'gone.yaml' }, elsewhere),
  ])
  t.equal(def.code, 1)
  t.equal(
    def.text.split('\n')[0],
    'config/nhi-proxy.yaml:1:1 file not found (hint: no FILE given, so the default; give one as nhi-proxy check FILE, or set $NHI_PROXY_CONFIG)',
  )
  t.equal(env.code, 1)
  t.equal(
    env.text.split('\n')[0],
    'gone.yaml:1:1 file not found (hint: the file $NHI_PROXY_CONFIG names; give another as nhi-proxy check FILE)',
  )
})

t.test(
  'missing TLS, admin token and directory CA files are reported where the config names them',
  async (t) => {
    const { write, checkFile } = configDir('check-files')
    const r = await checkFile(
      write('files.yaml', [
        'upstream: https://127.0.0.1:8443',
        'upstreamTls:',
        '  ca: ./typo-upstream-ca.crt',
        '  cert: ./typo-client.crt',
        '  key: ./typo-client.key',
        'adminAccess:',
        '  tokenFile: ./typo-admin-token',
        'signedAgents:',
        '  directories:',
        '    - url: https://agent.example/.well-known/http-message-signatures-directory',
        '      caFile: ./typo-agent-ca.crt',
        '  authorities: [shop.example]',
      ]),
    )
    t.equal(r.code, 1, r.text)
    t.match(r.text, 'files.yaml:3:7 ca "./typo-upstream-ca.crt": file not found')
    t.match(r.text, 'files.yaml:4:9 cert "./typo-client.crt": file not found')
    t.match(r.text, 'files.yaml:5:8 key "./typo-client.key": file not found')
    // run and a reload serve without the admin token (loopback peers only until it can be read): a warning
    t.match(r.text, 'files.yaml:7:14 warning: tokenFile "./typo-admin-token": file not found')
    t.match(r.text, 'files.yaml:11:15 caFile "./typo-agent-ca.crt": file not found')
    t.match(r.text, /^files\.yaml: 4 errors, 1 warning$/m)
  },
)

t.test('signedAgents.authorities: entries are host names; without them check warns', async (t) => {
  const { write, checkFile } = configDir('check-authorities')
  const directory = [
    'signedAgents:',
    '  directories:',
    '    - url: https://agent.example/.well-known/http-message-signatures-directory',
  ]

  const [bad, unbound, bound] = await Promise.all([
    checkFile(
      write('bad.yaml', [
        ...directory,
        '  authorities:',
        '    - shop.example',
        '    - "*.shop.example"',
        '    - SHOP.example:8443',
        '    - "[::1]:8443"',
        '    - https://shop.example',
        '    - shop.example/api',
        '    - user@shop.example',
        '    - "*.10.0.0.1"',
        '    - a.*.example',
        '    - shop.example:0',
        '    - shop.example:99999',
        '    - ""',
      ]),
    ),
    checkFile(write('unbound.yaml', directory)),
    checkFile(write('bound.yaml', [...directory, '  authorities: [shop.example]'])),
  ])
  t.equal(bad.code, 1, bad.text)
  const hint = '(hint: write the host name alone: shop.example, shop.example:8443 or *.shop.example)'
  t.same(bad.text.trim().split('\n'), [
    `bad.yaml:9:7 authority "https://shop.example" has a scheme ${hint}`,
    `bad.yaml:10:7 authority "shop.example/api" is not a host name: no path, query or user info ${hint}`,
    `bad.yaml:11:7 authority "user@shop.example" is not a host name: no path, query or user info ${hint}`,
    `bad.yaml:12:7 authority "*.10.0.0.1": a wildcard needs a domain name, not an address ${hint}`,
    `bad.yaml:13:7 authority "a.*.example": only a leading "*." is a wildcard ${hint}`,
    `bad.yaml:14:7 authority "shop.example:0": port must be 1 to 65535 ${hint}`,
    `bad.yaml:15:7 authority "shop.example:99999": port must be 1 to 65535 ${hint}`,
    `bad.yaml:16:7 empty authority ${hint}`,
    'bad.yaml: 8 errors',
  ])

  t.equal(unbound.code, 0, 'a warning, not an error: existing configs keep working')
  t.match(
    unbound.text,
    /^unbound\.yaml:2:3 warning: signedAgents\.authorities is empty: a signature an agent made for another site would verify here .*\(hint: set signedAgents\.authorities to the host names this service is reached by/m,
  )
  t.match(unbound.text, /^unbound\.yaml: ok \(.*1 warning\)$/m)

  t.equal(bound.code, 0, bound.text)
  t.notMatch(bound.text, /warning/)
})

t.test(
  'policy allow entries by kind or team without verified admit unverified callers: warned',
  async (t) => {
    const { write, checkFile } = configDir('check-allow-verified')
    const policy = (allow: string[]) => [
      'policy:',
      '  mode: enforce',
      '  rules:',
      '    - route: /admin/**',
      '      allow:',
      ...allow,
    ]

    const [open, said] = await Promise.all([
      checkFile(
        write(
          'open.yaml',
          policy([
            '        - { kind: human }',
            '        - { team: platform }',
            '        - kind: service',
            '          team: payments',
            '        - { kind: bot, source: useragent }',
          ]),
        ),
      ),
      checkFile(
        write(
          'said.yaml',
          policy([
            '        - { kind: human, verified: true }',
            '        - { team: platform, verified: false }',
            '        - { identity: "ops/*", kind: service }',
            '        - { identity: "ua:*", source: useragent }',
            '        - { source: [mtls, xfcc], verified: true }',
          ]),
        ),
      ),
    ])
    t.equal(open.code, 0, 'a warning, not an error: existing configs keep working')
    const warning = (what: string) =>
      `warning: allow entry names ${what} but not verified: it admits unverified callers too (an unverified client or forwarded certificate is kind "service"); only an identity: entry defaults to verified identities (hint: add verified: true, or verified: false if it is meant for unverified callers only)`
    t.same(open.text.trim().split('\n'), [
      `open.yaml:6:11 ${warning('kind')}`,
      `open.yaml:7:11 ${warning('team')}`,
      `open.yaml:8:11 ${warning('kind and team')}`,
      `open.yaml:10:11 ${warning('kind')}`,
      'open.yaml: ok (0 identity rules, 0 issuers, policy enforce, 4 warnings)',
    ])

    t.equal(said.code, 0, said.text)
    t.notMatch(said.text, /warning/)
  },
)

// A verified identity name longer than 512 UTF-16 units is cut to its first 494, `…#` and 16 hex digits of its
// SHA-256, an unverified one to its first 256: an `identity:` entry no shorter name can equal admitted no one,
// and `check` said nothing of it.
t.test(
  'policy identity entries longer than the names they may match: warned with what to write',
  async (t) => {
    const { write, checkFile } = configDir('check-identity-cut')
    const rng = seededRandom(21)
    const letters = (n: number) =>
      Array.from({ length: n }, () => 'abcdefghijklmnopqrstuvwxyz'[Math.floor(rng() * 26)]).join('')
    const cutVerified = (name: string) =>
      `${name.slice(0, 494)}…#${createHash('sha256').update(name, 'utf16le').digest('hex').slice(0, 16)}`
    const long = `svc-${letters(596)}`
    const longMadeUp = `ua:${letters(297)}`
    const prefix = `team-${letters(515)}`
    const later = `{team}-${letters(520)}`
    const spiffe = (n: number) => `spiffe://cluster.local/ns/${letters(n)}/**`
    const [deep, fits] = [spiffe(487), spiffe(486)]
    // each entry on its own line: line 4 + 2i, its value at column 27
    const entries = [
      `{ identity: "${long}" }`,
      `{ identity: "${long.slice(0, 512)}" }`,
      `{ identity: "${longMadeUp}", verified: false }`,
      `{ identity: "${longMadeUp.slice(0, 256)}", verified: false }`,
      `{ identity: "${prefix}*" }`,
      `{ identity: "${prefix.slice(0, 500)}*" }`,
      `{ identity: "${later}" }`,
      // `/ns/x/**` matches `/ns/x`: the separator before `**` is no part of the shortest match
      `{ identity: "${deep}" }`,
      `{ identity: "${fits}" }`,
      // with a source and no `verified`, the entry may match a verified name, cut at 512
      `{ identity: "${long.slice(0, 400)}", source: jwt }`,
      `{ identity: "${long}", source: jwt }`,
    ]
    const r = await checkFile(
      write('cut.yaml', [
        'policy:',
        '  mode: enforce',
        '  rules:',
        ...entries.flatMap((e, i) => [`    - route: /r${i}`, `      allow: [${e}]`]),
      ]),
    )
    t.equal(r.code, 0, 'a warning, not an error: existing configs keep working')
    const at = (i: number) => `cut.yaml:${5 + 2 * i}:27 warning:`
    const short = (p: string) => `${p.slice(0, 32)}…`
    const verifiedCut =
      'a verified identity name is at most 512 characters (a longer verified one is cut to its first 494, "…#" and a hash)'
    t.same(r.text.trim().split('\n'), [
      `${at(0)} identity "${short(long)}" can never match: it is 600 characters long and ${verifiedCut} (hint: write the name it is cut to, "${cutVerified(long)}", or a wildcard, "${long.slice(0, 494)}*")`,
      `${at(2)} identity "${short(longMadeUp)}" can never match: it is 300 characters long and an unverified identity name is at most 256 characters (a longer one is cut to its first 256) (hint: write the name it is cut to, "${longMadeUp.slice(0, 256)}")`,
      `${at(4)} identity pattern "${short(prefix)}" can never match: its shortest match is 520 characters long and ${verifiedCut} (hint: match the cut names by their first 494 characters: "${prefix.slice(0, 494)}*")`,
      `${at(6)} identity pattern "${short(later)}" can never match: its shortest match is 522 characters long and ${verifiedCut} (hint: shorten its fixed parts: a longer name keeps only its first 494 characters)`,
      `${at(7)} identity pattern "${short(deep)}" can never match: its shortest match is 513 characters long and ${verifiedCut} (hint: match the cut names by their first 494 characters: "${deep.slice(0, 494)}*")`,
      `${at(10)} identity "${short(long)}" can never match: it is 600 characters long and an identity name is at most 512 characters (a longer verified one is cut to its first 494, "…#" and a hash; an unverified one is cut at 256) (hint: write the name it is cut to, "${cutVerified(long)}", or a wildcard, "${long.slice(0, 494)}*")`,
      'cut.yaml: ok (0 identity rules, 0 issuers, policy enforce, 6 warnings)',
    ])
  },
)

t.test('routes no normalized request path can match: warned with the spelling that matches', async (t) => {
  const { write, checkFile } = configDir('check-route-chars')
  const config = (routes: string[], policyRoutes: string[]) => [
    'metrics:',
    '  routes:',
    ...routes.map((r) => `    - ${r}`),
    'policy:',
    '  mode: observe',
    '  rules:',
    ...policyRoutes.flatMap((r) => [`    - route: ${r}`, '      allow: [{ identity: "ops/*" }]']),
  ]

  const [never, fine, anyCase] = await Promise.all([
    checkFile(
      write(
        'never.yaml',
        config(
          ['/tée/**', '"/search results"', '"/docs#intro"'],
          ['"/caf%c3%a9/**"', '"/%61dmin/**"', '"/a\\\\b"', '/ok/:id'],
        ),
      ),
    ),
    checkFile(
      write(
        'fine.yaml',
        config(
          ['/t%C3%A9e/**', '/search%20results', '/api/v1/orders/:id', '/**'],
          ['/caf%C3%A9/**', '/admin/*'],
        ),
      ),
    ),
    // matched in any case, a lower-case escape can match
    checkFile(write('any-case.yaml', [...config(['/**'], ['"/caf%c3%a9/**"']), '  pathCase: insensitive'])),
  ])
  // an empty, "." or ".." segment: normalized paths never hold one (a trailing slash is optional)
  const segments = await checkFile(
    write('segments.yaml', config(['/api//v1/**', '/docs/'], ['/admin/./users', '/public/../admin/**'])),
  )
  t.same(segments.text.trim().split('\n'), [
    'segments.yaml:3:7 warning: route "/api//v1/**" can never match: no normalized request path holds an empty, "." or ".." segment (hint: write "/api/v1/**": the proxy merges "//" and resolves "." and ".." before matching)',
    'segments.yaml:8:14 warning: route "/admin/./users" can never match: no normalized request path holds an empty, "." or ".." segment (hint: write "/admin/users": the proxy merges "//" and resolves "." and ".." before matching)',
    'segments.yaml:10:14 warning: route "/public/../admin/**" can never match: no normalized request path holds an empty, "." or ".." segment (hint: write "/admin/**": the proxy merges "//" and resolves "." and ".." before matching)',
    'segments.yaml: ok (0 identity rules, 0 issuers, policy observe, 3 warnings)',
  ])
  t.equal(never.code, 0, 'a warning, not an error')
  const encode = (route: string, found: string, instead: string) =>
    `warning: route "${route}" can never match: no normalized request path holds ${found} (hint: write it percent-encoded with upper-case hex: "${instead}")`
  t.same(never.text.trim().split('\n'), [
    `never.yaml:3:7 ${encode('/tée/**', '"é"', '/t%C3%A9e/**')}`,
    `never.yaml:4:7 ${encode('/search results', 'a space', '/search%20results')}`,
    `never.yaml:5:7 ${encode('/docs#intro', '"#"', '/docs%23intro')}`,
    `never.yaml:9:14 ${encode('/caf%c3%a9/**', '"%c3"', '/caf%C3%A9/**')}`,
    'never.yaml:11:14 warning: route "/%61dmin/**" can never match: no normalized request path holds "%61" (hint: write "/admin/**": the proxy decodes escaped letters, digits, -._~ and !$&\'()*+,=:@ before matching)',
    'never.yaml:13:14 warning: route "/a\\b" can never match: no normalized request path holds a backslash (hint: the proxy answers 400 to every request path with it)',
    'never.yaml: ok (0 identity rules, 0 issuers, policy observe, 6 warnings)',
  ])

  t.equal(fine.code, 0, fine.text)
  t.notMatch(fine.text, /warning/)

  t.equal(anyCase.code, 0, anyCase.text)
  t.notMatch(anyCase.text, /warning/)
})

t.test('identity rule paths no normalized request path can match: warned as routes are', async (t) => {
  const { write, checkFile } = configDir('check-rule-path-chars')
  const run = (name: string, paths: string[], extra: string[] = []) =>
    checkFile(
      write(name, [
        'identities:',
        ...paths.map((p, i) => `  - { name: r${i}, rule: r${i}, match: { path: ${p} } }`),
        ...extra,
      ]),
    )

  const [never, fine, anyCase] = await Promise.all([
    run('never.yaml', [
      '/tée/**',
      '"/search results"',
      '"/caf%c3%a9/{id}"',
      '"/%61dmin/**"',
      '"/a\\\\b"',
      '"/docs#intro"',
    ]),
    run('fine.yaml', ['/t%C3%A9e/**', '/search%20results', '"/orders/{id}"', '/users/:id/*', '/**']),
    // policy.pathCase is the policy's: identity rules still match the path case-sensitively
    run(
      'any-case.yaml',
      ['"/caf%c3%a9/**"'],
      [
        'policy:',
        '  mode: observe',
        '  pathCase: insensitive',
        '  rules: [{ route: "/**", allow: [{ identity: r0 }] }]',
      ],
    ),
  ])
  t.equal(never.code, 0, 'a warning, not an error')
  const encode = (path: string, found: string, instead: string) =>
    `warning: path "${path}" can never match: no normalized request path holds ${found} (hint: write it percent-encoded with upper-case hex: "${instead}")`
  t.same(never.text.trim().split('\n'), [
    `never.yaml:2:42 ${encode('/tée/**', '"é"', '/t%C3%A9e/**')}`,
    `never.yaml:3:42 ${encode('/search results', 'a space', '/search%20results')}`,
    `never.yaml:4:42 ${encode('/caf%c3%a9/{id}', '"%c3"', '/caf%C3%A9/{id}')}`,
    'never.yaml:5:42 warning: path "/%61dmin/**" can never match: no normalized request path holds "%61" (hint: write "/admin/**": the proxy decodes escaped letters, digits, -._~ and !$&\'()*+,=:@ before matching)',
    'never.yaml:6:42 warning: path "/a\\b" can never match: no normalized request path holds a backslash (hint: the proxy answers 400 to every request path with it)',
    `never.yaml:7:42 ${encode('/docs#intro', '"#"', '/docs%23intro')}`,
    'never.yaml: ok (6 identity rules, 0 issuers, policy off, 6 warnings)',
  ])

  t.equal(fine.code, 0, fine.text)
  t.notMatch(fine.text, /warning/)

  t.match(anyCase.text, /any-case\.yaml:2:42 warning: path "\/caf%c3%a9\/\*\*" can never match/)
})

t.test('a rule may not capture a credential header: the secret would be copied into names', async (t) => {
  const dir = scratchDirSync('check-credential-capture')
  const file = join(dir, 'config.yaml')
  writeFileSync(
    file,
    `service: s
upstream: http://127.0.0.1:3000
apiKeys:
  header: X-Partner-Key
  keys: []
identities:
  - { name: "tok/{t}", match: { header: { Authorization: "Bearer {t}" } } }
  - { name: "key/{k}", match: { header: { x-partner-key: "{k}" } } }
  - { name: "session/{s}", match: { header: { cookie: "sid={s}" } } }
  - { name: bearer, match: { header: { authorization: "Bearer *" } } }
`,
  )
  const [r, run] = await Promise.all([check([file]), runCli(['run', '-c', file], { timeoutMs: 20_000 })])
  t.equal(r.code, 1, r.text)
  for (const header of ['authorization', 'x-partner-key', 'cookie']) {
    t.match(r.text, new RegExp(`a capture of the ${header} header would copy a credential`), header)
  }
  t.equal(r.text.match(/would copy a credential/g)?.length, 3, 'matching without a capture is fine')
  t.not(run.code, 0, 'run refuses the config too')
  t.match(run.stderr + run.stdout, /would copy a credential/)
})

// node:http2 hands a request's pseudo-headers over among its fields: a rule on `:authority` or `:path` matched
// HTTP/2 requests alone, so the same request was attributed otherwise when its client chose HTTP/1.1.
t.test('a rule names header fields only, never an HTTP/2 pseudo-header', async (t) => {
  const { dir, write, checkFile } = configDir('check-header-names')
  const file = write('pseudo.yaml', [
    'identities:',
    '  - { name: by-authority, match: { header: { ":authority": svc.example } } }',
    '  - { name: admin-path, match: { header: { ":path": "/admin*" } } }',
    '  - { name: spaced, match: { header: { "x tenant": acme } } }',
    '  - { name: by-host, match: { header: { host: svc.example, X-Tenant: acme } } }',
  ])
  const [r, run] = await Promise.all([
    checkFile(file),
    runCli(['run', '-c', join(dir, file)], { timeoutMs: 20_000 }),
  ])
  t.equal(r.code, 1, r.text)
  t.match(
    r.text,
    /pseudo\.yaml:2:\d+ "?:authority"? is an HTTP\/2 pseudo-header, not a header: HTTP\/1\.1 requests never carry it/,
  )
  t.match(r.text, /pseudo\.yaml:3:\d+ "?:path"? is an HTTP\/2 pseudo-header/)
  t.match(r.text, /pseudo\.yaml:4:\d+ "x tenant" is not an HTTP header name/)
  t.equal(
    r.text.match(/pseudo-header|not an HTTP header name/g)?.length,
    3,
    'host and X-Tenant are header names',
  )
  t.not(run.code, 0, 'run refuses the config too')
  t.match(run.stderr + run.stdout, /pseudo-header/)
})

// Values the schema let through that the proxy could not use: a DNS server that is not an IP address stopped
// `run` (exit 2, no location) after `check` said ok, and port 0 aborted the process inside the resolver, also
// on a reload; histogram bounds out of order counted requests in the wrong buckets and rendered one `le` twice.
t.test('DNS servers and histogram buckets are checked where they are written', async (t) => {
  const { write, checkFile } = configDir('check-values')
  const r = await checkFile(
    write('values.yaml', [
      'metrics:',
      '  buckets: [1, 0.1, 1]',
      'bots:',
      '  verify:',
      '    dns:',
      '      enabled: true',
      '      servers:',
      '        - 10.0.0.10:53',
      '        - dns.example.internal',
      '        - 10.0.0.11:0',
      '        - "[fd00::10]:53"',
    ]),
  )
  t.equal(r.code, 1, 'invalid: exit 1')
  t.match(
    r.text,
    /^values\.yaml:2:\d+ .*bucket bounds must be in increasing order/m,
    'the buckets, at their line',
  )
  t.match(r.text, /^values\.yaml:9:\d+ .*expected an IP address/m, 'the host name, at its line')
  t.match(r.text, /^values\.yaml:10:\d+ .*port must be 1 to 65535/m, 'port 0, at its line')
  t.notMatch(r.text, /values\.yaml:(8|11):/, 'the two good servers pass')
})

t.test('check -c FILE, as run takes its file, is the same as naming it', async (t) => {
  const { dir, write } = configDir('check-dash-c')
  const good = write('good.yaml', ['upstream: http://127.0.0.1:8081'])
  const bad = write('bad.yaml', ['upstream: http://127.0.0.1:8081', 'upstreem: x'])
  const cli = (args: string[]) => runCli(args, { cwd: dir, env: { NHI_PROXY_CONFIG: undefined } })
  const [named, dashC, both] = await Promise.all([
    cli(['check', bad]),
    cli(['check', '-c', bad]),
    cli(['check', '-c', good, '--config', bad]),
  ])
  t.equal(dashC.code, 1)
  t.equal(dashC.stdout, named.stdout, 'the same report as `check FILE`')
  t.match(dashC.stdout, /^bad\.yaml:2:1 unknown key "upstreem"/m)
  t.equal(both.code, 1)
  t.match(both.stdout, /^good\.yaml: ok/m, 'every -c file is checked')
  t.match(both.stdout, /^bad\.yaml:2:1 /m)
})
