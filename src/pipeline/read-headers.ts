// Request headers the pipeline reads under one name: the user agent (every request), Signature-Input and
// Signature-Agent (while signed agents are verified), apiKeys.header (while keys are configured), any other a
// source declares (SourceExtractor.readHeaders), and those identity rules' `header` conditions name. Each is
// read under the one name Node hands over (`user-agent`, `x-tenant`), but an upstream framework merges other
// spellings with it (CGI/WSGI/Rack/PHP make `User_Agent` HTTP_USER_AGENT and `X_Tenant` HTTP_X_TENANT too, see
// util/header-names.ts): a client could send the value that was read under one name and another under a
// second, and the upstream would act on a value neither the identity nor the policy was decided on (a
// browser's user agent classified, a crawler's acted on; a Signature-Agent nobody verified; a key the proxy
// did not attribute). So every other spelling is stripped before the upstream and counted as spoofed_header,
// the exact name alone being read and forwarded; and no spelling travels as a request trailer, which an
// upstream may merge into the header section it was not read from.
import type { Config } from '../config/schema.ts'
import { HeaderSpellings } from '../util/header-names.ts'

export class ReadHeaders {
  private readonly spellings: HeaderSpellings
  /** the names read as an upstream merges them ("_" ≡ "-"): the trailers withheld */
  readonly merged: ReadonlySet<string>

  private constructor(names: readonly string[]) {
    this.spellings = new HeaderSpellings(names)
    this.merged = this.spellings.merged
  }

  /**
   * Worked out once per config: the rule-named headers and `sourceHeaders`, the names the config's sources
   * read (lower-case).
   */
  static of(config: Pick<Config, 'identities'>, sourceHeaders: readonly string[] = []): ReadHeaders {
    const names = new Set(sourceHeaders)
    for (const rule of config.identities) {
      for (const name in rule.match.header ?? {}) names.add(name.toLowerCase())
    }
    return new ReadHeaders([...names])
  }

  /**
   * Another spelling of a header read here (user_agent for user-agent, x_tenant for x-tenant), which is not
   * read. A length lookup for most names: the request path asks it of every header name.
   */
  isVariant(name: string): boolean {
    return this.spellings.isVariant(name)
  }

  prepareUpstreamHeaders(headers: Record<string, string | string[] | undefined>): void {
    this.spellings.deleteVariants(headers)
  }
}
