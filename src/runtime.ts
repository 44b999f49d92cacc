// Assembles a running sidecar from a config: proxy listeners, the attribution pipeline,
// telemetry recorders and the admin server. Applies each reloaded config (noticing a change and running
// reloads one at a time is src/config/watch.ts) and owns graceful drain.
import { readFile } from 'node:fs/promises'
import type { AddressInfo } from 'node:net'
import { resolve } from 'node:path'
import type { ConnectionOptions } from 'node:tls'
import type { Logger } from 'pino'
import { type AdminServer, createAdminServer, type ReadyState } from './admin/server.ts'
import { stopSignalsDispatched } from './cli/stop-signals.ts'
import type { Diagnostic } from './config/diagnostics.ts'
import { formatDiagnostic, loadConfigFile } from './config/loader.ts'
import { redactConfig, redactUrl } from './config/redact.ts'
import { type Config, configSchema } from './config/schema.ts'
import { keepStartOnly } from './config/start-only.ts'
import { type ConfigWatcher, serializeReloads, watchConfig } from './config/watch.ts'
import type { PodTokenPeers } from './identity/anomalies.ts'
import type { BotRangesObserver } from './identity/bots/verify.ts'
import { loadCertificateDecoder, parsePeerCertificate, pemCertificates } from './identity/certificate.ts'
import { KeyMemory, type SharedKeySet } from './identity/jwt/jwks.ts'
import { directoryKeySource } from './identity/signatures/directory.ts'
import { NonceCache, type NonceStore } from './identity/signatures/nonces.ts'
import { AttributionPipeline, readSecretFiles } from './pipeline/index.ts'
import {
  certificateOutOfDates,
  loadListenerTls,
  loadUpstreamTls,
  TlsMaterialError,
} from './proxy/listener-tls.ts'
import { createProxy, type ProxyServer } from './proxy/server.ts'
import { parseUpstream } from './proxy/upstream-url.ts'
import { rotateTlsFiles, tlsRefusal } from './runtime-tls.ts'
import { StartupError, StoppedWhileStarting, splitAddress } from './startup.ts'
import { type JwksObserver, type RecorderFailure, Telemetry } from './telemetry/index.ts'
import type { TlsSide } from './telemetry/metrics.ts'
import {
  logUpstreamFailure,
  type UpstreamFailureLine,
  upstreamFailureReporter,
} from './telemetry/upstream-failure-log.ts'
import type { Recorder } from './types.ts'
import { listenProblem } from './util/listen-problem.ts'
import { VERSION } from './version.ts'

export interface ListenOverrides {
  listen?: string
  upstream?: string
  admin?: string
  /** `--workers`, checked by the flag's own parser */
  workers?: number | 'auto' | undefined
}

export interface StartOptions {
  /** a config file (watched for changes) … */
  configPath?: string
  /** … already loaded and valid (the CLI reads it first for `workers`): not read a second time at start */
  preloaded?: Config
  /** … or an in-memory config (demo, tests); not watched */
  config?: Config
  overrides?: ListenOverrides
  /** PEM material for the https listener instead of reading listen.https.cert/key/clientCA files (never reread) */
  tls?: { cert: string; key: string; ca?: string }
  log: Logger
  /** wait at most this long for the first JWKS fetch before accepting traffic */
  jwksStartTimeoutMs?: number
  /**
   * Aborted when the process is told to stop while it starts: the start ends (StoppedWhileStarting)
   * instead of listening, without waiting out the first JWKS fetch.
   */
  stop?: AbortSignal
  /** outputs of an embedding program, recorded and reconfigured like the built-in ones */
  recorders?: Recorder[]
  /**
   * A proxy worker of `workers: N` (src/workers.ts): no admin listener and no config watch (the primary
   * serves the one admin port and tells every worker when to reload); audit lines go to `auditSink`, and
   * the signed agents' nonces are the pod's, kept by the primary (`nonces`). The worker starts from the pod's
   * last good key sets (`podKeys`) and reports each key set it fetches (`keysFetched`).
   */
  worker?: {
    auditSink: (lines: string) => boolean
    nonces: NonceStore
    tokenPeers: PodTokenPeers
    podKeys: readonly SharedKeySet[]
    keysFetched: (keys: SharedKeySet) => void
    /** this worker's upstream-failure lines, for the primary to log at the pod's interval */
    upstreamFailed: (line: UpstreamFailureLine) => void
  }
  /**
   * the bytes of the config's secret files (readSecretFiles), when whoever handed the config over read them:
   * a worker of `workers: N` is given its primary's, so that every worker of a pod, a replacement included,
   * serves with the bytes the pod's config was applied with, not what the files hold when it happens to start
   */
  secretFiles?: SecretFiles
}

