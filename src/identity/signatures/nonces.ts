// The nonces of accepted signatures, each kept until its signature can no longer verify: a second use within
// that time is a replay. The cache is bounded, and when it is full of nonces that are all still live it
// refuses the new one instead of forgetting a live one, since a forgotten nonce could be replayed.
// Entries sit in a binary min-heap ordered by expiry, so the expired ones are reclaimed from its top without
// walking the whole cache.

/** `unanswered`: the store could not be asked (the primary of `workers: N` did not answer in time) */
export type Admission = 'admitted' | 'replayed' | 'full' | 'unanswered'

/**
 * Where a verifier remembers nonces: one per process, or per pod under `workers: N`, and never per
 * pipeline, so that neither another worker nor a config reload gives a seen signature a second use.
 */
export interface NonceStore {
  admit(key: string, until: number, now: number): Admission | Promise<Admission>
}

export class NonceCache implements NonceStore {
  private readonly live = new Set<string>()
  /** heap order: heapAt[i] <= heapAt[2i+1], heapAt[2i+2]; heapKeys[i] expires at heapAt[i] */
  private readonly heapKeys: string[] = []
  private readonly heapAt: number[] = []

  constructor(private max: number) {}

  get size(): number {
    return this.live.size
  }

  /**
   * Remembers `key` until `until` (ms, same clock as `now`), unless it is remembered already (a replay) or
   * the cache is full of nonces live at `now`.
   */
  admit(key: string, until: number, now: number): Admission {
    this.reclaim(now)
    if (this.live.has(key)) return 'replayed'
    if (this.live.size >= this.max) return 'full'
    this.live.add(key)
    this.push(key, until)
    return 'admitted'
  }

  /**
   * A new bound (a reload changed signedAgents.nonceCacheSize). A smaller one forgets nothing: the live
   * nonces beyond it are kept until they expire, and new ones are refused as `full` meanwhile, since a
   * forgotten nonce could be replayed. Memory stays within the larger of the two bounds.
   */
  resize(max: number): void {
    this.max = max
  }

  clear(): void {
    this.live.clear()
    this.heapKeys.length = 0
    this.heapAt.length = 0
  }

  private reclaim(now: number): void {
    while (this.heapAt.length > 0 && this.heapAt[0]! <= now) this.live.delete(this.pop())
  }

  private push(key: string, at: number): void {
    const keys = this.heapKeys
    const ats = this.heapAt
    let i = ats.length
    keys.push(key)
    ats.push(at)
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (ats[parent]! <= at) break
      keys[i] = keys[parent]!
      ats[i] = ats[parent]!
      i = parent
    }
    keys[i] = key
    ats[i] = at
  }

  /** removes the earliest expiring entry and answers its key; only called on a non-empty heap */
  private pop(): string {
    const keys = this.heapKeys
    const ats = this.heapAt
    const top = keys[0]!
    const lastKey = keys.pop()!
    const lastAt = ats.pop()!
    const n = ats.length
    if (n === 0) return top
    let i = 0
    for (;;) {
      let child = 2 * i + 1
      if (child >= n) break
      if (child + 1 < n && ats[child + 1]! < ats[child]!) child++
      if (ats[child]! >= lastAt) break
      keys[i] = keys[child]!
      ats[i] = ats[child]!
      i = child
    }
    keys[i] = lastKey
    ats[i] = lastAt
    return top
  }
}
