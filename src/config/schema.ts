// The one config schema (SPEC §4). The loader validates with it, `nhi-proxy schema` prints its JSON Schema,
// and every module reads the parsed, defaulted `Config` type from it. Unknown keys are errors everywhere.
import { hostname } from 'node:os'
import { z } from 'zod'
import { ASYMMETRIC_ALGORITHMS, HMAC_ALGORITHMS, KINDS, PROFILE_NAMES } from '../types.ts'
import { parseDuration } from '../util/duration.ts'

/** "30s" | "5m" | 10 (seconds) → milliseconds */
export const duration = z
  .union([z.string(), z.number().nonnegative()])
  .transform((v, ctx) => {
    const ms = parseDuration(v)
    if (ms === undefined) {
      ctx.addIssue({ code: 'custom', message: `invalid duration "${v}" (use e.g. 500ms, 30s, 5m, 24h, 7d)` })
      return z.NEVER
    }
    return ms
  })
  .meta({ description: 'Duration such as 500ms, 30s, 5m, 24h, 7d, or a number of seconds' })

/** host:port, [v6]:port or :port */
export const address = z
  .string()
  .regex(/^(\[[0-9a-fA-F:.]+\]|[^\s:[\]]*):\d{1,5}$/, 'expected HOST:PORT, e.g. 0.0.0.0:8080 or [::1]:8080')

export const kind = z.enum(KINDS)

export const matchSchema = z
  .strictObject({
    spiffe: z
      .string()
      .optional()
      .meta({ description: 'SPIFFE ID pattern, e.g. spiffe://cluster.local/ns/{ns}/sa/{sa}' }),
    jwt: z
      .strictObject({
        issuer: z.string().optional(),
        claims: z.record(z.string(), z.string()).optional(),
      })
      .optional(),
    cert: z
      .strictObject({
        subject: z.string().optional(),
        san: z.string().optional(),
        sha256: z.string().optional(),
      })
      .optional(),
    apiKey: z.string().optional().meta({ description: 'name of a configured api key (pattern)' }),
    header: z.record(z.string(), z.string()).optional(),
    userAgent: z
      .string()
      .optional()
      .meta({ description: 'pattern, or builtin:bots | builtin:agents | builtin:browsers' }),
    remoteAddr: z.array(z.string()).optional().meta({ description: 'CIDRs' }),
    path: z.string().optional(),
    method: z.union([z.string(), z.array(z.string())]).optional(),
    verified: z.boolean().optional(),
    source: z.enum(['mtls', 'xfcc', 'jwt', 'apikey', 'useragent', 'anonymous']).optional(),
  })
  .meta({ description: 'All listed conditions must hold' })

export const identityRuleSchema = z.strictObject({
  name: z.string().min(1).meta({ description: 'identity name template; {captures} from match patterns' }),
  rule: z.string().optional().meta({ description: 'rule name shown in metrics/audit (default: "rule-<n>")' }),
  kind: kind.optional(),
  team: z.string().optional(),
  zone: z.string().optional(),
  expectEvery: duration.optional(),
  match: matchSchema.prefault({}),
})

export const issuerSchema = z.strictObject({
  issuer: z.string().min(1),
  profile: z.enum(PROFILE_NAMES).optional(),
  jwksUri: z.url().optional(),
  jwksFile: z.string().optional(),
  discovery: z.boolean().optional(),
  /** HS* shared secret (file path); HS algorithms are only allowed when this is set */
  secretFile: z.string().optional(),
  audiences: z.array(z.string()).optional(),
  algorithms: z.array(z.enum([...ASYMMETRIC_ALGORITHMS, ...HMAC_ALGORITHMS])).optional(),
  caFile: z.string().optional(),
  bearerTokenFile: z.string().optional(),
  /** how often to refresh a remote key set even without an unknown kid */
  refreshInterval: duration.optional(),
})

export const policyRuleSchema = z.strictObject({
  name: z.string().optional(),
  route: z.string().min(1).meta({ description: 'path pattern: * one segment, ** the rest' }),
  methods: z.array(z.string()).optional(),
  allow: z.array(
    z.strictObject({
      identity: z.string().optional(),
      kind: kind.optional(),
      team: z.string().optional(),
      verified: z.boolean().optional(),
    }),
  ),
})

