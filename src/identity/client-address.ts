// The address a request really comes from: for checking a crawler's claim against its operator's ranges,
// telling apart the clients that share a token, and queueing new tokens' verifications per client.
// Only a configured trusted proxy may say where a client is: a client's own X-Forwarded-For (or any other
// header naming an address) from anywhere else is ignored, or anyone could claim to be inside Google, or
// spread one token over as many addresses as it likes.

import type { IncomingHttpHeaders } from 'node:http'
import { isIP } from 'node:net'
import type { Config } from '../config/schema.ts'
import { CidrSet, normaliseAddress } from '../util/cidr.ts'

/** every forwardedClientCert.trustedProxies entry, whatever its certificate format */
export function trustedProxySet(forwarded: Pick<Config['forwardedClientCert'], 'trustedProxies'>): CidrSet {
  return new CidrSet(forwarded.trustedProxies.map((e) => (typeof e === 'string' ? e : e.cidr)))
}

/** Longer X-Forwarded-For values are not read (a real chain is a few addresses). */
const MAX_XFF_LENGTH = 4096
const MAX_HOPS = 32
const BRACKETED_RE = /^\[([0-9A-Fa-f:.]+)\](?::\d{1,5})?$/
const V4_PORT_RE = /^(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}$/

function entryAddress(entry: string): string | undefined {
  const e = entry.trim()
  if (isIP(e) !== 0) return normaliseAddress(e)
  const m = BRACKETED_RE.exec(e) ?? V4_PORT_RE.exec(e)
  return m && isIP(m[1]!) !== 0 ? normaliseAddress(m[1]!) : undefined
}

/**
 * The socket peer, or, when the peer is a trusted proxy, the address that proxy appended to X-Forwarded-For,
 * walking left past further trusted proxies. Only the exact `x-forwarded-for` header is read (Node joins
 * repeated ones): `X_Forwarded_For`, `Forwarded`, `X-Real-IP`, `True-Client-IP` and the like never are.
 */
export function clientAddress(headers: IncomingHttpHeaders, peer: string, trusted: CidrSet): string {
  let client = normaliseAddress(peer)
  if (trusted.size === 0 || !trusted.has(client)) return client
  const raw = headers['x-forwarded-for']
  if (typeof raw !== 'string' || raw.length > MAX_XFF_LENGTH) return client
  const hops = raw.split(',')
  for (let i = hops.length - 1, n = 0; i >= 0 && n < MAX_HOPS; i--, n++) {
    const next = entryAddress(hops[i]!)
    if (next === undefined) return client
    client = next
    if (!trusted.has(client)) return client
  }
  return client
}
