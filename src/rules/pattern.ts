// Identity-rule patterns (docs/reference.md "Config file"). Two modes, chosen once at compile time:
//  - segment mode (separator '/', used for paths, SPIFFE IDs, and any pattern that contains '/'):
//    `{name}` captures one segment, `*` matches one segment (or, inside a segment, any run of non-'/'
//    characters), `**` as a whole segment matches the rest (zero or more segments).
//  - value mode (header, user-agent, claim, subject patterns without '/'): the pattern matches the whole
//    value; `*` and `**` match any run of characters (possibly empty), `{name}` captures a non-empty run.
// Everything else is literal (regex metacharacters are escaped). Each pattern compiles to one RegExp.

export interface CompiledPattern {
  readonly source: string
  /** capture names in order of appearance */
  readonly captures: readonly string[]
  /** true when the pattern has no wildcards and no captures */
  readonly literal: boolean
  /** captured values, or null when the value does not match; never throws */
  match(value: string): Record<string, string> | null
}

export interface PatternOptions {
  /** force segment mode with this separator (e.g. '/'); default: '/' when the pattern contains '/' */
  separator?: string
  ignoreCase?: boolean
}

const CAPTURE_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/
const NO_CAPTURES: Record<string, string> = Object.freeze({}) as Record<string, string>
const MAX_PATTERN_LENGTH = 1024

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\/-]/g, '\\$&')
}

type Token = { t: 'lit'; v: string } | { t: 'cap'; v: string } | { t: 'star' } | { t: 'globstar' }

/** Splits a pattern into tokens; returns an error message for malformed patterns. */
function tokenize(p: string): Token[] | string {
  if (p.length > MAX_PATTERN_LENGTH) return `pattern is longer than ${MAX_PATTERN_LENGTH} characters`
  const out: Token[] = []
  let lit = ''
  for (let i = 0; i < p.length; i++) {
    const c = p[i]!
    if (c === '{') {
      const end = p.indexOf('}', i + 1)
      if (end < 0) return `unclosed "{" at position ${i + 1}`
      const name = p.slice(i + 1, end)
      if (!CAPTURE_NAME.test(name)) return `invalid capture name "{${name}}" (use letters, digits and _)`
      if (lit) out.push({ t: 'lit', v: lit })
      lit = ''
      out.push({ t: 'cap', v: name })
      i = end
    } else if (c === '}') {
      return `unmatched "}" at position ${i + 1}`
    } else if (c === '*') {
      if (lit) out.push({ t: 'lit', v: lit })
      lit = ''
      if (p[i + 1] === '*') {
        out.push({ t: 'globstar' })
        i++
        while (p[i + 1] === '*') i++
      } else out.push({ t: 'star' })
    } else lit += c
  }
  if (lit) out.push({ t: 'lit', v: lit })
  return out
}

function isSegmentMode(p: string, opts: PatternOptions | undefined): string | undefined {
  if (opts?.separator) return opts.separator
  return p.includes('/') ? '/' : undefined
}

function buildRegExp(tokens: Token[], sep: string | undefined): { re: string; captures: string[] } | string {
  const captures: string[] = []
  const notSep = sep ? `[^${escapeRegExp(sep)}]` : '[\\s\\S]'
  let re = '^'
  for (let i = 0; i < tokens.length; i++) {
    const tok = tokens[i]!
    switch (tok.t) {
      case 'lit':
        re += escapeRegExp(tok.v)
        break
      case 'cap':
        if (captures.includes(tok.v)) return `capture "{${tok.v}}" is used twice`
        captures.push(tok.v)
        re += `(${notSep}+)`
        break
      case 'star':
        re += `${notSep}*`
        break
      case 'globstar': {
        if (!sep) {
          re += '[\\s\\S]*'
          break
        }
        const prev = tokens[i - 1]
        const next = tokens[i + 1]
        const startsSegment = !prev || (prev.t === 'lit' && prev.v.endsWith(sep))
        const endsSegment = !next || (next.t === 'lit' && next.v.startsWith(sep))
        if (!startsSegment || !endsSegment) return '"**" must be a whole segment, e.g. /api/**'
        if (prev) {
          // "/a/**" also matches "/a" and "/a/**/z" matches "/a/z": zero segments is allowed, so the
          // separator already emitted becomes part of an optional group.
          re = re.slice(0, re.length - escapeRegExp(sep).length)
          re += `(?:${escapeRegExp(sep)}[\\s\\S]*)?`
        } else re += '[\\s\\S]*'
        break
      }
    }
  }
  return { re: `${re}$`, captures }
}

