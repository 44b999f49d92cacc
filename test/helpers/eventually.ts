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
      last = err
    }
    if (Date.now() >= deadline) {
      const detail = last instanceof Error ? last.message : JSON.stringify(last)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${detail})`)
    }
    await delay(intervalMs)
  }
}
