// Checks the schema cannot express: CIDRs, patterns, captures, shadowed or duplicate rules, references to
// issuers and api keys, issuer key sources. Each issue carries a config path; the loader maps it to line:col.
import { isIPv4 } from 'node:net'
import { isCheckedProduct } from '../identity/bots/claims.ts'
import { dnsSuffixProducts, documentedDomain, documentedDomains } from '../identity/bots/dns.ts'
import { publishedFileNames, rangeFileProducts } from '../identity/bots/ranges.ts'
import {
  cutLikeMadeUp,
  cutVerifiedName,
  KEPT_OF_CUT_VERIFIED_NAME,
  MAX_UNVERIFIED_NAME_LENGTH,
  MAX_VERIFIED_NAME_LENGTH,
} from '../identity/builtin.ts'
import { issuerNamespace } from '../identity/profiles.ts'
import { CREDENTIAL_SOURCES } from '../identity/sources/index.ts'
import { pathTemplateProblem } from '../proxy/path.ts'
import { parseUpstream } from '../proxy/upstream-url.ts'
import {
  isUniversalPattern,
  normalisePattern,
  type PatternOptions,
  patternCaptures,
  patternError,
  patternExtent,
  templateError,
} from '../rules/pattern.ts'
import { routeError } from '../rules/routes.ts'
import { cidrError, v4MappedPrefix } from '../util/cidr.ts'
import { cutWhole } from '../util/lone-surrogate.ts'
import type { Severity } from './diagnostics.ts'
import { isCredentialHeader } from './redact.ts'
import type { Config, MatchConfig } from './schema.ts'
import type { Path } from './yaml-schema.ts'

export interface SemanticIssue {
  path: Path
  /** point at the key rather than the value */
  at?: 'key' | 'value'
  message: string
  hint?: string
  severity: Severity
}

export const USER_AGENT_BUILTINS = ['builtin:bots', 'builtin:agents', 'builtin:browsers'] as const
/** captures every rule can use when user-agent evidence is present */
export const USER_AGENT_CAPTURES = ['bot', 'agent', 'product'] as const
const SEGMENT: PatternOptions = { separator: '/' }
/** an HTTP field name (RFC 9110 §5.1: a token) */
const FIELD_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/

/** Every pattern of a rule's match block with its config path and compile options. */
export function matchPatterns(m: MatchConfig): { path: Path; pattern: string; opts?: PatternOptions }[] {
  const out: { path: Path; pattern: string; opts?: PatternOptions }[] = []
  if (m.spiffe !== undefined) out.push({ path: ['spiffe'], pattern: m.spiffe, opts: SEGMENT })
  if (m.path !== undefined) out.push({ path: ['path'], pattern: m.path, opts: SEGMENT })
  if (m.jwt?.issuer !== undefined) out.push({ path: ['jwt', 'issuer'], pattern: m.jwt.issuer })
  for (const [claim, p] of Object.entries(m.jwt?.claims ?? {}))
    out.push({ path: ['jwt', 'claims', claim], pattern: p })
  if (m.cert?.subject !== undefined) out.push({ path: ['cert', 'subject'], pattern: m.cert.subject })
  if (m.cert?.san !== undefined) out.push({ path: ['cert', 'san'], pattern: m.cert.san })
  if (m.apiKey !== undefined) out.push({ path: ['apiKey'], pattern: m.apiKey })
  for (const [name, p] of Object.entries(m.header ?? {})) out.push({ path: ['header', name], pattern: p })
  if (m.userAgent !== undefined && !m.userAgent.startsWith('builtin:')) {
    out.push({ path: ['userAgent'], pattern: m.userAgent, opts: { ignoreCase: true } })
  }
  return out
}

