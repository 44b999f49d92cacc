// Starts nhi-proxy the way an operator does — `nhi-proxy run -c FILE` in its own process — with a bench
// config: a Kubernetes-profile JWT issuer (JWKS from a file), an optional mTLS listener and trusted XFCC peers.
import { execFileSync } from 'node:child_process'
import { existsSync, readdirSync, statSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { freePort, type ServerProcess, spawnProcess, TS_NODE_FLAGS, waitForPorts } from './procs.ts'
import { BENCH_AUDIENCE, BENCH_ISSUER } from './tokens.ts'

export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url))
const SRC_MAIN = join(REPO_ROOT, 'src/cli/main.ts')
const DIST_MAIN = join(REPO_ROOT, 'dist/nhi-proxy.mjs')
const LAG_PROBE = join(REPO_ROOT, 'bench/lag-probe.ts')
const ORPHAN_GUARD = join(REPO_ROOT, 'bench/orphan-guard.mjs')

export interface NhiConfigOptions {
  port: number
  adminPort: number
  upstream: string
  jwksFile: string
  https?: { port: number; cert: string; key: string; ca: string }
  trustedProxies?: string[]
  maxIdentities?: number
  /** audit trail destination; the bench default /dev/null keeps the serialisation cost without disk I/O */
  audit?: string
  policy?: 'off' | 'observe'
  /** jwt.verifyWorkers (unset: the default) */
  verifyWorkers?: number
  /** OTLP/HTTP collector base URL: export on, traces and audit log records (unset: export off) */
  otlpEndpoint?: string
  /** `workers` (unset: the default, one process) */
  workers?: number
}

export function nhiConfigYaml(o: NhiConfigOptions): string {
  const https = o.https
    ? `  https:
    address: 127.0.0.1:${o.https.port}
    cert: ${o.https.cert}
    key: ${o.https.key}
    clientCA: ${o.https.ca}
    clientCert: optional
`
    : ''
  return `service: bench
listen:
  http: 127.0.0.1:${o.port}
${https}upstream: ${o.upstream}
admin: 127.0.0.1:${o.adminPort}
forwardedClientCert:
  trustedProxies: [${(o.trustedProxies ?? []).join(', ')}]
  format: xfcc
jwt:
  issuers:
    - issuer: ${BENCH_ISSUER}
      profile: kubernetes
      jwksFile: ${o.jwksFile}
      audiences: [${BENCH_AUDIENCE}]
      algorithms: [RS256, ES256]
${o.verifyWorkers === undefined ? '' : `  verifyWorkers: ${o.verifyWorkers}\n`}identities:
  - rule: mesh-workloads
    name: "{ns}/{sa}"
    kind: service
    team: "{ns}"
    match: { spiffe: "spiffe://bench.local/ns/{ns}/sa/{sa}" }
metrics:
  maxIdentities: ${o.maxIdentities ?? 1000}
  routes: [/api/v1/orders/:id, /healthz]
audit:
  output: ${o.audit ?? '/dev/null'}
# no bench measures the drain: a stop exits at once instead of waiting out the 5 s drain delay
timeouts:
  drainDelay: 0s
policy:
  mode: ${o.policy ?? 'observe'}
  rules:
    - route: /admin/**
      allow: [{ kind: human }]
${o.otlpEndpoint === undefined ? '' : `otlp:\n  endpoint: ${o.otlpEndpoint}\n  logs: true\n`}${o.workers === undefined ? '' : `workers: ${o.workers}\n`}`
}

export interface NhiLaunch {
  /** use the bundled dist/nhi-proxy.mjs (npm run build) instead of running the TypeScript sources */
  dist?: boolean
  /** exit when the harness is gone (default); the cold start leaves it out to time nhi-proxy alone */
  orphanGuard?: boolean
  /** inject bench/lag-probe.ts, writing event-loop delay samples to this file */
  lagFile?: string
  /** run this nhi-proxy bundle (an earlier build) instead of dist/nhi-proxy.mjs */
  entry?: string
  /** added to the process's environment */
  env?: Record<string, string>
}

export function nhiCommand(configFile: string, launch: NhiLaunch = {}): { command: string; args: string[] } {
  const args: string[] = []
  // The bundle runs as the image runs it; the TypeScript sources (and the lag probe) need their types stripped.
  if (!launch.dist || launch.lagFile) args.push(...TS_NODE_FLAGS)
  if (launch.orphanGuard !== false) args.push('--import', ORPHAN_GUARD)
  if (launch.lagFile) args.push('--import', LAG_PROBE)
  args.push(launch.entry ?? (launch.dist ? DIST_MAIN : SRC_MAIN), 'run', '-c', configFile)
  return { command: process.execPath, args }
}

