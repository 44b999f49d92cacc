// Header names as an upstream framework sees them. CGI, WSGI, Rack and PHP turn a request header into
// HTTP_<NAME> by upper-casing it and mapping "-" to "_", so `X-Nhi-Identity`, `x_nhi_identity` and
// `X-NHI_IDENTITY` all arrive as HTTP_X_NHI_IDENTITY. Two names are the same header when they are equal
// after lower-casing and mapping "_" to "-"; that is the form every identity-header check compares.

/** Lower-cased, "_" → "-". Names Node hands us are lower-case already, so this is usually the name itself. */
export function normalizeHeaderName(name: string): string {
  let n = name
  for (let i = 0; i < n.length; i++) {
    const c = n.charCodeAt(i)
    if (c >= 65 && c <= 90) {
      n = n.toLowerCase()
      break
    }
  }
  return n.indexOf('_') === -1 ? n : n.replaceAll('_', '-')
}

const NHI_PREFIX = 'x-nhi-'

/**
 * Whether `name` is, in any spelling an upstream would merge, one of the headers only this proxy may set
 * (x-nhi-*). Cheap enough for every header of every request: names not starting with x/X return at once.
 */
export function isIdentityHeaderName(name: string): boolean {
  if (name.length <= NHI_PREFIX.length) return false
  const c = name.charCodeAt(0)
  if (c !== 120 && c !== 88) return false
  if (name.startsWith(NHI_PREFIX)) return true
  return normalizeHeaderName(name.slice(0, NHI_PREFIX.length)) === NHI_PREFIX
}
