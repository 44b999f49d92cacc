// External tools for the packaging tests: helm/kubectl unpacked by scripts/tools.mjs into .tools/bin,
// promtool/prometheus from the system. Commands run with a deadline and never through a shell.
import { execFile, execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { scratchDirSync } from './scratch.ts'

export const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url))
export const CHART_DIR = join(REPO_ROOT, 'helm', 'nhi-proxy')

export interface RunResult {
  code: number
  stdout: string
  stderr: string
}

export interface RunOptions {
  input?: string
  cwd?: string
  env?: NodeJS.ProcessEnv
  timeoutMs?: number
}

/** Runs a command to completion; a non-zero exit is a result, not an exception. */
export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = execFile(
      cmd,
      args,
      {
        cwd: opts.cwd ?? REPO_ROOT,
        env: { ...process.env, ...opts.env },
        timeout: opts.timeoutMs ?? 60_000,
        maxBuffer: 64 * 1024 * 1024,
        encoding: 'utf8',
      },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0
        resolve({ code, stdout, stderr: err && !stderr ? String(err.message) : stderr })
      },
    )
    if (opts.input !== undefined) child.stdin?.end(opts.input)
  })
}

/** Path of helm or kubectl in .tools/bin, unpacking them first if needed. */
export function localTool(name: 'helm' | 'kubectl'): string {
  const path = join(REPO_ROOT, '.tools', 'bin', name)
  if (!existsSync(path)) execFileSync(process.execPath, [join(REPO_ROOT, 'scripts', 'tools.mjs')])
  return path
}

/** Absolute path of a system binary, or undefined when it is not installed. */
export function systemTool(name: string): string | undefined {
  for (const dir of (process.env['PATH'] ?? '').split(':')) {
    const p = join(dir, name)
    if (dir && existsSync(p)) return p
  }
  return undefined
}

const DISCOVERY: Record<string, [resource: string, kind: string, namespaced: boolean][]> = {
  v1: [
    ['configmaps', 'ConfigMap', true],
    ['services', 'Service', true],
    ['serviceaccounts', 'ServiceAccount', true],
    ['pods', 'Pod', true],
  ],
  'apps/v1': [['deployments', 'Deployment', true]],
  'rbac.authorization.k8s.io/v1': [['clusterrolebindings', 'ClusterRoleBinding', false]],
  'networking.k8s.io/v1': [['networkpolicies', 'NetworkPolicy', true]],
  'policy/v1': [['poddisruptionbudgets', 'PodDisruptionBudget', true]],
  'monitoring.coreos.com/v1': [
    ['servicemonitors', 'ServiceMonitor', true],
    ['podmonitors', 'PodMonitor', true],
    ['prometheusrules', 'PrometheusRule', true],
  ],
}

/**
 * kubectl arguments and environment for a client-side dry run that never reaches a server: a kubeconfig
 * for an unreachable 127.0.0.1:1 cluster plus a pre-seeded API discovery cache, so kubectl can map every
 * kind the chart renders (and rejects unknown apiVersion/kind pairs) without a network call. The caller
 * removes `dir`.
 */
export function offlineKubectl(): { args: string[]; env: NodeJS.ProcessEnv; dir: string } {
  const dir = scratchDirSync('kubectl')
  const kubeconfig = join(dir, 'kubeconfig')
  writeFileSync(
    kubeconfig,
    [
      'apiVersion: v1',
      'kind: Config',
      'clusters: [{ name: offline, cluster: { server: "https://127.0.0.1:1" } }]',
      'users: [{ name: offline, user: { token: offline } }]',
      'contexts: [{ name: offline, context: { cluster: offline, user: offline, namespace: default } }]',
      'current-context: offline',
      '',
    ].join('\n'),
  )
  const cache = join(dir, 'cache')
  const base = join(cache, 'discovery', '127.0.0.1_1')
  const groups = Object.keys(DISCOVERY).map((gv) => {
    const [group, version] = gv.includes('/') ? gv.split('/') : ['', gv]
    return {
      name: group,
      versions: [{ groupVersion: gv, version }],
      preferredVersion: { groupVersion: gv, version },
    }
  })
  mkdirSync(base, { recursive: true })
  writeFileSync(
    join(base, 'servergroups.json'),
    JSON.stringify({ kind: 'APIGroupList', apiVersion: 'v1', groups }),
  )
  for (const [gv, resources] of Object.entries(DISCOVERY)) {
    mkdirSync(join(base, gv), { recursive: true })
    const list = {
      kind: 'APIResourceList',
      apiVersion: 'v1',
      groupVersion: gv,
      resources: resources.map(([name, kind, namespaced]) => ({
        name,
        singularName: '',
        namespaced,
        kind,
        verbs: ['create', 'get', 'list'],
      })),
    }
    writeFileSync(join(base, gv, 'serverresources.json'), JSON.stringify(list))
  }
  return { args: [`--cache-dir=${cache}`], env: { KUBECONFIG: kubeconfig }, dir }
}

/** Metric names of docs/reference.md "Metrics" plus our documented additions the alerts use (job interval, audit drops, attribution errors, TLS rotations and certificate dates, stale workers). */
export const SPEC_METRICS: ReadonlySet<string> = new Set([
  'nhi_requests_total',
  'nhi_request_duration_seconds',
  'nhi_request_bytes_total',
  'nhi_response_bytes_total',
  'nhi_upstream_seconds_total',
  'nhi_cost_total',
  'nhi_auth_failures_total',
  'nhi_credential_expiry_timestamp_seconds',
  'nhi_tls_certificate_expiry_timestamp_seconds',
  'nhi_tls_certificate_not_before_timestamp_seconds',
  'nhi_identity_last_seen_timestamp_seconds',
  'nhi_job_last_success_timestamp_seconds',
  'nhi_job_consecutive_failures',
  'nhi_job_expected_interval_seconds',
  'nhi_audit_dropped_lines_total',
  'nhi_attribution_errors_total',
  'nhi_tls_reloads_total',
  'nhi_identities',
  'nhi_identity_overflow_total',
  'nhi_credential_anomalies_total',
  'nhi_policy_decisions_total',
  'nhi_upstream_errors_total',
  'nhi_tunnels_idle_closed_total',
  'nhi_jwks_refresh_total',
  'nhi_jwks_keys',
  'nhi_jwks_last_success_timestamp_seconds',
  'nhi_config_reloads_total',
  'nhi_config_last_reload_success_timestamp_seconds',
  'nhi_build_info',
  'nhi_worker_metrics_stale',
])

/** nhi_* metric names referenced in PromQL text (histogram suffixes folded onto the family). */
export function metricNamesIn(promql: string): string[] {
  const names = promql.match(/\bnhi_[a-z_]+/g) ?? []
  return [...new Set(names.map((n) => n.replace(/_(bucket|sum|count)$/, '')))]
}

/**
 * tap `skip` option for a test that needs an external tool: false when `present`, else the reason, so the
 * skip shows in tap's summary instead of the test passing without running. CI installs every tool and sets
 * NHI_REQUIRE_TOOLS=1: there a missing tool is an error at load time, never a quiet skip.
 */
export function skipWithout(tool: string, present: unknown): false | string {
  if (present) return false
  if (process.env['NHI_REQUIRE_TOOLS'] === '1') {
    throw new Error(
      `${tool} is not installed, and NHI_REQUIRE_TOOLS=1 forbids skipping the tests that need it`,
    )
  }
  return `${tool} not installed`
}
