// The credential-expiry gauge is the earliest expiry among the credentials an identity presented in the
// last 5 to 10 minutes, not the last request's: replicas that share an identity alternate, and the one whose
// rotation broke must stay visible however often its healthy siblings call. Driven by the table's clock.
import fc from 'fast-check'
import t from 'tap'
import { configSchema } from '../../src/config/schema.ts'
import { IdentityTable, OVERFLOW_IDENTITY } from '../../src/telemetry/identity-table.ts'
import { Telemetry } from '../../src/telemetry/index.ts'
import { EarliestExpiry } from '../../src/telemetry/windows.ts'
import type { Identity } from '../../src/types.ts'
import { identity, requestEvent } from '../helpers/events.ts'
import { metricValue, parseMetrics } from '../helpers/metrics.ts'
import { checkProperty } from '../helpers/property.ts'

const T0 = 1_800_000_000_000
const HOUR = 3600
/** the window's bucket (docs/reference.md: a credential counts as in use 5 to 10 minutes after its last request) */
const EXPIRY_BUCKET_MS = 5 * 60_000
const start = T0 / 1000
/** two replicas of one workload: one credential expiring in 2 h (broken rotation), one just renewed */
const broken = identity('shop/cart', { source: 'jwt', expiresAt: start + 2 * HOUR })
const renewed = identity('shop/cart', { source: 'jwt', expiresAt: start + 24 * HOUR })

const table = () => new IdentityTable({ maxIdentities: 10, idleTtlMs: 3_600_000 })
/** a request at `now`, and the identity's credential expiry read right after it (as a scrape would) */
const call = (ids: IdentityTable, who: Identity, now: number) => ids.admitEntry(who, now).expiry.earliest(now)
/** the credential expiry of `who` read at `now` */
const read = (ids: IdentityTable, who: Identity, now: number) =>
  ids.get(who.source, who.name)?.expiry.earliest(now)

t.test('two credentials of one identity alternating: the earlier, whichever called last', async (t) => {
  const ids = table()
  for (let i = 0; i < 40; i++) {
    // one request every 20 s, alternating, through several bucket rolls
    t.equal(call(ids, i % 2 === 0 ? broken : renewed, T0 + i * 20_000), broken.expiresAt, `request ${i}`)
  }
  // the renewed replica first, then the broken one, each calling rarely: still the earlier
  const sparse = table()
  t.equal(call(sparse, renewed, T0), renewed.expiresAt, 'only the renewed one so far')
  sparse.admitEntry(broken, T0 + 4 * 60_000)
  t.equal(call(sparse, renewed, T0 + 8 * 60_000), broken.expiresAt)
  t.equal(call(sparse, renewed, T0 + 12 * 60_000), broken.expiresAt, 'a bucket later')
})

t.test('a credential renewed on time does not hide the next-earliest in use in its bucket', async (t) => {
  const ids = table()
  // the broken replica's credential, then the other replica's short one and its renewal, all in one bucket
  const shortOld = identity('shop/cart', { source: 'jwt', expiresAt: start + 120 })
  const shortRenewed = identity('shop/cart', { source: 'jwt', expiresAt: start + 120 + 3 * HOUR })
  ids.admitEntry(broken, T0)
  ids.admitEntry(shortOld, T0 + 10_000)
  t.equal(call(ids, shortRenewed, T0 + 100_000), shortOld.expiresAt, 'before the short one expires: it')
  // the short one expired after its last request (renewed): left out, and the broken one is next
  t.equal(read(ids, shortRenewed, T0 + 130_000), broken.expiresAt, 'after: the broken one, not the renewal')
  t.equal(call(ids, shortRenewed, T0 + 200_000), broken.expiresAt, 'also after another request')
  // a bucket later (the broken replica silent since): still in the window
  t.equal(call(ids, shortRenewed, T0 + EXPIRY_BUCKET_MS + 10_000), broken.expiresAt, 'in the bucket before')
  // five distinct credentials in a bucket: the earliest kept, whatever the order they came in
  const many = table()
  const expiries = [9, 3, 7, 1, 5].map((h) => start + h * HOUR)
  for (const [i, e] of expiries.entries())
    many.admitEntry(identity('batch/job', { source: 'jwt', expiresAt: e }), T0 + i * 1000)
  const job = identity('batch/job', { source: 'jwt', expiresAt: start + 9 * HOUR })
  t.equal(read(many, job, T0 + 10_000), start + HOUR, 'the earliest of five')
  t.equal(read(many, job, (start + HOUR) * 1000 + 1000), start + 3 * HOUR, 'once it expired unseen: the next')
})

