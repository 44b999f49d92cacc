// undici's connection pool on its own. The package entry point also loads fetch, websockets, caches and
// mocks; the proxy needs only Pool, and loading just that module takes about a third of the time, which
// counts toward the sidecar's cold start.
import type { Pool as UndiciPool } from 'undici'
import constants from 'undici/lib/core/constants.js'
import PoolModule from 'undici/lib/dispatcher/pool.js'
import type { Identity } from '../types.ts'
import {
  ADDED_REQUEST_HEADERS,
  forwardedBlock,
  forwardedProtoBlock,
  type HeaderBlocks,
  identityHeaderBlock,
} from './headers.ts'

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

const record = (constants as { headerNameLowerCasedRecord?: unknown } | undefined)?.headerNameLowerCasedRecord
const registered = registerAddedHeaderNames(record)

/**
 * Most identity and client-address blocks entered in undici's record. Identity names and addresses come from
 * clients, so the record must not grow with them; past the cap, headers are sent as ordinary lines, as before.
 */
export const MAX_HEADER_BLOCKS = 4096

/**
 * The identity's first three header lines and the fourth's name as one entry of the upstream header object
 * (`identityHeaderBlock`), entered in undici's record so that undici takes it as a known name: undici writes
 * every header as `name: value\r\n`, a few new strings per line, so the four identity lines sent as one
 * prepared entry cost what one line does, and the request's header list grows by one pair instead of four.
 * The bytes on the wire are the same. The block's parts are printable ASCII (checked when it is made), the
 * one thing undici's name check would have guaranteed. Undefined when undici has no record, for an identity
 * whose parts are not printable ASCII, and once the record holds MAX_HEADER_BLOCKS blocks.
 *
 * A block is only ever built and handed to undici in one synchronous step (undici copies the headers into
 * its request as it is dispatched), and entries are never removed, so no block is sent after its entry.
 */
export function identityBlock(identity: Identity): string | undefined {
  const known = blocks.get(identity)
  if (known !== undefined) return known
  if (!registered || blockCount >= MAX_HEADER_BLOCKS) return undefined
  const block = identityHeaderBlock(identity)
  if (block === undefined) return undefined
  enter(block)
  // per identity object: a cached credential's identity repeats on every request, and finds its block here
  blocks.set(identity, block)
  return block
}
const blocks = new WeakMap<Identity, string>()
let blockCount = 0

/** enters a block in the record (counted against the cap when new) */
function enter(block: string): void {
  const names = record as Record<string, string | undefined>
  if (names[block] === undefined) {
    names[block] = block
    blockCount++
  }
}

/**
 * The forwarded-* block of a client address and scheme (`forwardedBlock`), looked up by the address string,
 * which a connection's requests share; under the same cap as the identity blocks.
 */
function addressBlock(clientIp: string, proto: 'http' | 'https'): string | undefined {
  const byAddress = proto === 'http' ? httpAddresses : httpsAddresses
  const known = byAddress.get(clientIp)
  if (known !== undefined) return known
  if (!registered || blockCount >= MAX_HEADER_BLOCKS) return undefined
  const block = forwardedBlock(clientIp, proto)
  if (block === undefined) return undefined
  enter(block)
  byAddress.set(clientIp, block)
  return block
}
const httpAddresses = new Map<string, string>()
const httpsAddresses = new Map<string, string>()

function entered(block: string): string {
  ;(record as Record<string, string | undefined>)[block] ??= block
  return block
}

/** undici's prepared entries (HeaderBlocks), when its record could take them */
export const UNDICI_HEADER_BLOCKS: HeaderBlocks | undefined = registered
  ? {
      identity: identityBlock,
      forwarded: addressBlock,
      forwardedProto: {
        http: entered(forwardedProtoBlock('http')),
        https: entered(forwardedProtoBlock('https')),
      },
    }
  : undefined
