// upstreamTls's client certificate, key and CA bundle rotate while the proxy serves (cert-manager rewriting
// a Secret volume): upstream connections opened after a rotation present the new client certificate,
// requests already in flight finish, and a set that does not load is logged and counted while the previous
// certificate keeps being presented. At start the same checks refuse what a rotation would. Runs the built
// bundle against https:// and h2:// upstreams that require a client certificate.
import { X509Certificate } from 'node:crypto'
import { once } from 'node:events'
import { copyFile, mkdir, rename, symlink, writeFile } from 'node:fs/promises'
import { createSecureServer } from 'node:http2'
import { createServer as createHttpsServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import type { TLSSocket } from 'node:tls'
import t, { type Test } from 'tap'
import { stringify } from 'yaml'
import { type BinSidecar, startBin } from '../helpers/bin.ts'
import { eventually } from '../helpers/eventually.ts'
import { metricValue, scrape, seriesCount } from '../helpers/metrics.ts'
import { type CA, createCA, createServerPki, issueCert, type KeyPair } from '../helpers/pki.ts'
import { replaceFile, scratchDir } from '../helpers/scratch.ts'
import { runCli } from '../helpers/sidecar.ts'

let serverCa: CA
let server: KeyPair
let clientCa: CA
let v1: KeyPair
let v2: KeyPair
t.before(async () => {
  ;({ ca: serverCa, server } = await createServerPki())
  clientCa = await createCA('upstream-rotation-client-ca')
  v1 = await issueCert(clientCa, { cn: 'proxy-v1' })
  v2 = await issueCert(clientCa, { cn: 'proxy-v2' })
})

interface Upstream {
  url: string
  /** `/slow` requests wait for this to be called */
  release(): void
  /** how many `/slow` requests arrived */
  slowArrived(): number
}

/**
 * An https:// (HTTP/1.1, every response closing its connection so each request is a new TLS handshake) or
 * h2:// upstream that requires a client certificate of `clientCa` and answers with that certificate's CN.
 */
async function startUpstream(t: Test, protocol: 'https' | 'h2'): Promise<Upstream> {
  let release!: () => void
  const released = new Promise<void>((done) => {
    release = done
  })
  let slow = 0
  const handler = (
    req: { url?: string | undefined; socket: unknown },
    res: { writeHead(status: number, headers: Record<string, string>): unknown; end(body: string): unknown },
  ) => {
    const cn = (req.socket as TLSSocket).getPeerCertificate().subject?.CN ?? null
    const answer = () => res.end(JSON.stringify({ cn }))
    const headers: Record<string, string> = { 'content-type': 'application/json' }
    if (protocol === 'https') headers['connection'] = 'close'
    res.writeHead(200, headers)
    if (req.url === '/slow') {
      slow++
      void released.then(answer)
    } else answer()
  }
  const options = {
    cert: server.certPem,
    key: server.keyPem,
    ca: clientCa.certPem,
    requestCert: true,
    rejectUnauthorized: true,
  }
  const s = protocol === 'https' ? createHttpsServer(options, handler) : createSecureServer(options, handler)
  s.listen(0, '127.0.0.1')
  await once(s, 'listening')
  t.teardown(() => {
    release()
    ;(s as { closeAllConnections?: () => void }).closeAllConnections?.()
    s.close()
  })
  return {
    url: `${protocol}://127.0.0.1:${(s.address() as AddressInfo).port}`,
    release,
    slowArrived: () => slow,
  }
}

/** the client certificate files in a directory of their own, first holding v1 */
async function clientFiles(): Promise<{ dir: string; cert: string; key: string }> {
  const dir = await scratchDir('upstream-tls')
  const cert = join(dir, 'tls.crt')
  const key = join(dir, 'tls.key')
  await copyFile(v1.certFile, cert)
  await copyFile(v1.keyFile, key)
  return { dir, cert, key }
}

async function startProxy(
  t: Test,
  upstream: Upstream,
  files: { cert: string; key: string; ca?: string },
  extra: Record<string, unknown> = {},
): Promise<BinSidecar> {
  return startBin(t, {
    upstream: upstream.url,
    upstreamTls: { ca: serverCa.certFile, servername: 'localhost', ...files },
    timeouts: { drainDelay: '0s' },
    ...extra,
  })
}

/** the CN of the client certificate the upstream saw for one request through the proxy */
async function presented(bin: BinSidecar, path = '/'): Promise<string | null> {
  const res = await fetch(`${bin.proxyUrl}${path}`)
  if (res.status !== 200) throw new Error(`status ${res.status}: ${await res.text()}`)
  return ((await res.json()) as { cn: string | null }).cn
}

const notAfterOf = (pair: KeyPair): number =>
  Math.floor(Date.parse(new X509Certificate(pair.certPem).validTo) / 1000)
const certificateExpiry = async (bin: BinSidecar) =>
  metricValue(await scrape(bin.adminUrl), 'nhi_tls_certificate_expiry_timestamp_seconds', {
    side: 'upstream',
  })

const reloads = async (bin: BinSidecar, side: string, result: string) =>
  metricValue(await scrape(bin.adminUrl), 'nhi_tls_reloads_total', { side, result })

for (const protocol of ['https', 'h2'] as const) {
  t.test(
    `${protocol}: client certificate rewritten in place: new connections present it, in-flight requests finish`,
    async (t) => {
      const up = await startUpstream(t, protocol)
      const { cert, key } = await clientFiles()
      const bin = await startProxy(t, up, { cert, key })
      t.equal(await presented(bin), 'proxy-v1', 'the first certificate is presented')
      const samples = await scrape(bin.adminUrl)
      t.equal(seriesCount(samples, 'nhi_tls_reloads_total'), 2, 'upstream success and failure exported at 0')
      t.equal(metricValue(samples, 'nhi_tls_reloads_total', { side: 'upstream', result: 'failure' }), 0)
      t.equal(await certificateExpiry(bin), notAfterOf(v1), 'the client certificate expiry is exported')

      // a request in flight over a connection made with v1 while the files rotate
      const slow = presented(bin, '/slow')
      await eventually(() => up.slowArrived() === 1, { what: 'the slow request reached the upstream' })

      await replaceFile(key, v2.keyPem)
      await replaceFile(cert, v2.certPem)
      await eventually(async () => (await presented(bin)) === 'proxy-v2', {
        what: 'a new upstream connection presented the rotated certificate',
      })
      t.equal(await presented(bin), 'proxy-v2', 'and keeps presenting it')
      up.release()
      t.equal(await slow, 'proxy-v1', 'the request in flight finished on its connection')

      const reloaded = await eventually(
        () => bin.logs().find((l) => l['event'] === 'tls_reloaded' && l['side'] === 'upstream'),
        { what: 'tls_reloaded for the upstream' },
      )
      t.equal(reloaded['cert'], cert, 'names the file')
      t.ok((await reloads(bin, 'upstream', 'success')) >= 1, 'counted')
      t.equal(await certificateExpiry(bin), notAfterOf(v2), 'and the rotated one expiry')
    },
  )
}

t.test(
  'an expired client certificate is refused; the current one is presented until a valid one comes',
  async (t) => {
    const up = await startUpstream(t, 'https')
    const { cert, key } = await clientFiles()
    const bin = await startProxy(t, up, { cert, key })
    t.equal(await presented(bin), 'proxy-v1')

    // presenting it would fail every upstream handshake, where the current one may still have days left
    const expired = await issueCert(clientCa, { cn: 'proxy-expired', days: -1 })
    await replaceFile(key, expired.keyPem)
    await replaceFile(cert, expired.certPem)
    const refused = await eventually(() => bin.logs().find((l) => l['event'] === 'tls_reload_cert_expired'), {
      what: 'tls_reload_cert_expired',
    })
    t.same([refused['side'], refused['setting'], refused['file']], ['upstream', 'upstreamTls.cert', cert])
    t.match(String(refused['msg']), /upstream connections keep the previous TLS files/)
    t.equal(await presented(bin), 'proxy-v1', 'the current certificate is still presented')
    t.ok((await reloads(bin, 'upstream', 'failure')) >= 1, 'counted as a failed rotation')
    t.equal(await certificateExpiry(bin), notAfterOf(v1), 'the expiry exported is the presented one')

    await replaceFile(key, v2.keyPem)
    await replaceFile(cert, v2.certPem)
    await eventually(async () => (await presented(bin)) === 'proxy-v2', { what: 'the valid one presented' })
  },
)

t.test('a Secret volume ..data symlink swap rotates the client certificate', async (t) => {
  const up = await startUpstream(t, 'https')
  const dir = await scratchDir('upstream-tls-secret')
  // the kubelet's layout: tls.crt → ..data/tls.crt, ..data → ..v1 (swapped atomically)
  await mkdir(join(dir, '..v1'))
  await copyFile(v1.certFile, join(dir, '..v1', 'tls.crt'))
  await copyFile(v1.keyFile, join(dir, '..v1', 'tls.key'))
  await symlink('..v1', join(dir, '..data'))
  await symlink('..data/tls.crt', join(dir, 'tls.crt'))
  await symlink('..data/tls.key', join(dir, 'tls.key'))
  const bin = await startProxy(t, up, { cert: join(dir, 'tls.crt'), key: join(dir, 'tls.key') })
  t.equal(await presented(bin), 'proxy-v1')

  await mkdir(join(dir, '..v2'))
  await copyFile(v2.certFile, join(dir, '..v2', 'tls.crt'))
  await copyFile(v2.keyFile, join(dir, '..v2', 'tls.key'))
  await symlink('..v2', join(dir, '..data_tmp'))
  await rename(join(dir, '..data_tmp'), join(dir, '..data'))
  await eventually(async () => (await presented(bin)) === 'proxy-v2', {
    what: 'the swapped certificate presented',
  })
  t.notOk(
    bin.logs().some((l) => l['event'] === 'tls_reload_failed'),
    'an atomic swap never shows a half-rotated pair',
  )
})

t.test('a key that does not match the certificate is refused; the old certificate stays', async (t) => {
  const up = await startUpstream(t, 'https')
  const { cert, key } = await clientFiles()
  const bin = await startProxy(t, up, { cert, key })
  t.equal(await presented(bin), 'proxy-v1')

  await replaceFile(key, v2.keyPem)
  const failed = await eventually(() => bin.logs().find((l) => l['event'] === 'tls_reload_failed'), {
    what: 'tls_reload_failed',
  })
  t.equal(failed['side'], 'upstream')
  t.equal(failed['setting'], 'upstreamTls.key', 'names the setting')
  t.equal(failed['file'], key, 'and the file')
  t.match(String(failed['reason']), /does not match the certificate/, 'and why')
  t.notMatch(bin.stderr(), /PRIVATE KEY/, 'no key material in the logs')
  t.ok((await reloads(bin, 'upstream', 'failure')) >= 1, 'counted')
  t.equal(await reloads(bin, 'upstream', 'success'), 0)
  // every request is a new TLS connection to this upstream: they keep presenting v1
  t.equal(await presented(bin), 'proxy-v1', 'new connections present the old certificate')
  t.equal(await presented(bin), 'proxy-v1')

  // the matching certificate arrives: the rotation completes
  await replaceFile(cert, v2.certPem)
  await eventually(async () => (await presented(bin)) === 'proxy-v2', { what: 'the completed rotation' })
})

t.test('a CA bundle emptied by a rotation is refused, never the public roots', async (t) => {
  const up = await startUpstream(t, 'https')
  const { dir, cert, key } = await clientFiles()
  const ca = join(dir, 'ca.crt')
  await copyFile(serverCa.certFile, ca)
  const bin = await startProxy(t, up, { cert, key, ca })
  t.equal(await presented(bin), 'proxy-v1')

  await replaceFile(ca, '')
  const failed = await eventually(() => bin.logs().find((l) => l['event'] === 'tls_reload_failed'), {
    what: 'tls_reload_failed for an empty CA bundle',
  })
  t.equal(failed['setting'], 'upstreamTls.ca')
  t.equal(failed['file'], ca)
  t.match(String(failed['reason']), /holds no CA certificate/)
  t.equal(await presented(bin), 'proxy-v1', 'the upstream is still verified against the last CA bundle')
})

t.test('workers: 2: every worker rotates its client certificate', async (t) => {
  const up = await startUpstream(t, 'https')
  const { cert, key } = await clientFiles()
  const bin = await startProxy(t, up, { cert, key }, { workers: 2 })
  t.equal(await presented(bin), 'proxy-v1')
  await replaceFile(key, v2.keyPem)
  await replaceFile(cert, v2.certPem)
  const workers = await eventually(
    () => {
      const w = new Set(
        bin
          .logs()
          .filter((l) => l['event'] === 'tls_reloaded' && l['side'] === 'upstream')
          .map((l) => l['worker']),
      )
      return w.size === 2 && w
    },
    { what: 'tls_reloaded for the upstream from both workers' },
  )
  t.same([...workers].sort(), ['1', '2'])
  for (let i = 0; i < 4; i++) t.equal(await presented(bin), 'proxy-v2', 'whichever worker forwards')
})

t.test(
  'at start, upstreamTls files that cannot be used stop the start with exit 1 and one line',
  async (t) => {
    const dir = await scratchDir('upstream-tls-start')
    const empty = join(dir, 'empty.pem')
    await writeFile(empty, '')
    const cases = [
      {
        name: 'an empty CA bundle',
        upstreamTls: { ca: empty },
        line: `upstreamTls.ca "${empty}": holds no CA certificate`,
      },
      {
        name: 'a key for another certificate',
        upstreamTls: { cert: v1.certFile, key: v2.keyFile },
        line: `upstreamTls.key "${v2.keyFile}": does not match the certificate in ${v1.certFile}`,
      },
      {
        name: 'a certificate file without a certificate',
        upstreamTls: { cert: empty, key: v1.keyFile },
        line: `upstreamTls.cert "${empty}": holds no certificate`,
      },
    ]
    // with workers the primary runs the same check before it starts any: one case shows it is wired in
    for (const workers of [1, 2]) {
      for (const c of workers === 1 ? cases : cases.slice(1, 2)) {
        const config = join(await scratchDir('upstream-tls-start-config'), 'config.yaml')
        await writeFile(
          config,
          stringify({
            listen: { http: '127.0.0.1:0' },
            admin: '127.0.0.1:0',
            upstream: 'https://127.0.0.1:9',
            upstreamTls: c.upstreamTls,
            audit: { output: 'off' },
            workers,
          }),
        )
        const r = await runCli(['run', '-c', config], { timeoutMs: 10_000, env: { NHI_LOG_LEVEL: 'error' } })
        const what = `workers: ${workers}, ${c.name}`
        t.equal(r.code, 1, `${what}: exit 1`)
        const lines = r.stderr.split('\n').filter((l) => l !== '')
        t.equal(lines.length, 1, `${what}: one line: ${r.stderr}`)
        t.match(lines[0] ?? '', c.line, `${what}: names the setting, the file and why`)
        t.notMatch(r.stderr, /PRIVATE KEY|\n\s+at /, `${what}: no key material, no stack`)
      }
    }
  },
)
