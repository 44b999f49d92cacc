// Reverse-then-forward DNS verification of a crawler's address (what Google, Bing and Apple document for
// their crawlers): the PTR name of the address must end in one of the domains documented for the product the
// user agent is named after, and that name must resolve back to the same address. Google names its common
// crawlers under googlebot.com and its special crawlers and user-triggered fetchers under google.com: a
// domain of the operator is not enough, or anyone having a user-triggered fetcher request their URL from an
// address would see Googlebot verified there. Lookups never hold a request: the caller gets the cached
// answer or "pending", and the answer lands in a bounded cache for the requests that follow. The requests
// that waited on a lookup are counted, and reported when it concludes unverified (`onUnverified`): a client
// that never repeats an address gets every claim answered "pending", and would otherwise never be counted.
import { Resolver } from 'node:dns/promises'
import { isIPv4 } from 'node:net'
import { LRUCache } from 'lru-cache'
import published from './range-files.json' with { type: 'json' }

/**
 * `pending`: a lookup is on its way; `unchecked`: none is, nor will be for this claim (as many lookups as
 * allowed are already running, or the verifier is closed)
 */
export type DnsResult = 'verified' | 'unverified' | 'pending' | 'unchecked'

/** One domain crawler PTR names end in, and the products of its operator it vouches for. */
export interface DnsDomain {
  /** any case */
  operator: string
  /** e.g. googlebot.com: the name itself or any name under it */
  suffix: string
  /** as the user-agent classifier names them, or every product of the operator */
  products: readonly string[] | 'all'
}

/** A configured `bots.verify.dns.domains` entry: without products, each suffix vouches for what it is documented for. */
export interface DnsDomainsEntry {
  operator: string
  suffixes: readonly string[]
  products?: readonly string[] | undefined
}

interface PublishedDomain {
  operator: string
  suffix: string
  for: string
  products?: string[]
}

const PUBLISHED_DOMAINS: readonly PublishedDomain[] = (published as { dns: PublishedDomain[] }).dns

const normalSuffix = (s: string): string => s.toLowerCase().replace(/^\.+|\.+$/g, '')

const under = (name: string, suffix: string): boolean => name === suffix || name.endsWith(`.${suffix}`)

/**
 * The domain `operator` documents that `suffix` is (or is under: geo.googlebot.com is googlebot.com's), the
 * most specific one.
 */
export function documentedDomain(
  operator: string,
  suffix: string,
): { suffix: string; for: string; products: readonly string[] | 'all' } | undefined {
  const op = operator.toLowerCase()
  const s = normalSuffix(suffix)
  let best: PublishedDomain | undefined
  for (const d of PUBLISHED_DOMAINS) {
    if (d.operator.toLowerCase() !== op || !under(s, d.suffix)) continue
    if (best === undefined || d.suffix.length > best.suffix.length) best = d
  }
  return best && { suffix: best.suffix, for: best.for, products: best.products ?? 'all' }
}

/** The domains `operator` documents for its crawlers. */
export function documentedDomains(operator: string): { suffix: string; for: string }[] {
  const op = operator.toLowerCase()
  return PUBLISHED_DOMAINS.filter((d) => d.operator.toLowerCase() === op).map((d) => ({
    suffix: d.suffix,
    for: d.for,
  }))
}

/**
 * Whether `operator` documents its crawlers' host names per product (or class of products): Google. A name
 * in one of its domains says nothing about the products documented under another.
 */
export function documentsPerProduct(operator: string): boolean {
  const op = operator.toLowerCase()
  return PUBLISHED_DOMAINS.some((d) => d.operator.toLowerCase() === op && d.products !== undefined)
}

/**
 * What one suffix of a configured entry vouches for: the products the entry names, else the ones its
 * operator documents that domain for, else every product of an operator that documents one domain for all
 * (or none: an operator this proxy knows nothing of). Throws (a message for the config entry) for a domain of
 * an operator that documents its products apart when neither says which products it vouches for: taking
 * google.com for all of Google's products is what let a user-triggered fetcher verify a Googlebot claim.
 */
export function dnsSuffixProducts(entry: DnsDomainsEntry, suffix: string): readonly string[] | 'all' {
  if (entry.products !== undefined) return Object.freeze(entry.products.map((p) => p.toLowerCase()))
  const known = documentedDomain(entry.operator, suffix)
  if (known !== undefined) return known.products
  if (!documentsPerProduct(entry.operator)) return 'all'
  throw new Error(
    `${entry.operator} documents its crawlers' host names per product, and ${normalSuffix(suffix)} is not ` +
      'one of its domains: say which products it vouches for (products: [...], as the user-agent classifier ' +
      'names them)',
  )
}

