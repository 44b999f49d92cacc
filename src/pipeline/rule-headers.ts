// Request headers an identity rule's `header` condition names. The rule reads the one name Node hands over
// (`x-tenant`), but an upstream framework merges other spellings with it (CGI/WSGI/Rack/PHP make `X_Tenant`
// HTTP_X_TENANT too, see util/header-names.ts): a client could send the value the rule matched under one
// name and another under a second, and the upstream would act on a value neither the identity nor the policy
// was decided on. So, as for apiKeys.header, every other spelling is stripped before the upstream and counted
// as spoofed_header, the exact name alone being read and forwarded; and no spelling travels as a request
// trailer, which an upstream may merge into the header section the rule never saw it in.
import type { Config } from '../config/schema.ts'
import type { RequestInfo } from '../types.ts'
import { HeaderSpellings } from '../util/header-names.ts'

export class RuleHeaders {
  private readonly spellings: HeaderSpellings
  /** the names rules read as an upstream merges them ("_" ≡ "-"): the trailers withheld */
  readonly merged: ReadonlySet<string>

  private constructor(names: readonly string[]) {
    this.spellings = new HeaderSpellings(names)
    this.merged = this.spellings.merged
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
  spoofedHeaders(headers: RequestInfo['headers']): boolean {
    return this.spellings.anyVariant(headers)
  }

  prepareUpstreamHeaders(headers: Record<string, string | string[] | undefined>): void {
    this.spellings.deleteVariants(headers)
  }
}
