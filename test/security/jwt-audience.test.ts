// Audience is explicit: an issuer that lists no audiences used to accept a token minted for any other
// service (or for the Kubernetes API server, which every pod's own token is for) as `verified`. Now
// `check` and `run` refuse such a config, an issuer that somehow has none accepts no token, and accepting
// every audience takes `audiences: any`, written out.
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { request } from 'undici'
import { runCheck } from '../../src/cli/check.ts'
import { configSchema } from '../../src/config/schema.ts'
import { JwtExtractor } from '../../src/identity/extractors/jwt.ts'
import { createSigningKey, mintToken, startJwksServer, startUpstreamAndJwks } from '../helpers/jwks.ts'
import { metricValue, type Sample, scrape, scrapeUntil } from '../helpers/metrics.ts'
import { scratchDirSync } from '../helpers/scratch.ts'
import { spawnCli, startTestSidecar } from '../helpers/sidecar.ts'

const API_SERVER_AUD = 'https://kubernetes.default.svc.cluster.local'

t.test('a config whose issuer lists no audiences fails check, and run refuses it', async (t) => {
  const dir = scratchDirSync('aud')
  const file = join(dir, 'no-aud.yaml')
  writeFileSync(
    file,
    [
      'service: orders',
      'listen: { http: 127.0.0.1:0 }',
      'admin: 127.0.0.1:0',
      'jwt:',
      '  issuers:',
      '    - issuer: https://kubernetes.default.svc.cluster.local',
      '      profile: kubernetes',
      '      jwksUri: https://kubernetes.default.svc/openid/v1/jwks',
      '    - issuer: https://idp.example',
      '      jwksUri: https://idp.example/jwks',
      '      audiences: []',
      '    - issuer: https://any.example',
      '      jwksUri: https://any.example/jwks',
      '      audiences: any',
      '',
    ].join('\n'),
  )
  const lines: string[] = []
  t.equal(await runCheck([file], (l) => lines.push(l)), 1, 'check exits 1')
  const missing = `${file}:6:7 issuer "https://kubernetes.default.svc.cluster.local" has no audiences: it would accept tokens minted for any other service`
  t.ok(
    lines.some((l) => l.startsWith(missing)),
    `FILE:LINE:COL for the issuer without audiences\n${lines.join('\n')}`,
  )
  t.ok(
    lines.some((l) => l.startsWith(`${file}:11:18 issuer "https://idp.example" has an empty audiences list`)),
    'an empty list is an error at the list',
  )
  t.notOk(
    lines.some((l) => l.includes('https://any.example')),
    '`audiences: any` written out is accepted',
  )

  const run = spawnCli(['run', '-c', file, '--upstream', 'http://127.0.0.1:9'])
  t.teardown(() => run.kill('SIGKILL'))
  t.equal(await run.exited, 1, 'run refuses to start (exit 1)')
  t.match(run.stderr() + run.stdout(), missing, 'with the same message')
})

t.test('an issuer without audiences that bypassed the loader accepts no token', async (t) => {
  const key = await createSigningKey('k1')
  const idp = await startJwksServer([key])
  t.teardown(() => idp.close())
  const x = new JwtExtractor(
    configSchema.parse({ jwt: { issuers: [{ issuer: idp.url, jwksUri: idp.jwksUri }] } }).jwt,
  )
  t.teardown(() => x.close())
  await x.start()
  const conn = { remoteAddress: '127.0.0.1', remotePort: 40000, tls: false }
  for (const audience of [API_SERVER_AUD, 'orders', undefined]) {
    const token = await mintToken(key, { sub: 'system:serviceaccount:x:y' }, { issuer: idp.url, audience })
    const req = { method: 'GET', path: '/', url: '/', headers: { authorization: `Bearer ${token}` } }
    t.match(
      await x.extract(req, conn),
      { failed: true, reason: 'wrong_audience' },
      `aud ${audience ?? '(none)'} is not verified`,
    )
  }
})

t.test(
  'through the proxy: a token for another audience is not verified; `any` is an explicit choice',
  async (t) => {
    const { upstream, key, jwks: idp } = await startUpstreamAndJwks(t)
    const OPEN = `${idp.url}/open`
    const sidecar = await startTestSidecar(t, {
      service: 'orders',
      upstream: upstream.url,
      jwt: {
        issuers: [
          { issuer: idp.url, jwksUri: idp.jwksUri, audiences: ['orders'] },
          { issuer: OPEN, jwksUri: idp.jwksUri, audiences: 'any' },
        ],
      },
    })
    const proxy = sidecar.proxyUrl
    const admin = sidecar.adminUrl
    const echo = async (token: string) => {
      const res = await request(`${proxy}/echo`, { headers: { authorization: `Bearer ${token}` } })
      t.equal(res.statusCode, 200)
      return (JSON.parse(await res.body.text()) as { headers: Record<string, string> }).headers
    }
    const mint = (issuer: string, audience?: string) =>
      mintToken(key, { azp: 'payments' }, { issuer, audience, subject: 'payments' })

    const before = await scrape(admin)
    const foreign = await echo(await mint(idp.url, API_SERVER_AUD))
    t.equal(foreign['x-nhi-verified'], 'false', 'a token minted for the API server is not verified here')
    t.not(foreign['x-nhi-source'], 'jwt')
    const none = await echo(await mint(idp.url))
    t.equal(none['x-nhi-verified'], 'false', 'a token without aud is not verified')
    const wrongAudience = (s: Sample[]) =>
      metricValue(s, 'nhi_auth_failures_total', { reason: 'wrong_audience' })
    const after = await scrapeUntil(
      admin,
      (s) => wrongAudience(s) - wrongAudience(before) >= 2,
      'both wrong-audience requests to be counted',
    )
    t.equal(wrongAudience(after) - wrongAudience(before), 2, 'both counted as wrong_audience')

    const ours = await echo(await mint(idp.url, 'orders'))
    t.equal(ours['x-nhi-verified'], 'true', 'control: a token for this service verifies')
    t.equal(ours['x-nhi-source'], 'jwt')
    const open = await echo(await mint(OPEN, 'anything-at-all'))
    t.equal(open['x-nhi-verified'], 'true', '`audiences: any` accepts every audience, as written')
  },
)
