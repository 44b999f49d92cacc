// Reading a bearer JWT off a request without trusting it: the Authorization header grammar, a size cap, and the
// unverified header/claims needed to pick an issuer. Nothing here verifies anything.

/** Tokens larger than this are refused without parsing. */
export const MAX_TOKEN_CHARS = 8 * 1024
const MAX_ATTRIBUTE_CHARS = 256

const BEARER_PREFIX = /^bearer/i
const BEARER_SPACE = /^bearer /i
const BEARER_SPACE_LENGTH = 'bearer '.length
const MAX_HEADER_CHARS = MAX_TOKEN_CHARS + BEARER_SPACE_LENGTH
// RFC 6750 §2.1: "Bearer" 1*SP b64token; we accept exactly one space and one token
const BEARER = /^bearer ([A-Za-z0-9\-._~+/]+=*)$/i
const JWS_COMPACT = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/

export type BearerToken = { token: string } | { malformed: string }

/** undefined: no bearer credential at all (no header, or another scheme such as Basic). */
export function bearerToken(authorization: string | undefined): BearerToken | undefined {
  if (!authorization || !BEARER_PREFIX.test(authorization)) return undefined
  if (authorization.length > MAX_HEADER_CHARS)
    return { malformed: `token longer than ${MAX_TOKEN_CHARS} bytes` }
  const m = BEARER.exec(authorization)
  if (!m) return { malformed: 'expected "Bearer <token>" with exactly one space and one token' }
  const token = m[1]!
  if (!JWS_COMPACT.test(token))
    return { malformed: 'bearer token is not a compact JWS (header.payload.signature)' }
  return { token }
}

/**
 * The bytes after "Bearer " without checking the rest of the grammar, or undefined when the header cannot hold
 * a token. For a cache of tokens that passed `bearerToken`: on a hit these bytes are exactly such a token, so
 * the grammar's scans of an 800-byte token are skipped; on a miss the caller runs `bearerToken`.
 */
export function tokenCandidate(authorization: string): string | undefined {
  return authorization.length <= MAX_HEADER_CHARS && BEARER_SPACE.test(authorization)
    ? authorization.slice(BEARER_SPACE_LENGTH)
    : undefined
}

export interface UnverifiedToken {
  header: Readonly<Record<string, unknown>>
  claims: Readonly<Record<string, unknown>>
}

/**
 * Decodes header and claims without verifying; a string is the reason it could not. Each segment is decoded
 * and parsed once (the caller already checked the compact-JWS alphabet), and the same text is scanned for
 * duplicate members: this runs for every token not seen before, so a flood of new tokens pays it each time.
 */
export function peekToken(token: string): UnverifiedToken | string {
  const dot = token.indexOf('.')
  const dot2 = token.indexOf('.', dot + 1)
  if (dot <= 0 || dot2 === -1) return 'header or payload is not base64url-encoded JSON'
  const headerSegment = token.slice(0, dot)
  let header: unknown = peekedHeaders.get(headerSegment)
  const headerText = header === undefined ? base64urlText(headerSegment) : undefined
  const claimsText = base64urlText(token.slice(dot + 1, dot2))
  let claims: unknown
  try {
    if (headerText !== undefined) header = JSON.parse(headerText)
    claims = JSON.parse(claimsText)
  } catch {
    return 'header or payload is not base64url-encoded JSON'
  }
  if (!isJsonObject(header) || !isJsonObject(claims)) return 'header or payload is not a JSON object'
  // JSON.parse keeps the last of duplicate members while other parsers (the upstream's) may keep the first:
  // a signed token with two "sub" claims would mean different identities to us and to the upstream.
  if ((headerText !== undefined && hasDuplicateMember(headerText)) || hasDuplicateMember(claimsText)) {
    return 'header or payload has a duplicate member name'
  }
  if (headerText !== undefined) rememberHeader(headerSegment, header)
  return { header, claims }
}

/**
 * Decoded headers by their segment. Every token one key signs has the same header bytes ({"alg","kid","typ"}),
 * so a flood of new tokens would decode, parse and scan the same ≈ 100 characters each time. Only headers whose
 * members are all primitives are kept, frozen, so a shared object cannot be changed through one token's view;
 * the map is client input, so it is bounded and simply starts over when full.
 */
const peekedHeaders = new Map<string, Readonly<Record<string, unknown>>>()
const MAX_PEEKED_HEADERS = 64
/** a real header ({"alg","kid","typ"}) is ≈ 100 characters: longer ones are decoded per token, not kept */
const MAX_PEEKED_HEADER_CHARS = 512

function rememberHeader(segment: string, header: Record<string, unknown>): void {
  if (segment.length > MAX_PEEKED_HEADER_CHARS) return
  for (const k in header) {
    const v = header[k]
    if (typeof v === 'object' && v !== null) return
  }
  if (peekedHeaders.size >= MAX_PEEKED_HEADERS) peekedHeaders.clear()
  peekedHeaders.set(segment, Object.freeze(header))
}

function isJsonObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

function base64urlText(segment: string): string {
  return Buffer.from(segment, 'base64url').toString('utf8')
}

const QUOTE = 34
const BACKSLASH = 92

