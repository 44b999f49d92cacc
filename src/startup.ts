// What every command that starts a server shares without loading the sidecar: its error with an exit code
// and the HOST:PORT split. `nhi-proxy --version`, `check` and the other commands stay free of the proxy's
// modules by importing these from here rather than from runtime.ts.

export class StartupError extends Error {
  constructor(
    message: string,
    readonly exitCode: 1 | 2,
  ) {
    super(message)
  }
}

export function splitAddress(addr: string): { host: string; port: number } {
  const i = addr.lastIndexOf(':')
  let host = addr.slice(0, i)
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1)
  return { host: host || '0.0.0.0', port: Number(addr.slice(i + 1)) }
}

/**
 * The start was given up for a stop signal. `served`: some of a pod's workers listened already and were
 * drained before the exit (the listener opens with the first one); otherwise nothing listened.
 */
export class StoppedWhileStarting extends Error {
  constructor(readonly served = false) {
    super(
      served
        ? 'stopped while starting, after draining the workers already serving'
        : 'stopped while starting, before anything listened',
    )
  }
}
