// The one way tests wait for a condition: poll until it holds or a deadline passes, never a fixed sleep.
import { setTimeout as delay } from 'node:timers/promises'

export interface EventuallyOptions {
  /** give up after this long (default 10 s) */
  timeoutMs?: number
  /** gap between attempts (default 25 ms) */
  intervalMs?: number
  /** what is awaited, for the failure message */
  what?: string
}

/**
 * Thrown by a probe when waiting longer cannot help (the process it waits on has exited): `eventually` rejects
 * with it at once instead of polling on to its deadline.
 */
export class GiveUp extends Error {}

/**
 * Calls `probe` until it returns a value other than `undefined`/`false` (or stops throwing) and resolves with
 * that value; rejects with the last error or the last value seen when `timeoutMs` runs out.
 */
export async function eventually<T>(
  probe: () => T | Promise<T>,
  { timeoutMs = 10_000, intervalMs = 25, what = 'condition' }: EventuallyOptions = {},
): Promise<Exclude<T, false | undefined>> {
  const deadline = Date.now() + timeoutMs
  let last: unknown
  for (;;) {
    try {
      const value = await probe()
      if (value !== undefined && value !== false) return value as Exclude<T, false | undefined>
      last = value
    } catch (err) {
      if (err instanceof GiveUp) throw err
      last = err
    }
    if (Date.now() >= deadline) {
      const detail = last instanceof Error ? last.message : JSON.stringify(last)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${detail})`)
    }
    await delay(intervalMs)
  }
}

/**
 * The one way tests assert that something does NOT happen ("no second event", "the upstream is not drained
 * by a stalled reader"): there is no event to wait for, so the only honest form is to watch for a fixed,
 * named window. Checks `probe` every `intervalMs` for `forMs` and resolves true when it held at every
 * check, false at the first check where it did not.
 */
export async function stillTrueFor(
  probe: () => boolean | Promise<boolean>,
  forMs: number,
  { intervalMs = 25 }: { intervalMs?: number } = {},
): Promise<boolean> {
  const deadline = Date.now() + forMs
  for (;;) {
    if (!(await probe())) return false
    if (Date.now() >= deadline) return true
    await delay(Math.min(intervalMs, Math.max(1, deadline - Date.now())))
  }
}
