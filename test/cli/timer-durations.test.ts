// A duration the proxy waits for is at most 24d: Node's timers hold about 24.8 days and fire a longer one
// after 1 ms. A key set to refresh every 30 days was refetched from the IdP a thousand times a second, and a
// month's deadline for a Prometheus query failed every query at once. Such a value is refused where it is
// written (FILE:LINE:COL, exit 1), before anything waits on it; one only compared with elapsed time
// (expectEvery, metrics.idleTtl) may still be longer.
import { writeFileSync } from 'node:fs'
import { createServer } from 'node:http'
import { join } from 'node:path'
import t from 'tap'
import { stringify } from 'yaml'
import { createSigningKey, startJwksServer } from '../helpers/jwks.ts'
import { listenUntilTeardown } from '../helpers/net.ts'
import { scratchDirSync } from '../helpers/scratch.ts'
import { runCli, spawnCli } from '../helpers/sidecar.ts'

function configFile(name: string, config: Record<string, unknown>): string {
  const path = join(scratchDirSync(name), 'config.yaml')
  writeFileSync(
    path,
    stringify({ listen: { http: '127.0.0.1:0' }, admin: '127.0.0.1:0', audit: { output: 'off' }, ...config }),
  )
  return path
}

t.test(
  'run refuses a JWKS refreshInterval longer than a timer holds, before fetching the keys',
  async (t) => {
    const jwks = await startJwksServer([await createSigningKey('k1')])
    t.teardown(() => jwks.close())
    const path = configFile('timer-refresh', {
      jwt: {
        issuers: [
          { issuer: 'https://idp.example', jwksUri: jwks.jwksUri, audiences: 'any', refreshInterval: '30d' },
        ],
      },
    })
    const checked = await runCli(['check', path])
    t.equal(checked.code, 1, 'check: exit 1')
    t.match(
      checked.stdout,
      /config\.yaml:\d+:\d+ jwt\.issuers\[0\]\.refreshInterval: "30d" is too long: at most 24d/,
      'check names the setting at its line and column',
    )

    const run = spawnCli(['run', '-c', path])
    t.teardown(() => run.kill('SIGKILL'))
    // a start that went ahead is stopped as soon as it says so; the assertions below then fail on it
    void run.waitFor(/"event":"started"/).then(
      () => run.kill('SIGTERM'),
      () => {},
    )
    t.equal(await run.exited, 1, 'run: exit 1, nothing started')
    t.notMatch(run.stderr(), /"event":"started"/)
    t.match(run.stderr(), /refreshInterval: "30d" is too long: at most 24d/)
    t.notMatch(run.stderr(), /TimeoutOverflowWarning/)
    t.equal(jwks.hits, 0, 'the key set was never fetched')
  },
)

t.test(
  'every duration that is waited for is bounded; the ones compared with elapsed time are not',
  async (t) => {
    const path = configFile('timer-bounds', {
      timeouts: { upstream: '24d', drain: 2_500_000 },
      adminAccess: { liveMaxDuration: '25d' },
      bots: { verify: { refreshInterval: '30d' } },
      metrics: { idleTtl: '60d' },
      identities: [
        {
          name: 'ci/nightly',
          kind: 'job',
          expectEvery: '31d',
          match: { jwt: { issuer: 'https://token.actions.githubusercontent.com' } },
        },
      ],
    })
    const r = await runCli(['check', path])
    t.equal(r.code, 1)
    const errors = r.stdout.split('\n').filter((l) => l.includes(' is too long: '))
    t.same(
      errors.map((l) => /^\S+:\d+:\d+ (\S+):/.exec(l)?.[1]).sort(),
      ['adminAccess.liveMaxDuration', 'bots.verify.refreshInterval', 'timeouts.drain'],
      'drain given in seconds, liveMaxDuration and the ranges refresh; 24d itself, idleTtl and expectEvery pass',
    )
  },
)

t.test('inventory and fleet refuse a --timeout longer than a timer holds, before querying', async (t) => {
  let queries = 0
  const server = createServer((req, res) => {
    queries++
    req.resume()
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ status: 'success', data: { resultType: 'vector', result: [] } }))
  })
  const prometheus = `http://127.0.0.1:${await listenUntilTeardown(t, server)}`
  for (const command of ['inventory', 'fleet']) {
    const r = await runCli([command, '--prometheus', prometheus, '--timeout', '30d'])
    t.equal(r.code, 1, `${command}: exit 1`)
    t.match(r.stderr, /option '--timeout <duration>' argument '30d' is invalid\. at most 24d/, command)
    t.notMatch(r.stderr, /TimeoutOverflowWarning|did not answer/, command)
  }
  t.equal(queries, 0, 'Prometheus was not asked')
  const ok = await runCli(['inventory', '--prometheus', prometheus, '--timeout', '24d', '--json'])
  t.equal(ok.code, 0, '24d is a deadline a timer holds')
})
