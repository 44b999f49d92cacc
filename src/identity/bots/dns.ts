// Reverse-then-forward DNS verification of a crawler's address (what Google and Bing document for their
// crawlers): the PTR name of the address must end in one of the operator's domains, and that name must
// resolve back to the same address. Lookups never hold a request: the caller gets the cached answer or
// "pending", and the answer lands in a bounded cache for the requests that follow. The requests that waited
// on a lookup are counted, and reported when it concludes unverified (`onUnverified`): a client that never
// repeats an address gets every claim answered "pending", and would otherwise never be counted.
import { Resolver } from 'node:dns/promises'
import { isIPv4 } from 'node:net'
import { LRUCache } from 'lru-cache'

/**
 * `pending`: a lookup is on its way; `unchecked`: none is, nor will be for this claim (as many lookups as
 * allowed are already running, or the verifier is closed)
 */
export type DnsResult = 'verified' | 'unverified' | 'pending' | 'unchecked'

export interface DnsVerifierOptions {
  /** operator (any case) → domain suffixes its crawlers' PTR names end in, e.g. ["googlebot.com"] */
  domains: ReadonlyMap<string, readonly string[]>
  /** deadline for one lookup (PTR plus forward) */
  timeoutMs: number
  /** how long an answer is kept */
  cacheTtlMs: number
  cacheSize: number
  /** at most this many lookups at once; a claim that finds them all running is `unchecked` */
  maxInflight?: number
  /** DNS servers (ip or ip:port); default: the system's */
  servers?: readonly string[]
  /** a lookup concluded unverified (an answer, or a failure): `waiting` requests had waited on it */
  onUnverified?: (waiting: number) => void
}

/** One lookup on its way, and how many requests wait for its answer to be counted. */
interface Inflight {
  done: Promise<void>
  waiting: number
}

/**
 * How long a failed lookup (a timeout, a server failure) stands as a negative answer before a later request
 * asks again (at most the configured cacheTtl). The reverse zone of an address belongs to whoever holds the
 * address: a client claiming Googlebot from its own address could otherwise keep every lookup failing and
 * its claim forever neither verified nor counted.
 */
export const FAILED_LOOKUP_TTL_MS = 60_000

export class DnsVerifier {
  private readonly resolver: Resolver
  private readonly cache: LRUCache<string, 'verified' | 'unverified'>
  /** at most maxInflight entries: the lookups on their way */
  private readonly inflight = new Map<string, Inflight>()
  private readonly domains = new Map<string, readonly string[]>()
  private readonly maxInflight: number
  private closed = false

  constructor(private readonly opts: DnsVerifierOptions) {
    // one try per lookup: the deadline below covers the whole verification
    this.resolver = new Resolver({ timeout: opts.timeoutMs, tries: 1 })
    if (opts.servers && opts.servers.length > 0) this.resolver.setServers([...opts.servers])
    this.cache = new LRUCache({ max: opts.cacheSize, ttl: opts.cacheTtlMs })
    for (const [op, suffixes] of opts.domains) {
      this.domains.set(
        op.toLowerCase(),
        suffixes.map((s) => s.toLowerCase().replace(/^\.+|\.+$/g, '')),
      )
    }
    this.maxInflight = opts.maxInflight ?? 64
  }

  /** whether DNS can check claims of this operator */
  covers(operator: string): boolean {
    return this.domains.has(operator.toLowerCase())
  }

  /**
   * The cached answer, `pending` while a lookup is on its way (one is started when none is), `unchecked` when
   * no lookup can be started.
   */
  check(operator: string, address: string): DnsResult {
    const op = operator.toLowerCase()
    const key = `${op} ${address}`
    const hit = this.cache.get(key)
    if (hit) return hit
    if (this.inflight.has(key)) return 'pending'
    if (this.closed || this.inflight.size >= this.maxInflight) return 'unchecked'
    const entry: Inflight = { done: Promise.resolve(), waiting: 0 }
    const concluded = (result: 'verified' | 'unverified', ttl?: number) => {
      this.inflight.delete(key)
      if (this.closed) return
      this.cache.set(key, result, ttl !== undefined ? { ttl } : undefined)
      if (result !== 'unverified' || entry.waiting === 0) return
      try {
        this.opts.onUnverified?.(entry.waiting)
      } catch {
        // a count that could not be taken must not become an unhandled rejection (that ends the process)
      }
    }
    entry.done = this.lookup(op, address).then(
      (ok) => concluded(ok ? 'verified' : 'unverified'),
      // a timeout or a server failure confirms nothing: unverified, for a shorter while than an answer
      () => concluded('unverified', Math.min(this.opts.cacheTtlMs, FAILED_LOOKUP_TTL_MS)),
    )
    this.inflight.set(key, entry)
    return 'pending'
  }

  /**
   * One more request waits on the lookup `check` answered `pending` for: it is counted if the lookup
   * concludes unverified.
   */
  wait(operator: string, address: string): void {
    const entry = this.inflight.get(`${operator.toLowerCase()} ${address}`)
    if (entry) entry.waiting++
  }

  /** Resolves when every lookup started so far has finished (for tests and shutdown). */
  async settled(): Promise<void> {
    await Promise.all([...this.inflight.values()].map((e) => e.done))
  }

  close(): void {
    this.closed = true
    this.resolver.cancel()
  }

  private async lookup(op: string, address: string): Promise<boolean> {
    const suffixes = this.domains.get(op)
    if (!suffixes) return false
    let timer: NodeJS.Timeout | undefined
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error('DNS verification timed out')), this.opts.timeoutMs)
      timer.unref()
    })
    try {
      return await Promise.race([this.verify(address, suffixes), deadline])
    } finally {
      clearTimeout(timer)
    }
  }

  private async verify(address: string, suffixes: readonly string[]): Promise<boolean> {
    let names: string[]
    try {
      names = await this.resolver.reverse(address)
    } catch (err) {
      // no PTR record is an answer (not the operator's); anything else is a failure to ask again about
      if ((err as NodeJS.ErrnoException).code === 'ENOTFOUND') return false
      throw err
    }
    for (const raw of names.slice(0, 8)) {
      const name = raw.toLowerCase().replace(/\.$/, '')
      if (!suffixes.some((s) => name === s || name.endsWith(`.${s}`))) continue
      const forward = isIPv4(address)
        ? await this.resolver.resolve4(name).catch(() => [] as string[])
        : await this.resolver.resolve6(name).catch(() => [] as string[])
      if (forward.some((a) => sameAddress(a, address))) return true
    }
    return false
  }
}

function sameAddress(a: string, b: string): boolean {
  if (a === b) return true
  // IPv6 has many spellings of one address: compare them in one canonical form
  try {
    return new URL(`http://[${a}]`).hostname === new URL(`http://[${b}]`).hostname
  } catch {
    return false
  }
}
