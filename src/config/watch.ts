// Hot reload mechanics of a config file: noticing that it changed (file watch) and running reloads one at a
// time. What a reload does with a new config is the caller's business (src/runtime.ts).
import { type FSWatcher, watch } from 'node:fs'
import { basename, dirname } from 'node:path'

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
  try {
    watcher = watch(dirname(path), (_event, name) => {
      // `..data`, `..data_tmp` and the timestamped `..2024_…` folders are the ConfigMap swap; other
      // files in the directory are not the config
      if (name && name !== file && !name.startsWith('..')) return
      clearTimeout(timer)
      timer = setTimeout(onChange, debounceMs)
    })
    watcher.on('error', (err) => opts.onError?.('config watch failed; SIGHUP still reloads', err.message))
  } catch (err) {
    opts.onError?.('cannot watch config; SIGHUP still reloads', (err as Error).message)
  }
  return {
    close() {
      clearTimeout(timer)
      watcher?.close()
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