export function semanticCheck(config: Config): SemanticIssue[] {
  const issues: SemanticIssue[] = []
  const error = (path: Path, message: string, hint?: string, at?: 'key' | 'value') =>
    issues.push({ path, message, hint, severity: 'error', at })
  const warn = (path: Path, message: string, hint?: string, at?: 'key' | 'value') =>
    issues.push({ path, message, hint, severity: 'warning', at })

  forwardedCertIssues(config.forwardedClientCert, error, warn)

  // a file of an operator that publishes one per product vouches only for the products it is known to cover:
  // taken for all of them, an address a user-triggered fetcher comes from would verify the operator's crawler
  config.bots.verify.ranges.forEach((src, i) => {
    try {
      rangeFileProducts(src)
    } catch (e) {
      error(
        ['bots', 'verify', 'ranges', i, 'url'],
        (e as Error).message,
        `keep the file name ${src.operator} publishes (${publishedFileNames(src.operator).join(', ')}), or add products`,
      )
    }
  })

  // likewise a reverse DNS domain of an operator that documents its products' host names apart: taken for all
  // of Google's products, google.com (its user-triggered fetchers' names) verified Googlebot
  const dns = config.bots.verify.dns
  dns.domains.forEach((entry, i) => {
    entry.suffixes.forEach((suffix, j) => {
      const at: Path = ['bots', 'verify', 'dns', 'domains', i, 'suffixes', j]
      let products: readonly string[] | 'all'
      try {
        products = dnsSuffixProducts(entry, suffix)
      } catch (e) {
        const known = documentedDomains(entry.operator)
          .map((d) => d.suffix)
          .join(', ')
        error(
          at,
          (e as Error).message,
          `keep a domain ${entry.operator} documents (${known}) or one under it, or add products`,
        )
        return
      }
      // a domain an old config listed for the whole operator, now known to vouch for none of the crawlers
      // whose claims are checked: it loads, and the operator learns it verifies nothing
      const documented = entry.products === undefined ? documentedDomain(entry.operator, suffix) : undefined
      if (
        dns.enabled &&
        documented !== undefined &&
        products !== 'all' &&
        !products.some((p) => isCheckedProduct(entry.operator, p))
      ) {
        warn(
          at,
          `${suffix} verifies no ${entry.operator} crawler claim: ${entry.operator} documents ${documented.suffix} ` +
            `for ${documented.for}`,
          'remove it, or name the products it vouches for (products: [...])',
        )
      }
    })
  })

  // the schema only knows it is a URL; what the proxy can forward to is decided here, so `check`, a start and a
  // reload all refuse it the same way (FILE:LINE:COL), instead of a reload half-applying it
  try {
    parseUpstream(config.upstream)
  } catch (e) {
    error(
      ['upstream'],
      (e as Error).message,
      'http://, https://, h2c://host:port, h2://host:port or unix:/path.sock, without credentials, query or fragment',
    )
  }

  // Without a configured CA the listener does not ask for client certificates: Node's default store
  // (public roots, NODE_EXTRA_CA_CERTS) must never make a client certificate a verified identity.
  const https = config.listen.https
  if (https && !https.clientCA) {
    if (https.clientCert === 'required') {
      error(
        ['listen', 'https', 'clientCert'],
        'clientCert: required needs listen.https.clientCA',
        'set clientCA to the CA that issues your client certificates',
      )
    } else {
      warn(
        ['listen', 'https'],
        'no clientCA: the https listener does not request client certificates (TLS without mTLS identities)',
        'set clientCA to the CA that issues your client certificates',
        'key',
      )
    }
  }

  // a client certificate is presented with its key: one without the other stops the start
  const upstreamTls = config.upstreamTls
  if (upstreamTls && (upstreamTls.cert === undefined) !== (upstreamTls.key === undefined)) {
    if (upstreamTls.cert !== undefined)
      error(
        ['upstreamTls', 'cert'],
        'upstreamTls.cert needs upstreamTls.key, the key of that client certificate',
        'set both, or neither',
        'key',
      )
    else
      error(
        ['upstreamTls', 'key'],
        'upstreamTls.key needs upstreamTls.cert, the client certificate it is the key of',
        'set both, or neither',
        'key',
      )
  }

  // one issuer is one verifier: a second entry for the same `iss` would silently replace the first
  const issuerAt = new Map<string, number>()
  config.jwt.issuers.forEach((iss, i) => {
    const first = issuerAt.get(iss.issuer)
    if (first !== undefined) {
      error(
        ['jwt', 'issuers', i, 'issuer'],
        `duplicate issuer "${iss.issuer}" (also jwt.issuers[${first}]): only one of them would be used`,
        'merge the two entries (several audiences, algorithms and one key source per issuer)',
      )
    } else issuerAt.set(iss.issuer, i)
    if (!iss.jwksUri && !iss.jwksFile && !iss.discovery && !iss.secretFile) {
      error(
        ['jwt', 'issuers', i],
        `issuer "${iss.issuer}" has no key source`,
        'set jwksUri, jwksFile or discovery: true (public keys), or secretFile (HS256/384/512)',
      )
    }
    if (iss.jwksUri && iss.bearerTokenFile && urlHasUserinfo(iss.jwksUri)) {
      error(
        ['jwt', 'issuers', i, 'jwksUri'],
        `issuer "${iss.issuer}" names two credentials for its key set: the jwksUri's user:password and bearerTokenFile (only the bearer token would be sent)`,
        'keep one: the userinfo is sent as Basic authentication, the bearer token as Bearer',
      )
    }
    if (iss.audiences === undefined) {
      error(
        ['jwt', 'issuers', i],
        `issuer "${iss.issuer}" has no audiences: it would accept tokens minted for any other service`,
        'set audiences: [<the audience your callers request, e.g. this service>], or audiences: any to accept every audience',
      )
    } else if (iss.audiences !== 'any' && iss.audiences.length === 0) {
      error(
        ['jwt', 'issuers', i, 'audiences'],
        `issuer "${iss.issuer}" has an empty audiences list: no token would verify`,
        'list the accepted audiences, or write audiences: any',
      )
    }
    const hs = (iss.algorithms ?? []).filter((a) => a.startsWith('HS'))
    if (hs.length && !iss.secretFile) {
      error(
        ['jwt', 'issuers', i, 'algorithms'],
        `${hs.join(', ')} need a shared secret`,
        'set secretFile, or use an asymmetric algorithm',
      )
    }
  })
  const issuerNames = new Set(config.jwt.issuers.map((i) => i.issuer))
  // Two trusted issuers whose names share a namespace can each mint the other's names: a second cluster's
  // admin creates `prod/payments`, a second realm a client with the trusted one's id. Issuers an identity
  // rule names by `jwt.issuer` are the operator's own naming; the rest are flagged, once per pair.
  const namedByRule = new Set(
    config.identities.flatMap((r) => (r.match.jwt?.issuer ? [r.match.jwt.issuer] : [])),
  )
  const namespaceAt = new Map<string, number>()
  config.jwt.issuers.forEach((iss, i) => {
    if (namedByRule.has(iss.issuer)) return
    const namespace = issuerNamespace(iss.issuer, iss.profile)
    if (namespace === undefined) return
    const first = namespaceAt.get(namespace)
    if (first === undefined) {
      namespaceAt.set(namespace, i)
      return
    }
    warn(
      ['jwt', 'issuers', i, 'issuer'],
      `issuer "${iss.issuer}" and jwt.issuers[${first}] share ${namespace}: a caller of either can be given a name the other's callers have`,
      'name one issuer\'s callers with an identity rule matching its jwt.issuer, e.g. name: "dev/{ns}/{sa}" with jwt: { issuer: <it>, claims: { sub: "system:serviceaccount:{ns}:{sa}" } }',
    )
  })
  const keyNames = new Set(config.apiKeys.keys.map((k) => k.name))
  for (const source of CREDENTIAL_SOURCES) source.checkConfig?.(config, error, warn)

  config.metrics.routes.forEach((r, i) => {
    const e = routeError(r)
    if (e) error(['metrics', 'routes', i], e, 'e.g. /api/v1/orders/:id')
    else unmatchablePath(['metrics', 'routes', i], 'route', r, false, warn)
  })

  // headers whose value is a credential: a capture would copy it into names, metrics, audit and explain
  const credentialHeaders = new Set([
    'authorization',
    'proxy-authorization',
    'cookie',
    config.apiKeys.header.toLowerCase(),
  ])
  const ruleNames = new Map<string, number>()
  const norm = rememberedNormalise()
  config.identities.forEach((rule, i) => {
    const base: Path = ['identities', i]
    const m = rule.match
    const defined = new Set<string>()
    for (const { path, pattern, opts } of matchPatterns(m)) {
      const e = patternError(pattern, opts)
      if (e) {
        // a credential header's pattern is often the credential itself: said what is wrong, never quoted
        const credential = path[0] === 'header' && isCredentialHeader(String(path[1]), config.apiKeys.header)
        error(
          [...base, 'match', ...path],
          credential
            ? `invalid pattern for the ${String(path[1]).toLowerCase()} header (not quoted: its value is a credential): ${e.replace(/"\{[^"]*\}"/g, '"{…}"')}`
            : `invalid pattern "${pattern}": ${e}`,
        )
      } else {
        for (const c of patternCaptures(pattern, opts)) defined.add(c)
        // matched against the normalized path like a policy route, but always case-sensitively
        // (policy.pathCase is the policy's)
        if (path[0] === 'path') unmatchablePath([...base, 'match', 'path'], 'path', pattern, false, warn)
      }
    }
    if (
      m.userAgent?.startsWith('builtin:') &&
      !(USER_AGENT_BUILTINS as readonly string[]).includes(m.userAgent)
    ) {
      error(
        [...base, 'match', 'userAgent'],
        `unknown user-agent class "${m.userAgent}"`,
        `one of: ${USER_AGENT_BUILTINS.join(', ')}`,
      )
    }
    for (const [header, pattern] of Object.entries(m.header ?? {})) {
      if (!FIELD_NAME.test(header)) {
        // node:http2 hands the pseudo-headers over among the fields: such a rule would match HTTP/2 requests
        // alone, and a client choose its attribution by choosing HTTP/1.1
        const pseudo = header.startsWith(':')
        error(
          [...base, 'match', 'header', header],
          pseudo
            ? `"${header}" is an HTTP/2 pseudo-header, not a header: HTTP/1.1 requests never carry it, so the rule would attribute a request by the protocol its client chose`
            : `"${header}" is not an HTTP header name`,
          pseudo
            ? "match the host with header.host (an HTTP/2 request's :authority when it sends no host), the path and method with match.path and match.method"
            : "a header name is letters, digits and !#$%&'*+-.^_`|~",
          'key',
        )
        continue
      }
      if (!credentialHeaders.has(header.toLowerCase()) || patternCaptures(pattern).length === 0) continue
      error(
        [...base, 'match', 'header', header],
        `a capture of the ${header.toLowerCase()} header would copy a credential into identity names, metrics and the audit trail`,
        'match it without a capture (e.g. "Bearer *"), or name the caller from its verified credential',
      )
    }
    m.remoteAddr?.forEach((c, j) => {
      const e = cidrError(c)
      if (e) error([...base, 'match', 'remoteAddr', j], e, 'use e.g. 10.0.0.0/8 or 192.168.1.10')
    })
    for (const field of ['name', 'team', 'zone'] as const) {
      const tpl = rule[field]
      if (tpl === undefined) continue
      const te = templateError(tpl)
      if (te) {
        error([...base, field], `invalid template "${tpl}": ${te}`)
        continue
      }
      for (const c of patternCaptures(tpl.replaceAll('*', ''))) {
        if (defined.has(c)) continue
        if ((USER_AGENT_CAPTURES as readonly string[]).includes(c)) {
          if (m.userAgent === undefined) {
            warn(
              [...base, field],
              `{${c}} is only set when the request has a user agent`,
              'add a userAgent condition to this rule',
            )
          }
          continue
        }
        const known = [...defined, ...USER_AGENT_CAPTURES]
        error(
          [...base, field],
          `{${c}} is not captured by any match pattern of this rule`,
          `captures available: ${known.join(', ')}`,
        )
      }
    }
    if (
      m.jwt?.issuer !== undefined &&
      patternCaptures(m.jwt.issuer).length === 0 &&
      !/\*/.test(m.jwt.issuer)
    ) {
      if (!issuerNames.has(m.jwt.issuer)) {
        warn(
          [...base, 'match', 'jwt', 'issuer'],
          `issuer "${m.jwt.issuer}" is not configured in jwt.issuers`,
          'tokens from it are never verified, so this rule cannot match',
        )
      }
    }
    if (m.apiKey !== undefined && patternCaptures(m.apiKey).length === 0 && !m.apiKey.includes('*')) {
      if (!keyNames.has(m.apiKey)) {
        error(
          [...base, 'match', 'apiKey'],
          `no api key named "${m.apiKey}" in apiKeys.keys`,
          keyNames.size ? `configured: ${[...keyNames].join(', ')}` : undefined,
        )
      }
    }
    if (rule.rule !== undefined) {
      const first = ruleNames.get(rule.rule)
      if (first !== undefined)
        error([...base, 'rule'], `duplicate rule name "${rule.rule}" (also identities[${first}])`)
      else ruleNames.set(rule.rule, i)
    }
    for (let j = 0; j < i; j++) {
      const earlier = config.identities[j]!
      if (covers(earlier.match, m, norm)) {
        warn(
          base,
          `rule is unreachable: identities[${j}]${earlier.rule ? ` (${earlier.rule})` : ''} matches every request it does`,
          'move the more specific rule first',
          'value',
        )
        break
      }
    }
  })

  const policyNames = new Map<string, number>()
  config.policy.rules.forEach((rule, i) => {
    const base: Path = ['policy', 'rules', i]
    const e = patternError(rule.route, SEGMENT)
    if (e) error([...base, 'route'], `invalid route pattern "${rule.route}": ${e}`)
    else if (!rule.route.startsWith('/'))
      error([...base, 'route'], `route "${rule.route}" must start with "/"`)
    else
      unmatchablePath([...base, 'route'], 'route', rule.route, config.policy.pathCase === 'insensitive', warn)
    rule.allow.forEach((a, j) => {
      if (a.identity !== undefined) {
        const ie = patternError(a.identity)
        if (ie) error([...base, 'allow', j, 'identity'], `invalid identity pattern "${a.identity}": ${ie}`)
        else longerThanAnyName([...base, 'allow', j, 'identity'], a.identity, a.verified, a.source, warn)
      } else if (a.verified === undefined && (a.kind !== undefined || a.team !== undefined)) {
        // kind and team come from rules, which may name unverified callers too (and an unverified client or
        // forwarded certificate is kind "service" by default): only an `identity:` entry defaults to verified
        const names = [a.kind === undefined ? '' : 'kind', a.team === undefined ? '' : 'team']
          .filter(Boolean)
          .join(' and ')
        warn(
          [...base, 'allow', j],
          `allow entry names ${names} but not verified: it admits unverified callers too (an unverified client or forwarded certificate is kind "service"); only an identity: entry defaults to verified identities`,
          'add verified: true, or verified: false if it is meant for unverified callers only',
        )
      }
    })
    if (rule.name !== undefined) {
      const first = policyNames.get(rule.name)
      if (first !== undefined)
        error([...base, 'name'], `duplicate policy rule name "${rule.name}" (also policy.rules[${first}])`)
      else policyNames.set(rule.name, i)
    }
  })
  if (config.policy.mode !== 'off' && config.policy.rules.length === 0) {
    warn(
      ['policy', 'mode'],
      `policy mode is "${config.policy.mode}" but there are no policy rules`,
      'everything is allowed',
    )
  }
  return issues
}

