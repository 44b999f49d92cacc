// The one config schema (docs/reference.md "Config file"). The loader validates with it, `nhi-proxy schema` prints its JSON Schema,
// and every module reads the parsed, defaulted `Config` type from it. Unknown keys are errors everywhere.
import { isIP } from 'node:net'
import { hostname } from 'node:os'
import * as z from 'zod/mini'
import { apiKeysConfigSchema } from '../identity/sources/apikey.ts'
import { SOURCE_NAMES } from '../identity/sources/index.ts'
import {
  ASYMMETRIC_ALGORITHMS,
  FORWARDED_CERT_FORMATS,
  HMAC_ALGORITHMS,
  KINDS,
  PROFILE_NAMES,
} from '../types.ts'
import { MAX_TIMER_MS, parseDuration } from '../util/duration.ts'
import { wholeNumberProblem } from './diagnostics.ts'
import { MAX_WORKERS, WORKERS_PROBLEM } from './workers.ts'

// zod/mini, not zod: the same validation as functions rather than methods, so a bundle keeps only what is
// used. The full package put 460 KB (every one of its locales) on the sidecar's startup path, some 45 ms of
// its cold start. The English messages are installed where diagnostics are made (yaml-schema.ts).

/** For the JSON Schema. Registers the schema itself, not a copy: pass it where it is made, never a reused one. */
export function described<T extends z.ZodMiniType>(schema: T, description: string): T {
  z.globalRegistry.add(schema, { ...z.globalRegistry.get(schema), description })
  return schema
}

const DURATION_PROBLEM = 'expected a duration such as 500ms, 30s, 5m, 24h, 7d, or a number of seconds'

/** "30s" | "5m" | 10 (seconds) → milliseconds; `max`: the longest one allowed, and what to say past it */
function durationSchema(max?: { ms: number; problem: string }) {
  return described(
    z.pipe(
      z.union([z.string(), z.number().check(z.nonnegative(DURATION_PROBLEM))], DURATION_PROBLEM),
      z.transform((v: string | number, ctx) => {
        const ms = parseDuration(v)
        if (ms === undefined) {
          ctx.issues.push({
            code: 'custom',
            message: `invalid duration "${v}" (use e.g. 500ms, 30s, 5m, 24h, 7d)`,
            input: v,
          })
          return z.NEVER
        }
        if (max !== undefined && ms > max.ms) {
          ctx.issues.push({ code: 'custom', message: `"${v}" is too long: ${max.problem}`, input: v })
          return z.NEVER
        }
        return ms
      }),
    ),
    'Duration such as 500ms, 30s, 5m, 24h, 7d, or a number of seconds',
  )
}

/** a duration only compared with elapsed time (an interval a job is expected at, a clock skew, a TTL) */
export const duration = durationSchema()

/**
 * A duration something waits for (a deadline, a refresh interval). Node's timers hold at most about 24.8
 * days and fire a longer one after 1 ms: a key set to refresh every 30 days was fetched a thousand times a
 * second, and a deadline of a month cut at once. Refused where it is written instead.
 */
export const timerDuration = durationSchema({
  ms: MAX_TIMER_MS,
  problem: 'at most 24d (the longest wait a timer holds)',
})

/** host:port, [v6]:port or :port */
export const address = z.string().check(
  z.regex(/^(\[[0-9a-fA-F:.]+\]|[^\s:[\]]*):\d{1,5}$/, 'expected HOST:PORT, e.g. 0.0.0.0:8080 or [::1]:8080'),
  // only where the form matched: "foo" is one error, not a second one about a port it does not have
  z.refine(
    (v: string) => !/:\d+$/.test(v) || Number(v.slice(v.lastIndexOf(':') + 1)) <= 65_535,
    'port must be 0 to 65535',
  ),
)

/**
 * A DNS server as the resolver takes it: an IP address, optionally with a port of 1 to 65535 (`1.2.3.4`,
 * `1.2.3.4:53`, `::1`, `[::1]:53`). Anything else stopped the start after `check` said ok, and port 0 aborts
 * the process inside the resolver.
 */
