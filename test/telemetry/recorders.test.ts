// Outputs are a list of recorders: a toy output joins through the same list as metrics, audit, live feed and
// OTLP (sees every request, each reload, the close); an output that throws, rejects or hangs is counted or
// reported and breaks neither the other outputs nor the request.
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import pino from 'pino'
import t from 'tap'
import { stringify } from 'yaml'
import { type Config, configSchema } from '../../src/config/schema.ts'
import { startSidecar } from '../../src/runtime.ts'
import { Telemetry } from '../../src/telemetry/index.ts'
import type { Recorder, RequestEvent } from '../../src/types.ts'
import { startAdmin } from '../helpers/admin.ts'
import { identity, requestEvent } from '../helpers/events.ts'
import { eventually } from '../helpers/eventually.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { replaceFile, scratchDir } from '../helpers/scratch.ts'
import { startUpstream } from '../helpers/upstream.ts'

/** the toy output: counts what it is given */
class CountingRecorder implements Recorder {
  readonly name = 'counting'
  readonly identities: string[] = []
  readonly services: string[] = []
  closed = false
  record(event: RequestEvent): void {
    this.identities.push(event.identity.name)
  }
  reconfigure(config: Config): void {
    this.services.push(config.service)
  }
  close(): void {
    this.closed = true
  }
}

const throwing: Recorder = {
  name: 'throwing',
  record() {
    throw new Error('broken output')
  },
}

/** an output written as async whose writes fail later: must not become an unhandled rejection */
const rejecting: Recorder = {
  name: 'rejecting',
  record: (async () => {
    await new Promise((done) => setImmediate(done))
    throw new Error('write failed')
  }) as Recorder['record'],
}

/** an output whose writes never complete (a destination that stopped answering) */
const stalled: Recorder = {
  name: 'stalled',
  record: (() => new Promise<void>(() => {})) as Recorder['record'],
}

function sidecarConfig(upstream: string, service: string): Record<string, unknown> {
  return {
    service,
    listen: { http: '127.0.0.1:0' },
    admin: '127.0.0.1:0',
    upstream,
    audit: { output: 'off' },
    timeouts: { drainDelay: '0s' },
    identities: [{ name: 'team-{team}', kind: 'service', match: { header: { 'x-team': '{team}' } } }],
  }
}

t.test('a toy recorder in the same list sees every request, each reload and the close', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const dir = await scratchDir('recorders')
  const file = join(dir, 'config.yaml')
  await writeFile(file, stringify(sidecarConfig(upstream.url, 'before')))
  const counting = new CountingRecorder()
  const sidecar = await startSidecar({
    configPath: file,
    log: pino({ level: 'silent' }),
    recorders: [counting],
  })
  let closed = false
  t.teardown(() => (closed ? undefined : sidecar.close()))
  const proxy = `http://127.0.0.1:${sidecar.proxyAddress.port}`
  const admin = `http://127.0.0.1:${sidecar.adminAddress.port}`

  t.same(counting.services, ['before'], 'given the initial config at start')
  for (const team of ['red', 'blue', 'red']) {
    const res = await fetch(`${proxy}/echo`, { headers: { 'x-team': team } })
    t.equal(res.status, 200)
    await res.arrayBuffer()
  }
  await eventually(() => counting.identities.length === 3, { what: 'three recorded requests' })
  t.same(counting.identities, ['ua:team-red', 'ua:team-blue', 'ua:team-red'])
  const m = await scrape(admin)
  t.equal(metricValue(m, 'nhi_requests_total', { identity: 'ua:team-red' }), 2, 'metrics saw them too')
  t.same(
    m.filter((s) => s.name === 'nhi_recorder_failures_total').map((s) => [s.labels['recorder'], s.value]),
    [
      ['metrics', 0],
      ['audit', 0],
      ['live', 0],
      ['otlp', 0],
      ['counting', 0],
    ],
    'one list: the built-in outputs, then the toy one',
  )

  await replaceFile(file, stringify(sidecarConfig(upstream.url, 'after')))
  // the file watch reloads it
  await eventually(() => counting.services.includes('after'), { what: 'the reloaded config' })
  t.equal(counting.services[0], 'before')
  t.ok(
    counting.services.slice(1).every((s) => s === 'after'),
    'reconfigured with the new config on reload',
  )

  await sidecar.close()
  closed = true
  t.ok(counting.closed, 'closed with the sidecar')
})

