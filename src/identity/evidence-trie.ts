// Caches keyed by a request's combination of evidence objects (a cached token's, a known user agent's): one
// WeakMap level per credential, so an entry lives no longer than the evidence objects it was made for. The rule
// set keeps identities this way, the pipeline fingerprints.
//
// The walk goes from the last credential to the first. Credentials come strongest first, and the weaker ones
// are the shared ones: one user agent's evidence object stands for every request that sends it, while each
// token has its own. Walked this way, a never-seen token adds one entry to the map under its user agent; walked
// the other way, it added a map of its own (and a node holding it) per cache, which a flood of new tokens paid
// for in garbage-collector work.
import type { EvidenceSet } from '../types.ts'

/** one credential's step: what the cache keeps for the combination that ends here, and the longer ones */
export interface EvidenceTrieNode<N> {
  next?: WeakMap<object, N>
}

type Credentials = EvidenceSet['credentials']

/** the node of these credentials, or undefined when none was made (or there are no credentials) */
export function findEvidenceNode<N extends EvidenceTrieNode<N>>(
  trie: WeakMap<object, N>,
  credentials: Credentials,
): N | undefined {
  let level = trie
  for (let i = credentials.length - 1; i >= 0; i--) {
    const node = level.get(credentials[i]!.evidence)
    if (node === undefined || i === 0) return node
    if (node.next === undefined) return undefined
    level = node.next
  }
  return undefined
}

/** the node of these credentials (at least one), made on the way with `make` where missing */
export function evidenceNode<N extends EvidenceTrieNode<N>>(
  trie: WeakMap<object, N>,
  credentials: Credentials,
  make: () => N,
): N {
  let level = trie
  for (let i = credentials.length - 1; ; i--) {
    const evidence = credentials[i]!.evidence
    let node = level.get(evidence)
    if (node === undefined) {
      node = make()
      level.set(evidence, node)
    }
    if (i === 0) return node
    node.next ??= new WeakMap()
    level = node.next
  }
}