type Report = (path: Path, message: string, hint?: string, at?: 'key' | 'value') => void

/**
 * A route template or an identity rule's path pattern with a character or escape no normalized request path
 * holds (proxy/path.ts)
 */
function unmatchablePath(
  path: Path,
  what: 'route' | 'path',
  template: string,
  ignoreCase: boolean,
  warn: Report,
): void {
  const problem = pathTemplateProblem(template, ignoreCase)
  if (problem === undefined) return
  warn(
    path,
    `${what} "${template}" can never match: no normalized request path holds ${problem.found}`,
    problem.instead === undefined
      ? 'the proxy answers 400 to every request path with it'
      : problem.decoded
        ? `write "${problem.instead}": the proxy decodes escaped letters, digits, -._~ and !$&'()*+,=:@ before matching`
        : problem.segments
          ? `write "${problem.instead}": the proxy merges "//" and resolves "." and ".." before matching`
          : `write it percent-encoded with upper-case hex: "${problem.instead}"`,
  )
}

/** a pattern as a message shows it: a long one by its beginning (the line and column say which) */
function shortened(pattern: string): string {
  return pattern.length <= 40 ? pattern : `${cutWhole(pattern, 32)}…`
}

/**
 * A policy `identity:` entry no identity name can equal: names are cut (identity/builtin.ts), a verified one
 * longer than MAX_VERIFIED_NAME_LENGTH to its beginning, `…#` and a hash, a made-up one to
 * MAX_UNVERIFIED_NAME_LENGTH, so an entry whose shortest match is longer than the cut of the names it may
 * match admits no one, and a caller the rule was written for is denied.
 */