/** the key sources (KeyMemory.sourceOf) of a config's issuers and signed agents' key directories */
export function keySources(config: Config): Set<string> {
  return new Set([
    ...config.jwt.issuers.map((issuer) => KeyMemory.sourceOf(issuer)),
    ...config.signedAgents.directories.map((d) => KeyMemory.sourceOf(directoryKeySource(d))),
  ])
}

/** the bytes of a config's secret files, by setting (readSecretFiles) */
export type SecretFiles = ReadonlyMap<string, Uint8Array>

export interface Sidecar {
  readonly proxyAddress: AddressInfo
  readonly httpsAddress?: AddressInfo
  readonly adminAddress: AddressInfo
  readonly telemetry: Telemetry
  /** the pipeline serving requests now (a reload swaps it) */
  pipeline(): AttributionPipeline
  config(): Config
  /** what /readyz answers */
  ready(): Promise<ReadyState>
  /** re-read the config file; false (and the old config keeps serving) when it is invalid */
  reload(): Promise<boolean>
  /**
   * serve a config validated elsewhere (a worker gets its config from the primary), with the bytes of its
   * secret files as read there
   */
  applyConfig(config: Config, secretFiles: SecretFiles): Promise<boolean>
  /**
   * SIGTERM: /readyz turns 503 at once, the listeners keep accepting for timeouts.drainDelay (answering with
   * Connection: close), then close() drains in-flight requests. A close() during the delay cuts it short.
   * `quiet`: its `draining` line at debug level (a worker draining with the whole pod, whose primary logs
   * the pod's one line).
   */
  shutdown(quiet?: boolean): Promise<void>
  /** drain in-flight requests (bounded by timeouts.drain) and close everything */
  close(): Promise<void>
}

/** CLI flags win over the file; they are validated by the same schema as the file. */
export function applyOverrides(config: Config, o: ListenOverrides | undefined): Config {
  if (!o || (!o.listen && !o.upstream && !o.admin && o.workers === undefined)) return config
  const shape = configSchema.shape
  const check = <T>(
    schema: {
      safeParse(v: unknown): { success: boolean; data?: T; error?: { issues: { message: string }[] } }
    },
    v: string,
    flag: string,
  ): T => {
    const r = schema.safeParse(v)
    // the schema's reason, as `check` gives it for the same value in a file
    const why = r.error?.issues[0]?.message
    if (!r.success) throw new StartupError(`invalid ${flag} "${v}"${why ? `: ${why}` : ''}`, 1)
    return r.data as T
  }
  return {
    ...config,
    listen: o.listen
      ? { ...config.listen, http: check<string>(shape.admin, o.listen, '--listen') }
      : config.listen,
    admin: o.admin ? check<string>(shape.admin, o.admin, '--admin') : config.admin,
    upstream: o.upstream
      ? upstreamFlag(check<string>(shape.upstream, o.upstream, '--upstream'))
      : config.upstream,
    // what /config shows and what a reload compares: the workers that run, not the file's
    workers: o.workers ?? config.workers,
  }
}

/** The same check the config file's `upstream` gets, so a bad flag is invalid input (exit 1) with the reason. */
function upstreamFlag(url: string): string {
  try {
    parseUpstream(url)
  } catch (e) {
    throw new StartupError(`--upstream: ${(e as Error).message}`, 1)
  }
  return url
}

export async function loadOrFail(path: string): Promise<Config> {
  const result = await loadConfigFile(path, { checkFiles: 'start' })
  if (!result.ok) throw new StartupError(result.errors.map(formatDiagnostic).join('\n'), 1)
  return result.config
}

/**
 * The https listener's files, read and checked as a rotation reads them: what a rotation would refuse (a
 * client CA without a certificate, a key for another certificate) stops the start, before any port is bound.
 */
