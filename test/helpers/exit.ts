// A test process that ends by calling process.exit once tap has printed its results, instead of letting Node
// tear its environment down.
import t from 'tap'

/**
 * On Node 22.23 (seen there only, ~1 run in 5 with three copies of the file at once) a test file whose scripted
 * upstream the proxy connects to as the file ends printed every result and then never exited: the main thread
 * spun in Node's environment cleanup (FreeEnvironment → CleanupHandles, JavaScript already done) over one TCP
 * handle created natively for a connection the test's server accepted (most likely as it closed), a handle no
 * JavaScript socket ever owned. process.exit skips that cleanup; tap's exit code (set when its results
 * complete) is kept. Called at the top of such a file.
 */
export function exitOnceResultsArePrinted(): void {
  const exitIfPrinted = () => {
    if (t.results !== undefined) process.exit()
  }
  // the first beforeExit ends tap's root test, which may finish printing a turn later: the immediate keeps the
  // loop for that turn, and a beforeExit after it finds the results complete
  process.on('beforeExit', () => {
    exitIfPrinted()
    setImmediate(exitIfPrinted)
  })
}
