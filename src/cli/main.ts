#!/usr/bin/env node
import { isIP } from 'node:net'
// nhi-proxy command line (docs/reference.md "Command line"). Exit codes: 0 ok, 1 invalid input/config, 2 runtime
// failure, 3 an internal error of `run`.
import { Command, InvalidArgumentError, Option } from 'commander'
import pino from 'pino'
import { formatDiagnostic, loadConfigFile } from '../config/loader.ts'
import { address, type Config } from '../config/schema.ts'
import { MAX_WORKERS, WORKERS_PROBLEM, workerCount } from '../config/workers.ts'
import { tuneHeapGrowth } from '../runtime-heap.ts'
import { StartupError, StoppedWhileStarting, splitAddress } from '../startup.ts'
import { MAX_TIMER_MS, parseDuration } from '../util/duration.ts'
import { listenProblem } from '../util/listen-problem.ts'
import { VERSION } from '../version.ts'
import { exitFlushed } from './exit-flushed.ts'
import { claimStopSignals, exitOnSecondSignal, stopSignalsDispatched } from './stop-signals.ts'

// Subcommands other than `run` are imported when chosen: the sidecar's cold start loads only what it runs.

/**
 * A report's lines. A reader that stops early (`| head`) closes the pipe: the rest is not written, and the
 * command ends as it would have (its exit code says whether the checks passed), without a stack trace.
 */
let readerGone = false
const out = (s: string) => {
  if (readerGone) return
  process.stdout.write(s.endsWith('\n') ? s : `${s}\n`)
}
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code !== 'EPIPE') throw err
  readerGone = true
})

function collect(value: string, previous: string[]): string[] {
  return [...previous, value]
}

/** `--allow-host`: a host name as a Host header carries it, without port or scheme, lower-cased */
function hostNameFlag(value: string, previous: string[]): string[] {
  if (!/^[a-z0-9_-]+(\.[a-z0-9_-]+)*$/i.test(value))
    throw new InvalidArgumentError('expected a host name without port or scheme, e.g. fleet.example.internal')
  return [...previous, value.toLowerCase()]
}

/** an IP address, as a socket's peer would be */
function ipAddress(value: string): string {
  if (isIP(value) === 0) throw new InvalidArgumentError('expected an IP address, e.g. 10.0.0.7 or ::1')
  return value
}

/** HOST:PORT as the config file's addresses are checked, so a bad port is a usage error rather than Node's */
function hostPort(value: string): string {
  const r = address.safeParse(value)
  if (!r.success) throw new InvalidArgumentError(r.error.issues[0]?.message ?? 'expected HOST:PORT')
  return value
}

/** `--workers`: a positive whole number up to MAX_WORKERS, or auto */
function workersFlag(value: string): number | 'auto' {
  if (value === 'auto') return 'auto'
  const n = Number(value)
  // one message for every slip, naming the whole range and the other spelling
  if (!Number.isInteger(n) || n <= 0 || n > MAX_WORKERS) throw new InvalidArgumentError(WORKERS_PROBLEM)
  return n
}

function positiveInt(value: string): number {
  const n = Number(value)
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError('expected a positive whole number')
  return n
}

/** `demo --duration`: a positive duration a timer can hold (24d at most; without it, until Ctrl-C). */
function demoDuration(value: string): number {
  const ms = positiveDuration(value)
  if (ms > MAX_TIMER_MS)
    throw new InvalidArgumentError('at most 24d (leave --duration out to run until Ctrl-C)')
  return ms
}

/** a deadline: a longer one than a timer holds would fire after 1 ms, failing every query at once */
function deadline(value: string): number {
  const ms = positiveDuration(value)
  if (ms > MAX_TIMER_MS) throw new InvalidArgumentError('at most 24d')
  return ms
}

