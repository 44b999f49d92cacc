// Admin isolation: /metrics /healthz /readyz for anyone who can reach the port; the operator endpoints
// (/audit /events /identities /config /ui) for loopback peers or with the bearer token, behind a Host check
// (DNS rebinding); /config without URL credentials; /events slots freed from clients that never read.
import { EventEmitter, once } from 'node:events'
import { rmSync, writeFileSync } from 'node:fs'
import { request } from 'node:http'
import { connect, type Socket } from 'node:net'
import { join } from 'node:path'
import pino from 'pino'
import t, { type Test } from 'tap'
import type { AdminAccess } from '../../src/admin/server.ts'
import { redactConfig, redactHeader, redactText, redactUrl, urlLabel } from '../../src/config/redact.ts'
import { configSchema } from '../../src/config/schema.ts'
import { TokenFile } from '../../src/runtime.ts'
import { Telemetry } from '../../src/telemetry/index.ts'
import { LiveFeed } from '../../src/telemetry/live.ts'
import { startAdmin } from '../helpers/admin.ts'
import { requestEvent } from '../helpers/events.ts'
import { eventually } from '../helpers/eventually.ts'
import { scratchDirSync } from '../helpers/scratch.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

const OPERATOR = ['/audit', '/events', '/identities', '/config', '/ui']
const PUBLIC = ['/metrics', '/healthz', '/readyz']

async function admin(
  t: Test,
  opts: { local: boolean; access?: AdminAccess },
): Promise<{ port: number; telemetry: Telemetry }> {
  const telemetry = new Telemetry(configSchema.parse({ service: 'shop', audit: { output: 'off' } }), {
    version: 'test',
  })
  const url = await startAdmin(t, telemetry, {
    ...(opts.access ? { access: () => opts.access! } : {}),
    // every test socket is on loopback: this seam makes the server treat the peer as another pod
    isLocalPeer: () => opts.local,
  })
  return { port: Number(new URL(url).port), telemetry }
}

/** GET with a chosen Host header; the body is read only for non-streams */
function get(
  port: number,
  path: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, headers, agent: false }, (res) => {
      resolve({ status: res.statusCode ?? 0, headers: res.headers })
      res.destroy()
    })
    req.on('error', reject)
    req.end()
  })
}

t.test('a peer from the pod network: public endpoints only, unless it has the token', async (t) => {
  const noToken = await admin(t, { local: false })
  for (const path of PUBLIC) t.equal((await get(noToken.port, path)).status, 200, `${path} is public`)
  for (const path of OPERATOR) {
    t.equal((await get(noToken.port, path)).status, 403, `${path}: loopback only without a token file`)
  }

  let token = 'first-token-value'
  const withToken = await admin(t, { local: false, access: { token: () => token, allowedHosts: [] } })
  for (const path of OPERATOR) {
    const anonymous = await get(withToken.port, path)
    t.equal(anonymous.status, 401, `${path} without a token: 401`)
    t.match(anonymous.headers['www-authenticate'], /^Bearer/)
    t.equal((await get(withToken.port, path, { authorization: 'Bearer wrong' })).status, 401, 'wrong token')
    t.equal(
      (await get(withToken.port, path, { authorization: `Bearer ${token}` })).status,
      200,
      `${path} with the token`,
    )
  }
  const old = token
  token = 'rotated-token-value'
  t.equal(
    (await get(withToken.port, '/audit', { authorization: `Bearer ${old}` })).status,
    401,
    'rotated out',
  )
  t.equal((await get(withToken.port, '/audit', { authorization: `Bearer ${token}` })).status, 200, 'new one')
})

t.test('loopback peers need no token; every peer needs an acceptable Host', async (t) => {
  const { port } = await admin(t, {
    local: true,
    access: { token: () => 'secret-token', allowedHosts: ['nhi-admin.internal'] },
  })
  for (const path of OPERATOR) t.equal((await get(port, path)).status, 200, `${path} from loopback`)
  for (const host of [`127.0.0.1:${port}`, `localhost:${port}`, `[::1]:${port}`, 'nhi-admin.internal:9464']) {
    t.equal((await get(port, '/identities', { host })).status, 200, `Host: ${host}`)
  }
  for (const host of ['rebind.evil.example', `evil.example:${port}`, 'nhi-admin.internal.evil']) {
    t.equal((await get(port, '/identities', { host })).status, 403, `Host: ${host} refused`)
    t.equal(
      (await get(port, '/identities', { host, authorization: 'Bearer secret-token' })).status,
      403,
      `Host: ${host} refused with the token too`,
    )
  }
  t.equal(
    (await get(port, '/metrics', { host: 'prometheus-target.example' })).status,
    200,
    'metrics: any Host',
  )
})

