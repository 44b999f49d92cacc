// `inventory` and `fleet` against a real Prometheus scraping three sidecars (orders, billing, search) run from
// the built bundle: known callers (api keys, an AI agent's user agent, a browser) cross them, Prometheus
// scrapes every second, and the built CLI must list exactly those identities and edges. Plus the CSV shape
// and the errors (Prometheus down, bad URL).

import { createHash } from 'node:crypto'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { decodeJwt } from 'jose'
import t from 'tap'
import type { InventoryRow } from '../../src/cli/inventory.ts'
import { eventually } from '../helpers/eventually.ts'
import { mintToken, startUpstreamAndJwks } from '../helpers/jwks.ts'
import { freePort, refusedPort } from '../helpers/net.ts'
import { startPrometheus } from '../helpers/prometheus.ts'
import { runCli, spawnCli, startTestSidecar, type TestSidecar } from '../helpers/sidecar.ts'
import { CHART_DIR, skipWithout, systemTool } from '../helpers/tools.ts'

const prometheusBin = systemTool('prometheus')
const sha256 = (s: string) => createHash('sha256').update(s).digest('hex')
const KEYS = { 'inventory-sync': 'sync-key-0123456789', 'nightly-export': 'export-key-0123456789' }
const BROWSER =
  'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36'

// the two subtests share nothing; the first mostly waits for Prometheus, the second starts CLI processes
t.jobs = 2

async function send(sidecar: TestSidecar, path: string, headers: Record<string, string>, times = 1) {
  const { address, port } = sidecar.proxyAddress
  for (let i = 0; i < times; i++) {
    const res = await fetch(`http://${address}:${port}${path}`, {
      headers,
      signal: AbortSignal.timeout(5_000),
    })
    await res.arrayBuffer()
  }
}