export function dnsServerProblem(v: string): string | undefined {
  const bracketed = /^\[([^\]]+)\](?::(\d{1,5}))?$/.exec(v)
  const v4 = /^([0-9.]+)(?::(\d{1,5}))?$/.exec(v)
  let ip: string
  let port: string | undefined
  if (bracketed) {
    ip = bracketed[1]!
    port = bracketed[2]
  } else if (v4) {
    ip = v4[1]!
    port = v4[2]
  } else {
    ip = v
  }
  if (bracketed ? isIP(ip) === 0 : v4 ? isIP(ip) !== 4 : isIP(ip) !== 6)
    return 'expected an IP address, optionally with a port: 10.0.0.10, 10.0.0.10:53, fd00::10 or [fd00::10]:53'
  if (port !== undefined && (Number(port) < 1 || Number(port) > 65_535)) return 'port must be 1 to 65535'
  return undefined
}

/**
 * Why the OTLP exporter cannot use an endpoint, never quoting it (it may hold a password). The exporter
 * parses it with `new URL`, the signal path goes after its path, and a password is shown masked from `://` to
 * the last `@` (redactUrl): a '#' (a fragment) is most likely a password's character that needed
 * percent-encoding. So is an '@' anywhere past the host: an unencoded '/' or '?' of the user or password ends
 * the host at it, and the rest of the password, an '@' and the real host become the path or the query, sent
 * to the host the password's start names (`http://user:1234/S3/CRET@collector`, `https://tok/en/x@collector`,
 * `http://user:1234?a=b@collector`). An '@' of the collector's own path or query (`/v1/@tenant/traces`,
 * `?k=a@b`) has exactly that shape and cannot be told from it: it is written %40, which the parser keeps.
 */
export function otlpEndpointProblem(v: string): string | undefined {
  // the pattern's own message covers these
  if (!/^https?:\/\/\S+$/.test(v)) return undefined
  let u: URL
  try {
    u = new URL(v)
  } catch {
    return (
      'not a URL the exporter can parse: is the port above 65535, or does the user or password hold a ' +
      "'#', '?', '/' or '@'? (percent-encode them: %23, %3F, %2F, %40)"
    )
  }
  if (v.includes('#'))
    return "a fragment ('#…') is never sent to the collector: percent-encode a '#' of the user or password as %23"
  if (`${u.pathname}${u.search}`.includes('@'))
    return (
      "an '@' after the host, where an unencoded '/' or '?' of the user or password puts it: percent-encode " +
      "a '/', '?' or '@' of theirs (%2F, %3F, %40), and an '@' of the collector's own path or query as %40"
    )
  return undefined
}

const dnsServer = z.string().check(
  z.superRefine((v, ctx) => {
    const problem = dnsServerProblem(v)
    if (problem) ctx.issues.push({ code: 'custom', message: problem, input: v })
  }),
)

export const kind = z.enum(KINDS)
/** a credential source's name (identity/sources) or "anonymous"; a new schema each call (see described) */
const sourceEnum = () => z.enum(SOURCE_NAMES as [string, ...string[]])

/** The header a trusted front proxy passes the client certificate in: one per proxy. */
export const forwardedCertFormat = described(
  z.enum(FORWARDED_CERT_FORMATS),
  'xfcc: X-Forwarded-Client-Cert (Envoy/Istio) · rfc9440: Client-Cert · alb: X-Amzn-Mtls-Clientcert-* (verify mode) · ' +
    'nginx: X-SSL-Client-Cert ($ssl_client_escaped_cert)',
)

/**
 * A count: a whole number within its range, with one message for every slip (text, a fraction, out of range)
 * that says the whole of what is allowed.
 */
function count(min: number, max?: number, problem = wholeNumberProblem(min, max)) {
  return z
    .number(problem)
    .check(z.int(problem), z.gte(min, problem), ...(max === undefined ? [] : [z.lte(max, problem)]))
}

const positiveInt = count(1)

