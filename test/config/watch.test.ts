// The config watcher and reload serializer on their own: real files in a temp directory, a ConfigMap-style
// `..data` symlink swap, and a burst of reload requests during a running reload becoming one more run.
import { mkdir, rename, rm, symlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { serializeReloads, type WatchOptions, watchConfig } from '../../src/config/watch.ts'
import { eventually, stillTrueFor } from '../helpers/eventually.ts'
import { scratchDir } from '../helpers/scratch.ts'

async function tempDir(t: { teardown(fn: () => unknown): void }): Promise<string> {
  const dir = await scratchDir('watch')
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  return dir
}

/** `path` watched until the test ends: how many changes it has reported so far */
function countChanges(t: Test, path: string, opts: WatchOptions): () => number {
  let changes = 0
  const watcher = watchConfig(path, () => changes++, opts)
  t.teardown(() => watcher.close())
  return () => changes
}

/** etc/config.yaml, a symlink to repo/nhi.yaml (holding `service: one`) */
async function linkIntoRepo(t: Test): Promise<{ dir: string; target: string; config: string }> {
  const dir = await tempDir(t)
  await mkdir(join(dir, 'etc'))
  await mkdir(join(dir, 'repo'))
  const target = join(dir, 'repo', 'nhi.yaml')
  await writeFile(target, 'service: one\n')
  await symlink(join('..', 'repo', 'nhi.yaml'), join(dir, 'etc', 'config.yaml'))
  return { dir, target, config: join(dir, 'etc', 'config.yaml') }
}

t.test('an edit of the file calls onChange once per debounced burst', async (t) => {
  const dir = await tempDir(t)
  const file = join(dir, 'config.yaml')
  await writeFile(file, 'service: a\n')
  const changes = countChanges(t, file, { debounceMs: 250 })

  for (let i = 0; i < 5; i++) await writeFile(file, `service: edit-${i}\n`)
  await eventually(() => changes() >= 1, { what: 'a change notification' })
  t.equal(changes(), 1, 'five writes in a row are one notification')
})

t.test('a ConfigMap `..data` symlink swap is seen through the symlinked file', async (t) => {
  const dir = await tempDir(t)
  // the layout the kubelet writes: file -> ..data/file, ..data -> ..<timestamp>/
  await mkdir(join(dir, '..2026_01'))
  await writeFile(join(dir, '..2026_01', 'config.yaml'), 'service: one\n')
  await symlink('..2026_01', join(dir, '..data'))
  await symlink(join('..data', 'config.yaml'), join(dir, 'config.yaml'))
  const errors: string[] = []
  const changes = countChanges(t, join(dir, 'config.yaml'), {
    debounceMs: 50,
    onError: (message) => errors.push(message),
  })

  // the swap: a new timestamped folder, a temporary symlink to it, renamed over `..data`
  await mkdir(join(dir, '..2026_02'))
  await writeFile(join(dir, '..2026_02', 'config.yaml'), 'service: two\n')
  await symlink('..2026_02', join(dir, '..data_tmp'))
  await rename(join(dir, '..data_tmp'), join(dir, '..data'))
  await eventually(() => changes() >= 1, { what: 'the swap to be noticed' })
  t.same(errors, [])
})

// a config path that is a symlink to a file in another directory (a checkout, a config-management tree):
// only the link's directory was watched, so editing the file itself never reloaded
t.test('a config that is a symlink into another directory is watched where the file is', async (t) => {
  const { dir, target, config } = await linkIntoRepo(t)
  const changes = countChanges(t, config, { debounceMs: 50 })

  await writeFile(target, 'service: two\n')
  await eventually(() => changes() >= 1, { what: 'the edit of the link target to be noticed' })
  // the link pointed elsewhere: the new target's directory is the one watched from then on
  await mkdir(join(dir, 'other'))
  const next = join(dir, 'other', 'nhi.yaml')
  await writeFile(next, 'service: three\n')
  await symlink(join('..', 'other', 'nhi.yaml'), join(dir, 'etc', 'tmp.yaml'))
  await rename(join(dir, 'etc', 'tmp.yaml'), join(dir, 'etc', 'config.yaml'))
  await eventually(() => changes() >= 2, { what: 'the link swap to be noticed' })
  const swapped = changes()
  await writeFile(next, 'service: four\n')
  await eventually(() => changes() > swapped, { what: 'an edit of the new target to be noticed' })
  // pointed at another file of the same directory: that file's edits are the ones that count now
  const sibling = join(dir, 'other', 'nhi-v2.yaml')
  await writeFile(sibling, 'service: five\n')
  await symlink(join('..', 'other', 'nhi-v2.yaml'), join(dir, 'etc', 'tmp.yaml'))
  await rename(join(dir, 'etc', 'tmp.yaml'), join(dir, 'etc', 'config.yaml'))
  await eventually(() => changes() > swapped + 1, { what: 'the second link swap to be noticed' })
  const reswapped = changes()
  await writeFile(sibling, 'service: six\n')
  await eventually(() => changes() > reswapped, { what: 'an edit of the sibling target to be noticed' })
})

// a link to another file of its own directory, or into a folder below it (a release folder): edits there were
// filtered out as another file, or made in a directory no watch covered
for (const where of ['a file of its own directory', 'a folder below its directory'] as const) {
  t.test(`a config that is a symlink to ${where} reloads on edits of that file`, async (t) => {
    const dir = await tempDir(t)
    const rel = where === 'a file of its own directory' ? 'nhi-v2.yaml' : join('releases', 'v2', 'nhi.yaml')
    await mkdir(join(dir, 'releases', 'v2'), { recursive: true })
    await writeFile(join(dir, rel), 'service: one\n')
    await symlink(rel, join(dir, 'config.yaml'))
    const changes = countChanges(t, join(dir, 'config.yaml'), { debounceMs: 20 })
    await writeFile(join(dir, rel), 'service: two\n')
    await eventually(() => changes() >= 1, {
      what: 'the edit of the link target to be noticed',
      timeoutMs: 5_000,
    })
  })
}

// the link's target directory removed and made again (a checkout recloned, a config tree rewritten): the old
// watch there is dead, and no event in the link's own directory says so
for (const when of ['noticed in between', 'within one debounce'] as const) {
  t.test(`a link target's directory removed and made again, ${when}, is watched again`, async (t) => {
    const { dir, target, config } = await linkIntoRepo(t)
    const debounceMs = when === 'noticed in between' ? 20 : 1_000
    const changes = countChanges(t, config, { debounceMs })

    await rm(join(dir, 'repo'), { recursive: true })
    if (when === 'noticed in between') {
      await eventually(() => changes() >= 1, { what: 'the removal to be noticed' })
    }
    await mkdir(join(dir, 'repo'))
    await writeFile(target, 'service: two\n')
    await eventually(() => changes() >= 1, { what: 'the directory made again to be noticed' })
    const before = changes()
    await writeFile(target, 'service: three\n')
    await eventually(() => changes() > before, {
      what: 'an edit in the directory made again to be noticed',
      timeoutMs: 5_000,
    })
  })
}

t.test('other files in the directory do not trigger a reload', async (t) => {
  const dir = await tempDir(t)
  const file = join(dir, 'config.yaml')
  await writeFile(file, 'service: a\n')
  const changes = countChanges(t, file, { debounceMs: 20 })

  await writeFile(join(dir, 'notes.txt'), 'unrelated\n')
  await writeFile(join(dir, 'config.yaml.swp'), 'editor scratch\n')
  t.ok(await stillTrueFor(() => changes() === 0, 300), 'no notification for unrelated files')
})

t.test('a directory that cannot be watched reports through onError', async (t) => {
  const dir = await tempDir(t)
  const errors: string[] = []
  const watcher = watchConfig(join(dir, 'missing', 'config.yaml'), () => {}, {
    onError: (message, err) => errors.push(`${message}: ${err}`),
  })
  watcher.close()
  t.equal(errors.length, 1)
  t.match(errors[0], /cannot watch config; SIGHUP still reloads: .*ENOENT/)
})

t.test('reloads run one at a time; requests during one share exactly one more run', async (t) => {
  let runs = 0
  let active = 0
  let maxActive = 0
  const gates: Array<() => void> = []
  const reload = serializeReloads(async () => {
    const n = ++runs
    active++
    maxActive = Math.max(maxActive, active)
    await new Promise<void>((release) => gates.push(release))
    active--
    return n
  })

  const first = reload()
  await eventually(() => gates.length === 1, { what: 'the first reload to start' })
  const burst = [reload(), reload(), reload(), reload()]
  t.equal(new Set(burst).size, 1, 'requests during a reload share one queued run')
  t.equal(runs, 1, 'the queued run waits for the running one')

  gates[0]?.()
  t.equal(await first, 1)
  await eventually(() => gates.length === 2, { what: 'the queued reload to start' })
  t.equal(runs, 2)
  const during = reload()
  t.not(during, burst[0], 'a request during the queued run queues a new one')
  gates[1]?.()
  t.same(await Promise.all(burst), [2, 2, 2, 2], 'the burst is answered by the run after it')
  await eventually(() => gates.length === 3, { what: 'the third reload to start' })
  gates[2]?.()
  t.equal(await during, 3)
  t.equal(maxActive, 1, 'never two reloads at once')
  t.equal(runs, 3)
})

t.test('a failed reload does not block the next one', async (t) => {
  let calls = 0
  const reload = serializeReloads(async () => {
    calls++
    if (calls === 1) throw new Error('boom')
    return true
  })
  const failing = reload()
  const next = reload()
  await t.rejects(failing, /boom/)
  t.equal(await next, true)
  t.equal(await reload(), true, 'idle again: a new request runs at once')
  t.equal(calls, 3)
})
