/**
 * A UTF-16 surrogate without its other half. JSON (a token's claims) can hold one; UTF-8 cannot, and writing
 * one as UTF-8 gives U+FFFD, the same bytes as a real U+FFFD.
 */
export const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g

/**
 * `text` with each lone surrogate written as its escape, `\ud800`, as the audit line (JSON) writes it: text
 * UTF-8 can carry, that never reads as a real U+FFFD.
 */
export function escapeLoneSurrogates(text: string): string {
  return text.replace(LONE_SURROGATE, (c) => `\\u${c.charCodeAt(0).toString(16)}`)
}

/**
 * The first `max` UTF-16 units of `text`, one fewer when the last would be the first half of a character
 * outside the BMP: a cut never makes a lone surrogate.
 */
export function cutWhole(text: string, max: number): string {
  if (text.length <= max) return text
  const last = text.charCodeAt(max - 1)
  return text.slice(0, last >= 0xd800 && last <= 0xdbff ? max - 1 : max)
}
