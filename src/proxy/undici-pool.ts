// undici's connection pool on its own. The package entry point also loads fetch, websockets, caches and
// mocks; the proxy needs only Pool, and loading just that module takes about a third of the time, which
// counts toward the sidecar's cold start.
import type { Pool as UndiciPool } from 'undici'
import constants from 'undici/lib/core/constants.js'
import PoolModule from 'undici/lib/dispatcher/pool.js'
import { ADDED_REQUEST_HEADERS } from './headers.ts'

export const Pool = PoolModule as typeof UndiciPool
export type Pool = UndiciPool

/**
 * undici lower-cases (a new string each time) and re-validates every request header name it does not find in
 * its record of well-known names, on every request. The names the proxy adds to each request are lower-case
 * tokens already; entered in the record as themselves, they are looked up like `authorization` instead. The
 * record is only ever read as "name → its lower-case form", so this changes no header undici sends.
 */
export function registerAddedHeaderNames(record: unknown): boolean {
  // an undici without the record (another major version) simply keeps lower-casing
  if (record === null || typeof record !== 'object') return false
  const names = record as Record<string, string | undefined>
  for (const name of ADDED_REQUEST_HEADERS) names[name] ??= name
  return true
}

registerAddedHeaderNames(
  (constants as { headerNameLowerCasedRecord?: unknown } | undefined)?.headerNameLowerCasedRecord,
)
