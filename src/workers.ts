// `workers: N` (docs/reference.md "Workers"): N proxy processes on Node's cluster module share the proxy
// listeners, and the primary process serves what must be one per pod: the admin port (one /metrics
// aggregating every worker, /readyz over all of them), the audit output (workers hand it whole lines), the
// config (validated once here, then handed to every worker) and the drain on SIGTERM. A worker that exits
// is started again, and the signed agents' nonces (a signature replayed on a connection another worker
// took is still a replay). With `workers: 1` none of this runs: the CLI starts the single-process sidecar.
import cluster, { type Worker } from 'node:cluster'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { resolve } from 'node:path'
import type { Logger } from 'pino'
import { createAdminServer, type ReadyState } from './admin/server.ts'
import { claimStopSignals } from './cli/stop-signals.ts'
import { formatDiagnostic } from './config/loader.ts'
import { redactConfig } from './config/redact.ts'
import { type Config, configSchema } from './config/schema.ts'
import { keepStartOnly } from './config/start-only.ts'
import { type ConfigWatcher, serializeReloads, watchConfig } from './config/watch.ts'
import { OVER_LIMIT, type PodTokenPeers, TokenPeerWindows } from './identity/anomalies.ts'
import { PodKeySets, type SharedKeySet } from './identity/jwt/jwks.ts'
import { type Admission, NonceCache, type NonceStore } from './identity/signatures/nonces.ts'
import { readSecretFiles } from './pipeline/index.ts'
import {
  applyOverrides,
  auditWriteFailed,
  keySources,
  type ListenOverrides,
  loadForReload,
  loadOrFail,
  logRecorderFailures,
  readListenerTls,
  readUpstreamTls,
  type SecretFiles,
  secretFilesAtStart,
  startWorkerSidecar,
  TokenFile,
  type WorkerSidecar,
  warnCertificateDates,
  warnStartOnly,
} from './runtime.ts'
import { StartupError, StoppedWhileStarting, splitAddress } from './startup.ts'
import { AUDIT_MAX_PENDING_BYTES } from './telemetry/audit.ts'
import { OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE } from './telemetry/exposition.ts'
import {
  type AuditQuery,
  type AuditRecord,
  type IdentitiesView,
  type IdentitySort,
  type LiveEvent,
  Telemetry,
} from './telemetry/index.ts'
import { toLiveEvent } from './telemetry/live.ts'
import { tableLimits } from './telemetry/metrics-recorder.ts'
import { PodExport, type PodSnapshot } from './telemetry/pod-export.ts'
import { PodMetrics } from './telemetry/pod-metrics.ts'
import { mergeAuditRecords, mergeIdentitiesViews, type WorkerIdentitiesView } from './telemetry/pod-views.ts'
import {
  logUpstreamFailure,
  type UpstreamFailureLine,
  UpstreamFailureThrottle,
} from './telemetry/upstream-failure-log.ts'
import type { Recorder } from './types.ts'
import { podFingerprintKey, usePodFingerprintKey } from './util/fingerprint.ts'
import { listenProblem } from './util/listen-problem.ts'
import { VERSION } from './version.ts'

/**
 * primary → worker. A config travels with the bytes of its secret files as the primary read them when the
 * pod started with it or reloaded to it: a worker that read them itself would differ from the others once
 * a file changed or went away without a reload (a replacement that cannot start, a key with two fingerprints).
 * A worker starts with the pod's last good public key sets (PodKeySets): one that starts while an IdP is down
 * verifies tokens as its siblings do until its own fetch succeeds.
 */
type Command =
  /** the pod's fingerprint key travels here, not in the worker's environment (readable in /proc) */
  | {
      nhi: 'start'
      config: Config
      secretFiles: SecretFiles
      fingerprintKey: Uint8Array
      keys: SharedKeySet[]
    }
  | { nhi: 'config'; id: number; config: Config; secretFiles: SecretFiles }
  | { nhi: 'scrape'; id: number; since: number }
  /**
   * the identities the pod's cap admitted (podIdentityKey), after a scrape that changed them; `startOver`:
   * those folded until then, whose series start again
   */
  | { nhi: 'podAdmitted'; identities: string[]; startOver: readonly string[] }
  | { nhi: 'ready'; id: number }
  /** the primary's watchdog: answered from the event loop, so a worker whose loop is stuck does not answer */
  | { nhi: 'ping'; id: number }
  | { nhi: 'identities'; id: number; sort: IdentitySort | undefined }
  | { nhi: 'auditQuery'; id: number; query: AuditQuery }
  | { nhi: 'live'; on: boolean }
  | { nhi: 'nonce'; id: number; admission: Admission }
  | { nhi: 'tokenShared'; fingerprint: string }
  /** `pod`: the whole pod drains (the primary logs it once), not this worker alone */
  | { nhi: 'shutdown'; pod?: boolean }
  | { nhi: 'close' }

/** worker → primary */
type Report =
  | { nhi: 'hello' }
  | { nhi: 'listening'; http: string; https?: string }
  | { nhi: 'audit'; lines: string }
  | { nhi: 'live'; events: LiveEvent[] }
  | { nhi: 'reply'; id: number; value: unknown }
  | { nhi: 'nonce'; id: number; key: string; until: number }
  /** (token fingerprint, client) pairs new to this worker, flattened: [fp, peer, fp, peer, …] */
  | { nhi: 'tokenPeers'; pairs: string[] }
  /** a key set this worker fetched (only public keys), for the workers the primary starts later */
  | ({ nhi: 'keys' } & SharedKeySet)
  /** a line of this worker's upstream-failure log (at most one per reason and code per interval) */
  | { nhi: 'upstreamFailed'; line: UpstreamFailureLine }
  /** why this worker could not start (one stderr line of a one-process start), just before it exits */
  | { nhi: 'failed'; message: string; exitCode: 1 | 2 }

const SLOT_ENV = 'NHI_WORKER_SLOT'
/**
 * What a reload becomes from the workers' answers to it (`true` applied, a string the reason it could not be,
 * undefined no answer in time). Applied when at least one worker applied it (or none was serving to ask): the
 * others are replaced with it, so no worker serves rules older than the pod's. Otherwise the reload failed,
 * as it would in one process: the pod keeps its last good config, and only a worker that did not answer at
 * all is replaced, on that config (a config no worker could apply would leave its replacements failing to
 * start).
 */