t.test(
  'inventory and fleet over three sidecars scraped by a real Prometheus',
  { skip: skipWithout('prometheus', prometheusBin), timeout: 90_000 },
  async (t) => {
    const { upstream, key, jwks } = await startUpstreamAndJwks(t)
    const issuer = jwks.url
    const keys = {
      header: 'x-api-key',
      keys: [
        { name: 'inventory-sync', kind: 'service', sha256: sha256(KEYS['inventory-sync']) },
        { name: 'nightly-export', kind: 'job', sha256: sha256(KEYS['nightly-export']) },
      ],
    }
    const nightly = {
      name: 'nightly-export',
      rule: 'nightly',
      kind: 'job',
      expectEvery: '1s',
      match: { apiKey: 'nightly-export' },
    }
    // Prometheus applies its targets only after its discovery interval (5 s): started first, on the admin
    // ports the sidecars are then given, it waits that out while they start and take the traffic. Scrapes
    // before the traffic do not change the counts (inventory and fleet take a series' last value over the
    // window), and the polls below wait for a scrape after it.
    const adminPorts = new Set<number>()
    while (adminPorts.size < 3) adminPorts.add(await freePort())
    const admins = [...adminPorts].map((p) => `127.0.0.1:${p}`)
    const [ordersAdmin, billingAdmin, searchAdmin] = admins
    const prometheus = startPrometheus(t, prometheusBin!, () =>
      [
        'global: { scrape_interval: 1s, evaluation_interval: 1s }',
        'scrape_configs:',
        '  - job_name: nhi-proxy',
        `    static_configs: [{ targets: [${admins.map((a) => `"${a}"`).join(', ')}] }]`,
        '',
      ].join('\n'),
    )
    // awaited after the traffic; a failed start must not count as unhandled before that
    prometheus.catch(() => {})
    const [orders, billing, search] = await Promise.all([
      startTestSidecar(t, {
        service: 'orders',
        admin: ordersAdmin,
        upstream: upstream.url,
        apiKeys: keys,
        identities: [nightly],
      }),
      startTestSidecar(t, {
        service: 'billing',
        admin: billingAdmin,
        upstream: upstream.url,
        apiKeys: keys,
        identities: [nightly],
      }),
      startTestSidecar(t, {
        service: 'search',
        admin: searchAdmin,
        upstream: upstream.url,
        jwt: { issuers: [{ issuer, jwksUri: jwks.jwksUri, audiences: ['search'] }] },
        identities: [
          { name: 'svc/{client}', kind: 'service', match: { jwt: { issuer, claims: { azp: '{client}' } } } },
        ],
      }),
    ])
    const sync = { 'x-api-key': KEYS['inventory-sync'] }
    const exporter = { 'x-api-key': KEYS['nightly-export'] }
    await send(orders!, '/orders', sync, 3)
    await send(billing!, '/invoices', sync, 2)
    await send(orders!, '/export', exporter)
    await send(billing!, '/status/500', exporter)
    await send(search!, '/docs', { 'user-agent': 'GPTBot/1.2' }, 2)
    await send(search!, '/', { 'user-agent': BROWSER })
    // a verified workload token that expires in an hour
    const token = await mintToken(key, { azp: 'reports' }, { issuer, audience: 'search', expiresIn: 3600 })
    const tokenExp = decodeJwt(token).exp!
    await send(search!, '/reports', { authorization: `Bearer ${token}` })

    const { base } = await prometheus

    // the three sidecars scraped after the traffic: every request counted
    const inventory = await eventually(
      async () => {
        const r = await runCli(['inventory', '--prometheus', base, '--window', '10m', '--json'])
        if (r.code !== 0) throw new Error(r.stderr)
        const inv = JSON.parse(r.stdout) as { identities: InventoryRow[] }
        const total = inv.identities.reduce((n, x) => n + x.requests, 0)
        // a poll can come within the job's 1 s expected interval after the traffic: wait until it is past
        const overdue = inv.identities.find((x) => x.identity === 'nightly-export')?.dormant === true
        return total === 10 && inv.identities.every((x) => x.lastSeen !== null) && overdue ? inv : undefined
      },
      {
        timeoutMs: 40_000,
        intervalMs: 500,
        what: 'all ten non-human requests in the inventory, the job past its expected interval',
      },
    )
    const pick = (r: InventoryRow) => ({
      identity: r.identity,
      kind: r.kind,
      sources: r.sources,
      verified: r.verified,
      services: r.services,
      requests: r.requests,
      errors: r.errors,
      errorRatio: r.errorRatio,
      expectedIntervalSeconds: r.expectedIntervalSeconds,
    })
    t.same(
      inventory.identities.map(pick),
      [
        {
          identity: 'inventory-sync',
          kind: 'service',
          sources: ['apikey'],
          verified: true,
          services: ['billing', 'orders'],
          requests: 5,
          errors: 0,
          errorRatio: 0,
          expectedIntervalSeconds: null,
        },
        {
          identity: 'nightly-export',
          kind: 'job',
          sources: ['apikey'],
          verified: true,
          services: ['billing', 'orders'],
          requests: 2,
          errors: 1,
          errorRatio: 0.5,
          expectedIntervalSeconds: 1,
        },
        {
          identity: 'svc/reports',
          kind: 'service',
          sources: ['jwt'],
          verified: true,
          services: ['search'],
          requests: 1,
          errors: 0,
          errorRatio: 0,
          expectedIntervalSeconds: null,
        },
        {
          identity: 'ua:gptbot',
          kind: 'agent',
          sources: ['useragent'],
          verified: false,
          services: ['search'],
          requests: 2,
          errors: 0,
          errorRatio: 0,
          expectedIntervalSeconds: null,
        },
      ],
      'exactly the non-human identities, their kinds, sources and services (the browser is left out)',
    )
    for (const r of inventory.identities) {
      t.ok(r.firstSeen && r.lastSeen && r.firstSeen <= r.lastSeen, `${r.identity}: first seen ≤ last seen`)
    }
    const byName = new Map(inventory.identities.map((r) => [r.identity, r]))
    t.equal(byName.get('inventory-sync')?.dormant, false, 'a caller seen just now is active')
    t.equal(
      byName.get('svc/reports')?.credentialExpiry,
      new Date(tokenExp * 1000).toISOString().replace('.000Z', 'Z'),
      "the token's exp is the credential expiry",
    )
    t.equal(byName.get('inventory-sync')?.credentialExpiry, null, 'api keys do not expire')
    t.equal(byName.get('nightly-export')?.dormant, true, 'a job past its 1s expected interval is dormant')
    t.match(byName.get('nightly-export')?.dormantReason, /job overdue/)

    // every identity is dormant once the threshold is shorter than the time since its last request
    const strict = await eventually(
      async () => {
        const r = await runCli([
          'inventory',
          '--prometheus',
          base,
          '--window',
          '10m',
          '--dormant-after',
          '1s',
          '--json',
        ])
        const inv = JSON.parse(r.stdout) as { identities: InventoryRow[] }
        return inv.identities.every((x) => x.dormant) ? inv : undefined
      },
      { timeoutMs: 20_000, intervalMs: 500, what: 'every identity silent for over 1s' },
    )
    t.match(strict.identities.find((r) => r.identity === 'ua:gptbot')?.dormantReason, /silent for/)

    // the same data in every output format, each its own CLI process: side by side
    const [csv, table, fleetRun, fleetTable] = await Promise.all([
      runCli(['inventory', '--prometheus', base, '--window', '10m', '--csv']),
      runCli(['inventory', '--prometheus', base, '--window', '10m']),
      runCli(['fleet', '--prometheus', base, '--window', '10m', '--json']),
      runCli(['fleet', '--prometheus', base, '--window', '10m']),
    ])
    t.equal(csv.code, 0, csv.stderr)
    const lines = csv.stdout.trimEnd().split('\n')
    t.equal(
      lines[0],
      'identity,kind,sources,verified,first_seen,last_seen,services,requests,errors,error_ratio,credential_expiry,expected_interval_seconds,last_success,dormant,dormant_reason',
      'CSV header',
    )
    t.equal(lines.length, 5, 'one row per identity')
    t.match(lines[1], /^inventory-sync,service,apikey,true,[^,]+,[^,]+,billing;orders,5,0,0,,,,false,$/)
    t.ok(
      lines.slice(1).every((l) => l.split(',').length >= 15),
      'every row has every column',
    )

    t.equal(table.code, 0, table.stderr)
    t.match(table.stdout, /IDENTITY\s+KIND\s+SOURCE/, 'a table by default')
    t.match(table.stdout, /nightly-export\s+job\s+apikey/)

    // fleet: edges, shares, jobs, unverified callers
    t.equal(fleetRun.code, 0, fleetRun.stderr)
    const fleet = JSON.parse(fleetRun.stdout) as {
      services: { service: string; requests: number; human: number; machine: number; machineShare: number }[]
      edges: {
        identity: string
        kind: string
        service: string
        requests: number
        errors: number
        verified: boolean
      }[]
      failingJobs: { identity: string; services: string[]; consecutiveFailures: number }[]
      silentJobs: { identity: string }[]
      unverifiedCallers: { identity: string; kind: string; services: string[]; requests: number }[]
      cost: unknown[]
      expiringCredentials: {
        identity: string
        service: string
        source: string
        expires: string
        inSeconds: number
      }[]
    }
    t.same(
      fleet.edges,
      [
        {
          identity: 'inventory-sync',
          kind: 'service',
          service: 'billing',
          requests: 2,
          errors: 0,
          verified: true,
        },
        {
          identity: 'nightly-export',
          kind: 'job',
          service: 'billing',
          requests: 1,
          errors: 1,
          verified: true,
        },
        {
          identity: 'inventory-sync',
          kind: 'service',
          service: 'orders',
          requests: 3,
          errors: 0,
          verified: true,
        },
        {
          identity: 'nightly-export',
          kind: 'job',
          service: 'orders',
          requests: 1,
          errors: 0,
          verified: true,
        },
        { identity: 'anonymous', kind: 'human', service: 'search', requests: 1, errors: 0, verified: false },
        {
          identity: 'svc/reports',
          kind: 'service',
          service: 'search',
          requests: 1,
          errors: 0,
          verified: true,
        },
        { identity: 'ua:gptbot', kind: 'agent', service: 'search', requests: 2, errors: 0, verified: false },
      ],
      'identity → service edges across the three sidecars',
    )
    t.same(
      fleet.services.map((s) => [s.service, s.requests, s.human, s.machine, s.machineShare]),
      [
        ['billing', 3, 0, 3, 1],
        ['orders', 4, 0, 4, 1],
        ['search', 4, 1, 3, 0.75],
      ],
      'human vs machine share per service',
    )
    t.same(
      fleet.failingJobs.map((j) => [j.identity, j.services, j.consecutiveFailures]),
      [['nightly-export', ['billing', 'orders'], 1]],
      'the job failing at billing',
    )
    t.same(
      fleet.silentJobs.map((j) => j.identity),
      ['nightly-export'],
      'and past its expected interval',
    )
    t.same(
      fleet.unverifiedCallers,
      [{ identity: 'ua:gptbot', kind: 'agent', services: ['search'], requests: 2 }],
      'unverified non-human callers',
    )
    t.same(fleet.cost, [], 'no cost model, no cost')
    t.same(
      fleet.expiringCredentials.map((c) => [c.identity, c.service, c.source]),
      [['svc/reports', 'search', 'jwt']],
      'the token expiring within the default 7d',
    )
    t.ok(
      fleet.expiringCredentials.every((c) => c.inSeconds > 3000 && c.inSeconds <= 3600),
      'in about an hour',
    )

    t.equal(fleetTable.code, 0, fleetTable.stderr)
    t.match(fleetTable.stdout, /Edges \(identity → service\):/)
    t.match(fleetTable.stdout, /ua:gptbot\s+agent\s+search\s+2\s+0\s+no/)

    // the dashboard's fleet panels run on the same data and name the same identities and edges
    const dashboard = JSON.parse(readFileSync(join(CHART_DIR, 'dashboards', 'nhi-proxy.json'), 'utf8')) as {
      panels: {
        title: string
        type: string
        targets: { expr: string; refId: string; format?: string; instant?: boolean }[]
        transformations?: { id: string; options: { renameByName?: Record<string, string> } }[]
      }[]
    }
    const panelResults = async (title: string) => {
      const panel = dashboard.panels.find((p) => p.title === title)
      t.ok(panel, `dashboard panel "${title}"`)
      const results: { metric: Record<string, string>; value: [number, string] }[][] = []
      for (const target of panel?.targets ?? []) {
        const expr = target.expr.replaceAll('$__range', '10m').replaceAll('$service', '.*')
        const res = await fetch(`${base}/api/v1/query?query=${encodeURIComponent(expr)}`)
        const body = (await res.json()) as {
          status: string
          error?: string
          data: { result: { metric: Record<string, string>; value: [number, string] }[] }
        }
        t.equal(body.status, 'success', `"${title}" query runs: ${body.error ?? ''}`)
        results.push(body.data.result)
      }
      return results
    }
    const panelRows = async (title: string) =>
      (await panelResults(title)).map((result) => result.map((r) => r.metric))
    const [edgeRows] = await panelRows('Fleet edges: identity \u2192 service')
    t.same(
      edgeRows?.map((m) => `${m['identity']}->${m['service']}`).sort(),
      fleet.edges.map((e) => `${e.identity}->${e.service}`).sort(),
      'the edges panel lists the edges fleet prints',
    )
    const [lastSeenRows] = await panelRows('NHI inventory')
    t.same(
      lastSeenRows?.map((m) => m['identity']).sort(),
      ['inventory-sync', 'nightly-export', 'svc/reports', 'ua:gptbot'],
      'the inventory panel lists the identities inventory prints',
    )

    // the node graph: frames named nodes and edges (by refId) with the field names the panel reads
    const graphTitle = 'Fleet graph: identity \u2192 service'
    const graph = dashboard.panels.find((p) => p.title === graphTitle)
    t.equal(graph?.type, 'nodeGraph', 'a Node Graph panel')
    t.same(
      graph?.targets.map((q) => [q.refId, q.format, q.instant]),
      [
        ['nodes', 'table', true],
        ['edges', 'table', true],
      ],
      'one instant table query per frame, named as the node graph expects',
    )
    const renames = graph?.transformations?.find((x) => x.id === 'organize')?.options.renameByName ?? {}
    t.equal(renames['Value #nodes'], 'mainstat', 'node value column becomes mainstat')
    t.equal(renames['Value #edges'], 'mainstat', 'edge value column becomes mainstat')
    const [nodes, edges] = await panelResults(graphTitle)
    t.same(
      edges
        ?.map((e) => ({
          id: e.metric['id'],
          source: e.metric['source'],
          target: e.metric['target'],
          mainstat: Math.round(Number(e.value[1])),
        }))
        .sort((x, y) => String(x.id).localeCompare(String(y.id))),
      fleet.edges
        .map((e) => ({
          id: `${e.identity} \u2192 ${e.service}`,
          source: e.identity,
          target: e.service,
          mainstat: e.requests,
        }))
        .sort((x, y) => x.id.localeCompare(y.id)),
      'one edge per identity → service pair fleet prints, weighted by its requests',
    )
    for (const e of edges ?? [])
      t.same(Object.keys(e.metric).sort(), ['id', 'source', 'target'], 'edge frame: only node-graph fields')
    const nodeIds = (nodes ?? []).map((n) => n.metric['id']).sort()
    t.same(
      nodeIds,
      [...new Set([...fleet.edges.map((e) => e.identity), ...fleet.edges.map((e) => e.service)])].sort(),
      'a node per caller identity and per service, each once',
    )
    const node = (id: string) => nodes?.find((n) => n.metric['id'] === id)
    t.match(node('search')?.metric, { title: 'search', subtitle: 'service' })
    t.equal(Math.round(Number(node('search')?.value[1])), 4, 'a service node counts the requests it received')
    t.match(node('inventory-sync')?.metric, { title: 'inventory-sync', subtitle: 'caller' })
    t.equal(
      Math.round(Number(node('inventory-sync')?.value[1])),
      5,
      'a caller node counts the requests it sent',
    )

    // --serve: the same picture as a page, queried afresh per load
    const servePort = await freePort()
    const served = spawnCli(['fleet', '--prometheus', base, '--window', '10m', '--serve', String(servePort)])
    t.teardown(() => served.kill())
    await served.waitFor(new RegExp(`fleet view of .* on http://127\\.0\\.0\\.1:${servePort}/`))
    const pageUrl = `http://127.0.0.1:${servePort}`
    for (const path of ['/', '/ui']) {
      const res = await fetch(`${pageUrl}${path}`)
      t.equal(res.status, 200, `${path} answers`)
      t.match(res.headers.get('content-type'), /^text\/html/)
      const html = await res.text()
      t.match(html, /Edges \(identity → service\):/)
      t.match(html, /ua:gptbot\s+agent\s+search\s+2\s+0\s+no/)
      t.match(html, /svc\/reports\s+service\s+search\s+1\s+0\s+yes/)
    }
    const json = (await (await fetch(`${pageUrl}/fleet.json`)).json()) as typeof fleet
    t.same(json.edges, fleet.edges, '/fleet.json is the --json document')
    t.equal((await fetch(`${pageUrl}/elsewhere`)).status, 404)
    served.kill()
    t.equal(await served.exited, 0, 'SIGTERM: exits 0')
  },
)

