// How many proxy worker processes a `workers` setting means (config key and --workers flag alike).
import { availableParallelism } from 'node:os'

/**
 * More worker processes than this is a typo, not a plan: each is a whole Node process (tens of MB), and past
 * the cores a pod has they only add contention. `auto` on a larger machine stops here too.
 */
export const MAX_WORKERS = 64

/** what `workers` and `--workers` take, said alike for the file and the flag */
export const WORKERS_PROBLEM = `expected a whole number from 1 to ${MAX_WORKERS}, or auto`

/** `auto` is one worker per core the process may use, up to MAX_WORKERS */
export function workerCount(setting: number | 'auto'): number {
  return setting === 'auto' ? Math.min(availableParallelism(), MAX_WORKERS) : setting
}