/** A duration as config files write them ("20s", "500ms", "5m"), or a bare number of seconds. */
function positiveDuration(value: string): number {
  const text = value.trim()
  const ms = parseDuration(/^\d+(\.\d+)?$/.test(text) ? Number(text) : text)
  if (ms === undefined || ms <= 0) {
    throw new InvalidArgumentError('expected a duration such as 20s, 500ms or 5m (or a number of seconds)')
  }
  return ms
}

/** Operational logs go to stderr as JSON lines; stdout is reserved for the audit trail. */
function operationalLogger() {
  const level = (process.env['NHI_LOG_LEVEL'] || 'info').toLowerCase()
  if (level !== 'silent' && !(level in pino.levels.values)) {
    process.stderr.write(
      `nhi-proxy: NHI_LOG_LEVEL "${level}" is not a log level (trace, debug, info, warn, error, silent)\n`,
    )
    process.exit(1)
  }
  return pino({ level, base: { svc: 'nhi-proxy' } }, stderrLines)
}

/**
 * The operational log's destination: stderr as Node's own stream, which waits for a pipe whose reader is slow
 * (queueing the lines) instead of dropping them. Not pino's destination (sonic-boom), which keeps a line
 * stderr refused and, at a fatal line's flush, retries it every 100 ms forever: a sidecar whose log reader
 * went away (EPIPE) never finished its shutdown. A reader that is gone is an 'error' of the stream, ignored
 * below: the lines are lost, the process stays in charge of itself.
 */
const stderrLines = {
  write(line: string): void {
    process.stderr.write(line)
  },
}
// no reader (EPIPE) is not an error of ours, for the log and for the signal lines alike
process.stderr.on('error', () => {})

/**
 * A bug that escaped every handler (an exception thrown in an event listener, a promise rejected with no one
 * to catch it): one `internal_error` line with the error and its stack, then exit 3, apart from 1 (invalid
 * config) and 2 (a runtime failure the operator can act on). Carrying on would serve from a state nothing
 * checked; the container is restarted (under `workers: N` the primary replaces the worker).
 */
function exitOnInternalError(
  log: ReturnType<typeof operationalLogger>,
): (worker: ReturnType<typeof operationalLogger>) => void {
  let logger = log
  let dying = false
  const die = (err: unknown) => {
    // while the line goes out (exitFlushed), a further error says nothing more
    if (dying) return
    dying = true
    try {
      logger.fatal({ event: 'internal_error', err }, 'internal error: nhi-proxy exits')
    } catch {
      process.stderr.write(`nhi-proxy: internal error: ${String(err)}\n`)
    }
    exitFlushed(3)
  }
  process.on('uncaughtException', die)
  process.on('unhandledRejection', die)
  // a worker's line names its slot, as every other line it writes does
  return (worker) => {
    logger = worker
  }
}

/** What a signal stops: `shutdown` drains (the drain delay, then in-flight requests), `close` stops at once. */
interface Stoppable {
  close: () => Promise<void>
  shutdown?: () => Promise<void>
  reload?: () => Promise<boolean>
}

/**
 * SIGTERM/SIGINT: `shutdown` then exit 0; a second signal skips what is left of the drain delay (`close`).
 * SIGHUP (with `reloads`) reloads the config. The stop signals are caught from the bin's first statement
 * (stop-signals.ts): Node's default action would end a process still loading by the signal, and kill one
 * whose listeners are open but whose handlers are not yet in place, cutting whatever it had accepted. A stop
 * signal that arrives while the process starts ends the start: `beforeStarting` exits 0 at the next step,
 * `stopping` aborts a sidecar's start before it listens, and one already listening by then (`serving`) drains
 * as always. A second one during startup exits at once (a start that hangs can still be stopped).
 */
