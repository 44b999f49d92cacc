// The Helm chart rendered by the real helm binary, checked by helm lint, an offline kubectl dry run and
// structural assertions on the objects a cluster would receive.
import { readFileSync, writeFileSync } from 'node:fs'
import { cp, mkdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { parse, parseAllDocuments } from 'yaml'
import { parseConfigText } from '../../src/config/loader.ts'
import { limiter } from '../helpers/limit.ts'
import { scratchDirSync } from '../helpers/scratch.ts'
import {
  CHART_DIR,
  localTool,
  metricNamesIn,
  offlineKubectl,
  run as runNow,
  SPEC_METRICS,
} from '../helpers/tools.ts'

// every case renders on its own (its own values, its own temp dirs): four cases at a time, and the independent
// helm and kubectl runs within a case together, with at most four helm or kubectl processes at once
t.jobs = 4
const gate = limiter(4)
const run: typeof runNow = (cmd, args, opts) => gate(() => runNow(cmd, args, opts))

interface Probe {
  httpGet: { path: string; port: string | number }
}
interface Container {
  name: string
  restartPolicy?: string
  args?: string[]
  ports?: { name: string; containerPort: number }[]
  startupProbe?: Probe
  livenessProbe?: Probe
  readinessProbe?: Probe
  securityContext?: Record<string, unknown>
  volumeMounts?: { name: string; mountPath: string; readOnly?: boolean }[]
}
interface Volume {
  name: string
  configMap?: { name: string }
  emptyDir?: Record<string, unknown>
  projected?: {
    defaultMode?: number
    sources: {
      serviceAccountToken?: { path: string; audience?: string; expirationSeconds?: number }
      configMap?: { name: string; items: { key: string; path: string }[] }
    }[]
  }
}
interface PodSpec {
  initContainers?: Container[]
  containers: Container[]
  volumes: Volume[]
  automountServiceAccountToken?: boolean
}
interface K8sObject {
  apiVersion: string
  kind: string
  metadata: { name: string; labels?: Record<string, string>; annotations?: Record<string, string> }
  data?: Record<string, string>
  spec?: Record<string, unknown>
}

const helm = localTool('helm')
const SIDECAR_VALUES = join(CHART_DIR, 'examples', 'sidecar-values.yaml')
const TOKEN_DIR = '/var/run/secrets/kubernetes.io/serviceaccount'

async function render(args: string[] = []): Promise<{ text: string; objects: K8sObject[] }> {
  const r = await run(helm, ['template', 'shop', CHART_DIR, '--namespace', 'shop', ...args])
  if (r.code !== 0) throw new Error(`helm template failed: ${r.stderr}`)
  const objects = parseAllDocuments(r.stdout)
    .map((d) => d.toJS() as K8sObject | null)
    .filter((o): o is K8sObject => o !== null)
  return { text: r.stdout, objects }
}

function find(objects: K8sObject[], kind: string): K8sObject {
  const o = objects.find((x) => x.kind === kind)
  if (!o) throw new Error(`no ${kind} rendered; got ${objects.map((x) => x.kind).join(', ')}`)
  return o
}

function podSpec(objects: K8sObject[]): PodSpec {
  const spec = find(objects, 'Deployment').spec as { template: { spec: PodSpec } }
  return spec.template.spec
}

function proxyContainer(pod: PodSpec): Container {
  const c = [...(pod.initContainers ?? []), ...pod.containers].find((x) => x.name === 'nhi-proxy')
  if (!c) throw new Error('no nhi-proxy container')
  return c
}

function configOf(objects: K8sObject[]): { text: string; value: Record<string, unknown> } {
  const text = find(objects, 'ConfigMap').data?.['config.yaml']
  if (text === undefined) throw new Error('ConfigMap has no config.yaml')
  return { text, value: parse(text) as Record<string, unknown> }
}

function checksum(objects: K8sObject[]): string | undefined {
  const spec = find(objects, 'Deployment').spec as {
    template: { metadata: { annotations: Record<string, string> } }
  }
  return spec.template.metadata.annotations['checksum/nhi-proxy-config']
}

/** The hardening, probes and mounts every rendering of the proxy container must have. */
function checkProxyContainer(t: Test, pod: PodSpec) {
  const c = proxyContainer(pod)
  t.match(
    c.securityContext,
    {
      runAsNonRoot: true,
      runAsUser: 65532,
      readOnlyRootFilesystem: true,
      allowPrivilegeEscalation: false,
      capabilities: { drop: ['ALL'] },
      seccompProfile: { type: 'RuntimeDefault' },
    },
    'container securityContext is hardened',
  )
  const admin = c.ports?.find((p) => p.name === 'nhi-admin')
  t.equal(admin?.containerPort, 9464, 'admin port is 9464')
  t.same(c.livenessProbe?.httpGet, { path: '/healthz', port: 'nhi-admin' }, 'liveness probes /healthz')
  t.same(c.readinessProbe?.httpGet, { path: '/readyz', port: 'nhi-admin' }, 'readiness probes /readyz')
  t.same(c.startupProbe?.httpGet, { path: '/healthz', port: 'nhi-admin' }, 'startup waits for /healthz only')
  t.same(c.args, ['run', '-c', '/etc/nhi-proxy/config.yaml'])

  const mounts = new Map((c.volumeMounts ?? []).map((m) => [m.mountPath, m]))
  const volumes = new Map(pod.volumes.map((v) => [v.name, v]))
  const tmp = mounts.get('/tmp')
  t.ok(tmp && volumes.get(tmp.name)?.emptyDir, '/tmp is an emptyDir (the only writable path)')
  const cfg = mounts.get('/etc/nhi-proxy')
  t.ok(cfg?.readOnly, 'config directory mounted read-only')
  t.ok(cfg && volumes.get(cfg.name)?.configMap, 'config comes from the ConfigMap, mounted as a directory')
  const kube = mounts.get(TOKEN_DIR)
  t.ok(kube?.readOnly, 'service-account token directory mounted read-only')
  const sources = (kube && volumes.get(kube.name)?.projected?.sources) ?? []
  t.equal(sources.find((s) => s.serviceAccountToken)?.serviceAccountToken?.path, 'token', 'projected token')
  t.same(
    sources.find((s) => s.configMap)?.configMap,
    { name: 'kube-root-ca.crt', items: [{ key: 'ca.crt', path: 'ca.crt' }] },
    'cluster CA from kube-root-ca.crt',
  )
}

/** The config must load with the real loader and point at the files the pod mounts. */
function checkConfig(t: Test, objects: K8sObject[]) {
  const { text, value } = configOf(objects)
  const loaded = parseConfigText(text, 'config.yaml')
  t.ok(loaded.ok, 'rendered config.yaml passes the nhi-proxy config loader')
  if (!loaded.ok) {
    t.comment(loaded.errors.map((e) => `${e.line}:${e.col} ${e.message}`).join('\n'))
    return
  }
  const issuer = loaded.config.jwt.issuers.find((i) => i.profile === 'kubernetes')
  t.equal(issuer?.caFile, `${TOKEN_DIR}/ca.crt`, 'kubernetes issuer CA is the mounted cluster CA')
  t.equal(issuer?.bearerTokenFile, `${TOKEN_DIR}/token`, 'kubernetes issuer token is the projected token')
  // never "any" and never the API server's audience, which every pod's own token carries
  t.ok(
    Array.isArray(issuer?.audiences) && issuer.audiences.length > 0,
    'kubernetes issuer accepts named audiences only',
  )
  t.notOk(
    Array.isArray(issuer?.audiences) && issuer.audiences.some((a) => a.startsWith('https://kubernetes.')),
    'not the API server audience',
  )
  t.equal(loaded.config.admin, '0.0.0.0:9464')
  t.equal(value['admin'], loaded.config.admin)
}

t.test('helm lint passes for both modes', async (t) => {
  const [plain, sidecar] = await Promise.all([
    run(helm, ['lint', CHART_DIR]),
    run(helm, ['lint', CHART_DIR, '-f', SIDECAR_VALUES, '--strict']),
  ])
  t.equal(plain.code, 0, plain.stdout + plain.stderr)
  t.equal(sidecar.code, 0, sidecar.stdout + sidecar.stderr)
  t.match(sidecar.stdout, /0 chart\(s\) failed/)
})

t.test('deployment mode: standalone proxy in front of an upstream Service', async (t) => {
  const { objects } = await render(['--set', 'upstream=http://orders.shop.svc:8080'])
  t.same(objects.map((o) => o.kind).sort(), [
    'ConfigMap',
    'Deployment',
    'PodDisruptionBudget',
    'Service',
    'ServiceAccount',
  ])
  const pod = podSpec(objects)
  t.equal(pod.initContainers, undefined, 'no init containers in deployment mode')
  t.equal(pod.containers.length, 1)
  t.equal(pod.automountServiceAccountToken, false, 'only the projected token is mounted')
  checkProxyContainer(t, pod)
  checkConfig(t, objects)
  t.equal(configOf(objects).value['upstream'], 'http://orders.shop.svc:8080')

  const svc = find(objects, 'Service').spec as { ports: { name: string; port: number; targetPort: number }[] }
  t.same(svc.ports, [{ name: 'http', port: 80, targetPort: 8080, protocol: 'TCP' }], 'only the proxy port')
})

t.test('sidecar mode: app with nhi-proxy as a native sidecar', async (t) => {
  const { objects } = await render(['-f', SIDECAR_VALUES])
  const pod = podSpec(objects)
  const sidecar = pod.initContainers?.[0]
  t.equal(sidecar?.name, 'nhi-proxy', 'nhi-proxy is an init container')
  t.equal(sidecar?.restartPolicy, 'Always', 'with restartPolicy Always (native sidecar)')
  t.same(
    pod.containers.map((c) => c.name),
    ['shop'],
    'the app is the only main container',
  )
  checkProxyContainer(t, pod)
  checkConfig(t, objects)

  const config = configOf(objects).value
  const app = pod.containers[0]!
  const appPort = app.ports?.[0]?.containerPort
  t.equal(config['upstream'], `http://127.0.0.1:${appPort}`, 'proxy forwards to the app on localhost')
  t.equal(config['service'], 'shop', 'metrics carry the app name as service')
  const proxyPort = sidecar?.ports?.find((p) => p.name === 'nhi-http')?.containerPort
  t.equal(
    (config['listen'] as { http: string }).http,
    `0.0.0.0:${proxyPort}`,
    'config listens on the container port',
  )
  const svc = find(objects, 'Service').spec as { ports: { name: string; port: number; targetPort: number }[] }
  const http = svc.ports.find((p) => p.name === 'http')
  t.equal(http?.targetPort, proxyPort, 'Service targetPort goes through the proxy')
  t.not(http?.targetPort, appPort, 'and not straight to the app')
  t.ok(find(objects, 'PodMonitor'), 'example enables the PodMonitor')
})

t.test('toggles render their objects', async (t) => {
  const { objects } = await render([
    '--set',
    'metrics.serviceMonitor.enabled=true,metrics.podMonitor.enabled=true,prometheusRule.enabled=true',
    '--set',
    'grafanaDashboard.enabled=true,rbac.issuerDiscovery=true',
  ])
  const sm = find(objects, 'ServiceMonitor').spec as {
    endpoints: { port: string; path: string; honorLabels?: boolean }[]
    selector: { matchLabels: Record<string, string> }
  }
  t.match(sm.endpoints, [{ port: 'metrics', path: '/metrics' }])
  // the operator gives every target of a ServiceMonitor a `service` label (the Kubernetes Service's name), and
  // every nhi_* family but the JWKS, config and TLS ones carries its own `service` (docs/reference.md
  // "Metrics"): without honorLabels Prometheus renames the proxy's to exported_service, and the alerts and
  // the dashboard, which group and filter by `service`, see `shop-nhi-proxy-metrics` instead of the service
  t.ok(
    sm.endpoints.every((e) => e.honorLabels === true),
    "the ServiceMonitor keeps the proxy's own service label",
  )
  const metricsSvc = objects.find((o) => o.kind === 'Service' && o.metadata.name === 'shop-nhi-proxy-metrics')
  t.ok(metricsSvc, 'the ServiceMonitor brings the metrics Service')
  t.match(metricsSvc?.metadata.labels, sm.selector.matchLabels, 'and selects it')
  const appSvc = objects.find((o) => o.kind === 'Service' && o.metadata.name === 'shop-nhi-proxy')
  t.notMatch(appSvc?.metadata.labels, sm.selector.matchLabels, 'not the app Service')
  t.same(
    ((metricsSvc?.spec ?? { ports: [] }) as { ports: { name: string; targetPort: number }[] }).ports.map(
      (p) => [p.name, p.targetPort],
    ),
    [['metrics', 9464]],
    'the metrics Service has the admin port only',
  )
  const pm = find(objects, 'PodMonitor').spec as { podMetricsEndpoints: { port: string; path: string }[] }
  t.match(pm.podMetricsEndpoints, [{ port: 'nhi-admin', path: '/metrics' }])

  const rule = find(objects, 'PrometheusRule')
  const source = parse(readFileSync(join(CHART_DIR, 'alerts', 'nhi-proxy.rules.yaml'), 'utf8'))
  t.same(rule.spec, source, 'PrometheusRule embeds alerts/nhi-proxy.rules.yaml unchanged')

  const crb = find(objects, 'ClusterRoleBinding') as K8sObject & { roleRef: { name: string } }
  t.equal(crb.roleRef.name, 'system:service-account-issuer-discovery')

  const dashboards = objects.filter(
    (o) => o.kind === 'ConfigMap' && o.metadata.labels?.['grafana_dashboard'] === '1',
  )
  t.equal(dashboards.length, 1, 'one dashboard ConfigMap labelled for the Grafana sidecar')
  const json = JSON.parse(dashboards[0]?.data?.['nhi-proxy.json'] ?? 'null') as {
    panels: { title: string; targets: { expr: string }[] }[]
  }
  const titles = json.panels.map((p) => p.title.toLowerCase())
  for (const want of [
    'kind',
    'top identities',
    'auth failures',
    'expiry',
    'jobs',
    'overflow',
    'upstream errors',
    'p95',
  ]) {
    t.ok(
      titles.some((x) => x.includes(want)),
      `dashboard has a "${want}" panel`,
    )
  }
  const used = json.panels.flatMap((p) => p.targets.flatMap((q) => metricNamesIn(q.expr)))
  t.same(
    used.filter((m) => !SPEC_METRICS.has(m)),
    [],
    'dashboard queries only metrics named in the spec',
  )
})

t.test('offline kubectl dry run accepts every rendering', async (t) => {
  const kubectl = localTool('kubectl')
  const offline = offlineKubectl()
  t.teardown(() => rm(offline.dir, { recursive: true, force: true }))
  const all =
    '--set=metrics.serviceMonitor.enabled=true,metrics.podMonitor.enabled=true,prometheusRule.enabled=true,grafanaDashboard.enabled=true,rbac.issuerDiscovery=true'
  const combinations = VALUE_COMBINATIONS.flatMap((c) => [c, [...c, all]])
  const [dryRuns, bad] = await Promise.all([
    Promise.all(
      combinations.map(async (args) => {
        const { text, objects } = await render(args)
        const r = await run(
          kubectl,
          ['create', '--dry-run=client', '--validate=false', '-o', 'name', '-f', '-', ...offline.args],
          { input: text, env: offline.env, timeoutMs: 30_000 },
        )
        return { objects, r }
      }),
    ),
    run(kubectl, ['create', '--dry-run=client', '--validate=false', '-f', '-', ...offline.args], {
      input: 'apiVersion: apps/v1beta9\nkind: Deployment\nmetadata: { name: nope }\n',
      env: offline.env,
      timeoutMs: 30_000,
    }),
  ])
  combinations.forEach((args, i) => {
    const { objects, r } = dryRuns[i]!
    t.equal(r.code, 0, `kubectl accepts helm template ${args.join(' ')}: ${r.stderr}`)
    t.equal(r.stdout.trim().split('\n').length, objects.length, 'every object recognised')
  })
  t.not(bad.code, 0, 'and rejects a kind it does not know')
})

/** every values combination the chart ships or documents; each is linted, rendered and dry-run */
const VALUE_COMBINATIONS: string[][] = [
  [],
  ['-f', SIDECAR_VALUES],
  ['--set', 'networkPolicy.enabled=true,metrics.service.enabled=true'],
  ['--set', 'adminToken.existingSecret=shop-admin-token,preStopSleepSeconds=5'],
  [
    '--set-json',
    'extraEnv=[{"name":"OTEL_EXPORTER_OTLP_HEADERS","valueFrom":{"secretKeyRef":{"name":"otel","key":"headers"}}}]',
  ],
  ['--set', 'replicaCount=1,podDisruptionBudget.enabled=false'],
  ['-f', SIDECAR_VALUES, '--set', 'adminToken.existingSecret=shop-admin-token,app.preStopSleepSeconds=0'],
  [
    '-f',
    SIDECAR_VALUES,
    '--set',
    'networkPolicy.proxyFrom[0].namespaceSelector.matchLabels.team=shop,metrics.service.enabled=true',
  ],
]

interface ServicePort {
  name: string
  port: number
  targetPort: number
}

t.test('every values combination: lint passes, the app Service never carries the admin port', async (t) => {
  const results = await Promise.all(
    VALUE_COMBINATIONS.map((args) =>
      Promise.all([run(helm, ['lint', CHART_DIR, '--strict', ...args]), render(args)]),
    ),
  )
  for (const [i, args] of VALUE_COMBINATIONS.entries()) {
    const [lint, { objects }] = results[i]!
    t.equal(lint.code, 0, `helm lint ${args.join(' ')}: ${lint.stdout}${lint.stderr}`)
    const appSvc = objects.find((o) => o.kind === 'Service' && o.metadata.name === 'shop-nhi-proxy')
    const ports = ((appSvc?.spec ?? { ports: [] }) as { ports: ServicePort[] }).ports
    t.ok(ports.length > 0, 'the app Service exists')
    t.notOk(
      ports.some((p) => p.targetPort === 9464 || p.port === 9464 || p.name === 'metrics'),
      `app Service has no admin port (${args.join(' ')})`,
    )
    for (const svc of objects.filter((o) => o.kind === 'Service' && o !== appSvc)) {
      t.same(
        (svc.spec as { ports: ServicePort[] }).ports.map((p) => p.targetPort),
        [9464],
        'any other Service is the metrics Service, with the admin port only',
      )
    }
    checkConfig(t, objects)
  }
})

t.test('every Service name is a DNS label, whatever the release is called', async (t) => {
  // helm allows release names of up to 53 characters; the API server refuses a Service name over 63
  const release = 'payments-ledger-reconciliation-service-production-eu'
  const r = await run(helm, ['template', release, CHART_DIR, '--set', 'metrics.serviceMonitor.enabled=true'])
  t.equal(r.code, 0, r.stderr)
  const objects = parseAllDocuments(r.stdout)
    .map((d) => d.toJS() as K8sObject | null)
    .filter((o): o is K8sObject => o !== null)
  const names = objects.filter((o) => o.kind === 'Service').map((o) => o.metadata.name)
  t.equal(names.length, 2, 'the app and the metrics Service')
  for (const name of names) t.match(name, /^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$/, `${name} (${name.length})`)
  t.equal(new Set(names).size, 2, 'and they are two names')
})

t.test('NetworkPolicy: only the proxy port, and the admin port from the scrapers', async (t) => {
  t.notOk(
    (await render()).objects.some((o) => o.kind === 'NetworkPolicy'),
    'off by default',
  )
  const { objects } = await render(['-f', SIDECAR_VALUES])
  const np = find(objects, 'NetworkPolicy').spec as {
    podSelector: { matchLabels: Record<string, string> }
    policyTypes: string[]
    ingress: { ports: { port: number; protocol: string }[]; from?: Record<string, unknown>[] }[]
  }
  const pod = find(objects, 'Deployment').spec as {
    template: { metadata: { labels: Record<string, string> } }
  }
  t.match(pod.template.metadata.labels, np.podSelector.matchLabels, 'selects the pods')
  t.same(np.policyTypes, ['Ingress'])
  t.same(np.ingress, [
    { ports: [{ port: 8080, protocol: 'TCP' }] },
    {
      ports: [{ port: 9464, protocol: 'TCP' }],
      from: [{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'monitoring' } } }],
    },
  ])
  const admitted = np.ingress.flatMap((r) => r.ports.map((p) => p.port))
  t.notOk(admitted.includes(3000), "the app's own port is not admitted")

  const custom = await render([
    '--set',
    'networkPolicy.enabled=true,networkPolicy.proxyFrom[0].podSelector.matchLabels.role=frontend',
    '--set',
    'networkPolicy.metrics.from[0].namespaceSelector.matchLabels.team=observability',
  ])
  const spec = find(custom.objects, 'NetworkPolicy').spec as typeof np
  t.same(spec.ingress[0]?.from, [{ podSelector: { matchLabels: { role: 'frontend' } } }], 'proxyFrom')
  t.same(
    spec.ingress[1]?.from,
    [{ namespaceSelector: { matchLabels: { team: 'observability' } } }],
    'configurable scraper namespace',
  )
})