function longerThanAnyName(
  path: Path,
  pattern: string,
  verified: boolean | undefined,
  source: unknown,
  warn: Report,
): void {
  // an entry names verified identities unless it says otherwise (policy.ts): with a `source` and no
  // `verified` it may match either, so the longer cut holds
  const madeUp = verified === false
  const cap = madeUp ? MAX_UNVERIFIED_NAME_LENGTH : MAX_VERIFIED_NAME_LENGTH
  const { shortest, prefix } = patternExtent(pattern)
  if (shortest <= cap) return
  const either = verified === undefined && source !== undefined
  const names = madeUp
    ? `an unverified identity name is at most ${cap} characters (a longer one is cut to its first ${cap})`
    : `${either ? 'an identity name' : 'a verified identity name'} is at most ${cap} characters (a longer ` +
      `verified one is cut to its first ${KEPT_OF_CUT_VERIFIED_NAME}, "…#" and a hash${either ? `; an unverified one is cut at ${MAX_UNVERIFIED_NAME_LENGTH}` : ''})`
  const kept = madeUp ? MAX_UNVERIFIED_NAME_LENGTH : KEPT_OF_CUT_VERIFIED_NAME
  const literal = prefix === pattern
  const message = literal
    ? `identity "${shortened(pattern)}" can never match: it is ${pattern.length} characters long and ${names}`
    : `identity pattern "${shortened(pattern)}" can never match: its shortest match is ${shortest} characters long and ${names}`
  const byPrefix = prefix.length >= kept ? `"${cutWhole(prefix, kept)}*"` : undefined
  const hint = literal
    ? madeUp
      ? `write the name it is cut to, "${cutLikeMadeUp(pattern)}"`
      : `write the name it is cut to, "${cutVerifiedName(pattern)}", or a wildcard, "${cutWhole(pattern, kept)}*"`
    : byPrefix !== undefined
      ? `match the cut names by their first ${kept} characters: ${byPrefix}`
      : `shorten its fixed parts: a longer name keeps only its first ${kept} characters`
  warn(path, message, hint)
}

