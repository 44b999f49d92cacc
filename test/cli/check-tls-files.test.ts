// `check` reads the TLS files of listen.https and upstreamTls as `run` reads them at start: a file that is not
// PEM, a key for another certificate, an encrypted key or a client CA without a certificate is an error at the
// FILE:LINE:COL of the setting naming it (exit 1, as `run` exits), and a certificate outside its dates, which
// `run` starts with, is a warning. Real files, made with openssl in the test; the built bin runs them.
import { execFile } from 'node:child_process'
import { copyFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { startBin } from '../helpers/bin.ts'
import { limiter } from '../helpers/limit.ts'
import { type CA, createCA, issueCert, type KeyPair } from '../helpers/pki.ts'
import { scratchDirSync } from '../helpers/scratch.ts'
import { runCli as runCliNow } from '../helpers/sidecar.ts'

t.jobs = 4
const cliGate = limiter(4)
const runCli: typeof runCliNow = (args, opts) => cliGate(() => runCliNow(args, opts))

const dir = scratchDirSync('check-tls-files')
let ca: CA
let server: KeyPair
let other: KeyPair
let expired: KeyPair
let client: KeyPair

t.before(async () => {
  ca = await createCA('check-tls-ca')
  ;[server, other, expired, client] = await Promise.all([
    issueCert(ca, { cn: 'localhost', dnsSans: ['localhost'], server: true }),
    issueCert(ca, { cn: 'other', server: true }),
    issueCert(ca, { cn: 'expired', server: true, days: -1 }),
    issueCert(ca, { cn: 'client' }),
  ])
  for (const [name, from] of [
    ['ca.crt', ca.certFile],
    ['server.crt', server.certFile],
    ['server.key', server.keyFile],
    ['other.key', other.keyFile],
    ['expired.crt', expired.certFile],
    ['expired.key', expired.keyFile],
    ['client.crt', client.certFile],
    ['client.key', client.keyFile],
  ] as const)
    copyFileSync(from, join(dir, name))
  writeFileSync(join(dir, 'not-pem.crt'), 'this is not a certificate\n')
  writeFileSync(join(dir, 'not-pem.key'), 'this is not a key\n')
  await promisify(execFile)('openssl', [
    'pkcs8',
    '-topk8',
    '-in',
    server.keyFile,
    '-passout',
    'pass:secret',
    '-out',
    join(dir, 'encrypted.key'),
  ])
})

/** a config whose https listener names these files (line 5: cert, 6: key, 7: clientCA, by default ./ca.crt) */
function httpsConfig(name: string, files: { cert: string; key: string; clientCA?: string }): string {
  const lines = [
    'upstream: http://127.0.0.1:3000',
    'listen:',
    '  http: 127.0.0.1:0',
    '  https:',
    `    cert: ${files.cert}`,
    `    key: ${files.key}`,
    `    clientCA: ${files.clientCA ?? './ca.crt'}`,
    '',
  ]
  writeFileSync(join(dir, name), lines.join('\n'))
  return name
}

/** a config whose upstreamTls names these files (line 3: ca, 4: cert, 5: key) */
function upstreamConfig(name: string, files: { ca: string; cert: string; key: string }): string {
  const lines = [
    'upstream: https://127.0.0.1:8443',
    'upstreamTls:',
    `  ca: ${files.ca}`,
    `  cert: ${files.cert}`,
    `  key: ${files.key}`,
    '',
  ]
  writeFileSync(join(dir, name), lines.join('\n'))
  return name
}

const check = async (file: string) => {
  const r = await runCli(['check', file], { cwd: dir, env: { NHI_PROXY_CONFIG: undefined } })
  return { code: r.code, text: r.stdout }
}

t.test('files that load: ok, no warning', async (t) => {
  const [https, upstream] = await Promise.all([
    check(httpsConfig('good.yaml', { cert: './server.crt', key: './server.key' })),
    check(upstreamConfig('good-up.yaml', { ca: './ca.crt', cert: './client.crt', key: './client.key' })),
  ])
  t.equal(https.code, 0, https.text)
  t.match(https.text, /^good\.yaml: ok/m)
  t.notMatch(https.text, /warning/)
  t.equal(upstream.code, 0, upstream.text)
  t.notMatch(upstream.text, /warning/)
})

t.test('listen.https: what run refuses is an error where the file is named, exit 1', async (t) => {
  const hint = '(hint: run refuses to start with it)'
  const [notPemCert, notPemKey, mismatch, encrypted, emptyCa] = await Promise.all([
    check(httpsConfig('not-pem-cert.yaml', { cert: './not-pem.crt', key: './server.key' })),
    check(httpsConfig('not-pem-key.yaml', { cert: './server.crt', key: './not-pem.key' })),
    check(httpsConfig('mismatch.yaml', { cert: './server.crt', key: './other.key' })),
    check(httpsConfig('encrypted.yaml', { cert: './server.crt', key: './encrypted.key' })),
    check(
      httpsConfig('empty-ca.yaml', { cert: './server.crt', key: './server.key', clientCA: './not-pem.crt' }),
    ),
  ])
  for (const r of [notPemCert, notPemKey, mismatch, encrypted, emptyCa]) t.equal(r.code, 1, r.text)
  t.match(
    notPemCert.text,
    `not-pem-cert.yaml:5:11 cert "./not-pem.crt": holds no certificate (no PEM CERTIFICATE block) ${hint}`,
  )
  t.match(notPemKey.text, /^not-pem-key\.yaml:6:10 key "\.\/not-pem\.key": not a valid PEM private key: /m)
  t.match(
    mismatch.text,
    `mismatch.yaml:6:10 key "./other.key": does not match the certificate in ./server.crt ${hint}`,
  )
  t.match(
    encrypted.text,
    `encrypted.yaml:6:10 key "./encrypted.key": is encrypted (passphrase-protected); the sidecar reads unencrypted keys only ${hint}`,
  )
  t.match(
    emptyCa.text,
    `empty-ca.yaml:7:15 clientCA "./not-pem.crt": holds no CA certificate (no PEM CERTIFICATE block) ${hint}`,
  )
  t.match(mismatch.text, /^mismatch\.yaml: 1 error$/m)
})

t.test('run refuses the same file with the same reason', async (t) => {
  const r = await runCli(['run', '-c', 'mismatch.yaml', '--admin', '127.0.0.1:0'], {
    cwd: dir,
    timeoutMs: 8000,
  })
  t.equal(r.code, 1)
  t.match(r.stderr, 'listen.https.key "./other.key": does not match the certificate in ./server.crt')
})

t.test('upstreamTls: what run refuses is an error where the file is named, exit 1', async (t) => {
  const [notPemCa, mismatch, encrypted] = await Promise.all([
    check(upstreamConfig('up-ca.yaml', { ca: './not-pem.crt', cert: './client.crt', key: './client.key' })),
    check(upstreamConfig('up-mismatch.yaml', { ca: './ca.crt', cert: './client.crt', key: './other.key' })),
    check(
      upstreamConfig('up-encrypted.yaml', { ca: './ca.crt', cert: './server.crt', key: './encrypted.key' }),
    ),
  ])
  for (const r of [notPemCa, mismatch, encrypted]) t.equal(r.code, 1, r.text)
  t.match(
    notPemCa.text,
    'up-ca.yaml:3:7 ca "./not-pem.crt": holds no CA certificate (no PEM CERTIFICATE block)',
  )
  t.match(
    mismatch.text,
    'up-mismatch.yaml:5:8 key "./other.key": does not match the certificate in ./client.crt',
  )
  t.match(encrypted.text, 'up-encrypted.yaml:5:8 key "./encrypted.key": is encrypted (passphrase-protected)')
})

t.test('an expired certificate: a warning (run starts with it), exit 0', async (t) => {
  const [https, upstream] = await Promise.all([
    check(httpsConfig('expired.yaml', { cert: './expired.crt', key: './expired.key' })),
    check(upstreamConfig('up-expired.yaml', { ca: './ca.crt', cert: './expired.crt', key: './expired.key' })),
  ])
  t.equal(https.code, 0, https.text)
  t.match(
    https.text,
    /^expired\.yaml:5:11 warning: cert "\.\/expired\.crt": the certificate expired at \d{4}-\d\d-\d\dT[\d:.]+Z \(hint: run starts with it, but clients that verify the server certificate refuse the connection\)$/m,
  )
  t.match(https.text, /^expired\.yaml: ok \(.*, 1 warning\)$/m)
  t.equal(upstream.code, 0, upstream.text)
  t.match(
    upstream.text,
    /^up-expired\.yaml:4:9 warning: cert "\.\/expired\.crt": the certificate expired at /m,
  )

  const bin = await startBin(t, {
    listen: {
      http: '127.0.0.1:0',
      https: { address: '127.0.0.1:0', cert: join(dir, 'expired.crt'), key: join(dir, 'expired.key') },
    },
  })
  t.ok(
    bin.logs().some((l) => l['event'] === 'started'),
    'run starts with the expired certificate',
  )
})

t.test('an absolute path mounted only where the sidecar runs is not read', async (t) => {
  const r = await check(
    httpsConfig('elsewhere.yaml', {
      cert: '/nonexistent-secret/tls.crt',
      key: '/nonexistent-secret/tls.key',
    }),
  )
  t.equal(r.code, 0, r.text)
})
