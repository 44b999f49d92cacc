// `workers: 2` with apiKeys.fingerprintKeyFile: every worker of a pod serves with the bytes the pod read when
// it started or last reloaded, a replacement worker included. A replacement that read the file itself got
// what the file held when it started: a file changed without a reload gave one api key two fingerprints in
// the audit trail (one per worker), and a file gone since kept the replacement from starting at all, the
// pod out of rotation while its other worker served on.
import { createHash, createHmac } from 'node:crypto'
import { rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { childPids, probeWorkers, twoWorkerPodFiles } from '../helpers/pod.ts'
import { replaceFile } from '../helpers/scratch.ts'
import { startSidecarFromFile } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

const API_KEY = 'workers-secret-files-api-key'
const FILE_KEYS = {
  start: 'fingerprint-key-at-start-0123456789',
  changed: 'fingerprint-key-changed-9876543210',
  reloaded: 'fingerprint-key-reloaded-abcdefghij',
}

/** what the audit shows for API_KEY under a fingerprint key file holding `fileKey` */
const fingerprintUnder = (fileKey: string) =>
  createHmac('sha256', fileKey)
    .update(createHash('sha256').update(API_KEY).digest())
    .digest('hex')
    .slice(0, 16)

t.test('every worker fingerprints with the bytes the pod read', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const pod = await twoWorkerPodFiles('workers-secret-files', upstream.url)
  const { auditFile, configFile } = pod
  const keyFile = join(pod.dir, 'fingerprint.key')
  const config = (rule: string) =>
    pod.config({
      apiKeys: {
        fingerprintKeyFile: keyFile,
        keys: [{ name: 'k1', sha256: createHash('sha256').update(API_KEY).digest('hex') }],
      },
      identities: [{ name: rule, kind: 'service', match: { userAgent: 'probe' } }],
    })
  await writeFile(keyFile, FILE_KEYS.start)
  await writeFile(configFile, config('before'))
  const sidecar = await startSidecarFromFile(t, configFile)
  const cli = sidecar.process
  const admin = sidecar.adminUrl

  const replaceAWorker = async () => {
    const [victim] = childPids(cli.child.pid!)
    const from = cli.stderr().length
    process.kill(victim!, 'SIGKILL')
    await cli.waitForLog((l) => l['event'] === 'worker_restarted', from)
    await eventually(
      async () => {
        const r = await fetch(`${admin}/readyz`)
        return r.status === 200 && ((await r.json()) as { workers: { ready: number } }).workers.ready === 2
      },
      { what: 'the replacement worker to serve' },
    )
  }
  /** the api-key fingerprints of requests on fresh connections, which the workers take in turn */
  const fingerprintsOfEveryWorker = async (t: Test, prefix: string) => {
    const { statuses, records } = await probeWorkers(sidecar.proxyUrl, auditFile, prefix, 8, {
      'x-api-key': API_KEY,
    })
    t.same(new Set(statuses), new Set([200]), 'every request served')
    const m = await (await fetch(`${admin}/metrics`)).text()
    t.notMatch(m, /nhi_worker_requests_total\{[^}]*\} 0\n/, 'both workers served some of them')
    return new Set(records.map((r) => (r['fingerprints'] as { apikey: string }).apikey))
  }

  await t.test('a file changed without a reload: a replacement uses the bytes read at start', async (t) => {
    await writeFile(keyFile, FILE_KEYS.changed)
    await replaceAWorker()
    t.same(
      await fingerprintsOfEveryWorker(t, '/changed/'),
      new Set([fingerprintUnder(FILE_KEYS.start)]),
      'one fingerprint, under the key read at start',
    )
  })

  await t.test('a file gone since: a replacement starts, with the bytes read at start', async (t) => {
    await rm(keyFile)
    await replaceAWorker()
    t.same(
      await fingerprintsOfEveryWorker(t, '/gone/'),
      new Set([fingerprintUnder(FILE_KEYS.start)]),
      'one fingerprint, under the key read at start',
    )
  })

  await t.test('a reload reads the file again for every worker', async (t) => {
    await writeFile(keyFile, FILE_KEYS.reloaded)
    const from = cli.stderr().length
    await replaceFile(configFile, config('after'))
    const reloaded = await cli.waitForLog(
      (l) => l['event'] === 'config_reloaded' && l['worker'] === undefined,
      from,
    )
    t.equal(reloaded['workers'], 2, 'both workers applied it')
    t.same(
      await fingerprintsOfEveryWorker(t, '/reloaded/'),
      new Set([fingerprintUnder(FILE_KEYS.reloaded)]),
      'one fingerprint, under the key the reload read',
    )
  })
})