export const matchSchema = described(
  z.strictObject({
    spiffe: described(
      z.optional(z.string()),
      'SPIFFE ID pattern, e.g. spiffe://cluster.local/ns/{ns}/sa/{sa}',
    ),
    jwt: z.optional(
      z.strictObject({
        issuer: z.optional(z.string()),
        claims: z.optional(z.record(z.string(), z.string())),
      }),
    ),
    cert: z.optional(
      z.strictObject({
        subject: z.optional(z.string()),
        san: z.optional(z.string()),
        sha256: z.optional(z.string()),
      }),
    ),
    apiKey: described(z.optional(z.string()), 'name of a configured api key (pattern)'),
    header: z.optional(z.record(z.string(), z.string())),
    userAgent: described(
      z.optional(z.string()),
      'pattern, or builtin:bots | builtin:agents | builtin:browsers',
    ),
    remoteAddr: described(z.optional(z.array(z.string())), 'CIDRs'),
    path: z.optional(z.string()),
    method: z.optional(z.union([z.string(), z.array(z.string())])),
    verified: z.optional(z.boolean()),
    source: z.optional(sourceEnum()),
  }),
  'All listed conditions must hold',
)

export const identityRuleSchema = z.strictObject({
  name: described(z.string().check(z.minLength(1)), 'identity name template; {captures} from match patterns'),
  rule: described(z.optional(z.string()), 'rule name shown in metrics/audit (default: "rule-<n>")'),
  kind: z.optional(kind),
  team: z.optional(z.string()),
  zone: z.optional(z.string()),
  expectEvery: z.optional(duration),
  match: z.prefault(matchSchema, {}),
})

const ISSUER_CAP_PROBLEM =
  'expected a whole number of at least 1: how many distinct identity names this issuer may add to the ' +
  'metrics (to hold it to metrics.maxIdentities only, set that number)'

/**
 * A document fetched over HTTP(S): anything else (`ftp:`, `file:`) would pass as a URL and fail at every fetch.
 * A new schema each call (see described).
 */
function httpUrl() {
  const schema = z.url({ protocol: /^https?$/, error: 'expected an http(s) URL' })
  // for editors: the scheme is case-insensitive, which a JSON Schema pattern can only spell out
  z.globalRegistry.add(schema, { pattern: '^[Hh][Tt][Tt][Pp][Ss]?://' })
  return schema
}

export const issuerSchema = z.strictObject({
  issuer: z.string().check(z.minLength(1)),
  profile: z.optional(z.enum(PROFILE_NAMES)),
  jwksUri: z.optional(httpUrl()),
  jwksFile: z.optional(z.string()),
  discovery: z.optional(z.boolean()),
  /** HS* shared secret (file path); HS algorithms are only allowed when this is set */
  secretFile: z.optional(z.string()),
  audiences: described(
    z.optional(z.union([z.literal('any'), z.array(z.string().check(z.minLength(1)))])),
    'accepted "aud" values (any one must be in the token); required: `any` accepts every audience, written out',
  ),
  algorithms: z.optional(z.array(z.enum([...ASYMMETRIC_ALGORITHMS, ...HMAC_ALGORITHMS]))),
  caFile: z.optional(z.string()),
  bearerTokenFile: z.optional(z.string()),
  refreshInterval: described(
    z.optional(timerDuration),
    'refetch the key set this often (default 10m); sooner when its answer has a shorter Cache-Control max-age, ' +
      'never sooner than jwt.unknownKidCooldown',
  ),
  maxIdentities: described(
    z.optional(z.number(ISSUER_CAP_PROBLEM).check(z.int(ISSUER_CAP_PROBLEM), z.positive(ISSUER_CAP_PROBLEM))),
    "most distinct identity names this issuer's tokens may add to the metrics, within metrics.maxIdentities; " +
      'further names count as __overflow__. Default: a tenth of metrics.maxIdentities (at least 1) for a public ' +
      'IdP (the issuer URL of GitHub Actions or Google, whatever the profile), else no cap of its own',
  ),
})

/** A signed agents' key directory that is trusted to name who signs (docs/reference.md "Signed agents"). */
export const signatureDirectorySchema = z.strictObject({
  url: described(
    httpUrl(),
    'the key directory, e.g. https://agent.example/.well-known/http-message-signatures-directory',
  ),
  name: described(z.optional(z.string().check(z.minLength(1))), 'identity name (default: the URL host)'),
  kind: z._default(kind, 'agent'),
  operator: described(z.optional(z.string()), 'who runs the agent, e.g. "OpenAI" (attribute agent_operator)'),
  purpose: z.optional(z.enum(['training', 'search', 'assistant', 'coding', 'autonomous'])),
  caFile: z.optional(z.string()),
  refreshInterval: described(z.optional(timerDuration), 'refetch the directory this often (default 10m)'),
})

