// Admission for caches keyed by client input: an entry is kept from the second time its key is seen. A stream
// of keys that never repeat (a flood of new tokens, a client minting a token per request, random user agents)
// then neither fills a cache with entries no later request reads nor evicts the entries later requests do
// read; a cache-miss flood costs the process ≈ 26 % less CPU for it (bench/README.md, "Seventh look"). A key
// that repeats pays for one more miss: its second request is worked out again, and kept. This is the
// "doorkeeper" of TinyLFU (Einziger, Friedman and Manes, 2017).
//
// The record of keys seen once is a fixed table of 32-bit tags, in buckets of four slots, the bucket picked by
// a hash of the key: no allocation per key and a size fixed at construction. A new key takes its bucket's
// slots in turn, so a key is forgotten once four later keys have landed in its bucket; it then needs one more
// sight. Two keys with the same bucket and tag make the second look seen. Either way the cost is a cache entry
// kept or not, never a different answer: what a cache holds is only ever what a miss computes.

const WAYS = 4
/** slots per cache entry the table is sized for: room for the keys of four cache-fulls seen once */
const SLOTS_PER_ENTRY = 4
const MIN_SLOTS = 1 << 12
/** 4 MiB of tags at most, whatever the cache size */
const MAX_SLOTS = 1 << 20

function slotsFor(entries: number): number {
  let slots = MIN_SLOTS
  while (slots < entries * SLOTS_PER_ENTRY && slots < MAX_SLOTS) slots *= 2
  return slots
}

export class SecondSight {
  private readonly tags: Uint32Array
  /** per bucket, the slot the next new key takes */
  private readonly next: Uint8Array
  private readonly bucketMask: number
  private readonly seed: number

  /**
   * `entries`: the size of the cache this admits to, which sizes the table. `seed` varies the hash per
   * process, so which keys share a bucket cannot be worked out from outside; tests pass one to be
   * reproducible, and may give the table's size in `slots` (a power of two, at least four).
   */
  constructor(
    entries: number,
    seed: number = (Math.random() * 0x1_0000_0000) >>> 0,
    slots: number = slotsFor(entries),
  ) {
    if (slots < WAYS || (slots & (slots - 1)) !== 0)
      throw new RangeError(`slots must be a power of two ≥ ${WAYS}`)
    this.tags = new Uint32Array(slots)
    this.next = new Uint8Array(slots / WAYS)
    this.bucketMask = slots / WAYS - 1
    this.seed = seed >>> 0
  }

  /** how many keys the table can remember at once */
  get slots(): number {
    return this.tags.length
  }

  /** Whether `key` was seen before; a key not seen before is remembered (in place of its bucket's oldest). */
  seen(key: string): boolean {
    // two 32-bit FNV-1a style lanes over the UTF-16 code units: one picks the bucket, the other is the tag
    let bucketHash = 0x811c9dc5 ^ this.seed
    let tagHash = 0x01000193 ^ Math.imul(this.seed, 0x9e3779b1)
    for (let i = 0; i < key.length; i++) {
      const c = key.charCodeAt(i)
      bucketHash = Math.imul(bucketHash ^ c, 0x01000193)
      tagHash = Math.imul(tagHash ^ c, 0x5bd1e995)
    }
    // FNV's low bits mix poorly on their own; fold the high half in before masking
    const bucket = (bucketHash ^ (bucketHash >>> 15)) & this.bucketMask
    tagHash ^= tagHash >>> 13
    // 0 marks an empty slot, so a tag is never 0
    const tag = (tagHash | 1) >>> 0
    const tags = this.tags
    const first = bucket * WAYS
    for (let i = first; i < first + WAYS; i++) if (tags[i] === tag) return true
    const way = this.next[bucket]!
    tags[first + way] = tag
    this.next[bucket] = (way + 1) % WAYS
    return false
  }

  /** forgets every key (a cache cleared with its config) */
  clear(): void {
    this.tags.fill(0)
    this.next.fill(0)
  }
}
