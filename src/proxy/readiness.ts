// /readyz's view of the upstream: can this proxy open a TCP connection to it right now.
import { connect } from 'node:net'
import type { Upstream } from './upstream-url.ts'

/** A TCP connect to the upstream, cached for a second so probes do not multiply connections. */
export class UpstreamProbe {
  private cached: { at: number; result: Promise<boolean> } | undefined

  constructor(private upstream: Upstream) {}

  /** the upstream changed (config reload): forget the cached answer */
  retarget(upstream: Upstream): void {
    this.upstream = upstream
    this.cached = undefined
  }

  reachable(): Promise<boolean> {
    const now = Date.now()
    if (this.cached === undefined || now - this.cached.at > 1000) {
      this.cached = { at: now, result: this.probe() }
    }
    return this.cached.result
  }

  private probe(): Promise<boolean> {
    const { host, port, socketPath } = this.upstream
    return new Promise((resolve) => {
      const socket = socketPath ? connect({ path: socketPath }) : connect({ host, port })
      const done = (ok: boolean) => {
        socket.destroy()
        resolve(ok)
      }
      socket.setTimeout(1000, () => done(false))
      socket.once('connect', () => done(true))
      socket.once('error', () => done(false))
    })
  }
}
