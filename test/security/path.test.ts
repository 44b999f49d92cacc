// Policy sees the path the upstream will see (issue 16, item 2). Every spelling of a denied path is either
// refused (400) or normalized to the denied path and refused (403); what reaches the upstream is exactly
// the path that was matched. Real sockets: a recording upstream, the sidecar, a raw client for targets
// that fetch() would rewrite before sending.
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { writeFileSync } from 'node:fs'
import { connect as http2Connect } from 'node:http2'
import { connect } from 'node:net'
import { join } from 'node:path'
import fc from 'fast-check'
import t, { type Test } from 'tap'
import { runExplain } from '../../src/cli/explain.ts'
import { normalizePath } from '../../src/proxy/path.ts'
import { eventually } from '../helpers/eventually.ts'
import { scriptedUpstream } from '../helpers/net.ts'
import { scratchDirSync } from '../helpers/scratch.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream, type TestUpstream } from '../helpers/upstream.ts'

// the tests share nothing (each its own upstream and sidecar) and mostly wait on sidecar starts: run side by side
t.jobs = 4

/** Sends one request with `target` verbatim; resolves with the status code (0: no answer). */
async function rawStatus(
  port: number,
  target: string,
  method = 'GET',
  headers: Record<string, string> = {},
): Promise<number> {
  const socket = connect(port, '127.0.0.1')
  await once(socket, 'connect')
  let text = ''
  socket.on('data', (c: Buffer) => {
    text += c.toString('latin1')
  })
  socket.on('error', () => {})
  const extra = Object.entries(headers)
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('')
  socket.write(`${method} ${target} HTTP/1.1\r\nHost: x\r\n${extra}Connection: close\r\n\r\n`)
  await eventually(() => /^HTTP\/1\.1 \d{3}/.test(text) || socket.destroyed, {
    what: `an answer to ${target}`,
  })
  socket.destroy()
  return Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0)
}

const POLICY = {
  mode: 'enforce',
  rules: [
    { name: 'admin', route: '/admin/**', methods: ['GET', 'POST'], allow: [{ identity: 'nobody' }] },
    { name: 'internal', route: '/internal', allow: [{ identity: 'nobody' }] },
    // routes with the characters a segment holds as they are: Google-style methods, npm scopes, OData
    { name: 'cancel', route: '/v1/orders/{id}:cancel', allow: [{ identity: 'nobody' }] },
    { name: 'me', route: '/users/@me/**', allow: [{ identity: 'nobody' }] },
    { name: 'batch', route: '/odata/$batch', allow: [{ identity: 'nobody' }] },
  ],
}

async function setup(t: Test, upstreamBase = '') {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const sidecar = await startTestSidecar(t, {
    upstream: up.url + upstreamBase,
    policy: POLICY,
    metrics: { routes: ['/public/:page', '/admin/**'] },
  })
  return { up, port: sidecar.proxyAddress.port, admin: sidecar.adminAddress.port }
}

function reached(up: TestUpstream, re: RegExp): string[] {
  return up.received.map((r) => r.url).filter((u) => re.test(u))
}

t.test('no spelling of a denied path gets past the deny rule', async (t) => {
  const { up, port } = await setup(t)
  const attempts = [
    '/admin',
    '/admin/',
    '/admin/users',
    '/%61dmin',
    '/%61%64%6D%69%6E/users',
    '//admin',
    '/./admin',
    '/public/../admin',
    '/public/%2e%2e/admin',
    '/public/%2E%2E/admin',
    '/public/.%2e/admin',
    '/public/%2e./admin',
    '/public/./../admin/users',
    '/admin;x=1',
    '/admin;jsessionid=1/users',
    '/public/..;/admin',
    '/public;x/../admin',
    '/../admin',
    '/%2e%2e/admin',
    '/internal/',
    '/internal;a=b',
    '/public/../internal',
    'http://x/public/../admin',
    'http://x/public/%2e%2e/admin?q=1',
  ]
  for (const target of attempts) {
    const status = await rawStatus(port, target)
    t.ok(status === 403 || status === 400, `${target} → ${status}`)
  }
  const ambiguous = [
    '/%2fadmin',
    '/public%2f..%2fadmin',
    '/public%2F..%2Fadmin',
    '/public/..%5cadmin',
    '/public\\..\\admin',
    '/admin%00',
    '/admin%',
    '/admin%zz',
    '/adm%1fin',
  ]
  for (const target of ambiguous) t.equal(await rawStatus(port, target), 400, `${target} is refused`)
  t.same(reached(up, /admin|internal/i), [], 'nothing that names admin or internal reached the upstream')
})

