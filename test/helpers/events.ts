// Synthetic RequestEvents for recorder tests: realistic shapes of every identity kind.
import { randomBytes } from 'node:crypto'
import type { Identity, RequestEvent } from '../../src/types.ts'

let seq = 0

export function identity(name: string, overrides: Partial<Identity> = {}): Identity {
  return { name, kind: 'service', source: 'mtls', verified: true, attributes: {}, ...overrides }
}

export function requestEvent(overrides: Partial<RequestEvent> = {}): RequestEvent {
  seq++
  return {
    time: Date.now(),
    traceId: randomBytes(16).toString('hex'),
    spanId: randomBytes(8).toString('hex'),
    requestId: `req-${seq}`,
    identity: identity('payments/api'),
    fingerprints: {},
    failures: [],
    anomalies: [],
    decision: { decision: 'allow', rule: 'default', skipped: true },
    clientAddress: '10.0.0.7',
    method: 'GET',
    path: '/api/v1/orders/42',
    route: '/api/v1/orders/:id',
    status: 200,
    durationMs: 12,
    upstreamMs: 10,
    bytesIn: 100,
    bytesOut: 2000,
    service: 'checkout',
    ...overrides,
  }
}

/** One identity of every kind, each with the credential source it typically arrives with. */
export const SAMPLE_IDENTITIES: Identity[] = [
  identity('payments/api', {
    kind: 'service',
    source: 'mtls',
    verified: true,
    zone: 'internal',
    team: 'payments',
  }),
  identity('ci/acme/nightly-export', {
    kind: 'job',
    source: 'jwt',
    verified: true,
    attributes: {
      iss: 'https://token.actions.githubusercontent.com',
      sub: 'repo:acme/export:ref:main',
      jti: 'j-1',
    },
    expectEveryMs: 86_400_000,
  }),
  identity('alice@example.com', {
    kind: 'human',
    source: 'jwt',
    verified: true,
    attributes: { sub: 'alice' },
  }),
  identity('googlebot', { kind: 'bot', source: 'useragent', verified: false }),
  identity('gptbot', { kind: 'agent', source: 'useragent', verified: false }),
  identity('legacy-cron', { kind: 'job', source: 'apikey', verified: true, zone: 'internal' }),
  identity('anonymous', { kind: 'unknown', source: 'anonymous', verified: false }),
]