t.test('the earlier credential no longer presented: the later one once the window has passed', async (t) => {
  const ids = table()
  ids.admitEntry(broken, T0)
  ids.admitEntry(renewed, T0 + 1000)
  let now = T0 + 1000
  // the same identity object over and over (the table's early return) still rolls the window
  while (now < T0 + 2 * EXPIRY_BUCKET_MS) {
    now += 30_000
    const expiry = call(ids, renewed, now)
    if (now < T0 + EXPIRY_BUCKET_MS) t.equal(expiry, broken.expiresAt, 'within 5 minutes: in use')
  }
  t.equal(read(ids, renewed, now), renewed.expiresAt, 'after 10 minutes: gone')
})

t.test('a renewal moves the gauge forward, also when the old credential expires right after', async (t) => {
  const ids = table()
  const old = identity('ci/deploy', { source: 'jwt', expiresAt: start + 600 })
  const next = identity('ci/deploy', { source: 'jwt', expiresAt: start + 600 + HOUR })
  t.equal(call(ids, old, T0), old.expiresAt)
  // renewed seconds before the old one expires, as OAuth client libraries do
  t.equal(call(ids, old, T0 + 599_000), old.expiresAt, 'the old one, still valid, in use')
  t.equal(call(ids, next, T0 + 599_500), old.expiresAt, 'both in use for now')
  // past the old one's expiry it is no longer in use: it was valid at its last request
  t.equal(call(ids, next, T0 + 601_000), next.expiresAt, 'the renewed one')
  t.equal(call(ids, next, T0 + 30 * 60_000), next.expiresAt)

  // a client calling once a minute: the renewed token's request was its last before the old one expired, and
  // a scrape before its next request already reads the renewed one
  const minutely = table()
  call(minutely, old, T0 + 540_000)
  t.equal(call(minutely, next, T0 + 595_000), old.expiresAt, 'both in use before the old one expires')
  t.equal(read(minutely, next, T0 + 620_000), next.expiresAt, 'a scrape after it: the renewed one')
  // one that stopped calling before its last credential expired keeps it, as its last requests had it
  const stopped = table()
  call(stopped, old, T0 + 500_000)
  t.equal(read(stopped, old, T0 + 700_000), old.expiresAt)
})

t.test('a credential presented after its expiry stays the earliest while it is in use', async (t) => {
  const ids = table()
  // a Kubernetes token past warnafter, still accepted, on one replica; a fresh one on the other
  const stale = identity('shop/cart', { source: 'jwt', expiresAt: start - 60 })
  for (let i = 0; i < 30; i++) {
    t.equal(call(ids, i % 3 === 0 ? stale : renewed, T0 + i * 20_000), stale.expiresAt, `request ${i}`)
  }
  // no longer presented after 9m40s: still in use in the previous bucket, gone when that one rolls out
  t.equal(call(ids, renewed, T0 + 10 * 60_000), stale.expiresAt)
  t.equal(call(ids, renewed, T0 + 15 * 60_000), renewed.expiresAt)
})

t.test('a credential without an expiry leaves the gauge to the ones that have one', async (t) => {
  const ids = table()
  const none = identity('shop/cart', { source: 'jwt' })
  t.equal(call(ids, none, T0), undefined)
  t.equal(call(ids, renewed, T0 + 1000), renewed.expiresAt)
  t.equal(call(ids, none, T0 + 2000), renewed.expiresAt)
  // only credentials without one for a whole window: none
  ids.admitEntry(none, T0 + EXPIRY_BUCKET_MS + 2000)
  t.equal(call(ids, none, T0 + 2 * EXPIRY_BUCKET_MS + 3000), undefined)
})

t.test('the overflow entry has no expiry', async (t) => {
  const ids = new IdentityTable({ maxIdentities: 1, idleTtlMs: 3_600_000 })
  ids.admitEntry(identity('first', { source: 'jwt', expiresAt: start + HOUR }), T0)
  const entry = ids.admitEntry(broken, T0 + 1000)
  t.equal(entry.name, OVERFLOW_IDENTITY)
  t.equal(entry.expiry.earliest(T0 + 1000), undefined)
})