// nginx, Go, Django, Flask and Spring decode %3A, %40, %24… before routing: /v1/orders/1%3Acancel is their
// /v1/orders/1:cancel. The proxy kept such escapes, so no route written with ":", "@" or "$" matched them, and
// the default rule let the request through to the handler the route protects.
t.test('escaped ":", "@", "$" and the other segment characters are the route they spell', async (t) => {
  const { up, port } = await setup(t)
  for (const target of [
    '/v1/orders/1%3Acancel',
    '/v1/orders/1%3acancel',
    '/users/%40me/secrets',
    '/users/%40me%2Fsecrets',
    '/odata/%24batch',
    '/odata/%24%62atch',
  ]) {
    const status = await rawStatus(port, target)
    t.ok(status === 403 || status === 400, `${target} → ${status}`)
  }
  t.same(reached(up, /cancel|secrets|batch/), [], 'none reached the upstream')
  t.equal(await rawStatus(port, '/v1/orders/1%3Aship?x=%3A'), 200, 'another method is served')
  t.same(
    reached(up, /ship/),
    ['/v1/orders/1:ship?x=%3A'],
    'as the path it was matched as, the query untouched',
  )
})

t.test('HEAD is matched as GET where a rule lists GET', async (t) => {
  const { up, port } = await setup(t)
  t.equal(await rawStatus(port, '/admin/users', 'HEAD'), 403)
  t.equal(await rawStatus(port, '/%61dmin', 'HEAD'), 403)
  t.equal(await rawStatus(port, '/admin/users', 'DELETE'), 200, 'a method no rule lists is not denied')
  t.same(reached(up, /admin/), ['/admin/users'])
})

t.test('the upstream receives the normalized path, the query untouched', async (t) => {
  const { up, port } = await setup(t)
  const cases: [string, string][] = [
    ['/public/page', '/public/page'],
    ['/public/./a/../b?x=%2e%2e/..&y=%2F', '/public/b?x=%2e%2e/..&y=%2F'],
    ['//public///page', '/public/page'],
    ['/public/%7e%75ser', '/public/~user'],
    ['/caf%c3%a9/', '/caf%C3%A9/'],
    ['/public/page;v=2', '/public/page'],
    ['/public/..', '/'],
    ['/.well-known/x', '/.well-known/x'],
    // case is kept: the upstream sees exactly what was matched (case-sensitive, so /ADMIN is not /admin)
    ['/ADMIN', '/ADMIN'],
  ]
  for (const [sent, expected] of cases) {
    const before = up.received.length
    t.equal(await rawStatus(port, sent), 200, sent)
    t.equal(up.received[before]?.url, expected, `${sent} → ${expected}`)
  }
})

t.test('a base path on the upstream cannot be escaped', async (t) => {
  const { up, port } = await setup(t, '/api')
  for (const target of [
    '/../secret',
    '/%2e%2e/secret',
    '/a/../../secret',
    '/..;/secret',
    'http://x/../secret',
  ]) {
    t.equal(await rawStatus(port, target), 200, target)
  }
  t.equal(await rawStatus(port, '/%2f../secret'), 400)
  t.same(
    up.received.map((r) => r.url),
    ['/api/secret', '/api/secret', '/api/secret', '/api/secret', '/api/secret'],
    'every request stayed under the base path',
  )
})

t.test('metrics route labels use the normalized path', async (t) => {
  const { port, admin } = await setup(t)
  for (const target of ['//public/a', '/public/./b', '/public/x/../c', '/%70ublic/d'])
    t.equal(await rawStatus(port, target), 200)
  const metrics = await eventually(
    async () => {
      const text = await (await fetch(`http://127.0.0.1:${admin}/metrics`)).text()
      return /nhi_requests_total\{[^}]*route="\/public\/:page"[^}]*\} 4\b/.test(text) && text
    },
    { what: 'four requests under route="/public/:page"' },
  )
  t.ok(metrics)
})

