// Cheap sliding windows for the identities view: fixed-size typed arrays, no allocation per request.

const WINDOW_SECONDS = 60

/** Requests and errors over the last minute in one-second buckets. */
export class RateWindow {
  private readonly requests = new Uint32Array(WINDOW_SECONDS)
  private readonly errors = new Uint32Array(WINDOW_SECONDS)
  /** the unix second the newest bucket belongs to */
  private head = 0

  add(nowMs: number, isError: boolean): void {
    this.advance(Math.floor(nowMs / 1000))
    const i = this.head % WINDOW_SECONDS
    this.requests[i]!++
    if (isError) this.errors[i]!++
  }

  /** requests per second and error ratio over the last minute (or since `sinceMs`, if younger) */
  read(nowMs: number, sinceMs: number): { perSecond: number; errorRatio: number } {
    this.advance(Math.floor(nowMs / 1000))
    let requests = 0
    let errors = 0
    for (let i = 0; i < WINDOW_SECONDS; i++) {
      requests += this.requests[i]!
      errors += this.errors[i]!
    }
    const span = Math.min(WINDOW_SECONDS, Math.max(1, Math.ceil((nowMs - sinceMs) / 1000)))
    return { perSecond: requests / span, errorRatio: requests ? errors / requests : 0 }
  }

  private advance(second: number): void {
    if (second <= this.head) return
    const gap = Math.min(second - this.head, WINDOW_SECONDS)
    for (let s = 1; s <= gap; s++) {
      const i = (this.head + s) % WINDOW_SECONDS
      this.requests[i] = 0
      this.errors[i] = 0
    }
    this.head = second
  }
}

const RESERVOIR_SIZE = 128

/** The most recent request durations (ms); percentiles are computed only when the view is read. */
export class LatencyReservoir {
  private readonly samples = new Float64Array(RESERVOIR_SIZE)
  private count = 0

  add(ms: number): void {
    this.samples[this.count % RESERVOIR_SIZE] = ms
    this.count++
  }

  percentile(p: number): number | undefined {
    const n = Math.min(this.count, RESERVOIR_SIZE)
    if (n === 0) return undefined
    const sorted = this.samples.slice(0, n).sort()
    return sorted[Math.min(n - 1, Math.ceil((p / 100) * n) - 1)]
  }
}
