// An upstream failure is counted in nhi_upstream_errors_total and said once in the operator's log, with why:
// a TLS certificate the proxy does not trust, a connection refused. Before, a 502 from an https upstream whose
// certificate had expired or changed CA left nothing but `reason="connect"` to go by. The line repeats at most
// once per reason and error code per interval, with the count of those it did not log.
import { createServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import pino from 'pino'
import t from 'tap'
import { UnsupportedResponseCoding } from '../../src/proxy/headers.ts'
import {
  logUpstreamFailure,
  UPSTREAM_FAILURE_LOG_INTERVAL_MS,
  UPSTREAM_FAILURE_LOG_KEYS,
  type UpstreamFailureLine,
  UpstreamFailureThrottle,
  upstreamFailureReporter,
} from '../../src/telemetry/upstream-failure-log.ts'
import { eventually } from '../helpers/eventually.ts'
import { freePort } from '../helpers/net.ts'
import { createCA, issueCert } from '../helpers/pki.ts'
import { freshGet } from '../helpers/pod.ts'
import { scratchDir } from '../helpers/scratch.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

const failureLines = (stderr: string) =>
  stderr
    .split('\n')
    .filter((l) => l.includes('"event":"upstream_failed"'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)

t.test(
  'an https upstream whose certificate is not trusted: 502, and one log line that says why',
  async (t) => {
    const dir = await scratchDir('upstream-failure-log')
    const trusted = await createCA('trusted-ca', dir)
    const other = await createCA('other-ca', dir)
    const cert = await issueCert(other, { cn: 'localhost', dnsSans: ['localhost'], server: true })
    const up = createServer({ cert: cert.certPem, key: cert.keyPem }, (_req, res) => res.end('never'))
    up.listen(0, '127.0.0.1')
    await new Promise((ok) => up.once('listening', ok))
    t.teardown(() => up.close())
    const sidecar = await startTestSidecar(t, {
      upstream: `https://localhost:${(up.address() as AddressInfo).port}`,
      upstreamTls: { ca: trusted.certFile },
    })
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`${sidecar.proxyUrl}/orders`)
      t.equal(res.status, 502, `request ${i + 1}: 502`)
    }
    const lines = failureLines(sidecar.process.stderr())
    t.equal(lines.length, 1, 'one line for the three failures')
    t.equal(lines[0]?.['reason'], 'connect')
    t.match(
      String(lines[0]?.['code']),
      /CERT|SIGNATURE|ISSUER/,
      `a certificate error code (${lines[0]?.['code']})`,
    )
    t.match(String(lines[0]?.['detail']), /certificate/, 'the TLS layer says why')
  },
)

t.test('a connection refused: the code and the address it could not reach', async (t) => {
  const port = await freePort()
  const sidecar = await startTestSidecar(t, { upstream: `http://127.0.0.1:${port}` })
  t.equal((await fetch(`${sidecar.proxyUrl}/`)).status, 502)
  const lines = await eventually(
    () => {
      const found = failureLines(sidecar.process.stderr())
      return found.length > 0 ? found : undefined
    },
    { what: 'the upstream_failed line' },
  )
  t.equal(lines.length, 1)
  t.equal(lines[0]?.['code'], 'ECONNREFUSED')
  t.match(String(lines[0]?.['detail']), `127.0.0.1:${port}`)
})

t.test(
  'the reporter: once per reason and code per interval, then again with the count it held back',
  async (t) => {
    const lines: Record<string, unknown>[] = []
    const log = pino({ level: 'warn' }, { write: (s: string) => void lines.push(JSON.parse(s)) })
    let now = 0
    const report = upstreamFailureReporter(logUpstreamFailure(log), () => now)
    const refused = Object.assign(new Error('connect ECONNREFUSED 10.0.0.1:80'), { code: 'ECONNREFUSED' })
    const parser = Object.assign(new Error('invalid header: set-cookie: session=abc'), {
      code: 'UND_ERR_PARSER',
    })
    report('connect', refused)
    report('connect', refused)
    report('reset', parser)
    report('connect', refused)
    t.equal(lines.length, 2, 'one line each for the two codes')
    t.notOk('detail' in lines[1]!, "the response parser's message is not logged (it may quote the upstream)")
    now = UPSTREAM_FAILURE_LOG_INTERVAL_MS
    report('connect', refused)
    t.equal(lines.length, 3, 'after the interval, the code is logged again')
    t.equal(lines[2]?.['unlogged'], 2, 'with the count of those held back')
  },
)