export function reloadOutcome(answers: readonly unknown[]): {
  applied: boolean
  /** indices of the workers to replace */
  replace: number[]
  /** the distinct reasons workers gave */
  reasons: string[]
} {
  const reasons = [...new Set(answers.filter((a): a is string => typeof a === 'string'))]
  const applied = answers.length === 0 || answers.some((a) => a === true)
  const replace: number[] = []
  answers.forEach((a, i) => {
    if (applied ? a !== true : a === undefined) replace.push(i)
  })
  return { applied, replace, reasons }
}

/** longest wait for a worker's answer to a scrape, a new config or the watchdog's ping */
const ASK_TIMEOUT_MS = 10_000
/**
 * How long /metrics, /readyz, /identities and /audit wait for the workers' answers: below common scrape and
 * probe timeouts (Prometheus' 10 s, the chart's 2 s probes), so that one stalled worker, until the watchdog
 * replaces it (up to WATCHDOG_MS + ASK_TIMEOUT_MS), does not take the whole pod's metrics with it. /metrics
 * shows such a worker's last answer (marked stale); a scrape still waiting for it goes on waiting, up to
 * ASK_TIMEOUT_MS, and the next scrape takes it up.
 */
const ADMIN_ANSWER_MS = 2_000
/**
 * how often the primary pings every serving worker: one that leaves a ping unanswered for ASK_TIMEOUT_MS
 * (its event loop stuck) is killed and replaced, so it does not hang the connections the cluster hands it
 * and hold /readyz at 503 for the pod, with no probe or reload needed to notice
 */
const WATCHDOG_MS = 5_000
/**
 * longest wait for the primary's answer about a signed agent's nonce: the request waits meanwhile, and the
 * signature is refused (replay_cache_full) when it runs out
 */
const NONCE_ASK_TIMEOUT_MS = 1_000
/**
 * A slot whose workers keep exiting soon after they start (a file they read at start that broke, a crash on
 * some request) is started again ever later, as a supervisor does: after 1 s, then 2 s, 4 s… up to the cap,
 * so a fault that stays costs little CPU and log, and one that clears is served again within the cap.
 */
const RESTART_BACKOFF_MS = 1_000
const RESTART_BACKOFF_CAP_MS = 30_000
/**
 * A worker that served this long was not part of a crash loop: its slot's backoff starts again, and its exit
 * restarts the slot at once. An exit before that (or before serving at all) is an early one.
 */
const WORKER_STABLE_MS = 60_000
/**
 * This many early exits over the pod within WORKER_STABLE_MS is a crash loop the primary cannot fix by
 * restarting: it stops every worker and exits 2 (`workers_crash_loop`), so the container is restarted and
 * the pod shows CrashLoopBackOff, instead of a primary that answers /healthz 200 while its workers fail.
 * Two per worker with many workers: a burst that kills a few young ones (memory pressure on a large pod)
 * would otherwise end a pod whose other workers serve, while a fault every start hits still gets there
 * within the first backoff (every slot exits early, and again when it is started 1 s later).
 */
const crashLoopExits = (workers: number): number => Math.max(5, 2 * workers)
/** how long a worker's death by SIGTERM during the start waits for the primary's own stop signal */
const GROUP_STOP_GRACE_MS = 2_000
/** live events a worker batches before handing them to the primary, and the most it keeps waiting */
const LIVE_FLUSH_MS = 100
const LIVE_MAX_PENDING = 1_000
/** new (token, client) pairs a worker batches before handing them to the primary, and the most it keeps */
const TOKEN_PEERS_FLUSH_MS = 20
const TOKEN_PEERS_MAX_PENDING = 4_096
/** verdicts of the pod a worker keeps until a request with the token comes (oldest forgotten first) */
const TOKEN_VERDICTS_MAX = 1_024
/** how often the primary checks whether anyone watches /events (workers forward events only then) */
const LIVE_POLL_MS = 1_000

export const isWorkerProcess = (): boolean => cluster.isWorker

/** /healthz of a pod with a worker serving, or none for less than RESTART_BACKOFF_CAP_MS */
const HEALTHY = { ok: true }

