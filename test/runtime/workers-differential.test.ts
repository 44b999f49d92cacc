// `workers: 2` tells the same story as one process. A generated sequence of requests (identities from a real
// JWKS server's tokens with generated subjects, api keys, user agents and forwarded certificates from a
// trusted peer; methods, `metrics.routes` templates, upstream statuses, slow answers, requests the policy
// denies, requests their clients leave) goes to two proxies started from the same config, one process and a pod of two workers, with a
// small `metrics.maxIdentities` (and a smaller unverified and per-issuer cap) so that identities overflow.
// Then the pod's one /metrics must hold the same series with the same values as the process's, in the
// Prometheus text format and in OpenMetrics, its audit lines the same requests (as a multiset: workers hand
// their lines over in batches) and its live view the same totals.
//
// Which identities get a slot of the cap is first come, first admitted. One process decides at each request;
// the pod decides at each scrape over what its workers track (docs/reference.md "Workers"), so identities
// first seen between two scrapes are admitted in the order the workers' answers list them, not the order the
// requests came in. The sequence therefore opens with identities that all fit (one request each, in a drawn
// order), both proxies are scraped, and the rest follows, where every new identity finds the cap full. Then
// a reload raises the caps so that every identity has room (those that overflowed get a slot at their next
// request in one process, at the next scrape in the pod), both are scraped, and more requests follow: both
// are compared again.
//
// Deliberate differences, documented there, and so not compared:
// - `process_*`, `nodejs_*`: per process (the pod's have a `worker` label);
// - `nhi_worker_*`: the pod's own (used here to check that both workers served);
// - `nhi_jwks_refresh_total`: each worker fetches the key sets itself, so the pod counts one fetch per worker;
// - timestamps (last seen, last success, key set fetched, reload) and durations (`nhi_upstream_seconds_total`,
//   the latency histogram's `_sum` and how its requests fall into buckets): only their series are compared,
//   and of the histogram its `_count` and that its buckets are cumulative and end at it;
// - `nhi_job_consecutive_failures`: its series only (the pod shows the longest run a worker saw; in one
//   process the run depends on the order concurrent requests finish in);
// - OpenMetrics exemplars: the pod's scrapes carry none;
// - `/identities` rows: each worker caps its own table, so the pod lists more rows than one process; their
//   totals are the same.
//
// The built bundle runs both. FC_SEED draws another sequence.
import { readFileSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { Agent, request } from 'node:http'
import { join } from 'node:path'
import fc from 'fast-check'
import t, { type Test } from 'tap'
import { sha256Hex } from '../../src/util/fingerprint.ts'
import { eventually } from '../helpers/eventually.ts'
import { type ExpositionFamily, parseExposition } from '../helpers/exposition.ts'
import { createSigningKey, mintToken, startJwksServer } from '../helpers/jwks.ts'
import { metricValue, parseMetrics } from '../helpers/metrics.ts'
import { PROPERTY_SEED } from '../helpers/property.ts'
import { scratchDir } from '../helpers/scratch.ts'
import { startSidecarFromFile, type TestSidecar, testConfigYaml } from '../helpers/sidecar.ts'
import { run, skipWithout, systemTool } from '../helpers/tools.ts'
import { type Received, startUpstream } from '../helpers/upstream.ts'

const MAX_IDENTITIES = 7
const MAX_UNVERIFIED = 2
const ISSUER_CAP = 2
/** the peer trusted for forwarded certificates; other clients come from 127.0.0.1 */
const TRUSTED_PEER = '127.0.0.2'
/** keep-alive connections per proxy in the second phase, half of them from the trusted peer */
const CONNECTIONS = 4

const ROUTES = ['/api/orders/:id', '/status/:code', '/slow/:ms', '/admin/**']
/** a request its client leaves once the upstream has it, long before the answer: recorded as 499 */
const ABANDONED = '/slow/60000'

// ---- the clients: every way an identity is named here

type Client =
  | { kind: 'jwt'; subject: string }
  | { kind: 'apikey'; key: number }
  | { kind: 'ua'; product: string }
  | { kind: 'xfcc'; workload: string }
  | { kind: 'anonymous' }

const API_KEYS = ['alpha', 'beta', 'gamma']

/** subjects that need escaping in a label value (quote, backslash, newline), and braces a parser may trip on */
const subject = fc
  .array(fc.constantFrom('a', 'b', 'c', 'x', '-', '"', '\\', '{', '}', ',', '=', ' ', '\n'), {
    minLength: 1,
    maxLength: 6,
  })
  .map((chars) => `s${chars.join('')}`)

const clients = fc.record({
  subjects: fc.uniqueArray(subject, { minLength: 4, maxLength: 5 }),
  products: fc.uniqueArray(fc.stringMatching(/^[a-z]{3,8}$/), { minLength: 3, maxLength: 4 }),
  workloads: fc.uniqueArray(fc.stringMatching(/^[a-z]{2,6}$/), { minLength: 2, maxLength: 4 }),
})

interface Req {
  client: Client
  method: 'GET' | 'POST' | 'DELETE'
  path: string
}

const path = fc.oneof(
  fc.integer({ min: 1, max: 999 }).map((n) => `/api/orders/${n}`),
  fc.constantFrom('/status/503', '/status/404', '/status/201'),
  fc.constantFrom('/slow/0', '/slow/40', '/slow/150', ABANDONED),
  fc.constantFrom('/admin/users', '/admin/keys/1'),
  fc.constantFrom('/', '/elsewhere/x'),
)
const method = fc.constantFrom('GET' as const, 'GET' as const, 'POST' as const, 'DELETE' as const)

function clientsOf(c: { subjects: string[]; products: string[]; workloads: string[] }): Client[] {
  return [
    ...c.subjects.map((s): Client => ({ kind: 'jwt', subject: s })),
    ...API_KEYS.map((_, key): Client => ({ kind: 'apikey', key })),
    ...c.products.map((p): Client => ({ kind: 'ua', product: p })),
    ...c.workloads.map((w): Client => ({ kind: 'xfcc', workload: w })),
    { kind: 'anonymous' },
  ]
}

/** the case: its clients, the order the first phase names them in, and the second phase's requests */
const scenario = clients.chain((c) => {
  const all = clientsOf(c)
  return fc.record({
    clients: fc.constant(c),
    order: fc.shuffledSubarray(all, { minLength: all.length, maxLength: all.length }),
    rest: fc.array(fc.record({ client: fc.constantFrom(...all), method, path }), {
      minLength: 90,
      maxLength: 110,
    }),
    /** after the reload that raises the caps */
    raised: fc.array(fc.record({ client: fc.constantFrom(...all), method, path }), {
      minLength: 30,
      maxLength: 40,
    }),
  })
})

/**
 * The clients of the first phase: in the drawn order, those that all get a slot of the cap (no more than
 * the unverified cap of unverified ones, the issuer's cap of tokens, maxIdentities in all). One process
 * admits at each request and the pod at each scrape, so identities new between two scrapes are admitted in
 * the order the workers list them: when all of them fit, that order does not matter. The others are new
 * in the second phase, where the cap is full in both.
 */
function admittedFirst(order: Client[]): Client[] {
  const taken: Client[] = []
  let unverified = 0
  let tokens = 0
  for (const client of order) {
    if (taken.length === MAX_IDENTITIES) break
    const isUnverified = client.kind === 'ua' || client.kind === 'anonymous'
    if (isUnverified && unverified === MAX_UNVERIFIED) continue
    if (client.kind === 'jwt' && tokens === ISSUER_CAP) continue
    if (isUnverified) unverified++
    if (client.kind === 'jwt') tokens++
    taken.push(client)
  }
  return taken
}

// ---- fixtures shared by both proxies

interface Fixtures {
  /** what the upstream received (an abandoned request is left once it is there) */
  received: Received[]
  issuer: string
  tokens: Map<string, string>
  apiKeys: string[]
  upstream: string
}

function headersOf(client: Client, f: Fixtures): Record<string, string> {
  switch (client.kind) {
    case 'jwt':
      return { authorization: `Bearer ${f.tokens.get(client.subject)}`, 'user-agent': 'jwt-client/1.0' }
    case 'apikey':
      return { 'x-api-key': f.apiKeys[client.key]!, 'user-agent': 'key-client/1.0' }
    case 'ua':
      return { 'user-agent': `${client.product}/2.${client.product.length}` }
    case 'xfcc':
      return {
        'x-forwarded-client-cert': `Hash=${sha256Hex(client.workload)};Subject="CN=${client.workload},O=acme";URI=spiffe://prod.example/ns/pay/sa/${client.workload}`,
        'user-agent': 'mesh/1.0',
      }
    case 'anonymous':
      return {}
  }
}

/** the caps before the reload, and the ones it raises them to: room for every client the case has */
const CAPS = { maxIdentities: MAX_IDENTITIES, maxUnverified: MAX_UNVERIFIED, issuer: ISSUER_CAP }
const RAISED = { maxIdentities: 40, maxUnverified: 20, issuer: 20 }

function configOf(f: Fixtures, auditFile: string, workers: number, caps = CAPS): Record<string, unknown> {
  return {
    service: 'differential',
    upstream: f.upstream,
    workers,
    audit: { output: auditFile },
    metrics: {
      maxIdentities: caps.maxIdentities,
      maxUnverifiedIdentities: caps.maxUnverified,
      routes: ROUTES,
      buckets: [0.02, 0.1, 1],
    },
    jwt: {
      issuers: [
        {
          issuer: f.issuer,
          jwksUri: `${f.issuer}/jwks.json`,
          audiences: ['orders'],
          maxIdentities: caps.issuer,
        },
      ],
    },
    apiKeys: { keys: f.apiKeys.map((k, i) => ({ name: API_KEYS[i], kind: 'job', sha256: sha256Hex(k) })) },
    forwardedClientCert: { trustedProxies: [TRUSTED_PEER], format: 'xfcc' },
    identities: [
      { name: 'tok/{sub}', kind: 'service', match: { jwt: { issuer: f.issuer, claims: { sub: '{sub}' } } } },
    ],
    policy: {
      mode: 'enforce',
      rules: [{ name: 'admins', route: '/admin/**', allow: [{ verified: true }] }],
    },
  }
}

interface Proxy {
  sidecar: TestSidecar
  auditFile: string
  config: (caps?: typeof CAPS) => Record<string, unknown>
}

async function startProxy(t: Test, f: Fixtures, workers: number): Promise<Proxy> {
  const dir = await scratchDir(`workers-differential-${workers}`)
  const auditFile = join(dir, 'audit.log')
  const configFile = join(dir, 'config.yaml')
  const config = (caps = CAPS) => configOf(f, auditFile, workers, caps)
  await writeFile(configFile, testConfigYaml(config()))
  return { sidecar: await startSidecarFromFile(t, configFile), auditFile, config }
}

let abandoned = 0

function send(proxyUrl: string, req: Req, f: Fixtures, agent: Agent | false): Promise<number> {
  const trusted = req.client.kind === 'xfcc'
  const leave = req.path === ABANDONED
  const path = leave ? `${req.path}?abandoned=${++abandoned}` : req.path
  return new Promise((resolve, reject) => {
    const r = request(
      `${proxyUrl}${path}`,
      {
        method: req.method,
        agent,
        headers: headersOf(req.client, f),
        ...(agent === false && trusted ? { localAddress: TRUSTED_PEER } : {}),
      },
      (res) => {
        res.resume()
        res.on('end', () => resolve(res.statusCode ?? 0))
        res.on('error', reject)
      },
    )
    r.on('error', (err) => {
      if (!leave) reject(err)
    })
    r.end(req.method === 'POST' ? 'body' : undefined)
    if (!leave) return
    eventually(() => f.received.some((got) => got.url === path), { what: `the upstream got ${path}` }).then(
      () => {
        r.destroy()
        resolve(499)
      },
      reject,
    )
  })
}

/**
 * The second phase on CONNECTIONS keep-alive connections, each sending its share in order: a forwarded
 * certificate only on those from the trusted peer, everything else on any.
 */
async function sendOnConnections(proxyUrl: string, reqs: Req[], f: Fixtures): Promise<number[]> {
  const agents = Array.from(
    { length: CONNECTIONS },
    (_, i) =>
      new Agent({ keepAlive: true, maxSockets: 1, ...(i % 2 === 1 ? { localAddress: TRUSTED_PEER } : {}) }),
  )
  const queues: Req[][] = agents.map(() => [])
  reqs.forEach((req, i) => {
    let at = i % CONNECTIONS
    if (req.client.kind === 'xfcc' && at % 2 === 0) at = (at + 1) % CONNECTIONS
    queues[at]!.push(req)
  })
  try {
    const statuses = await Promise.all(
      queues.map(async (queue, i) => {
        const out: number[] = []
        for (const req of queue) out.push(await send(proxyUrl, req, f, agents[i]!))
        return out
      }),
    )
    return statuses.flat()
  } finally {
    for (const a of agents) a.destroy()
  }
}

// ---- what is compared

/**
 * families compared by their series only: their values are times, or, for a job's consecutive failures, the
 * run since the last success, which even in one process depends on the order concurrent requests on several
 * connections finish in (and the pod shows the longest run a worker saw, as documented)
 */
const SERIES_ONLY = new Set([
  'nhi_job_consecutive_failures',
  'nhi_identity_last_seen_timestamp_seconds',
  'nhi_jwks_last_success_timestamp_seconds',
  'nhi_config_last_reload_success_timestamp_seconds',
  'nhi_job_last_success_timestamp_seconds',
  'nhi_upstream_seconds',
])
const NOT_COMPARED = new Set([
  'nhi_worker_requests',
  'nhi_worker_restarts',
  'nhi_worker_metrics_stale',
  'nhi_jwks_refresh',
])
const LATENCY = 'nhi_request_duration_seconds'

function nhiFamilies(body: string): Map<string, ExpositionFamily> {
  const out = new Map<string, ExpositionFamily>()
  for (const f of parseExposition(body))
    if (f.base.startsWith('nhi_') && !NOT_COMPARED.has(f.base)) out.set(f.base, f)
  return out
}

/** a latency histogram's buckets are cumulative and its +Inf bucket is its count, series by series */
function checkLatency(t: Test, family: ExpositionFamily, who: string): void {
  const series = new Map<string, { buckets: number[]; inf?: number; count?: number }>()
  for (const s of family.samples) {
    const labels = s.labels.replace(/,?le="[^"]*"/, '')
    const entry = series.get(labels) ?? { buckets: [] }
    series.set(labels, entry)
    if (s.name.endsWith('_bucket')) {
      entry.buckets.push(s.value)
      if (s.labels.includes('le="+Inf"')) entry.inf = s.value
    } else if (s.name.endsWith('_count')) entry.count = s.value
  }
  const broken = [...series].filter(
    ([, e]) => e.inf !== e.count || e.buckets.some((v, i) => i > 0 && v < e.buckets[i - 1]!),
  )
  t.same(broken, [], `${who}: every ${family.base} series' buckets are cumulative and end at its count`)
}

/** the samples of a family as compared: every value, or the series alone */
function comparable(family: ExpositionFamily): Record<string, number | null> {
  const out: Record<string, number | null> = {}
  for (const s of family.samples) {
    let value: number | null = s.value
    if (SERIES_ONLY.has(family.base)) value = null
    else if (family.base === LATENCY && !s.name.endsWith('_count')) value = null
    out[s.prefix] = value
  }
  return out
}

function compareMetrics(t: Test, single: string, pod: string, format: string): void {
  const one = nhiFamilies(single)
  const two = nhiFamilies(pod)
  t.same([...two.keys()].sort(), [...one.keys()].sort(), `${format}: the same nhi_* families`)
  for (const [base, family] of one) {
    const other = two.get(base)
    if (!other) continue
    t.equal(other.type, family.type, `${format}: ${base} has the same type`)
    t.same(comparable(other), comparable(family), `${format}: ${base} has the same series and values`)
    if (base === LATENCY) {
      checkLatency(t, family, `${format}, one process`)
      checkLatency(t, other, `${format}, the pod`)
    }
  }
}

interface AuditFacts {
  identity: unknown
  source: unknown
  decision: unknown
  status: unknown
  route: unknown
  method: unknown
}

function auditMultiset(file: string): string[] {
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => {
      const r = JSON.parse(l) as Record<string, unknown>
      const facts: AuditFacts = {
        identity: r['identity'],
        source: r['source'],
        decision: r['decision'],
        status: r['status'],
        route: r['route'],
        method: r['method'],
      }
      return JSON.stringify(facts)
    })
    .sort()
}

