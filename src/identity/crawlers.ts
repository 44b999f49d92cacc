// Crawlers, bots and AI crawlers from the maintained crawler corpus (crawler-user-agents, shipped here as
// the snapshot agent-data.generated.json; see scripts/refresh-agents.mjs). Compiled once, at the first
// lookup, into one RegExp per pattern plus an index from a 3-letter slice of each pattern's required literal
// text to the patterns that need it, so a lookup tests only the few patterns whose literal occurs in the user agent
// instead of all of them (one RegExp alternating ~1,500 patterns is ~50x slower than this in V8).
import data from './agent-data.generated.json' with { type: 'json' }

export interface CrawlerMatch {
  /** tagged ai-crawler in the corpus */
  ai: boolean
  /** where the pattern matched in the user agent */
  index: number
  /** the text the pattern matched */
  text: string
}

interface Compiled {
  re: RegExp
  ai: boolean
  /** lower-cased text every match contains ('' when unknown): a cheap includes() before the RegExp */
  literal: string
}

export const CRAWLER_DATA_VERSION: string = data.version
const GRAM = 3

/**
 * The longest run of literal characters every match of `pattern` contains, or '' when there is none this
 * simple reader can prove (top-level alternation, classes, groups and optional characters end a run).
 */
export function requiredLiteral(pattern: string): string {
  let best = ''
  let run = ''
  const end = () => {
    if (run.length > best.length) best = run
    run = ''
  }
  let depth = 0
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!
    if (c === '\\') {
      const n = pattern[i + 1]
      i++
      if (n === undefined || /[A-Za-z0-9]/.test(n)) end()
      else if (depth === 0) run += n
      continue
    }
    if (c === '|') {
      if (depth === 0) return ''
      continue
    }
    if (c === '[') {
      end()
      for (i++; i < pattern.length && pattern[i] !== ']'; i++) if (pattern[i] === '\\') i++
      continue
    }
    if (c === '(') {
      end()
      depth++
      continue
    }
    if (c === ')') {
      depth--
      continue
    }
    if (depth > 0) continue
    if (c === '?' || c === '*' || c === '{') {
      // the previous character was optional (or repeated a range): it is not required
      run = run.slice(0, -1)
      end()
      if (c === '{') while (i < pattern.length && pattern[i] !== '}') i++
      continue
    }
    if (c === '+' || c === '.' || c === '^' || c === '$') {
      end()
      continue
    }
    run += c
  }
  end()
  return best
}

interface Index {
  compiled: Compiled[]
  byGram: Map<string, number[]>
  /** patterns tried on every lookup because they have no literal text to index them by */
  unindexed: number[]
  /** per pattern, the lookup that last tried it */
  tried: Uint32Array
}

let index: Index | undefined

/** built at the first lookup rather than at import: ~1,500 patterns are a few ms a start need not spend */
function build(): Index {
  const compiled: Compiled[] = []
  const byGram = new Map<string, number[]>()
  const unindexed: number[] = []
  for (const [pattern, ai] of data.patterns as [string, number][]) {
    // AI-tagged entries first, so a user agent that names an AI crawler and another bot is the AI crawler
    compiled.push({ re: new RegExp(pattern), ai: ai === 1, literal: requiredLiteral(pattern).toLowerCase() })
  }
  compiled.sort((a, b) => Number(b.ai) - Number(a.ai))
  compiled.forEach(({ literal }, i) => {
    if (literal.length < GRAM) {
      unindexed.push(i)
      return
    }
    const gram = literal.slice(0, GRAM)
    const list = byGram.get(gram)
    if (list) list.push(i)
    else byGram.set(gram, [i])
  })
  return { compiled, byGram, unindexed, tried: new Uint32Array(compiled.length) }
}

let epoch = 0

/** The corpus entry that matches `ua` (AI-tagged entries first, then corpus order), if any. */
export function findCrawler(ua: string): CrawlerMatch | undefined {
  index ??= build()
  const { compiled, byGram, unindexed, tried } = index
  const lower = ua.toLowerCase()
  let best = Number.POSITIVE_INFINITY
  let hit: RegExpExecArray | null = null
  // each pattern runs at most once per lookup, however often its literal recurs in the user agent
  if (++epoch === 0xffffffff) {
    tried.fill(0)
    epoch = 1
  }
  const tryOne = (i: number) => {
    if (i >= best || tried[i] === epoch) return
    tried[i] = epoch
    const c = compiled[i]!
    if (c.literal !== '' && !lower.includes(c.literal)) return
    const m = c.re.exec(ua)
    if (m) {
      best = i
      hit = m
    }
  }
  for (const i of unindexed) tryOne(i)
  for (let at = 0; at + GRAM <= lower.length; at++) {
    const list = byGram.get(lower.slice(at, at + GRAM))
    if (list) for (const i of list) tryOne(i)
  }
  const m = hit as RegExpExecArray | null
  if (!m) return undefined
  return { ai: compiled[best]!.ai, index: m.index, text: m[0] }
}
