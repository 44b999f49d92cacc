// A refused TLS rotation is not a one-off: cert-manager rewrites the Secret once, so a set refused then (a
// key written after its certificate whose change was coalesced away, a file briefly missing) would otherwise
// never be read again, the old certificate would be served until it expires, and NhiTlsRotationFailing,
// which looks at the last 15 minutes of nhi_tls_reloads_total, would resolve while nothing had changed.
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import pino from 'pino'
import t from 'tap'
import { TlsMaterialError } from '../../src/proxy/listener-tls.ts'
import { rotateTlsFiles } from '../../src/runtime-tls.ts'
import { eventually } from '../helpers/eventually.ts'
import { createCA, issueCert } from '../helpers/pki.ts'
import { scratchDir } from '../helpers/scratch.ts'

/** resolves once `n` retry intervals have passed (a retry that was due would have run by then) */
async function intervalsPassed(n: number, ms: number): Promise<void> {
  let ticks = 0
  const timer = setInterval(() => ticks++, ms)
  try {
    await eventually(() => ticks >= n, { what: `${n} retry intervals` })
  } finally {
    clearInterval(timer)
  }
}

t.test('a refused rotation is read again until it applies, each refusal counted', async (t) => {
  const dir = await scratchDir('tls-retry')
  const cert = join(dir, 'tls.crt')
  const key = join(dir, 'tls.key')
  await writeFile(cert, 'old cert')
  await writeFile(key, 'old key')
  // what the files hold as the loader sees them: the key lags behind the certificate
  let onDisk: { cert: string; key: string } | Error = new TlsMaterialError('key', key, 'does not match')
  const results: string[] = []
  const applied: unknown[] = []
  const rotation = rotateTlsFiles(
    {
      side: 'listener',
      files: { cert, key },
      serving: { cert: 'old cert', key: 'old key' },
      load: async () => {
        if (onDisk instanceof Error) throw onDisk
        return onDisk
      },
      apply: (next) => applied.push(next),
      retryMs: 20,
    },
    pino({ level: 'silent' }),
    { tlsFiles: () => {}, tlsReloaded: (_side, result) => results.push(result) },
  )
  t.teardown(() => rotation.close())

  await rotation.reload()
  t.same(results, ['failure'], 'the half-written pair is refused')
  await eventually(() => results.length >= 3, { what: 'the refused set read again without a file event' })
  t.ok(
    results.every((r) => r === 'failure'),
    'each refusal counted',
  )
  t.same(applied, [], 'nothing applied meanwhile')

  // the key is there now, and no watch saw it happen
  onDisk = { cert: 'new cert', key: 'new key' }
  await eventually(() => applied.length === 1, { what: 'the rotation applied by a retry' })
  t.equal(results.at(-1), 'success')
  const settled = results.length
  await intervalsPassed(5, 20)
  t.equal(results.length, settled, 'no more reads once it applied')
})

t.test('a certificate refused for its dates is read again like any refused set', async (t) => {
  const dir = await scratchDir('tls-retry-dates')
  const cert = join(dir, 'tls.crt')
  const key = join(dir, 'tls.key')
  await writeFile(cert, 'old cert')
  await writeFile(key, 'old key')
  const ca = await createCA('retry-dates-ca')
  const [expired, renewed] = await Promise.all([
    issueCert(ca, { cn: 'localhost', server: true, days: -1 }),
    issueCert(ca, { cn: 'localhost', server: true }),
  ])
  let onDisk = { cert: expired.certPem, key: expired.keyPem }
  const results: string[] = []
  const applied: unknown[] = []
  const events: string[] = []
  const log = pino(
    { level: 'warn' },
    { write: (line: string) => events.push(String(JSON.parse(line).event)) },
  )
  const rotation = rotateTlsFiles(
    {
      side: 'listener',
      files: { cert, key },
      serving: { cert: 'old cert', key: 'old key' },
      load: async () => onDisk,
      apply: (next) => applied.push(next),
      retryMs: 20,
      refuseOutOfDates: true,
    },
    log,
    { tlsFiles: () => {}, tlsReloaded: (_side, result) => results.push(result) },
  )
  t.teardown(() => rotation.close())

  await rotation.reload()
  t.same(results, ['failure'], 'the expired certificate is refused')
  await eventually(() => results.length >= 3, { what: 'the refused set read again without a file event' })
  t.ok(
    events.length >= 3 && events.every((e) => e === 'tls_reload_cert_expired'),
    'each refusal logged for what it is',
  )
  t.same(applied, [], 'nothing applied meanwhile')

  onDisk = { cert: renewed.certPem, key: renewed.keyPem }
  await eventually(() => applied.length === 1, { what: 'the renewed certificate applied by a retry' })
  t.equal(results.at(-1), 'success')
})

t.test('closing stops the retries', async (t) => {
  const dir = await scratchDir('tls-retry-close')
  const cert = join(dir, 'tls.crt')
  const key = join(dir, 'tls.key')
  await writeFile(cert, 'old cert')
  await writeFile(key, 'old key')
  let loads = 0
  const rotation = rotateTlsFiles(
    {
      side: 'upstream',
      files: { cert, key },
      serving: { cert: 'old cert', key: 'old key' },
      load: async (): Promise<{ cert: string; key: string }> => {
        loads++
        throw new TlsMaterialError('key', key, 'does not match')
      },
      apply: () => {},
      retryMs: 20,
    },
    pino({ level: 'silent' }),
    { tlsFiles: () => {}, tlsReloaded: () => {} },
  )
  await rotation.reload()
  rotation.close()
  const after = loads
  await intervalsPassed(5, 20)
  t.equal(loads, after, 'no read after close')
})
