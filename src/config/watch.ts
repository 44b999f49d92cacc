// Hot reload mechanics of a config file: noticing that it changed (file watch) and running reloads one at a
// time. What a reload does with a new config is the caller's business (src/runtime.ts).
import { type FSWatcher, realpathSync, watch } from 'node:fs'
import { basename, dirname, sep } from 'node:path'

export interface ConfigWatcher {
  close(): void
}

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
  let target: { dir: string; name: string; watcher: FSWatcher } | undefined
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
  /**
   * A config path that is a symlink to a file in another directory (a checkout, a config-management tree) is
   * edited there, without an event in the link's directory: that directory is watched as well. A ConfigMap's
   * file resolves inside its own directory (`..<timestamp>/`), which the watch above covers already.
   */
  const followTarget = () => {
    if (closed) return
    let dir: string | undefined
    let name = ''
    try {
      const real = realpathSync(path)
      const own = realpathSync(dirname(path))
      dir = dirname(real)
      name = basename(real)
      if (dir === own || dir.startsWith(own + sep)) dir = undefined
    } catch {
      // gone or unreadable for now: the next change looks again
      dir = undefined
    }
    if (target !== undefined && target.dir === dir) {
      // the link pointed at another file of the same directory: the watch there stays, for that file's name
      target.name = name
      return
    }
    target?.watcher.close()
    target = undefined
    if (dir === undefined) return
    try {
      const w = watch(dir, (_event, changedName) => {
        if (changedName && changedName !== target?.name) return
        notice()
      })
      // the directory may go away with the link's old target: the link's own directory still reports a swap
      w.on('error', () => {})
      target = { dir, name, watcher: w }
    } catch {
      // not watchable: edits there are picked up on SIGHUP, as when the main watch fails
    }
  }
  try {
    watcher = watch(dirname(path), (_event, name) => {
      // `..data`, `..data_tmp` and the timestamped `..2024_…` folders are the ConfigMap swap; other
      // files in the directory are not the config
      if (name && name !== file && !name.startsWith('..')) return
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