export const configSchema = z.strictObject({
  service: z
    .string()
    .min(1)
    .default(() => process.env['NHI_SERVICE'] || hostname()),
  listen: z
    .strictObject({
      http: address.default('0.0.0.0:8080'),
      https: z
        .strictObject({
          address: address.default('0.0.0.0:8443'),
          cert: z.string(),
          key: z.string(),
          clientCA: z.string().optional(),
          clientCert: z.enum(['optional', 'required']).default('optional'),
        })
        .optional(),
    })
    .prefault({}),
  upstream: z.url().default('http://127.0.0.1:3000'),
  admin: address.default('0.0.0.0:9464'),
  timeouts: z
    .strictObject({
      upstream: duration.default(30_000).meta({ description: 'upstream response headers deadline → 504' }),
      headers: duration.default(10_000).meta({ description: 'client must send headers within this' }),
      request: duration
        .default(300_000)
        .meta({ description: 'client must send the whole request within this' }),
      idle: duration
        .default(65_000)
        .meta({ description: 'idle keep-alive connections are closed after this' }),
      drain: duration.default(15_000).meta({ description: 'on SIGTERM, in-flight requests get this long' }),
    })
    .prefault({}),
  limits: z
    .strictObject({
      maxHeaderBytes: z.number().int().positive().default(16_384),
      maxConnections: z.number().int().positive().default(10_000),
    })
    .prefault({}),
  forwardedClientCert: z
    .strictObject({
      trustedProxies: z.array(z.string()).default([]),
      toUpstream: z.enum(['sanitize', 'sanitize_set', 'forward']).default('sanitize_set'),
    })
    .prefault({}),
  jwt: z
    .strictObject({
      issuers: z.array(issuerSchema).default([]),
      clockSkew: duration.default(30_000),
      onInvalid: z.enum(['attribute', 'reject']).default('attribute'),
      cacheSize: z.number().int().positive().default(10_000),
      unknownKidCooldown: duration.default(30_000).meta({
        description: 'a token with an unknown kid triggers a key refetch at most this often per issuer',
      }),
    })
    .prefault({}),
  apiKeys: z
    .strictObject({
      header: z.string().default('x-api-key'),
      keys: z
        .array(
          z.strictObject({
            name: z.string().min(1),
            kind: kind.optional(),
            team: z.string().optional(),
            sha256: z.string().regex(/^[0-9a-fA-F]{64}$/, 'expected 64 hex characters (sha256 of the key)'),
          }),
        )
        .default([]),
    })
    .prefault({}),
  identities: z.array(identityRuleSchema).default([]),
  metrics: z
    .strictObject({
      maxIdentities: z.number().int().positive().default(1000),
      routes: z.array(z.string()).default([]),
      buckets: z
        .array(z.number().positive())
        .default([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]),
      idleTtl: duration.default(3_600_000),
    })
    .prefault({}),
  cost: z
    .strictObject({
      currency: z.string().default('USD'),
      perRequest: z.number().nonnegative().default(0),
      perGiB: z.number().nonnegative().default(0),
      perUpstreamSecond: z.number().nonnegative().default(0),
    })
    .optional(),
  audit: z
    .strictObject({
      output: z.string().default('stdout').meta({ description: 'stdout | file path | off' }),
      sample: z.number().min(0).max(1).default(1),
      // Every event in the ring outlives a young-generation GC or two and is promoted: at 10,000 the ring alone
      // cost ≈ 10 % of the proxy's CPU at 3,500 req/s. 1,000 keeps the live view's click-through working;
      // the audit trail (output) is the complete record.
      ringSize: z.number().int().positive().default(1_000),
    })
    .prefault({}),
  anomalies: z
    .strictObject({
      tokenSharedPeers: z.number().int().positive().default(3),
      tokenSharedWindow: duration.default(300_000),
      requireCertTokenMatch: z
        .boolean()
        .default(false)
        .meta({ description: 'identity_mismatch when the cert and token identities disagree' }),
    })
    .prefault({}),
  policy: z
    .strictObject({
      mode: z.enum(['off', 'observe', 'enforce']).default('off'),
      rules: z.array(policyRuleSchema).default([]),
    })
    .prefault({}),
})

/** Parsed, defaulted config; durations are milliseconds. */
export type Config = z.output<typeof configSchema>
/** What an operator writes. */
export type ConfigInput = z.input<typeof configSchema>
export type IdentityRuleConfig = z.output<typeof identityRuleSchema>
export type MatchConfig = z.output<typeof matchSchema>
export type IssuerConfig = z.output<typeof issuerSchema>
export type PolicyRuleConfig = z.output<typeof policyRuleSchema>

export function defaultConfig(): Config {
  return configSchema.parse({})
}

export function configJsonSchema(): Record<string, unknown> {
  return z.toJSONSchema(configSchema, { io: 'input', unrepresentable: 'any' }) as Record<string, unknown>
}