/**
 * true when dist/nhi-proxy.mjs exists and is newer than everything under src/ and scripts/: quick runs then
 * measure the bundle users run without rebuilding it (a rebuild under a running test suite would swap files
 * other tests are starting)
 */
export function freshDist(): boolean {
  if (!existsSync(DIST_MAIN)) return false
  const built = statSync(DIST_MAIN).mtimeMs
  return newestMtime(join(REPO_ROOT, 'src')) <= built && newestMtime(join(REPO_ROOT, 'scripts')) <= built
}

function newestMtime(dir: string): number {
  let newest = 0
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    newest = Math.max(newest, entry.isDirectory() ? newestMtime(path) : statSync(path).mtimeMs)
  }
  return newest
}

/** `npm run build`; true when the bundle exists afterwards */
export function buildDist(): boolean {
  try {
    execFileSync('npm', ['run', 'build'], { cwd: REPO_ROOT, stdio: 'ignore', timeout: 180_000 })
  } catch {
    return false
  }
  return existsSync(DIST_MAIN)
}

export async function startNhi(
  name: string,
  dir: string,
  cfg: NhiConfigOptions,
  launch: NhiLaunch = {},
): Promise<ServerProcess> {
  const file = join(dir, `${name}.yaml`)
  await writeFile(file, nhiConfigYaml(cfg))
  const { command, args } = nhiCommand(file, launch)
  const env: Record<string, string> = { NHI_LOG_LEVEL: 'warn', ...launch.env }
  if (launch.lagFile) env['NHI_LAG_FILE'] = launch.lagFile
  const proc = spawnProcess(name, command, args, { env })
  try {
    await waitForPorts(proc, [cfg.port, cfg.adminPort, ...(cfg.https ? [cfg.https.port] : [])], 30_000)
  } catch (err) {
    await proc.stop()
    throw err
  }
  return proc
}

/** The bench's plain-HTTP upstream (bench/upstream.ts) as a child process; resolves with its URL once it listens. */
export async function startPlainUpstream(procs: ServerProcess[]): Promise<string> {
  const { url, listening } = await spawnPlainUpstream(procs)
  await listening
  return url
}

/**
 * The same, returning as soon as the process is spawned: its URL, and `listening`, which settles once it
 * accepts connections (whatever starts meanwhile, a proxy in front of it, overlaps its start-up).
 */
export async function spawnPlainUpstream(
  procs: ServerProcess[],
): Promise<{ url: string; listening: Promise<void> }> {
  const port = await freePort()
  const upstream = spawnProcess('upstream', process.execPath, [
    ...TS_NODE_FLAGS,
    join(REPO_ROOT, 'bench/upstream.ts'),
    JSON.stringify({ http: port }),
  ])
  procs.push(upstream)
  const listening = waitForPorts(upstream, [port])
  // awaited by the caller; never an unhandled rejection if the caller fails first
  listening.catch(() => {})
  return { url: `http://127.0.0.1:${port}`, listening }
}

/** The bare proxy (the forwarding engine alone) in front of `upstream`; returns its process and URL. */
export async function startBareUndici(
  procs: ServerProcess[],
  upstream: string,
): Promise<{ proc: ServerProcess; url: string }> {
  const port = await freePort()
  const proc = spawnProcess('bare-undici', process.execPath, [
    ...TS_NODE_FLAGS,
    join(REPO_ROOT, 'bench/bare-proxy.ts'),
    JSON.stringify({ port, upstream }),
  ])
  procs.push(proc)
  await waitForPorts(proc, [port])
  return { proc, url: `http://127.0.0.1:${port}` }
}

/**
 * One nhi-proxy in front of the plain upstream, on fresh ports, with `publicJwks` as its key set and XFCC
 * trusted from loopback: the setup the memory bench and the soak share. Both processes join `procs`.
 */
export async function startNhiWithUpstream(
  name: string,
  dir: string,
  procs: ServerProcess[],
  publicJwks: readonly unknown[],
  cfg: Pick<NhiConfigOptions, 'maxIdentities' | 'verifyWorkers'> = {},
  launch: NhiLaunch = {},
): Promise<{ nhi: ServerProcess; port: number; adminPort: number }> {
  const jwksFile = join(dir, 'jwks.json')
  await writeFile(jwksFile, JSON.stringify({ keys: publicJwks }))
  const { url: upstream, listening } = await spawnPlainUpstream(procs)
  const port = await freePort()
  const adminPort = await freePort()
  const nhi = await startNhi(
    name,
    dir,
    { ...cfg, port, adminPort, upstream, jwksFile, trustedProxies: ['127.0.0.1/32'] },
    launch,
  )
  procs.push(nhi)
  await listening
  return { nhi, port, adminPort }
}