t.test('termination: grace period, preStop, PodDisruptionBudget', async (t) => {
  const sidecar = podSpec((await render(['-f', SIDECAR_VALUES])).objects) as PodSpec & {
    terminationGracePeriodSeconds: number
  }
  t.equal(sidecar.terminationGracePeriodSeconds, 30, 'covers drainDelay 5s + drain 15s')
  const app = sidecar.containers[0] as Container & { lifecycle?: unknown; args: string[] }
  t.same(
    app.lifecycle,
    { preStop: { sleep: { seconds: 5 } } },
    'the app keeps serving while endpoints update',
  )
  t.ok(
    app.args.some((a) => a.includes('127.0.0.1:3000')),
    'the example app binds 127.0.0.1 only',
  )
  const proxy = proxyContainer(sidecar) as Container & { lifecycle?: unknown }
  t.equal(proxy.lifecycle, undefined, 'the proxy needs no preStop: its drain delay keeps it accepting')
  const withSleep = proxyContainer(podSpec((await render(['--set', 'preStopSleepSeconds=3'])).objects))
  t.same((withSleep as { lifecycle?: unknown }).lifecycle, { preStop: { sleep: { seconds: 3 } } })

  // the chart's oldest Kubernetes, 1.29, has the sleep action behind an alpha gate: the API server drops the
  // field and then refuses the pod for a preStop hook without a handler, so the chart renders none there
  const old = podSpec(
    (await render(['-f', SIDECAR_VALUES, '--set', 'preStopSleepSeconds=3', '--kube-version', '1.29.0']))
      .objects,
  )
  t.equal((old.containers[0] as { lifecycle?: unknown }).lifecycle, undefined, '1.29: no preStop for the app')
  t.equal((proxyContainer(old) as { lifecycle?: unknown }).lifecycle, undefined, 'nor for the proxy')
  const current = podSpec((await render(['-f', SIDECAR_VALUES, '--kube-version', '1.30.0'])).objects)
  t.same((current.containers[0] as { lifecycle?: unknown }).lifecycle, { preStop: { sleep: { seconds: 5 } } })
  const lint = await run(helm, ['lint', CHART_DIR, '-f', SIDECAR_VALUES, '--kube-version', '1.29.0'])
  t.equal(lint.code, 0, `the chart lints on 1.29, NOTES included: ${lint.stdout}`)

  const pdb = find((await render()).objects, 'PodDisruptionBudget').spec as {
    minAvailable: number
    selector: { matchLabels: Record<string, string> }
  }
  t.equal(pdb.minAvailable, 1)
  t.same(pdb.selector.matchLabels, {
    'app.kubernetes.io/name': 'nhi-proxy',
    'app.kubernetes.io/instance': 'shop',
  })
  t.notOk(
    (await render(['--set', 'replicaCount=1'])).objects.some((o) => o.kind === 'PodDisruptionBudget'),
    'no PDB for a single replica (it would block node drains)',
  )
  t.notOk(
    (await render(['-f', SIDECAR_VALUES])).objects.some((o) => o.kind === 'PodDisruptionBudget'),
    'none in sidecar mode (the app owns its pods)',
  )
})