t.test('unreachable Prometheus and bad URLs: an exit code and one clear line', async (t) => {
  const port = await refusedPort()
  // every command line at once: each is a process start of its own, which a loaded machine serializes badly
  const runs = await Promise.all(
    ['inventory', 'fleet'].map(async (command) => {
      const [down, bad, missing] = await Promise.all([
        runCli([command, '--prometheus', `http://127.0.0.1:${port}`, '--timeout', '5s']),
        runCli([command, '--prometheus', 'prometheus:9090']),
        runCli([command]),
      ])
      return { command, down, bad, missing }
    }),
  )
  const badServePending = runCli(['fleet', '--prometheus', 'http://127.0.0.1:9090', '--serve', 'nowhere'])
  for (const { command, down, bad, missing } of runs) {
    t.equal(down.code, 2, `${command}: Prometheus down → exit 2`)
    t.match(
      down.stderr,
      new RegExp(`cannot reach Prometheus at http://127\\.0\\.0\\.1:${port}: ECONNREFUSED`),
    )
    t.notMatch(down.stderr, /\n\s+at /, 'no stack trace')
    t.equal(down.stdout, '', 'nothing on stdout')

    t.equal(bad.code, 1, `${command}: a bad URL → exit 1`)
    t.match(bad.stderr, /--prometheus must be an http:\/\/ or https:\/\/ URL/)
    t.match(bad.stderr, /"prometheus:9090" has no scheme \(hint: http:\/\/prometheus:9090\)/, 'names the fix')

    t.equal(missing.code, 1, `${command}: --prometheus is required`)
  }

  // the page server stays up with Prometheus down and says why on the page
  const pagePort = await freePort()
  const served = spawnCli([
    'fleet',
    '--prometheus',
    `http://127.0.0.1:${port}`,
    '--serve',
    `127.0.0.1:${pagePort}`,
  ])
  t.teardown(() => served.kill())
  await served.waitFor(/fleet view of/)
  const res = await fetch(`http://127.0.0.1:${pagePort}/`)
  t.equal(res.status, 502)
  t.match(
    await res.text(),
    new RegExp(`cannot reach Prometheus at http://127\\.0\\.0\\.1:${port}: ECONNREFUSED`),
  )
  t.equal((await fetch(`http://127.0.0.1:${pagePort}/fleet.json`)).status, 502)
  served.kill()
  t.equal(await served.exited, 0)

  const badServe = await badServePending
  t.equal(badServe.code, 1, 'a bad --serve address → exit 1')
  t.match(badServe.stderr, /--serve must be HOST:PORT, :PORT or PORT/)
  // a --prometheus URL no load could use: refused before serving, as without --serve (it served a page that
  // answered 502 forever)
  for (const url of ['ftp://prometheus:9090', 'prometheus:9090']) {
    const badUrl = await runCli(['fleet', '--prometheus', url, '--serve', '127.0.0.1:0'], {
      timeoutMs: 10_000,
    })
    t.equal(badUrl.code, 1, `--serve with --prometheus ${url} → exit 1`)
    t.match(badUrl.stderr, /--prometheus must be an http:\/\/ or https:\/\/ URL/)
    t.notMatch(badUrl.stdout, /fleet view of/, 'nothing served')
  }

  // the page's port taken by someone else: a listener that cannot start is a runtime failure
  const taken = createServer()
  taken.listen(0, '127.0.0.1')
  await once(taken, 'listening')
  t.teardown(() => taken.close())
  const takenPort = (taken.address() as AddressInfo).port
  const inUse = await runCli([
    'fleet',
    '--prometheus',
    `http://127.0.0.1:${port}`,
    '--serve',
    `127.0.0.1:${takenPort}`,
  ])
  t.equal(inUse.code, 2, '--serve on a port in use → exit 2')
  // the words `run` and `demo` use, one line, no errno name
  t.equal(inUse.stderr, `nhi-proxy: cannot listen on 127.0.0.1:${takenPort}: address in use\n`)
})

