// An api key may be a word a person chose. Its plain sha256 prefix in the audit would let anyone who reads
// /audit, /identities or the audit file test guesses offline, one hash each. Fingerprints of api keys are
// keyed (HMAC-SHA256 of the key's sha256): under the pod's own random key, or a key file the replicas share.
// Everything here runs the built bundle, as users do.
import { createHash, createHmac } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { stringify } from 'yaml'
import { eventually } from '../helpers/eventually.ts'
import { freshGet } from '../helpers/pod.ts'
import { scratchDir } from '../helpers/scratch.ts'
import { assertFreshBundle, runCli, startSidecarFromFile, startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

assertFreshBundle()

// weak on purpose: the attacker's dictionary holds both
const KNOWN = 'hunter2'
const UNKNOWN = 'password1'
const sha256 = (text: string) => createHash('sha256').update(text, 'latin1').digest()
const plainPrefix = (text: string) => sha256(text).toString('hex').slice(0, 16)
const keyedPrefix = (key: Buffer, text: string) =>
  createHmac('sha256', key).update(sha256(text)).digest('hex').slice(0, 16)

const upstream = await startUpstream()
t.teardown(() => upstream.close())
const dir = await scratchDir('apikey-fp')
const keyFile = join(dir, 'fingerprint.key')
const FILE_KEY = Buffer.from('replicas-share-this-32-byte-key!')
await writeFile(keyFile, Buffer.concat([FILE_KEY, Buffer.from('\n')]))

const apiKeys = (extra: Record<string, unknown> = {}) => ({
  keys: [{ name: 'export-job', kind: 'job', sha256: sha256(KNOWN).toString('hex') }],
  ...extra,
})

/** writes `name` in the scratch directory: loopback listeners, the shared upstream and `extra` */
async function writeConfig(name: string, extra: Record<string, unknown>): Promise<string> {
  const file = join(dir, name)
  const base = { listen: { http: '127.0.0.1:0' }, admin: '127.0.0.1:0', upstream: upstream.url }
  await writeFile(file, stringify({ ...base, ...extra }))
  return file
}

interface AuditEvent {
  path: string
  identity: string
  fingerprints?: { apikey?: string }
}

/** sends each key once to `${proxy}/fp/<label>` and returns the fingerprint the pod's /audit kept for each */
async function fingerprintsOf(proxy: string, admin: string, label: string): Promise<Record<string, string>> {
  for (const key of [KNOWN, UNKNOWN]) {
    const res = await fetch(`${proxy}/fp/${label}/${key === KNOWN ? 'known' : 'unknown'}`, {
      headers: { 'x-api-key': key },
    })
    await res.arrayBuffer()
  }
  const events = await eventually(
    async () => {
      const ring = (await (await fetch(`${admin}/audit?limit=1000`)).json()) as { events: AuditEvent[] }
      const mine = ring.events.filter((e) => e.path.startsWith(`/fp/${label}/`))
      return mine.length === 2 ? mine : undefined
    },
    { what: `the audit events of ${label}` },
  )
  const of = (kind: string) => events.find((e) => e.path.endsWith(`/${kind}`))?.fingerprints?.apikey ?? ''
  return { known: of('known'), unknown: of('unknown') }
}

t.test('without a key file: keyed by the pod, never the plain sha256 prefix anywhere', async (t) => {
  const auditFile = join(dir, 'audit-a.log')
  const a = await startTestSidecar(t, {
    upstream: upstream.url,
    apiKeys: apiKeys(),
    audit: { output: auditFile, sample: 1 },
  })
  const fp = await fingerprintsOf(a.proxyUrl, a.adminUrl, 'a')
  for (const [which, value] of Object.entries(fp)) t.match(value, /^[0-9a-f]{16}$/, `${which}: 16 hex digits`)
  t.not(fp['known'], plainPrefix(KNOWN), 'a configured key is not fingerprinted by its plain sha256')
  t.not(fp['unknown'], plainPrefix(UNKNOWN), 'nor is an unknown key')
  t.same(await fingerprintsOf(a.proxyUrl, a.adminUrl, 'a-again'), fp, 'the same key, the same fingerprint')

  // from the attacker's side: every output a reader of the pod may see
  const outputs: Record<string, string> = {
    '/audit': await (await fetch(`${a.adminUrl}/audit?limit=1000`)).text(),
    '/identities': await (await fetch(`${a.adminUrl}/identities`)).text(),
    '/metrics': await (await fetch(`${a.adminUrl}/metrics`)).text(),
    '/config': await (await fetch(`${a.adminUrl}/config`)).text(),
    'audit file': await eventually(
      () => {
        const text = readFileSync(auditFile, 'utf8')
        return text.split('\n').filter(Boolean).length >= 4 ? text : undefined
      },
      { what: 'the audit file' },
    ),
  }
  t.match(outputs['audit file'], fp['unknown']!, 'the audit file holds the keyed fingerprint (not vacuous)')
  for (const [where, text] of Object.entries(outputs)) {
    for (const key of [KNOWN, UNKNOWN]) {
      t.notOk(text.includes(plainPrefix(key)), `${where}: no plain sha256 prefix of "${key}"`)
      t.notOk(text.includes(key), `${where}: no raw key`)
    }
  }

  // explain without a key file says its fingerprint is its own
  const explained = await runCli(['explain', '-c', a.configPath, '-H', `x-api-key: ${UNKNOWN}`])
  t.equal(explained.code, 0, explained.stderr)
  t.match(explained.stdout, /keyed by this run \(no apiKeys\.fingerprintKeyFile\)/)
  t.notOk(explained.stdout.includes(fp['unknown']!), "explain's key is not the pod's")

  // another pod without a file makes its own key: the same key, another fingerprint
  const b = await startTestSidecar(t, { upstream: upstream.url, apiKeys: apiKeys() })
  const other = await fingerprintsOf(b.proxyUrl, b.adminUrl, 'b')
  t.not(other['known'], fp['known'], 'another pod, another fingerprint of the configured key')
  t.not(other['unknown'], fp['unknown'], 'and of the unknown one')
})

t.test('a shared key file: replicas agree, explain agrees, a bad file is refused', async (t) => {
  const expected = { known: keyedPrefix(FILE_KEY, KNOWN), unknown: keyedPrefix(FILE_KEY, UNKNOWN) }
  const shared = apiKeys({ fingerprintKeyFile: keyFile })
  const [one, two] = await Promise.all([
    startTestSidecar(t, { upstream: upstream.url, apiKeys: shared }),
    startTestSidecar(t, { upstream: upstream.url, apiKeys: shared }),
  ])
  t.same(
    await fingerprintsOf(one!.proxyUrl, one!.adminUrl, 'one'),
    expected,
    'HMAC-SHA256 under the file key',
  )
  t.same(await fingerprintsOf(two!.proxyUrl, two!.adminUrl, 'two'), expected, 'the other replica agrees')

  const explained = await runCli(['explain', '-c', one!.configPath, '-H', `x-api-key: ${UNKNOWN}`, '--json'])
  t.equal(explained.code, 0, explained.stderr)
  t.match(JSON.parse(explained.stdout), { evidence: { failures: [{ fingerprint: expected.unknown }] } })
  t.notMatch(explained.stdout, /keyed by this run/, 'with the file, no such note')
  t.notOk(explained.stdout.includes(plainPrefix(UNKNOWN)), 'explain shows no plain prefix either')

  // a reload to a file that is gone keeps the config that serves, and its fingerprints
  const gone = join(dir, 'missing.key')
  t.equal(
    await one!.reload({ upstream: upstream.url, apiKeys: apiKeys({ fingerprintKeyFile: gone }) }),
    false,
    'the reload fails',
  )
  // refused as check refuses it: at the line and column of the setting, naming the file
  t.match(
    one!.process.stderr(),
    /"event":"config_reload_failed".*config\.yaml:\d+:\d+ fingerprintKeyFile \\"[^"]*missing\.key\\": file not found/,
  )
  t.same(
    await fingerprintsOf(one!.proxyUrl, one!.adminUrl, 'one-after'),
    expected,
    'the old key still serves',
  )

  // a key too short to be a secret stops the start, saying which setting and why
  const short = join(dir, 'short.key')
  await writeFile(short, 'abc\n')
  const config = await writeConfig('short.yaml', { apiKeys: apiKeys({ fingerprintKeyFile: short }) })
  const started = await runCli(['run', '-c', config])
  t.equal(started.code, 1, 'exit 1')
  t.match(
    started.stderr,
    /apiKeys\.fingerprintKeyFile: .*short\.key holds 3 bytes; a fingerprint key needs at least 16/,
  )

  // check names the line of a key file that does not exist
  await writeConfig('short.yaml', { apiKeys: apiKeys({ fingerprintKeyFile: 'no-such.key' }) })
  const checked = await runCli(['check', config])
  t.equal(checked.code, 1)
  t.match(
    checked.stdout + checked.stderr,
    /short\.yaml:\d+:\d+.*fingerprintKeyFile "no-such\.key": file not found/,
  )
})

