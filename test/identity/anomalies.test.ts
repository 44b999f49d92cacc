import t from 'tap'
import {
  AnomalyDetector,
  addFailureAnomalies,
  anomaliesFromFailures,
  type PodTokenPeers,
} from '../../src/identity/anomalies.ts'
import { certEvidenceFromPem, loadCertificateDecoder } from '../../src/identity/certificate.ts'
import type { CertEvidence, ConnectionInfo, EvidenceSet, Identity, JwtEvidence } from '../../src/types.ts'
import { type EvidenceParts, evidenceSet } from '../helpers/evidence.ts'
import { createCA, issueCert } from '../helpers/pki.ts'

// the X.509 name decoder is loaded on demand (as the sidecar does before it reads a certificate)
await loadCertificateDecoder()

const ca = await createCA('mesh-ca')
const apiCert = certEvidenceFromPem(
  (await issueCert(ca, { cn: 'api', uriSans: ['spiffe://cluster.local/ns/payments/sa/api'] })).certPem,
  'mtls',
  true,
) as CertEvidence
const workerCert = certEvidenceFromPem(
  (await issueCert(ca, { cn: 'worker', uriSans: ['spiffe://cluster.local/ns/orders/sa/worker'] })).certPem,
  'mtls',
  true,
) as CertEvidence

const identity: Identity = { name: 'x', kind: 'service', source: 'jwt', verified: true, attributes: {} }
const conn = (remoteAddress = '10.0.0.1'): ConnectionInfo => ({ remoteAddress, remotePort: 1, tls: true })
const x5t = (cert: CertEvidence) => Buffer.from(cert.sha256!, 'hex').toString('base64url')

function jwt(claims: Record<string, unknown>, profile?: string, fp = 'aaaaaaaaaaaaaaaa'): JwtEvidence {
  return {
    source: 'jwt',
    verified: true,
    issuer: 'https://issuer.example',
    claims,
    alg: 'ES256',
    fingerprint: fp,
    ...(profile ? { profile } : {}),
  }
}
function evidence(parts: EvidenceParts): EvidenceSet {
  return evidenceSet(parts)
}
const defaults = { tokenSharedPeers: 3, tokenSharedWindow: 60_000, requireCertTokenMatch: false }

t.test('binding_mismatch: certificate-bound token vs the presented certificate', async (t) => {
  const d = new AnomalyDetector(defaults)
  const bound = jwt({ sub: 'a', cnf: { 'x5t#S256': x5t(apiCert) } })
  t.same(d.inspect(evidence({ jwt: bound, mtls: apiCert }), identity, conn()), [], 'matching cert')
  t.same(
    d.inspect(evidence({ jwt: bound, xfcc: { ...apiCert, source: 'xfcc' } }), identity, conn()),
    [],
    'matching forwarded cert',
  )
  t.same(d.inspect(evidence({ jwt: bound, mtls: workerCert }), identity, conn()), ['binding_mismatch'])
  t.same(d.inspect(evidence({ jwt: bound }), identity, conn()), ['binding_mismatch'], 'bound token, no cert')
  const unbound = jwt({ sub: 'a' })
  t.same(d.inspect(evidence({ jwt: unbound, mtls: workerCert }), identity, conn()), [], 'no cnf claim')
  t.same(d.inspect(evidence({ mtls: workerCert }), identity, conn()), [], 'no token')
})

t.test('identity_mismatch: cert workload vs token workload, only when required', async (t) => {
  const strict = new AnomalyDetector({ ...defaults, requireCertTokenMatch: true })
  const lax = new AnomalyDetector(defaults)
  const k8s = (ns: string, sa: string) =>
    jwt(
      {
        sub: `system:serviceaccount:${ns}:${sa}`,
        'kubernetes.io': { namespace: ns, serviceaccount: { name: sa, uid: 'u' } },
      },
      'kubernetes',
    )
  t.same(strict.inspect(evidence({ jwt: k8s('payments', 'api'), mtls: apiCert }), identity, conn()), [])
  t.same(strict.inspect(evidence({ jwt: k8s('orders', 'worker'), mtls: apiCert }), identity, conn()), [
    'identity_mismatch',
  ])
  t.same(lax.inspect(evidence({ jwt: k8s('orders', 'worker'), mtls: apiCert }), identity, conn()), [])
  const subOnly = jwt({ sub: 'system:serviceaccount:orders:worker' }, 'kubernetes')
  t.same(strict.inspect(evidence({ jwt: subOnly, mtls: workerCert }), identity, conn()), [])
  t.same(strict.inspect(evidence({ jwt: subOnly, mtls: apiCert }), identity, conn()), ['identity_mismatch'])
  const svid = jwt({ sub: 'spiffe://cluster.local/ns/payments/sa/api' }, 'spiffe')
  t.same(strict.inspect(evidence({ jwt: svid, mtls: apiCert }), identity, conn()), [])
  t.same(strict.inspect(evidence({ jwt: svid, mtls: workerCert }), identity, conn()), ['identity_mismatch'])
  const human = jwt({ sub: 'alice', email: 'alice@example.com' }, 'generic')
  t.same(strict.inspect(evidence({ jwt: human, mtls: apiCert }), identity, conn()), [], 'nothing to compare')
})

