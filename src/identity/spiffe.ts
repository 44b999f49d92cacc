// SPIFFE ID validation per the SPIFFE-ID standard (§2): spiffe scheme, a lowercase trust domain with no
// userinfo or port, path segments of [A-Za-z0-9._-] that are neither empty, "." nor "..", no query or
// fragment, no trailing slash, at most 2048 bytes in total (trust domain at most 255).

export interface SpiffeId {
  trustDomain: string
  /** "" or "/seg/seg…" */
  path: string
}

export type SpiffeParseResult = SpiffeId | { error: string }

const PREFIX = 'spiffe://'
const MAX_ID_BYTES = 2048
const MAX_TRUST_DOMAIN = 255
const TRUST_DOMAIN_RE = /^[a-z0-9._-]+$/
const SEGMENT_RE = /^[A-Za-z0-9._-]+$/

export function parseSpiffeId(s: string): SpiffeParseResult {
  if (typeof s !== 'string' || s.length === 0) return { error: 'empty' }
  // every valid character is ASCII, so length in UTF-16 units equals bytes for anything that can pass
  if (s.length > MAX_ID_BYTES) return { error: 'longer than 2048 bytes' }
  if (!s.startsWith(PREFIX)) return { error: 'scheme must be "spiffe://"' }
  const rest = s.slice(PREFIX.length)
  if (rest.includes('?')) return { error: 'query is not allowed' }
  if (rest.includes('#')) return { error: 'fragment is not allowed' }
  const slash = rest.indexOf('/')
  const trustDomain = slash === -1 ? rest : rest.slice(0, slash)
  const path = slash === -1 ? '' : rest.slice(slash)
  const tdError = trustDomainError(trustDomain)
  if (tdError) return { error: tdError }
  if (path !== '') {
    const segments = path.slice(1).split('/')
    for (const seg of segments) {
      if (seg === '') return { error: path.endsWith('/') ? 'trailing slash' : 'empty path segment' }
      if (seg === '.' || seg === '..') return { error: 'dot segment in path' }
      if (!SEGMENT_RE.test(seg)) return { error: 'path has characters outside [A-Za-z0-9._-]' }
    }
  }
  return { trustDomain, path }
}

function trustDomainError(td: string): string | undefined {
  if (td === '') return 'trust domain is missing'
  if (td.includes('@')) return 'userinfo is not allowed'
  if (td.includes(':')) return 'port is not allowed'
  if (td.length > MAX_TRUST_DOMAIN) return 'trust domain longer than 255 bytes'
  if (!TRUST_DOMAIN_RE.test(td)) return 'trust domain has characters outside [a-z0-9._-]'
  return undefined
}

export function isSpiffeId(s: string): boolean {
  return !('error' in parseSpiffeId(s))
}

/** Kubernetes-style SPIFFE path "/ns/NS/sa/SA" → "NS/SA", otherwise undefined. */
export function spiffeNamespaceServiceAccount(id: string): string | undefined {
  const m = /^spiffe:\/\/[^/]+\/ns\/([^/]+)\/sa\/([^/]+)$/.exec(id)
  return m ? `${m[1]}/${m[2]}` : undefined
}
