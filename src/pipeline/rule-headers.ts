// Request headers an identity rule's `header` condition names. The rule reads the one name Node hands over
// (`x-tenant`), but an upstream framework merges other spellings with it (CGI/WSGI/Rack/PHP make `X_Tenant`
// HTTP_X_TENANT too, see util/header-names.ts): a client could send the value the rule matched under one
// name and another under a second, and the upstream would act on a value neither the identity nor the policy
// was decided on. So, as for apiKeys.header, every other spelling is stripped before the upstream and counted
// as spoofed_header, the exact name alone being read and forwarded; and no spelling travels as a request
// trailer, which an upstream may merge into the header section the rule never saw it in.
import type { Config } from '../config/schema.ts'
import type { RequestInfo } from '../types.ts'
import { normalizeHeaderName } from '../util/header-names.ts'

export class RuleHeaders {
  /** the names rules read, lower-cased as Node hands them over */
  private readonly exact: ReadonlySet<string>
  /** the same names as an upstream merges them ("_" ≡ "-"): the trailers withheld */
  readonly merged: ReadonlySet<string>
  /** a spelling is as long as its name: a header of any other length is passed over with one lookup */
  private readonly lengths: ReadonlySet<number>

  private constructor(names: readonly string[]) {
    this.exact = new Set(names)
    this.merged = new Set(names.map(normalizeHeaderName))
    this.lengths = new Set(names.map((n) => n.length))
  }

  /** The config's rule-named headers; undefined when no rule names one, and the request path skips this. */
  static of(config: Pick<Config, 'identities'>): RuleHeaders | undefined {
    const names = new Set<string>()
    for (const rule of config.identities) {
      for (const name in rule.match.header ?? {}) names.add(name.toLowerCase())
    }
    return names.size === 0 ? undefined : new RuleHeaders([...names])
  }

  /** another spelling of a rule-named header (x_tenant for x-tenant), which no rule read */
  private isVariant(name: string): boolean {
    return (
      this.lengths.has(name.length) && !this.exact.has(name) && this.merged.has(normalizeHeaderName(name))
    )
  }

  spoofedHeaders(headers: RequestInfo['headers']): boolean {
    for (const name in headers) if (this.isVariant(name)) return true
    return false
  }

  prepareUpstreamHeaders(headers: Record<string, string | string[] | undefined>): void {
    for (const name in headers) if (this.isVariant(name)) delete headers[name]
  }
}
