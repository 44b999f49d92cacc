// Client-certificate keys that OpenSSL's security level (the listener's: 1 up to Node 22, 2 from Node 24)
// refuses although nothing in the curve's name says so, checked against `openssl verify -purpose sslclient
// -auth_level <that level>`: an EC curve named
// without its size (wap-wsg-idm-ecid-wtls6 is a 112-bit curve), on the leaf or on an intermediate, and an EC
// key whose curve parameters are written out instead of named (OpenSSL 3 refuses those whatever the curve).
// `explain --cert` refuses each chain as cert_untrusted, as the listener does; and the listener itself keeps
// such a chain cert_untrusted when its dates are wrong too (a date is not all that is wrong with it).
import { execFile } from 'node:child_process'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { runExplain } from '../../src/cli/explain.ts'
import { TLS_SECURITY_LEVEL } from '../../src/identity/certificate.ts'
import { eventually } from '../helpers/eventually.ts'
import { exchange } from '../helpers/http.ts'
import { createServerPki, generateKey, type KeyFiles, makeCertificate } from '../helpers/pki.ts'
import { scratchDir } from '../helpers/scratch.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const run = promisify(execFile)
const DAY = 86_400_000

const dir = await scratchDir('mtls-chain-keys')
const { ca: serverCa, server } = await createServerPki()
let serial = 1
const caExtensions = ['basicConstraints=critical,CA:TRUE', 'keyUsage=critical,keyCertSign,cRLSign']
const leafExtensions = ['basicConstraints=CA:FALSE', 'extendedKeyUsage=clientAuth']

const rootKey = await generateKey(dir, 'root', 'ec')
const root = {
  key: rootKey,
  ...(await makeCertificate(dir, 'root', {
    subject: '/CN=client-root',
    key: rootKey,
    extensions: caExtensions,
    serial: serial++,
  })),
}

async function leaf(
  name: string,
  key: KeyFiles,
  issuer = root,
  validity?: { notBefore: Date; notAfter: Date },
) {
  const made = await makeCertificate(dir, name, {
    subject: `/CN=${name}`,
    key,
    issuer,
    extensions: leafExtensions,
    serial: serial++,
    ...(validity ? { validity } : {}),
  })
  return { name, key, ...made }
}

const wtls6 = await generateKey(dir, 'wtls6', 'ec-wtls6')
const explicit = await generateKey(dir, 'explicit', 'ec-p256-explicit')
const intermediate = {
  key: wtls6,
  ...(await makeCertificate(dir, 'wtls6-ca', {
    subject: '/CN=wtls6-ca',
    key: wtls6,
    issuer: root,
    extensions: caExtensions,
    serial: serial++,
  })),
}

const chains = [
  {
    what: 'a leaf on a 112-bit curve named without its size',
    leaf: await leaf('wtls6-leaf', wtls6),
    sent: '',
  },
  {
    what: 'an intermediate on a 112-bit curve named without its size',
    leaf: await leaf('under-wtls6', await generateKey(dir, 'under-wtls6', 'ec'), intermediate),
    sent: intermediate.certPem,
  },
  { what: 'a leaf with explicit EC parameters', leaf: await leaf('explicit-leaf', explicit), sent: '' },
]

t.test(`openssl verify at security level ${TLS_SECURITY_LEVEL} refuses every chain`, async (t) => {
  for (const c of chains) {
    const untrusted = join(dir, `${c.leaf.name}-sent.pem`)
    await writeFile(untrusted, c.sent || c.leaf.certPem)
    const verdict = await run('openssl', [
      'verify',
      '-purpose',
      'sslclient',
      '-auth_level',
      String(TLS_SECURITY_LEVEL),
      '-CAfile',
      root.certFile,
      '-untrusted',
      untrusted,
      c.leaf.certFile,
    ]).then(
      () => 'OK',
      (err: { stdout?: string; stderr?: string }) => `${err.stdout ?? ''}${err.stderr ?? ''}`,
    )
    t.match(verdict, /key too weak|explicit ECC parameters/, `${c.what}: refused`)
  }
})

t.test('explain judges every chain cert_untrusted, as the listener', async (t) => {
  const config = join(dir, 'explain.yaml')
  await writeFile(
    config,
    JSON.stringify({
      listen: {
        http: '127.0.0.1:0',
        https: {
          address: '127.0.0.1:0',
          cert: server.certFile,
          key: server.keyFile,
          clientCA: root.certFile,
        },
      },
      upstream: 'http://127.0.0.1:1',
      audit: { output: 'off' },
    }),
  )
  const explain = async (pem: string) => {
    const file = join(dir, `explain-${serial++}.pem`)
    await writeFile(file, pem)
    const lines: string[] = []
    const code = await runExplain(
      { config, headers: [], cert: file, method: 'GET', path: '/echo', json: true },
      (line) => lines.push(line),
    )
    t.equal(code, 0)
    return JSON.parse(lines.join('\n')) as {
      identity: { source: string; verified: boolean }
      evidence: { mtls?: unknown; failures: { source: string; reason: string }[] }
    }
  }
  const good = await explain((await leaf('p256-leaf', await generateKey(dir, 'p256', 'ec'))).certPem)
  t.same([good.identity.source, good.identity.verified], ['mtls', true], 'a P-256 leaf is an identity')
  for (const c of chains) {
    const report = await explain(c.leaf.certPem + c.sent)
    t.equal(report.evidence.mtls, undefined, `${c.what}: no mTLS evidence`)
    t.same(
      report.evidence.failures.filter((f) => f.source === 'mtls').map((f) => f.reason),
      ['cert_untrusted'],
      `${c.what}: cert_untrusted`,
    )
  }
})

t.test(
  'on the listener an expired leaf with explicit EC parameters is cert_untrusted, not cert_expired',
  async (t) => {
    const up = await startUpstream()
    t.teardown(() => up.close())
    const sidecar = await startTestSidecar(t, {
      upstream: up.url,
      listen: {
        http: '127.0.0.1:0',
        https: {
          address: '127.0.0.1:0',
          cert: server.certFile,
          key: server.keyFile,
          clientCA: root.certFile,
          clientCert: 'optional',
        },
      },
      audit: { output: 'off', ringSize: 100 },
    })
    const expired = await leaf('explicit-expired', explicit, root, {
      notBefore: new Date(Date.now() - 10 * DAY),
      notAfter: new Date(Date.now() - DAY),
    })
    const res = await exchange({
      https: true,
      host: '127.0.0.1',
      port: sidecar.httpsAddress!.port,
      path: '/echo',
      servername: 'localhost',
      ca: serverCa.certPem,
      cert: expired.certPem,
      key: explicit.keyPem,
      headers: { 'x-request-id': 'explicit-expired' },
    })
    t.equal(res.status, 200, 'served, without an identity from the certificate')
    const event = await eventually(
      async () => {
        const body = (await (
          await fetch(`${sidecar.adminUrl}/audit?request_id=explicit-expired`)
        ).json()) as {
          events: { source: string; failures?: { source: string; reason: string }[] }[]
        }
        return body.events[0]
      },
      { what: 'the audit record of the request' },
    )
    t.not(event.source, 'mtls')
    t.same(
      (event.failures ?? []).filter((f) => f.source === 'mtls').map((f) => f.reason),
      ['cert_untrusted'],
      'cert_untrusted: the listener refuses the chain for its key as well as its dates',
    )
  },
)