function fmt(a: AddressInfo): string {
  return a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`
}

function send(message: Report, done?: () => void): void {
  process.send?.(message, undefined, undefined, () => done?.())
}

/**
 * A worker that cannot start hands its reason to the primary and exits once it is sent: every worker of the
 * pod fails the same way (a listen host name that does not resolve), and the line is the pod's to print once,
 * not each worker's. False when there is no primary to tell: then the worker says it itself.
 */
export function reportStartFailure(message: string, exitCode: 1 | 2): boolean {
  if (!process.connected || process.send === undefined) return false
  try {
    send({ nhi: 'failed', message, exitCode }, () => process.exit(exitCode))
  } catch {
    return false
  }
  return true
}

/**
 * A worker's side of the pod's `token_shared` count: the (token, client) pairs it sees for the first time in
 * a window go to the primary in batches; the primary's verdicts wait here for the next request with the token.
 */
class WorkerTokenPeers implements PodTokenPeers {
  private pairs: string[] = []
  private readonly verdicts = new Set<string>()
  private timer: NodeJS.Timeout | undefined

  seen(fingerprint: string, peer: string): void {
    // a primary that stopped reading must not grow this process: beyond the bound, pairs are not counted
    if (this.pairs.length >= 2 * TOKEN_PEERS_MAX_PENDING) return
    this.pairs.push(fingerprint, peer)
    this.timer ??= setTimeout(this.flush, TOKEN_PEERS_FLUSH_MS)
  }

  takeVerdict(fingerprint: string): boolean {
    return this.verdicts.size !== 0 && this.verdicts.delete(fingerprint)
  }

  verdict(fingerprint: string): void {
    if (this.verdicts.size >= TOKEN_VERDICTS_MAX) {
      const oldest = this.verdicts.values().next().value
      if (oldest !== undefined) this.verdicts.delete(oldest)
    }
    this.verdicts.add(fingerprint)
  }

  private readonly flush = (): void => {
    this.timer = undefined
    const pairs = this.pairs
    this.pairs = []
    try {
      send({ nhi: 'tokenPeers', pairs })
    } catch {
      // the channel to the primary is closed: this worker is exiting
    }
  }
}

/**
 * A worker's side of the pod's nonce cache, which the primary keeps: every worker admits the nonces of the
 * signatures it accepts there, so a replay is one whichever worker it reaches. Fails closed: a question the
 * primary does not answer within NONCE_ASK_TIMEOUT_MS is `unanswered`. Questions are asked in order with
 * the same bound, so one timer, set for the oldest, serves them all.
 */
class PodNonces implements NonceStore {
  private nextId = 0
  private readonly pending = new Map<number, { done: (a: Admission) => void; deadline: number }>()
  private timer: NodeJS.Timeout | undefined

  admit(key: string, until: number): Promise<Admission> {
    return new Promise((done) => {
      const id = this.nextId++
      this.pending.set(id, { done, deadline: Date.now() + NONCE_ASK_TIMEOUT_MS })
      this.timer ??= setTimeout(this.expire, NONCE_ASK_TIMEOUT_MS)
      const unsent = (err: Error | null) => {
        if (err) this.answer(id, 'unanswered')
      }
      try {
        process.send!({ nhi: 'nonce', id, key, until } satisfies Report, undefined, undefined, unsent)
      } catch {
        // the channel to the primary is closed: this worker is exiting
        this.answer(id, 'unanswered')
      }
    })
  }

  answer(id: number, admission: Admission): void {
    const p = this.pending.get(id)
    if (!p) return
    this.pending.delete(id)
    p.done(admission)
  }

  private readonly expire = (): void => {
    this.timer = undefined
    const now = Date.now()
    for (const [id, p] of this.pending) {
      if (p.deadline > now) {
        this.timer = setTimeout(this.expire, p.deadline - now)
        return
      }
      this.answer(id, 'unanswered')
    }
  }
}

/**
 * A worker: waits for its config from the primary, serves the proxy listeners, answers the primary's
 * questions and hands its audit lines over. Resolves once serving; exits the process when told to.
 */
export async function runWorker(wlog: Logger): Promise<void> {
  // signals are the primary's: a terminal's Ctrl-C reaches every process of the group, and the pod's drain
  // is one coordinated drain
  process.on('SIGINT', () => {})
  process.on('SIGHUP', () => {})

  const nonces = new PodNonces()
  const tokenPeers = new WorkerTokenPeers()
  process.on('message', (m: Command) => {
    if (m.nhi === 'nonce') nonces.answer(m.id, m.admission)
    else if (m.nhi === 'tokenShared') tokenPeers.verdict(m.fingerprint)
  })
  // asked for rather than pushed at 'online': a message sent before this listener exists is lost
  const started = once(process, 'message') as Promise<[Command]>
  send({ nhi: 'hello' })
  const [first] = await started
  if (first.nhi !== 'start') throw new StartupError('worker: expected its config first', 2)
  usePodFingerprintKey(first.fingerprintKey)

  let pendingChars = 0
  let pendingSends = 0
  const settled: (() => void)[] = []
  const sent = (chars: number) => () => {
    pendingChars -= chars
    if (--pendingSends === 0) for (const done of settled.splice(0)) done()
  }
  // the live feed's worker half: events go to the primary's /events only while someone watches it
  let live = false
  let liveEvents: LiveEvent[] = []
  let flushScheduled = false
  const flushLive = () => {
    flushScheduled = false
    if (liveEvents.length === 0) return
    send({ nhi: 'live', events: liveEvents })
    liveEvents = []
  }
  const liveForwarder: Recorder = {
    name: 'live',
    record(event) {
      if (!live || liveEvents.length >= LIVE_MAX_PENDING) return
      liveEvents.push(toLiveEvent(event))
      if (flushScheduled) return
      flushScheduled = true
      setTimeout(flushLive, LIVE_FLUSH_MS)
    },
  }
  const sidecar: WorkerSidecar = await startWorkerSidecar({
    config: first.config,
    secretFiles: first.secretFiles,
    log: wlog,
    recorders: [liveForwarder],
    worker: {
      nonces,
      tokenPeers,
      podKeys: first.keys,
      keysFetched(keys) {
        try {
          send({ nhi: 'keys', ...keys })
        } catch {
          // the channel to the primary is closed: this worker is exiting
        }
      },
      upstreamFailed(line) {
        try {
          send({ nhi: 'upstreamFailed', line })
        } catch {
          // the channel to the primary is closed: this worker is exiting
        }
      },
      auditSink(lines) {
        // a primary that stopped reading must not grow this process without bound: drop and count
        if (pendingChars + lines.length > AUDIT_MAX_PENDING_BYTES) return false
        pendingChars += lines.length
        pendingSends++
        send({ nhi: 'audit', lines }, sent(lines.length))
        return true
      },
    },
  })
  const handedOver = () =>
    pendingSends === 0 ? Promise.resolve() : new Promise<void>((done) => settled.push(done))

  let exiting = false
  const exit = (how: () => Promise<void>) => {
    if (exiting) return
    exiting = true
    how()
      .then(handedOver)
      .then(
        () => process.exit(0),
        () => process.exit(2),
      )
  }
  // one caught while this worker started (cli/bin.ts) drains it now that it serves
  claimStopSignals(() => exit(sidecar.shutdown), ['SIGTERM'])
  // the primary is gone: nobody serves the admin port or writes the audit output any more
  process.on('disconnect', () => exit(sidecar.close))

  const reply = (id: number, value: unknown) => send({ nhi: 'reply', id, value })
  // the primary keeps this worker's lines between scrapes: each scrape sends only what changed
  const exporter = new PodExport()
  process.on('message', (m: Command) => {
    switch (m.nhi) {
      case 'scrape':
        sidecar.telemetry.metrics.pieces().then(
          (pieces) =>
            reply(
              m.id,
              exporter.snapshot(
                pieces,
                m.since,
                sidecar.telemetry.metrics.requestNamed(),
                sidecar.telemetry.metrics.issued(),
                sidecar.telemetry.metrics.presentedExpired(),
              ),
            ),
          () => reply(m.id, undefined),
        )
        return
      case 'podAdmitted':
        sidecar.telemetry.metrics.podAdmitted(m.identities, m.startOver)
        return
      case 'ping':
        reply(m.id, true)
        return
      case 'ready':
        sidecar.ready().then(
          (r) => reply(m.id, r),
          () => reply(m.id, undefined),
        )
        return
      case 'identities': {
        const view: WorkerIdentitiesView = sidecar.telemetry.identities(m.sort)
        view.presentedExpired = sidecar.telemetry.metrics.presentedExpired()
        reply(m.id, view)
        return
      }
      case 'auditQuery':
        reply(m.id, sidecar.telemetry.auditQuery(m.query))
        return
      case 'config':
        // a config this worker cannot apply is answered with the reason, which the primary logs
        sidecar.applyConfig(m.config, m.secretFiles).then(
          (ok) => reply(m.id, ok),
          (err: unknown) => reply(m.id, err instanceof Error ? err.message : String(err)),
        )
        return
      case 'live':
        live = m.on
        if (!live) liveEvents = []
        return
      case 'shutdown':
        exit(() => sidecar.shutdown(m.pod === true))
        return
      case 'close':
        // a second signal: skip what is left of the drain delay
        if (exiting) void sidecar.close()
        else exit(sidecar.close)
        return
    }
  })
  send({
    nhi: 'listening',
    http: fmt(sidecar.proxyAddress),
    ...(sidecar.httpsAddress ? { https: fmt(sidecar.httpsAddress) } : {}),
  })
}

export interface PodOptions {
  configPath?: string
  overrides?: ListenOverrides
  workers: number
  log: Logger
  /**
   * Aborted when the primary is told to stop while the pod starts: the workers that are starting are killed
   * (nothing of theirs is serving yet), those that already listen drain, and the start ends with
   * StoppedWhileStarting.
   */
  stop?: AbortSignal
}

export interface Pod {
  readonly proxyAddress: string
  readonly httpsAddress?: string
  readonly adminAddress: AddressInfo
  config(): Config
  reload(): Promise<boolean>
  /**
   * Settles only when the workers crash-loop (`workers_crash_loop`, logged): once every worker has been
   * stopped, with the error the process should exit with.
   */
  readonly failed: Promise<StartupError>
  shutdown(): Promise<void>
  close(): Promise<void>
}

interface Slot {
  worker: Worker | undefined
  listening: boolean
  /** when the worker reported it serves */
  listeningSince?: number
  /** early exits in a row of this slot's workers (WORKER_STABLE_MS): the next restart's backoff */
  failures: number
  /** the config the worker was started with */
  config?: Config
  /** why the worker could not start, as it reported it before exiting */
  failure?: { message: string; exitCode: 1 | 2 }
  /** the watchdog's ping waits for this worker's answer */
  pinged?: boolean
  /**
   * the scrape waiting for this worker's snapshot (true once one was applied): a scrape that gave up on it at
   * ADMIN_ANSWER_MS leaves it running, and the next scrapes wait on it rather than ask a stalled worker again
   */
  scraping?: Promise<boolean>
  /** the pod's admitted identities as this worker was last told them (PodMetrics.admittedVersion) */
  admittedSent?: number
  /**
   * the drain or close that came while the worker was starting: a message sent before its handler exists is
   * lost, so it is delivered when the worker reports it serves
   */
  held?: Command
}

/** The primary of `workers: N`. Rejects with a StartupError when a worker cannot start. */
export async function startPod(opts: PodOptions): Promise<Pod> {
  const { log } = opts
  // structured clone: a parsed config (numbers, arrays, nested objects) crosses as it is
  cluster.setupPrimary({ serialization: 'advanced' })
  const configPath = opts.configPath ? resolve(opts.configPath) : undefined
  let config = applyOverrides(
    configPath ? await loadOrFail(configPath) : configSchema.parse({}),
    opts.overrides,
  )
  /** the config the pod started with: its start-only settings stay until a restart (keepStartOnly) */
  const started = config
  // the listener's and upstreamTls's files checked once here: one line and exit 1, before any worker starts
  // or port is bound (each worker reads them again, with the same checks, when it starts)
  const listenerTls = config.listen.https ? await readListenerTls(config.listen.https) : undefined
  warnCertificateDates(opts.log, listenerTls?.cert, (await readUpstreamTls(config.upstreamTls))?.cert)
  let secretFiles: SecretFiles = await secretFilesAtStart(config)
  // the pod's own fingerprint key (without a fingerprintKeyFile), made here and given to every worker
  const fingerprintKey = podFingerprintKey()
  // the primary records no request: its telemetry is the pod's audit output and its own runtime metrics
  const telemetry = new Telemetry(config, {
    version: VERSION,
    audit: { onWriteError: auditWriteFailed(log) },
  })
  telemetry.configLoaded()
  // the signed agents' nonces of the whole pod, for the life of the primary: neither a replay on another
  // worker nor one after a reload (or a worker's restart) finds the nonce forgotten
  const nonces = new NonceCache(config.signedAgents.nonceCacheSize)
  // the pod's count of each token's clients, over every worker (anomalies.tokenSharedPeers); a reload that
  // changes the limit or the window starts it again, as a pipeline's own count does
  const podTokenWindows = (c: Config) =>
    new TokenPeerWindows(c.anomalies.tokenSharedPeers, c.anomalies.tokenSharedWindow)
  let tokenWindows = podTokenWindows(config)
  // the last good public keys of the pod, for a worker that starts while an IdP is down: the primary fetches
  // nothing itself (it would be one more client of every IdP), it keeps what the workers fetched
  const podKeys = new PodKeySets()
  const pod = new PodMetrics()
  const own = new PodExport()
  const slots: Slot[] = []
  let restarts = 0
  /** early exits over the pod within WORKER_STABLE_MS that make a crash loop */
  const crashLoopAt = crashLoopExits(opts.workers)
  /** when the pod's early worker exits were, within the last WORKER_STABLE_MS (crashLoopAt at most) */
  const earlyExits: number[] = []
  /** since when no worker has been serving, once the pod started (undefined while one serves) */
  let noneServingSince: number | undefined
  let crashLooped: ((err: StartupError) => void) | undefined
  const crashed = new Promise<StartupError>((done) => {
    crashLooped = done
  })
  let stopping = false
  let draining = false
  let nextId = 0
  const waiting = new Map<number, { done: (value: unknown) => void; worker: Worker }>()
  let listeners: { http: string; https?: string } | undefined
  let watching = false
  /** the reload waiting for the workers' answers: the config they were handed, and each worker asked */
  let reloading:
    | { config: Config; secretFiles: SecretFiles; asked: { worker: Worker; answer: Promise<unknown> }[] }
    | undefined

  const ask = (
    worker: Worker,
    command: Command & { id: number },
    timeoutMs = ASK_TIMEOUT_MS,
  ): Promise<unknown> =>
    new Promise((done) => {
      // given up one turn late: after a pause of the primary itself (a stopped VM, a long GC) the deadline
      // passes before the answers that came meanwhile are read, which the poll phase before setImmediate does
      const timer = setTimeout(() => setImmediate(() => finish(undefined)), timeoutMs)
      const finish = (value: unknown) => {
        clearTimeout(timer)
        waiting.delete(command.id)
        done(value)
      }
      waiting.set(command.id, { done: finish, worker })
      try {
        worker.send(command)
      } catch {
        finish(undefined)
      }
    })

  // the workers' upstream-failure lines, logged at the pod's interval: one line per interval, not one per worker
  const upstreamFailures = new UpstreamFailureThrottle(logUpstreamFailure(log))
  let startupFailed: ((err: StartupError | StoppedWhileStarting) => void) | undefined
  let allListening: (() => void) | undefined

  const fork = (index: number) => {
    const worker = cluster.fork({ [SLOT_ENV]: String(index + 1) })
    const slot: Slot = { worker, listening: false, failures: slots[index]?.failures ?? 0 }
    slots[index] = slot
    const start = () => {
      slot.config = config
      const keys = podKeys.of(keySources(config))
      worker.send({ nhi: 'start', config, secretFiles, fingerprintKey, keys } satisfies Command)
    }
    worker.on('message', (m: Report) => {
      if (m.nhi === 'nonce') {
        const admission = nonces.admit(m.key, m.until, Date.now())
        try {
          worker.send({ nhi: 'nonce', id: m.id, admission } satisfies Command)
        } catch {
          // the worker is exiting: nobody waits for the answer
        }
      } else if (m.nhi === 'tokenPeers') {
        const pairs = m.pairs
        for (let i = 0; i + 1 < pairs.length; i += 2) {
          const fingerprint = pairs[i]!
          if ((tokenWindows.add(fingerprint, pairs[i + 1]!) & OVER_LIMIT) === 0) continue
          if (!tokenWindows.report(fingerprint)) continue
          try {
            worker.send({ nhi: 'tokenShared', fingerprint } satisfies Command)
          } catch {
            // the worker is exiting
          }
        }
      } else if (m.nhi === 'keys') {
        const sources = keySources(config)
        if (reloading) for (const s of keySources(reloading.config)) sources.add(s)
        podKeys.learn(m, sources)
      } else if (m.nhi === 'hello') start()
      else if (m.nhi === 'audit') telemetry.audit.writeLines(m.lines)
      else if (m.nhi === 'failed') slot.failure = { message: m.message, exitCode: m.exitCode }
      else if (m.nhi === 'upstreamFailed') {
        const { reason, code, detail, unlogged } = m.line
        upstreamFailures.note(reason, code, detail, unlogged)
      } else if (m.nhi === 'live') for (const e of m.events) telemetry.live.publish(e)
      else if (m.nhi === 'reply') waiting.get(m.id)?.done(m.value)
      else if (m.nhi === 'listening') {
        slot.listening = true
        slot.listeningSince = Date.now()
        noneServingSince = undefined
        // the pod stops: nothing else it would be told matters any more
        if (slot.held) {
          worker.send(slot.held)
          slot.held = undefined
          return
        }
        // a reload asks only the workers serving when it starts, and the pod's config changes only once they
        // have all answered: this one was started with the config before it, whether the reload still waits
        // (it is asked too, and its answer counts in the reload's outcome) or has ended since
        if (reloading) {
          const { asked, ...next } = reloading
          asked.push({ worker, answer: ask(worker, { nhi: 'config', id: nextId++, ...next }) })
        } else if (slot.config !== config) {
          void ask(worker, { nhi: 'config', id: nextId++, config, secretFiles }).then((ok) => {
            if (ok === true || slot.worker !== worker) return
            log.error(
              { event: 'config_reload_incomplete', workers: 1, worker: index + 1 },
              'a worker did not apply the config',
            )
            replace(worker, ok)
          })
        }
        if (watching) worker.send({ nhi: 'live', on: true } satisfies Command)
        listeners ??= { http: m.http, ...(m.https ? { https: m.https } : {}) }
        // the start lasts until every slot listens, a replaced one with its new worker
        if (slots.every((s) => s.listening)) allListening?.()
      }
    })
    // a send to a worker that is just exiting fails with an 'error' event: its 'exit' handles the rest
    worker.on('error', (err) => log.debug({ event: 'worker_ipc_error', worker: index + 1, err: err.message }))
    worker.on('exit', (code, signal) => {
      // a worker exits 0 only after a drain or close: one that had started serving and was told to stop on
      // its own (a SIGTERM sent to it alone) is replaced, even while its siblings are still starting
      const drained = slot.listening && code === 0
      const early =
        !drained && (slot.listeningSince === undefined || Date.now() - slot.listeningSince < WORKER_STABLE_MS)
      slot.worker = undefined
      slot.listening = false
      if (!slots.some((s) => s.listening)) noneServingSince ??= Date.now()
      pod.drop(String(index + 1))
      for (const [id, w] of waiting) if (w.worker === worker) waiting.get(id)?.done(undefined)
      if (stopping) return
      if (startupFailed && !drained) {
        if (signal !== 'SIGTERM') {
          // the worker's own reason, printed once for the pod: its report may still be in the channel when
          // the exit is seen, and is read before the channel's end
          const failed = () =>
            startupFailed?.(
              new StartupError(
                slot.failure?.message ?? `worker ${index + 1} could not start (exit ${code ?? signal})`,
                slot.failure?.exitCode ?? (code === 1 ? 1 : 2),
              ),
            )
          if (worker.process.connected) worker.process.once('disconnect', failed)
          else failed()
          return
        }
        // A SIGTERM that came before the worker's first statement (Node's own start-up) ends it by the
        // signal. Sent to the whole group (systemd, `tini -g`), it reaches the primary too, which ends the
        // start within moments; sent to this worker alone, it is a stop of that worker, which is replaced as
        // one told to stop after it listened would be. Ending the pod with exit 0 instead would keep a pod
        // under `restartPolicy: OnFailure` down for a signal that was never meant for it. Not unref'd (nor
        // the restart after it): with every worker gone this way before one listened, nothing else keeps
        // the primary's start alive, and it would end with exit 0 and not a word.
        setTimeout(() => {
          if (!stopping && opts.stop?.aborted !== true) restartSlot(code, signal, early)
        }, GROUP_STOP_GRACE_MS)
        return
      }
      restartSlot(code, signal, early)
    })
    const restartSlot = (code: number | null, signal: string | null, early: boolean) => {
      let restartInMs = 0
      if (early) {
        // bounded: the exponent of a slot failing for days stays small
        slot.failures = Math.min(slot.failures + 1, 16)
        restartInMs = Math.min(RESTART_BACKOFF_MS * 2 ** (slot.failures - 1), RESTART_BACKOFF_CAP_MS)
        const now = Date.now()
        // at most crashLoopAt entries: the pod gives up at that many
        earlyExits.push(now)
        while (earlyExits[0]! <= now - WORKER_STABLE_MS) earlyExits.shift()
      } else slot.failures = 0
      if (earlyExits.length >= crashLoopAt) {
        log.error(
          {
            event: 'worker_exited',
            worker: index + 1,
            code,
            signal,
            ...(slot.failure ? { reason: slot.failure.message } : {}),
          },
          'a worker exited',
        )
        crashLoop(index, code, signal)
        return
      }
      restarts++
      log.error(
        {
          event: 'worker_exited',
          worker: index + 1,
          code,
          signal,
          restartInMs,
          ...(slot.failure ? { reason: slot.failure.message } : {}),
        },
        'a worker exited; starting a new one',
      )
      setTimeout(() => {
        if (stopping) return
        fork(index)
        log.info(
          { event: 'worker_restarted', worker: index + 1, pid: slots[index]?.worker?.process.pid },
          'a new worker is starting',
        )
      }, restartInMs)
    }
  }

  /**
   * Restarting does not help: the start fails with this, or a pod that started stops every worker (those
   * serving drain) and `failed` settles, on which the CLI exits.
   */
  const crashLoop = (index: number, code: number | null, signal: string | null) => {
    stopping = true
    const within = WORKER_STABLE_MS / 1000
    const message = `workers crash-loop: ${earlyExits.length} exits within ${within} s, each before serving ${within} s; stopping the pod`
    log.error(
      {
        event: 'workers_crash_loop',
        exits: earlyExits.length,
        withinMs: WORKER_STABLE_MS,
        restarts,
        worker: index + 1,
        code,
        signal,
      },
      message,
    )
    const err = new StartupError(message, 2)
    if (startupFailed) startupFailed(err)
    else crashLooped?.(err)
  }

  const killAll = () => {
    stopping = true
    for (const s of slots) s?.worker?.process.kill('SIGKILL')
  }
  /**
   * Sends a stop (`shutdown`: the drain; `close`: at once) to every worker that serves. One still starting
   * gets it once it listens (`starting: 'hold'`: a message sent before its handler exists is lost), or is
   * killed (`'kill'`: nothing of its serves yet). Resolves once every worker has exited; those left after
   * the drain and 5 s more are killed.
   */
  const stopWorkers = (command: Command, starting: 'hold' | 'kill'): Promise<void> => {
    stopping = true
    const exits = slots.flatMap((s) => (s?.worker ? [once(s.worker, 'exit')] : []))
    for (const s of slots) {
      const worker = s?.worker
      if (worker === undefined) continue
      if (!s.listening) {
        if (starting === 'kill') worker.process.kill('SIGKILL')
        else s.held = command
        continue
      }
      try {
        worker.send(command)
      } catch {
        // exiting already: its 'exit' comes all the same
      }
    }
    const { drainDelay, drain } = config.timeouts
    const timer = setTimeout(killAll, drainDelay + drain + 5_000)
    return Promise.all(exits).then(() => clearTimeout(timer))
  }
  const stopStarting = () => startupFailed?.(new StoppedWhileStarting())
  try {
    await new Promise<void>((ok, fail) => {
      startupFailed = fail
      allListening = ok
      if (opts.stop?.aborted) return fail(new StoppedWhileStarting())
      opts.stop?.addEventListener('abort', stopStarting, { once: true })
      for (let i = 0; i < opts.workers; i++) fork(i)
    })
  } catch (err) {
    // the listener is open once one worker listens: one that does may have requests in flight, and drains
    // as at a stop after the start
    if (err instanceof StoppedWhileStarting) {
      // a worker that served and was since drained and replaced (a SIGTERM to it alone) served all the same
      const served = listeners !== undefined
      await stopWorkers({ nhi: 'shutdown', pod: true }, 'kill')
      killAll()
      await telemetry.close()
      throw new StoppedWhileStarting(served)
    }
    killAll()
    await telemetry.close()
    throw err
  } finally {
    opts.stop?.removeEventListener('abort', stopStarting)
    startupFailed = undefined
    allListening = undefined
  }

  const live = () => slots.flatMap((s) => (s.worker && s.listening ? [s.worker] : []))

  const ready = async (): Promise<ReadyState> => {
    const states = (await Promise.all(
      slots.map((s) =>
        s.worker && s.listening ? ask(s.worker, { nhi: 'ready', id: nextId++ }, ADMIN_ANSWER_MS) : undefined,
      ),
    )) as (ReadyState | undefined)[]
    const serving = states.filter((s) => s?.ok).length
    // a worker that did not answer (starting, stalled) is for `listeners` and `workers` to report: it says
    // nothing about the upstream or the keys, which hold when they hold on every worker that answered
    const answered = states.filter((s) => s !== undefined)
    const every = (check: string) => answered.length > 0 && answered.every((s) => s.checks[check] === true)
    const checks = {
      config: true,
      listeners: states.every((s) => s !== undefined),
      draining,
      upstream: every('upstream'),
      jwks: every('jwks'),
      workers: serving === opts.workers,
    }
    const ok = !draining && checks.workers
    return {
      ok,
      checks,
      // gates and per-issuer key state as one worker reports them (every worker runs the same config)
      detail: {
        ...states.find((s) => s?.detail)?.detail,
        workers: { configured: opts.workers, ready: serving, restarts },
      },
    }
  }

  /**
   * The primary alone cannot fix a pod none of whose workers has served for longer than the longest backoff
   * (workers that hang before they listen, which neither a crash nor the watchdog catches): /healthz fails
   * then, so the kubelet's liveness probe restarts the container, as it would a single process that hung.
   */
  const health = () => {
    const since = noneServingSince
    const now = Date.now()
    if (stopping || since === undefined || now - since <= RESTART_BACKOFF_CAP_MS) return HEALTHY
    return {
      ok: false,
      error: `no worker has been serving for ${Math.round((now - since) / 1000)} s`,
    }
  }

  const snapshotOf = (s: Slot, since: number) =>
    ask(s.worker!, { nhi: 'scrape', id: nextId++, since }) as Promise<PodSnapshot | undefined>
  /** asks a worker for its snapshot and applies it as it arrives; true once one was applied */
  const refresh = async (s: Slot, label: string): Promise<boolean> => {
    try {
      const snapshot = await snapshotOf(s, pod.since(label))
      if (!snapshot) return false
      if (pod.apply(label, snapshot)) return true
      if (!s.worker) return false
      const whole = await snapshotOf(s, -1)
      return whole !== undefined && pod.apply(label, whole)
    } finally {
      s.scraping = undefined
    }
  }
  /**
   * Every serving worker learns which identities the pod admitted once they change: sent before the scrape
   * is answered, so it reaches a worker ahead of any connection the primary hands it after that (one channel).
   */
  const tellAdmitted = () => {
    let identities: string[] | undefined
    for (const s of slots) {
      if (!s.worker || !s.listening || s.admittedSent === pod.admittedVersion) continue
      identities ??= pod.admittedIdentities()
      try {
        s.worker.send({ nhi: 'podAdmitted', identities, startOver: pod.startedOver() } satisfies Command)
        s.admittedSent = pod.admittedVersion
      } catch {
        // the worker is exiting
      }
    }
  }
  const scrape = async (openMetrics: boolean) => {
    // A worker that does not answer within ADMIN_ANSWER_MS keeps in the merge the values of its last applied
    // snapshot (the merge holds them anyway): its counters neither vanish nor go back, which Prometheus
    // would read as a reset, and the pod's scrape is not lost with it. Its answer, when it comes, is applied
    // then, and shows at the next scrape. One question at a time per worker, so a stalled worker's queue
    // does not grow with the scrapes.
    const stale = slots.map((s) => s.worker !== undefined && s.listening)
    const answers = slots.map((s, i) => {
      const label = String(i + 1)
      if (!s.worker || !s.listening) {
        pod.drop(label)
        return undefined
      }
      s.scraping ??= refresh(s, label)
      return s.scraping.then((applied) => {
        if (applied) stale[i] = false
      })
    })
    let timer: NodeJS.Timeout | undefined
    await Promise.race([
      Promise.all(answers),
      // one turn late, as in ask(): answers read in the same poll phase as the deadline still count
      new Promise<void>((done) => {
        timer = setTimeout(() => setImmediate(done), ADMIN_ANSWER_MS)
      }),
    ])
    clearTimeout(timer)
    // one that exited meanwhile left the merge (its counts kept where its series live on): nothing of it is stale
    slots.forEach((s, i) => {
      if (!s.listening) stale[i] = false
    })
    pod.apply('primary', own.snapshot(await telemetry.metrics.pieces(), pod.since('primary')))
    const body = pod.render(
      { service: config.service, limits: tableLimits(config), restarts, stale },
      openMetrics,
    )
    tellAdmitted()
    return { contentType: openMetrics ? OPENMETRICS_CONTENT_TYPE : TEXT_CONTENT_TYPE, body }
  }

  /** every serving worker's answer to one question (those that did not answer in time left out) */
  const askAll = async <T>(command: (id: number) => Command & { id: number }): Promise<T[]> =>
    (await Promise.all(live().map((w) => ask(w, command(nextId++), ADMIN_ANSWER_MS)))).filter(
      (v): v is T => v !== undefined && v !== null,
    )
  const identities = async (sort: IdentitySort | undefined): Promise<IdentitiesView> =>
    mergeIdentitiesViews(await askAll<WorkerIdentitiesView>((id) => ({ nhi: 'identities', id, sort })), {
      now: Date.now(),
      sort,
      maxIdentities: config.metrics.maxIdentities,
      ...(config.cost?.currency ? { currency: config.cost.currency } : {}),
    })
  const auditQuery = async (query: AuditQuery): Promise<AuditRecord[]> =>
    mergeAuditRecords(await askAll<AuditRecord[]>((id) => ({ nhi: 'auditQuery', id, query })), query)

  const adminToken = new TokenFile(log)
  await adminToken.load(config.adminAccess.tokenFile)
  const admin = createAdminServer({
    ...splitAddress(config.admin),
    telemetry,
    access: () => ({ token: () => adminToken.get(), allowedHosts: config.adminAccess.allowedHosts }),
    ready,
    health,
    scrape,
    identities,
    auditQuery,
    effectiveConfig: () => redactConfig(config),
  })
  let adminAddress: AddressInfo
  try {
    adminAddress = await admin.listen()
  } catch (err) {
    killAll()
    await telemetry.close()
    // the words a one-process start uses, so scripts and people read the same line either way
    throw new StartupError(`cannot listen on the admin address ${config.admin}: ${listenProblem(err)}`, 2)
  }
  void telemetry.startProcessMetrics()
  const livePoll = setInterval(() => {
    const now = telemetry.liveStats().subscribers > 0
    if (now === watching) return
    watching = now
    for (const w of live()) w.send({ nhi: 'live', on: now } satisfies Command)
  }, LIVE_POLL_MS)
  livePoll.unref()
  // a worker whose event loop is stuck takes connections it never serves and keeps /readyz at 503, while
  // /healthz (the primary's) stays 200: nothing but the primary can notice it and start another
  const watchdog = setInterval(() => {
    for (const s of slots) {
      const worker = s.worker
      if (worker === undefined || !s.listening || s.pinged || stopping) continue
      s.pinged = true
      void ask(worker, { nhi: 'ping', id: nextId++ }).then((answer) => {
        if (s.worker !== worker) return
        s.pinged = false
        if (answer === undefined) replace(worker, undefined, true)
      })
    }
  }, WATCHDOG_MS)
  watchdog.unref()

  /**
   * A worker that did not apply a reloaded config the other workers took would go on serving an older one (a
   * revoked key still accepted there): it is replaced, and its successor starts with the current config, as
   * after a crash. One that answered that it could not apply it drains first, as on SIGTERM; one that did not
   * answer at all (stalled past the answer deadline) is killed, since it would not act on a drain either.
   * The watchdog replaces a worker that stopped answering its pings the same way (`stalled`). Once per
   * worker: a stalled one can miss a reload and a ping alike.
   */
  const replaced = new WeakSet<Worker>()
  const replace = (worker: Worker, answer: unknown, stalled = false) => {
    const index = slots.findIndex((s) => s.worker === worker)
    if (index === -1 || stopping || replaced.has(worker)) return
    replaced.add(worker)
    log.error(
      {
        event: 'worker_replaced',
        worker: index + 1,
        reason: answer === undefined ? 'no_answer' : 'not_applied',
      },
      stalled
        ? 'replacing a worker that stopped answering'
        : 'replacing a worker that did not apply the config',
    )
    if (answer !== undefined) {
      try {
        worker.send({ nhi: 'shutdown' } satisfies Command)
        return
      } catch {
        // gone already: its exit starts the successor
      }
    }
    worker.process.kill('SIGKILL')
  }

  // validated once here: an invalid file is reported once and no worker sees it
  const reload = async (): Promise<boolean> => {
    if (!configPath) return false
    const result = await loadForReload(configPath, log, telemetry)
    if (!result) return false
    const { config: next, changed: startOnly } = keepStartOnly(
      started,
      applyOverrides(result.config, opts.overrides),
    )
    // read once for the pod, and handed to every worker with the config: a file that cannot be read is one
    // failure here, not one per worker, and the pod keeps its config
    let nextSecretFiles: SecretFiles
    try {
      nextSecretFiles = await readSecretFiles(next)
    } catch (e) {
      log.error({ event: 'config_reload_failed' }, `${configPath}: ${(e as Error).message}`)
      telemetry.configReloaded('failure')
      return false
    }
    const asked = live().map((worker) => ({
      worker,
      answer: ask(worker, { nhi: 'config', id: nextId++, config: next, secretFiles: nextSecretFiles }),
    }))
    reloading = { config: next, secretFiles: nextSecretFiles, asked }
    let applied: unknown[]
    // a worker that starts serving while these are awaited is added to `asked`
    do applied = await Promise.all(asked.map((a) => a.answer))
    while (applied.length < asked.length)
    // no await from here to `config = next`: a worker that starts serving after this line compares its
    // config with the pod's
    reloading = undefined
    const outcome = reloadOutcome(applied)
    if (!outcome.applied) {
      log.error(
        { event: 'config_reload_failed' },
        `${configPath}: ${outcome.reasons[0] ?? 'no worker answered'}`,
      )
      telemetry.configReloaded('failure')
      for (const i of outcome.replace) replace(asked[i]!.worker, applied[i])
      return false
    }
    if (startOnly.includes('workers'))
      log.warn({ event: 'workers_unchanged' }, 'workers is read at start only; restart to change it')
    warnStartOnly(
      log,
      startOnly.filter((setting) => setting !== 'workers'),
    )
    if (
      next.anomalies.tokenSharedPeers !== config.anomalies.tokenSharedPeers ||
      next.anomalies.tokenSharedWindow !== config.anomalies.tokenSharedWindow
    )
      tokenWindows = podTokenWindows(next)
    config = next
    secretFiles = nextSecretFiles
    // as each worker's KeyMemory does: an issuer removed and added again later starts without its old keys
    podKeys.retain(keySources(next))
    nonces.resize(next.signedAgents.nonceCacheSize)
    await adminToken.load(next.adminAccess.tokenFile)
    logRecorderFailures(log, await telemetry.reconfigure(next))
    telemetry.configReloaded('success')
    for (const d of result.warnings) log.warn(formatDiagnostic(d))
    if (outcome.replace.length > 0) {
      const { reasons } = outcome
      log.error(
        {
          event: 'config_reload_incomplete',
          workers: outcome.replace.length,
          ...(reasons.length > 0 ? { reasons } : {}),
        },
        'some workers did not apply the config',
      )
      for (const i of outcome.replace) replace(asked[i]!.worker, applied[i])
    }
    log.info(
      {
        event: 'config_reloaded',
        rules: next.identities.length,
        workers: applied.length - outcome.replace.length,
      },
      'config reloaded',
    )
    return true
  }
  const serialReload = serializeReloads(reload)
  const watcher: ConfigWatcher | undefined = configPath
    ? watchConfig(configPath, () => void serialReload(), {
        onError: (message, err) => log.warn({ err }, message),
      })
    : undefined

  let closing: Promise<void> | undefined
  const stop = (command: Command, starting: 'hold' | 'kill' = 'hold'): Promise<void> => {
    draining = true
    watcher?.close()
    clearInterval(livePoll)
    clearInterval(watchdog)
    const exited = stopWorkers(command, starting)
    closing ??= (async () => {
      await exited
      await admin.close()
      logRecorderFailures(log, await telemetry.close())
    })()
    return closing
  }
  // a worker still starting then is one more that would fail: killed, not waited for
  const failed = crashed.then((err) =>
    stop({ nhi: 'shutdown', pod: true }, 'kill').then(
      () => err,
      () => err,
    ),
  )

  return {
    proxyAddress: listeners!.http,
    ...(listeners?.https ? { httpsAddress: listeners.https } : {}),
    adminAddress,
    config: () => config,
    reload: serialReload,
    failed,
    shutdown() {
      if (!draining) {
        const { drainDelay, drain } = config.timeouts
        log.info(
          { event: 'draining', drainDelayMs: drainDelay, drainMs: drain, workers: live().length },
          'draining every worker: /readyz answers 503, listeners accept with Connection: close until the drain delay ends',
        )
      }
      return stop({ nhi: 'shutdown', pod: true })
    },
    close: () => stop({ nhi: 'close' }),
  }
}
