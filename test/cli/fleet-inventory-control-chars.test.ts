// Identity names are what clients presented (a certificate subject, a token claim a rule captures, a header),
// and Prometheus hands them back as they are. `inventory` and `fleet` print them into an operator's terminal
// (and `fleet --serve` into a page): a control character there must show as an escape, never move the
// cursor, retitle or recolour the terminal, or start a line that looks like another identity's row.
import { once } from 'node:events'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import { freePort } from '../helpers/net.ts'
import { runCli, spawnCli } from '../helpers/sidecar.ts'

const HOSTILE = [
  'osc\u001b]0;owned\u0007',
  'csi\u001b[2J\u001b[31mred',
  'c1\u009b31m',
  'fake\nbilling-export  job  jwt  yes',
  'cr\roverwritten',
  'rtl\u202etxt.exe',
]
/** what a terminal would act on: C0 (but the line breaks of the output), DEL, C1, bidi overrides, separators */
const CONTROL = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u200e\u200f\u2028-\u202e\u2066-\u2069]/

async function fakePrometheus(t: Test): Promise<string> {
  const now = Math.floor(Date.now() / 1000)
  const server = createServer((req, res) => {
    let body = ''
    req.setEncoding('utf8')
    req.on('data', (c: string) => {
      body += c
    })
    req.on('end', () => {
      const query = new URLSearchParams(body).get('query') ?? ''
      // timestamps for the *_timestamp_seconds series, small numbers for the rest
      const value = query.includes('last_success')
        ? now - 3600
        : query.includes('expected_interval')
          ? 60
          : query.includes('timestamp_seconds')
            ? now - 30
            : 2
      const result = HOSTILE.map((identity) => ({
        metric: {
          identity,
          kind: 'job',
          service: 'orders',
          source: 'jwt',
          verified: 'false',
          currency: 'USD',
        },
        value: [now, String(value)],
      }))
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ status: 'success', data: { resultType: 'vector', result } }))
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => server.close())
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

t.test('inventory and fleet print control characters in identity names as escapes', async (t) => {
  const prometheus = await fakePrometheus(t)
  const [inventory, fleet] = await Promise.all([
    runCli(['inventory', '--prometheus', prometheus]),
    runCli(['fleet', '--prometheus', prometheus]),
  ])
  for (const [command, r] of [
    ['inventory', inventory],
    ['fleet', fleet],
  ] as const) {
    t.equal(r.code, 0, `${command} runs: ${r.stderr}`)
    t.notMatch(r.stdout, CONTROL, `${command}: no control character reaches the terminal`)
    t.notOk(
      r.stdout.split('\n').some((line) => /^\s*billing-export/.test(line)),
      `${command}: a newline in a name starts no row of its own`,
    )
    t.match(r.stdout, 'osc\\x1b]0;owned\\x07', `${command}: the name is shown, escaped`)
    t.match(r.stdout, 'fake\\nbilling-export', `${command}: the newline shown as \\n`)
    t.match(r.stdout, 'rtl\\u202etxt.exe', `${command}: a bidi override shown as its code point`)
  }
  t.match(inventory.stdout, /Dormant \(\d+\):/, 'the dormant list is printed too')

  // the machine-readable forms keep the names exactly
  const json = await runCli(['inventory', '--prometheus', prometheus, '--json'])
  const names = (JSON.parse(json.stdout) as { identities: { identity: string }[] }).identities.map(
    (r) => r.identity,
  )
  t.same(names.sort(), [...HOSTILE].sort(), '--json keeps every name as it is')

  const port = await freePort()
  const served = spawnCli(['fleet', '--prometheus', prometheus, '--serve', String(port)])
  t.teardown(() => served.kill())
  await served.waitFor(/fleet view of .* on http:\/\//)
  const page = await (await fetch(`http://127.0.0.1:${port}/`)).text()
  t.notMatch(page, CONTROL, 'the fleet page has no control characters either')
  t.match(page, 'fake\\nbilling-export')
  served.kill()
  t.equal(await served.exited, 0)
})