t.test('property: the path the policy matched is the path the upstream received', async (t) => {
  const { up, port, admin } = await setup(t)
  const segment = fc.oneof(
    fc.constantFrom(
      'admin',
      'public',
      'a',
      '.',
      '..',
      '',
      '%2e',
      '%2E%2e',
      '%61dmin',
      ';x=1',
      'p;q',
      '%7E',
      '%c3%a9',
    ),
    fc.stringMatching(/^[A-Za-z0-9._~-]{1,4}$/),
  )
  const pathArb = fc.array(segment, { minLength: 1, maxLength: 6 }).map((s) => `/${s.join('/')}`)
  const samples = fc.sample(pathArb, { numRuns: 60, seed: 16 })
  for (const path of samples) {
    const traceId = randomBytes(16).toString('hex')
    const before = up.received.length
    const status = await rawStatus(port, path, 'GET', {
      traceparent: `00-${traceId}-${randomBytes(8).toString('hex')}-01`,
    })
    const events = await eventually(
      async () => {
        const r = await fetch(`http://127.0.0.1:${admin}/audit?trace_id=${traceId}`)
        const body = (await r.json()) as { path: string }[] | { events: { path: string }[] }
        const list = Array.isArray(body) ? body : body.events
        return list.length > 0 && list
      },
      { what: `the audit event of ${path}` },
    )
    const matched = events[0]!.path
    if (status === 200) {
      const received = up.received[before]?.url
      t.equal(received, matched, `${path}: upstream got ${matched}`)
      t.equal(normalizePath(received ?? ''), received, `${path}: what the upstream got is already normal`)
      t.notMatch(received, /^\/admin(\/|$)/, `${path}: not a denied path`)
    } else {
      t.equal(status, 403, `${path}: refused by policy`)
      t.match(matched, /^\/admin(\/|$)/, `${path}: matched ${matched}, a denied path`)
      t.equal(up.received.length, before, `${path}: nothing reached the upstream`)
    }
  }
})

t.test('explain agrees with the live proxy about the path', async (t) => {
  const config = join(scratchDirSync('path'), 'c.yaml')
  writeFileSync(config, JSON.stringify({ policy: POLICY }))
  const explain = async (path: string, method = 'GET') => {
    const lines: string[] = []
    const code = await runExplain({ config, headers: [], method, path, json: true }, (l) => lines.push(l))
    return { code, text: lines.join('\n') }
  }
  for (const path of ['/public/%2e%2e/admin', '/%61dmin;x=1', '//admin/']) {
    const r = await explain(path)
    t.equal(r.code, 0)
    t.match(JSON.parse(r.text).decision, { decision: 'deny', rule: 'admin' }, `${path} is denied`)
  }
  t.match(JSON.parse((await explain('/admin', 'HEAD')).text).decision, { decision: 'deny' }, 'HEAD as GET')
  const refused = await explain('/public%2f..%2fadmin')
  t.equal(refused.code, 1)
  t.match(refused.text, /refuses this request target with 400/)
})

t.test(
  'policy.pathCase: insensitive makes routes match in any case, for upstreams that fold case',
  async (t) => {
    const up = await startUpstream()
    t.teardown(() => up.close())
    const sidecar = await startTestSidecar(t, {
      upstream: up.url,
      policy: { ...POLICY, pathCase: 'insensitive' },
    })
    const port = sidecar.proxyAddress.port
    for (const target of ['/ADMIN', '/Admin/users', '/%41dmin/', '/INTERNAL', '/public/../Internal;x'])
      t.equal(await rawStatus(port, target), 403, target)
    t.equal(await rawStatus(port, '/Public/page'), 200)
    t.same(
      up.received.map((r) => r.url),
      ['/Public/page'],
      'only the allowed request reached the upstream, with its case kept',
    )
  },
)

t.test('a policy route written with a trailing slash also covers the path without it', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const sidecar = await startTestSidecar(t, {
    upstream: up.url,
    policy: {
      mode: 'enforce',
      rules: [{ name: 'settings', route: '/settings/', allow: [{ identity: 'nobody' }] }],
    },
  })
  const port = sidecar.proxyAddress.port
  // Express (non-strict routing) and Spring serve both from the handler of "/settings/"
  for (const target of ['/settings/', '/settings', '/settings;x=1', '//settings', '/settings?x=1'])
    t.equal(await rawStatus(port, target), 403, target)
  t.equal(await rawStatus(port, '/settings/other'), 200, 'a path below the route is not the route')
  t.same(
    up.received.map((r) => r.url),
    ['/settings/other'],
  )
})