const getText = async (url: string, accept?: string) =>
  (await fetch(url, accept ? { headers: { accept } } : {})).text()
const OPENMETRICS = 'application/openmetrics-text; version=1.0.0'

/** scrapes until the proxy has recorded `count` requests, and its audit file holds their lines */
async function settled(proxy: Proxy, count: number): Promise<void> {
  await eventually(
    async () =>
      metricValue(parseMetrics(await getText(`${proxy.sidecar.adminUrl}/metrics`)), 'nhi_requests_total') ===
        count && auditMultiset(proxy.auditFile).length === count,
    { what: `${count} requests recorded`, timeoutMs: 15_000 },
  )
}

/** compares everything the two proxies tell; resolves with the pod's text exposition */
async function compareAll(t: Test, single: Proxy, pod: Proxy, when: string): Promise<string> {
  const [textOne, textPod, omOne, omPod] = await Promise.all([
    getText(`${single.sidecar.adminUrl}/metrics`),
    getText(`${pod.sidecar.adminUrl}/metrics`),
    getText(`${single.sidecar.adminUrl}/metrics`, OPENMETRICS),
    getText(`${pod.sidecar.adminUrl}/metrics`, OPENMETRICS),
  ])
  const podSamples = parseMetrics(textPod)
  const served = podSamples.filter((s) => s.name === 'nhi_worker_requests_total').map((s) => s.value)
  t.ok(
    served.length === 2 && served.every((n) => n > 0),
    `precondition: both workers served requests (${served.join(' + ')})`,
  )
  const overflowed = metricValue(parseMetrics(textOne), 'nhi_identity_overflow_total')
  t.ok(overflowed > 0, `precondition: the cap was reached (${overflowed} requests overflowed)`)

  compareMetrics(t, textOne, textPod, `${when}, text`)
  compareMetrics(t, omOne, omPod, `${when}, OpenMetrics`)
  t.same(auditMultiset(pod.auditFile), auditMultiset(single.auditFile), `${when}: the same audit lines`)

  const totals = async (proxy: Proxy) => {
    const view = (await (await fetch(`${proxy.sidecar.adminUrl}/identities`)).json()) as {
      totals: { requests: number }
      identities: { requests: number }[]
    }
    return { totals: view.totals.requests, rows: view.identities.reduce((n, r) => n + r.requests, 0) }
  }
  t.same(await totals(pod), await totals(single), `${when}: the same live-view totals`)

  return textPod
}

