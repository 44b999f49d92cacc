// Node hands a header value over one latin1 character per byte, so a client's UTF-8 `é` (C3 A9) arrives as
// `Ã©`. Read as text (a rule's pattern, a capture that becomes an identity name, a user agent in the audit),
// the bytes mean what the client meant, as Envoy's byte-wise match of a UTF-8 pattern reads them.

const STRICT_UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })

/**
 * A header value as text: its bytes decoded as UTF-8 when it has bytes over 0x7F that are valid UTF-8, else the
 * value as it came (ASCII, the common case, without a copy; bytes that are not UTF-8 stay latin1 characters).
 * A value with a character past 0xFF was never a header's bytes (explain's `-H`, already text) and is kept.
 */
export function headerText(value: string): string {
  for (let i = 0; i < value.length; i++) {
    if (value.charCodeAt(i) > 0x7f) return decodeObsText(value, i)
  }
  return value
}

function decodeObsText(value: string, from: number): string {
  for (let i = from; i < value.length; i++) if (value.charCodeAt(i) > 0xff) return value
  try {
    return STRICT_UTF8.decode(Buffer.from(value, 'latin1'))
  } catch {
    return value
  }
}
