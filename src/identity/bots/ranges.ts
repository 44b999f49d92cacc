// Published crawler IP ranges: the JSON files Google, Bing, OpenAI, Perplexity and Apple publish, all in one
// layout ({"creationTime": "...", "prefixes": [{"ipv4Prefix": "66.249.64.0/27"}, {"ipv6Prefix": "..."}]}).
// Each file is parsed once, when it is loaded, into the address sets (CidrSet) of the products it vouches
// for (every product of its operator, where the operator publishes one list for all); a lookup is then one
// check.
import { CidrSet, cidrError } from '../../util/cidr.ts'
import published from './range-files.json' with { type: 'json' }
import snapshot from './ranges-snapshot.json' with { type: 'json' }

/** A range file larger than this many prefixes is refused: the real ones hold a few hundred. */
export const MAX_PREFIXES = 20_000

export interface RangeSource {
  operator: string
  url: string
  /** the products (as the classifier names them) the file vouches for; see `rangeFileProducts` */
  products?: readonly string[]
}

/** What one range file vouches for: some products of its operator, or all of them. */
export type RangeProducts = readonly string[] | 'all'

interface PublishedFile {
  operator: string
  url: string
  products?: string[]
  snapshot?: boolean
}

/** operator (lower case) → file name → what that file vouches for */
const PUBLISHED = new Map<string, Map<string, RangeProducts>>()
for (const f of (published as { files: PublishedFile[] }).files) {
  const op = f.operator.toLowerCase()
  const byName = PUBLISHED.get(op) ?? new Map<string, RangeProducts>()
  PUBLISHED.set(op, byName)
  byName.set(fileName(f.url), f.products ? Object.freeze([...f.products]) : 'all')
}

function fileName(url: string): string {
  try {
    return new URL(url).pathname.split('/').pop() ?? ''
  } catch {
    return ''
  }
}

/** a URL for a message: its query may carry a credential */
function withoutQuery(url: string): string {
  try {
    const u = new URL(url)
    return `${u.origin}${u.pathname}`
  } catch {
    return 'the file'
  }
}

/** The names of the range files `operator` publishes. */
export function publishedFileNames(operator: string): string[] {
  return [...(PUBLISHED.get(operator.toLowerCase())?.keys() ?? [])]
}

/**
 * Whether `operator` publishes one range file per product (or class of products): Google (its common
 * crawlers, its special crawlers and its user-triggered fetchers each have theirs), OpenAI and Perplexity.
 * An address in one of those files says nothing about the operator's other products.
 */
export function publishesPerProduct(operator: string): boolean {
  const files = PUBLISHED.get(operator.toLowerCase())
  return files !== undefined && [...files.values()].some((p) => p !== 'all')
}

/**
 * The products a range file vouches for: the ones it names, else the ones its operator's published file of
 * that name covers, else every product of an operator that publishes one list for all of them. Throws (a
 * message for the config or snapshot entry) for a file of an operator that publishes one per product when
 * neither says which products it covers: taking it for all of them is what let a ChatGPT-User address verify
 * a GPTBot claim.
 */
export function rangeFileProducts(src: RangeSource): RangeProducts {
  if (src.products !== undefined) return Object.freeze(src.products.map((p) => p.toLowerCase()))
  const known = PUBLISHED.get(src.operator.toLowerCase())?.get(fileName(src.url))
  if (known !== undefined) return known
  if (!publishesPerProduct(src.operator)) return 'all'
  throw new Error(
    `${src.operator} publishes one range file per product, and ${withoutQuery(src.url)} is not one of them ` +
      'by name: say which products it covers (products: [...], as the user-agent classifier names them)',
  )
}

/** The prefixes of one published range file; throws (with a message safe to log) when it is not one. */
export function parseRangeDocument(doc: unknown): string[] {
  if (typeof doc !== 'object' || doc === null || !Array.isArray((doc as { prefixes?: unknown }).prefixes))
    throw new Error('range file is not {"prefixes": [...]}')
  const prefixes = (doc as { prefixes: unknown[] }).prefixes
  if (prefixes.length > MAX_PREFIXES) throw new Error(`range file has more than ${MAX_PREFIXES} prefixes`)
  const out: string[] = []
  for (const p of prefixes) {
    if (typeof p !== 'object' || p === null) continue
    for (const key of ['ipv4Prefix', 'ipv6Prefix'] as const) {
      const v = (p as Record<string, unknown>)[key]
      // a prefix without a length would make one address of a whole network: only real CIDRs count
      if (typeof v === 'string' && v.includes('/') && cidrError(v) === undefined) out.push(v)
    }
  }
  if (out.length === 0) throw new Error('range file has no usable prefixes')
  return out
}

