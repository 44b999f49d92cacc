// A rule test case with a forwarded certificate in XFCC (`format: xfcc`) is an XFCC header from its remoteAddr
// (127.0.0.1 unless given). The live proxy believes one only from a peer forwardedClientCert.trustedProxies
// trusts for the xfcc format: from anyone else, or from a proxy trusted for another format, it is an
// `untrusted_forwarder` failure and the request is attributed by its other credentials. A case used to name the certificate
// whatever its peer, so a rule test passed on a request the live proxy attributes to its user agent.
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { Agent, request } from 'undici'
import { stringify } from 'yaml'
import { metricValue, scrapeUntil } from '../helpers/metrics.ts'
import { scratchDirSync } from '../helpers/scratch.ts'
import { runCli, startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const UA = 'curl/8.5.0'
const DNS = 'worker.acme.example'
const SHA256 = 'cd'.repeat(32)
const XFCC = `Hash=${SHA256};Subject="CN=worker,O=acme";DNS=${DNS}`
/** what the live proxy names that certificate: its CN */
const NAME = 'worker'

/** the peers: not trusted, trusted for xfcc, trusted for nginx */
const PEERS = [
  { label: 'a peer not in trustedProxies', address: '127.0.0.1' },
  { label: 'the proxy trusted for xfcc', address: '127.0.0.2' },
  { label: 'a proxy trusted for another format', address: '127.0.0.3' },
]

t.test('a forwarded certificate case gets the answer the live proxy gives its peer', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const sidecar = await startTestSidecar(t, {
    upstream: upstream.url,
    forwardedClientCert: {
      trustedProxies: [
        { cidr: '127.0.0.2/32', format: 'xfcc' },
        { cidr: '127.0.0.3/32', format: 'nginx' },
      ],
    },
  })

  // the live proxy, the XFCC header sent from each peer
  const live: { identity: string; source: string; verified: boolean }[] = []
  for (const { address } of PEERS) {
    const from = new Agent({ localAddress: address })
    t.teardown(() => from.close())
    const res = await request(`${sidecar.proxyUrl}/echo`, {
      dispatcher: from,
      headers: { 'x-forwarded-client-cert': XFCC, 'user-agent': UA },
    })
    t.equal(res.statusCode, 200)
    const seen = JSON.parse(await res.body.text()).headers as Record<string, string>
    live.push({
      identity: decodeURIComponent(seen['x-nhi-identity']!),
      source: seen['x-nhi-source']!,
      verified: seen['x-nhi-verified'] === 'true',
    })
  }
  t.same(
    live.map((l) => `${l.identity} ${l.source} ${l.verified}`),
    ['ua:curl useragent false', `${NAME} xfcc true`, 'ua:curl useragent false'],
    'live: the certificate is named from the xfcc proxy only',
  )
  const samples = await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_auth_failures_total', { source: 'xfcc', reason: 'untrusted_forwarder' }) >= 2,
    'two untrusted_forwarder failures',
  )
  t.equal(
    metricValue(samples, 'nhi_auth_failures_total', { source: 'xfcc', reason: 'untrusted_forwarder' }),
    2,
  )

  // the same requests as rule test cases, run by the CLI on the config the sidecar runs
  // the live requests carry XFCC: without `format`, a case from the nginx proxy would stand for its header
  const cert = { subject: 'CN=worker,O=acme', dns: [DNS], sha256: SHA256, forwarded: true, format: 'xfcc' }
  const tests: { name: string; request: Record<string, unknown>; expect: Record<string, unknown> }[] =
    PEERS.map(({ label, address }, i) => ({
      name: `from ${label}, as live`,
      request: { remoteAddr: address, userAgent: UA, cert },
      expect: live[i]!,
    }))
  const named = { identity: NAME, source: 'xfcc', verified: true }
  tests.push(
    {
      name: 'without remoteAddr, expecting the certificate',
      request: { userAgent: UA, cert },
      expect: named,
    },
    {
      name: 'from the proxy trusted for nginx, expecting the certificate',
      request: { remoteAddr: '127.0.0.3', userAgent: UA, cert },
      expect: named,
    },
  )
  const dir = scratchDirSync('ruletest-forwarder')
  const file = join(dir, 'forwarder.test.yaml')
  writeFileSync(file, stringify({ config: sidecar.configPath, tests }))
  const r = await runCli(['test', file])
  t.equal(r.code, 1, r.stdout)
  t.match(r.stdout, /^ok 1 - from a peer not in trustedProxies, as live$/m, 'untrusted peer: as live')
  t.match(r.stdout, /^ok 2 - from the proxy trusted for xfcc, as live$/m, 'trusted peer: as live')
  t.match(r.stdout, /^ok 3 - from a proxy trusted for another format, as live$/m, 'other format: as live')
  t.match(
    r.stdout,
    /^not ok 4 - without remoteAddr, expecting the certificate\n {2}---\n {2}identity: expected "worker", got "ua:curl"\n/m,
    'a case without remoteAddr comes from 127.0.0.1, which the config does not trust',
  )
  t.match(
    r.stdout,
    /^ {2}not verified: xfcc untrusted_forwarder: forwarded client certificate header from a peer not in trustedProxies \(peer 127\.0\.0\.1\)$/m,
    'the failure is reported as a token of an unlisted issuer is',
  )
  t.match(r.stdout, /^not ok 5 - from the proxy trusted for nginx, expecting the certificate$/m)
  t.match(
    r.stdout,
    /^ {2}not verified: xfcc untrusted_forwarder: forwarded client certificate header other than the nginx format this proxy is trusted for \(peer 127\.0\.0\.3\)$/m,
  )
  t.match(r.stdout, /^# 5 tests, 3 passed, 2 failed$/m)
})
