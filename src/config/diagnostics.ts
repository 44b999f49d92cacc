// Diagnostics shared by `check`, the loader, hot reload and rule tests: one line each, FILE:LINE:COL.
export type Severity = 'error' | 'warning'

export interface Diagnostic {
  file: string
  /** 1-based */
  line: number
  /** 1-based */
  col: number
  message: string
  hint?: string
  severity: Severity
}

export function formatDiagnostic(d: Diagnostic): string {
  const prefix = d.severity === 'warning' ? 'warning: ' : ''
  return `${d.file}:${d.line}:${d.col} ${prefix}${d.message}${d.hint ? ` (hint: ${d.hint})` : ''}`
}

/** Levenshtein distance, bounded by the lengths of short config keys. */
export function editDistance(a: string, b: string): number {
  const prev = new Array<number>(b.length + 1)
  for (let j = 0; j <= b.length; j++) prev[j] = j
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0]!
    prev[0] = i
    for (let j = 1; j <= b.length; j++) {
      const up = prev[j]!
      prev[j] = Math.min(up + 1, prev[j - 1]! + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1))
      diag = up
    }
  }
  return prev[b.length]!
}

/** The closest candidate when it is plausibly a typo of `word`. */
export function nearest(word: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined
  let bestDistance = Number.POSITIVE_INFINITY
  const lower = word.toLowerCase()
  for (const c of candidates) {
    const d = editDistance(lower, c.toLowerCase())
    if (d < bestDistance) {
      best = c
      bestDistance = d
    }
  }
  const limit = Math.max(2, Math.floor(word.length / 3))
  return bestDistance <= limit ? best : undefined
}

/**
 * The config's words for what a number may be, shared by the schema's counts and the flags that set the same
 * thing (`--workers`): zod's stock "Too small: expected number to be >0" names neither "whole" nor the range.
 */
export function wholeNumberProblem(min: number, max?: number, what = ''): string {
  const noun = what ? `whole number of ${what}` : 'whole number'
  return max === undefined
    ? `expected a ${noun} of at least ${min}`
    : `expected a ${noun} from ${min} to ${max}`
}

/** zod's type names as a config file's reader knows them */
const TYPE_WORDS: Record<string, string> = {
  number: 'a number',
  int: 'a whole number',
  string: 'text',
  boolean: 'true or false',
  array: 'a list',
  object: 'a mapping of keys',
  record: 'a mapping of keys',
  null: 'nothing',
}

/** what the file holds where a value was refused: a short scalar as written, else its kind */
function shown(input: unknown): string {
  if (input === null || input === undefined) return 'nothing'
  if (Array.isArray(input)) return 'a list'
  // YAML's !!binary, !!set and !!timestamp make objects a config file never means as a mapping
  if (input instanceof Uint8Array) return 'binary data (!!binary)'
  if (input instanceof Set) return 'a set (!!set)'
  if (input instanceof Date) return 'a timestamp (!!timestamp)'
  if (typeof input === 'object') return 'a mapping of keys'
  if (typeof input === 'string') return input.length <= 40 ? JSON.stringify(input) : 'text'
  return String(input)
}

const bound = (n: number | bigint) => String(n)

/** the fields of zod's raw issues this map reads (its types differ per code) */
interface RawIssue {
  code?: string
  input?: unknown
  expected?: string
  origin?: string
  minimum?: number | bigint
  maximum?: number | bigint
  inclusive?: boolean
  format?: string
  errors?: readonly (readonly { code?: string; expected?: string; values?: readonly unknown[] }[])[]
}

/**
 * The one error map of the config and rule-test schemas (installed where diagnostics are made): what is
 * allowed, in the product's words, for every issue a schema does not word itself. A message a schema gives
 * (a count's range, a duration's form) wins over this one.
 */
export function issueMessage(issue: RawIssue): string | undefined {
  const got = shown(issue.input)
  switch (issue.code) {
    case 'invalid_type': {
      const want = TYPE_WORDS[issue.expected ?? ''] ?? issue.expected
      return want ? `expected ${want}, got ${got}` : undefined
    }
    case 'too_small': {
      const min = issue.minimum
      if (min === undefined) return undefined
      if (issue.origin === 'string')
        return Number(min) === 1 ? 'must not be empty' : `expected at least ${bound(min)} characters`
      if (issue.origin === 'array') return `expected at least ${bound(min)} entries`
      return issue.inclusive
        ? `expected a number of at least ${bound(min)}, got ${got}`
        : `expected a number more than ${bound(min)}, got ${got}`
    }
    case 'too_big': {
      const max = issue.maximum
      if (max === undefined) return undefined
      if (issue.origin === 'string') return `expected at most ${bound(max)} characters`
      if (issue.origin === 'array') return `expected at most ${bound(max)} entries`
      return issue.inclusive
        ? `expected a number of at most ${bound(max)}, got ${got}`
        : `expected a number less than ${bound(max)}, got ${got}`
    }
    case 'invalid_format':
      if (issue.format === 'url') return `expected a URL such as https://host:port/path, got ${got}`
      return undefined
    case 'invalid_union': {
      // what each branch would have taken: a type, or the exact words of a literal (`auto`, `any`)
      const wanted = new Set<string>()
      for (const branch of issue.errors ?? [])
        for (const e of branch) {
          if (e.code === 'invalid_type' && e.expected) wanted.add(TYPE_WORDS[e.expected] ?? e.expected)
          else if (e.code === 'invalid_value') for (const v of e.values ?? []) wanted.add(String(v))
        }
      return wanted.size ? `expected ${[...wanted].join(' or ')}, got ${got}` : undefined
    }
    default:
      return undefined
  }
}