// The shipped config names no issuer profile: tokens are then named with the profile their issuer URL
// suggests (a Kubernetes token is `orders/worker`), and were compared with the certificate only when a
// profile was configured, so a stolen token next to another workload's certificate raised nothing.
t.test('identity_mismatch: a token whose issuer names no profile is read with the guessed one', async (t) => {
  const strict = new AnomalyDetector({ ...defaults, requireCertTokenMatch: true })
  const inCluster = (claims: Record<string, unknown>): JwtEvidence => ({
    ...jwt(claims),
    issuer: 'https://kubernetes.default.svc.cluster.local',
  })
  const k8s = inCluster({
    sub: 'system:serviceaccount:orders:worker',
    'kubernetes.io': { namespace: 'orders', serviceaccount: { name: 'worker', uid: 'u' } },
  })
  t.same(strict.inspect(evidence({ jwt: k8s, mtls: workerCert }), identity, conn()), [], 'same workload')
  t.same(
    strict.inspect(evidence({ jwt: k8s, mtls: apiCert }), identity, conn()),
    ['identity_mismatch'],
    'a Kubernetes token, guessed: compared with the certificate',
  )
  const subOnly = inCluster({ sub: 'system:serviceaccount:orders:worker' })
  t.same(strict.inspect(evidence({ jwt: subOnly, mtls: apiCert }), identity, conn()), ['identity_mismatch'])
  // another issuer's claims in the same shapes name no workload: its tokens are named under its own host
  const partner = jwt({ sub: 'system:serviceaccount:orders:worker' })
  t.same(
    strict.inspect(evidence({ jwt: partner, mtls: apiCert }), identity, conn()),
    [],
    "a Kubernetes-shaped subject from an issuer that is no cluster's is not that workload",
  )
  const svid = jwt({ sub: 'spiffe://cluster.local/ns/orders/sa/worker' })
  t.same(
    strict.inspect(evidence({ jwt: svid, mtls: apiCert }), identity, conn()),
    [],
    'a JWT-SVID is compared once its issuer says profile: spiffe',
  )
  const configuredGeneric = jwt({ sub: 'system:serviceaccount:orders:worker' }, 'generic')
  t.same(
    strict.inspect(evidence({ jwt: configuredGeneric, mtls: apiCert }), identity, conn()),
    [],
    'a configured profile wins over the guess: a generic token names no workload',
  )
})

t.test('token_shared: reported once per window when peers exceed the limit', async (t) => {
  let now = 1_000_000
  const d = new AnomalyDetector({ ...defaults, tokenSharedWindow: 10_000 }, () => now)
  const token = jwt({ sub: 'ci' }, undefined, 'feedfacefeedface')
  const seen = (peer: string) => d.inspect(evidence({ jwt: token }), identity, conn(peer))
  const all: string[] = []
  for (const peer of ['10.0.0.1', '10.0.0.2', '10.0.0.1', '10.0.0.3']) all.push(...seen(peer))
  t.same(all, [], 'three peers is within the limit')
  t.equal(d.peersOf('feedfacefeedface'), 3, 'a peer seen twice counts once')
  t.same(seen('10.0.0.4'), ['token_shared'], 'the fourth peer trips it')
  t.same([...seen('10.0.0.5'), ...seen('10.0.0.6'), ...seen('10.0.0.4')], [], 'only once per window')
  now += 10_001
  const next: string[] = []
  for (const peer of ['10.0.0.1', '10.0.0.2', '10.0.0.3', '10.0.0.4', '10.0.0.5']) next.push(...seen(peer))
  t.same(next, ['token_shared'], 'a new window reports again, once')
  // behind a trusted proxy every peer address is the proxy: the forwarded cert tells workloads apart
  const viaProxy = new AnomalyDetector({ ...defaults, tokenSharedPeers: 1 }, () => now)
  const ev = (cert: CertEvidence) => evidence({ jwt: token, xfcc: { ...cert, source: 'xfcc' } })
  t.same(viaProxy.inspect(ev(apiCert), identity, conn('10.9.9.9')), [])
  t.same(viaProxy.inspect(ev(workerCert), identity, conn('10.9.9.9')), ['token_shared'])
})

