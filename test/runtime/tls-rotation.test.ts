// The https listener's certificate, key and client CA rotate while it serves (cert-manager rewriting a
// Secret volume): new TLS connections get the new files, established ones keep working, a broken rotation
// is logged and counted while the previous certificate keeps serving. Runs the built bundle.
import { X509Certificate } from 'node:crypto'
import { copyFile, mkdir, rename, symlink } from 'node:fs/promises'
import { Agent, request } from 'node:https'
import { join } from 'node:path'
import { connect, type PeerCertificate, type TLSSocket } from 'node:tls'
import t, { type Test } from 'tap'
import { type BinSidecar, startBin } from '../helpers/bin.ts'
import { eventually } from '../helpers/eventually.ts'
import { metricValue, scrape, seriesCount } from '../helpers/metrics.ts'
import { type CA, createCA, issueCert, type KeyPair } from '../helpers/pki.ts'
import { replaceFile, scratchDir } from '../helpers/scratch.ts'
import { startUpstream } from '../helpers/upstream.ts'

const SPIFFE = 'spiffe://example.com/ns/shop/sa/web'

let serverCa: CA
let first: KeyPair
let second: KeyPair
t.before(async () => {
  serverCa = await createCA('rotation-server-ca')
  first = await issueCert(serverCa, { cn: 'localhost', dnsSans: ['localhost'], server: true })
  second = await issueCert(serverCa, { cn: 'localhost', dnsSans: ['localhost'], server: true })
})

async function startHttps(
  t: Test,
  https: Record<string, string>,
  extra: Record<string, unknown> = {},
): Promise<{ bin: BinSidecar; port: number }> {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const bin = await startBin(t, {
    listen: { http: '127.0.0.1:0', https: { address: '127.0.0.1:0', ...https } },
    upstream: up.url,
    timeouts: { drainDelay: '0s' },
    identities: [
      { name: '{ns}/{sa}', kind: 'service', match: { spiffe: 'spiffe://example.com/ns/{ns}/sa/{sa}' } },
    ],
    ...extra,
  })
  const started = bin.logs().find((l) => l['event'] === 'started')!
  return { bin, port: Number(String(started['https']).split(':').pop()) }
}

/** the certificate a new TLS connection is served */
function servedCert(port: number): Promise<PeerCertificate> {
  return new Promise((resolve, reject) => {
    const socket = connect(
      { host: '127.0.0.1', port, servername: 'localhost', rejectUnauthorized: false },
      () => {
        resolve(socket.getPeerCertificate())
        socket.end()
      },
    )
    socket.on('error', reject)
  })
}

/** GET /echo over a new TLS connection (or `agent`'s), presenting `client`; the upstream's identity headers */
function call(
  port: number,
  opts: { client?: KeyPair; agent?: Agent } = {},
): Promise<{ status: number; headers: Record<string, string>; reused: boolean; served: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port,
        path: '/echo',
        ca: serverCa.certPem,
        servername: 'localhost',
        ...(opts.client ? { cert: opts.client.certPem, key: opts.client.keyPem } : {}),
        agent: opts.agent ?? false,
      },
      (res) => {
        // read now: a keep-alive socket goes back to its agent once the response ends
        const served = (res.socket as TLSSocket).getPeerCertificate().fingerprint256
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (c: string) => {
          body += c
        })
        res.on('end', () => {
          try {
            resolve({
              status: res.statusCode ?? 0,
              headers: JSON.parse(body).headers,
              reused: req.reusedSocket,
              served,
            })
          } catch (err) {
            reject(err)
          }
        })
      },
    )
    req.on('error', reject)
    req.end()
  })
}

const tlsReloads = async (bin: BinSidecar, result: 'success' | 'failure') =>
  metricValue(await scrape(bin.adminUrl), 'nhi_tls_reloads_total', { result })

