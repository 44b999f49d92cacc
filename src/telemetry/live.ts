// Server-sent events of live requests. Never buffers for a slow client: when a socket stops accepting
// writes the client misses events (counted) until it drains again, so memory stays bounded and the
// request path never waits on a subscriber. A client that stays blocked for writeTimeoutMs is disconnected,
// and every stream ends after maxDurationMs (EventSource reconnects by itself), so clients that never read
// cannot hold the subscriber slots for ever.
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Config } from '../config/schema.ts'
import type { Recorder, RequestEvent } from '../types.ts'

export interface LiveEvent {
  t: number
  id: string
  trace: string
  /**
   * the span id of the proxy's hop: the one key of the request's audit record no client picks (it may send
   * any x-request-id and traceparent, and a retry repeats them)
   */
  span: string
  identity: string
  kind: string
  source: string
  verified: boolean
  /** RFC 8693 delegation: the actor acting on behalf of the identity */
  actor?: string
  method: string
  path: string
  route: string
  status: number
  ms: number
  service: string
  decision?: string
  error?: string
  failures?: string[]
  anomalies?: string[]
}

export interface LiveLimits {
  maxSubscribers?: number
  /** a subscriber whose socket accepts no writes for this long is disconnected */
  writeTimeoutMs?: number
  /** every stream is ended after this long */
  maxDurationMs?: number
}

export interface LiveOptions extends LiveLimits {
  heartbeatMs?: number
  /** unix ms clock (tests) */
  now?: () => number
  /** how often blocked and old streams are looked for (default: 1 s) */
  sweepMs?: number
}

export interface LiveStats {
  subscribers: number
  delivered: number
  dropped: number
  /** bytes queued in user space for all subscribers (bounded by the per-socket high-water mark) */
  bufferedBytes: number
  /** streams cut because the client stopped reading */
  evicted: number
}

interface Subscriber {
  res: ServerResponse
  identity?: string
  source?: string
  blocked: boolean
  /** when the socket last refused a write (unix ms), while blocked */
  blockedSince: number
  connectedAt: number
  dropped: number
}

const STREAM_HEADERS = {
  'content-type': 'text/event-stream; charset=utf-8',
  'cache-control': 'no-store',
  'x-content-type-options': 'nosniff',
  connection: 'keep-alive',
  'x-accel-buffering': 'no',
}

export const DEFAULT_MAX_SUBSCRIBERS = 100
export const DEFAULT_WRITE_TIMEOUT_MS = 10_000
export const DEFAULT_MAX_DURATION_MS = 600_000

export function toLiveEvent(e: RequestEvent): LiveEvent {
  const out: LiveEvent = {
    t: e.time,
    id: e.requestId,
    trace: e.traceId,
    span: e.spanId,
    identity: e.identity.name,
    kind: e.identity.kind,
    source: e.identity.source,
    verified: e.identity.verified,
    method: e.method,
    path: e.path,
    route: e.route,
    status: e.status,
    ms: Math.round(e.durationMs * 10) / 10,
    service: e.service,
  }
  if (!e.decision.skipped && e.decision.decision !== 'allow') out.decision = e.decision.decision
  const actor = e.identity.attributes['actor']
  if (actor !== undefined) out.actor = actor
  if (e.upstreamError) out.error = e.upstreamError
  if (e.failures.length) out.failures = e.failures.map((f) => `${f.source}:${f.reason}`)
  if (e.anomalies.length) out.anomalies = e.anomalies
  return out
}

/** the live feed's limits in a config (adminAccess.live*) */
export function liveLimits(config: Config): LiveLimits {
  const a = config.adminAccess
  return {
    maxSubscribers: a.liveClients,
    writeTimeoutMs: a.liveWriteTimeout,
    maxDurationMs: a.liveMaxDuration,
  }
}

export class LiveFeed implements Recorder {
  readonly name = 'live'
  private readonly subscribers = new Set<Subscriber>()
  private maxSubscribers = DEFAULT_MAX_SUBSCRIBERS
  private writeTimeoutMs = DEFAULT_WRITE_TIMEOUT_MS
  private maxDurationMs = DEFAULT_MAX_DURATION_MS
  private readonly heartbeat: NodeJS.Timeout
  private readonly sweeper: NodeJS.Timeout
  private readonly now: () => number
  private delivered = 0
  private dropped = 0
  private evicted = 0

  constructor(opts: LiveOptions = {}) {
    this.now = opts.now ?? Date.now
    this.configure(opts)
    this.heartbeat = setInterval(() => this.beat(), opts.heartbeatMs ?? 15_000)
    this.heartbeat.unref()
    this.sweeper = setInterval(() => this.sweep(), opts.sweepMs ?? 1000)
    this.sweeper.unref()
  }

