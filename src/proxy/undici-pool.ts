// undici's connection pool on its own. The package entry point also loads fetch, websockets, caches and
// mocks; the proxy needs only Pool, and loading just that module takes about a third of the time, which
// counts toward the sidecar's cold start.
import type { Pool as UndiciPool } from 'undici'
import PoolModule from 'undici/lib/dispatcher/pool.js'

export const Pool = PoolModule as typeof UndiciPool
export type Pool = UndiciPool
