// Whose turn a waiting verification is (pool.ts queues new tokens per peer). One IPv6 host normally owns a
// whole /64 and can send from any of its 2^64 addresses: keyed by address, it would get a queue, and so a
// turn and a per-peer bound, per address it cares to use. IPv6 peers are grouped by their /64; an IPv4
// address (also one written v4-mapped, ::ffff:a.b.c.d, as a dual-stack socket reports it) stays one peer.
import { isIPv4, isIPv6 } from 'node:net'

const HEX4 = /^[0-9a-f]{1,4}$/

/**
 * "2001:db8:1:2::/64" for any address of that /64 (however written: compressed, with leading zeros,
 * uppercase, a zone id), "10.1.2.3" for an IPv4 or v4-mapped address; anything else is returned as given.
 */
export function peerGroup(peer: string): string {
  // IPv4, the common case, without any work
  if (!peer.includes(':')) return peer
  const zone = peer.indexOf('%')
  const address = (zone === -1 ? peer : peer.slice(0, zone)).toLowerCase()
  const hextets = expand(address)
  if (hextets === undefined) return peer
  if (hextets[5] === 0xffff && hextets.slice(0, 5).every((h) => h === 0)) {
    const high = hextets[6]!
    const low = hextets[7]!
    return `${high >> 8}.${high & 0xff}.${low >> 8}.${low & 0xff}`
  }
  return `${hextets[0]!.toString(16)}:${hextets[1]!.toString(16)}:${hextets[2]!.toString(16)}:${hextets[3]!.toString(16)}::/64`
}

/** the eight 16-bit groups of an IPv6 address, or undefined when it is not one */
function expand(address: string): number[] | undefined {
  if (!isIPv6(address)) return undefined
  const gap = address.indexOf('::')
  const head = gap === -1 ? address : address.slice(0, gap)
  const tail = gap === -1 ? '' : address.slice(gap + 2)
  const left = groups(head)
  const right = groups(tail)
  if (left === undefined || right === undefined) return undefined
  const missing = 8 - left.length - right.length
  if (missing < 0 || (gap === -1 && missing !== 0)) return undefined
  return [...left, ...new Array<number>(missing).fill(0), ...right]
}

function groups(part: string): number[] | undefined {
  if (part === '') return []
  const out: number[] = []
  const pieces = part.split(':')
  for (let i = 0; i < pieces.length; i++) {
    const piece = pieces[i]!
    if (HEX4.test(piece)) out.push(Number.parseInt(piece, 16))
    else if (i === pieces.length - 1 && isIPv4(piece)) {
      const [a, b, c, d] = piece.split('.').map(Number) as [number, number, number, number]
      out.push((a << 8) | b, (c << 8) | d)
    } else return undefined
  }
  return out
}
