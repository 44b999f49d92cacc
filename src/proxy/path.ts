// The one request path everything sees (issue: "policy sees the path the upstream will see"). The proxy
// normalizes the path once, matches identity rules, policy and metrics routes against the result and
// forwards exactly that result, so no encoding trick can make the checks and the upstream disagree —
// the same idea as Envoy's normalize_path + merge_slashes + path_with_escaped_slashes_action.
//
//   - percent-encoded unreserved characters (RFC 3986 §2.3: A-Z a-z 0-9 - . _ ~) are decoded, and so are the
//     other characters a path segment may hold as they are (§3.3: ! $ & ' ( ) * + , = : @), which every
//     common server (nginx, Go, Django, Flask, Spring) decodes before routing: /orders/1%3Acancel is
//     /orders/1:cancel to them, so it is to rules and policy. Every other percent-encoding keeps its meaning
//     with upper-case hex (§6.2.2.1): /%61dmin → /admin, %c3%a9 → %C3%A9, %3B stays (";" starts parameters)
//   - path parameters are removed from every segment, as Tomcat and Spring do: /admin;x=1 → /admin
//   - empty segments are merged (//admin → /admin) and dot segments resolved (§5.2.4), never above the
//     root: /a/./b/../c → /a/c, /../admin → /admin (so a base path on the upstream cannot be escaped)
//   - a path no two servers agree on is refused (400): an encoded "/" or "\" (%2F, %5C), a backslash,
//     an encoded control character (%00-%1F, %7F), an invalid percent-encoding, or a "#"
//   - so is a raw byte outside printable ASCII: the HTTP/1.1 parser refuses it, but an HTTP/2 :path can carry
//     one (read as latin1), and an upstream that reads raw UTF-8 as its percent-encoded form would serve
//     /caf\xC3\xA9 as the /caf%C3%A9 a rule denies
//   - letter case is kept; matching is case-sensitive, and the upstream receives the very bytes matched
// The query string is not part of the path and is never touched.

/** The normalized path, or undefined when the path must be refused (400). */
export function normalizePath(path: string): string | undefined {
  if (path.charCodeAt(0) !== 0x2f /* / */) return undefined
  if (!needsNormalizing(path)) return path
  let decoded = ''
  let from = 0
  for (let i = 0; i < path.length; i++) {
    const c = path.charCodeAt(i)
    if (c === 0x5c /* \ */ || c === 0x23 /* # */ || c <= 0x20 || c >= 0x7f) return undefined
    if (c !== 0x25 /* % */) continue
    const byte = hexByte(path, i + 1)
    if (refusedEscape(byte)) return undefined
    decoded += path.slice(from, i)
    decoded += decodedInPath(byte) ? String.fromCharCode(byte) : `%${HEX[byte >> 4]}${HEX[byte & 15]}`
    i += 2
    from = i + 1
  }
  decoded += path.slice(from)

  const segments = decoded.split('/')
  const out: string[] = []
  // "/a/", "/a/." and "/a/b/.." name a directory: the trailing slash stays
  let trailingSlash = false
  // segments[0] is what precedes the leading "/" (always empty for origin-form)
  for (let i = 1; i < segments.length; i++) {
    let s = segments[i]!
    const semicolon = s.indexOf(';')
    if (semicolon !== -1) s = s.slice(0, semicolon)
    if (s === '' || s === '.') {
      trailingSlash = true
      continue
    }
    if (s === '..') {
      out.pop()
      trailingSlash = true
      continue
    }
    out.push(s)
    trailingSlash = false
  }
  if (out.length === 0) return '/'
  return trailingSlash ? `/${out.join('/')}/` : `/${out.join('/')}`
}

/**
 * The fast path: a path of printable ASCII without "%", "\", ";", "#", "//" or a segment starting with "."
 * is already normal.
 * One scan, no allocation; most real paths take it.
 */
function needsNormalizing(path: string): boolean {
  for (let i = 0; i < path.length; i++) {
    const c = path.charCodeAt(i)
    if (c === 0x25 || c === 0x5c || c === 0x3b || c === 0x23 || c <= 0x20 || c >= 0x7f) return true
    if (c === 0x2f) {
      const next = path.charCodeAt(i + 1)
      if (next === 0x2f || next === 0x2e) return true
    }
  }
  return false
}

const HEX = '0123456789ABCDEF'

function hexDigit(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30
  if (c >= 0x41 && c <= 0x46) return c - 0x37
  if (c >= 0x61 && c <= 0x66) return c - 0x57
  return -1
}

function hexByte(s: string, at: number): number {
  if (at + 1 >= s.length) return -1
  const hi = hexDigit(s.charCodeAt(at))
  const lo = hexDigit(s.charCodeAt(at + 1))
  return hi < 0 || lo < 0 ? -1 : (hi << 4) | lo
}

/**
 * An escape no two servers decode alike, so a path holding it is refused: invalid (`byte` < 0), an encoded "/"
 * or "\", or a control character
 */
function refusedEscape(byte: number): boolean {
  return byte < 0 || byte === 0x2f || byte === 0x5c || byte < 0x20 || byte === 0x7f
}

/**
 * A byte whose escape normalization decodes: an unreserved character, or one of the characters a segment
 * holds as they are (RFC 3986 §3.3 pchar: sub-delims, ":" and "@") other than ";", which starts path
 * parameters to Tomcat and Spring
 */
function decodedInPath(b: number): boolean {
  return isUnreserved(b) || (b !== 0x3b && PCHAR_DELIMS.has(b))
}

const PCHAR_DELIMS: ReadonlySet<number> = new Set([..."!$&'()*+,;=:@"].map((c) => c.charCodeAt(0)))