t.test('admin token from an existing Secret', async (t) => {
  const { objects } = await render(['--set', 'adminToken.existingSecret=shop-admin-token'])
  checkConfig(t, objects)
  const { value } = configOf(objects)
  t.same(value['adminAccess'], { tokenFile: '/etc/nhi-proxy-admin/token' })
  const pod = podSpec(objects)
  const mount = proxyContainer(pod).volumeMounts?.find((m) => m.mountPath === '/etc/nhi-proxy-admin')
  t.ok(mount?.readOnly, 'mounted read-only')
  const volume = pod.volumes.find((v) => v.name === mount?.name) as Volume & {
    secret?: { secretName: string }
  }
  t.equal(volume?.secret?.secretName, 'shop-admin-token')
  t.notOk(configOf((await render()).objects).value['adminAccess'], 'no token by default: loopback only')
})

t.test('config checksum rolls pods only for settings hot reload cannot apply', async (t) => {
  // every rendering started at once (the gate keeps four running): each is compared with the base below
  const sum = (args: string[] = []) => render(args).then((r) => checksum(r.objects))
  const rulesChanged = ['--set', 'config.policy.mode=enforce']
  // every setting docs/reference.md says takes effect at the next start: a ConfigMap change the running
  // process cannot apply must roll the pods, or they keep the old value until something else restarts them
  const startOnlySettings = [
    ['--set', 'config.workers=4'],
    ['--set', 'config.upstreamTls.ca=/etc/upstream-ca/ca.crt'],
    ['--set', 'config.timeouts.upstream=10s'],
    ['--set', 'config.limits.maxConnections=500'],
    ['--set', 'config.audit.output=/tmp/audit.jsonl'],
    ['--set-json', 'config.metrics.buckets=[0.01,0.1,1]'],
  ]
  const [base, rules, listener, upstream, startOnly, reloadable, anyRules, anyBase] = await Promise.all([
    sum(),
    sum(rulesChanged),
    sum(['--set', 'ports.http=9090']),
    sum(['--set', 'upstream=http://other:80']),
    Promise.all(startOnlySettings.map((args) => sum(args))),
    sum(['--set', 'config.audit.sample=0.5,config.metrics.maxIdentities=50']),
    sum([...rulesChanged, '--set', 'rollOnAnyConfigChange=true']),
    sum(['--set', 'rollOnAnyConfigChange=true']),
  ])
  t.equal(rules, base, 'policy change is hot-reloaded, no roll')
  t.not(listener, base, 'listener change rolls')
  t.not(upstream, base, 'upstream change rolls')
  for (const [i, args] of startOnlySettings.entries()) {
    t.not(startOnly[i], base, `${args[1]} rolls`)
  }
  t.equal(reloadable, base, 'the audit and metrics keys a reload applies do not roll')
  t.not(anyRules, anyBase, 'rollOnAnyConfigChange rolls on any change')
})

