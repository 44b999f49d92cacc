// The merge behind /metrics with `workers: N`: counters and histograms summed series by series, gauges by
// their largest value (the credential expiry by its smallest), the identity cap applied once for the pod (folded identities counted as overflow,
// and still counted there after they go idle), runtime families kept apart by a worker label.
import fc from 'fast-check'
import t from 'tap'
import { configSchema } from '../../src/config/schema.ts'
import { IdentityTable } from '../../src/telemetry/identity-table.ts'
import { Telemetry } from '../../src/telemetry/index.ts'
import { Metrics } from '../../src/telemetry/metrics.ts'
import { PodExport } from '../../src/telemetry/pod-export.ts'
import { PodMetrics } from '../../src/telemetry/pod-metrics.ts'
import { mergeIdentitiesViews } from '../../src/telemetry/pod-views.ts'
import { identity, requestEvent } from '../helpers/events.ts'
import { parseExposition } from '../helpers/exposition.ts'
import { checkProperty } from '../helpers/property.ts'

const header = (name: string, type: string) => `# HELP ${name} h\n# TYPE ${name} ${type}\n`
const id = (name: string, extra = '') => `service="s",identity="${name}",source="apikey"${extra}`

/** one worker's body: `requests` per identity, the families a worker always renders */
function worker(requests: Record<string, number>, opts: { lastSeen?: number; overflow?: number } = {}) {
  let body = header('nhi_requests_total', 'counter')
  for (const [name, n] of Object.entries(requests))
    body += `nhi_requests_total{${id(name, ',kind="service",verified="true",method="GET",route="other",code="200"')}} ${n}\n`
  body += header('nhi_request_duration_seconds', 'histogram')
  for (const [name, n] of Object.entries(requests)) {
    body += `nhi_request_duration_seconds_bucket{${id(name, ',kind="service",route="other"')},le="0.1"} ${n}\n`
    body += `nhi_request_duration_seconds_bucket{${id(name, ',kind="service",route="other"')},le="+Inf"} ${n}\n`
    body += `nhi_request_duration_seconds_count{${id(name, ',kind="service",route="other"')}} ${n}\n`
  }
  body += header('nhi_identity_overflow_total', 'counter')
  body += `nhi_identity_overflow_total{service="s"} ${opts.overflow ?? 0}\n`
  body += header('nhi_identities', 'gauge')
  body += `nhi_identities{service="s",kind="service"} ${Object.keys(requests).length}\n`
  body += header('nhi_config_reloads_total', 'counter')
  body += 'nhi_config_reloads_total{result="success"} 5\n'
  body += header('nhi_identity_last_seen_timestamp_seconds', 'gauge')
  for (const name of Object.keys(requests))
    body += `nhi_identity_last_seen_timestamp_seconds{${id(name, ',kind="service"')}} ${opts.lastSeen ?? 100}\n`
  body += header('process_start_time_seconds', 'gauge')
  body += 'process_start_time_seconds 1000\n'
  return body
}

const primary = {
  worker: 'primary',
  body: `${header('nhi_config_reloads_total', 'counter')}nhi_config_reloads_total{result="success"} 1\n${header('process_start_time_seconds', 'gauge')}process_start_time_seconds 999\n`,
}
const state = (maxIdentities: number) => ({
  service: 's',
  limits: { maxIdentities, idleTtlMs: 60_000 },
  restarts: 0,
})

function value(body: string, prefix: string): number | undefined {
  const line = body.split('\n').find((l) => l.startsWith(`${prefix} `))
  return line === undefined ? undefined : Number(line.slice(prefix.length + 1))
}
const req = (name: string) =>
  `nhi_requests_total{${id(name, ',kind="service",verified="true",method="GET",route="other",code="200"')}}`

