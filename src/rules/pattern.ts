// Identity-rule patterns (docs/reference.md "Config file"). Two modes, chosen once at compile time:
//  - segment mode (separator '/', used for paths, SPIFFE IDs, and any pattern that contains '/'):
//    `{name}` captures one segment, `*` matches one segment (or, inside a segment, any run of non-'/'
//    characters), `**` as a whole segment matches the rest (zero or more segments). A whole segment
//    `:name` is another spelling of `{name}`, so route templates written for Express-style routers work
//    unchanged; the metric route templates (routes.ts) read parameters with segmentParam below too.
//  - value mode (header, user-agent, claim, subject patterns without '/'): the pattern matches the whole
//    value; `*` and `**` match any run of characters (possibly empty), `{name}` captures a non-empty run.
// Everything else is literal. Matching is linear in the value's length (see compileValue below); the
// RegExp form of a pattern is built only to validate it and to document its semantics.

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
/** the matchers' `out` for a pattern without named captures: only a named capture is ever written */
const UNWRITTEN: Record<string, string> = Object.freeze({}) as Record<string, string>
const MAX_PATTERN_LENGTH = 1024

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\/-]/g, '\\$&')
}

type Token = { t: 'lit'; v: string } | { t: 'cap'; v: string } | { t: 'star' } | { t: 'globstar' }

/**
 * The parameter name of one whole path segment written `{name}` or `:name`, else undefined. The one
 * definition of a named segment, shared by identity/policy patterns and metric route templates.
 */
export function segmentParam(segment: string): string | undefined {
  const name =
    segment.startsWith('{') && segment.endsWith('}')
      ? segment.slice(1, -1)
      : segment.startsWith(':')
        ? segment.slice(1)
        : undefined
  return name !== undefined && CAPTURE_NAME.test(name) ? name : undefined
}

/** Length of a `:name` segment starting at `i` in segment mode, or 0 when there is none there. */
function colonParamLength(p: string, i: number, sep: string | undefined): number {
  if (!sep || p[i] !== ':' || (i > 0 && !p.startsWith(sep, i - sep.length))) return 0
  const next = p.indexOf(sep, i)
  const end = next < 0 ? p.length : next
  return segmentParam(p.slice(i, end)) !== undefined ? end - i : 0
}

/** Splits a pattern into tokens; returns an error message for malformed patterns. `sep` is the segment
 *  separator in segment mode, where a whole `:name` segment is a capture; elsewhere `:` is literal. */