t.test('the default kubernetes issuer accepts tokens minted for this service only', async (t) => {
  const { objects } = await render(['--set', 'upstream=http://orders.shop.svc:8080,serviceName=orders'])
  const { text } = configOf(objects)
  const loaded = parseConfigText(text, 'config.yaml')
  t.ok(loaded.ok, 'rendered config loads')
  if (!loaded.ok) return
  t.same(loaded.config.jwt.issuers[0]?.audiences, ['orders'], 'audiences default to [serviceName]')
  const explicit = await render([
    '--set',
    'upstream=http://x:1',
    '--set-json',
    'config.jwt.issuers=[{"issuer":"https://idp","jwksUri":"https://idp/jwks","audiences":"any"}]',
  ])
  const kept = parseConfigText(configOf(explicit.objects).text, 'config.yaml')
  t.ok(kept.ok && kept.config.jwt.issuers[0]?.audiences === 'any', 'an explicit choice is kept')
})

t.test('token audience is configurable', async (t) => {
  const { objects } = await render(['--set', 'kubeApiAccess.audience=https://kubernetes.default.svc'])
  const projected = podSpec(objects).volumes.find((v) => v.projected)?.projected
  t.equal(
    projected?.sources.find((s) => s.serviceAccountToken)?.serviceAccountToken?.audience,
    'https://kubernetes.default.svc',
  )
  const none = podSpec((await render()).objects).volumes.find((v) => v.projected)?.projected
  t.notOk(
    none?.sources.find((s) => s.serviceAccountToken)?.serviceAccountToken?.audience,
    'default: API audience',
  )
})