function holdSignals(opts: { reloads: boolean }): {
  /** aborted by a stop signal that came before `serving` */
  stopping: AbortSignal
  /** exits 0 when a stop signal came, saying so (`outcome`: what the start had done; by default nothing) */
  beforeStarting(outcome?: string): void
  serving(target: Stoppable): void
} {
  let target: Stoppable | undefined
  let held: string | undefined
  let stopping = false
  const startStopped = new AbortController()
  const beforeStarting = (outcome = 'exiting before serving') => {
    if (held === undefined) return
    process.stderr.write(`nhi-proxy: ${held} while starting, ${outcome}\n`)
    process.exit(0)
  }
  const stop = (signal: string) => {
    if (target === undefined) {
      if (held !== undefined) exitOnSecondSignal(signal)
      held = signal
      startStopped.abort()
      return
    }
    if (stopping) {
      void target.close()
      return
    }
    stopping = true
    process.stderr.write(`nhi-proxy: ${signal}, draining\n`)
    const stopped = target.shutdown ? target.shutdown() : target.close()
    stopped.then(
      () => exitFlushed(0),
      () => exitFlushed(2),
    )
  }
  claimStopSignals(stop)
  // a reload asked for during startup has nothing to do: the config is being read right now
  if (opts.reloads) process.on('SIGHUP', () => void target?.reload?.())
  return {
    stopping: startStopped.signal,
    beforeStarting,
    serving(t) {
      target = t
      if (held !== undefined) stop(held)
    },
  }
}

/** A start that failed: why, on stderr, then exit 1 or 2. Nothing may follow a call. */
function fail(err: unknown): void {
  if (err instanceof StartupError) {
    process.stderr.write(`nhi-proxy: ${err.message}\n`)
    exitFlushed(err.exitCode)
    return
  }
  process.stderr.write(`nhi-proxy: ${(err as Error).message ?? String(err)}\n`)
  exitFlushed(2)
}

/**
 * The config file, loaded once for `workers` and then handed to the sidecar; undefined when there is none or
 * it does not load (the single-process start then loads it again and reports why, exactly as without
 * `workers`). Its warnings are logged here, once, as a reload logs them: what `check` warns about is
 * worth a line in the sidecar's own log too.
 */
async function preloadConfig(path: string | undefined, log: pino.Logger): Promise<Config | undefined> {
  if (!path) return undefined
  const result = await loadConfigFile(path, { checkFiles: 'start' })
  if (!result.ok) return undefined
  for (const d of result.warnings) log.warn(formatDiagnostic(d))
  return result.config
}

/**
 * Whether this is a worker process of `workers: N`. The primary forks every worker with NHI_WORKER_SLOT set
 * (src/workers.ts), so only then is the pod code (and node:cluster, ≈ 8 ms to load) imported to ask cluster
 * itself; a one-process start loads neither.
 */
async function isClusterWorker(): Promise<boolean> {
  if (process.env['NHI_WORKER_SLOT'] === undefined) return false
  const { isWorkerProcess } = await import('../workers.ts')
  return isWorkerProcess()
}

const program = new Command()
program
  .name('nhi-proxy')
  .description(
    'HTTP reverse-proxy sidecar that attributes every request to a person or a non-human identity ' +
      '(service, job, bot, AI agent) and exports per-identity metrics, an audit trail and a live view.',
  )
  .version(VERSION, '-v, --version')
  .showHelpAfterError('(run with --help for usage)')
  .addHelpText(
    'after',
    `
Quick start:
  nhi-proxy demo                                   everything on loopback, no files needed
  nhi-proxy run -c config/nhi-proxy.yaml           in front of your service
  nhi-proxy check config/nhi-proxy.yaml            validate rules (FILE:LINE:COL errors)
  nhi-proxy explain -c rules.yaml --ua 'GPTBot/1.2' --path /docs   why a request gets its identity

Exit codes: 0 ok, 1 invalid input or config, 2 runtime failure (address in use, a listener that cannot start),
3 an internal error of run (a bug: its internal_error line says where).`,
  )