/** Shortest prefixes `check` accepts without a warning for a trusted proxy: /16 (IPv4), /48 (IPv6). */
export const BROAD_TRUSTED_PROXY_PREFIX = { ipv4: 16, ipv6: 48 } as const

function forwardedCertIssues(fc: Config['forwardedClientCert'], error: Report, warn: Report): void {
  const base: Path = ['forwardedClientCert', 'trustedProxies']
  fc.trustedProxies.forEach((entry, i) => {
    const cidr = typeof entry === 'string' ? entry : entry.cidr
    const path: Path = typeof entry === 'string' ? [...base, i] : [...base, i, 'cidr']
    const e = cidrError(cidr)
    if (e) {
      error(path, e, "use the front proxy's own address, e.g. 10.0.3.17 or 10.0.3.16/28")
      return
    }
    if (typeof entry === 'string' && fc.format === undefined) {
      error(
        path,
        `trusted proxy "${cidr}" has no header format, so no forwarded certificate from it is believed`,
        'set forwardedClientCert.format (xfcc | rfc9440 | alb | nginx) to the one header that proxy sets, ' +
          'or write the entry as {cidr, format}',
      )
    }
    const broad = broadRange(cidr)
    if (broad) {
      warn(
        path,
        `trusted proxy range "${cidr}" covers ${broad}: every host in it can claim to be any client certificate`,
        "list only the front proxy's own addresses (IPv4 /16 or longer, IPv6 /48 or longer)",
      )
    }
  })
}

