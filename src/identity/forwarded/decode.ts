// Small decoders shared by the forwarded-cert parsers. None of them throw.

/** decodeURIComponent that returns undefined on malformed escapes instead of throwing. */
export function urlDecode(s: string): string | undefined {
  if (!s.includes('%')) return s
  try {
    return decodeURIComponent(s)
  } catch {
    return undefined
  }
}

const SHA256_HEX_RE = /^[0-9a-fA-F]{64}$/

export function sha256HexOrUndefined(v: string | undefined): string | undefined {
  return v && SHA256_HEX_RE.test(v) ? v.toLowerCase() : undefined
}
