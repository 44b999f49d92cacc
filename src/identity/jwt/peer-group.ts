// Whose turn a waiting verification is (pool.ts queues new tokens per peer). One IPv6 host normally owns a
// whole /64 and can send from any of its 2^64 addresses: keyed by address, it would get a queue, and so a
// turn and a per-peer bound, per address it cares to use. IPv6 peers are grouped by their /64; an IPv4
// address (also one written v4-mapped, ::ffff:a.b.c.d, as a dual-stack socket reports it) stays one peer.
import { isIPv6 } from 'node:net'
import { ipv6Groups, v4MappedText } from '../../util/cidr.ts'

/**
 * "2001:db8:1:2::/64" for any address of that /64 (however written: compressed, with leading zeros,
 * uppercase, a zone id), "10.1.2.3" for an IPv4 or v4-mapped address; anything else is returned as given.
 */
export function peerGroup(peer: string): string {
  // IPv4, the common case, without any work
  if (!peer.includes(':')) return peer
  const zone = peer.indexOf('%')
  const address = zone === -1 ? peer : peer.slice(0, zone)
  const hextets = isIPv6(address) ? ipv6Groups(address) : undefined
  if (hextets === undefined) return peer
  return (
    v4MappedText(hextets) ??
    `${hextets[0]!.toString(16)}:${hextets[1]!.toString(16)}:${hextets[2]!.toString(16)}:${hextets[3]!.toString(16)}::/64`
  )
}