/**
 * The domains configured entries name, each with what it vouches for. A suffix that cannot say is left out
 * (the config check refuses it; a verifier built without that check lets it vouch for nothing).
 */
export function dnsDomains(entries: readonly DnsDomainsEntry[]): DnsDomain[] {
  const out: DnsDomain[] = []
  for (const e of entries) {
    for (const suffix of e.suffixes) {
      try {
        out.push({ operator: e.operator, suffix, products: dnsSuffixProducts(e, suffix) })
      } catch {
        // refused by the config check
      }
    }
  }
  return out
}

/**
 * The domains one product's claims are checked against. Products that accept the same domains share one
 * group, and so one lookup and one cached answer per address.
 */
export interface DnsGroup {
  readonly id: number
  readonly suffixes: readonly string[]
}

interface OperatorGroups {
  /** the products no domain names: the operator's domains for all its products, if any */
  all: DnsGroup | undefined
  byProduct: Map<string, DnsGroup>
  /** every domain of the operator: a claim not named after one of its products */
  any: DnsGroup
}

export interface DnsVerifierOptions {
  domains: readonly DnsDomain[]
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
  /** operator (lower case) → the domains its products are checked against; built once, from the config */
  private readonly operators = new Map<string, OperatorGroups>()
  private readonly maxInflight: number
  private closed = false

  constructor(private readonly opts: DnsVerifierOptions) {
    // one try per lookup: the deadline below covers the whole verification
    this.resolver = new Resolver({ timeout: opts.timeoutMs, tries: 1 })
    if (opts.servers && opts.servers.length > 0) this.resolver.setServers([...opts.servers])
    this.cache = new LRUCache({ max: opts.cacheSize, ttl: opts.cacheTtlMs })
    this.buildGroups(opts.domains)
    this.maxInflight = opts.maxInflight ?? 64
  }

  /**
   * The domains a claim to crawl for `operator` as `product` is checked against (without a product: any of
   * the operator's), undefined when none is configured for it.
   */
  group(operator: string, product?: string): DnsGroup | undefined {
    const groups = this.operators.get(operator.toLowerCase())
    if (groups === undefined) return undefined
    if (product === undefined) return groups.any
    return groups.byProduct.get(product) ?? groups.all
  }

  /**
   * The cached answer for a claim of `operator` as `product` from `address`, `pending` while a lookup is on
   * its way (one is started when none is), `unchecked` when no lookup can be started; undefined when no
   * configured domain vouches for the product.
   */
  check(operator: string, address: string, product?: string): DnsResult | undefined {
    const group = this.group(operator, product)
    if (group === undefined) return undefined
    const key = `${group.id} ${address}`
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
    entry.done = this.lookup(group, address).then(
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
  wait(operator: string, address: string, product?: string): void {
    const group = this.group(operator, product)
    if (group === undefined) return
    const entry = this.inflight.get(`${group.id} ${address}`)
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

  private buildGroups(domains: readonly DnsDomain[]): void {
    const interned = new Map<string, DnsGroup>()
    const intern = (suffixes: Iterable<string>): DnsGroup | undefined => {
      const sorted = [...new Set(suffixes)].sort()
      if (sorted.length === 0) return undefined
      const key = sorted.join(' ')
      let g = interned.get(key)
      if (g === undefined) {
        g = Object.freeze({ id: interned.size, suffixes: Object.freeze(sorted) })
        interned.set(key, g)
      }
      return g
    }
    const byOperator = new Map<string, { all: Set<string>; byProduct: Map<string, Set<string>> }>()
    for (const d of domains) {
      const op = d.operator.toLowerCase()
      let o = byOperator.get(op)
      if (o === undefined) {
        o = { all: new Set(), byProduct: new Map() }
        byOperator.set(op, o)
      }
      const suffix = normalSuffix(d.suffix)
      if (suffix === '') continue
      if (d.products === 'all') o.all.add(suffix)
      else {
        for (const p of d.products) {
          const product = p.toLowerCase()
          const set = o.byProduct.get(product) ?? new Set<string>()
          set.add(suffix)
          o.byProduct.set(product, set)
        }
      }
    }
    for (const [op, o] of byOperator) {
      const any = intern([...o.all, ...[...o.byProduct.values()].flatMap((s) => [...s])])
      if (any === undefined) continue
      const byProduct = new Map<string, DnsGroup>()
      for (const [product, suffixes] of o.byProduct) {
        const g = intern([...o.all, ...suffixes])
        if (g !== undefined) byProduct.set(product, g)
      }
      this.operators.set(op, { all: intern(o.all), byProduct, any })
    }
  }

  private async lookup(group: DnsGroup, address: string): Promise<boolean> {
    const suffixes = group.suffixes
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
      if (!suffixes.some((s) => under(name, s))) continue
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