program
  .command('run')
  .description('run the sidecar: proxy listener(s), admin endpoints, hot-reloaded identity rules')
  .option('-c, --config <file>', 'config file (default: $NHI_PROXY_CONFIG; none → built-in defaults)')
  .option('--listen <addr>', 'HTTP listen address, overrides listen.http (e.g. 0.0.0.0:8080)')
  .option('--upstream <url>', 'upstream base URL, overrides upstream (e.g. http://127.0.0.1:3000)')
  .option('--admin <addr>', 'admin listen address for /metrics, /ui…, overrides admin (e.g. 0.0.0.0:9464)')
  .option(
    '--workers <n>',
    'proxy worker processes, a number or auto (one per core), overrides workers (default 1: one process)',
    workersFlag,
  )
  .addHelpText(
    'after',
    `
Signals: SIGHUP reloads the config (so does any change to the file or its ConfigMap directory);
SIGTERM: /readyz turns 503, the listeners keep accepting (Connection: close) for timeouts.drainDelay,
then in-flight requests get up to timeouts.drain; exit 0. A second signal skips the rest of the delay.

Examples:
  nhi-proxy run -c config/nhi-proxy.yaml
  nhi-proxy run --upstream http://127.0.0.1:3000 --listen 0.0.0.0:8080 --admin 0.0.0.0:9464
  NHI_LOG_LEVEL=debug nhi-proxy run -c /etc/nhi-proxy/nhi-proxy.yaml --workers auto`,
  )
  // `run config.yaml` is the likeliest slip: answer it with the -c spelling instead of "too many arguments"
  .allowExcessArguments()
  .action(
    async (
      o: {
        config?: string
        listen?: string
        upstream?: string
        admin?: string
        workers?: number | 'auto'
      },
      cmd: Command,
    ) => {
      if (cmd.args.length > 0) {
        cmd.error(`error: run takes no arguments; for a config file: nhi-proxy run -c ${cmd.args[0]}`)
      }
      // the sidecar's modules load while the config file is read and parsed, not after
      const runtime = import('../runtime.ts')
      const log = operationalLogger()
      const logInternalErrorsTo = exitOnInternalError(log)
      tuneHeapGrowth()
      const configPath = o.config ?? process.env['NHI_PROXY_CONFIG']
      const overrides = { listen: o.listen, upstream: o.upstream, admin: o.admin, workers: o.workers }
      let signals: ReturnType<typeof holdSignals> | undefined
      let worker = false
      try {
        if (await isClusterWorker()) {
          worker = true
          const { runWorker } = await import('../workers.ts')
          // the slot as a number, as the primary's lines about the worker carry it
          const workerLog = log.child({ worker: Number(process.env['NHI_WORKER_SLOT']) })
          logInternalErrorsTo(workerLog)
          return await runWorker(workerLog)
        }
        signals = holdSignals({ reloads: true })
        signals.beforeStarting()
        const preloaded = await preloadConfig(configPath, log)
        signals.beforeStarting()
        const setting = o.workers ?? preloaded?.workers ?? 1
        const workers = workerCount(setting)
        if (workers > 1) {
          const { startPod } = await import('../workers.ts')
          const pod = await startPod({ configPath, overrides, workers, log, stop: signals.stopping })
          const admin = `http://${fmtHost(pod.adminAddress)}`
          log.info(
            {
              event: 'started',
              version: VERSION,
              workers,
              listen: pod.proxyAddress,
              https: pod.httpsAddress,
              admin: fmtHost(pod.adminAddress),
              upstream: pod.config().upstream,
              metrics: `${admin}/metrics`,
              ui: `${admin}/ui`,
            },
            'nhi-proxy started',
          )
          signals.serving(pod)
          // workers that crash-loop: exit non-zero, so the container is restarted (workers_crash_loop says why)
          void pod.failed.then((err) => exitFlushed(err.exitCode))
          return
        }
        const { startSidecar } = await runtime
        signals.beforeStarting()
        const sidecar = await startSidecar({
          configPath,
          ...(preloaded ? { preloaded } : {}),
          overrides,
          log,
          stop: signals.stopping,
        })
        const admin = `http://${fmtHost(sidecar.adminAddress)}`
        log.info(
          {
            event: 'started',
            version: VERSION,
            listen: fmtHost(sidecar.proxyAddress),
            https: sidecar.httpsAddress ? fmtHost(sidecar.httpsAddress) : undefined,
            admin: fmtHost(sidecar.adminAddress),
            upstream: sidecar.config().upstream,
            metrics: `${admin}/metrics`,
            ui: `${admin}/ui`,
          },
          'nhi-proxy started',
        )
        signals.serving(sidecar)
      } catch (err) {
        if (err instanceof StoppedWhileStarting) {
          signals?.beforeStarting(
            err.served ? 'exiting after draining the workers already serving' : undefined,
          )
          process.stderr.write(`nhi-proxy: ${err.message}\n`)
          process.exit(0)
        }
        if (worker) {
          // the primary prints it once for the pod
          const { reportStartFailure } = await import('../workers.ts')
          const exitCode = err instanceof StartupError ? err.exitCode : 2
          if (reportStartFailure((err as Error).message ?? String(err), exitCode)) return
        }
        fail(err)
      }
    },
  )

