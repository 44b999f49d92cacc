// Cheap sliding windows for the identities view and the credential-expiry gauge: fixed-size state, no
// allocation per request.

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

/**
 * How long a presented credential counts as in use: two buckets of this length, so 5 to 10 minutes after
 * its last request. Long enough that replicas sharing an identity, each calling every few minutes, are all
 * in every bucket and the earliest expiry holds still instead of flipping between theirs (which the
 * NhiCredentialExpiringSoon alert reads as renewals); short against renewal cadences (a Kubernetes token is
 * renewed every ~48 minutes, an SVID at half its life, an hour-long access token about hourly), so a renewal
 * moves the gauge forward within minutes of the last request with the old credential, far inside the alert's
 * `for: 1h`.
 */
export const EXPIRY_BUCKET_MS = 5 * 60_000

const NONE = Number.POSITIVE_INFINITY

/**
 * Distinct valid expiries kept per bucket: an identity's replicas present one credential each, a renewal a
 * second; four cover a renewal on time hiding none of three others in use.
 */
const KEPT_PER_BUCKET = 4

/**
 * The earliest expiry (unix seconds) among the credentials an identity presented in the last two buckets,
 * read at scrape time. One that was still valid at its last request and has expired since is left out: a
 * client that renewed it right before its expiry (an OAuth client library does so seconds before) no longer
 * uses it, also when its next request is minutes away. One presented after its expiry (a Kubernetes token
 * past `warnafter`, which the API server still accepts) stays in while it is in the window.
 */
export class EarliestExpiry {
  /** unix ms the current bucket started at */
  private start = 0
  /**
   * the earliest KEPT_PER_BUCKET distinct expiries of credentials valid when presented, ascending (NONE past
   * the last): the current bucket's at [0, KEPT), the one before at [KEPT, 2 KEPT). More than the one earliest,
   * so that a credential renewed just before it expired does not hide the next-earliest in use for the rest of
   * the window (the replica whose rotation broke, behind one whose client renewed on time)
   */
  private readonly valid = new Float64Array(2 * KEPT_PER_BUCKET).fill(NONE)
  /** minima of credentials presented expired, by bucket */
  private expiredNow = NONE
  private expiredBefore = NONE
  /** the last request's credential, if it was valid then: in use whatever the buckets' minima hide */
  private latest = NONE

  /**
   * a request with a credential expiring at `expiresAt` (none: undefined), recorded at `nowMs`; it presented
   * the credential when it started, at `presentedAtMs`: a long request or stream recorded after its credential
   * expired presented it valid (its client may well have renewed it since)
   */
  present(expiresAt: number | undefined, nowMs: number, presentedAtMs = nowMs): void {
    // a clock set back (NTP correcting one that ran ahead) starts a bucket too: none would roll until it
    // caught up, and what was presented before would stay in use for that long
    if (nowMs - this.start >= EXPIRY_BUCKET_MS || nowMs < this.start) this.roll(nowMs)
    this.latest = NONE
    if (expiresAt === undefined) return
    if (expiresAt <= presentedAtMs / 1000) {
      if (expiresAt < this.expiredNow) this.expiredNow = expiresAt
      return
    }
    this.keep(expiresAt)
    this.latest = expiresAt
  }

  /** the earliest expiry in use at `nowMs`; undefined when no credential of the window has one */
  earliest(nowMs: number): number | undefined {
    const expired = Math.min(this.expiredNow, this.expiredBefore)
    if (expired !== NONE) return expired
    const nowSeconds = nowMs / 1000
    let valid = this.latest > nowSeconds ? this.latest : NONE
    // each bucket's first expiry still ahead (its slots ascend)
    for (let from = 0; from < this.valid.length; from += KEPT_PER_BUCKET) {
      for (let i = from; i < from + KEPT_PER_BUCKET; i++) {
        const expiry = this.valid[i]!
        if (expiry > nowSeconds) {
          if (expiry < valid) valid = expiry
          break
        }
      }
    }
    if (valid !== NONE) return valid
    // all of them expired after their last request: the identity stopped calling, and keeps the earliest
    const last = Math.min(this.valid[0]!, this.valid[KEPT_PER_BUCKET]!)
    return last === NONE ? undefined : last
  }

  /**
   * whether earliest() is of a credential presented after its expiry, which stays in use while in the window;
   * otherwise it was valid when presented, and once it has expired, its client renewed it or stopped calling
   */
  presentedExpired(): boolean {
    return this.expiredNow !== NONE || this.expiredBefore !== NONE
  }

  /** into the current bucket's ascending slots, once, if among the earliest */
  private keep(expiresAt: number): void {
    const slots = this.valid
    if (expiresAt >= slots[KEPT_PER_BUCKET - 1]!) return
    let i = 0
    while (slots[i]! < expiresAt) i++
    if (slots[i] === expiresAt) return
    for (let j = KEPT_PER_BUCKET - 1; j > i; j--) slots[j] = slots[j - 1]!
    slots[i] = expiresAt
  }

  private roll(nowMs: number): void {
    const adjacent = nowMs - this.start < 2 * EXPIRY_BUCKET_MS
    if (adjacent) this.valid.copyWithin(KEPT_PER_BUCKET, 0, KEPT_PER_BUCKET)
    else this.valid.fill(NONE, KEPT_PER_BUCKET)
    this.valid.fill(NONE, 0, KEPT_PER_BUCKET)
    this.expiredBefore = adjacent ? this.expiredNow : NONE
    this.expiredNow = NONE
    this.start = nowMs
  }
}

/**
 * A worker's credential expiry of an identity (its EarliestExpiry.earliest()) that was valid when presented
 * and has expired by `now` (the same unit as `expiry`): its client renewed it or moved on, so a pod's merge
 * leaves it out of the identity's credential expiry (pod-metrics.ts, pod-views.ts), as one process does.
 * `presentedExpired` is the worker's EarliestExpiry.presentedExpired() for the identity: the worker's time of
 * its last request cannot tell, since a long request or stream ends, and is recorded, after the credential it
 * presented valid has expired.
 */
export function expiredSincePresented(expiry: number, presentedExpired: boolean, now: number): boolean {
  return !presentedExpired && expiry <= now
}