/**
 * An object's member names are compared by their raw text while it has at most this many; past that (a
 * crafted token can carry thousands), by a Set, so the scan stays linear.
 */
const LINEAR_MEMBERS = 16
// The scan's stacks, reused from call to call (the scan is synchronous): per open object or array, where its
// names start in the span arrays (-1: an array), whether a name comes next, and its Set once it has one.
const frameBase: number[] = []
const frameExpectsName: boolean[] = []
const frameNames: (Set<string> | undefined)[] = []
// the raw text of each open object's member names so far, as [start, end) offsets into the JSON text
const nameStart: number[] = []
const nameEnd: number[] = []

/**
 * Scans JSON text that already parsed (so it is well-formed) for an object with a repeated member name.
 * Every never-seen token's header and payload come here: text without a backslash (the usual JWT) is
 * scanned without making a string or a Set per object.
 */
export function hasDuplicateMember(json: string): boolean {
  // with escapes, a name has several spellings ("sub", "\u0073ub"): names must be decoded to compare
  if (json.includes('\\')) return hasDuplicateDecodedMember(json)
  let depth = 0
  let names = 0
  let sets = false
  let duplicate = false
  for (let i = 0; i < json.length && !duplicate; i++) {
    const c = json.charCodeAt(i)
    if (c === 123 /* { */ || c === 91 /* [ */) {
      const object = c === 123
      frameBase[depth] = object ? names : -1
      frameExpectsName[depth] = object
      frameNames[depth] = undefined
      depth++
    } else if (c === 125 /* } */ || c === 93 /* ] */) {
      depth--
      const base = frameBase[depth]!
      if (base >= 0) names = base
    } else if (c === 44 /* , */) {
      if (depth > 0 && frameBase[depth - 1]! >= 0) frameExpectsName[depth - 1] = true
    } else if (c === QUOTE) {
      // no backslash anywhere: a string ends at the next quote
      const start = i + 1
      const end = json.indexOf('"', start)
      if (end === -1) break
      i = end
      const top = depth - 1
      if (top < 0 || !frameExpectsName[top]) continue
      frameExpectsName[top] = false
      const base = frameBase[top]!
      let set = frameNames[top]
      if (set === undefined && names - base >= LINEAR_MEMBERS) {
        set = new Set()
        for (let k = base; k < names; k++) set.add(json.slice(nameStart[k], nameEnd[k]))
        frameNames[top] = set
        sets = true
      }
      if (set !== undefined) {
        const name = json.slice(start, i)
        duplicate = set.has(name)
        set.add(name)
        continue
      }
      duplicate = sameNameAmong(json, start, i, base, names)
      nameStart[names] = start
      nameEnd[names] = i
      names++
    }
  }
  // the Sets hold slices of this token's text: do not keep them alive until the next scan
  if (sets) frameNames.length = 0
  return duplicate
}

/** whether json[start, end) equals one of the names [from, to) of the span arrays */
function sameNameAmong(json: string, start: number, end: number, from: number, to: number): boolean {
  const length = end - start
  for (let k = from; k < to; k++) {
    const s = nameStart[k]!
    if (nameEnd[k]! - s !== length) continue
    let j = 0
    while (j < length && json.charCodeAt(s + j) === json.charCodeAt(start + j)) j++
    if (j === length) return true
  }
  return false
}

/** hasDuplicateMember for text with escapes: names are decoded before they are compared */
function hasDuplicateDecodedMember(json: string): boolean {
  const frames: ({ keys: Set<string>; expectKey: boolean } | null)[] = []
  for (let i = 0; i < json.length; i++) {
    const c = json.charCodeAt(i)
    if (c === 123 /* { */) frames.push({ keys: new Set(), expectKey: true })
    else if (c === 91 /* [ */) frames.push(null)
    else if (c === 125 /* } */ || c === 93 /* ] */) frames.pop()
    else if (c === 44 /* , */) {
      const top = frames[frames.length - 1]
      if (top) top.expectKey = true
    } else if (c === QUOTE) {
      const start = i
      let escaped = false
      for (i++; i < json.length; i++) {
        const d = json.charCodeAt(i)
        if (d === QUOTE) break
        if (d === BACKSLASH) {
          escaped = true
          i++
        }
      }
      const top = frames[frames.length - 1]
      if (top?.expectKey) {
        // compare decoded names: "sub" and "\u0073ub" are the same member
        const name = escaped ? (JSON.parse(json.slice(start, i + 1)) as string) : json.slice(start + 1, i)
        if (top.keys.has(name)) return true
        top.keys.add(name)
        top.expectKey = false
      }
    }
  }
  return false
}

/** Unverified iss/sub/kid, safe to keep as evidence on a failure (never the token itself). */
export function safeAttributes(t: UnverifiedToken | undefined): Record<string, string> | undefined {
  if (!t) return undefined
  const out: Record<string, string> = {}
  const put = (key: string, v: unknown) => {
    if (typeof v === 'string' && v.length > 0) out[key] = v.slice(0, MAX_ATTRIBUTE_CHARS)
  }
  put('iss', t.claims['iss'])
  put('sub', t.claims['sub'])
  put('kid', t.header['kid'])
  return Object.keys(out).length > 0 ? out : undefined
}