  /** new limits (config reload); existing streams are not cut for a lower cap */
  configure(limits: LiveLimits): void {
    this.maxSubscribers = limits.maxSubscribers ?? this.maxSubscribers
    this.writeTimeoutMs = limits.writeTimeoutMs ?? this.writeTimeoutMs
    this.maxDurationMs = limits.maxDurationMs ?? this.maxDurationMs
  }

  reconfigure(config: Config): void {
    this.configure(liveLimits(config))
  }

  /** Disconnects subscribers blocked longer than the write timeout; ends streams older than the max duration. */
  sweep(): void {
    const now = this.now()
    for (const sub of this.subscribers) {
      if (sub.blocked && now - sub.blockedSince >= this.writeTimeoutMs) this.evict(sub)
      else if (now - sub.connectedAt >= this.maxDurationMs) {
        this.subscribers.delete(sub)
        sub.res.end()
      }
    }
  }

  private evict(sub: Subscriber): void {
    this.subscribers.delete(sub)
    this.evicted++
    sub.res.destroy()
  }

  private block(sub: Subscriber): void {
    if (sub.blocked) return
    sub.blocked = true
    sub.blockedSince = this.now()
  }

  stats(): LiveStats {
    let bufferedBytes = 0
    for (const sub of this.subscribers) bufferedBytes += sub.res.writableLength
    return {
      subscribers: this.subscribers.size,
      delivered: this.delivered,
      dropped: this.dropped,
      bufferedBytes,
      evicted: this.evicted,
    }
  }

  /** Takes over the response as an event stream; answers 503 when the subscriber cap is reached. */
  subscribe(req: IncomingMessage, res: ServerResponse, identity?: string, source?: string): void {
    if (this.subscribers.size >= this.maxSubscribers) {
      // a subscriber that is not reading gives its slot to one that will
      for (const sub of this.subscribers) {
        if (sub.blocked) {
          this.evict(sub)
          break
        }
      }
    }
    if (this.subscribers.size >= this.maxSubscribers) {
      res.writeHead(503, {
        'content-type': 'application/json; charset=utf-8',
        'x-content-type-options': 'nosniff',
        'retry-after': '5',
      })
      res.end('{"error":"too many live subscribers"}')
      return
    }
    // a HEAD answer has no body, and its headers wait for one: the stream's headers are the whole answer
    if (req.method === 'HEAD') {
      res.writeHead(200, STREAM_HEADERS)
      res.end()
      return
    }
    const sub: Subscriber = {
      res,
      identity: identity || undefined,
      source: source || undefined,
      blocked: false,
      blockedSince: 0,
      connectedAt: this.now(),
      dropped: 0,
    }
    res.writeHead(200, STREAM_HEADERS)
    res.socket?.setNoDelay(true)
    if (!res.write(': connected\nretry: 2000\n\n')) this.block(sub)
    res.on('drain', () => {
      sub.blocked = false
    })
    const remove = () => this.subscribers.delete(sub)
    req.on('close', remove)
    res.on('close', remove)
    res.on('error', remove)
    this.subscribers.add(sub)
  }

  record(event: RequestEvent): void {
    if (this.subscribers.size === 0) return
    this.deliver(event.identity.name, event.identity.source, () => toLiveEvent(event))
  }

  /** an event another process recorded (a worker of `workers: N`), to this process's subscribers */
  publish(event: LiveEvent): void {
    if (this.subscribers.size === 0) return
    this.deliver(event.identity, event.source, () => event)
  }

  private deliver(identity: string, source: string, event: () => LiveEvent): void {
    let frame: string | undefined
    for (const sub of this.subscribers) {
      if (sub.identity !== undefined && sub.identity !== identity) continue
      if (sub.source !== undefined && sub.source !== source) continue
      if (sub.blocked) {
        sub.dropped++
        this.dropped++
        continue
      }
      frame ??= `data: ${JSON.stringify(event())}\n\n`
      if (!sub.res.write(frame)) this.block(sub)
      this.delivered++
    }
  }

  private beat(): void {
    for (const sub of this.subscribers) {
      if (!sub.blocked && !sub.res.write(': heartbeat\n\n')) this.block(sub)
    }
  }

  close(): void {
    clearInterval(this.heartbeat)
    clearInterval(this.sweeper)
    for (const sub of this.subscribers) sub.res.end()
    this.subscribers.clear()
  }
}
