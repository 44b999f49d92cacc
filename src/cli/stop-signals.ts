// SIGTERM/SIGINT for the commands that keep running, caught from the bin's first statement. Until a process
// has a listener of its own, Node's default action ends it by the signal: no drain, no exit status, no log
// line. Loading the CLI and its dependencies takes a few hundred milliseconds on a busy node, and an
// orchestrator may well stop a container that has only just started. A signal caught before the command
// claims them is kept for it; a second one exits at once, so a start that hangs can still be stopped.

export type StopSignal = 'SIGTERM' | 'SIGINT'

let caught: StopSignal | undefined
let claimant: ((signal: StopSignal) => void) | undefined
let installed = false

/**
 * `signals`: what this process stops on. A worker of `workers: N` takes SIGTERM only: a terminal's SIGINT
 * reaches the whole group and is its primary's.
 */
export function catchStopSignals(signals: readonly StopSignal[] = ['SIGTERM', 'SIGINT']): void {
  if (installed) return
  installed = true
  const on = (signal: StopSignal) => {
    if (claimant) return claimant(signal)
    if (caught === undefined) {
      caught = signal
      return
    }
    exitOnSecondSignal(signal)
  }
  for (const signal of signals) process.on(signal, () => on(signal))
}

/** a second stop signal while the process starts: a start that hangs can still be stopped */
export function exitOnSecondSignal(signal: string): never {
  process.stderr.write(`nhi-proxy: ${signal} again while starting, exiting\n`)
  process.exit(0)
}

/** The signals go to `to` from now on, one caught before first. */
export function claimStopSignals(to: (signal: StopSignal) => void, signals?: readonly StopSignal[]): void {
  catchStopSignals(signals)
  claimant = to
  const early = caught
  caught = undefined
  if (early !== undefined) to(early)
}

/**
 * Resolves after one turn of the event loop, by when a stop signal that was already delivered has reached
 * its listener. Node runs a signal's listener from the loop's poll phase only, and libuv dispatches signals
 * after the other I/O of the same poll: a start that goes on from an I/O callback through promises alone
 * reaches its listeners before a signal delivered long before is seen. Node 22 and later load the code with
 * synchronous reads, so a SIGTERM sent while the CLI loaded waits for the first poll; on Node 26 the start
 * after that first poll (the config read) needs no further one. Awaited before the listeners open, it lets
 * such a signal end the start instead of draining a sidecar that has only just started serving.
 */
export function stopSignalsDispatched(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve))
}

/**
 * SIGHUP neither ends the process nor does anything until the command installs what it means (a reload):
 * a listener of its own is what keeps Node's default action away.
 */
export function ignoreHangupWhileStarting(): void {
  process.on('SIGHUP', () => {})
}

/** A worker process of `workers: N`: SIGINT and SIGHUP are its primary's, from its first statement on. */
export function ignoreGroupSignals(): void {
  process.on('SIGINT', () => {})
  process.on('SIGHUP', () => {})
}