program
  .command('check')
  .description(
    'validate config files; problems as FILE:LINE:COL message (hint), schema errors first; exit 1 on errors',
  )
  .addHelpText(
    'after',
    `
Files the config names (jwksFile, secretFile, caFile, bearerTokenFile, listen.https cert/key/clientCA,
upstreamTls ca/cert/key, apiKeys.fingerprintKeyFile, adminAccess.tokenFile) must exist, relative paths from
the current directory as the sidecar reads them. An absolute path whose directory
does not exist here either (a secret mounted only where the sidecar runs) is not reported.
The listen.https and upstreamTls files are read as run reads them at start: what run refuses (not PEM,
a key for another certificate, an encrypted key) is an error, a certificate outside its dates a warning.

Examples:
  nhi-proxy check config/nhi-proxy.yaml
  nhi-proxy check -c config/nhi-proxy.yaml
  nhi-proxy check config/examples/kubernetes-sidecar.yaml config/examples/mesh-xfcc.yaml`,
  )
  .argument('[files...]', 'config files (default: $NHI_PROXY_CONFIG or config/nhi-proxy.yaml)')
  // `run -c FILE` is how the sidecar is started, so `check -c FILE` is what an operator types next
  .option(
    '-c, --config <file>',
    'a config file, as run takes it (repeatable; the same as naming it)',
    collect,
    [],
  )
  .action(async (files: string[], o: { config: string[] }) => {
    const { runCheck } = await import('./check.ts')
    process.exitCode = await runCheck([...o.config, ...files], out)
  })

program
  .command('explain')
  .description(
    'show the identity a request would get: evidence, every rule tried and why, the policy decision',
  )
  .option('-c, --config <file>', 'config file (default: $NHI_PROXY_CONFIG; none → built-in defaults)')
  .option('-H, --header <header>', "request header 'Name: value' (repeatable)", collect, [])
  .option('--token <jwt>', 'bearer token (verified against the configured issuers)')
  .option('--cert <file>', 'client certificate PEM file (as if presented over mTLS)')
  .option('--ua <user-agent>', 'user agent')
  .option('--method <method>', 'HTTP method', 'GET')
  .option('--path <path>', 'request path', '/')
  .option('--remote-addr <ip>', 'client address (an IPv4 or IPv6 address)', ipAddress, '127.0.0.1')
  .option('--json', 'machine-readable output')
  .addHelpText(
    'after',
    `
Examples:
  nhi-proxy explain -c config/nhi-proxy.yaml --ua 'GPTBot/1.2' --path /docs --remote-addr 20.171.206.7
  nhi-proxy explain -c config/nhi-proxy.yaml --token "$(cat token.jwt)" --method POST --path /orders
  nhi-proxy explain -c config/nhi-proxy.yaml --cert client.pem -H 'X-Request-Id: 42' --json`,
  )
  .action(
    async (o: {
      config?: string
      header: string[]
      token?: string
      cert?: string
      ua?: string
      method: string
      path: string
      remoteAddr: string
      json?: boolean
    }) => {
      const { runExplain } = await import('./explain.ts')
      process.exitCode = await runExplain(
        {
          config: o.config ?? (process.env['NHI_PROXY_CONFIG'] || undefined),
          headers: o.header,
          token: o.token,
          cert: o.cert,
          ua: o.ua,
          method: o.method,
          path: o.path,
          remoteAddr: o.remoteAddr,
          json: o.json === true,
        },
        out,
      )
    },
  )

