// The operator's line for upstream failures: why (the error code, and for the socket and TLS layers their
// message: a certificate refused, a connection refused), at most once per reason and code per interval with
// the count of those not logged. The response parser's own errors carry no message here: theirs may quote
// the upstream's bytes. With `workers: N` each worker keeps its own interval and hands its lines to the
// primary, which keeps the pod's: one line per interval for the pod, not one per worker.
import type { Logger } from 'pino'
import type { UpstreamFailed } from '../proxy/forwarder.ts'
import type { UpstreamErrorReason } from '../types.ts'

/** at most one log line per failure reason and error code this often; nhi_upstream_errors_total counts them all */
export const UPSTREAM_FAILURE_LOG_INTERVAL_MS = 30_000
/** distinct reasons and codes remembered; also the most lines one interval can log */
export const UPSTREAM_FAILURE_LOG_KEYS = 64

const MESSAGES: Record<UpstreamErrorReason, string> = {
  connect: 'the upstream could not be reached; answered 502',
  timeout: 'the upstream did not answer within timeouts.upstream; answered 504',
  reset:
    'the upstream connection failed during the exchange; answered 502 or cut the response (bytes past a complete response: its connection closed, the response passed on)',
}

/** one line: a failure, and how many of its reason and code were not logged since the last line */
export interface UpstreamFailureLine {
  reason: UpstreamErrorReason
  code: string
  detail?: string
  unlogged: number
}

/** writes a line to the operator's log */
export const logUpstreamFailure =
  (log: Logger) =>
  ({ reason, code, detail, unlogged }: UpstreamFailureLine): void => {
    log.warn(
      { event: 'upstream_failed', reason, code, ...(detail ? { detail } : {}), unlogged },
      MESSAGES[reason],
    )
  }

/** at most one line per reason and code per interval, handed to `emit` */
export class UpstreamFailureThrottle {
  private readonly last = new Map<string, { at: number; unlogged: number }>()

  constructor(
    private readonly emit: (line: UpstreamFailureLine) => void,
    private readonly now: () => number = Date.now,
  ) {}

  /** a failure; `heldBack`: failures of the same kind before it that were not logged (a worker's count) */
  note(reason: UpstreamErrorReason, code: string, detail: string | undefined, heldBack = 0): void {
    const key = `${reason} ${code}`
    const at = this.now()
    const last = this.last
    const seen = last.get(key)
    if (seen !== undefined && at - seen.at < UPSTREAM_FAILURE_LOG_INTERVAL_MS) {
      seen.unlogged += 1 + heldBack
      return
    }
    // reasons and codes are few, but an upstream chooses some of them (a parser's HPE_*, HTTP/2 codes): the keys
    // are bounded, and so are the lines per interval, whatever codes it cycles through
    if (seen === undefined && last.size >= UPSTREAM_FAILURE_LOG_KEYS) {
      for (const [k, v] of last) if (at - v.at >= UPSTREAM_FAILURE_LOG_INTERVAL_MS) last.delete(k)
      if (last.size >= UPSTREAM_FAILURE_LOG_KEYS) return
    }
    last.set(key, { at, unlogged: 0 })
    const line: UpstreamFailureLine = { reason, code, unlogged: (seen?.unlogged ?? 0) + heldBack }
    if (detail) line.detail = detail
    this.emit(line)
  }
}

/** the forwarders' report of a failure, throttled and handed to `emit` (the log, or a worker's primary) */
export function upstreamFailureReporter(
  emit: (line: UpstreamFailureLine) => void,
  now: () => number = Date.now,
): UpstreamFailed {
  const throttle = new UpstreamFailureThrottle(emit, now)
  return (reason, err) => {
    const raw = (err as { code?: unknown } | null)?.code
    const code = typeof raw === 'string' ? raw : 'unknown'
    const detail = code.startsWith('UND_ERR') ? undefined : (err as Error | null)?.message?.slice(0, 200)
    throttle.note(reason, code, detail)
  }
}