/** Returns an error message, or undefined when the pattern is valid. */
export function patternError(p: string, opts?: PatternOptions): string | undefined {
  const tokens = tokenize(p)
  if (typeof tokens === 'string') return tokens
  const built = buildRegExp(tokens, isSegmentMode(p, opts))
  return typeof built === 'string' ? built : undefined
}

/** Capture names defined by a pattern (empty for invalid patterns). */
export function patternCaptures(p: string): string[] {
  const tokens = tokenize(p)
  if (typeof tokens === 'string') return []
  return tokens.filter((t) => t.t === 'cap').map((t) => t.v)
}

/** True when the pattern matches every value (used by the shadowing check; conservative). */
export function isUniversalPattern(p: string, opts?: PatternOptions): boolean {
  const sep = isSegmentMode(p, opts)
  if (sep) return p === '**'
  return /^\*+$/.test(p)
}

/** Patterns that differ only in capture names match the same values. */
export function normalisePattern(p: string): string {
  return p.replace(/\{[A-Za-z_][A-Za-z0-9_]*\}/g, '{}')
}

/** Compiles a pattern once; throws on a malformed pattern (config is validated before compiling). */
export function compilePattern(p: string, opts?: PatternOptions): CompiledPattern {
  const tokens = tokenize(p)
  if (typeof tokens === 'string') throw new Error(`invalid pattern "${p}": ${tokens}`)
  const built = buildRegExp(tokens, isSegmentMode(p, opts))
  if (typeof built === 'string') throw new Error(`invalid pattern "${p}": ${built}`)
  const { captures } = built
  const literal = tokens.every((t) => t.t === 'lit')
  if (literal && !opts?.ignoreCase) {
    return { source: p, captures, literal, match: (v) => (v === p ? NO_CAPTURES : null) }
  }
  const re = new RegExp(built.re, opts?.ignoreCase ? 'i' : '')
  if (captures.length === 0) {
    return { source: p, captures, literal, match: (v) => (re.test(v) ? NO_CAPTURES : null) }
  }
  return {
    source: p,
    captures,
    literal,
    match(v) {
      const m = re.exec(v)
      if (!m) return null
      const out: Record<string, string> = {}
      for (let i = 0; i < captures.length; i++) out[captures[i]!] = m[i + 1]!
      return out
    },
  }
}

/** `{name}` templates for identity name/team/zone, compiled once into literal and capture parts. */
export interface CompiledTemplate {
  readonly source: string
  readonly captures: readonly string[]
  render(values: Readonly<Record<string, string>>): string
}

export function templateError(t: string): string | undefined {
  const tokens = tokenize(t.replaceAll('*', '\u0000'))
  return typeof tokens === 'string' ? tokens : undefined
}

export function compileTemplate(t: string, missing = 'unknown'): CompiledTemplate {
  const parts: string[] = []
  const captures: string[] = []
  const re = /\{([A-Za-z_][A-Za-z0-9_]*)\}/g
  let last = 0
  for (let m = re.exec(t); m; m = re.exec(t)) {
    parts.push(t.slice(last, m.index))
    captures.push(m[1]!)
    last = m.index + m[0].length
  }
  const tail = t.slice(last)
  if (captures.length === 0) return { source: t, captures, render: () => t }
  return {
    source: t,
    captures,
    render(values) {
      let s = ''
      for (let i = 0; i < captures.length; i++) s += parts[i]! + (values[captures[i]!] || missing)
      return s + tail
    },
  }
}
