// Delegation (OAuth 2.0 Token Exchange, RFC 8693 §4.1): a token whose `act` claim names an actor is "the actor
// acting on behalf of the subject" — an AI agent calling for a person or a service. The identity stays the
// subject (whose authority the call exercises, so policy and metrics keep counting the principal); the actor
// is shown beside it. Nested `act` members are the earlier actors of a chain.
import { isRecord } from '../../util/is-record.ts'

/** actors read from one token; a deeper chain is cut and marked */
export const MAX_ACTOR_CHAIN = 4
const MAX_ACTOR_CHARS = 200

export interface Delegation {
  /** the current actor: the outermost act's sub (or client_id) */
  actor: string
  /** the current actor first, then each earlier one */
  chain: string[]
  /** the chain went on beyond MAX_ACTOR_CHAIN */
  truncated: boolean
}

function actorName(act: Record<string, unknown>): string | undefined {
  for (const k of ['sub', 'client_id'] as const) {
    const v = act[k]
    if (typeof v === 'string' && v !== '') return v.length > MAX_ACTOR_CHARS ? v.slice(0, MAX_ACTOR_CHARS) : v
  }
  return undefined
}

export function delegationOf(claims: Readonly<Record<string, unknown>>): Delegation | undefined {
  const chain: string[] = []
  let act = claims['act']
  while (isRecord(act) && chain.length < MAX_ACTOR_CHAIN) {
    const name = actorName(act)
    if (name === undefined) break
    chain.push(name)
    act = act['act']
  }
  if (chain.length === 0) return undefined
  return { actor: chain[0]!, chain, truncated: isRecord(act) && chain.length === MAX_ACTOR_CHAIN }
}

/**
 * `actor`, `on_behalf_of` (the subject's identity name) and, for a chain, `actor_chain` ("a < b": a acts for
 * b, which acted for the subject). Only names: the claims are the token's, never the token.
 */
export function addDelegation(
  claims: Readonly<Record<string, unknown>>,
  subjectName: string,
  into: Record<string, string>,
): void {
  const d = delegationOf(claims)
  if (!d) return
  into['actor'] = d.actor
  into['on_behalf_of'] = subjectName
  if (d.chain.length > 1 || d.truncated)
    into['actor_chain'] = d.chain.join(' < ') + (d.truncated ? ' < …' : '')
}
