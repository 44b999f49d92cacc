// End to end with a real Prometheus: the demo (real proxy + synthetic callers of every kind) is scraped
// every second; PromQL over the scraped data must show each kind of identity, our alert rules must load
// and evaluate cleanly, and `promtool check metrics` must accept the exposition.
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { freePort } from '../helpers/net.ts'
import { startPrometheus } from '../helpers/prometheus.ts'
import { spawnDemo } from '../helpers/sidecar.ts'
import { CHART_DIR, run, skipWithout, systemTool } from '../helpers/tools.ts'

/** the alert names the chart ships, read from its rules file */
const chartAlerts = [
  ...readFileSync(join(CHART_DIR, 'alerts', 'nhi-proxy.rules.yaml'), 'utf8').matchAll(/^\s*- alert: (\S+)/gm),
].map((m) => m[1])

const prometheusBin = systemTool('prometheus')
const promtool = systemTool('promtool')
const DEADLINE_MS = 60_000
const KINDS = ['agent', 'bot', 'human', 'job', 'service']

interface VectorSample {
  metric: Record<string, string>
  value: [number, string]
}
interface ApiResponse<T> {
  status: string
  error?: string
  data: T
}

async function api<T>(base: string, path: string): Promise<ApiResponse<T>> {
  const res = await fetch(`${base}${path}`, { signal: AbortSignal.timeout(5_000) })
  return (await res.json()) as ApiResponse<T>
}

function query(base: string, promql: string) {
  return api<{ resultType: string; result: VectorSample[] }>(
    base,
    `/api/v1/query?query=${encodeURIComponent(promql)}`,
  )
}

/** Polls `probe` until it returns a value, within what is left of the test's deadline. */
function waitFor<T>(what: string, until: number, probe: () => Promise<T | undefined>): Promise<T> {
  return eventually(probe, {
    timeoutMs: Math.max(0, until - Date.now()),
    intervalMs: 500,
    what,
  }) as Promise<T>
}

t.test(
  'demo traffic scraped by a real Prometheus',
  {
    skip: skipWithout('prometheus', prometheusBin) || skipWithout('promtool', promtool),
    timeout: DEADLINE_MS + 20_000,
  },
  async (t) => {
    const until = Date.now() + DEADLINE_MS
    const adminPort = await freePort()
    const demo = spawnDemo({ admin: `127.0.0.1:${adminPort}` })
    t.teardown(async () => {
      demo.kill('SIGKILL')
      await demo.exited
    })
    const [, metricsUrl] = await demo.waitFor(/metrics\s+(http:\/\/\S+\/metrics)/, 30_000)
    t.equal(metricsUrl, `http://127.0.0.1:${adminPort}/metrics`, 'demo prints its /metrics URL')
    t.match(
      demo.stdout() + demo.stderr(),
      new RegExp(`http://127\\.0\\.0\\.1:${adminPort}/ui`),
      'and its /ui URL',
    )

    const { base } = await startPrometheus(t, prometheusBin!, (dir) => {
      const rulesFile = join(dir, 'nhi-proxy.rules.yaml')
      writeFileSync(rulesFile, readFileSync(join(CHART_DIR, 'alerts', 'nhi-proxy.rules.yaml')))
      return [
        'global: { scrape_interval: 1s, evaluation_interval: 1s }',
        `rule_files: [${JSON.stringify(rulesFile)}]`,
        'scrape_configs:',
        '  - job_name: nhi-proxy',
        `    static_configs: [{ targets: ["127.0.0.1:${adminPort}"] }]`,
        '',
      ].join('\n')
    })

    const byKind = await waitFor('every kind in PromQL results', until, async () => {
      const r = await query(base, 'sum by (identity, kind) (rate(nhi_requests_total[30s]))')
      const kinds = new Set(r.data.result.filter((s) => Number(s.value[1]) > 0).map((s) => s.metric['kind']))
      return KINDS.every((k) => kinds.has(k)) ? r.data.result : undefined
    })
    const kindOf = new Map(byKind.map((s) => [s.metric['identity'], s.metric['kind']]))
    t.same(
      [...new Set(kindOf.values())].filter((k) => k !== 'unknown').sort(),
      KINDS,
      'human, service, job, bot, agent',
    )
    t.ok(
      byKind.every((s) => s.metric['identity'] && s.metric['kind']),
      'every series carries identity and kind',
    )
    // identities the demo sends with well-known credentials keep their kind in the scraped data
    for (const [identity, kind] of kindOf) {
      if (/gptbot|claudebot|perplexity/i.test(identity ?? ''))
        t.equal(kind, 'agent', `${identity} is an agent`)
    }

    const targets = await api<{ activeTargets: { health: string }[] }>(base, '/api/v1/targets')
    t.same(
      targets.data.activeTargets.map((x) => x.health),
      ['up'],
      'the admin endpoint is a healthy scrape target',
    )

    const rules = await waitFor('alert rules evaluated', until, async () => {
      const r = await api<{ groups: { rules: { name: string; health: string; lastError?: string }[] }[] }>(
        base,
        '/api/v1/rules',
      )
      const all = r.data.groups.flatMap((g) => g.rules)
      return all.length > 0 && all.every((x) => x.health !== 'unknown') ? all : undefined
    })
    t.equal(rules.length, chartAlerts.length, `all ${chartAlerts.length} alert rules of the chart loaded`)
    for (const rule of rules)
      t.equal(rule.health, 'ok', `${rule.name} evaluates without error ${rule.lastError ?? ''}`)

    const dashboard = JSON.parse(readFileSync(join(CHART_DIR, 'dashboards', 'nhi-proxy.json'), 'utf8')) as {
      panels: { title: string; targets: { expr: string }[] }[]
    }
    for (const panel of dashboard.panels) {
      for (const target of panel.targets) {
        const expr = target.expr
          .replaceAll('$__rate_interval', '30s')
          .replaceAll('$__range', '1m')
          .replaceAll('$service', '.*')
        const r = await query(base, expr)
        t.equal(r.status, 'success', `dashboard "${panel.title}" query runs: ${r.error ?? ''}`)
      }
    }
    const requests = await query(base, 'sum by (kind) (rate(nhi_requests_total[30s]))')
    t.ok(requests.data.result.length >= KINDS.length, 'the dashboard\'s "requests by kind" has data')

    const exposition = await (await fetch(metricsUrl!)).text()
    const check = await run(promtool!, ['check', 'metrics'], { input: exposition })
    t.equal(check.code, 0, `promtool check metrics: ${check.stdout}${check.stderr}`)
    t.equal(check.stderr.trim(), '', 'no lint findings')
    t.ok(Date.now() <= until, 'finished within the deadline')
  },
)
