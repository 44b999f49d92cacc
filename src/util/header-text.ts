// Node hands a header value over one latin1 character per byte, so a client's UTF-8 `é` (C3 A9) arrives as
// `Ã©`. Read as text (a rule's pattern, a capture that becomes an identity name, a user agent in the audit),
// the bytes mean what the client meant, as Envoy's byte-wise match of a UTF-8 pattern reads them.

const STRICT_UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })

/**
 * A header value as text: its bytes decoded as UTF-8 when it has bytes over 0x7F that are valid UTF-8, else the
 * value as it came (ASCII, the common case, without a copy; bytes that are not UTF-8 stay latin1 characters).
 * A value with a character past 0xFF was never a header's bytes (explain's `-H`, already text) and is kept.
 * `cut`: the value was cut short, so a character the cut split at its end is left out rather than making the
 * whole value "not UTF-8".
 */
export function headerText(value: string, cut = false): string {
  for (let i = 0; i < value.length; i++) {
    if (value.charCodeAt(i) > 0x7f) return decodeObsText(value, i, cut)
  }
  return value
}

function decodeObsText(value: string, from: number, cut: boolean): string {
  for (let i = from; i < value.length; i++) if (value.charCodeAt(i) > 0xff) return value
  const bytes = Buffer.from(value, 'latin1')
  try {
    return STRICT_UTF8.decode(cut ? bytes.subarray(0, completeLength(bytes)) : bytes)
  } catch {
    return value
  }
}

/** the length of `bytes` without a UTF-8 sequence its end splits (a lead byte whose continuation bytes are missing) */
function completeLength(bytes: Buffer): number {
  for (let back = 1; back <= 3 && back <= bytes.length; back++) {
    const b = bytes[bytes.length - back]!
    if (b < 0x80) return bytes.length
    if (b >= 0xc0) {
      const needs = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : 2
      return needs > back ? bytes.length - back : bytes.length
    }
  }
  return bytes.length
}