program
  .command('test')
  .description('run rule unit tests (YAML: requests + expected identity/kind/verified/decision)')
  .argument('<files...>', 'rule test files, e.g. config/examples/*.test.yaml')
  .addHelpText(
    'after',
    `
Exit 1 when a test fails, a file does not load, or a file has no test cases.

Example:
  nhi-proxy test config/examples/*.test.yaml`,
  )
  .action(async (files: string[]) => {
    const { runRuleTests } = await import('./test.ts')
    process.exitCode = await runRuleTests(files, out)
  })

program
  .command('demo')
  .description(
    'built-in upstream + synthetic traffic (humans, services, jobs, bots, AI agents) through a real proxy',
  )
  .option('--listen <addr>', 'proxy HTTP address', hostPort, '127.0.0.1:8080')
  .option('--https <addr>', 'proxy mTLS address', hostPort, '127.0.0.1:8443')
  .option('--admin <addr>', 'admin address (/metrics, /ui)', hostPort, '127.0.0.1:9464')
  .option(
    '--idp <addr>',
    'demo identity provider (JWKS and sample tokens for curl)',
    hostPort,
    '127.0.0.1:9400',
  )
  .addOption(new Option('--rate <n>', 'synthetic requests per second').argParser(positiveInt).default(25))
  .option(
    '--duration <duration>',
    'stop after this long, e.g. 20s or 5m, or a number of seconds, at most 24d (default: run until Ctrl-C)',
    demoDuration,
  )
  .option('--audit', 'print the audit trail (JSON lines) to stdout')
  .addHelpText(
    'after',
    `
Examples:
  nhi-proxy demo                                    then open the printed live-view URL
  nhi-proxy demo --rate 100 --duration 2m --audit > audit.jsonl`,
  )
  .action(
    async (o: {
      listen: string
      https: string
      admin: string
      idp: string
      rate: number
      duration?: number
      audit?: boolean
    }) => {
      try {
        const signals = holdSignals({ reloads: false })
        const { runDemo } = await import('../demo/demo.ts')
        await stopSignalsDispatched()
        signals.beforeStarting()
        const demo = await runDemo({ ...o, audit: o.audit === true, log: operationalLogger(), print: out })
        signals.serving(demo)
        if (o.duration) {
          setTimeout(() => {
            demo.close().then(
              () => exitFlushed(0),
              () => exitFlushed(2),
            )
          }, o.duration).unref()
        }
      } catch (err) {
        fail(err)
      }
    },
  )

