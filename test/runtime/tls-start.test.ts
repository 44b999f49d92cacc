// The https listener's certificate, key and client CA get the same checks at start as a live rotation
// gives them: files that would not make a working listener (a client CA without a certificate, a key for
// another certificate, a certificate file without a certificate) stop the start with exit 1 and one line
// naming the setting, the file and why, before any port is bound. Runs the built bundle.
import { X509Certificate } from 'node:crypto'
import { once } from 'node:events'
import { writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { join } from 'node:path'
import t from 'tap'
import { stringify } from 'yaml'
import { startBin } from '../helpers/bin.ts'
import { type CA, createCA, createServerPki, issueCert, type KeyPair } from '../helpers/pki.ts'
import { scratchDir } from '../helpers/scratch.ts'
import { runCli } from '../helpers/sidecar.ts'

let server: KeyPair
let other: KeyPair
let clientCa: CA
let dir: string
let emptyFile: string
let notPem: string
let brokenCert: string
t.before(async () => {
  let serverCa: CA
  ;({ ca: serverCa, server } = await createServerPki())
  other = await issueCert(serverCa, { cn: 'localhost', dnsSans: ['localhost'], server: true })
  clientCa = await createCA('start-client-ca')
  dir = await scratchDir('tls-start')
  emptyFile = join(dir, 'empty.pem')
  notPem = join(dir, 'not-pem.txt')
  await writeFile(emptyFile, '')
  await writeFile(notPem, 'this is not a PEM bundle\n')
  brokenCert = join(dir, 'broken.crt')
  await writeFile(
    brokenCert,
    '-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n',
  )
})

/**
 * `run` with an https listener of these files, its plain listener on a port held here: a start that bound
 * its listeners before checking the files would fail with "address in use" (exit 2) instead.
 */
async function start(https: Record<string, string>, workers = 1) {
  const held = createServer()
  held.listen(0, '127.0.0.1')
  await once(held, 'listening')
  try {
    const addr = held.address()
    if (addr === null || typeof addr === 'string') throw new Error('no port')
    const config = join(await scratchDir('tls-start-config'), 'config.yaml')
    await writeFile(
      config,
      stringify({
        listen: { http: `127.0.0.1:${addr.port}`, https: { address: '127.0.0.1:0', ...https } },
        admin: '127.0.0.1:0',
        upstream: 'http://127.0.0.1:9',
        audit: { output: 'off' },
        workers,
        timeouts: { drainDelay: '0s' },
      }),
    )
    // bounded, should a start hang instead of exiting
    return await runCli(['run', '-c', config], { timeoutMs: 10_000, env: { NHI_LOG_LEVEL: 'error' } })
  } finally {
    held.close()
  }
}

const cases: {
  name: string
  https: () => Record<string, string>
  setting: string
  file: () => string
  why: RegExp
}[] = [
  {
    name: 'an empty client CA',
    https: () => ({ cert: server.certFile, key: server.keyFile, clientCA: emptyFile }),
    setting: 'clientCA',
    file: () => emptyFile,
    why: /holds no CA certificate/,
  },
  {
    name: 'an empty client CA with clientCert: required',
    https: () => ({
      cert: server.certFile,
      key: server.keyFile,
      clientCA: emptyFile,
      clientCert: 'required',
    }),
    setting: 'clientCA',
    file: () => emptyFile,
    why: /holds no CA certificate/,
  },
  {
    name: 'a client CA that is not PEM',
    https: () => ({ cert: server.certFile, key: server.keyFile, clientCA: notPem }),
    setting: 'clientCA',
    file: () => notPem,
    why: /holds no CA certificate/,
  },
  {
    name: 'a key that does not match the certificate',
    https: () => ({ cert: server.certFile, key: other.keyFile, clientCA: clientCa.certFile }),
    setting: 'key',
    file: () => other.keyFile,
    why: /does not match the certificate/,
  },
  {
    name: 'an empty certificate file',
    https: () => ({ cert: emptyFile, key: server.keyFile }),
    setting: 'cert',
    file: () => emptyFile,
    why: /holds no certificate \(no PEM CERTIFICATE block\)/,
  },
  {
    name: 'a certificate file holding the key',
    https: () => ({ cert: server.keyFile, key: server.keyFile }),
    setting: 'cert',
    file: () => server.keyFile,
    why: /holds no certificate \(no PEM CERTIFICATE block\)/,
  },
  {
    name: 'a certificate that does not parse',
    https: () => ({ cert: brokenCert, key: server.keyFile }),
    setting: 'cert',
    file: () => brokenCert,
    why: /not a valid PEM certificate/,
  },
  {
    name: 'a missing key file',
    https: () => ({ cert: server.certFile, key: join(dir, 'missing.key') }),
    setting: 'key',
    file: () => join(dir, 'missing.key'),
    why: /file not found/,
  },
]

// with workers the primary runs the same check before it starts any: two cases show it is wired in
const IN_WORKERS_MODE = new Set(['an empty client CA', 'a key that does not match the certificate'])
for (const workers of [1, 2]) {
  for (const c of workers === 1 ? cases : cases.filter((c) => IN_WORKERS_MODE.has(c.name))) {
    t.test(`workers: ${workers}, ${c.name}: exit 1 before listening, one line`, async (t) => {
      const r = await start(c.https(), workers)
      t.equal(r.code, 1, 'exit 1: invalid input')
      const lines = r.stderr.split('\n').filter((l) => l !== '')
      t.equal(lines.length, 1, `one line: ${r.stderr}`)
      const line = lines[0] ?? ''
      t.match(line, `listen.https.${c.setting} "${c.file()}": `, 'names the setting and the file')
      t.match(line, c.why, 'and why')
      t.notMatch(r.stderr, /PRIVATE KEY|\n\s+at /, 'no key material, no stack')
    })
  }
}

t.test('a readable, matching set still starts (the checks refuse only what cannot serve)', async (t) => {
  const r = await start({ cert: server.certFile, key: server.keyFile, clientCA: clientCa.certFile })
  // the held plain port is what stops this start: the TLS files passed
  t.equal(r.code, 2)
  t.match(r.stderr, /address in use/)
  t.notMatch(r.stderr, /listen\.https\./)
})

t.test('a certificate outside its dates starts, and is said once at warning level', async (t) => {
  const ca = await createCA('start-dates-ca')
  const expired = await issueCert(ca, { cn: 'localhost', dnsSans: ['localhost'], server: true, days: -1 })
  const early = await issueCert(ca, { cn: 'proxy', notBefore: new Date(Date.now() + 86_400_000) })
  for (const workers of [1, 2]) {
    const bin = await startBin(t, {
      listen: {
        http: '127.0.0.1:0',
        https: { address: '127.0.0.1:0', cert: expired.certFile, key: expired.keyFile },
      },
      upstream: 'https://127.0.0.1:9',
      upstreamTls: { ca: ca.certFile, cert: early.certFile, key: early.keyFile },
      workers,
      timeouts: { drainDelay: '0s' },
    })
    const listener = bin.logs().filter((l) => l['event'] === 'tls_cert_expired')
    t.equal(listener.length, 1, `workers: ${workers}: one line for the listener's expired certificate`)
    t.same(
      [listener[0]?.['level'], listener[0]?.['side'], listener[0]?.['setting']],
      [40, 'listener', 'listen.https.cert'],
    )
    t.equal(listener[0]?.['notAfter'], new Date(new X509Certificate(expired.certPem).validTo).toISOString())
    t.match(String(listener[0]?.['msg']), /the certificate expired at .*; starting with it/)
    const upstream = bin.logs().filter((l) => l['event'] === 'tls_cert_not_yet_valid')
    t.equal(upstream.length, 1, `workers: ${workers}: one line for the client certificate not valid yet`)
    t.same([upstream[0]?.['side'], upstream[0]?.['setting']], ['upstream', 'upstreamTls.cert'])
    t.notMatch(bin.stderr(), /PRIVATE KEY|BEGIN CERTIFICATE/, 'no key or certificate material')
    bin.child.kill('SIGTERM')
    await bin.exited
  }
})