t.test(
  'server certificate and key rewritten in place: new connections get them, open ones go on',
  async (t) => {
    const dir = await scratchDir('tls-rotate')
    const cert = join(dir, 'tls.crt')
    const key = join(dir, 'tls.key')
    await copyFile(first.certFile, cert)
    await copyFile(first.keyFile, key)
    const { bin, port } = await startHttps(t, { cert, key })
    const before = await servedCert(port)
    t.equal(before.serialNumber, serialOf(first), 'the first certificate is served')
    t.equal(
      seriesCount(await scrape(bin.adminUrl), 'nhi_tls_reloads_total'),
      2,
      'success and failure exported at 0 from the start',
    )
    t.equal(
      await certificateExpiry(bin),
      notAfterOf(first),
      'the served certificate expiry is exported from the start',
    )

    const agent = new Agent({ keepAlive: true, maxSockets: 1 })
    t.teardown(() => agent.destroy())
    const open = await call(port, { agent })
    t.equal(open.status, 200)

    await replaceFile(key, second.keyPem)
    await replaceFile(cert, second.certPem)
    const after = await eventually(
      async () => {
        const c = await servedCert(port)
        return c.fingerprint256 !== before.fingerprint256 && c
      },
      { what: 'a new connection served the rotated certificate' },
    )
    t.equal(after.serialNumber, serialOf(second), 'the new certificate is served')
    const kept = await call(port, { agent })
    t.equal(kept.status, 200, 'the keep-alive connection opened before the rotation still serves')
    t.ok(kept.reused, 'on the same connection')
    t.equal(kept.served, before.fingerprint256, 'which keeps the certificate it was opened with')
    await eventually(() => bin.logs().some((l) => l['event'] === 'tls_reloaded'), { what: 'tls_reloaded' })
    t.ok((await tlsReloads(bin, 'success')) >= 1, 'counted')
    t.equal(await certificateExpiry(bin), notAfterOf(second), 'and the new expiry exported')
  },
)

t.test('a Secret volume ..data symlink swap rotates the certificate', async (t) => {
  const dir = await scratchDir('tls-secret')
  // the kubelet's layout: tls.crt → ..data/tls.crt, ..data → ..v1 (swapped atomically)
  await mkdir(join(dir, '..v1'))
  await copyFile(first.certFile, join(dir, '..v1', 'tls.crt'))
  await copyFile(first.keyFile, join(dir, '..v1', 'tls.key'))
  await symlink('..v1', join(dir, '..data'))
  await symlink('..data/tls.crt', join(dir, 'tls.crt'))
  await symlink('..data/tls.key', join(dir, 'tls.key'))
  const { bin, port } = await startHttps(t, { cert: join(dir, 'tls.crt'), key: join(dir, 'tls.key') })
  const before = await servedCert(port)

  await mkdir(join(dir, '..v2'))
  await copyFile(second.certFile, join(dir, '..v2', 'tls.crt'))
  await copyFile(second.keyFile, join(dir, '..v2', 'tls.key'))
  await symlink('..v2', join(dir, '..data_tmp'))
  await rename(join(dir, '..data_tmp'), join(dir, '..data'))
  const after = await eventually(
    async () => {
      const c = await servedCert(port)
      return c.fingerprint256 !== before.fingerprint256 && c
    },
    { what: 'the swapped certificate served' },
  )
  t.equal(after.serialNumber, serialOf(second))
  t.notOk(
    bin.logs().some((l) => l['event'] === 'tls_reload_failed'),
    'an atomic swap never shows a half-rotated pair',
  )
})

t.test(
  'a key that does not match the certificate is refused; the old certificate keeps serving',
  async (t) => {
    const dir = await scratchDir('tls-mismatch')
    const cert = join(dir, 'tls.crt')
    const key = join(dir, 'tls.key')
    await copyFile(first.certFile, cert)
    await copyFile(first.keyFile, key)
    const { bin, port } = await startHttps(t, { cert, key })
    const before = await servedCert(port)

    await replaceFile(key, second.keyPem)
    const failed = await eventually(() => bin.logs().find((l) => l['event'] === 'tls_reload_failed'), {
      what: 'tls_reload_failed',
    })
    t.equal(failed['file'], key, 'names the file')
    t.match(String(failed['reason']), /does not match the certificate/, 'and why')
    t.notMatch(bin.stderr(), /PRIVATE KEY/, 'no key material in the logs')
    t.ok((await tlsReloads(bin, 'failure')) >= 1, 'counted')
    t.equal((await servedCert(port)).fingerprint256, before.fingerprint256, 'the old certificate is served')
    t.equal((await call(port)).status, 200, 'and new connections are served')

    // the matching certificate arrives: the rotation completes
    await replaceFile(cert, second.certPem)
    await eventually(async () => (await servedCert(port)).fingerprint256 !== before.fingerprint256, {
      what: 'the completed rotation served',
    })
  },
)