t.test('values schema rejects bad values', async (t) => {
  const [badMode, adminInConfig, rootUser, ftp] = await Promise.all(
    [
      'mode=daemonset',
      'config.admin=0.0.0.0:1',
      'securityContext.runAsNonRoot=false',
      'upstream=ftp://app:21',
    ].map((value) => run(helm, ['template', 'x', CHART_DIR, '--set', value])),
  )
  t.not(badMode!.code, 0)
  t.match(badMode!.stderr, /mode/)
  t.not(adminInConfig!.code, 0, 'admin comes from ports.admin, not config')
  t.not(rootUser!.code, 0, 'runAsNonRoot cannot be switched off')
  t.not(ftp!.code, 0, 'an upstream scheme the proxy does not speak')
})

t.test('deployment mode fronts a gRPC Service over h2c:// or h2://, as values.yaml advises', async (t) => {
  const upstreams = ['h2c://app:50051', 'h2://app.shop.svc:443', 'https://app:8443']
  const rendered = await Promise.all(upstreams.map((upstream) => render(['--set', `upstream=${upstream}`])))
  for (const [i, upstream] of upstreams.entries()) {
    const { objects } = rendered[i]!
    checkConfig(t, objects)
    t.equal(configOf(objects).value['upstream'], upstream, upstream)
  }
})

