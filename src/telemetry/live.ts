// Server-sent events of live requests. Never buffers for a slow client: when a socket stops accepting
// writes the client misses events (counted) until it drains again, so memory stays bounded and the
// request path never waits on a subscriber.
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { RequestEvent } from '../types.ts'

export interface LiveEvent {
  t: number
  id: string
  trace: string
  identity: string
  kind: string
  source: string
  verified: boolean
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

export interface LiveOptions {
  maxSubscribers?: number
  heartbeatMs?: number
}

export interface LiveStats {
  subscribers: number
  delivered: number
  dropped: number
  /** bytes queued in user space for all subscribers (bounded by the per-socket high-water mark) */
  bufferedBytes: number
}

interface Subscriber {
  res: ServerResponse
  identity?: string
  blocked: boolean
  dropped: number
}

export const DEFAULT_MAX_SUBSCRIBERS = 100

export function toLiveEvent(e: RequestEvent): LiveEvent {
  const out: LiveEvent = {
    t: e.time,
    id: e.requestId,
    trace: e.traceId,
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
  if (e.upstreamError) out.error = e.upstreamError
  if (e.failures.length) out.failures = e.failures.map((f) => `${f.source}:${f.reason}`)
  if (e.anomalies.length) out.anomalies = e.anomalies
  return out
}

export class LiveFeed {
  private readonly subscribers = new Set<Subscriber>()
  private readonly maxSubscribers: number
  private readonly heartbeat: NodeJS.Timeout
  private delivered = 0
  private dropped = 0

  constructor(opts: LiveOptions = {}) {
    this.maxSubscribers = opts.maxSubscribers ?? DEFAULT_MAX_SUBSCRIBERS
    this.heartbeat = setInterval(() => this.beat(), opts.heartbeatMs ?? 15_000)
    this.heartbeat.unref()
  }

  stats(): LiveStats {
    let bufferedBytes = 0
    for (const sub of this.subscribers) bufferedBytes += sub.res.writableLength
    return {
      subscribers: this.subscribers.size,
      delivered: this.delivered,
      dropped: this.dropped,
      bufferedBytes,
    }
  }

  /** Takes over the response as an event stream; answers 503 when the subscriber cap is reached. */
  subscribe(req: IncomingMessage, res: ServerResponse, identity?: string): void {
    if (this.subscribers.size >= this.maxSubscribers) {
      res.writeHead(503, { 'content-type': 'application/json', 'retry-after': '5' })
      res.end('{"error":"too many live subscribers"}')
      return
    }
    const sub: Subscriber = { res, identity: identity || undefined, blocked: false, dropped: 0 }
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    })
    res.socket?.setNoDelay(true)
    res.write(': connected\nretry: 2000\n\n')
    res.on('drain', () => {
      sub.blocked = false
    })
    const remove = () => this.subscribers.delete(sub)
    req.on('close', remove)
    res.on('close', remove)
    res.on('error', remove)
    this.subscribers.add(sub)
  }

  publish(event: RequestEvent): void {
    if (this.subscribers.size === 0) return
    let frame: string | undefined
    for (const sub of this.subscribers) {
      if (sub.identity !== undefined && sub.identity !== event.identity.name) continue
      if (sub.blocked) {
        sub.dropped++
        this.dropped++
        continue
      }
      frame ??= `data: ${JSON.stringify(toLiveEvent(event))}\n\n`
      if (!sub.res.write(frame)) sub.blocked = true
      this.delivered++
    }
  }

  private beat(): void {
    for (const sub of this.subscribers) if (!sub.blocked) sub.res.write(': heartbeat\n\n')
  }

  close(): void {
    clearInterval(this.heartbeat)
    for (const sub of this.subscribers) sub.res.end()
    this.subscribers.clear()
  }
}