t.test("an identity rule's match.path takes a trailing slash as policy routes do", async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const sidecar = await startTestSidecar(t, {
    upstream: up.url,
    identities: [
      {
        rule: 'exporter',
        name: 'exporter',
        kind: 'job',
        match: { path: '/export', header: { 'x-job': 'nightly' } },
      },
      {
        rule: 'files',
        name: 'file-reader',
        kind: 'job',
        match: { path: '/files/*', header: { 'x-job': 'nightly' } },
      },
      {
        rule: 'reports',
        name: 'reporter',
        kind: 'job',
        match: { path: '/reports/', header: { 'x-job': 'nightly' } },
      },
    ],
  })
  const port = sidecar.proxyAddress.port
  const named = async (target: string) => {
    t.equal(await rawStatus(port, target, 'GET', { 'x-job': 'nightly' }), 200, target)
    return up.received.at(-1)?.headers['x-nhi-identity']
  }
  // (an unverified caller's name carries ua:) the request is named by the path it is decided by: "/export/" is "/export" for the policy and the name
  t.equal(await named('/export'), 'ua:exporter')
  t.equal(await named('/export/'), 'ua:exporter', 'a trailing slash on the path is optional')
  t.equal(await named('/files/a.csv'), 'ua:file-reader')
  t.not(await named('/files/'), 'ua:file-reader', '"/files/" is "/files": not a file below it')
  t.equal(await named('/reports'), 'ua:reporter', "the pattern's own trailing slash is optional too")
  t.equal(await named('/reports/'), 'ua:reporter')
  t.not(await named('/reports/x'), 'ua:reporter', 'a path below it is not it')
})

/**
 * An upstream on a raw socket that records each request line, so no HTTP parser refuses what it is sent
 * (Go's and others accept more than Node's), and answers 200.
 */
async function requestLineUpstream(t: Test): Promise<{ url: string; lines: string[] }> {
  const lines: string[] = []
  const { url } = await scriptedUpstream(t, ({ head, socket }) => {
    lines.push(head.slice(0, head.indexOf('\r\n')))
    socket.end('HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok')
    return undefined
  })
  return { url, lines }
}

/** An HTTP/2 session to `url`, destroyed at teardown: sends one request without a body, resolves with its status */
function h2Client(t: Test, url: string) {
  const session = http2Connect(url)
  session.on('error', () => {})
  t.teardown(() => session.destroy())
  return async (headers: Record<string, string>) => {
    const stream = session.request(headers, { endStream: true })
    stream.on('error', () => {})
    const [response] = (await once(stream, 'response')) as [Record<string, string | number>]
    stream.resume()
    await once(stream, 'end')
    return Number(response[':status'])
  }
}

t.test('HTTP/2: a path with raw bytes beyond ASCII is refused, as over HTTP/1.1', async (t) => {
  const { url, lines } = await requestLineUpstream(t)
  const sidecar = await startTestSidecar(t, {
    upstream: url,
    policy: {
      mode: 'enforce',
      rules: [{ name: 'cafe', route: '/caf%C3%A9/**', allow: [{ identity: 'nobody' }] }],
    },
  })
  const request = h2Client(t, sidecar.proxyUrl)
  const status = (path: string) => request({ ':path': path })
  t.equal(await status('/caf%C3%A9/menu'), 403, 'the percent-encoded spelling is denied')
  // node:http2 sends a header string's characters as latin1 bytes: these are the UTF-8 bytes C3 A9
  t.equal(await status('/caf\u00c3\u00a9/menu'), 400, 'the raw UTF-8 spelling is refused')
  t.equal(await status('/caf\u00e9/menu'), 400, 'a raw latin1 byte is refused')
  t.equal(await status('/menu?q=caf%C3%A9'), 200)
  t.same(lines, ['GET /menu?q=caf%C3%A9 HTTP/1.1'], 'only the ASCII path reached the upstream')
})

t.test(
  'HTTP/2: a method with lower-case letters is refused, never decided as its upper-case form',
  async (t) => {
    const { url, lines } = await requestLineUpstream(t)
    const sidecar = await startTestSidecar(t, {
      upstream: url,
      policy: {
        mode: 'enforce',
        rules: [
          { name: 'reads', route: '/items/**', methods: ['GET'], allow: [{ verified: false }] },
          { name: 'items', route: '/items/**', allow: [{ identity: 'nobody' }] },
        ],
      },
    })
    const request = h2Client(t, sidecar.proxyUrl)
    // the policy took `get` for the GET it allows, and Go's router takes it for an unknown method that a
    // handler without a method pattern serves
    for (const method of ['get', 'Get', 'delete', 'pUT'])
      t.equal(await request({ ':method': method, ':path': '/items/1' }), 400, method)
    t.equal(await request({ ':method': 'GET', ':path': '/items/1' }), 200)
    t.equal(await request({ ':method': 'DELETE', ':path': '/items/1' }), 403)
    t.same(lines, ['GET /items/1 HTTP/1.1'], 'only the upper-case GET reached the upstream')
  },
)