t.test(
  'a certificate outside its dates is refused with a warning; the current one serves until a valid one comes',
  async (t) => {
    const dir = await scratchDir('tls-dates')
    const cert = join(dir, 'tls.crt')
    const key = join(dir, 'tls.key')
    await copyFile(first.certFile, cert)
    await copyFile(first.keyFile, key)
    const { bin, port } = await startHttps(t, { cert, key })
    t.equal((await servedCert(port)).serialNumber, serialOf(first))
    const server = { cn: 'localhost', dnsSans: ['localhost'], server: true }
    const day = 86_400_000
    const refusal = (event: string, n: number) =>
      eventually(() => bin.logs().filter((l) => l['event'] === event)[n - 1], { what: `${event} #${n}` })

    // a renewal that ran out before it was written (a stalled issuer, a restored backup)
    const expired = await issueCert(serverCa, { ...server, days: -1 })
    await replaceFile(key, expired.keyPem)
    await replaceFile(cert, expired.certPem)
    const ranOut = await refusal('tls_reload_cert_expired', 1)
    t.equal(ranOut['level'], 40, 'a warning')
    t.same(
      [ranOut['side'], ranOut['setting'], ranOut['file']],
      ['listener', 'listen.https.cert', cert],
      'naming the certificate file',
    )
    t.equal(ranOut['notAfter'], new Date(new X509Certificate(expired.certPem).validTo).toISOString())
    t.match(String(ranOut['msg']), /the certificate expired at .*; serving the previous certificate/)
    t.notMatch(bin.stderr(), /PRIVATE KEY|BEGIN CERTIFICATE/, 'no key or certificate material in the logs')
    t.equal((await servedCert(port)).serialNumber, serialOf(first), 'the current certificate is still served')
    t.equal((await call(port)).status, 200, 'and new connections are served')
    t.ok((await tlsReloads(bin, 'failure')) >= 1, 'counted as a failed rotation')
    t.notOk(
      bin.logs().some((l) => l['event'] === 'tls_reloaded'),
      'nothing reported as reloaded',
    )
    t.equal(await certificateExpiry(bin), notAfterOf(first), 'the expiry exported is the served one')

    // one issued for tomorrow (an issuer whose clock runs a day ahead)
    const early = await issueCert(serverCa, { ...server, notBefore: new Date(Date.now() + day) })
    await replaceFile(key, early.keyPem)
    await replaceFile(cert, early.certPem)
    const notYet = await refusal('tls_reload_cert_not_yet_valid', 1)
    t.equal(notYet['level'], 40)
    t.equal(notYet['notBefore'], new Date(new X509Certificate(early.certPem).validFrom).toISOString())
    t.match(String(notYet['msg']), /the certificate is not valid before /)
    t.equal((await servedCert(port)).serialNumber, serialOf(first), 'the current certificate is still served')

    // one that runs out in ten minutes is still better than one that has run out: taken
    const lastMinute = await issueCert(serverCa, {
      ...server,
      notBefore: new Date(Date.now() - day),
      days: 1 + 10 / (24 * 60),
    })
    await replaceFile(key, lastMinute.keyPem)
    await replaceFile(cert, lastMinute.certPem)
    await eventually(async () => (await servedCert(port)).serialNumber === serialOf(lastMinute), {
      what: 'the certificate expiring in ten minutes served',
    })
    await eventually(async () => (await certificateExpiry(bin)) === notAfterOf(lastMinute), {
      what: 'its expiry exported, ten minutes ahead, for an alert to see',
    })

    // one whose validity starts two minutes from now: within the clock skew allowed, taken
    const skewed = await issueCert(serverCa, { ...server, notBefore: new Date(Date.now() + 120_000) })
    await replaceFile(key, skewed.keyPem)
    await replaceFile(cert, skewed.certPem)
    await eventually(async () => (await servedCert(port)).serialNumber === serialOf(skewed), {
      what: 'the certificate valid from two minutes ahead served',
    })
    t.equal(bin.logs().filter((l) => l['event'] === 'tls_reloaded').length, 2, 'two rotations applied')
  },
)