t.test('/config redacts URL userinfo and secret-looking query parameters', async (t) => {
  t.equal(redactUrl('https://user:pass@idp.example/jwks'), 'https://redacted@idp.example/jwks')
  const masked = redactUrl('https://idp.example/keys?access_token=abc&sig=def&Password=x&tenant=acme')
  t.notMatch(masked, /abc|def|=x/)
  t.match(masked, /tenant=acme/, 'other parameters stay')
  t.equal(redactUrl('https://idp.example/keys?tenant=acme'), 'https://idp.example/keys?tenant=acme')
  t.equal(redactUrl('not a url: user:pass@x'), 'not a url: user:pass@x')
  const cfg = redactConfig({
    jwt: { issuers: [{ issuer: 'https://idp.example', jwksUri: 'https://a:b@idp.example/jwks?token=t0k' }] },
  }) as { jwt: { issuers: { jwksUri: string }[] } }
  t.notMatch(cfg.jwt.issuers[0]?.jwksUri, /a:b|t0k/)
})

t.test('a password holding # ? / or a blank is masked, whatever a URL parser makes of it', async (t) => {
  // new URL refuses the first ones (the rest of the password taken for a port) and reads the last ones as
  // host `user` with a port: the password then shows as a fragment, a query or a path
  for (const url of [
    'http://user:S3CRET#pw@collector:4318',
    'http://user:S3CRET?pw@collector:4318',
    'http://user:S3CRET/pw@collector:4318',
    'http://user:S3CRET pw@collector:4318',
    'http://user:S3CRET@collector:99999',
    'http://user:1234#S3CRET@collector:4318',
    'http://user:1234?S3CRET@collector:4318',
    'http://user:1234/S3CRET@collector:4318',
  ]) {
    const masked = redactUrl(url)
    t.notMatch(masked, /S3CRET|user/, `${url} → ${masked}`)
    t.match(masked, /^http:\/\/redacted@collector:(4318|99999)$/)
  }
  t.equal(
    redactUrl('http://user:pa#ss@collector:4318/?api_key=k3y&tenant=acme'),
    'http://redacted@collector:4318/?api_key=redacted&tenant=acme',
    'secret query parameters are masked after it',
  )
  t.same(
    redactConfig({ otlp: { endpoint: 'http://collector:S3CRET#pw@127.0.0.1:4318' } }),
    { otlp: { endpoint: 'http://redacted@127.0.0.1:4318' } },
    'on /config',
  )
})

t.test('redactText masks the URLs a message quotes', async (t) => {
  const url = 'http://user:S3CRET#pw@127.0.0.1:99999/v1/traces'
  t.equal(
    redactText(`Configuration: Could not parse user-provided export URL: '${url}'`),
    "Configuration: Could not parse user-provided export URL: 'http://redacted@127.0.0.1:99999/v1/traces'",
  )
  const quoted = "http://user:it's S3CRET@127.0.0.1:99999/v1/traces"
  t.equal(
    redactText(`bad URL: '${quoted}'`, [quoted]),
    "bad URL: 'http://redacted@127.0.0.1:99999/v1/traces'",
    'a URL known to be quoted is masked whole, quote and blank in its password included',
  )
  t.equal(redactText('exit code 1'), 'exit code 1', 'nothing else changes')
})

t.test(
  'redactConfig is the one secret masker: secret-named fields of any scalar type, URLs, depth',
  async (t) => {
    const out = redactConfig({
      tls: { cert: '/etc/tls/tls.crt', key: '/etc/tls/tls.key' },
      adminAccess: { tokenFile: '/var/run/token', bearerTokenFile: '/t' },
      webhook: { apiToken: 12345, client_secret: 's3cr3t', sha256: 'ab'.repeat(32), enabled: true },
      apiKeys: [{ name: 'billing', sha256: 'cd'.repeat(32) }],
      metrics: { maxIdentities: 5000 },
    }) as Record<string, Record<string, unknown>>
    t.same(out['tls'], { cert: '/etc/tls/tls.crt', key: '<redacted>' })
    t.same(
      out['adminAccess'],
      { tokenFile: '/var/run/token', bearerTokenFile: '/t' },
      'file paths are not secrets',
    )
    t.same(out['webhook'], {
      apiToken: '<redacted>',
      client_secret: '<redacted>',
      sha256: '<redacted>',
      enabled: true,
    })
    t.same(out['apiKeys'], [{ name: 'billing', sha256: '<redacted>' }])
    t.same(out['metrics'], { maxIdentities: 5000 })
    t.same(redactConfig(out), out, 'idempotent')
    let deep: Record<string, unknown> = { v: 1 }
    for (let i = 0; i < 100; i++) deep = { deep }
    t.doesNotThrow(() => redactConfig(deep), 'a deep value is cut off, not recursed without end')
    for (const name of ['Authorization', 'proxy-authorization', 'cookie', 'X-API-Key'])
      t.equal(redactHeader(name, 'secret-value'), '<redacted>', name)
    t.equal(redactHeader('user-agent', 'curl/8'), 'curl/8', 'other headers are shown')
  },
)