t.test('workers: 2 without a key file: every worker fingerprints a key alike', async (t) => {
  const config = await writeConfig('workers.yaml', {
    workers: 2,
    apiKeys: apiKeys(),
    audit: { output: 'off' },
    timeouts: { drainDelay: '0s' },
  })
  const pod = await startSidecarFromFile(t, config)
  // each on a fresh connection, so that the connections spread over the workers
  for (let i = 0; i < 16; i++)
    t.equal(await freshGet(`${pod.proxyUrl}/w/${i}`, { 'x-api-key': UNKNOWN }), 200)
  const metrics = await (await fetch(`${pod.adminUrl}/metrics`)).text()
  const perWorker = [...metrics.matchAll(/^nhi_worker_requests_total\{[^}]*\} (\d+)/gm)].map((m) =>
    Number(m[1]),
  )
  t.equal(perWorker.length, 2)
  t.ok(
    perWorker.every((n) => n > 0),
    `both workers served (${perWorker.join(' + ')})`,
  )
  const ring = (await (await fetch(`${pod.adminUrl}/audit?limit=1000`)).json()) as { events: AuditEvent[] }
  const fps = new Set(ring.events.filter((e) => e.path.startsWith('/w/')).map((e) => e.fingerprints?.apikey))
  t.equal(fps.size, 1, `one fingerprint over both workers: ${[...fps].join(', ')}`)
  t.not([...fps][0], plainPrefix(UNKNOWN))
})