t.test('client CA replaced: new connections verify against the new CA only', async (t) => {
  const oldCa = await createCA('rotation-client-ca-old')
  const newCa = await createCA('rotation-client-ca-new')
  const oldLeaf = await issueCert(oldCa, { cn: 'web', uriSans: [SPIFFE] })
  const newLeaf = await issueCert(newCa, { cn: 'web', uriSans: [SPIFFE] })
  const dir = await scratchDir('tls-ca')
  const ca = join(dir, 'ca.crt')
  await copyFile(oldCa.certFile, ca)
  const { bin, port } = await startHttps(t, { cert: first.certFile, key: first.keyFile, clientCA: ca })
  t.equal((await call(port, { client: oldLeaf })).headers['x-nhi-verified'], 'true', 'old CA verifies')
  t.equal((await call(port, { client: newLeaf })).headers['x-nhi-verified'], 'false', 'new CA not yet')

  await replaceFile(ca, newCa.certPem)
  await eventually(async () => (await call(port, { client: newLeaf })).headers['x-nhi-verified'] === 'true', {
    what: 'a certificate of the new CA verified',
  })
  const fresh = await call(port, { client: newLeaf })
  t.equal(fresh.headers['x-nhi-identity'], 'shop/web', 'the new CA verifies')
  const old = await call(port, { client: oldLeaf })
  t.equal(old.headers['x-nhi-verified'], 'false', 'the old CA no longer does')
  t.not(old.headers['x-nhi-source'], 'mtls')
  const reloaded = bin.logs().find((l) => l['event'] === 'tls_reloaded')!
  t.same(
    [reloaded['side'], reloaded['cert'], reloaded['clientCA'], reloaded['key']],
    ['listener', first.certFile, ca, undefined],
    'the reload names the certificate and client CA files, not the key',
  )
  // an expired certificate is cert_expired only when it chains to the client CA: the rotated one now
  const expiredFailures = async () =>
    metricValue(await scrape(bin.adminUrl), 'nhi_auth_failures_total', {
      source: 'mtls',
      reason: 'cert_expired',
    })
  const expiredBefore = await expiredFailures()
  const ranOut = await issueCert(newCa, { cn: 'web', uriSans: [SPIFFE], days: -1 })
  t.equal((await call(port, { client: ranOut })).headers['x-nhi-verified'], 'false')
  await eventually(async () => (await expiredFailures()) === expiredBefore + 1, {
    what: 'an expired certificate of the rotated CA counted as cert_expired',
  })

  // a bundle without a certificate would make Node fall back to its public roots: refused
  await replaceFile(ca, '')
  const failed = await eventually(() => bin.logs().find((l) => l['event'] === 'tls_reload_failed'), {
    what: 'tls_reload_failed for an empty CA bundle',
  })
  t.equal(failed['file'], ca)
  t.equal(failed['setting'], 'listen.https.clientCA')
  t.equal(
    failed['msg'],
    `listen.https.clientCA "${ca}": holds no CA certificate (no PEM CERTIFICATE block); serving the previous certificate`,
  )
  t.equal(
    (await call(port, { client: newLeaf })).headers['x-nhi-verified'],
    'true',
    'the last CA still verifies',
  )
  t.equal((await call(port, { client: oldLeaf })).headers['x-nhi-verified'], 'false')
})

t.test('workers: 2: every worker serves the rotated certificate', async (t) => {
  const dir = await scratchDir('tls-workers')
  const cert = join(dir, 'tls.crt')
  const key = join(dir, 'tls.key')
  await copyFile(first.certFile, cert)
  await copyFile(first.keyFile, key)
  const { bin, port } = await startHttps(t, { cert, key }, { workers: 2 })
  const before = await servedCert(port)
  await replaceFile(key, second.keyPem)
  await replaceFile(cert, second.certPem)
  await eventually(
    async () => {
      const served = await Promise.all([
        servedCert(port),
        servedCert(port),
        servedCert(port),
        servedCert(port),
      ])
      return served.every((c) => c.fingerprint256 !== before.fingerprint256)
    },
    { what: 'new connections to every worker served the rotated certificate' },
  )
  const workers = await eventually(
    () => {
      const w = new Set(
        bin
          .logs()
          .filter((l) => l['event'] === 'tls_reloaded')
          .map((l) => l['worker']),
      )
      return w.size === 2 && w
    },
    { what: 'tls_reloaded from both workers' },
  )
  t.same([...workers].sort(), ['1', '2'])
})

/** the serial number a TLS peer sees for a pair's certificate */
const serialOf = (pair: KeyPair): string => new X509Certificate(pair.certPem).serialNumber
const notAfterOf = (pair: KeyPair): number =>
  Math.floor(Date.parse(new X509Certificate(pair.certPem).validTo) / 1000)
const certificateExpiry = async (bin: BinSidecar) =>
  metricValue(await scrape(bin.adminUrl), 'nhi_tls_certificate_expiry_timestamp_seconds', {
    side: 'listener',
  })