t.test('workers: 2 gives the same /metrics, audit lines and live-view totals as one process', async (t) => {
  const [drawn] = fc.sample(scenario, { numRuns: 1, seed: PROPERTY_SEED })
  const { clients: c, order, rest, raised } = drawn!
  const first = admittedFirst(order)
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const key = await createSigningKey('k1', 'ES256')
  const jwks = await startJwksServer([key])
  t.teardown(() => jwks.close())
  const tokens = new Map<string, string>()
  for (const s of c.subjects)
    tokens.set(s, await mintToken(key, {}, { issuer: jwks.url, audience: 'orders', subject: s }))
  const f: Fixtures = {
    received: upstream.received,
    issuer: jwks.url,
    tokens,
    apiKeys: API_KEYS.map((name) => `key-of-${name}-${PROPERTY_SEED}`),
    upstream: upstream.url,
  }
  const [single, pod] = await Promise.all([startProxy(t, f, 1), startProxy(t, f, 2)])

  // phase one: the clients that take the slots, once each, on new connections (the pod's alternate workers)
  const opening: Req[] = first.map((client) => ({ client, method: 'GET', path: '/api/orders/1' }))
  const statuses: [number[], number[]] = [[], []]
  for (const req of opening) {
    statuses[0].push(await send(single.sidecar.proxyUrl, req, f, false))
    statuses[1].push(await send(pod.sidecar.proxyUrl, req, f, false))
  }
  await Promise.all([settled(single, opening.length), settled(pod, opening.length)])
  // phase two: the rest, on keep-alive connections spread over the pod's workers
  const [a, b] = await Promise.all([
    sendOnConnections(single.sidecar.proxyUrl, rest, f),
    sendOnConnections(pod.sidecar.proxyUrl, rest, f),
  ])
  statuses[0].push(...a)
  statuses[1].push(...b)
  const total = opening.length + rest.length
  t.same(statuses[1].slice().sort(), statuses[0].slice().sort(), 'the same statuses')
  t.ok(
    statuses[0].includes(403) && statuses[0].includes(503) && statuses[0].includes(499),
    'the sequence has denied requests, upstream failures and requests their clients left',
  )
  await Promise.all([settled(single, total), settled(pod, total)])

  const textPod = await compareAll(t, single, pod, 'with the cap reached')

  // phase three: a reload raises the caps (identities that overflowed before have room now, as one
  // process gives it to them at their next request), a scrape, and more requests
  t.same(
    await Promise.all([single, pod].map((p) => p.sidecar.reload(p.config(RAISED)))),
    [true, true],
    'both reloaded',
  )
  await Promise.all([settled(single, total), settled(pod, total)])
  const [afterOne, afterPod] = await Promise.all([
    sendOnConnections(single.sidecar.proxyUrl, raised, f),
    sendOnConnections(pod.sidecar.proxyUrl, raised, f),
  ])
  t.same(afterPod.sort(), afterOne.sort(), 'the same statuses after the reload')
  await Promise.all([settled(single, total + raised.length), settled(pod, total + raised.length)])
  await compareAll(t, single, pod, 'after the reload')

  const promtool = systemTool('promtool')
  await t.test(
    "promtool accepts the pod's exposition",
    { skip: skipWithout('promtool', promtool) },
    async (t) => {
      const checked = await run(promtool!, ['check', 'metrics'], { input: textPod })
      t.equal(checked.code, 0, checked.stdout + checked.stderr)
    },
  )
})