export function readListenerTls(https: NonNullable<Config['listen']['https']>) {
  return readTlsFiles('listener', () =>
    loadListenerTls({ cert: https.cert, key: https.key, clientCA: https.clientCA }),
  )
}

async function readTls(config: Config, tls: StartOptions['tls']) {
  const https = config.listen.https
  if (!https) return undefined
  const material = tls ? { ...tls, clientCAs: pemCertificates(tls.ca) } : await readListenerTls(https)
  return { ...splitAddress(https.address), ...material, clientCert: https.clientCert }
}

/**
 * CA bundle and client certificate for https:/h2: upstreams, read and checked as a rotation reads them: a CA
 * file without a certificate (which would leave the upstream verified against the public roots) or a key for
 * another certificate stops the start.
 */
export async function readUpstreamTls(
  upstreamTls: Config['upstreamTls'],
): Promise<ConnectionOptions | undefined> {
  if (!upstreamTls) return undefined
  if ((upstreamTls.cert === undefined) !== (upstreamTls.key === undefined)) {
    throw new StartupError('upstreamTls: cert and key go together', 1)
  }
  return readTlsFiles('upstream', () => loadUpstreamTls(upstreamTls, upstreamTls.servername))
}

/** the secret files of the first pipeline's sources: one that cannot serve stops the start */
export async function secretFilesAtStart(config: Config): Promise<Map<string, Uint8Array>> {
  try {
    return await readSecretFiles(config)
  } catch (e) {
    throw new StartupError((e as Error).message, 1)
  }
}

/**
 * A certificate the sidecar starts with outside its dates starts anyway (its renewal may be on its way, and
 * refusing to start would take the plain listener down with it) but is said once, at warning level: clients
 * (or the upstream) will refuse it. Rotations refuse such a certificate instead (src/runtime-tls.ts).
 */
export function warnCertificateDates(
  log: Logger,
  listener: string | undefined,
  upstream: unknown,
  now = Date.now(),
): void {
  const sides: [TlsSide, unknown][] = [
    ['listener', listener],
    ['upstream', upstream],
  ]
  for (const [side, cert] of sides) {
    if (typeof cert !== 'string') continue
    const dates = certificateOutOfDates(cert, now)
    if (!dates) continue
    const setting = side === 'listener' ? 'listen.https.cert' : 'upstreamTls.cert'
    const event = dates.event === 'tls_reload_cert_expired' ? 'tls_cert_expired' : 'tls_cert_not_yet_valid'
    const { notBefore, notAfter } = dates
    log.warn(
      { event, side, setting, notBefore, notAfter },
      `${setting}: ${dates.reason}; starting with it, but ${side === 'listener' ? 'clients that verify it refuse the connection' : 'an upstream that verifies client certificates refuses it'}`,
    )
  }
}

async function readTlsFiles<T>(side: TlsSide, load: () => Promise<T>): Promise<T> {
  try {
    return await load()
  } catch (err) {
    if (!(err instanceof TlsMaterialError)) throw err
    throw new StartupError(tlsRefusal(side, err).text, 1)
  }
}

function withTimeout(p: Promise<void>, ms: number, stop?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(t)
      stop?.removeEventListener('abort', done)
      resolve()
    }
    const t = setTimeout(done, ms)
    p.then(done, done)
    // an abort that came before this call has fired its event already: no listener would ever hear it, and
    // the start would wait out the whole timeout for a stop asked for while it read its files
    if (stop?.aborted) done()
    else stop?.addEventListener('abort', done)
  })
}

/**
 * The admin bearer token (adminAccess.tokenFile, e.g. a mounted Kubernetes Secret): read at start and on
 * every reload, and again when older than TOKEN_MAX_AGE_MS, so a rotated Secret takes effect on its own.
 */
export class TokenFile {
  private path: string | undefined
  private value: string | undefined
  private readAt = 0

