// The alert rules file, checked and unit-tested by the real promtool.
import { readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { parse, stringify } from 'yaml'
import { scratchDirSync } from '../helpers/scratch.ts'
import { CHART_DIR, metricNamesIn, run, SPEC_METRICS, skipWithout, systemTool } from '../helpers/tools.ts'

const ALERTS_DIR = join(CHART_DIR, 'alerts')
const RULES = join(ALERTS_DIR, 'nhi-proxy.rules.yaml')
const promtool = systemTool('promtool')
const skipPromtool = skipWithout('promtool', promtool)

interface Rule {
  alert: string
  expr: string
}
const rules = (parse(readFileSync(RULES, 'utf8')) as { groups: { rules: Rule[] }[] }).groups.flatMap(
  (g) => g.rules,
)

t.test('every alert the chart promises is defined', async (t) => {
  t.same(rules.map((r) => r.alert).sort(), [
    'NhiAttributionErrors',
    'NhiAuditLinesDropped',
    'NhiAuthFailureSpike',
    'NhiCredentialExpired',
    'NhiCredentialExpiringSoon',
    'NhiIdentityOverflow',
    'NhiJobFailing',
    'NhiJobSilent',
    'NhiJwksRefreshFailing',
    'NhiTlsCertificateExpiring',
    'NhiTlsRotationFailing',
    'NhiWorkerMetricsStale',
  ])
  for (const r of rules) {
    const unknown = metricNamesIn(r.expr).filter((m) => !SPEC_METRICS.has(m))
    t.same(unknown, [], `${r.alert} uses only metrics named in the spec`)
  }
})

t.test('promtool check rules', { skip: skipPromtool }, async (t) => {
  const r = await run(promtool!, ['check', 'rules', RULES])
  t.equal(r.code, 0, r.stdout + r.stderr)
  t.match(r.stdout, /SUCCESS: 12 rules found/)
})

t.test(
  'promtool test rules: each alert fires on its trigger and not otherwise',
  {
    skip: skipPromtool,
  },
  async (t) => {
    const r = await run(promtool!, ['test', 'rules', 'tests.yaml'], { cwd: ALERTS_DIR })
    t.equal(r.code, 0, r.stdout + r.stderr)
    t.match(r.stdout, /SUCCESS/)
    const tests = readFileSync(join(ALERTS_DIR, 'tests.yaml'), 'utf8')
    for (const rule of rules) {
      t.match(
        tests,
        new RegExp(`alertname: ${rule.alert}\\n\\s+exp_alerts:\\n\\s+- exp_labels`),
        `${rule.alert} is tested firing`,
      )
    }
  },
)

interface TestFile {
  tests: { name: string; alert_rule_test?: { alertname: string }[] }[]
}

/** the alerts whose rule reads differently in `changed` than in `source` */
function alteredAlerts(source: string, changed: string): string[] {
  const byAlert = (text: string) =>
    new Map(
      (parse(text) as { groups: { rules: Rule[] }[] }).groups
        .flatMap((g) => g.rules)
        .map((r) => [r.alert, JSON.stringify(r)] as const),
    )
  const before = byAlert(source)
  return [...byAlert(changed)].filter(([alert, rule]) => before.get(alert) !== rule).map(([alert]) => alert)
}

t.test('the unit tests catch a broken rule', { skip: skipPromtool }, async (t) => {
  const dir = scratchDirSync('alerts')
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const testFile = parse(readFileSync(join(ALERTS_DIR, 'tests.yaml'), 'utf8')) as TestFile
  const source = readFileSync(RULES, 'utf8')
  const mutations: [string, string][] = [
    ['(nhi_job_consecutive_failures) >= 3', '(nhi_job_consecutive_failures) >= 4'],
    ['< 86400 > 0', '< 3600 > 0'],
    // renewals a day apart at most (replicas renewing a day-long credential by turns) are renewals
    ['expiry_timestamp_seconds[1d]) > 0', 'expiry_timestamp_seconds[1h]) > 0'],
    ['(rate(nhi_auth_failures_total[5m])) > 0.5', '(rate(nhi_auth_failures_total[5m])) > 0'],
    ['[10m])) > 0', '[10m])) > 10'],
    ['<= 900)', '<= 90000)'],
    // a stale worker's `for` is pinned both ways: shorter fires on a stall the watchdog ends, longer too late
    ['(nhi_worker_metrics_stale) > 0\n        for: 2m', '(nhi_worker_metrics_stale) > 0\n        for: 1m'],
    ['(nhi_worker_metrics_stale) > 0\n        for: 2m', '(nhi_worker_metrics_stale) > 0\n        for: 3m'],
  ]
  for (const [from, to] of mutations) {
    t.ok(source.includes(from), `rule text contains ${from}`)
    const changed = source.replace(from, to)
    // only the test groups of the altered alert run: the alert's own tests must catch it, and promtool spends
    // seconds on the groups that evaluate days of series (the replicas' expiry), ~1 ms on the rest
    const altered = alteredAlerts(source, changed)
    const groups = testFile.tests.filter((g) =>
      (g.alert_rule_test ?? []).some((a) => altered.includes(a.alertname)),
    )
    t.ok(groups.length > 0, `a test group tests ${altered.join(', ') || 'the altered alert'}`)
    writeFileSync(join(dir, 'nhi-proxy.rules.yaml'), changed)
    writeFileSync(join(dir, 'tests.yaml'), stringify({ ...testFile, tests: groups }))
    const r = await run(promtool!, ['test', 'rules', 'tests.yaml'], { cwd: dir })
    t.not(r.code, 0, `changing "${from}" to "${to}" fails ${altered.join(', ')}'s tests`)
  }
})
