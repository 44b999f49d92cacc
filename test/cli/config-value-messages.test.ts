// A value the config schema refuses is said in the product's words, with what is allowed: the whole range of a
// count ("a whole number from 1 to 64, or auto"), "at least 1", a size as a byte count, a duration's forms,
// never zod's stock "expected number, received string" or "Too small: expected number to be >0".
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { scratchDirSync } from '../helpers/scratch.ts'
import { runCli } from '../helpers/sidecar.ts'

const dir = scratchDirSync('config-value-messages')

async function check(name: string, text: string): Promise<{ code: number; lines: string[] }> {
  const file = join(dir, name)
  writeFileSync(file, text)
  const r = await runCli(['check', file], { env: { NHI_PROXY_CONFIG: undefined } })
  const lines = r.stdout
    .split('\n')
    .filter((l) => l.startsWith(`${file}:`) && !l.startsWith(`${file}: `))
    .map((l) => l.slice(file.length + 1))
  return { code: r.code, lines }
}

t.test('counts, sizes, shares and bucket bounds name what is allowed', async (t) => {
  const r = await check(
    'numbers.yaml',
    [
      'workers: many',
      'limits:',
      '  maxHeaderBytes: 16k',
      '  maxConnections: 0',
      '  http2MaxConcurrentStreams: 1.5',
      'jwt:',
      '  verifyWorkers: 20',
      '  cacheSize: "100"',
      'audit:',
      '  sample: 2',
      'metrics:',
      '  buckets: [0, 1]',
      'cost:',
      '  perRequest: -1',
      '',
    ].join('\n'),
  )
  t.equal(r.code, 1)
  t.same(r.lines, [
    '1:10 workers: expected a whole number from 1 to 64, or auto',
    '3:19 limits.maxHeaderBytes: expected a whole number of bytes of at least 1 (a size is a byte count: 16384, not 16k)',
    '4:19 limits.maxConnections: expected a whole number of at least 1',
    '5:30 limits.http2MaxConcurrentStreams: expected a whole number of at least 1',
    '7:18 jwt.verifyWorkers: expected a whole number from 0 to 16',
    '8:14 jwt.cacheSize: expected a whole number of at least 1',
    '10:11 audit.sample: expected a number from 0 to 1 (the share of requests audited: 0.1 is one in ten)',
    '12:13 metrics.buckets[0]: expected a number of seconds more than 0 (a bucket bound, e.g. 0.25)',
    '14:15 cost.perRequest: expected a number of at least 0, got -1',
  ])
})

t.test('workers: 0 and 2.5 say the same as many; above 64 keeps its reason', async (t) => {
  for (const value of ['0', '2.5', 'true']) {
    const r = await check(`workers-${value}.yaml`, `workers: ${value}\n`)
    t.equal(r.code, 1, value)
    t.same(r.lines, ['1:10 workers: expected a whole number from 1 to 64, or auto'], value)
  }
})

t.test('text, URLs, durations, lists and addresses', async (t) => {
  const r = await check(
    'other.yaml',
    [
      'service: ""',
      'upstream: foo',
      'listen:',
      '  http: foo',
      'timeouts:',
      '  upstream: -5',
      '  idle: true',
      'jwt:',
      '  issuers:',
      '    - issuer: x',
      '      audiences: 5',
      'identities:',
      '  - name: a',
      '    match: { method: 7 }',
      'otlp:',
      '  logs: "yes"',
      '',
    ].join('\n'),
  )
  t.equal(r.code, 1)
  t.same(r.lines, [
    '1:10 service: must not be empty',
    '2:11 upstream: expected a URL such as https://host:port/path, got "foo"',
    '4:9 listen.http: expected HOST:PORT, e.g. 0.0.0.0:8080 or [::1]:8080',
    '6:13 timeouts.upstream: expected a duration such as 500ms, 30s, 5m, 24h, 7d, or a number of seconds',
    '7:9 timeouts.idle: expected a duration such as 500ms, 30s, 5m, 24h, 7d, or a number of seconds',
    '11:18 jwt.issuers[0].audiences: expected any or a list, got 5',
    '14:22 identities[0].match.method: expected text or a list, got 7',
    '16:9 otlp.logs: expected true or false, got "yes"',
  ])
})

t.test('no stock wording anywhere', async (t) => {
  const r = await check(
    'stock.yaml',
    'workers: many\nlimits:\n  maxConnections: 0\nservice: ""\nupstream: x\n',
  )
  for (const line of r.lines)
    t.notMatch(line, /Too small|Too big|received|Invalid|expected number|expected int/)
})
