// The address a request really comes from: for checking a crawler's claim against its operator's ranges,
// telling apart the clients that share a token, and queueing new tokens' verifications per client.
// Only a configured trusted proxy may say where a client is: a client's own X-Forwarded-For (or any other
// header naming an address) from anywhere else is ignored, or anyone could claim to be inside Google, or
// spread one token over as many addresses as it likes.

import type { IncomingHttpHeaders } from 'node:http'
import { isIP } from 'node:net'
import type { Config } from '../config/schema.ts'
import type { RequestInfo } from '../types.ts'
import { CidrSet, canonicalAddress, normaliseAddress } from '../util/cidr.ts'

/** every forwardedClientCert.trustedProxies entry, whatever its certificate format */
export function trustedProxySet(forwarded: Pick<Config['forwardedClientCert'], 'trustedProxies'>): CidrSet {
  return new CidrSet(forwarded.trustedProxies.map((e) => (typeof e === 'string' ? e : e.cidr)))
}

/**
 * Entries read from the right end of X-Forwarded-For (a real chain of trusted proxies is a few), and the longest
 * entry taken for an address (a bracketed IPv6 address with a zone and a port is shorter).
 */
const MAX_HOPS = 32
const MAX_ENTRY_LENGTH = 100
const BRACKETED_RE = /^\[([0-9A-Fa-f:.]+)\](?::(\d{1,5}))?$/
const V4_PORT_RE = /^(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})$/

/**
 * An entry's address, as a socket would name it (canonicalAddress), or undefined for anything else: an
 * address with a zone (`fe80::1%eth0` names an interface of the host that wrote it, nothing here), a port
 * outside 1-65535.
 */
function entryAddress(e: string): string | undefined {
  if (isIP(e) !== 0) return e.includes('%') ? undefined : canonicalAddress(e)
  const m = BRACKETED_RE.exec(e) ?? V4_PORT_RE.exec(e)
  if (!m || isIP(m[1]!) === 0) return undefined
  const port = m[2] === undefined ? 1 : Number(m[2])
  return port >= 1 && port <= 65535 ? canonicalAddress(m[1]!) : undefined
}

/** HTTP's optional whitespace around a list element: SP and HTAB, not what String.trim takes (NBSP…) */
const isOws = (c: number) => c === 32 || c === 9

/**
 * The socket peer, or, when the peer is a trusted proxy, the address that proxy appended to X-Forwarded-For,
 * walking left past further trusted proxies. Only the exact `x-forwarded-for` header is read (Node joins
 * repeated ones): `X_Forwarded_For`, `Forwarded`, `X-Real-IP`, `True-Client-IP` and the like never are.
 * The header is read from its right end, entry by entry: what is left of the trusted entries is the client's
 * own text, of any length, and must not decide whether they are read.
 */
export function clientAddress(headers: IncomingHttpHeaders, peer: string, trusted: CidrSet): string {
  let client = normaliseAddress(peer)
  if (trusted.size === 0 || !trusted.has(client)) return client
  const raw = headers['x-forwarded-for']
  if (typeof raw !== 'string') return client
  let end = raw.length
  for (let n = 0; end >= 0 && n < MAX_HOPS; n++) {
    const comma = raw.lastIndexOf(',', end - 1)
    // an entry too long to be an address is not cut out of the header to find that out
    if (end - comma - 1 > MAX_ENTRY_LENGTH) return client
    let from = comma + 1
    let to = end
    while (from < to && isOws(raw.charCodeAt(from))) from++
    while (to > from && isOws(raw.charCodeAt(to - 1))) to--
    end = comma
    // RFC 9110 §5.6.1: an empty list element is skipped (Node joins an empty header line in as one)
    if (from === to) continue
    const next = entryAddress(raw.slice(from, to))
    if (next === undefined) return client
    client = next
    if (!trusted.has(client)) return client
  }
  return client
}

/** what a stage reads of a request for its client address */
export type ClientRequest = Pick<RequestInfo, 'headers' | 'client'>

/**
 * clientAddress, worked out once per request: the first stage that asks (the JWT verification queue, a
 * crawler claim's check, the token-sharing count, the exchange's record) keeps it in `req.client` for the
 * others, so X-Forwarded-For is read once. Every stage's `trusted` is the one config's trustedProxies, so
 * whichever asks first works out the same address. Only a request object that has the field keeps it: the
 * proxy's exchange, one per request and peer. Any other (a CLI case, an embedder's object, which may come
 * again with another peer) is worked out on each call.
 */
export function requestClient(req: ClientRequest, peer: string, trusted: CidrSet): string {
  const known = req.client
  if (known !== undefined) return known
  const client = clientAddress(req.headers, peer, trusted)
  if ('client' in req) req.client = client
  return client
}
