// Hot reload mechanics of a config file: noticing that it changed (file watch) and running reloads one at a
// time. What a reload does with a new config is the caller's business (src/runtime.ts).
import { type FSWatcher, realpathSync, statSync, watch } from 'node:fs'
import { basename, dirname, sep } from 'node:path'

export interface ConfigWatcher {
  close(): void
}

/** how often a config path whose link resolves to nothing is looked at again */
const DANGLING_RETRY_MS = 1_000

export interface WatchOptions {
  /** quiet time after the last event before onChange fires: one save or ConfigMap swap is several events */
  debounceMs?: number
  /** the watch could not start or broke; reloads then only happen on request (SIGHUP) */
  onError?: (message: string, err: string) => void
}

/**
 * Calls `onChange` (debounced) when the file at `path` may have changed. Watches the directory, not the
 * file: editors replace files and Kubernetes swaps the ConfigMap's `..data` symlink, both of which orphan a
 * watch on the file itself.
 */
export function watchConfig(path: string, onChange: () => void, opts: WatchOptions = {}): ConfigWatcher {
  const debounceMs = opts.debounceMs ?? 150
  const file = basename(path)
  let timer: NodeJS.Timeout | undefined
  let watcher: FSWatcher | undefined
  let target: { dir: string; id: string; name: string; watcher: FSWatcher; gone?: boolean } | undefined
  /** the file the link resolves to when that is in the link's own directory: its edits are the config's */
  let sibling: string | undefined
  /** while the link resolves to nothing: the look that notices its target is back */
  let retry: NodeJS.Timeout | undefined
  let closed = false
  const changed = () => {
    // a symlink pointed elsewhere: watch where it points now
    followTarget()
    onChange()
  }
  const notice = () => {
    clearTimeout(timer)
    timer = setTimeout(changed, debounceMs)
  }
  /** the link's target is gone: looked for again until it is back, which is a change (no watch sees it) */
  const lookAgain = () => {
    retry = setTimeout(() => {
      retry = undefined
      if (closed) return
      try {
        realpathSync(path)
        notice()
      } catch {
        lookAgain()
      }
    }, DANGLING_RETRY_MS)
    retry.unref()
  }
  /**
   * A config path that is a symlink to a file elsewhere (a checkout, a config-management tree, a release
   * folder below it) is edited there, without an event in the link's directory: the target's directory is
   * watched as well, and, should it be the link's own directory, the target's name there. A ConfigMap's file
   * resolves into its `..<timestamp>/` folder, whose swaps the watch of the link's directory reports. A target
   * directory removed and made again is a new directory to watch; one that is gone is looked for until it is
   * back.
   */
  const followTarget = () => {
    if (closed) return
    clearTimeout(retry)
    retry = undefined
    sibling = undefined
    let dir: string | undefined
    let id = ''
    let name = ''
    try {
      const real = realpathSync(path)
      const own = realpathSync(dirname(path))
      dir = dirname(real)
      name = basename(real)
      const inside = own.endsWith(sep) ? own : own + sep
      if (dir === own) {
        if (name !== file) sibling = name
        dir = undefined
      } else if (dir.startsWith(inside) && dir.slice(inside.length).startsWith('..')) dir = undefined
      else {
        const st = statSync(dir)
        id = `${st.dev}:${st.ino}`
      }
    } catch {
      dir = undefined
      lookAgain()
    }
    if (target !== undefined && target.dir === dir && target.id === id && target.gone !== true) {
      // the link pointed at another file of the same directory: the watch there stays, for that file's name
      target.name = name
      return
    }
    target?.watcher.close()
    target = undefined
    if (dir === undefined) return
    const self = basename(dir)
    try {
      const w = watch(dir, (_event, changedName) => {
        // the directory's own name: it was moved or removed, and this watch sees nothing of it from now on
        // (one made again at its path may even have its inode number)
        if (changedName === self && target?.watcher === w) target.gone = true
        else if (changedName && changedName !== target?.name) return
        notice()
      })
      // the directory may go away with the link's old target: the link's own directory still reports a swap
      w.on('error', () => {})
      target = { dir, id, name, watcher: w }
    } catch {
      // not watchable: edits there are picked up on SIGHUP, as when the main watch fails
    }
  }
  try {
    watcher = watch(dirname(path), (_event, name) => {
      // `..data`, `..data_tmp` and the timestamped `..2024_…` folders are the ConfigMap swap; other
      // files in the directory are not the config, unless the config links to one of them
      if (name && name !== file && name !== sibling && !name.startsWith('..')) return
      notice()
    })
    watcher.on('error', (err) => opts.onError?.('config watch failed; SIGHUP still reloads', err.message))
  } catch (err) {
    opts.onError?.('cannot watch config; SIGHUP still reloads', (err as Error).message)
  }
  followTarget()
  return {
    close() {
      closed = true
      clearTimeout(timer)
      clearTimeout(retry)
      watcher?.close()
      target?.watcher.close()
    },
  }
}

/**
 * Runs `reload` one at a time. A request while one runs queues exactly one more run, started after it
 * settles, which every further request until then shares: the file is read again after the last change
 * without a burst of changes turning into a burst of reloads.
 */
export function serializeReloads<T>(reload: () => Promise<T>): () => Promise<T> {
  let running: Promise<T> | undefined
  let queued: Promise<T> | undefined
  const start = (): Promise<T> => {
    // a reload that throws before its first await still rejects the promise instead of the caller
    const run = Promise.resolve().then(reload)
    running = run
    const settle = () => {
      if (running === run) running = undefined
    }
    run.then(settle, settle)
    return run
  }
  return () => {
    if (queued) return queued
    if (!running) return start()
    const after = () => {
      queued = undefined
      return start()
    }
    queued = running.then(after, after)
    return queued
  }
}