t.test('a subscriber that stops reading is disconnected after the write timeout', async (t) => {
  let now = 1_000_000
  const feed = new LiveFeed({ maxSubscribers: 1, writeTimeoutMs: 5_000, now: () => now, sweepMs: 60_000 })
  t.teardown(() => feed.close())
  const fake = () => {
    const res = Object.assign(new EventEmitter(), {
      destroyed: false,
      writableLength: 0,
      writeHead: () => res,
      write: () => false, // the socket buffer is full from the start
      end: () => undefined,
      destroy: () => {
        res.destroyed = true
      },
    })
    return res
  }
  const req = new EventEmitter()
  const stuck = fake()
  feed.subscribe(req as never, stuck as never)
  t.equal(feed.stats().subscribers, 1)
  now += 4_999
  feed.sweep()
  t.notOk(stuck.destroyed, 'kept within the write timeout')
  now += 1
  feed.sweep()
  t.ok(stuck.destroyed, 'disconnected once blocked for the write timeout')
  t.match(feed.stats(), { subscribers: 0, evicted: 1 })

  const second = fake()
  feed.subscribe(req as never, second as never)
  const third = fake()
  feed.subscribe(req as never, third as never)
  t.ok(second.destroyed, 'at capacity, a blocked subscriber gives its slot to a new one')
  t.equal(feed.stats().subscribers, 1)
})

t.test('clients that never read cannot lock operators out of /events', async (t) => {
  const sidecar = await startTestSidecar(t, { adminAccess: { liveClients: 2, liveMaxDuration: '1s' } })
  const { port } = sidecar.adminAddress
  const silent: Socket[] = []
  t.teardown(() => {
    for (const s of silent) s.destroy()
  })
  for (let i = 0; i < 2; i++) {
    const s = connect(port, '127.0.0.1')
    await once(s, 'connect')
    s.write(`GET /events HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`)
    s.pause() // never reads
    silent.push(s)
  }
  await eventually(async () => (await get(port, '/events')).status === 503, {
    what: 'the slots to be full',
  })
  const stream = await eventually(
    async () => {
      const res = await fetch(`http://127.0.0.1:${port}/events`)
      if (res.status !== 200) {
        await res.body?.cancel()
        return undefined
      }
      return res
    },
    { what: 'a slot to be freed', timeoutMs: 10_000 },
  )
  const reader = stream.body!.getReader()
  const first = await reader.read()
  t.match(new TextDecoder().decode(first.value), /: connected/, 'a real client gets its stream')
  await reader.cancel()
})

t.test('a remote live view with the token streams events', async (t) => {
  const { port, telemetry } = await admin(t, {
    local: false,
    access: { token: () => 'tok', allowedHosts: [] },
  })
  const res = await fetch(`http://127.0.0.1:${port}/events`, { headers: { authorization: 'Bearer tok' } })
  t.equal(res.status, 200)
  const reader = res.body!.getReader()
  await reader.read()
  telemetry.record(requestEvent({}))
  const { value } = await reader.read()
  t.match(new TextDecoder().decode(value), /^data: /)
  await reader.cancel()
})

t.test('the admin token file: read at start and on reload, re-read when stale, never fatal', async (t) => {
  const dir = scratchDirSync('token')
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'token')
  writeFileSync(file, 'first\n')
  let now = 1_000_000
  const lines: string[] = []
  const log = pino({ level: 'info' }, { write: (l: string) => void lines.push(l) })
  const token = new TokenFile(log, () => now)
  await token.load(file)
  t.equal(await token.get(), 'first', 'read at start, trailing newline trimmed')
  writeFileSync(file, 'second')
  t.equal(await token.get(), 'first', 'cached between reloads')
  await token.load(file)
  t.equal(await token.get(), 'second', 're-read on reload')
  writeFileSync(file, 'third')
  now += 30_001
  t.equal(await token.get(), 'third', 're-read when older than 30 s (Secret rotation)')
  await token.load(join(dir, 'missing'))
  t.equal(await token.get(), undefined, 'an unreadable file: no token, loopback only')
  t.match(lines.join(''), /admin_token_unreadable/, 'and a warning')
  t.notMatch(lines.join(''), /first|second|third/, 'the token is never logged')
  await token.load(undefined)
  t.equal(await token.get(), undefined, 'no tokenFile: no token')
})

t.test('a fetched URL as a metric label: its credentials out, an @ in its path kept', async (t) => {
  const label = (text: string) => urlLabel(text, new URL(text))
  // two key directories whose paths start with @: two series, not one
  t.equal(label('http://127.0.0.1:9000/@agent/keys'), 'http://127.0.0.1:9000/@agent/keys')
  t.equal(label('http://localhost:9001/@agent/keys'), 'http://localhost:9001/@agent/keys')
  t.equal(
    label('https://user:pw@dir.example/keys?token=abc&v=2'),
    'https://redacted@dir.example/keys?token=redacted&v=2',
    'userinfo and a secret query parameter masked',
  )
  t.equal(label('https://dir.example/keys?v=2'), 'https://dir.example/keys?v=2', 'as configured otherwise')
})