t.test('another chart can inject the sidecar with the named templates', async (t) => {
  const dir = scratchDirSync('parent-chart')
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  await mkdir(join(dir, 'charts'), { recursive: true })
  await mkdir(join(dir, 'templates'), { recursive: true })
  await cp(CHART_DIR, join(dir, 'charts', 'nhi-proxy'), { recursive: true })
  writeFileSync(
    join(dir, 'Chart.yaml'),
    'apiVersion: v2\nname: shop\nversion: 1.0.0\ndependencies:\n  - name: nhi-proxy\n    version: 0.1.0\n',
  )
  writeFileSync(join(dir, 'values.yaml'), 'nhi-proxy:\n  mode: sidecar\n  app: { port: 5000 }\n')
  writeFileSync(
    join(dir, 'templates', 'pod.yaml'),
    [
      'apiVersion: v1',
      'kind: Pod',
      'metadata: { name: shop }',
      'spec:',
      '  initContainers:',
      '    {{- include "nhi-proxy.sidecar" (index .Subcharts "nhi-proxy") | nindent 4 }}',
      '  containers:',
      '    - { name: shop, image: "shop:1", ports: [{ containerPort: 5000 }] }',
      '  volumes:',
      '    {{- include "nhi-proxy.sidecarVolumes" (index .Subcharts "nhi-proxy") | nindent 4 }}',
      '',
    ].join('\n'),
  )
  const r = await run(helm, ['template', 'shop', dir, '--show-only', 'templates/pod.yaml'])
  t.equal(r.code, 0, r.stderr)
  const pod = parse(r.stdout) as { spec: PodSpec }
  t.equal(pod.spec.initContainers?.[0]?.restartPolicy, 'Always')
  checkProxyContainer(t, pod.spec)
  const cm = await run(helm, [
    'template',
    'shop',
    dir,
    '--show-only',
    'charts/nhi-proxy/templates/configmap.yaml',
  ])
  t.match(cm.stdout, /upstream: http:\/\/127\.0\.0\.1:5000/, 'the subchart ConfigMap points at the app port')
})

