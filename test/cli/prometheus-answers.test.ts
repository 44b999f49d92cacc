// What `inventory` and `fleet` make of a Prometheus (or a proxy in front of it) that answers badly: an error
// quoting label values (clients' names) or an HTML page, a body that stalls or never ends, a result that is
// not the vector the API documents. Each is one line on stderr that cannot drive the terminal, exit 2, and
// nothing half-printed on stdout.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import t, { type Test } from 'tap'
import { listenUntilTeardown } from '../helpers/net.ts'
import { runCli } from '../helpers/sidecar.ts'

/** what a terminal would act on: C0 (but the line break ending the message), DEL, C1 */
const CONTROL = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/

async function fakePrometheus(
  t: Test,
  answer: (res: ServerResponse, req: IncomingMessage) => void,
): Promise<string> {
  const server = createServer((req, res) => {
    req.resume()
    req.on('end', () => answer(res, req))
  })
  return `http://127.0.0.1:${await listenUntilTeardown(t, server)}`
}

const json = (res: ServerResponse, status: number, body: unknown) => {
  res.writeHead(status, { 'content-type': 'application/json' })
  res.end(JSON.stringify(body))
}

t.test('an error message with control characters is shown escaped', async (t) => {
  const hostile = '{identity="x\u001b]8;;http://evil.example\u0007click\u001b]8;;\u0007\u001b[2J\rok"}'
  const error = await fakePrometheus(t, (res) =>
    json(res, 422, {
      status: 'error',
      errorType: 'execution',
      error: `found duplicate series for ${hostile}`,
    }),
  )
  const page = await fakePrometheus(t, (res) => {
    res.writeHead(502, { 'content-type': 'text/html' })
    res.end('\u001b[31m<html>bad gateway\u009b2J</html>')
  })
  // the runs are independent: started together, a loaded machine starts the CLI four times at once, not in turn
  const runs = [error, page].flatMap((prometheus) =>
    ['inventory', 'fleet'].map(async (command) => ({
      command,
      r: await runCli([command, '--prometheus', prometheus]),
    })),
  )
  for (const { command, r } of await Promise.all(runs)) {
    t.equal(r.code, 2, `${command}: exit 2`)
    t.match(r.stderr, /answered HTTP (422|502)/, `${command}: says what Prometheus answered`)
    t.notMatch(r.stderr, CONTROL, `${command}: no control character reaches the terminal`)
    t.match(r.stderr, /\\x1b/, `${command}: the escape is shown as such`)
  }
})

t.test('a body that stalls past --timeout is a timeout, not an answer', async (t) => {
  const prometheus = await fakePrometheus(t, (res) => {
    res.writeHead(200, { 'content-type': 'application/json' })
    res.write('{"status":"success",')
  })
  const r = await runCli(['inventory', '--prometheus', prometheus, '--timeout', '1s'])
  t.equal(r.code, 2)
  t.match(r.stderr, /did not answer within 1000 ms/)
  t.notMatch(r.stderr, /answered HTTP 200/)
})

t.test('an answer larger than the bound is refused without reading it all', async (t) => {
  const now = Math.floor(Date.now() / 1000)
  const prometheus = await fakePrometheus(t, (res) => {
    res.writeHead(200, { 'content-type': 'application/json' })
    res.write('{"status":"success","data":{"resultType":"vector","result":[')
    const row = `{"metric":{"identity":"${'x'.repeat(900)}","kind":"job","service":"s"},"value":[${now},"1"]},`
    const chunk = row.repeat(1000)
    // endless: only the client's bound ends it
    const more = () => {
      while (res.write(chunk)) {
        if (res.destroyed) return
      }
      res.once('drain', more)
    }
    res.on('error', () => {})
    more()
  })
  const started = Date.now()
  const r = await runCli(['inventory', '--prometheus', prometheus, '--timeout', '60s'], {
    timeoutMs: 60_000,
  })
  t.equal(r.code, 2, r.stderr)
  t.match(r.stderr, /answered more than \d+ MiB/)
  t.ok(Date.now() - started < 50_000, 'long before the query deadline')
})

t.test('a result that is not a vector of samples: exit 2, one line, nothing printed', async (t) => {
  const now = Math.floor(Date.now() / 1000)
  const results = [
    [{}],
    [null],
    [{ metric: { identity: 5, kind: { a: 1 }, service: 's' }, value: [now, '1'] }],
    [{ metric: { identity: 'a', kind: 'job', service: 's' }, value: [now, 1] }],
    [{ metric: { identity: 'a', kind: 'job', service: 's' }, value: null }],
  ]
  const runs = results.map(async (result) => {
    const prometheus = await fakePrometheus(t, (res) =>
      json(res, 200, { status: 'success', data: { resultType: 'vector', result } }),
    )
    const answers = await Promise.all(
      ['inventory', 'fleet'].map(async (command) => ({
        command,
        r: await runCli([command, '--prometheus', prometheus]),
      })),
    )
    return { result, answers }
  })
  for (const { result, answers } of await Promise.all(runs)) {
    for (const { command, r } of answers) {
      t.equal(r.code, 2, `${command} ${JSON.stringify(result)}: exit 2`)
      t.match(r.stderr, /answered a malformed result/, `${command}: says so`)
      t.equal(r.stdout, '', `${command}: nothing half-printed`)
    }
  }
})

t.test('warnings of a partial answer are shown, never dropped', async (t) => {
  const now = Math.floor(Date.now() / 1000)
  const prometheus = await fakePrometheus(t, (res) =>
    json(res, 200, {
      status: 'success',
      warnings: ['partial response: store eu-1 did not answer\u001b[2J'],
      data: {
        resultType: 'vector',
        result: [{ metric: { identity: 'a', kind: 'job', service: 's' }, value: [now, '1'] }],
      },
    }),
  )
  const warned = /warning: Prometheus: partial response: store eu-1 did not answer\\x1b\[2J/
  const argsList = [['inventory'], ['inventory', '--csv'], ['inventory', '--json'], ['fleet', '--json']]
  const answers = await Promise.all(argsList.map((args) => runCli([...args, '--prometheus', prometheus])))
  for (const [i, args] of argsList.entries()) {
    const r = answers[i]!
    t.equal(r.code, 0, `${args.join(' ')}: the answer is used`)
    t.match(r.stderr, warned, `${args.join(' ')}: the warning on stderr, escaped`)
    if (args.includes('--json'))
      t.match(JSON.parse(r.stdout).warnings, [/partial response/], 'and in the document')
  }
  const table = await runCli(['fleet', '--prometheus', prometheus])
  t.match(table.stdout, warned, 'fleet: the warning heads the picture')
})