t.test('/metrics and /identities show the earlier of alternating credentials', async (t) => {
  let now = T0
  const telemetry = new Telemetry(configSchema.parse({ service: 'checkout', audit: { output: 'off' } }), {
    version: '1',
    now: () => now,
  })
  t.teardown(() => telemetry.close())
  for (let i = 0; i < 6; i++) {
    now = T0 + i * 20_000
    telemetry.record(requestEvent({ identity: i % 2 === 0 ? broken : renewed }))
  }
  const m = parseMetrics((await telemetry.scrape(false)).body)
  t.equal(
    metricValue(m, 'nhi_credential_expiry_timestamp_seconds', { identity: 'shop/cart', source: 'jwt' }),
    broken.expiresAt,
  )
  const row = telemetry.identities().identities.find((r) => r.name === 'shop/cart')
  t.equal(row?.credentialExpiry, new Date(broken.expiresAt! * 1000).toISOString())

  // read against the clock at the scrape: a token renewed just before it expired is gone by then
  const old = identity('ci/deploy', { source: 'jwt', expiresAt: start + 600 })
  const next = identity('ci/deploy', { source: 'jwt', expiresAt: start + 600 + HOUR })
  now = T0 + 540_000
  telemetry.record(requestEvent({ identity: old }))
  now = T0 + 595_000
  telemetry.record(requestEvent({ identity: next }))
  now = T0 + 620_000
  const later = parseMetrics((await telemetry.scrape(false)).body)
  t.equal(
    metricValue(later, 'nhi_credential_expiry_timestamp_seconds', { identity: 'ci/deploy' }),
    next.expiresAt,
  )
  const deploy = telemetry.identities().identities.find((r) => r.name === 'ci/deploy')
  t.equal(deploy?.credentialExpiry, new Date(next.expiresAt! * 1000).toISOString())
})

t.test(
  'a long request that outlives its credential presented it valid: a renewal still moves the gauge',
  async (t) => {
    let now = T0
    const telemetry = new Telemetry(configSchema.parse({ service: 'checkout', audit: { output: 'off' } }), {
      version: '1',
      now: () => now,
    })
    t.teardown(() => telemetry.close())
    const old = identity('shop/stream', { source: 'jwt', expiresAt: start + 600 })
    const next = identity('shop/stream', { source: 'jwt', expiresAt: start + 600 + HOUR })
    // a stream opened with the old token 30 s before it expired, recorded when it ends a minute later
    now = T0 + 630_000
    telemetry.record(requestEvent({ identity: old, durationMs: 60_000 }))
    // the client renewed its token before the old one expired and calls with the new one
    now = T0 + 640_000
    telemetry.record(requestEvent({ identity: next }))
    now = T0 + 650_000
    const m = parseMetrics((await telemetry.scrape(false)).body)
    t.equal(
      metricValue(m, 'nhi_credential_expiry_timestamp_seconds', { identity: 'shop/stream' }),
      next.expiresAt,
      'the renewed one: the old one was valid when it was presented, not presented expired',
    )
    const row = telemetry.identities().identities.find((r) => r.name === 'shop/stream')
    t.equal(row?.credentialExpiry, new Date(next.expiresAt! * 1000).toISOString(), '/identities: the same')

    // a request that started after the credential expired still presented it expired
    const late = identity('shop/late', { source: 'jwt', expiresAt: start + 600 })
    const renewedLate = identity('shop/late', { source: 'jwt', expiresAt: start + 600 + HOUR })
    now = T0 + 700_000
    telemetry.record(requestEvent({ identity: late, durationMs: 50_000 }))
    now = T0 + 705_000
    telemetry.record(requestEvent({ identity: renewedLate }))
    const later = parseMetrics((await telemetry.scrape(false)).body)
    t.equal(
      metricValue(later, 'nhi_credential_expiry_timestamp_seconds', { identity: 'shop/late' }),
      late.expiresAt,
      'presented after its expiry: still in use',
    )
  },
)