/** A description of the range when it is broader than BROAD_TRUSTED_PROXY_PREFIX, else undefined. */
function broadRange(cidr: string): string | undefined {
  const [ip, bitsText] = cidr.split('/') as [string, string | undefined]
  if (bitsText === undefined) return undefined
  const bits = Number(bitsText)
  const v4 = (prefix: number) =>
    prefix >= BROAD_TRUSTED_PROXY_PREFIX.ipv4
      ? undefined
      : prefix === 0
        ? 'every IPv4 address'
        : `${(2 ** (32 - prefix)).toLocaleString('en')} IPv4 addresses`
  if (isIPv4(ip)) return v4(bits)
  const v6 =
    bits >= BROAD_TRUSTED_PROXY_PREFIX.ipv6
      ? undefined
      : bits === 0
        ? 'every IPv6 address'
        : `an IPv6 /${bits}`
  // an IPv6 range holds the IPv4 addresses of its v4-mapped part, which are trusted as those addresses:
  // ::ffff:10.0.0.0/104 is 10.0.0.0/8, and ::/80 is every IPv4 address
  const mapped = v4MappedPrefix(ip, bits)
  const asV4 = mapped === undefined ? undefined : v4(mapped)
  return v6 !== undefined && asV4 !== undefined ? `${v6} and ${asV4}` : (v6 ?? asV4)
}