export const policyRuleSchema = z.strictObject({
  name: z.optional(z.string()),
  route: described(z.string().check(z.minLength(1)), 'path pattern: * one segment, ** the rest'),
  methods: z.optional(z.array(z.string())),
  allow: z.array(
    z.strictObject({
      identity: described(
        z.optional(z.string()),
        'identity-name pattern; matches verified identities only unless `verified` or `source` is given',
      ),
      kind: z.optional(kind),
      team: z.optional(z.string()),
      verified: z.optional(z.boolean()),
      source: described(
        z.optional(z.union([sourceEnum(), z.array(sourceEnum())])),
        `credential source(s) the identity must come from (${SOURCE_NAMES.join(', ')})`,
      ),
    }),
  ),
})

const BUCKET_PROBLEM = 'expected a number of seconds more than 0 (a bucket bound, e.g. 0.25)'
const SAMPLE_PROBLEM = 'expected a number from 0 to 1 (the share of requests audited: 0.1 is one in ten)'

export const configSchema = z.strictObject({
  service: z._default(z.string().check(z.minLength(1)), () => process.env['NHI_SERVICE'] || hostname()),
  listen: z.prefault(
    z.strictObject({
      http: z._default(address, '0.0.0.0:8080'),
      https: z.optional(
        z.strictObject({
          address: z._default(address, '0.0.0.0:8443'),
          cert: z.string(),
          key: z.string(),
          clientCA: z.optional(z.string()),
          clientCert: z._default(z.enum(['optional', 'required']), 'optional'),
        }),
      ),
    }),
    {},
  ),
  upstream: z._default(z.url(), 'http://127.0.0.1:3000'),
  upstreamTls: z.optional(
    z.strictObject({
      ca: described(z.optional(z.string()), 'PEM CA bundle file the https:/h2: upstream is verified against'),
      cert: described(z.optional(z.string()), 'PEM client certificate file presented to the upstream (mTLS)'),
      key: described(z.optional(z.string()), 'PEM key file of that client certificate'),
      servername: described(
        z.optional(z.string()),
        'TLS server name (SNI and verification) if not the URL host',
      ),
    }),
  ),
  admin: z._default(address, '0.0.0.0:9464'),
  workers: described(
    z._default(
      z.union(
        [
          z.literal('auto'),
          count(1, undefined, WORKERS_PROBLEM).check(
            z.lte(
              MAX_WORKERS,
              `at most ${MAX_WORKERS} worker processes (more than one per core only adds contention)`,
            ),
          ),
        ],
        WORKERS_PROBLEM,
      ),
      1,
    ),
    'proxy worker processes: 1 serves everything in one process; auto (one per core) or N forks N workers ' +
      'behind one admin port (read at start only)',
  ),
  adminAccess: z.prefault(
    z.strictObject({
      tokenFile: described(
        z.optional(z.string()),
        'file holding a bearer token that opens /audit /events /identities /config /ui to non-loopback peers',
      ),
      allowedHosts: described(
        z._default(z.array(z.string()), []),
        'Host names accepted besides IP literals and localhost (DNS-rebinding guard)',
      ),
      liveClients: described(z._default(positiveInt, 100), 'concurrent /events streams'),
      liveWriteTimeout: described(
        z._default(timerDuration, 10_000),
        'an /events client that reads nothing for this long is disconnected',
      ),
      liveMaxDuration: described(
        z._default(timerDuration, 600_000),
        'an /events stream is closed after this long; browsers reconnect on their own',
      ),
    }),
    {},
  ),
  readiness: z.prefault(
    z.strictObject({
      requireJwks: described(
        z._default(z.boolean(), false),
        '/readyz fails until every issuer has keys (else JWKS state is only reported)',
      ),
      requireUpstream: described(
        z._default(z.boolean(), false),
        '/readyz fails while the upstream refuses TCP connections (else only reported)',
      ),
    }),
    {},
  ),
  timeouts: z.prefault(
    z.strictObject({
      upstream: described(z._default(timerDuration, 30_000), 'upstream response headers deadline → 504'),
      headers: described(z._default(timerDuration, 10_000), 'client must send headers within this'),
      request: described(
        z._default(timerDuration, 300_000),
        'client must send the whole request within this',
      ),
      idle: described(z._default(timerDuration, 65_000), 'idle keep-alive connections are closed after this'),
      tunnelIdle: described(
        z._default(timerDuration, 3_600_000),
        'a websocket tunnel, or an HTTP/2 upstream stream already answered, that moves no byte either way for ' +
          'this long is closed on both sides (0: never)',
      ),
      drain: described(
        z._default(timerDuration, 15_000),
        'on SIGTERM, after drainDelay, in-flight requests get this long',
      ),
      drainDelay: described(
        z._default(timerDuration, 5_000),
        'on SIGTERM, keep accepting (Connection: close, /readyz 503) this long before closing listeners',
      ),
    }),
    {},
  ),
  limits: z.prefault(
    z.strictObject({
      // "16k" is the likely slip: sizes are written out, as the setting is read
      maxHeaderBytes: z._default(
        count(
          1,
          undefined,
          `${wholeNumberProblem(1, undefined, 'bytes')} (a size is a byte count: 16384, not 16k)`,
        ),
        16_384,
      ),
      maxConnections: z._default(positiveInt, 10_000),
      http2MaxConcurrentStreams: described(
        z._default(positiveInt, 100),
        'HTTP/2 streams one client connection may have open at once',
      ),
      http2MaxResetsPerSecond: described(
        z._default(positiveInt, 100),
        'HTTP/2 streams a client may reset per second on one connection before it is closed (rapid reset)',
      ),
    }),
    {},
  ),
  forwardedClientCert: z.prefault(
    z.strictObject({
      format: described(
        z.optional(forwardedCertFormat),
        'the one header format the trusted proxies set (xfcc | rfc9440 | alb | nginx); required when a ' +
          'trustedProxies entry names none. Every other forwarded-cert header is stripped and counted as spoofed',
      ),
      trustedProxies: described(
        z._default(
          z.array(
            z.union([
              z.string(),
              z.strictObject({
                cidr: z.string(),
                format: forwardedCertFormat,
              }),
            ]),
          ),
          [],
        ),
        "the front proxy's own addresses (CIDR), never a whole pod range; an entry may be " +
          '{cidr, format} to name the header format of that proxy',
      ),
      toUpstream: z._default(z.enum(['sanitize', 'sanitize_set', 'forward']), 'sanitize_set'),
    }),
    {},
  ),
  jwt: z.prefault(
    z.strictObject({
      issuers: z._default(z.array(issuerSchema), []),
      clockSkew: z._default(duration, 30_000),
      onInvalid: z._default(z.enum(['attribute', 'reject']), 'attribute'),
      cacheSize: z._default(positiveInt, 10_000),
      verifyWorkers: described(
        z.optional(count(0, 16)),
        'worker threads verifying new asymmetric tokens off the event loop (0: on it); default 1, 2 with 4 or more cores',
      ),
      unknownKidCooldown: described(
        z._default(timerDuration, 30_000),
        'a token with an unknown kid, or a signature failing under a known kid or without one, triggers a key ' +
          'refetch at most this often per issuer; a failing HMAC signature a re-read of the secretFile',
      ),
    }),
    {},
  ),
  signedAgents: z.prefault(
    z.strictObject({
      directories: described(
        z._default(z.array(signatureDirectorySchema), []),
        'the only key directories whose signatures are verified; a Signature-Agent naming any other is unknown',
      ),
      authorities: described(
        z._default(z.array(z.string()), []),
        'the host names (host, host:port, or *.domain for the names below it) this service is reached by: a ' +
          'signature whose @authority is none of them is signature_invalid; empty: any (a signature made for ' +
          'another site verifies here)',
      ),
      clockSkew: described(z._default(duration, 30_000), 'tolerance for the created and expires parameters'),
      maxAge: described(
        z._default(duration, 300_000),
        'a signature created longer ago than this is expired, whatever its expires says',
      ),
      requireNonce: described(
        z._default(z.boolean(), false),
        'refuse signatures without a nonce (those cannot be checked for replay)',
      ),
      nonceCacheSize: described(
        z._default(positiveInt, 100_000),
        'nonces remembered (until their signature can no longer verify) to refuse replays; when all are live, ' +
          'a new signature is refused (replay_cache_full)',
      ),
    }),
    {},
  ),
  apiKeys: apiKeysConfigSchema,
  identities: z._default(z.array(identityRuleSchema), []),
  metrics: z.prefault(
    z.strictObject({
      maxIdentities: z._default(positiveInt, 1000),
      maxUnverifiedIdentities: described(
        z.optional(positiveInt),
        'cap for unverified identities (user agents, header captures), within maxIdentities; default maxIdentities / 4',
      ),
      routes: z._default(z.array(z.string()), []),
      buckets: described(
        z._default(
          // a histogram counts an observation in the first bucket at least as large: out of order or repeated
          // bounds would count a 0.3 s request as ≤ 0.1 s, or render one `le` twice
          z
            .array(
              z
                .number(BUCKET_PROBLEM)
                .check(z.positive(BUCKET_PROBLEM), z.refine(Number.isFinite, BUCKET_PROBLEM)),
            )
            .check(
              z.refine(
                (b: number[]) => b.every((v, i) => i === 0 || v > b[i - 1]!),
                'bucket bounds must be in increasing order, each once',
              ),
            ),
          [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
        ),
        'nhi_request_duration_seconds bucket upper bounds, seconds, in increasing order (+Inf is added)',
      ),
      idleTtl: z._default(duration, 3_600_000),
    }),
    {},
  ),
  cost: z.optional(
    z.strictObject({
      currency: z._default(z.string(), 'USD'),
      perRequest: z._default(z.number().check(z.nonnegative()), 0),
      perGiB: z._default(z.number().check(z.nonnegative()), 0),
      perUpstreamSecond: z._default(z.number().check(z.nonnegative()), 0),
    }),
  ),
  audit: z.prefault(
    z.strictObject({
      output: described(z._default(z.string(), 'stdout'), 'stdout | file path | off'),
      sample: z._default(
        z.number(SAMPLE_PROBLEM).check(z.minimum(0, SAMPLE_PROBLEM), z.maximum(1, SAMPLE_PROBLEM)),
        1,
      ),
      // The ring holds audit lines in ringSize × 2 KiB outside the heap (telemetry/audit-ring.ts). 1,000 keeps
      // the live view's click-through working; the audit trail (output) is the complete record.
      ringSize: z._default(positiveInt, 1_000),
    }),
    {},
  ),
  otlp: z.prefault(
    z.strictObject({
      endpoint: described(
        z.optional(
          z.string().check(
            z.regex(/^https?:\/\/[^\s]+$/, 'expected an http(s) URL'),
            z.superRefine((v, ctx) => {
              const problem = otlpEndpointProblem(v)
              if (problem) ctx.issues.push({ code: 'custom', message: problem, input: v })
            }),
          ),
        ),
        'OTLP/HTTP (protobuf) collector base URL, e.g. http://otel-collector:4318; spans go to <endpoint>/v1/traces. ' +
          'Setting it (or OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, which win) turns trace export on',
      ),
      logs: described(
        z._default(z.boolean(), false),
        "also send each request's audit record as an OTLP log record to <endpoint>/v1/logs (OTEL_LOGS_EXPORTER=otlp|none wins)",
      ),
      timeout: described(
        // the exporter refuses 0, and a thread would be started with it all the same
        z._default(timerDuration.check(z.refine((ms: number) => ms > 0, 'must be more than 0')), 10_000),
        'deadline of one export, retries with backoff included (OTEL_EXPORTER_OTLP_TIMEOUT wins)',
      ),
      maxQueueSize: described(
        z._default(positiveInt, 2048),
        'finished spans waiting for export; beyond it spans are dropped and counted (OTEL_BSP_MAX_QUEUE_SIZE wins)',
      ),
      maxExportBatchSize: described(
        z._default(positiveInt, 512),
        'spans per export request (OTEL_BSP_MAX_EXPORT_BATCH_SIZE wins)',
      ),
      scheduledDelay: described(
        z._default(timerDuration, 5_000),
        'longest wait before a partial batch is sent (OTEL_BSP_SCHEDULE_DELAY, in ms, wins)',
      ),
      headers: described(
        z.optional(
          z.record(
            z.string().check(z.regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/, 'expected an HTTP header name')),
            z.string().check(z.regex(/^[^\r\n]*$/, 'expected a single-line header value')),
          ),
        ),
        'headers of every export request, e.g. a collector token (masked on /config; a name also set in OTEL_EXPORTER_OTLP_HEADERS is taken from there)',
      ),
    }),
    {},
  ),
  anomalies: z.prefault(
    z.strictObject({
      tokenSharedPeers: z._default(positiveInt, 3),
      tokenSharedWindow: z._default(duration, 300_000),
      requireCertTokenMatch: described(
        z._default(z.boolean(), false),
        'identity_mismatch when the cert and token identities disagree',
      ),
    }),
    {},
  ),
  bots: z.prefault(
    z.strictObject({
      verify: z.prefault(
        z.strictObject({
          enabled: described(
            z._default(z.boolean(), true),
            'a user agent claiming a well-known crawler operator is verified only from inside its published ' +
              'ranges; from outside them it is an unverified_claim anomaly',
          ),
          shippedRanges: described(
            z._default(z.boolean(), true),
            "start from the dated snapshot of the operators' range files shipped with this release",
          ),
          ranges: described(
            z._default(
              z.array(
                z.strictObject({
                  operator: z.string().check(z.minLength(1)),
                  url: httpUrl(),
                  products: described(
                    z.optional(z.array(z.string().check(z.minLength(1)))),
                    'the products the file vouches for, as the user-agent classifier names them (gptbot); ' +
                      "default: those of the operator's published file of that name, or all of an operator " +
                      'that publishes one list (Bing, Apple)',
                  ),
                }),
              ),
              [],
            ),
            'range files to fetch at start and refresh, each for one operator (Google, Bing, OpenAI, Apple, ' +
              'Perplexity, …) and the products it vouches for; none by default',
          ),
          refreshInterval: z._default(timerDuration, 24 * 3_600_000),
          retryInterval: described(
            z._default(timerDuration, 60_000),
            'how soon a failed range fetch is retried (capped by refreshInterval); the last good ranges keep serving',
          ),
          fetchTimeout: z._default(timerDuration, 5_000),
          dns: z.prefault(
            z.strictObject({
              enabled: described(
                z._default(z.boolean(), false),
                'also verify by reverse-then-forward DNS against the operator domains below',
              ),
              domains: described(
                z._default(
                  z.array(
                    z.strictObject({
                      operator: z.string().check(z.minLength(1)),
                      suffixes: z.array(z.string().check(z.minLength(1))),
                      products: described(
                        z.optional(z.array(z.string().check(z.minLength(1)))),
                        'the products these domains vouch for, as the user-agent classifier names them ' +
                          "(googlebot); default: those the operator documents each domain for (Google's " +
                          'googlebot.com: its common crawlers; google.com: none of the crawlers checked), or ' +
                          'all of an operator that documents one domain (Bing, Apple)',
                      ),
                    }),
                  ),
                  [
                    // Google's common crawlers only: google.com is its special crawlers' and user-triggered
                    // fetchers', googleusercontent.com any Compute Engine VM's
                    { operator: 'Google', suffixes: ['googlebot.com'] },
                    { operator: 'Bing', suffixes: ['search.msn.com'] },
                    { operator: 'Apple', suffixes: ['applebot.apple.com'] },
                  ],
                ),
                "the domains each operator's crawlers have their PTR names in, and the products they vouch for",
              ),
              timeout: z._default(timerDuration, 2_000),
              cacheTtl: z._default(duration, 3_600_000),
              cacheSize: z._default(positiveInt, 10_000),
              servers: described(
                z._default(z.array(dnsServer), []),
                "DNS servers (ip or ip:port) for these lookups; default the system's",
              ),
            }),
            {},
          ),
        }),
        {},
      ),
    }),
    {},
  ),
  policy: z.prefault(
    z.strictObject({
      mode: z._default(z.enum(['off', 'observe', 'enforce']), 'off'),
      pathCase: described(
        z._default(z.enum(['sensitive', 'insensitive']), 'sensitive'),
        'how the upstream routes paths: insensitive (Express, ASP.NET) makes policy routes match in any case',
      ),
      rules: z._default(z.array(policyRuleSchema), []),
    }),
    {},
  ),
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