program
  .command('demo-idp')
  .description(
    "the demo's identity provider alone: a JWKS and sample tokens on loopback, to try JWT attribution " +
      'with your own config and no cloud IdP (demo keys, regenerated at every start)',
  )
  .option('--listen <addr>', 'address of the JWKS and token endpoints', hostPort, '127.0.0.1:9400')
  .addHelpText(
    'after',
    `
Tokens: GET /tokens/github?repository=acme/web, /tokens/kubernetes?ns=NS&sa=SA, /tokens/auth0-client,
/tokens/auth0-user, /tokens/delegated?email=…&actor=… (RFC 8693 act), /tokens/expired, /tokens/unknown-kid,
/tokens/bound. They carry the real issuers' iss values and aud "checkout"; point an issuer's jwksUri at the
printed JWKS to verify them. A Web Bot Auth key directory is at /.well-known/http-message-signatures-directory.

Example:
  nhi-proxy demo-idp &
  curl -s 'http://127.0.0.1:9400/tokens/github?repository=acme/web'`,
  )
  .action(async (o: { listen: string }) => {
    try {
      const signals = holdSignals({ reloads: false })
      const { AUDIENCE, DemoIdp, ISSUERS, SAMPLES } = await import('../demo/idp.ts')
      await stopSignalsDispatched()
      signals.beforeStarting()
      const { host, port } = splitAddress(o.listen)
      const idp = await DemoIdp.start(host, port).catch((err: unknown) => {
        throw new StartupError(`cannot listen on ${o.listen}: ${listenProblem(err)}`, 2)
      })
      out('nhi-proxy demo identity provider (demo keys: never trust them outside a try-out)')
      out(`  jwks      ${idp.jwksUri}`)
      out(`  tokens    ${idp.tokensUrl}/{${SAMPLES.join(',')}}`)
      for (const [name, iss] of Object.entries(ISSUERS)) out(`  issuer    ${iss} (${name})`)
      out(`  audience  ${AUDIENCE}`)
      signals.serving(idp)
    } catch (err) {
      fail(err)
    }
  })

program
  .command('schema')
  .description('print the JSON Schema of the config file (for yaml-language-server and editors)')
  .addHelpText(
    'after',
    `
Example:
  nhi-proxy schema > nhi-proxy.schema.json
  then, first line of the config: # yaml-language-server: $schema=./nhi-proxy.schema.json`,
  )
  .action(async () => {
    const { runSchema } = await import('./schema.ts')
    process.exitCode = runSchema(out)
  })

const prometheusOption = () =>
  new Option('--prometheus <url>', 'Prometheus (or Thanos/Mimir) base URL, e.g. http://prometheus:9090')
    .env('NHI_PROMETHEUS_URL')
    .makeOptionMandatory()
const queryTimeoutOption = () =>
  new Option('--timeout <duration>', 'deadline of each Prometheus query')
    .argParser(deadline)
    .default(10_000, '10s')

program
  .command('inventory')
  .description(
    'every non-human identity the sidecars saw in a window, from Prometheus: kind, source, verified, ' +
      'first/last seen, services called, credential expiry, error ratio; dormant ones flagged',
  )
  .addOption(prometheusOption())
  .addOption(
    new Option('--window <duration>', 'how far back to look')
      .argParser(positiveDuration)
      .default(86_400_000, '24h'),
  )
  .addOption(
    new Option('--dormant-after <duration>', 'silent this long → dormant (jobs: their expectEvery instead)')
      .argParser(positiveDuration)
      .default(3_600_000, '1h'),
  )
  .addOption(queryTimeoutOption())
  .addOption(new Option('--json', 'machine-readable output').conflicts('csv'))
  .option('--csv', 'one row per identity, for a spreadsheet')
  .addHelpText(
    'after',
    `
Reads only the Prometheus HTTP API (instant queries over the nhi_* series every sidecar exports); it never
contacts the pods. Errors count 5xx, 401 and 403. Exit 1 on a bad flag or URL, 2 when Prometheus is
unreachable, times out or rejects a query.

Examples:
  nhi-proxy inventory --prometheus http://prometheus:9090
  nhi-proxy inventory --prometheus http://localhost:9090 --window 7d --dormant-after 24h --csv > nhi.csv
  nhi-proxy inventory --prometheus http://thanos-query:9090 --json | jq '.identities[] | select(.dormant)'`,
  )
  .action(
    async (o: {
      prometheus: string
      window: number
      dormantAfter: number
      timeout: number
      json?: boolean
      csv?: boolean
    }) => {
      const { runInventory } = await import('./inventory.ts')
      process.exitCode = await runInventory(
        {
          prometheus: o.prometheus,
          window: o.window,
          dormantAfter: o.dormantAfter,
          timeout: o.timeout,
          format: o.json ? 'json' : o.csv ? 'csv' : 'table',
        },
        out,
        (s) => process.stderr.write(`${s}\n`),
      )
    },
  )