// Shadowing: `a` covers `b` when every request matching `b` also matches `a`. Conservative: only conditions
// that are identical (modulo capture names) or universal count as covering; anything else is "maybe not".

type Normalise = (p: string, opts?: PatternOptions) => string

/**
 * normalisePattern, each pattern worked out once: the shadowing check compares every rule with every rule
 * before it, and tokenizing the same patterns again for each pair made a config of a few thousand rules take
 * seconds to load, on a reload with the proxy's event loop held all that time.
 */
function rememberedNormalise(): Normalise {
  // by separator, then by pattern: no key is built per lookup
  const seen = new Map<string | undefined, Map<string, string>>()
  return (p, opts) => {
    let bySeparator = seen.get(opts?.separator)
    if (bySeparator === undefined) {
      bySeparator = new Map()
      seen.set(opts?.separator, bySeparator)
    }
    let n = bySeparator.get(p)
    if (n === undefined) {
      n = normalisePattern(p, opts)
      bySeparator.set(p, n)
    }
    return n
  }
}

function coversPattern(
  a: string | undefined,
  b: string | undefined,
  norm: Normalise,
  opts?: PatternOptions,
): boolean {
  if (a === undefined) return true
  if (b === undefined) return false
  return norm(a, opts) === norm(b, opts) || isUniversalPattern(a, opts)
}

function coversRecord(
  a: Record<string, string> | undefined,
  b: Record<string, string> | undefined,
  norm: Normalise,
): boolean {
  if (!a) return true
  for (const [k, p] of Object.entries(a)) if (!coversPattern(p, b?.[k], norm)) return false
  return true
}

function methods(m: string | string[] | undefined): Set<string> | undefined {
  if (m === undefined) return undefined
  return new Set((Array.isArray(m) ? m : [m]).map((x) => x.toUpperCase()))
}

export function covers(a: MatchConfig, b: MatchConfig, norm: Normalise = normalisePattern): boolean {
  if (!coversPattern(a.spiffe, b.spiffe, norm, SEGMENT)) return false
  if (!coversPattern(a.path, b.path, norm, SEGMENT)) return false
  if (a.jwt) {
    if (!b.jwt) return false
    if (!coversPattern(a.jwt.issuer, b.jwt.issuer, norm) || !coversRecord(a.jwt.claims, b.jwt.claims, norm))
      return false
  }
  if (a.cert) {
    if (!b.cert) return false
    if (!coversPattern(a.cert.subject, b.cert.subject, norm) || !coversPattern(a.cert.san, b.cert.san, norm))
      return false
    if (a.cert.sha256 !== undefined && a.cert.sha256.toLowerCase() !== b.cert.sha256?.toLowerCase())
      return false
  }
  if (!coversPattern(a.apiKey, b.apiKey, norm)) return false
  if (!coversRecord(a.header, b.header, norm)) return false
  if (a.userAgent !== undefined && a.userAgent !== b.userAgent) return false
  if (a.remoteAddr !== undefined) {
    if (!b.remoteAddr) return false
    const bs = new Set(b.remoteAddr)
    if (!b.remoteAddr.every((c) => a.remoteAddr!.includes(c)) || bs.size === 0) return false
  }
  const am = methods(a.method)
  if (am) {
    const bm = methods(b.method)
    if (!bm || ![...bm].every((x) => am.has(x))) return false
  }
  if (a.verified !== undefined && a.verified !== b.verified) return false
  if (a.source !== undefined && a.source !== b.source) return false
  return true
}

function urlHasUserinfo(url: string): boolean {
  try {
    const u = new URL(url)
    return u.username !== '' || u.password !== ''
  } catch {
    return false
  }
}