// A job deployed an hour ago that runs daily has no success yet: `fleet` listed it as silent while
// `inventory` (which counts from the job's first appearance) called it active.
t.test(
  'fleet: a job without a success is silent only once its interval has passed since it appeared',
  async (t) => {
    const now = Math.floor(Date.now() / 1000)
    const vector = (series: { metric: Record<string, string>; value: number }[]) =>
      JSON.stringify({
        status: 'success',
        data: {
          resultType: 'vector',
          result: series.map((s) => ({ metric: s.metric, value: [now, String(s.value)] })),
        },
      })
    const jobs = [
      { identity: 'ci/new', firstSeen: now - 3000 },
      { identity: 'ci/stale', firstSeen: now - 2 * 86_400 },
    ]
    const server = createServer((req, res) => {
      let body = ''
      req.setEncoding('utf8')
      req.on('data', (c: string) => {
        body += c
      })
      req.on('end', () => {
        const query =
          new URLSearchParams(body).get('query') ??
          new URL(req.url ?? '/', 'http://x').searchParams.get('query') ??
          ''
        res.writeHead(200, { 'content-type': 'application/json' })
        if (query.includes('nhi_job_expected_interval_seconds'))
          return res.end(vector(jobs.map((j) => ({ metric: { identity: j.identity }, value: 86_400 }))))
        if (
          query.startsWith(
            'min by (identity) (min_over_time(nhi_identity_last_seen_timestamp_seconds{kind="job"}',
          )
        )
          return res.end(vector(jobs.map((j) => ({ metric: { identity: j.identity }, value: j.firstSeen }))))
        if (
          query.startsWith(
            'max by (service, identity) (max_over_time(nhi_identity_last_seen_timestamp_seconds{kind="job"}',
          )
        )
          return res.end(
            vector(
              jobs.map((j) => ({ metric: { identity: j.identity, service: 'orders' }, value: now - 10 })),
            ),
          )
        res.end(vector([]))
      })
    })
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    t.teardown(() => server.close())
    const r = await runCli([
      'fleet',
      '--prometheus',
      `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
      '--window',
      '7d',
      '--json',
    ])
    t.equal(r.code, 0, r.stderr)
    const fleet = JSON.parse(r.stdout) as {
      silentJobs: { identity: string; overdueSeconds: number | null }[]
    }
    t.same(
      fleet.silentJobs.map((j) => j.identity),
      ['ci/stale'],
      'the job first seen two days ago is silent; the one first seen 50 minutes ago is not',
    )
    t.ok((fleet.silentJobs[0]?.overdueSeconds ?? 0) >= 86_000, 'overdue by about a day')
  },
)
