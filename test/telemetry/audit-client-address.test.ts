// Behind an ingress every request reaches the sidecar from the ingress's address. The audit record names the
// client that trusted proxy forwarded for (its X-Forwarded-For entry) as client_address, and the proxy itself
// as peer_address; a peer that is not a trusted proxy cannot name another client that way.
// The trusted proxy is 127.0.0.2; 127.0.0.1 is anyone else.

import t from 'tap'
import { exchange } from '../helpers/http.ts'
import { metricValue, scrapeUntil } from '../helpers/metrics.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const TRUSTED = '127.0.0.2'

async function send(port: number, path: string, localAddress: string, xff?: string): Promise<number> {
  const headers = xff === undefined ? {} : { 'x-forwarded-for': xff }
  return (await exchange({ host: '127.0.0.1', port, path, localAddress, headers })).status
}

interface AuditEvent {
  path: string
  client_address: string
  peer_address?: string
}

t.test(
  'the audit names the forwarded client behind a trusted proxy, and the proxy as the peer',
  async (t) => {
    const upstream = await startUpstream()
    t.teardown(() => upstream.close())
    const sidecar = await startTestSidecar(t, {
      service: 'orders',
      upstream: upstream.url,
      forwardedClientCert: { trustedProxies: [`${TRUSTED}/32`], format: 'xfcc' },
    })
    const port = sidecar.proxyAddress.port
    const cases: [path: string, from: string, xff: string | undefined, client: string, peer?: string][] = [
      ['/through-ingress', TRUSTED, '203.0.113.7', '203.0.113.7', TRUSTED],
      ['/client-prepends', TRUSTED, '10.9.9.9, 203.0.113.8', '203.0.113.8', TRUSTED],
      ['/ingress-itself', TRUSTED, undefined, TRUSTED],
      ['/untrusted-claims', '127.0.0.1', '203.0.113.9', '127.0.0.1'],
      ['/garbage-entry', TRUSTED, 'not-an-address', TRUSTED],
      // a client padding what it sends in front of the ingress's entry is still named
      ['/padded', TRUSTED, `${'10.9.9.9, '.repeat(600)}203.0.113.10`, '203.0.113.10', TRUSTED],
    ]
    for (const [path, from, xff] of cases) t.equal(await send(port, path, from, xff), 200, path)
    await scrapeUntil(
      sidecar.adminUrl,
      (s) => metricValue(s, 'nhi_requests_total', { service: 'orders' }) >= cases.length,
      'every request recorded',
    )
    const res = await fetch(`${sidecar.adminUrl}/audit?limit=100`)
    const events = ((await res.json()) as { events: AuditEvent[] }).events
    for (const [path, , , client, peer] of cases) {
      const e = events.find((ev) => ev.path === path)
      t.ok(e, `${path} audited`)
      t.equal(e?.client_address, client, `${path}: client_address`)
      t.equal(
        e?.peer_address,
        peer,
        `${path}: peer_address ${peer === undefined ? 'absent' : 'is the proxy'}`,
      )
    }
  },
)
