import { chmodSync, mkdtempSync, rmSync } from 'node:fs'
import { mkdtemp, rename, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

// Every directory a test process writes (configs, certificates, audit files, sockets, packed tarballs) lives
// under one root that is removed when the process exits, so a run leaves nothing in the system's temp
// directory, whether a test passed, failed half-way or forgot to clean up after itself.
let root: string | undefined

function scratchRoot(): string {
  if (root === undefined) {
    const dir = mkdtempSync(join(tmpdir(), 'nhi-test-'))
    // other users may pass through (not list): a test that runs the product as the image's unprivileged user
    // opens its own sub-directory to it; every other sub-directory stays 0700 as mkdtemp makes it
    chmodSync(dir, 0o711)
    process.once('exit', () => rmSync(dir, { recursive: true, force: true }))
    root = dir
  }
  return root
}

/** a new empty directory `<root>/<prefix>-XXXXXX`, removed with the root when the test process exits */
export function scratchDir(prefix: string): Promise<string> {
  return mkdtemp(join(scratchRoot(), `${prefix}-`))
}

/** scratchDir for code that cannot await (module top level of a CommonJS-style helper, sync setup) */
export function scratchDirSync(prefix: string): string {
  return mkdtempSync(join(scratchRoot(), `${prefix}-`))
}

/**
 * Replaces a config file in one step, as an editor's save-and-rename or a ConfigMap swap does: written beside
 * it, then renamed over it. A plain writeFile truncates first, and a watcher that fires between the truncate
 * and the write reloads an empty file, so a test would see two reloads where it made one change.
 */
export async function replaceFile(path: string, text: string): Promise<void> {
  const next = `${path}.next-${process.pid}`
  await writeFile(next, text)
  await rename(next, path)
}