t.test('a clock set back (NTP correcting a clock that ran ahead) still rolls the window', async (t) => {
  const ids = table()
  // the host's clock ran a day ahead when the broken credential was last presented
  ids.admitEntry(broken, T0 + 24 * HOUR * 1000)
  // set right, it reads a day earlier: only the renewed credential is presented from then on
  let now = T0
  let expiry: number | undefined
  while (now < T0 + 3 * EXPIRY_BUCKET_MS) {
    now += 30_000
    expiry = call(ids, renewed, now)
  }
  t.equal(expiry, renewed.expiresAt, 'the credential no longer presented is gone after the window')
})

/**
 * The window's rules over every credential presented, kept whole (a set per bucket): what the gauge must read
 * while a bucket holds no more distinct valid credentials than the window keeps.
 */
class WholeWindow {
  private start = 0
  private validNow = new Set<number>()
  private validBefore = new Set<number>()
  private expiredNow = Number.POSITIVE_INFINITY
  private expiredBefore = Number.POSITIVE_INFINITY
  private latest: number | undefined

  present(expiresAt: number, nowMs: number, presentedAtMs: number): void {
    if (nowMs - this.start >= EXPIRY_BUCKET_MS || nowMs < this.start) {
      const adjacent = nowMs - this.start < 2 * EXPIRY_BUCKET_MS
      this.validBefore = adjacent ? this.validNow : new Set()
      this.expiredBefore = adjacent ? this.expiredNow : Number.POSITIVE_INFINITY
      this.validNow = new Set()
      this.expiredNow = Number.POSITIVE_INFINITY
      this.start = nowMs
    }
    this.latest = undefined
    if (expiresAt <= presentedAtMs / 1000) this.expiredNow = Math.min(this.expiredNow, expiresAt)
    else {
      this.validNow.add(expiresAt)
      this.latest = expiresAt
    }
  }

  earliest(nowMs: number): number | undefined {
    const expired = Math.min(this.expiredNow, this.expiredBefore)
    if (expired !== Number.POSITIVE_INFINITY) return expired
    const all = [...this.validNow, ...this.validBefore]
    const ahead = [...all, ...(this.latest === undefined ? [] : [this.latest])].filter(
      (e) => e > nowMs / 1000,
    )
    if (ahead.length > 0) return Math.min(...ahead)
    return all.length > 0 ? Math.min(...all) : undefined
  }

  /** whether earliest() is of a credential presented after its expiry (what a worker tells its pod) */
  presentedExpired(): boolean {
    return Math.min(this.expiredNow, this.expiredBefore) !== Number.POSITIVE_INFINITY
  }
}

t.test(
  'the window reads as one that keeps every credential, up to four distinct ones a bucket',
  async (t) => {
    // four credentials at most (so never more than four distinct in a bucket), expiring during the run
    const step = fc.record({
      credential: fc.nat({ max: 3 }),
      advanceMs: fc.oneof(fc.nat({ max: 20_000 }), fc.nat({ max: 4 * 60_000 }), fc.constant(11 * 60_000)),
      startedMsAgo: fc.oneof(fc.constant(0), fc.nat({ max: 10 * 60_000 })),
    })
    const run = fc.record({
      lifetimes: fc.array(fc.integer({ min: 1, max: 40 * 60 }), { minLength: 4, maxLength: 4 }),
      steps: fc.array(step, { maxLength: 80 }),
    })
    checkProperty(
      t,
      'gauge = whole-window model',
      fc.property(run, ({ lifetimes, steps }) => {
        const window = new EarliestExpiry()
        const whole = new WholeWindow()
        let now = T0
        for (const s of steps) {
          now += s.advanceMs
          const expiresAt = start + lifetimes[s.credential]!
          window.present(expiresAt, now, now - s.startedMsAgo)
          whole.present(expiresAt, now, now - s.startedMsAgo)
          // read as a scrape would, right after and a little later
          for (const readAt of [now, now + 45_000])
            if (window.earliest(readAt) !== whole.earliest(readAt))
              throw new Error(
                `at +${readAt - T0} ms: ${window.earliest(readAt)}, not ${whole.earliest(readAt)}`,
              )
          if (window.presentedExpired() !== whole.presentedExpired())
            throw new Error(`at +${now - T0} ms: presented expired ${window.presentedExpired()}`)
        }
      }),
      500,
    )
  },
)