  constructor(
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  async load(path: string | undefined): Promise<void> {
    this.path = path
    this.value = undefined
    if (path) await this.read(path)
  }

  async get(): Promise<string | undefined> {
    if (this.path && this.now() - this.readAt > TOKEN_MAX_AGE_MS) await this.read(this.path)
    return this.value
  }

  private async read(path: string): Promise<void> {
    this.readAt = this.now()
    try {
      const text = (await readFile(path, 'utf8')).trim()
      if (!text) this.log.warn({ event: 'admin_token_empty', file: path }, 'admin token file is empty')
      this.value = text || undefined
    } catch (err) {
      this.value = undefined
      this.log.warn(
        { event: 'admin_token_unreadable', file: path, err: (err as NodeJS.ErrnoException).code },
        'cannot read the admin token file: operator endpoints are served to loopback peers only',
      )
    }
  }
}

const TOKEN_MAX_AGE_MS = 30_000

/** a reload that changed settings read at start only: they keep their running values until a restart */
export function warnStartOnly(log: Logger, settings: readonly string[]): void {
  if (settings.length === 0) return
  log.warn(
    { event: 'restart_required', settings },
    `${settings.join(', ')}: read at start only; the running values stay until a restart`,
  )
}

/** from listening to loading prom-client's default collectors, unless /metrics is scraped sooner */
const PROCESS_METRICS_DELAY_MS = 1000

/** A proxy worker of `workers: N`: a sidecar without the admin listener (StartOptions.worker). */
export type WorkerSidecar = Omit<Sidecar, 'adminAddress'>

export async function startSidecar(opts: StartOptions & { worker?: undefined }): Promise<Sidecar> {
  const { adminAddress, ...sidecar } = await start(opts)
  if (!adminAddress) throw new StartupError('admin listener did not start', 2)
  return { ...sidecar, adminAddress }
}

export function startWorkerSidecar(
  opts: StartOptions & { worker: NonNullable<StartOptions['worker']> },
): Promise<WorkerSidecar> {
  return start(opts)
}

async function start(opts: StartOptions): Promise<WorkerSidecar & { adminAddress?: AddressInfo }> {
  const log = opts.log
  const configPath = opts.configPath ? resolve(opts.configPath) : undefined
  const initial = applyOverrides(
    configPath ? (opts.preloaded ?? (await loadOrFail(configPath))) : (opts.config ?? configSchema.parse({})),
    opts.overrides,
  )
  // first: a listener or upstream TLS file that cannot serve stops the start before keys are fetched or
  // outputs opened
  const tls = await readTls(initial, opts.tls)
  const upstreamTls = await readUpstreamTls(initial.upstreamTls)
  // under `workers` the primary says it once for the pod
  if (!opts.worker && !opts.tls) warnCertificateDates(log, tls?.cert, upstreamTls?.cert)
  // the https listener parses a client certificate synchronously as each TLS connection comes in
  if (tls) await loadCertificateDecoder()
  const telemetry = new Telemetry(initial, {
    version: VERSION,
    ...(opts.recorders ? { recorders: opts.recorders } : {}),
    audit: opts.worker ? { sink: opts.worker.auditSink } : { onWriteError: auditWriteFailed(log) },
  })
  telemetry.configLoaded()
  const jwksStartTimeout = opts.jwksStartTimeoutMs ?? 5000
  const jwksObserver = loggingJwksObserver(telemetry.jwksObserver, log)
  const botRangesObserver = loggingBotRangesObserver(log)
  // created once, not per pipeline: a signature seen before a reload is a replay after it
  const ownNonces = opts.worker ? undefined : new NonceCache(initial.signedAgents.nonceCacheSize)
  const nonces: NonceStore = opts.worker?.nonces ?? ownNonces!

  // the serving pipeline carries the serving config: a reload swaps both at once
  // the issuers' last good keys, for the pipelines of later reloads (KeyMemory)
  const keyMemory = new KeyMemory(opts.worker?.keysFetched)
  // before the first pipeline's key sets are built: each takes what the memory has for its source
  if (opts.worker) await keyMemory.seed(opts.worker.podKeys)
  let pipeline = new AttributionPipeline(initial, {
    jwksObserver,
    keyMemory,
    botRangesObserver,
    anomalyObserver: telemetry.anomalyObserver,
    nonces,
    ...(opts.worker ? { podTokenPeers: opts.worker.tokenPeers } : {}),
    recorder: telemetry,
    secretFiles: opts.secretFiles ?? (await secretFilesAtStart(initial)),
  })
  await withTimeout(pipeline.start(), jwksStartTimeout, opts.stop)
  if (opts.stop?.aborted) {
    pipeline.close()
    await telemetry.close()
    throw new StoppedWhileStarting()
  }

  telemetry.otlp.onThreadExit = (error) =>
    log.warn({ event: 'otlp_thread_exit', error }, 'OTLP export thread stopped, restarting it')
  telemetry.otlp.onThreadUnusable = (error) =>
    log.error(
      { event: 'otlp_export_failed', error },
      'OTLP export cannot start with these settings; spans and log records are dropped until a reload changes them',
    )
  // an output is not the proxy: one that cannot apply its config is reported, traffic is served
  logRecorderFailures(log, await telemetry.start())
  logOtlpTarget(log, telemetry.otlp.target, undefined)

  // the client CAs the listener verifies against, as of its latest rotation
  let clientAnchors = tls?.clientCAs ?? []
  const upstreamFailed = upstreamFailureReporter(opts.worker?.upstreamFailed ?? logUpstreamFailure(log))
  const proxy: ProxyServer = createProxy({
    getPipeline: () => pipeline,
    upstream: initial.upstream,
    ...(upstreamTls ? { upstreamTls } : {}),
    http: splitAddress(initial.listen.http),
    https: tls,
    parsePeerCert: (socket) => parsePeerCertificate(socket, clientAnchors),
    timeouts: initial.timeouts,
    limits: initial.limits,
    onHttp2Abuse: (reason) => telemetry.http2ConnectionClosed(reason),
    onAttributionError: attributionErrorReporter(log, telemetry),
    onUpstreamFailed: upstreamFailed,
    // a protocol error of the upstream's like those that fail a request (a reset), though the response stood
    onUpstreamUnframedBytes: (err) => {
      telemetry.upstreamErrorBetweenRequests('reset')
      upstreamFailed('reset', err)
    },
    onTunnelIdle: (protocol) => {
      telemetry.tunnelIdleClosed(protocol)
      log.debug(
        { event: 'tunnel_idle_closed', protocol, idleMs: initial.timeouts.tunnelIdle },
        'closed a tunnel that moved no byte either way for timeouts.tunnelIdle',
      )
    },
  })

  let draining = false
  let listening = false
  const adminToken = new TokenFile(log)
  await adminToken.load(initial.adminAccess.tokenFile)
  const ready = async (): Promise<ReadyState> => {
    const { readiness } = pipeline.config
    const checks = {
      config: true,
      listeners: listening,
      draining,
      upstream: await proxy.upstreamReachable(),
      jwks: pipeline.ready(),
    }
    // By default readiness means "this proxy can serve": an IdP or upstream outage is reported, not gated
    // on, so a sidecar never takes its app's pod out of rotation for something the app may not need.
    const gates = ['config', 'listeners', 'draining']
    if (readiness.requireUpstream) gates.push('upstream')
    if (readiness.requireJwks) gates.push('jwks')
    const ok =
      checks.config &&
      checks.listeners &&
      !checks.draining &&
      (!readiness.requireUpstream || checks.upstream) &&
      (!readiness.requireJwks || checks.jwks)
    return { ok, checks, detail: { gates, ...pipeline.readinessDetail() } }
  }
  const admin: AdminServer | undefined = opts.worker
    ? undefined
    : createAdminServer({
        ...splitAddress(initial.admin),
        telemetry,
        access: () => ({
          token: () => adminToken.get(),
          allowedHosts: pipeline.config.adminAccess.allowedHosts,
        }),
        ready,
        effectiveConfig: () => redactConfig(pipeline.config),
      })

  const abandon = async () => {
    pipeline.close()
    await proxy.close(0).catch(() => {})
    await admin?.close().catch(() => {})
    await telemetry.close()
  }
  // the last step before the listeners open, after the outputs' start and the admin token's read; a stop
  // signal already delivered is dispatched first (stopSignalsDispatched)
  if (opts.stop) await stopSignalsDispatched()
  if (opts.stop?.aborted) {
    await abandon()
    throw new StoppedWhileStarting()
  }
  let proxyAddrs: Awaited<ReturnType<ProxyServer['listen']>>
  let adminAddress: AddressInfo | undefined
  try {
    proxyAddrs = await proxy.listen()
    adminAddress = await admin?.listen()
  } catch (err) {
    await abandon()
    const e = err as NodeJS.ErrnoException & { address?: string; port?: number }
    const where =
      e.address === undefined ? '' : ` on ${e.address.includes(':') ? `[${e.address}]` : e.address}:${e.port}`
    throw new StartupError(`cannot listen${where}: ${listenProblem(e)}`, 2)
  }
  if (!proxyAddrs.http) throw new StartupError('http listener did not start', 2)
  listening = true
  // after the first requests rather than in their way (ProcessMetrics: a scrape before then starts it at once)
  const processMetricsTimer = setTimeout(() => void telemetry.startProcessMetrics(), PROCESS_METRICS_DELAY_MS)
  processMetricsTimer.unref()

  // The TLS files as named at start, rotated in place (src/runtime-tls.ts). Each worker of `workers: N` has
  // its own listener and upstream connections and so watches the files itself.
  const https = initial.listen.https
  const listenerRotation =
    tls && !opts.tls && https
      ? rotateTlsFiles(
          {
            side: 'listener',
            files: { cert: https.cert, key: https.key, clientCA: https.clientCA },
            serving: tls,
            load: loadListenerTls,
            refuseOutOfDates: true,
            apply: (next) => {
              proxy.setListenerTls(next)
              clientAnchors = next.clientCAs
            },
          },
          log,
          telemetry,
        )
      : undefined
  // upstream connections opened after a rotation present the new client certificate and verify against the
  // new CA
  const upstreamFiles = initial.upstreamTls
  const upstreamRotation =
    upstreamTls && (upstreamFiles?.ca || upstreamFiles?.cert)
      ? rotateTlsFiles(
          {
            side: 'upstream',
            files: { cert: upstreamFiles.cert, key: upstreamFiles.key, ca: upstreamFiles.ca },
            serving: upstreamTls,
            load: (files) => loadUpstreamTls(files, upstreamFiles.servername),
            refuseOutOfDates: true,
            apply: (next) => proxy.setUpstreamTls(next),
          },
          log,
          telemetry,
        )
      : undefined

  // a new valid config: build the pipeline for it, then hand it to the proxy and the recorders
  const apply = async (
    loaded: Config,
    warnings: readonly Diagnostic[] = [],
    given?: SecretFiles,
  ): Promise<boolean> => {
    const { config: next, changed: startOnly } = keepStartOnly(
      initial,
      applyOverrides(loaded, opts.overrides),
    )
    const secretFiles = given ?? (await readSecretFiles(next))
    const nextPipeline = new AttributionPipeline(next, {
      jwksObserver,
      keyMemory,
      botRangesObserver,
      anomalyObserver: telemetry.anomalyObserver,
      nonces,
      ...(opts.worker ? { podTokenPeers: opts.worker.tokenPeers } : {}),
      recorder: telemetry,
      secretFiles,
    })
    await withTimeout(nextPipeline.start(), jwksStartTimeout)
    // before the swap: an upstream the proxy cannot use must leave the running config whole
    try {
      proxy.setUpstream(next.upstream)
    } catch (e) {
      nextPipeline.close()
      throw e
    }
    const previous = pipeline
    pipeline = nextPipeline
    // the admin token is part of the config applied: read only once nothing can fail the reload any more
    await adminToken.load(next.adminAccess.tokenFile)
    ownNonces?.resize(next.signedAgents.nonceCacheSize)
    const otlpBefore = telemetry.otlp.target
    logRecorderFailures(log, await telemetry.reconfigure(next))
    logOtlpTarget(log, telemetry.otlp.target, otlpBefore)
    telemetry.configReloaded('success')
    // In-flight requests hold their own attribution; the old key caches can go.
    previous.close()
    // after the close: a refresh of the old key sets still under way no longer writes to the memory
    keyMemory.retain(keySources(next))
    for (const d of warnings) log.warn(formatDiagnostic(d))
    warnStartOnly(log, startOnly)
    // a worker's reload is part of the pod's, which its primary logs once, with how many workers applied it
    const reloaded = { event: 'config_reloaded', rules: next.identities.length }
    if (opts.worker) log.debug(reloaded, 'config reloaded')
    else log.info(reloaded, 'config reloaded')
    await listenerRotation?.reload()
    await upstreamRotation?.reload()
    return true
  }
  const reload = async (): Promise<boolean> => {
    if (!configPath) return false
    const result = await loadForReload(configPath, log, telemetry)
    if (result === undefined) return false
    try {
      return await apply(result.config, result.warnings)
    } catch (e) {
      // never silent: the last good config keeps serving, and the operator is told why
      log.error({ event: 'config_reload_failed' }, `${configPath}: ${(e as Error).message}`)
      telemetry.configReloaded('failure')
      return false
    }
  }
  const serialReload = serializeReloads(reload)
  // configs handed over are applied one at a time, in the order they came
  let applying: Promise<unknown> = Promise.resolve()
  const applyConfig = (config: Config, secretFiles: SecretFiles): Promise<boolean> => {
    const run = applying.then(() => apply(config, [], secretFiles))
    applying = run.catch(() => {})
    return run
  }
  const watcher: ConfigWatcher | undefined =
    configPath && !opts.worker
      ? watchConfig(configPath, () => void serialReload(), {
          onError: (message, err) => log.warn({ err }, message),
        })
      : undefined

  let closing: Promise<void> | undefined
  let shuttingDown: Promise<void> | undefined
  let skipDrainDelay: (() => void) | undefined
  const close = (): Promise<void> => {
    skipDrainDelay?.()
    closing ??= (async () => {
      draining = true
      clearTimeout(processMetricsTimer)
      watcher?.close()
      listenerRotation?.close()
      upstreamRotation?.close()
      await proxy.close(pipeline.config.timeouts.drain)
      await admin?.close()
      pipeline.close()
      logRecorderFailures(log, await telemetry.close())
    })()
    return closing
  }
  return {
    proxyAddress: proxyAddrs.http,
    httpsAddress: proxyAddrs.https,
    ...(adminAddress ? { adminAddress } : {}),
    telemetry,
    pipeline: () => pipeline,
    config: () => pipeline.config,
    ready,
    reload: serialReload,
    applyConfig,
    shutdown(quiet = false) {
      shuttingDown ??= (async () => {
        draining = true
        proxy.drain()
        const { drainDelay: delayMs, drain: drainMs } = pipeline.config.timeouts
        log[quiet ? 'debug' : 'info'](
          { event: 'draining', drainDelayMs: delayMs, drainMs },
          'draining: /readyz answers 503, listeners accept with Connection: close until the drain delay ends',
        )
        if (delayMs > 0 && !closing) {
          await new Promise<void>((done) => {
            const timer = setTimeout(done, delayMs)
            skipDrainDelay = () => {
              clearTimeout(timer)
              done()
            }
          })
        }
        await close()
      })()
      return shuttingDown
    },
    close,
  }
}

/**
 * The config file again, for a reload: an invalid one is logged diagnostic by diagnostic and counted as a
 * failed reload, and the caller keeps what it runs. Its files are checked as `check` checks them: a reload
 * that kept a start-only setting naming a missing or unusable file would apply what `check` refuses, and the
 * next start would stop on it.
 */
export async function loadForReload(
  configPath: string,
  log: Logger,
  telemetry: Pick<Telemetry, 'configReloaded'>,
): Promise<{ config: Config; warnings: Diagnostic[] } | undefined> {
  const result = await loadConfigFile(configPath, { checkFiles: true })
  if (result.ok) return result
  for (const d of result.errors) log.error({ event: 'config_reload_failed' }, formatDiagnostic(d))
  telemetry.configReloaded('failure')
  return undefined
}

/** One line when span export starts, moves or stops; the collector URL's credentials are masked. */
function logOtlpTarget(log: Logger, target: string | undefined, before: string | undefined): void {
  if (target === before) return
  if (target === undefined) log.info({ event: 'otlp_export_off' }, 'OTLP export is off')
  else log.info({ event: 'otlp_export', target: redactUrl(target) }, 'exporting spans over OTLP')
}

/** the audit output refused a write: logged once per run of failures (every lost line is counted) */
export function auditWriteFailed(log: Logger): (err: NodeJS.ErrnoException) => void {
  return (err) =>
    log.error(
      { event: 'audit_write_failed', code: err.code, err: err.message },
      `the audit output refused a write (${err.code ?? err.message}): lines are dropped and counted in nhi_audit_dropped_lines_total until it takes them again`,
    )
}

export function logRecorderFailures(log: Logger, failures: RecorderFailure[]): void {
  for (const { recorder, error } of failures)
    log.error({ event: 'recorder_failed', recorder, err: error }, `the ${recorder} output failed: ${error}`)
}

/** at most one log line per this long about requests the pipeline failed to attribute */
export const ATTRIBUTION_ERROR_LOG_INTERVAL_MS = 60_000

/**
 * Counts every request the pipeline failed to attribute (nhi_attribution_errors_total) and logs the first,
 * then at most one a minute with how many went unlogged since: a bug that hits every request must not turn
 * into one log line per request.
 */
export function attributionErrorReporter(
  log: Logger,
  telemetry: Pick<Telemetry, 'attributionFailed'>,
  now: () => number = Date.now,
): (error: unknown, refused: boolean) => void {
  let loggedAt = Number.NEGATIVE_INFINITY
  let unlogged = 0
  return (error, refused) => {
    telemetry.attributionFailed()
    const at = now()
    if (at - loggedAt < ATTRIBUTION_ERROR_LOG_INTERVAL_MS) {
      unlogged++
      return
    }
    loggedAt = at
    log.error(
      { event: 'attribution_failed', err: error, refused, unlogged },
      refused
        ? 'attributing a request failed; answered 500 because the policy is enforced'
        : 'attributing a request failed; forwarded as anonymous',
    )
    unlogged = 0
  }
}

/**
 * Metrics for every JWKS/discovery refresh, and one log line per change of an issuer's state (failing, or
 * recovered) with the safe reason, never one per attempt or per request. Shared by every pipeline a reload
 * builds, so a reload does not repeat a known outage.
 */
/** Logs the first failure of a crawler range file and its recovery, not every retry. */
function loggingBotRangesObserver(log: Logger): BotRangesObserver {
  const failing = new Set<string>()
  return {
    refreshed(operator, url, result, prefixes, error) {
      if (result === 'failure' && !failing.has(url)) {
        failing.add(url)
        log.warn(
          { event: 'bot_ranges_refresh_failed', operator, reason: error ?? 'unknown', prefixes },
          prefixes > 0
            ? 'crawler range refresh failed; the last good ranges keep serving'
            : 'crawler range refresh failed; claims of this operator stay unknown until it arrives',
        )
      } else if (result === 'success' && failing.delete(url)) {
        log.info({ event: 'bot_ranges_recovered', operator, prefixes }, 'crawler range refresh recovered')
      }
    },
  }
}

function loggingJwksObserver(metrics: JwksObserver, log: Logger): JwksObserver {
  const failing = new Map<string, boolean>()
  /** unusable keys left out of each issuer's key set in use, logged when the number changes */
  const unusableKeys = new Map<string, number>()
  return {
    refreshed(issuer, result, keyCount, at, error, unusable) {
      metrics.refreshed(issuer, result, keyCount, at, error, unusable)
      if (result === 'success' && (unusable?.count ?? 0) !== (unusableKeys.get(issuer) ?? 0)) {
        unusableKeys.set(issuer, unusable?.count ?? 0)
        if (unusable)
          log.warn(
            {
              event: 'jwks_keys_unusable',
              issuer,
              unusable: unusable.count,
              reason: unusable.reason,
              keys: keyCount,
            },
            'JWKS keys that cannot verify a signature were left out; the usable ones serve',
          )
      }
      const was = failing.get(issuer)
      if (result === 'failure' && was !== true) {
        failing.set(issuer, true)
        log.warn(
          { event: 'jwks_refresh_failed', issuer, reason: error ?? 'unknown', keys: keyCount },
          keyCount > 0
            ? 'JWKS refresh failed; the last good keys keep serving'
            : 'JWKS refresh failed; tokens from this issuer are attributed unverified (keys_unavailable) until keys arrive',
        )
      } else if (result === 'success' && was !== false) {
        failing.set(issuer, false)
        if (was === true)
          log.info({ event: 'jwks_recovered', issuer, keys: keyCount }, 'JWKS refresh recovered')
      }
    },
  }
}
