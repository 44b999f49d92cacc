// process.exit that lets the last lines out first. In a container stdout and stderr are pipes, and Node writes
// to a pipe asynchronously once it is full (a log reader that fell behind): process.exit drops what is still
// queued, and the line lost is the one saying why the process ends (a start failure, the end of a drain, an
// internal error). The wait is bounded: a reader that is stalled rather than gone gets EXIT_FLUSH_MS; one that
// is gone fails its stream (EPIPE, ignored), which empties the queue.

const EXIT_FLUSH_MS = 2_000
const POLL_MS = 10

let exiting = false

/** bytes written to stdout or stderr that the OS has not taken yet */
function queuedBytes(): number {
  let bytes = 0
  for (const stream of [process.stdout, process.stderr]) if (!stream.destroyed) bytes += stream.writableLength
  return bytes
}

/**
 * Exits with `code` at once when nothing is queued (nearly always), else once the queue is empty or `boundMs`
 * has passed. Returns in the second case: the caller must have nothing left to do. A second call while one
 * waits changes nothing (the first call's code stands).
 */
export function exitFlushed(code: number, boundMs = EXIT_FLUSH_MS): void {
  if (exiting) return
  if (queuedBytes() === 0) process.exit(code)
  exiting = true
  process.exitCode = code
  const giveUpAt = performance.now() + boundMs
  setInterval(() => {
    if (queuedBytes() === 0 || performance.now() >= giveUpAt) process.exit(code)
  }, POLL_MS)
}