t.test('sums counters and histograms, takes the largest gauge, one family each', async (t) => {
  const pod = new PodMetrics()
  const body = pod.merge(
    [
      { worker: '1', body: worker({ a: 2, b: 1 }, { lastSeen: 100 }) },
      { worker: '2', body: worker({ a: 3 }, { lastSeen: 200 }) },
    ],
    primary,
    state(10),
    false,
  )
  t.equal(value(body, req('a')), 5)
  t.equal(value(body, req('b')), 1)
  t.equal(
    value(body, `nhi_request_duration_seconds_bucket{${id('a', ',kind="service",route="other"')},le="+Inf"}`),
    5,
  )
  t.equal(value(body, `nhi_identity_last_seen_timestamp_seconds{${id('a', ',kind="service"')}}`), 200)
  t.equal(value(body, 'nhi_identities{service="s",kind="service"}'), 2, 'distinct identities of the pod')
  t.equal(value(body, 'nhi_config_reloads_total{result="success"}'), 1, "the primary's reloads only")
  t.equal(value(body, 'process_start_time_seconds{worker="1"}'), 1000)
  t.equal(value(body, 'process_start_time_seconds{worker="primary"}'), 999)
  t.equal(value(body, 'nhi_worker_requests_total{service="s",worker="1"}'), 3)
  t.equal(value(body, 'nhi_worker_requests_total{service="s",worker="2"}'), 3)
  t.equal(body.match(/^# TYPE nhi_requests_total /gm)?.length, 1, 'one header per family')
  t.equal(parseExposition(body).filter((f) => f.base === 'process_start_time_seconds').length, 1)
})

/** a worker that saw identity `a` last at `lastSeen` with `expiry` its earliest credential in use */
const expiring = (lastSeen: number, expiry: number) =>
  `${worker({ a: 1 }, { lastSeen })}${header('nhi_credential_expiry_timestamp_seconds', 'gauge')}nhi_credential_expiry_timestamp_seconds{${id('a')}} ${expiry}\n`
const EXPIRY_A = `nhi_credential_expiry_timestamp_seconds{${id('a')}}`

t.test("the credential expiry is the earliest of the workers', not the largest", async (t) => {
  const pod = new PodMetrics()
  // a replica whose rotation broke is served by worker 1, the renewed one by worker 2
  const body = pod.merge(
    [
      { worker: '1', body: expiring(100, 7_300) },
      { worker: '2', body: expiring(200, 86_500) },
    ],
    primary,
    { ...state(10), now: 300_000 },
    false,
  )
  t.equal(value(body, EXPIRY_A), 7_300)
  t.equal(
    value(body, `nhi_identity_last_seen_timestamp_seconds{${id('a', ',kind="service"')}}`),
    200,
    'last seen: the latest',
  )
})

t.test(
  'a worker whose credential was valid when presented and has expired since no longer counts',
  async (t) => {
    /**
     * the pod's expiry of `a` at `now`, each worker given as its last request of `a`, its expiry, and whether it
     * said that expiry's credential was presented after it expired
     */
    const merge = (
      now: number,
      ...workers: [lastSeen: number, expiry: number, presentedExpired?: boolean][]
    ) =>
      value(
        new PodMetrics().merge(
          workers.map(([lastSeen, expiry, presentedExpired], i) => ({
            worker: String(i + 1),
            body: expiring(lastSeen, expiry),
            presentedExpired: presentedExpired ? ['apikey\u0000a'] : [],
          })),
          primary,
          { ...state(10), now: now * 1000 },
          false,
        ),
        EXPIRY_A,
      )
    // renewed seconds before its expiry (at 600): its later requests went to worker 2
    t.equal(merge(590, [500, 600], [550, 4_200]), 600, 'not expired yet: still the earliest')
    t.equal(merge(1_000, [599, 600], [900, 4_200]), 4_200, 'expired since its last request there: left out')
    // a stream opened at 570 with the credential expiring at 600 ended at 700, after it: its client renewed it
    // and calls with the renewed one on worker 2, as one process sees it
    t.equal(merge(1_000, [700, 600], [900, 4_200]), 4_200, 'a long request that outlived it: left out')
    // presented after its expiry (a Kubernetes token past warnafter): in use, whatever the others say
    t.equal(merge(1_000, [900, 600, true], [950, 4_200]), 600)
    t.equal(merge(1_000, [599, 600, true], [950, 4_200]), 600, 'also when its worker saw it last before then')
    // every worker's expired after it was presented: the identity stopped calling, and keeps its last value
    t.equal(merge(1_000, [599, 600], [650, 700]), 600)
  },
)

t.test("workers' telemetry through the pod's merges: a stream that outlived its credential", async (t) => {
  const T0 = 1_800_000_000_000
  const start = T0 / 1000
  const old = identity('shop/stream', { source: 'jwt', expiresAt: start + 600 })
  const next = identity('shop/stream', { source: 'jwt', expiresAt: start + 600 + 3600 })
  /** a worker process's telemetry on a shared clock */
  let now = T0
  const telemetryOf = () => {
    const telemetry = new Telemetry(configSchema.parse({ service: 's', audit: { output: 'off' } }), {
      version: '1',
      now: () => now,
    })
    t.teardown(() => telemetry.close())
    return telemetry
  }
  const workers = [telemetryOf(), telemetryOf()]
  // worker 1: a stream opened with the old token 30 s before it expired, recorded when it ends a minute later
  now = T0 + 630_000
  workers[0]!.record(requestEvent({ identity: old, durationMs: 60_000 }))
  // worker 2: the client renewed its token before the old one expired and calls with the new one
  now = T0 + 640_000
  workers[1]!.record(requestEvent({ identity: next }))
  // worker 1 again: a request that started after the old token expired presented it expired
  const late = identity('shop/late', { source: 'jwt', expiresAt: start + 600 })
  const renewedLate = identity('shop/late', { source: 'jwt', expiresAt: start + 600 + 3600 })
  workers[0]!.record(requestEvent({ identity: late, durationMs: 5_000 }))
  workers[1]!.record(requestEvent({ identity: renewedLate }))
  now = T0 + 650_000

  const pod = new PodMetrics()
  for (const [i, w] of workers.entries()) {
    const label = String(i + 1)
    const snapshot = new PodExport().snapshot(
      await w.metrics.pieces(),
      pod.since(label),
      w.metrics.requestNamed(),
      w.metrics.issued(),
      w.metrics.presentedExpired(),
    )
    t.ok(pod.apply(label, snapshot))
  }
  const body = pod.render({ ...state(10), now }, false)
  const expiry = (name: string) =>
    value(body, `nhi_credential_expiry_timestamp_seconds{service="s",identity="${name}",source="jwt"}`)
  t.equal(expiry('shop/stream'), next.expiresAt, "the renewed one: worker 1's was valid when presented")
  t.equal(expiry('shop/late'), late.expiresAt, 'presented after its expiry: still in use')

  const view = mergeIdentitiesViews(
    workers.map((w) => ({ ...w.identities(), presentedExpired: w.metrics.presentedExpired() })),
    { now, maxIdentities: 10 },
  )
  const credentialExpiry = (name: string) => view.identities.find((r) => r.name === name)?.credentialExpiry
  t.equal(credentialExpiry('shop/stream'), new Date(next.expiresAt! * 1000).toISOString(), '/identities')
  t.equal(credentialExpiry('shop/late'), new Date(late.expiresAt! * 1000).toISOString(), '/identities')
})

t.test('the identity cap holds for the pod and the overflow counter stays monotonic', async (t) => {
  const pod = new PodMetrics()
  const first = pod.merge(
    [
      { worker: '1', body: worker({ a: 2, b: 2 }) },
      { worker: '2', body: worker({ c: 3 }, { overflow: 1 }) },
    ],
    primary,
    state(2),
    false,
  )
  t.equal(value(first, req('a')), 2)
  t.equal(value(first, req('c')), undefined, 'c does not fit: folded')
  t.equal(value(first, req('__overflow__')), 3)
  t.equal(value(first, 'nhi_identity_overflow_total{service="s"}'), 4, "the worker's own 1 plus c's 3")
  t.equal(value(first, 'nhi_identities{service="s",kind="service"}'), 2)

  // c goes idle on its worker: what it recorded stays in the overflow series, as in one process
  const second = pod.merge(
    [
      { worker: '1', body: worker({ a: 3, b: 2 }) },
      { worker: '2', body: worker({}, { overflow: 1 }) },
    ],
    primary,
    state(2),
    false,
  )
  t.equal(value(second, req('__overflow__')), 3)
  t.equal(value(second, 'nhi_identity_overflow_total{service="s"}'), 4)

  // a goes idle: its slot is free again for the next identity
  const third = pod.merge([{ worker: '1', body: worker({ b: 2, d: 1 }) }], primary, state(2), false)
  t.equal(value(third, req('d')), 1)
})

t.test('OpenMetrics in, OpenMetrics out: exemplars dropped, one # EOF', async (t) => {
  const om = `# HELP nhi_requests h\n# TYPE nhi_requests counter\nnhi_requests_total{${id('a', ',kind="service",verified="true",method="GET",route="other",code="200"')}} 2 # {trace_id="abc"} 1 1.000\n# EOF\n`
  const body = new PodMetrics().merge(
    [
      { worker: '1', body: om },
      { worker: '2', body: om },
    ],
    { worker: 'primary', body: '# EOF\n' },
    state(5),
    true,
  )
  t.equal(value(body, req('a')), 4)
  t.notMatch(body, 'trace_id')
  t.ok(body.endsWith('# EOF\n'))
  t.equal(body.match(/# EOF/g)?.length, 1)
  t.match(body, /^# TYPE nhi_worker_requests counter$/m)
})

t.test("the stale marker: one gauge series per worker slot, in the pod's /metrics only", async (t) => {
  const workers = [
    { worker: '1', body: worker({ a: 1 }) },
    { worker: '2', body: worker({ a: 2 }) },
  ]
  const stale = [false, true, false]
  for (const om of [false, true]) {
    const body = new PodMetrics().merge(workers, primary, { ...state(5), stale }, om)
    t.match(body, /^# TYPE nhi_worker_metrics_stale gauge$/m)
    t.equal(value(body, 'nhi_worker_metrics_stale{service="s",worker="1"}'), 0)
    t.equal(value(body, 'nhi_worker_metrics_stale{service="s",worker="2"}'), 1)
    t.equal(value(body, 'nhi_worker_metrics_stale{service="s",worker="3"}'), 0, 'a slot with no worker now')
    if (om) t.ok(body.endsWith('# EOF\n'), 'before the end of an OpenMetrics body')
  }
  t.notMatch(new PodMetrics().merge(workers, primary, state(5), false), 'nhi_worker_metrics_stale')
})

t.test('label values with braces, quotes and backslashes are one line each in a snapshot', async (t) => {
  // keys end where the labels end: a `}` inside a value does not end them, an escaped quote does not end
  // the value, an escaped backslash before the closing quote does not escape it; an exemplar is not a value
  const labels = 'identity="a}b \\"c} # d\\\\",route="/x{y}"'
  const body = `# TYPE x_total counter\nx_total{${labels}} 3 # {trace_id="t"} 1 2.000\nx_total{k="\\\\"} 4\nx_total 5\n`
  const s = new PodExport().snapshot([body], -1)
  t.same(s.lineKeys, [`x_total{${labels}}`, 'x_total{k="\\\\"}', 'x_total'])
  t.same([...s.values], [3, 4, 5])
  t.same(
    parseExposition(body)[0]?.samples.map((x) => [x.prefix, x.value]),
    s.lineKeys.map((k, i) => [k, s.values[i]]),
    "the tests' reference parser reads the same lines",
  )
})

// The incremental path as the pod runs it: each worker's real Metrics, rendered as pieces, exported as
// snapshots of what changed, merged line by line in the primary. After any sequence of updates, idle
// sweeps, lost replies and worker restarts on several workers, /metrics must hold what merging every
// worker's fresh text gives: checked against a plain merge of the parsed texts (the oracle below) and
// against a new PodMetrics given the texts whole, in both formats.
const NAMES = [
  identity('payments/api'),
  identity('ci/nightly', { kind: 'job', source: 'jwt', expectEveryMs: 60_000 }),
  identity('odd "name" {x} \\ # y', { source: 'apikey' }),
  identity('ua:crawler', { kind: 'bot', source: 'useragent', verified: false }),
  identity('agent-7', { kind: 'agent', source: 'jwt', verified: false }),
]
const PRIMARY_ONLY = new Set([
  'nhi_config_reloads',
  'nhi_config_last_reload_success_timestamp_seconds',
  'nhi_build_info',
])

type PodOp =
  | {
      op: 'request'
      worker: number
      who: number
      method: string
      route: string
      status: number
      durationMs: number
      grpc: number | undefined
    }
  | { op: 'sweep'; worker: number; idleMs: number }
  | { op: 'restart'; worker: number }
  | { op: 'scrape'; om: boolean; lost: number | undefined }

const podOp: fc.Arbitrary<PodOp> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      op: fc.constant('request' as const),
      worker: fc.integer({ min: 0, max: 2 }),
      who: fc.integer({ min: 0, max: NAMES.length - 1 }),
      method: fc.constantFrom('GET', 'POST'),
      route: fc.constantFrom('/a', '/b/:id'),
      status: fc.constantFrom(200, 404, 503),
      durationMs: fc.constantFrom(1, 40, 300, 7000),
      grpc: fc.option(fc.constantFrom(0, 14), { nil: undefined }),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      op: fc.constant('sweep' as const),
      worker: fc.integer({ min: 0, max: 2 }),
      idleMs: fc.constantFrom(600, 1_100),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({ op: fc.constant('restart' as const), worker: fc.integer({ min: 0, max: 2 }) }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      op: fc.constant('scrape' as const),
      om: fc.boolean(),
      lost: fc.option(fc.integer({ min: 0, max: 2 }), { nil: undefined }),
    }),
  },
)

class FakeWorker {
  now = 1_000_000
  private scrapes = 0
  readonly table = new IdentityTable({ maxIdentities: 100, idleTtlMs: 1_000 })
  readonly metrics = new Metrics({ service: 's', buckets: [0.01, 0.1, 1], version: '1', table: this.table })
  readonly exporter = new PodExport()
  /** runtime families, as prom-client's registry adds them: new values at every scrape */
  runtime(): string {
    this.scrapes++
    return `# HELP process_cpu_seconds_total c\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total ${this.scrapes * 0.25}\n# HELP nodejs_heap_bytes h\n# TYPE nodejs_heap_bytes gauge\nnodejs_heap_bytes{space="old"} ${1000 + (this.scrapes % 3)}\n`
  }
}

function samplesOf(body: string): Map<string, number> {
  const out = new Map<string, number>()
  for (const f of parseExposition(body)) for (const s of f.samples) out.set(s.prefix, s.value)
  return out
}

/**
 * The same series with the same values, up to the rounding of a floating-point sum: the primary adds the
 * workers' values in the order it first heard from them, which after a restart is not the workers' order.
 */
function sameSamples(got: Map<string, number>, want: Map<string, number>): boolean {
  if (got.size !== want.size) return false
  for (const [key, w] of want) {
    const g = got.get(key)
    if (g === undefined || !(Object.is(g, w) || Math.abs(g - w) <= 1e-12 * Math.max(1, Math.abs(w))))
      return false
  }
  return true
}

const PER_IDENTITY = /^service="[^"]*",identity="((?:[^"\\]|\\.)*)",source="([^"]*)"/

/** a worker's per-identity counter and histogram lines (gauges and the overflow identity left out) */
function additiveIdentityLines(body: string): Map<string, number> {
  const out = new Map<string, number>()
  for (const f of parseExposition(body)) {
    if (!f.base.startsWith('nhi_') || f.type === 'gauge') continue
    for (const s of f.samples) {
      const m = PER_IDENTITY.exec(s.labels)
      if (m && m[1] !== '__overflow__') out.set(s.prefix, s.value)
    }
  }
  return out
}

/** a worker's nhi_requests_total lines, overflow included: what its nhi_worker_requests_total sums */
function requestLines(body: string): Map<string, number> {
  const out = new Map<string, number>()
  for (const f of parseExposition(body)) {
    if (f.base !== 'nhi_requests') continue
    for (const s of f.samples) out.set(s.prefix, s.value)
  }
  return out
}

/** `source identity` of a per-identity line's key */
function identityOf(key: string): string {
  const m = PER_IDENTITY.exec(key.slice(key.indexOf('{') + 1))
  return `${m![2]} ${m![1]}`
}

/** the merge written plainly from the texts: the reference the incremental path must agree with */
function oracle(workers: { worker: string; body: string }[], primaryBody: string, restarts: number) {
  const out = new Map<string, number>()
  const put = (key: string, value: number, max: boolean) => {
    const was = out.get(key)
    out.set(key, was === undefined ? value : max ? Math.max(was, value) : was + value)
  }
  const withWorker = (s: { name: string; labels: string }, w: string) =>
    `${s.name}{${s.labels === '' ? '' : `${s.labels},`}worker="${w}"}`
  const identities = new Map<string, string>()
  for (const { worker, body } of workers) {
    let served = 0
    for (const f of parseExposition(body)) {
      if (PRIMARY_ONLY.has(f.base) || f.base === 'nhi_identities') continue
      for (const s of f.samples) {
        if (!f.base.startsWith('nhi_')) {
          put(withWorker(s, worker), s.value, false)
          continue
        }
        put(s.prefix, s.value, f.type === 'gauge')
        if (f.base === 'nhi_requests') served += s.value
        if (f.base === 'nhi_identity_last_seen_timestamp_seconds') {
          const m = /^(service="[^"]*"),identity="((?:[^"\\]|\\.)*)",source="([^"]*)",kind="([^"]*)"/.exec(
            s.labels,
          )!
          identities.set(`${m[3]} ${m[2]}`, `nhi_identities{${m[1]},kind="${m[4]}"}`)
        }
      }
    }
    out.set(`nhi_worker_requests_total{service="s",worker="${worker}"}`, served)
  }
  for (const key of identities.values()) put(key, 1, false)
  for (const f of parseExposition(primaryBody)) {
    if (f.base.startsWith('nhi_') && !PRIMARY_ONLY.has(f.base) && f.base !== 'nhi_audit_dropped_lines')
      continue
    for (const s of f.samples)
      put(f.base.startsWith('nhi_') ? s.prefix : withWorker(s, 'primary'), s.value, false)
  }
  out.set('nhi_worker_restarts_total{service="s"}', restarts)
  return out
}

t.test('merged snapshots equal the merge of fresh text, after any updates on several workers', async (t) => {
  checkProperty(
    t,
    'incremental /metrics equals the merge of fresh text, both formats',
    fc.property(fc.array(podOp, { minLength: 10, maxLength: 80 }), (ops) => {
      let workers = [new FakeWorker(), new FakeWorker(), new FakeWorker()]
      const primaryTable = new IdentityTable({ maxIdentities: 100, idleTtlMs: 1_000 })
      const primaryMetrics = new Metrics({ service: 's', buckets: [0.01], version: '1', table: primaryTable })
      primaryMetrics.configReloaded('success', 5_000)
      const primaryExport = new PodExport()
      const pod = new PodMetrics()
      let restarts = 0
      const podState = { service: 's', limits: { maxIdentities: 100, idleTtlMs: 1_000 }, restarts: 0 }
      // what the pod last applied of each worker, and the counts of lines a worker stopped rendering while
      // their identity lives on elsewhere: a live series never goes backwards
      const applied = new Map<number, Map<string, number>>()
      const retired = new Map<string, number>()
      // each live worker's nhi_requests lines as last applied, and what those it stopped rendering had
      // counted: its nhi_worker_requests_total goes on counting them until it restarts
      const appliedRequests = new Map<number, Map<string, number>>()
      const workerRetired = new Map<number, number>()
      for (const o of ops) {
        if (o.op === 'request') {
          const w = workers[o.worker]!
          w.now += 10
          const { entry, overflowed } = w.table.admit(NAMES[o.who]!, w.now)
          w.metrics.observe(
            entry,
            requestEvent({
              identity: NAMES[o.who]!,
              time: w.now,
              method: o.method,
              route: o.route,
              status: o.status,
              durationMs: o.durationMs,
              bytesIn: o.method === 'POST' ? 10 : 0,
              ...(o.grpc === undefined ? {} : { grpcStatus: o.grpc }),
            }),
            overflowed,
            0,
            'USD',
          )
          continue
        }
        if (o.op === 'sweep') {
          const w = workers[o.worker]!
          w.now += o.idleMs
          w.table.sweep(w.now)
          continue
        }
        if (o.op === 'restart') {
          workers = workers.map((w, i) => (i === o.worker ? new FakeWorker() : w))
          pod.drop(String(o.worker + 1))
          // what the dead worker counted stays in the series that live on, as if it had swept them
          for (const [key, value] of applied.get(o.worker) ?? [])
            retired.set(key, (retired.get(key) ?? 0) + value)
          applied.delete(o.worker)
          appliedRequests.delete(o.worker)
          workerRetired.delete(o.worker)
          restarts++
          continue
        }
        const texts: { worker: string; body: string }[] = []
        workers.forEach((w, i) => {
          const runtime = w.runtime()
          const label = String(i + 1)
          const snapshot = w.exporter.snapshot(w.metrics.pieces(false, runtime), pod.since(label))
          texts.push({ worker: label, body: w.metrics.pieces(false, runtime).join('') })
          // a reply that arrived after the primary stopped waiting: never applied
          if (o.lost !== i) {
            pod.apply(label, snapshot)
            const now = additiveIdentityLines(texts.at(-1)!.body)
            for (const [key, value] of applied.get(i) ?? []) {
              if (!now.has(key)) retired.set(key, (retired.get(key) ?? 0) + value)
            }
            applied.set(i, now)
            const requests = requestLines(texts.at(-1)!.body)
            for (const [key, value] of appliedRequests.get(i) ?? []) {
              if (!requests.has(key)) workerRetired.set(i, (workerRetired.get(i) ?? 0) + value)
            }
            appliedRequests.set(i, requests)
          }
        })
        const present = new Set<string>()
        for (const lines of applied.values()) for (const key of lines.keys()) present.add(identityOf(key))
        for (const key of retired.keys()) if (!present.has(identityOf(key))) retired.delete(key)
        const primaryBody = primaryMetrics.pieces(false).join('')
        pod.apply('primary', primaryExport.snapshot([primaryBody], pod.since('primary')))
        podState.restarts = restarts
        const merged = pod.render(podState, o.om)
        const given = texts.filter((_, i) => o.lost !== i)
        // a worker whose reply was lost counts with its previous snapshot: compare the others' scrape
        if (o.lost !== undefined) continue
        const plain = oracle(given, primaryBody, restarts)
        const fresh = new PodMetrics().merge(texts, { worker: 'primary', body: primaryBody }, podState, o.om)
        if (!sameSamples(samplesOf(fresh), plain)) return false
        const want = new Map(plain)
        for (const [key, value] of retired) want.set(key, (want.get(key) ?? 0) + value)
        for (const [i, value] of workerRetired) {
          const key = `nhi_worker_requests_total{service="s",worker="${i + 1}"}`
          want.set(key, (want.get(key) ?? 0) + value)
        }
        if (!sameSamples(samplesOf(merged), want)) return false
        const types: string[] = merged.match(/^# TYPE \S+/gm) ?? []
        if (new Set(types).size !== types.length) return false
        if (o.om !== merged.endsWith('# EOF\n')) return false
        if (o.om && !types.includes('# TYPE nhi_requests')) return false
      }
      return true
    }),
    200,
  )
})

// A worker that drops an idle identity (metrics.idleTtl) no longer renders its lines: its
// nhi_worker_requests_total, the sum of those lines, went down with them, which Prometheus reads as a reset.
t.test("a worker's request count does not go down when it drops an idle identity", async (t) => {
  const pod = new PodMetrics()
  const served = (body: string) => value(body, 'nhi_worker_requests_total{service="s",worker="1"}')
  const first = pod.merge([{ worker: '1', body: worker({ a: 5, b: 5 }) }], primary, state(10), false)
  t.equal(served(first), 10)
  const second = pod.merge([{ worker: '1', body: worker({ b: 7 }) }], primary, state(10), false)
  t.equal(served(second), 12, "a's 5 stay counted after the worker dropped it")
  t.equal(value(second, req('b')), 7)
  const third = pod.merge([{ worker: '1', body: worker({ a: 1, b: 7 }) }], primary, state(10), false)
  t.equal(served(third), 13, 'and a that returns counts on from there')
})

// A reload that renames the service: each worker starts its per-identity series afresh under the new name.
// The pod kept the old service's lines of an identity that came back under the new one (it matched
// identities without their service), frozen next to the new ones, double-counted by any sum without service.
t.test("a renamed service: the old service's lines go, as in one process", async (t) => {
  const pod = new PodMetrics()
  const renamed = (body: string) => body.replaceAll('service="s"', 'service="t"')
  const before = pod.merge([{ worker: '1', body: worker({ a: 3 }) }], primary, state(10), false)
  t.equal(value(before, req('a')), 3)
  const after = pod.merge(
    [{ worker: '1', body: renamed(worker({ a: 2 })) }],
    primary,
    { ...state(10), service: 't' },
    false,
  )
  t.equal(value(after, req('a')), undefined, 'no line of the old service')
  t.equal(value(after, renamed(req('a'))), 2, 'the new service counts afresh')
  t.notMatch(after, /service="s"/, 'nothing left of the old service')
})

t.test("a worker's table makes room for the identities the pod admitted, and for no others", async (t) => {
  const pod = new PodMetrics()
  // `q"uote` is escaped in its label: the worker must find it by the name its identity carries
  const admitted = ['a', 'q\\"uote']
  const version = pod.admittedVersion
  pod.merge([{ worker: '1', body: worker({ a: 1, 'q\\"uote': 1, c: 1 }) }], primary, state(2), false)
  t.same(
    pod.admittedIdentities(),
    admitted.map((n) => `apikey\u0000${n}`),
    'the first two, by their keys',
  )
  t.not(pod.admittedVersion, version, 'the workers are to be told')
  const told = pod.admittedVersion
  pod.merge([{ worker: '1', body: worker({ a: 2, 'q\\"uote': 1, c: 1 }) }], primary, state(2), false)
  t.equal(pod.admittedVersion, told, 'not again while they stay the same')

  // another worker's table, full of names the pod folded
  const table = new IdentityTable({ maxIdentities: 2, idleTtlMs: 60_000 })
  table.admitEntry(identity('c', { source: 'apikey' }), 0)
  table.admitEntry(identity('d', { source: 'apikey' }), 0)
  table.setPodAdmitted(pod.admittedIdentities())
  table.admitEntry(identity('q"uote', { source: 'apikey' }), 0)
  t.notOk(table.overflowed, 'an admitted name gets an entry beyond the cap')
  table.admitEntry(identity('a', { source: 'apikey' }), 0)
  t.notOk(table.overflowed)
  table.admitEntry(identity('a', { source: 'mtls' }), 0)
  t.ok(table.overflowed, 'the same name of another source is another identity')
  table.admitEntry(identity('e', { source: 'apikey' }), 0)
  t.ok(table.overflowed, 'a name the pod did not admit still finds the cap full')
  t.equal(table.tracked, 4, 'twice the cap at most')
})

t.test('a folded identity gets a slot once there is room, its series starting from nothing', async (t) => {
  const pod = new PodMetrics()
  const bodies = (b: number) => [
    { worker: '1', body: worker({ a: 1 }) },
    { worker: '2', body: worker({ b }) },
  ]
  const first = pod.merge(bodies(2), primary, state(1), false)
  t.equal(value(first, req('b')), undefined, 'b does not fit: folded')
  t.equal(value(first, req('__overflow__')), 2)

  // a reload raises the cap: b has room, as in one process at its next request
  const second = pod.merge(bodies(2), primary, state(2), false)
  const told = [...pod.startedOver()]
  t.equal(value(second, req('b')), undefined, 'no series before its next request')
  t.equal(value(second, `nhi_identity_last_seen_timestamp_seconds{${id('b', ',kind="service"')}}`), undefined)
  t.equal(value(second, 'nhi_identities{service="s",kind="service"}'), 1)
  t.equal(value(second, req('__overflow__')), 2, 'what it counted folded stays in __overflow__')
  t.equal(value(second, 'nhi_identity_overflow_total{service="s"}'), 2)

  // its worker started its series again, and it made one request
  const third = pod.merge(bodies(1), primary, state(2), false)
  t.equal(value(third, req('b')), 1, 'its own series counts what came after')
  t.equal(value(third, req('__overflow__')), 2)
  t.equal(value(third, 'nhi_identity_overflow_total{service="s"}'), 2)
  t.equal(value(third, 'nhi_identities{service="s",kind="service"}'), 2)
  t.equal(value(third, 'nhi_worker_requests_total{service="s",worker="2"}'), 3, 'its worker served three')
  t.same(told, ['apikey\u0000b'], 'its workers were told to start its series again')
})
