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

/**
 * Header names a proxy reads under their exact (lower-case) spelling, and every other spelling an upstream
 * merges with them (`x_tenant`, `X_Tenant` for `x-tenant`): those must not reach the upstream beside the one
 * read, or it would act on a value the proxy never saw.
 */
export class HeaderSpellings {
  /** the names read, lower-cased as Node hands them over */
  private readonly exact: ReadonlySet<string>
  /** the same names as an upstream merges them ("_" ≡ "-") */
  readonly merged: ReadonlySet<string>
  /** a spelling is as long as its name: a header of any other length is passed over with one lookup */
  private readonly lengths: ReadonlySet<number>

  constructor(names: readonly string[]) {
    this.exact = new Set(names)
    this.merged = new Set(names.map(normalizeHeaderName))
    this.lengths = new Set(names.map((n) => n.length))
  }

  /** another spelling of one of the names, which is not read */
  isVariant(name: string): boolean {
    return (
      this.lengths.has(name.length) && !this.exact.has(name) && this.merged.has(normalizeHeaderName(name))
    )
  }

  deleteVariants(headers: Record<string, unknown>): void {
    for (const name in headers) if (this.isVariant(name)) delete headers[name]
  }
}