/**
 * The range files shipped with this release (see scripts/refresh-bot-ranges.mjs). An entry names the products
 * its file vouches for; one without (a snapshot made before files were per product, or a file of an operator
 * that publishes one list) is read as `rangeFileProducts` reads a configured file.
 */
export interface RangeSnapshot {
  asOf: string
  sources: {
    operator: string
    url: string
    creationTime: string
    products?: readonly string[]
    prefixes: string[]
  }[]
}

export interface ShippedRangeFile {
  operator: string
  url: string
  products: RangeProducts
  prefixes: readonly string[]
}

/** The snapshot's entries with what each vouches for; throws, naming the entry, when that is not known. */
export function snapshotFiles(s: RangeSnapshot): ShippedRangeFile[] {
  return s.sources.map((e) => {
    try {
      return { operator: e.operator, url: e.url, products: rangeFileProducts(e), prefixes: e.prefixes }
    } catch (err) {
      throw new Error(
        `ranges-snapshot.json: ${(err as Error).message}; refresh it with node scripts/refresh-bot-ranges.mjs`,
      )
    }
  })
}

export const SHIPPED_RANGES: RangeSnapshot = snapshot
/** resolved when the module loads, so that a snapshot that does not say what it vouches for stops the start */
export const SHIPPED_RANGE_FILES: readonly ShippedRangeFile[] = snapshotFiles(SHIPPED_RANGES)

/** The URLs the shipped snapshot was taken from: the default for `bots.verify.ranges`. */
export function shippedRangeSources(): RangeSource[] {
  return SHIPPED_RANGES.sources.map((s) => ({ operator: s.operator, url: s.url }))
}

export interface RangeFile {
  operator: string
  products: RangeProducts
  prefixes: readonly string[]
}

interface OperatorSets {
  /** the product's own files and the operator's files for all its products */
  products: Map<string, CidrSet>
  /** the files for all its products alone: a product no file names */
  all: CidrSet | undefined
  /** every distinct set above */
  any: CidrSet[]
}

/**
 * Compiled ranges, per operator and per product: a product is checked against the files that vouch for it
 * (its own, and its operator's files for all its products), never against another product's. Immutable once
 * built.
 */
export class OperatorRanges {
  /** keyed by the operator in lower case, and as spelt by the files (the spelling the claims use) */
  private readonly ops = new Map<string, OperatorSets>()

  constructor(files: Iterable<RangeFile>) {
    const byOperator = new Map<string, { spelt: Set<string>; files: RangeFile[] }>()
    for (const f of files) {
      if (f.prefixes.length === 0) continue
      const op = f.operator.toLowerCase()
      const entry = byOperator.get(op) ?? { spelt: new Set<string>(), files: [] }
      byOperator.set(op, entry)
      entry.spelt.add(f.operator)
      entry.files.push(f)
    }
    for (const [op, { spelt, files: opFiles }] of byOperator) {
      const all = opFiles.filter((f) => f.products === 'all')
      // products covered by the same files share one compiled set (googlebot.json covers ten)
      const compiled = new Map<string, CidrSet>()
      const setOf = (covering: RangeFile[]): CidrSet => {
        const key = covering.map((f) => opFiles.indexOf(f)).join(',')
        const set = compiled.get(key) ?? new CidrSet(covering.flatMap((f) => f.prefixes))
        compiled.set(key, set)
        return set
      }
      const products = new Map<string, CidrSet>()
      const named = new Set(opFiles.flatMap((f) => (f.products === 'all' ? [] : f.products)))
      for (const product of named) {
        products.set(
          product,
          setOf(opFiles.filter((f) => f.products === 'all' || f.products.includes(product))),
        )
      }
      const sets: OperatorSets = {
        products,
        all: all.length > 0 ? setOf(all) : undefined,
        any: [...compiled.values()],
      }
      this.ops.set(op, sets)
      for (const s of spelt) this.ops.set(s, sets)
    }
  }

  private sets(operator: string): OperatorSets | undefined {
    return this.ops.get(operator) ?? this.ops.get(operator.toLowerCase())
  }

  /** whether any range is known for this operator */
  has(operator: string): boolean {
    return this.sets(operator) !== undefined
  }

  /** whether any range vouches for this product of the operator */
  covers(operator: string, product: string): boolean {
    const s = this.sets(operator)
    return s !== undefined && (s.products.has(product) || s.all !== undefined)
  }

  /** inside a range of the operator that vouches for `product`, or without one, inside any of its ranges */
  contains(operator: string, address: string, product?: string): boolean {
    const s = this.sets(operator)
    if (s === undefined) return false
    if (product !== undefined) return (s.products.get(product) ?? s.all)?.has(address) ?? false
    for (const set of s.any) if (set.has(address)) return true
    return false
  }

  get operators(): string[] {
    return [...new Set([...this.ops.keys()].map((k) => k.toLowerCase()))]
  }
}
