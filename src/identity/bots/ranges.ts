// Published crawler IP ranges: the JSON files Google, Bing, OpenAI, Perplexity and Apple publish, all in one
// layout ({"creationTime": "...", "prefixes": [{"ipv4Prefix": "66.249.64.0/27"}, {"ipv6Prefix": "..."}]}).
// Each file is parsed once, when it is loaded, into one BlockList per operator; a lookup is then one check.
import { CidrSet, cidrError } from '../../util/cidr.ts'
import snapshot from './ranges-snapshot.json' with { type: 'json' }

/** A range file larger than this many prefixes is refused: the real ones hold a few hundred. */
export const MAX_PREFIXES = 20_000

export interface RangeSource {
  operator: string
  url: string
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

/** The range files shipped with this release (see scripts/refresh-bot-ranges.mjs). */
export interface RangeSnapshot {
  asOf: string
  sources: { operator: string; url: string; creationTime: string; prefixes: string[] }[]
}
export const SHIPPED_RANGES: RangeSnapshot = snapshot

/** The URLs the shipped snapshot was taken from: the default for `bots.verify.ranges`. */
export function shippedRangeSources(): RangeSource[] {
  return SHIPPED_RANGES.sources.map((s) => ({ operator: s.operator, url: s.url }))
}

/** Compiled ranges, one set per operator (the union of that operator's files). Immutable once built. */
export class OperatorRanges {
  private readonly sets = new Map<string, CidrSet>()

  constructor(byOperator: ReadonlyMap<string, readonly string[]>) {
    for (const [operator, cidrs] of byOperator) {
      if (cidrs.length > 0) this.sets.set(operator.toLowerCase(), new CidrSet(cidrs))
    }
  }

  /** whether any range is known for this operator */
  has(operator: string): boolean {
    return this.sets.has(operator.toLowerCase())
  }

  contains(operator: string, address: string): boolean {
    return this.sets.get(operator.toLowerCase())?.has(address) ?? false
  }

  get operators(): string[] {
    return [...this.sets.keys()]
  }
}