function isUnreserved(b: number): boolean {
  return (
    (b >= 0x41 && b <= 0x5a) ||
    (b >= 0x61 && b <= 0x7a) ||
    (b >= 0x30 && b <= 0x39) ||
    b === 0x2d ||
    b === 0x2e ||
    b === 0x5f ||
    b === 0x7e
  )
}

/** What a route template holds that no normalized path does (pathTemplateProblem). */
export interface PathTemplateProblem {
  /** the first such character or escape: "é", a space, "%c3" */
  found: string
  /** the template spelled as normalized paths are, when a request could match it at all */
  instead?: string
  /** the first problem is an escape normalization decodes (an unreserved character, ":", "@", "$"…) */
  decoded?: boolean
  /** the first problem is an empty, "." or ".." segment, which normalization merges or resolves */
  segments?: boolean
}

function describeChar(ch: string): string {
  if (ch === ' ') return 'a space'
  if (ch === '\\') return 'a backslash'
  const c = ch.charCodeAt(0)
  if (c < 0x20 || c === 0x7f)
    return `a control character (U+${c.toString(16).toUpperCase().padStart(4, '0')})`
  return `"${ch}"`
}

/**
 * A route template (policy route, metrics route) that no normalized path can match because of a character
 * or an escape normalizePath never leaves in a path: a raw byte outside printable ASCII, "#", ";", "?", a
 * backslash, an escape it decodes (decodedInPath), an escape in lower-case hex (unless matched in any case),
 * or one the proxy refuses. undefined when there is none.
 */
export function pathTemplateProblem(template: string, ignoreCase = false): PathTemplateProblem | undefined {
  let found: string | undefined
  let decoded = false
  let refused = false
  let instead = ''
  for (let i = 0; i < template.length; i++) {
    const c = template.charCodeAt(i)
    if (c === 0x25 /* % */) {
      const byte = hexByte(template, i + 1)
      if (refusedEscape(byte)) {
        found ??= `"${template.slice(i, i + 3)}"`
        refused = true
        continue
      }
      const written = template.slice(i, i + 3)
      const upper = `%${HEX[byte >> 4]}${HEX[byte & 15]}`
      if (decodedInPath(byte)) {
        if (found === undefined) {
          found = `"${written}"`
          decoded = true
        }
        instead += String.fromCharCode(byte)
      } else {
        if (written !== upper && !ignoreCase) found ??= `"${written}"`
        instead += upper
      }
      i += 2
      continue
    }
    if (c > 0x20 && c < 0x7f && c !== 0x23 && c !== 0x3b && c !== 0x3f && c !== 0x5c) {
      instead += template[i]
      continue
    }
    const ch = String.fromCodePoint(template.codePointAt(i)!)
    i += ch.length - 1
    found ??= describeChar(ch)
    // a path with a backslash or a control character, raw or encoded, is refused with 400
    if (c < 0x20 || c === 0x7f || c === 0x5c) refused = true
    else for (const b of Buffer.from(ch)) instead += `%${HEX[b >> 4]}${HEX[b & 15]}`
  }
  if (found === undefined) {
    // "//", "/./" and "/../" inside a template: normalized paths never hold them (a trailing slash is optional)
    if (!DOT_OR_EMPTY_SEGMENT.test(template)) return undefined
    const normal = normalizePath(template)
    if (normal === undefined) return undefined
    return { found: 'an empty, "." or ".." segment', instead: normal, segments: true }
  }
  if (refused) return { found }
  return decoded ? { found, instead, decoded } : { found, instead }
}

/** a segment normalization merges or resolves: "//", or a "." or ".." segment */
const DOT_OR_EMPTY_SEGMENT = /\/\/|\/\.\.?(?:\/|$)/

const ABSOLUTE_FORM = /^https?:\/\/[^/?#]*/i

/**
 * The scheme and the host (with its port) an absolute-form request target names (RFC 9112 §3.2.2), user info
 * left out; undefined for any other form.
 */
export function absoluteFormAuthority(url: string): { scheme: string; authority: string } | undefined {
  if (url.charCodeAt(0) === 47 /* / */) return undefined
  const prefix = ABSOLUTE_FORM.exec(url)?.[0]
  if (prefix === undefined) return undefined
  const start = prefix.indexOf('//') + 2
  const at = prefix.lastIndexOf('@')
  return {
    scheme: prefix.slice(0, start - 3).toLowerCase(),
    authority: prefix.slice(Math.max(start, at + 1)),
  }
}

/**
 * The request target as the upstream will get it: the normalized path (normalizePath) plus the untouched
 * query. Rules, policy, metrics routes and audit see that same path. undefined → 400 (a target that is
 * neither origin- nor absolute-form, or a path that cannot be normalized unambiguously).
 */
export function requestTarget(url: string): { target: string; path: string } | undefined {
  let target = url
  if (target.charCodeAt(0) !== 47 /* / */) {
    // absolute-form (RFC 9112 §3.2.2): keep only path and query, as sent (no URL-parser rewriting)
    const authority = ABSOLUTE_FORM.exec(target)
    if (authority === null) return undefined
    target = target.slice(authority[0].length)
    if (target.charCodeAt(0) !== 47) {
      if (target !== '' && target.charCodeAt(0) !== 63 /* ? */) return undefined
      target = `/${target}`
    }
  }
  const q = target.indexOf('?')
  const raw = q === -1 ? target : target.slice(0, q)
  const path = normalizePath(raw)
  if (path === undefined) return undefined
  if (path === raw) return { target, path }
  return { target: q === -1 ? path : path + target.slice(q), path }
}
