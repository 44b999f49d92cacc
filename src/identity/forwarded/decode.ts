// Small decoders shared by the forwarded-cert parsers. None of them throw.
import { DN_ESCAPE_RE } from '../certificate.ts'

/** decodeURIComponent that returns undefined on malformed escapes instead of throwing. */
export function urlDecode(s: string): string | undefined {
  if (!s.includes('%')) return s
  try {
    return decodeURIComponent(s)
  } catch {
    return undefined
  }
}

/**
 * CN from a distinguished name in "/C=US/CN=x" (slash) form or "CN=x, O=y" (comma) form, the latter with
 * RFC 4514 backslash escapes or Node's JSON-quoted values (`O="a, CN=b"`). Separators inside quotes or after a
 * backslash do not split, so a CN= inside another attribute's value is never taken for the CN.
 */
export function cnFromSubject(subject: string): string | undefined {
  const slash = subject.startsWith('/')
  let start = slash ? 1 : 0
  let quoted = false
  for (let i = start; i <= subject.length; i++) {
    const c = subject[i]
    if (c === '\\' && i + 1 < subject.length) {
      i++
      continue
    }
    if (c === '"') quoted = !quoted
    const end = i === subject.length || (!quoted && (slash ? c === '/' : c === ',' || c === '+'))
    if (!end) continue
    const part = subject.slice(start, i).trim()
    start = i + 1
    if (part.length > 3 && part.slice(0, 3).toUpperCase() === 'CN=') {
      const cn = unquoteValue(part.slice(3).trim())
      if (cn) return cn
    }
  }
  return undefined
}

function unquoteValue(v: string): string {
  if (v.length >= 2 && v.startsWith('"') && v.endsWith('"')) {
    try {
      const parsed: unknown = JSON.parse(v)
      if (typeof parsed === 'string') return parsed
    } catch {
      // not JSON: RFC 4514 quoting
    }
    v = v.slice(1, -1)
  }
  return v.replace(DN_ESCAPE_RE, '$1')
}

const SHA256_HEX_RE = /^[0-9a-fA-F]{64}$/

export function sha256HexOrUndefined(v: string | undefined): string | undefined {
  return v && SHA256_HEX_RE.test(v) ? v.toLowerCase() : undefined
}