program
  .command('fleet')
  .description(
    'the cross-service picture from Prometheus: identity → service edges, human vs machine share per ' +
      'service, failing and silent jobs, credentials about to expire, cost per identity, unverified callers',
  )
  .addOption(prometheusOption())
  .addOption(
    new Option('--window <duration>', 'how far back to look')
      .argParser(positiveDuration)
      .default(3_600_000, '1h'),
  )
  .addOption(
    new Option('--expiring-within <duration>', 'list credentials expiring within this')
      .argParser(positiveDuration)
      .default(7 * 86_400_000, '7d'),
  )
  .addOption(queryTimeoutOption())
  .option('--json', 'machine-readable output')
  .option(
    '--serve <addr>',
    'serve the picture as a page (/, /ui) and /fleet.json on HOST:PORT (a bare PORT: loopback), queried at most once per 5 s',
  )
  .option(
    '--allow-host <name>',
    'with --serve: a Host name the page answers besides IP addresses and localhost (repeatable)',
    hostNameFlag,
    [],
  )
  .addHelpText(
    'after',
    `
Every sidecar labels its series with its own service (the callee), so the nhi_* series of all of them in one
Prometheus make the fleet's dependency graph. Reads only the Prometheus HTTP API (instant queries); it never
contacts the pods. Errors count 5xx, 401 and 403. Exit 1 on a bad flag or URL, 2 when Prometheus is
unreachable, times out or rejects a query.

--serve answers only a Host that is an IP address, localhost or a name given with --allow-host (else 403), so
a web page elsewhere cannot read the fleet by pointing its own name at this address (DNS rebinding).

Examples:
  nhi-proxy fleet --prometheus http://prometheus:9090
  nhi-proxy fleet --prometheus http://localhost:9090 --window 24h --expiring-within 2d
  nhi-proxy fleet --prometheus http://thanos-query:9090 --json | jq '.edges[] | select(.verified | not)'
  nhi-proxy fleet --prometheus http://prometheus:9090 --serve 0.0.0.0:9480 --allow-host fleet.example.internal`,
  )
  .action(
    async (o: {
      prometheus: string
      window: number
      expiringWithin: number
      timeout: number
      json?: boolean
      serve?: string
      allowHost: string[]
    }) => {
      if (o.serve !== undefined) {
        const { serveFleet } = await import('./fleet-serve.ts')
        process.exitCode = await serveFleet(
          { ...o, json: false },
          { address: o.serve, allowHosts: o.allowHost },
          out,
          (s) => process.stderr.write(`${s}\n`),
        )
        return
      }
      if (o.allowHost.length > 0) {
        process.stderr.write(
          'nhi-proxy: --allow-host names hosts for the page of --serve; add --serve ADDR\n',
        )
        process.exitCode = 1
        return
      }
      const { runFleet } = await import('./fleet.ts')
      process.exitCode = await runFleet({ ...o, json: o.json === true }, out, (s) =>
        process.stderr.write(`${s}\n`),
      )
    },
  )

function fmtHost(a: { address: string; port: number; family?: string }): string {
  return a.family === 'IPv6' || a.address.includes(':')
    ? `[${a.address}]:${a.port}`
    : `${a.address}:${a.port}`
}

program.parseAsync(process.argv).catch(fail)
