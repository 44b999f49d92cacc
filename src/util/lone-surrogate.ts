/**
 * A UTF-16 surrogate without its other half. JSON (a token's claims) can hold one; UTF-8 cannot, and writing
 * one as UTF-8 gives U+FFFD, the same bytes as a real U+FFFD.
 */
export const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g
