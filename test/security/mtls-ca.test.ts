// The mTLS listener never verifies client certificates against a CA it was not given (issue 16, item 4).
// Without listen.https.clientCA the listener does not ask for client certificates at all; with it, only
// that CA counts. Node's default store (Mozilla roots plus NODE_EXTRA_CA_CERTS) never makes a client
// certificate "verified". The sidecar runs as its own process so NODE_EXTRA_CA_CERTS can stand in for
// "a CA this process trusts for outbound connections, but that was never configured for clients".
import { writeFileSync } from 'node:fs'
import { request } from 'node:https'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { runExplain } from '../../src/cli/explain.ts'
import { eventually } from '../helpers/eventually.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import {
  type CA,
  createCA,
  createServerPki,
  issueCert,
  issueIntermediateCA,
  type KeyPair,
  mtlsListen,
} from '../helpers/pki.ts'
import { scratchDirSync } from '../helpers/scratch.ts'
import { spawnCli, startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const SPIFFE = 'spiffe://example.com/ns/shop/sa/web'

let serverCa: CA
let server: KeyPair
/** trusted by the sidecar process for outbound TLS (NODE_EXTRA_CA_CERTS), never configured for clients */
let processCa: CA
let processLeaf: KeyPair
/** the CA configured as listen.https.clientCA where a test configures one */
let clientCa: CA
let clientLeaf: KeyPair

t.before(async () => {
  ;({ ca: serverCa, server } = await createServerPki())
  processCa = await createCA('process-trusted-ca')
  processLeaf = await issueCert(processCa, { cn: 'web', uriSans: [SPIFFE] })
  clientCa = await createCA('configured-client-ca')
  clientLeaf = await issueCert(clientCa, { cn: 'web', uriSans: [SPIFFE] })
})

function writeConfig(https: Record<string, string>, upstream: string): string {
  const dir = scratchDirSync('mtls-ca')
  const file = join(dir, 'config.yaml')
  writeFileSync(
    file,
    JSON.stringify({
      listen: {
        http: '127.0.0.1:0',
        https: { address: '127.0.0.1:0', cert: server.certFile, key: server.keyFile, ...https },
      },
      admin: '127.0.0.1:0',
      upstream,
      audit: { output: 'off' },
      // every teardown waits for the exit: not for the production drain delay (5 s) first
      timeouts: { drainDelay: '0s' },
      identities: [
        {
          name: '{ns}/{sa}',
          rule: 'workloads',
          kind: 'service',
          match: { spiffe: 'spiffe://example.com/ns/{ns}/sa/{sa}' },
        },
      ],
    }),
  )
  return file
}

async function startSidecarProcess(t: Test, https: Record<string, string>) {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const cli = spawnCli(['run', '-c', writeConfig(https, up.url)], { NODE_EXTRA_CA_CERTS: processCa.certFile })
  t.teardown(async () => {
    cli.kill()
    await cli.exited
  })
  const m = await cli.waitFor(/"https":"127\.0\.0\.1:(\d+)"/)
  return { up, port: Number(m[1]) }
}

/** GET /echo over TLS presenting `cert` (or none); resolves with the identity headers the upstream saw. */
function call(port: number, cert?: KeyPair): Promise<{ status: number; headers: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port,
        path: '/echo',
        ca: serverCa.certPem,
        servername: 'localhost',
        ...(cert ? { cert: cert.certPem, key: cert.keyPem } : {}),
        agent: false,
      },
      (res) => {
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (c: string) => {
          body += c
        })
        res.on('end', () => {
          try {
            resolve({ status: res.statusCode ?? 0, headers: JSON.parse(body).headers })
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

t.test(
  'without clientCA, a certificate from a CA the process trusts is never a verified identity',
  async (t) => {
    const { port } = await startSidecarProcess(t, {})
    for (const [what, cert] of [
      ['a CA in the process trust store', processLeaf],
      ['a CA configured nowhere', clientLeaf],
    ] as const) {
      const r = await call(port, cert)
      t.equal(r.status, 200, `${what}: the request is served`)
      t.equal(r.headers['x-nhi-verified'], 'false', `${what}: not verified`)
      t.not(r.headers['x-nhi-source'], 'mtls', `${what}: not an mTLS identity`)
      t.not(r.headers['x-nhi-identity'], 'shop/web', `${what}: not the workload the certificate names`)
    }
    const plain = await call(port)
    t.equal(plain.status, 200, 'TLS without a client certificate still works')
  },
)

t.test('with clientCA, only that CA verifies: the process trust store does not count', async (t) => {
  const { port } = await startSidecarProcess(t, { clientCA: clientCa.certFile })
  const trusted = await call(port, clientLeaf)
  t.equal(trusted.headers['x-nhi-verified'], 'true', 'a certificate from clientCA is verified')
  t.equal(trusted.headers['x-nhi-source'], 'mtls')
  t.equal(trusted.headers['x-nhi-identity'], 'shop/web')
  const other = await call(port, processLeaf)
  t.equal(other.headers['x-nhi-verified'], 'false', 'a certificate from the process trust store is not')
  t.not(other.headers['x-nhi-source'], 'mtls')
})

t.test('clientCert: required without clientCA refuses to start with a clear error', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const cli = spawnCli(['run', '-c', writeConfig({ clientCert: 'required' }, up.url)], {
    NODE_EXTRA_CA_CERTS: processCa.certFile,
  })
  t.teardown(() => cli.kill())
  const m = await cli.waitFor(/clientCert: required needs|nhi-proxy started/)
  t.equal(m[0], 'clientCert: required needs', 'refused, not started')
  const code = await cli.exited
  t.equal(code, 1, 'exit 1: invalid config')
  t.match(cli.stdout() + cli.stderr(), /clientCert: required needs listen\.https\.clientCA/)
})

t.test('explain agrees: without clientCA a presented certificate is not evidence', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const lines: string[] = []
  const code = await runExplain(
    {
      config: writeConfig({}, up.url),
      headers: [],
      cert: processLeaf.certFile,
      method: 'GET',
      path: '/echo',
      json: true,
    },
    (line) => lines.push(line),
  )
  t.equal(code, 0)
  const report = JSON.parse(lines.join('\n'))
  t.equal(report.evidence.mtls, undefined, 'no mTLS evidence, as on the live listener')
  t.equal(report.identity.verified, false)
  t.not(report.identity.source, 'mtls')
  t.match(report.notes.join('\n'), /does not request client certificates/)
})

/** an upstream and a sidecar whose https listener verifies clients against clientCa */
async function startWithClientCa(t: Test) {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const sidecar = await startTestSidecar(t, {
    upstream: up.url,
    listen: mtlsListen(server, clientCa),
  })
  return { up, sidecar }
}

t.test(
  'a certificate outside its dates is cert_expired or cert_not_yet_valid only when clientCA issued it',
  async (t) => {
    const { sidecar } = await startWithClientCa(t)
    const port = sidecar.httpsAddress!.port
    // a workload whose credential ran out, and a certificate anyone can make, long expired
    const ranOut = await issueCert(clientCa, { cn: 'web', uriSans: [SPIFFE], days: -1 })
    const selfMadeCa = await createCA('self-made-ca')
    const selfMade = await issueCert(selfMadeCa, { cn: 'web', uriSans: [SPIFFE], days: -1 })
    // a workload's certificate whose validity starts tomorrow (its CA's clock ahead of ours), and a
    // self-made one dated the same way
    const tomorrow = new Date(Date.now() + 86_400_000)
    const early = await issueCert(clientCa, { cn: 'web', uriSans: [SPIFFE], notBefore: tomorrow })
    const selfMadeEarly = await issueCert(selfMadeCa, { cn: 'web', uriSans: [SPIFFE], notBefore: tomorrow })
    for (const cert of [ranOut, selfMade, early, selfMadeEarly]) {
      const r = await call(port, cert)
      t.equal(r.status, 200)
      t.equal(r.headers['x-nhi-verified'], 'false', 'an expired certificate is no identity')
    }
    const failures = async () => {
      const samples = await scrape(sidecar.adminUrl)
      const of = (reason: string) =>
        metricValue(samples, 'nhi_auth_failures_total', { source: 'mtls', reason })
      return {
        expired: of('cert_expired'),
        notYetValid: of('cert_not_yet_valid'),
        untrusted: of('cert_untrusted'),
      }
    }
    await eventually(
      async () => {
        const f = await failures()
        return f.expired + f.notYetValid + f.untrusted === 4
      },
      { what: 'all four failures counted' },
    )
    t.same(
      await failures(),
      { expired: 1, notYetValid: 1, untrusted: 2 },
      "the self-made certificates are untrusted: they say nothing about a workload's credential",
    )
  },
)

t.test(
  'an expired certificate whose chain is refused for more than its dates is cert_untrusted, not cert_expired',
  async (t) => {
    const { up, sidecar } = await startWithClientCa(t)
    const port = sidecar.httpsAddress!.port
    // OpenSSL reports the last error it meets, and dates come after the CA and purpose checks: these used to
    // be reported as a workload credential that ran out, though no renewal would make the listener take them
    const serverOnly = await issueCert(clientCa, {
      cn: 'web',
      uriSans: [SPIFFE],
      extendedKeyUsage: 'serverAuth',
      days: -1,
    })
    // a client certificate of the CA (CA:FALSE) used as an issuer: anyone holding one could mint these
    const notACa = await issueCert(clientCa, { cn: 'not-a-ca' })
    const minted = await issueCert(
      { ...notACa, dir: clientCa.dir, name: 'not-a-ca' },
      { cn: 'web', days: -1 },
    )
    const throughNotACa = { ...minted, certPem: minted.certPem + notACa.certPem }
    for (const cert of [serverOnly, throughNotACa]) {
      const r = await call(port, cert)
      t.equal(r.status, 200)
      t.equal(r.headers['x-nhi-verified'], 'false', 'no identity from either')
    }
    const failures = async () => {
      const samples = await scrape(sidecar.adminUrl)
      const of = (reason: string) =>
        metricValue(samples, 'nhi_auth_failures_total', { source: 'mtls', reason })
      return { expired: of('cert_expired'), untrusted: of('cert_untrusted') }
    }
    await eventually(
      async () => {
        const f = await failures()
        return f.expired + f.untrusted === 2
      },
      { what: 'both failures counted' },
    )
    t.same(await failures(), { expired: 0, untrusted: 2 }, 'both are cert_untrusted')

    // explain judges them as the listener does: it used to check the dates first
    const config = writeConfig({ clientCA: clientCa.certFile }, up.url)
    for (const [what, cert] of [
      ['not for client authentication', serverOnly],
      ['through a certificate that is no CA', throughNotACa],
    ] as const) {
      const file = join(scratchDirSync('mtls-ca'), 'client.pem')
      writeFileSync(file, cert.certPem)
      const lines: string[] = []
      const code = await runExplain(
        { config, headers: [], cert: file, method: 'GET', path: '/echo', json: true },
        (line) => lines.push(line),
      )
      t.equal(code, 0)
      const report = JSON.parse(lines.join('\n')) as { evidence: Record<string, unknown> }
      t.match(JSON.stringify(report.evidence), /cert_untrusted/, `explain: ${what} is cert_untrusted`)
      t.notMatch(JSON.stringify(report.evidence), /cert_expired/, `explain: ${what} is not cert_expired`)
    }
  },
)

t.test(
  'a chain of the configured CA not made for client authentication is cert_untrusted, in explain too',
  async (t) => {
    const { up, sidecar } = await startWithClientCa(t)
    const port = sidecar.httpsAddress!.port
    const config = writeConfig({ clientCA: clientCa.certFile }, up.url)
    const explainCert = async (pem: string) => {
      const file = join(scratchDirSync('mtls-ca'), 'client.pem')
      writeFileSync(file, pem)
      const lines: string[] = []
      const code = await runExplain(
        { config, headers: [], cert: file, method: 'GET', path: '/echo', json: true },
        (line) => lines.push(line),
      )
      t.equal(code, 0)
      return JSON.parse(lines.join('\n')) as { evidence: Record<string, unknown>; notes: string[] }
    }

    // a server certificate of the same CA (extended key usage serverAuth only) presented as a client one
    const serverOnly = await issueCert(clientCa, {
      cn: 'web',
      uriSans: [SPIFFE],
      extendedKeyUsage: 'serverAuth',
    })
    const r = await call(port, serverOnly)
    t.equal(r.status, 200)
    t.equal(r.headers['x-nhi-verified'], 'false', 'no identity from a certificate not made for clients')
    await eventually(
      async () =>
        metricValue(await scrape(sidecar.adminUrl), 'nhi_auth_failures_total', {
          source: 'mtls',
          reason: 'cert_untrusted',
        }) === 1,
      { what: 'the failure counted as cert_untrusted' },
    )
    const report = await explainCert(serverOnly.certPem)
    t.equal(report.evidence['mtls'], undefined, 'explain: no mTLS evidence either')
    t.match(JSON.stringify(report.evidence), /cert_untrusted/, 'explain: the same failure')
    t.match(report.notes.join('\n'), /client authentication/, 'explain says why')

    // a client certificate under an intermediate CA limited to serverAuth: OpenSSL refuses the chain's purpose
    const serverIntermediate = await issueIntermediateCA(clientCa, 'server-only-intermediate', 'serverAuth')
    const underIt = await issueCert(serverIntermediate, { cn: 'batch', uriSans: [SPIFFE] })
    const chained = { ...underIt, certPem: underIt.certPem + serverIntermediate.certPem }
    t.equal((await call(port, chained)).headers['x-nhi-verified'], 'false', 'the listener refuses the chain')
    const refused = await explainCert(chained.certPem)
    t.equal(refused.evidence['mtls'], undefined, 'explain refuses it too')
    t.match(refused.notes.join('\n'), /server-only-intermediate/, '…naming the intermediate')

    // the same under an intermediate that allows client authentication: taken on both sides
    const clientIntermediate = await issueIntermediateCA(clientCa, 'client-intermediate', 'clientAuth')
    const underClient = await issueCert(clientIntermediate, { cn: 'batch', uriSans: [SPIFFE] })
    const good = { ...underClient, certPem: underClient.certPem + clientIntermediate.certPem }
    t.equal(
      (await call(port, good)).headers['x-nhi-verified'],
      'true',
      'the listener takes a chain meant for clients',
    )
    t.ok((await explainCert(good.certPem)).evidence['mtls'], 'explain agrees')
  },
)
