// The merge behind /identities with `workers: N`: one row per identity over the workers, its credential
// expiry the earliest of the workers' still in use, judged as the pod's /metrics judges the gauge.
import t from 'tap'
import type { IdentitiesView, IdentityRow } from '../../src/telemetry/identities.ts'
import { mergeIdentitiesViews } from '../../src/telemetry/pod-views.ts'

const iso = (seconds: number) => new Date(seconds * 1000).toISOString()

/** a worker's view of one identity it saw last at `lastSeen` with `expiry` its earliest credential in use */
function view(lastSeen: number, expiry: number): IdentitiesView {
  const row: IdentityRow = {
    name: 'shop/stream',
    kind: 'service',
    source: 'jwt',
    verified: true,
    overflow: false,
    requests: 1,
    errors: 0,
    rps: 0,
    errorRatio: 0,
    bytesIn: 0,
    bytesOut: 0,
    upstreamSeconds: 0,
    cost: 0,
    firstSeen: iso(lastSeen - 60),
    lastSeen: iso(lastSeen),
    credentialExpiry: iso(expiry),
  }
  return {
    generatedAt: iso(lastSeen),
    tracked: 1,
    maxIdentities: 10,
    totals: { requests: 1, rps: 0, byKind: { service: { identities: 1, rps: 0 } } },
    identities: [row],
    edges: [],
  }
}

/**
 * the pod's rows' credentialExpiry at `now` (one row for the pod), each worker given as its last request of
 * the identity, its expiry, and whether it said that expiry's credential was presented after it expired
 */
const merge = (now: number, ...workers: [lastSeen: number, expiry: number, presentedExpired?: boolean][]) =>
  mergeIdentitiesViews(
    workers.map(([lastSeen, expiry, presentedExpired]) => ({
      ...view(lastSeen, expiry),
      presentedExpired: presentedExpired ? ['jwt\u0000shop/stream'] : [],
    })),
    { now: now * 1000, maxIdentities: 10 },
  ).identities.map((row) => row.credentialExpiry)

t.test("the credential expiry is the earliest of the workers' in use", async (t) => {
  t.same(merge(590, [500, 600], [550, 4_200]), [iso(600)], 'not expired yet: still the earliest')
  t.same(merge(1_000, [599, 600], [900, 4_200]), [iso(4_200)], 'expired since its last request: left out')
  // a stream opened at 570 with the credential expiring at 600 ended at 700, after it: its client renewed it
  // and calls with the renewed one on worker 2, as one process sees it
  t.same(merge(1_000, [700, 600], [900, 4_200]), [iso(4_200)], 'a long request that outlived it: left out')
  // presented after its expiry (a Kubernetes token past warnafter): in use, whatever the others say
  t.same(merge(1_000, [900, 600, true], [950, 4_200]), [iso(600)])
  t.same(merge(1_000, [599, 600, true], [950, 4_200]), [iso(600)], 'also when its worker saw it last before')
  // every worker's expired after it was presented: the identity stopped calling, and keeps its last value
  t.same(merge(1_000, [599, 600], [650, 700]), [iso(600)])
})