function tokenize(p: string, sep?: string): Token[] | string {
  if (p.length > MAX_PATTERN_LENGTH) return `pattern is longer than ${MAX_PATTERN_LENGTH} characters`
  const out: Token[] = []
  let lit = ''
  for (let i = 0; i < p.length; i++) {
    const c = p[i]!
    const colon = colonParamLength(p, i, sep)
    if (colon > 0) {
      if (lit) out.push({ t: 'lit', v: lit })
      lit = ''
      out.push({ t: 'cap', v: p.slice(i + 1, i + colon) })
      i += colon - 1
    } else if (c === '{') {
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

/** The RegExp with the semantics of a pattern, for tests and documentation only: client values are never
 *  matched with it (a backtracking engine can take seconds on a long value, see compilePattern). */
export function referenceRegExp(p: string, opts?: PatternOptions): RegExp {
  const sep = isSegmentMode(p, opts)
  const tokens = tokenize(p, sep)
  if (typeof tokens === 'string') throw new Error(`invalid pattern "${p}": ${tokens}`)
  const built = buildRegExp(tokens, sep)
  if (typeof built === 'string') throw new Error(`invalid pattern "${p}": ${built}`)
  return new RegExp(built.re, opts?.ignoreCase ? 'i' : '')
}

/** Returns an error message, or undefined when the pattern is valid. */
export function patternError(p: string, opts?: PatternOptions): string | undefined {
  const sep = isSegmentMode(p, opts)
  const tokens = tokenize(p, sep)
  if (typeof tokens === 'string') return tokens
  const built = buildRegExp(tokens, sep)
  return typeof built === 'string' ? built : undefined
}

/** Capture names defined by a pattern (empty for invalid patterns). */
export function patternCaptures(p: string, opts?: PatternOptions): string[] {
  const tokens = tokenize(p, isSegmentMode(p, opts))
  if (typeof tokens === 'string') return []
  return tokens.filter((t) => t.t === 'cap').map((t) => t.v)
}

/** True when the pattern matches every value (used by the shadowing check; conservative). */
export function isUniversalPattern(p: string, opts?: PatternOptions): boolean {
  const sep = isSegmentMode(p, opts)
  if (sep) return p === '**'
  return /^\*+$/.test(p)
}

/**
 * The length of the shortest value a valid pattern matches, and the literal it begins with (empty when it
 * begins with a wildcard or a capture): a pattern whose shortest match is longer than any value it is held
 * against can never match (the `check` warning for identity names longer than their cut). As the matchers
 * read it: a capture takes at least one character, `*` and `**` none, and a `**` segment after others takes
 * the separator before it along with it (`/a/**` matches `/a`).
 */
export function patternExtent(p: string, opts?: PatternOptions): { shortest: number; prefix: string } {
  const sep = isSegmentMode(p, opts)
  const tokens = tokenize(p, sep)
  if (typeof tokens === 'string') throw new Error(`invalid pattern "${p}": ${tokens}`)
  let shortest = 0
  for (let i = 0; i < tokens.length; i++) {
    const tok = tokens[i]!
    if (tok.t === 'lit') shortest += tok.v.length
    else if (tok.t === 'cap') shortest += 1
    else if (tok.t === 'globstar' && sep !== undefined && i > 0) shortest -= sep.length
  }
  const first = tokens[0]
  return { shortest, prefix: first?.t === 'lit' ? first.v : '' }
}

/** Patterns that differ only in capture names (or in spelling them `{name}` or `:name`) match the same
 *  values. */
export function normalisePattern(p: string, opts?: PatternOptions): string {
  const sep = isSegmentMode(p, opts)
  const tokens = tokenize(p, sep)
  if (typeof tokens === 'string') return p
  return tokens
    .map((t) => (t.t === 'lit' ? t.v : t.t === 'cap' ? '{}' : t.t === 'star' ? '*' : '**'))
    .join('')
}

/** Compiles a pattern once; throws on a malformed pattern (config is validated before compiling). */
/**
 * A trailing slash is optional on a path, as most frameworks route "/admin/" to "/admin": a path with one is
 * matched as the path without it, and only so. Matched as it is, its trailing slash would be an empty last
 * segment that a `*` matches, and "/users/" would be taken by "/users/*" while the upstream serves it as
 * "/users". Policy routes and identity rules' `match.path` both match so, so that a request is named and
 * decided by the same path.
 */
export function pathWithoutTrailingSlash(path: string): string {
  return path.length > 1 && path.charCodeAt(path.length - 1) === 47 ? path.slice(0, -1) : path
}

/** a path pattern's own trailing slash is as optional as the path's: "/settings/" covers "/settings" */
export function pathPatternWithoutTrailingSlash(pattern: string): string {
  return pattern.length > 1 && pattern.endsWith('/') ? pattern.replace(/\/+$/, '') || '/' : pattern
}

export function compilePattern(p: string, opts?: PatternOptions): CompiledPattern {
  const sep = isSegmentMode(p, opts)
  const tokens = tokenize(p, sep)
  if (typeof tokens === 'string') throw new Error(`invalid pattern "${p}": ${tokens}`)
  const built = buildRegExp(tokens, sep)
  if (typeof built === 'string') throw new Error(`invalid pattern "${p}": ${built}`)
  const { captures } = built
  const literal = tokens.every((t) => t.t === 'lit')
  if (literal && !opts?.ignoreCase) {
    return { source: p, captures, literal, match: (v) => (v === p ? NO_CAPTURES : null) }
  }
  const ignoreCase = opts?.ignoreCase === true
  const matcher = sep ? compileSegments(tokens, sep, ignoreCase) : compileValue(tokens, ignoreCase)
  return {
    source: p,
    captures,
    literal,
    match(v) {
      // without named captures nothing is written to `out`, so no object is made for it per call
      const out: Record<string, string> = captures.length === 0 ? UNWRITTEN : {}
      if (!matcher(ignoreCase ? canonical(v) : v, v, out)) return null
      return captures.length === 0 ? NO_CAPTURES : out
    },
  }
}

// Matching is a hand-written, linear-time matcher instead of a RegExp: a pattern like `{a}-{b}-{c}.x`
// compiled to `^([^/]+)-([^/]+)-([^/]+)\.x$` makes a backtracking engine try every split of a long
// client-controlled value (seconds of blocked event loop for a few KiB). The matcher gives exactly the
// captures the greedy RegExp gave: each wildcard takes as much as it can while the rest still matches,
// which is the same as placing every literal at its rightmost possible position, working from the end.
// Each literal is searched for once, in a window that only shrinks, so a match costs O(value length ×
// literal length) at worst and never backtracks.

/** `matcher(folded, original, out)`: `folded` is the value to compare (case-folded when ignoreCase),
 *  captures are sliced from `original` (same length) into `out` */
type Matcher = (folded: string, original: string, out: Record<string, string>) => boolean

/** Per UTF-16 unit case folding with the RegExp `i` flag's rule (no `u` flag): the upper-case form when it
 *  is one unit long, else the unit itself. Keeps the length, so offsets map back to the original value. */
function canonical(s: string): string {
  let ascii = true
  for (let i = 0; i < s.length; i++) {
    if (s.charCodeAt(i) > 0x7f) {
      ascii = false
      break
    }
  }
  if (ascii) return s.toUpperCase()
  let out = ''
  for (const c of s.split('')) {
    const u = c.toUpperCase()
    out += u.length === 1 && (c.charCodeAt(0) < 0x80 || u.charCodeAt(0) >= 0x80) ? u : c
  }
  return out
}

interface Wildcard {
  /** capture name, or undefined for `*` / `**` */
  name?: string
}

/** A value-mode pattern: lits[0] G1 lits[1] G2 … Gk lits[k], each Gi a run of adjacent wildcards. */
function compileValue(tokens: readonly Token[], ignoreCase: boolean): Matcher {
  const lits: string[] = ['']
  const groups: Wildcard[][] = []
  for (const tok of tokens) {
    if (tok.t === 'lit') {
      lits[lits.length - 1] += ignoreCase ? canonical(tok.v) : tok.v
    } else {
      const w: Wildcard = tok.t === 'cap' ? { name: tok.v } : {}
      if (lits.length > groups.length && lits[lits.length - 1] === '' && groups.length > 0) {
        groups[groups.length - 1]!.push(w)
      } else {
        groups.push([w])
        lits.push('')
      }
    }
  }
  const mins = groups.map((g) => g.filter((w) => w.name !== undefined).length)
  const k = groups.length
  const head = lits[0]!
  const tail = lits[k]!
  let minLength = k === 0 ? head.length : head.length + tail.length
  for (let i = 0; i < k; i++) minLength += mins[i]! + (i > 0 ? lits[i]!.length : 0)
  const starts = new Array<number>(k + 1)
  return (v, original, out) => {
    if (v.length < minLength || !v.startsWith(head) || !v.endsWith(tail)) return false
    if (k === 0) return v.length === head.length
    // starts[i]: where lits[i] begins; lits[k] is anchored at the end
    starts[k] = v.length - tail.length
    for (let i = k - 1; i >= 1; i--) {
      const lit = lits[i]!
      const from = starts[i + 1]! - mins[i]! - lit.length
      if (from < 0) return false
      const at = v.lastIndexOf(lit, from)
      if (at < 0) return false
      starts[i] = at
    }
    starts[0] = 0
    for (let i = 0; i < k; i++) {
      const begin = starts[i]! + lits[i]!.length
      const end = starts[i + 1]!
      if (end - begin < mins[i]!) return false
      assign(groups[i]!, begin, end, original, out)
    }
    return true
  }
}

/** Splits [begin, end) over adjacent wildcards: the first takes all but the minimum the others need. */
function assign(
  group: readonly Wildcard[],
  begin: number,
  end: number,
  v: string,
  out: Record<string, string>,
) {
  let rest = 0
  for (let j = 1; j < group.length; j++) if (group[j]!.name !== undefined) rest++
  let at = begin
  for (let j = 0; j < group.length; j++) {
    const w = group[j]!
    const len = j === 0 ? end - begin - rest : w.name !== undefined ? 1 : 0
    if (w.name !== undefined) out[w.name] = v.slice(at, at + len)
    at += len
  }
}

type Segment = { globstar: true } | { globstar: false; match: Matcher }

/** A segment-mode pattern: the value is split on the separator and each pattern segment matches one
 *  value segment in value mode; `**` segments match runs of segments, placed like wildcards above. */
function compileSegments(tokens: readonly Token[], sep: string, ignoreCase: boolean): Matcher {
  const segs: Token[][] = [[]]
  for (const tok of tokens) {
    if (tok.t !== 'lit') {
      segs[segs.length - 1]!.push(tok)
      continue
    }
    const parts = tok.v.split(sep)
    for (let i = 0; i < parts.length; i++) {
      if (i > 0) segs.push([])
      if (parts[i]) segs[segs.length - 1]!.push({ t: 'lit', v: parts[i]! })
    }
  }
  const pattern: Segment[] = segs.map((s) =>
    s.length === 1 && s[0]!.t === 'globstar'
      ? { globstar: true }
      : { globstar: false, match: compileValue(s, ignoreCase) },
  )
  // blocks[0] ** blocks[1] ** … blocks[k]: runs of ordinary segments between `**` segments
  const blocks: Segment[][] = [[]]
  for (const s of pattern) {
    if (s.globstar) blocks.push([])
    else blocks[blocks.length - 1]!.push(s)
  }
  const k = blocks.length - 1
  // A leading `**` compiled to `[\s\S]*`: at least one (possibly empty) segment; any other `**`
  // compiled to `(?:/[\s\S]*)?`: zero or more segments.
  const globMin = (i: number) => (i === 0 && blocks[0]!.length === 0 ? 1 : 0)
  // The leading segments that are plain literals, joined: a value that does not begin with them (followed by
  // a separator or its end) cannot match, and is refused before it is split (most paths miss most routes).
  let prefix = ''
  let literalSegments = 0
  for (const s of segs) {
    if (s.length > 1 || (s.length === 1 && s[0]!.t !== 'lit')) break
    const lit = s.length === 1 ? (s[0] as { v: string }).v : ''
    prefix += (literalSegments > 0 ? sep : '') + (ignoreCase ? canonical(lit) : lit)
    literalSegments++
  }
  const blockAt = (block: Segment[], at: number, vs: string[], os: string[], out: Record<string, string>) => {
    for (let j = 0; j < block.length; j++) {
      const s = block[j] as { match: Matcher }
      if (!s.match(vs[at + j]!, os[at + j]!, out)) return false
    }
    return true
  }
  return (v, original, out) => {
    if (
      literalSegments > 0 &&
      !(v.startsWith(prefix) && (v.length === prefix.length || v.startsWith(sep, prefix.length)))
    )
      return false
    const vs = v.split(sep)
    const os = ignoreCase ? original.split(sep) : vs
    const n = vs.length
    const head = blocks[0]!
    const tail = blocks[k]!
    if (k === 0) return n === head.length && blockAt(head, 0, vs, os, out)
    let minSegments = head.length + tail.length
    for (let i = 0; i < k; i++) minSegments += globMin(i) + (i > 0 ? blocks[i]!.length : 0)
    if (n < minSegments) return false
    // place the tail, then every middle block at its rightmost position, then the head
    let end = n - tail.length
    const placed: number[] = []
    for (let i = k - 1; i >= 1; i--) {
      const block = blocks[i]!
      let at = end - globMin(i) - block.length
      const scratch: Record<string, string> = {}
      while (at >= 0 && !blockAt(block, at, vs, os, scratch)) at--
      if (at < 0) return false
      placed[i] = at
      end = at
    }
    if (end - head.length < globMin(0)) return false
    if (!blockAt(head, 0, vs, os, out)) return false
    for (let i = 1; i < k; i++) blockAt(blocks[i]!, placed[i]!, vs, os, out)
    return blockAt(tail, n - tail.length, vs, os, out)
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