t.test(
  'an upstream cycling through error codes gets no more lines an interval than the reporter keeps codes',
  async (t) => {
    const lines: Record<string, unknown>[] = []
    const log = pino({ level: 'warn' }, { write: (s: string) => void lines.push(JSON.parse(s)) })
    let now = 0
    const report = upstreamFailureReporter(logUpstreamFailure(log), () => now)
    const coded = (i: number) => Object.assign(new Error('Parse Error'), { code: `HPE_CODE_${i}` })
    for (let i = 0; i < UPSTREAM_FAILURE_LOG_KEYS * 3; i++) report('reset', coded(i))
    t.equal(
      lines.length,
      UPSTREAM_FAILURE_LOG_KEYS,
      `at most ${UPSTREAM_FAILURE_LOG_KEYS} lines in one interval`,
    )
    now = UPSTREAM_FAILURE_LOG_INTERVAL_MS
    report('reset', coded(UPSTREAM_FAILURE_LOG_KEYS * 3))
    t.equal(lines.length, UPSTREAM_FAILURE_LOG_KEYS + 1, 'a new code is logged once the interval has passed')
  },
)

t.test('the pod throttles the lines its workers hand over: one per interval, counting all', async (t) => {
  const lines: UpstreamFailureLine[] = []
  let now = 0
  const pod = new UpstreamFailureThrottle(
    (line) => lines.push(line),
    () => now,
  )
  // each worker's first line of an interval; the second worker's came after it had held back 4
  pod.note('connect', 'ECONNREFUSED', 'connect ECONNREFUSED 10.0.0.1:80', 0)
  pod.note('connect', 'ECONNREFUSED', 'connect ECONNREFUSED 10.0.0.1:80', 4)
  t.equal(lines.length, 1, 'one line for the pod')
  now = UPSTREAM_FAILURE_LOG_INTERVAL_MS
  pod.note('connect', 'ECONNREFUSED', 'connect ECONNREFUSED 10.0.0.1:80', 2)
  t.equal(lines.length, 2, 'the next interval, a line again')
  t.equal(
    lines[1]?.unlogged,
    5 + 2,
    'counting the failures of the line held back and those its worker held back',
  )
})

t.test('workers: 2 against an upstream that refuses: one line for the pod, not one per worker', async (t) => {
  const port = await freePort()
  const sidecar = await startTestSidecar(t, { upstream: `http://127.0.0.1:${port}`, workers: 2 })
  // a new connection each: the cluster hands them to the workers in turn, so both fail
  for (let i = 0; i < 4; i++)
    t.equal(await freshGet(`${sidecar.proxyUrl}/`, 'probe'), 502, `request ${i + 1}: 502`)
  // the scrape asks every worker over the channel its failure reports went on before: once it counts the
  // four, the primary has had every report
  await eventually(
    async () =>
      /nhi_upstream_errors_total\{[^}]*reason="connect"[^}]*\} 4\b/.test(
        await (await fetch(`${sidecar.adminUrl}/metrics`)).text(),
      ),
    { what: 'the four failures counted' },
  )
  await eventually(() => failureLines(sidecar.process.stderr()).length > 0, {
    what: 'the upstream_failed line',
  })
  const lines = failureLines(sidecar.process.stderr())
  t.equal(lines.length, 1, 'one line for the pod')
  t.equal(lines[0]?.['code'], 'ECONNREFUSED')
})

t.test(
  "a response in another transfer coding: its code, not its message, which quotes the upstream's bytes",
  async (t) => {
    const lines: UpstreamFailureLine[] = []
    const report = upstreamFailureReporter((line) => lines.push(line))
    report('reset', new UnsupportedResponseCoding('x-upstream-chose-this, chunked'))
    t.equal(lines[0]?.code, 'UND_ERR_RESPONSE_CODING')
    t.notOk('detail' in lines[0]!, 'no detail')
  },
)