t.test('a throwing, rejecting or stalled recorder breaks neither the others nor the request', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const counting = new CountingRecorder()
  const sidecar = await startSidecar({
    config: configSchema.parse(sidecarConfig(upstream.url, 'orders')),
    log: pino({ level: 'silent' }),
    // the broken ones first: recorders after them must still see every request
    recorders: [throwing, rejecting, stalled, counting],
  })
  t.teardown(() => sidecar.close())
  const proxy = `http://127.0.0.1:${sidecar.proxyAddress.port}`
  const admin = `http://127.0.0.1:${sidecar.adminAddress.port}`

  for (let i = 0; i < 4; i++) {
    const res = await fetch(`${proxy}/echo`, { headers: { 'x-team': 'blue' } })
    t.equal(res.status, 200, 'the request is answered')
    await res.arrayBuffer()
  }
  await eventually(() => counting.identities.length === 4, { what: 'four requests at the toy recorder' })
  const m = await eventually(
    async () => {
      const s = await scrape(admin)
      return metricValue(s, 'nhi_recorder_failures_total', { recorder: 'rejecting' }) === 4 ? s : undefined
    },
    { what: 'the rejections counted' },
  )
  t.equal(metricValue(m, 'nhi_recorder_failures_total', { recorder: 'throwing' }), 4)
  t.equal(metricValue(m, 'nhi_recorder_failures_total', { recorder: 'counting' }), 0)
  t.equal(metricValue(m, 'nhi_recorder_failures_total', { recorder: 'stalled' }), 0)
  t.equal(metricValue(m, 'nhi_requests_total', { identity: 'ua:team-blue' }), 4, 'metrics recorded all')
  t.equal(sidecar.telemetry.auditQuery({}).length, 4, 'the audit ring recorded all')
})

t.test('a recorder whose reconfigure or close throws or hangs is reported; the others go on', async (t) => {
  const config = (maxIdentities: number) =>
    configSchema.parse({ service: 'checkout', audit: { output: 'off' }, metrics: { maxIdentities } })
  const counting = new CountingRecorder()
  const never = new Promise<void>(() => {})
  const hanging: Recorder = { name: 'hanging', record() {}, reconfigure: () => never, close: () => never }
  const failing: Recorder = {
    name: 'failing',
    record() {},
    reconfigure() {
      throw new Error('bad settings')
    },
    close: () => Promise.reject(new Error('flush failed')),
  }
  const telemetry = new Telemetry(config(1), {
    version: 'test',
    recorders: [hanging, failing, counting],
    recorderTimeoutMs: 200,
  })
  const url = await startAdmin(t, telemetry)

  const failures = await telemetry.reconfigure(config(5))
  t.same(
    failures.map((f) => f.recorder).sort(),
    ['failing', 'hanging'],
    'the throwing and the hanging recorder are reported',
  )
  t.match(failures.find((f) => f.recorder === 'failing')?.error, /bad settings/)
  t.match(failures.find((f) => f.recorder === 'hanging')?.error, /took over 200 ms/)
  t.same(counting.services, ['checkout'], 'the toy recorder was reconfigured')
  for (const name of ['a', 'b', 'c']) telemetry.record(requestEvent({ identity: identity(name) }))
  const m = await scrape(url)
  t.equal(metricValue(m, 'nhi_requests_total', { identity: 'c' }), 1, 'the metrics got the new cap')
  t.equal(metricValue(m, 'nhi_identity_overflow_total'), 0)

  const closing = await telemetry.close()
  t.same(closing.map((f) => f.recorder).sort(), ['failing', 'hanging'], 'close is bounded and reports them')
  t.ok(counting.closed, 'the others are closed')
})