t.test(
  'token_shared in a pod: new clients go to the pod, its verdict flags the next request once',
  async (t) => {
    const sent: string[] = []
    const verdicts = new Set<string>()
    const pod: PodTokenPeers = {
      seen: (fp, peer) => sent.push(`${fp} ${peer}`),
      takeVerdict: (fp) => verdicts.delete(fp),
    }
    const d = new AnomalyDetector({ ...defaults, tokenSharedPeers: 1 }, Date.now, { pod })
    const token = jwt({ sub: 'ci' }, undefined, 'cafecafecafecafe')
    const seen = (peer: string) => d.inspect(evidence({ jwt: token }), identity, conn(peer))
    const local = [...seen('10.0.0.1'), ...seen('10.0.0.1'), ...seen('10.0.0.2'), ...seen('10.0.0.3')]
    t.same(local, [], "past the limit on this worker alone: the pod decides, not this worker's count")
    t.same(
      sent,
      ['cafecafecafecafe 10.0.0.1', 'cafecafecafecafe 10.0.0.2'],
      'each client once per window, and no more than one past the limit',
    )
    verdicts.add('cafecafecafecafe')
    t.same(seen('10.0.0.1'), ['token_shared'], "the pod's verdict flags the next request with the token")
    verdicts.add('cafecafecafecafe')
    t.same(seen('10.0.0.1'), [], 'once a window, whatever the pod says again')
  },
)

t.test('memory stays bounded with 100,000 distinct tokens and peers', async (t) => {
  const d = new AnomalyDetector(defaults, Date.now, { maxTokens: 1000 })
  for (let i = 0; i < 100_000; i++) {
    d.inspect(
      evidence({ jwt: jwt({ sub: 's' }, undefined, `fp${i}`) }),
      identity,
      conn(`10.0.${i >> 8}.${i & 255}`),
    )
  }
  t.equal(d.trackedTokens, 1000, 'token table capped')
  const one = jwt({ sub: 's' }, undefined, 'one-token')
  let reports = 0
  for (let i = 0; i < 100_000; i++) {
    reports += d.inspect(evidence({ jwt: one }), identity, conn(`10.1.${i >> 8}.${i & 255}`)).length
  }
  t.equal(reports, 1, 'one report for one window')
  t.equal(
    d.peersOf('one-token'),
    defaults.tokenSharedPeers + 1,
    'peers remembered: one past the limit, no more',
  )
})

t.test('anomalies implied by failures', async (t) => {
  t.same(
    anomaliesFromFailures([
      { failed: true, source: 'xfcc', reason: 'untrusted_forwarder' },
      { failed: true, source: 'jwt', reason: 'unknown_kid' },
      { failed: true, source: 'jwt', reason: 'expired' },
      { failed: true, source: 'jwt', reason: 'expired' },
      { failed: true, source: 'jwt', reason: 'bad_signature' },
    ]),
    ['spoofed_header', 'unknown_kid', 'expired_in_use'],
  )
  t.same(anomaliesFromFailures([]), [])
})

t.test('the per-request forms append to the request’s own list, each anomaly once', async (t) => {
  const into: EvidenceSet['anomalies'] = ['spoofed_header']
  addFailureAnomalies(
    [
      { failed: true, source: 'xfcc', reason: 'untrusted_forwarder' },
      { failed: true, source: 'jwt', reason: 'expired' },
    ],
    into,
  )
  t.same(into, ['spoofed_header', 'expired_in_use'], 'an anomaly already listed is not repeated')

  const d = new AnomalyDetector({ ...defaults, tokenSharedPeers: 1 })
  const bound = jwt({ cnf: { 'x5t#S256': x5t(apiCert) } }, undefined, 'bbbbbbbbbbbbbbbb')
  const list: EvidenceSet['anomalies'] = []
  d.inspectInto(evidence({ jwt: bound, mtls: workerCert }), identity, conn('10.0.0.1'), list)
  t.same(list, ['binding_mismatch'], 'first peer: only the binding mismatch')
  d.inspectInto(evidence({ jwt: bound, mtls: workerCert }), identity, conn('10.0.0.2'), list)
  t.same(list, ['binding_mismatch'], 'same certificate again: same peer, nothing new and no duplicate')
  d.inspectInto(evidence({ jwt: bound, mtls: apiCert }), identity, conn('10.0.0.3'), list)
  t.same(list, ['binding_mismatch', 'token_shared'], 'a second certificate shares the token')
  t.same(
    d.inspect(evidence({ jwt: bound, mtls: apiCert }), identity, conn()),
    [],
    'inspect() returns a fresh list and reports token_shared once per window',
  )
})