t.test('mTLS listener: port, Service port and the TLS secret mount follow config.listen.https', async (t) => {
  const dir = scratchDirSync('tls-values')
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const values = join(dir, 'values.yaml')
  writeFileSync(
    values,
    [
      'config:',
      '  listen:',
      '    https: { cert: /etc/nhi-tls/tls.crt, key: /etc/nhi-tls/tls.key, clientCA: /etc/nhi-tls/ca.crt }',
      'extraVolumes:',
      '  - { name: nhi-tls, secret: { secretName: checkout-nhi-tls } }',
      'extraVolumeMounts:',
      '  - { name: nhi-tls, mountPath: /etc/nhi-tls, readOnly: true }',
      '',
    ].join('\n'),
  )
  const { objects } = await render(['-f', values])
  checkConfig(t, objects)
  const https = (configOf(objects).value['listen'] as { https: { address: string } }).https
  t.equal(https.address, '0.0.0.0:8443', 'the chart fills in the listener address')
  const pod = podSpec(objects)
  const proxy = proxyContainer(pod)
  t.equal(proxy.ports?.find((p) => p.name === 'nhi-https')?.containerPort, 8443)
  t.ok(
    proxy.volumeMounts?.some((m) => m.mountPath === '/etc/nhi-tls' && m.readOnly),
    'TLS secret mounted',
  )
  t.ok(
    pod.volumes.some((v) => v.name === 'nhi-tls'),
    'TLS secret volume added',
  )
  const svc = find(objects, 'Service').spec as { ports: { name: string; port: number; targetPort: number }[] }
  t.match(
    svc.ports.find((p) => p.name === 'https'),
    { port: 443, targetPort: 8443 },
  )

  // a gateway or mesh picks the backend protocol from appProtocol: the cleartext h2c of a gRPC app's plain
  // port, spoken to the TLS listener, would fail every connection to it
  const h2c = find(
    (await render(['-f', values, '--set', 'service.appProtocol=kubernetes.io/h2c'])).objects,
    'Service',
  ).spec as { ports: { name: string; appProtocol?: string }[] }
  t.equal(h2c.ports.find((p) => p.name === 'http')?.appProtocol, 'kubernetes.io/h2c')
  t.equal(h2c.ports.find((p) => p.name === 'https')?.appProtocol, undefined, 'the TLS port is not called h2c')
  const tlsProtocol = find(
    (await render(['-f', values, '--set', 'service.httpsAppProtocol=https'])).objects,
    'Service',
  ).spec as { ports: { name: string; appProtocol?: string }[] }
  t.equal(tlsProtocol.ports.find((p) => p.name === 'https')?.appProtocol, 'https', 'its own appProtocol')

  const plain = podSpec((await render()).objects)
  t.notOk(
    proxyContainer(plain).ports?.some((p) => p.name === 'nhi-https'),
    'no mTLS port unless configured',
  )
})

t.test('bindAddress: the listeners bind IPv6 when asked, IPv4 by default', async (t) => {
  const listenOf = (cfg: Record<string, unknown>) => ({
    http: (cfg['listen'] as { http?: string }).http,
    admin: cfg['admin'],
  })
  t.same(listenOf(configOf((await render()).objects).value), { http: '0.0.0.0:8080', admin: '0.0.0.0:9464' })
  const v6 = configOf((await render(['--set', 'bindAddress=::'])).objects)
  t.same(listenOf(v6.value), { http: '[::]:8080', admin: '[::]:9464' })
  t.ok(parseConfigText(v6.text, 'config.yaml').ok, 'the IPv6 config passes the nhi-proxy config loader')
  const bad = await run(helm, ['template', 'x', CHART_DIR, '--set', 'bindAddress=10.0.0.1'])
  t.not(bad.code, 0, 'another address is refused by the values schema')
})

