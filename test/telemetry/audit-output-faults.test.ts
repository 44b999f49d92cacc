// The audit output failing under a running sidecar (the built bundle): a full disk, a log collector that stopped
// reading stdout, a file rotated away. Lines that cannot be written are dropped and counted, the failure is
// logged, and SIGTERM still ends the process in bounded time; a rotated file is followed at the next reload.
import { readFile, rename } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { metricValue, scrape } from '../helpers/metrics.ts'
import { scratchDir } from '../helpers/scratch.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

t.jobs = 3

async function traffic(proxyUrl: string, n: number, path = '/x'): Promise<void> {
  for (let i = 0; i < n; i++) {
    const res = await fetch(`${proxyUrl}${path}?i=${i}`, {
      headers: { 'user-agent': `load-${'u'.repeat(600)}` },
    })
    await res.arrayBuffer()
    if (res.status !== 200) throw new Error(`status ${res.status}`)
  }
}

t.test(
  'a full disk: lines dropped and counted, the failure logged once, SIGTERM exits at once',
  async (t) => {
    const upstream = await startUpstream()
    t.teardown(() => upstream.close())
    const sidecar = await startTestSidecar(t, { upstream: upstream.url, audit: { output: '/dev/full' } })
    await traffic(sidecar.proxyUrl, 50)
    await sidecar.process.waitForLog((l) => l['event'] === 'audit_write_failed')
    await eventually(
      async () => metricValue(await scrape(sidecar.adminUrl), 'nhi_audit_dropped_lines_total') >= 50,
      {
        what: 'the lost lines counted',
      },
    )
    await traffic(sidecar.proxyUrl, 50)
    const started = Date.now()
    t.equal(await sidecar.close(), 0, 'exit 0')
    t.ok(Date.now() - started < 8_000, `stopped in ${Date.now() - started} ms`)
    const failures = sidecar.process
      .stderr()
      .split('\n')
      .filter((l) => l.includes('"audit_write_failed"'))
    t.ok(
      failures.length >= 1 && failures.length <= 3,
      `logged once per run of failures, not per batch (${failures.length})`,
    )
    t.match(failures[0], /ENOSPC/)
  },
)

t.test('stdout nobody reads: SIGTERM still exits, after a bounded wait', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const sidecar = await startTestSidecar(t, { upstream: upstream.url, audit: { output: 'stdout' } })
  // the collector stops reading: the pipe and then the writer's queue fill up
  sidecar.process.child.stdout!.pause()
  await traffic(sidecar.proxyUrl, 400)
  const started = Date.now()
  t.equal(await sidecar.close(), 0, 'exit 0')
  t.ok(Date.now() - started < 10_000, `stopped in ${Date.now() - started} ms`)
})

t.test(
  'a rotated audit file (renamed away, then a reload): lines go to a new file at the path',
  async (t) => {
    const upstream = await startUpstream()
    t.teardown(() => upstream.close())
    const dir = await scratchDir('audit-rotate')
    const output = join(dir, 'audit.log')
    const sidecar = await startTestSidecar(t, { upstream: upstream.url, audit: { output } })
    await traffic(sidecar.proxyUrl, 20, '/before')
    await eventually(async () => (await readFile(output, 'utf8')).split('\n').filter(Boolean).length === 20, {
      what: 'the first lines written',
    })
    await rename(output, `${output}.1`)
    t.ok(await sidecar.reload(), 'SIGHUP reloads')
    await traffic(sidecar.proxyUrl, 30, '/after')
    const lines = async (file: string) =>
      (await readFile(file, 'utf8').catch(() => ''))
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as { path: string })
    const fresh = await eventually(
      async () => {
        const now = await lines(output)
        return now.length === 30 && now
      },
      { what: 'the later lines in a new file at the path' },
    )
    t.ok(
      fresh.every((l) => l.path.startsWith('/after')),
      'only lines after the rotation there',
    )
    const rotated = await lines(`${output}.1`)
    t.equal(rotated.length, 20, 'the rotated file kept the earlier lines and got no more')
    t.ok(rotated.every((l) => l.path.startsWith('/before')))
  },
)