// NOTES.txt is shown by `helm install`, which needs a cluster: here it is rendered as a template of a copy of
// the chart, through the same helm, to check what it tells an operator whose values leave something out.
t.test('install notes: what the chart leaves out is said', async (t) => {
  const dir = scratchDirSync('chart-notes')
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const chart = join(dir, 'nhi-proxy')
  await cp(CHART_DIR, chart, { recursive: true })
  const notes = readFileSync(join(CHART_DIR, 'templates', 'NOTES.txt'), 'utf8')
  writeFileSync(
    join(chart, 'templates', 'notes-as-data.yaml'),
    `{{- define "test.notes" -}}\n${notes}\n{{- end }}\nnotes: {{ include "test.notes" . | toJson }}\n`,
  )
  const notesFor = async (args: string[]) => {
    const r = await run(helm, [
      'template',
      'shop',
      chart,
      '--show-only',
      'templates/notes-as-data.yaml',
      ...args,
    ])
    if (r.code !== 0) throw new Error(`helm template failed: ${r.stderr}`)
    return (parse(r.stdout) as { notes: string }).notes
  }
  const [plain, old, noToken] = await Promise.all([
    notesFor(['-f', SIDECAR_VALUES, '--kube-version', '1.30.0']),
    notesFor(['-f', SIDECAR_VALUES, '--kube-version', '1.29.0']),
    notesFor(['--set', 'kubeApiAccess.enabled=false']),
  ])
  t.match(plain, /runs shop with nhi-proxy as a native/, 'the sidecar install explained')
  t.notMatch(plain, /not applied|does not mount/, 'nothing left out on 1.30 with the defaults')
  t.match(
    old,
    /preStopSleepSeconds is not applied on Kubernetes v1\.29\.0: the preStop sleep action needs 1\.30/,
  )
  t.match(
    noToken,
    /reads \/var\/run\/secrets\/kubernetes\.io\/serviceaccount\/token, which kubeApiAccess\.enabled=false does not mount/,
  )
})

// The standard OTEL_* variables are the only way to give the OTLP exporter a collector token that is not
// written into the ConfigMap (otlp.headers is config): the chart must be able to take them from a Secret.
t.test('extraEnv: environment for the proxy container, from a Secret without a ConfigMap copy', async (t) => {
  const env = [
    {
      name: 'OTEL_EXPORTER_OTLP_HEADERS',
      valueFrom: { secretKeyRef: { name: 'otel-collector-auth', key: 'headers' } },
    },
    { name: 'OTEL_EXPORTER_OTLP_ENDPOINT', value: 'http://otel-collector.observability:4318' },
  ]
  for (const args of [[], ['-f', SIDECAR_VALUES]]) {
    const { text, objects } = await render([...args, '--set-json', `extraEnv=${JSON.stringify(env)}`])
    const pod = podSpec(objects)
    const proxy = proxyContainer(pod) as Container & { env?: unknown }
    t.same(proxy.env, env, `the proxy container gets extraEnv ${args.join(' ')}`)
    for (const c of pod.containers.filter((x) => x.name !== 'nhi-proxy')) {
      t.notOk((c as { env?: unknown }).env, 'not the app')
    }
    t.notMatch(configOf(objects).text, /otel-collector-auth|OTEL_/, 'nothing of it in the ConfigMap')
    t.equal(text.match(/otel-collector-auth/g)?.length, 1, 'the Secret is only referenced, once')
  }
  t.notOk(Object.hasOwn(proxyContainer(podSpec((await render()).objects)), 'env'), 'none by default')
  const bad = await run(helm, ['template', 'x', CHART_DIR, '--set-json', 'extraEnv=[{"value":"x"}]'])
  t.not(bad.code, 0, 'an entry without a name is refused by the values schema')
})

t.test('the grace period must cover the drain the config asks for', async (t) => {
  const tmpl = (args: string[]) => run(helm, ['template', 'shop', CHART_DIR, ...args])
  const [longDrain, covered, numeric, sidecarTight, defaults, sidecarDefaults, zero] = await Promise.all([
    tmpl(['--set', 'config.timeouts.drain=1m']),
    tmpl(['--set', 'config.timeouts.drain=1m,terminationGracePeriodSeconds=70']),
    tmpl(['--set', 'config.timeouts.drainDelay=20,terminationGracePeriodSeconds=30']),
    tmpl(['-f', SIDECAR_VALUES, '--set', 'config.timeouts.drainDelay=12s,terminationGracePeriodSeconds=30']),
    tmpl([]),
    tmpl(['-f', SIDECAR_VALUES]),
    // 0 is a duration the proxy takes (no drain delay, no drain), not "unset": the defaults are not added
    tmpl(['--set', 'config.timeouts.drainDelay=0,config.timeouts.drain=0,terminationGracePeriodSeconds=5']),
  ])
  // the kubelet kills what is still running when the grace period ends: in-flight requests cut, audit not flushed
  t.not(longDrain.code, 0, 'drain 1m under the default 30s grace period is refused')
  t.match(longDrain.stderr, /terminationGracePeriodSeconds \(30\).*65/, 'naming the period and what it needs')
  t.equal(covered.code, 0, covered.stderr)
  t.not(numeric.code, 0, 'a bare number is seconds: 20 + 15 > 30')
  t.not(sidecarTight.code, 0, "sidecar mode: the app's preStop sleep (5s) comes before the proxy's drain")
  t.equal(defaults.code, 0, defaults.stderr)
  t.equal(sidecarDefaults.code, 0, sidecarDefaults.stderr)
  t.equal(zero.code, 0, `a drain of 0 needs no grace period: ${zero.stderr}`)
})
