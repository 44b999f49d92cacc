// Attribution must not depend on the protocol a client chose. Generated requests (credentials of every kind,
// written the ways a client may write them) go through the built proxy over HTTP/1.1, h2c, HTTP/1.1 over TLS
// and h2 over TLS (ALPN), those with a client certificate over the two TLS ones with the same certificate; for
// each request the four (or two) exchanges must agree on the fields the recording upstream got (the x-nhi-*
// ones, the credentials passed on, every other but UPSTREAM_PER_EXCHANGE), the audit line (the status the
// client was answered among its fields), and the series of nhi_requests_total that moved. An
// attacker who found that one protocol reads a credential field otherwise (its case, a field repeated or split
// in two, cookie crumbs, `:authority` for `host`, an empty value, a spoofed x-nhi-* or forwarded field) would
// get another identity by choosing that protocol.
//
// Both clients write their requests by hand (raw bytes for HTTP/1.1, HEADERS frames for HTTP/2, h2-frames.ts),
// since node's clients refuse to send some of what is generated here (a second Authorization line over h2).
//
// What HTTP/2 itself rules out is written the HTTP/2 way for the h2 exchanges (H2_SPELLINGS, each with its
// reason); the audit fields that legitimately differ between the exchanges of one request are
// AUDIT_PER_EXCHANGE, the anomalies that depend on earlier requests HISTORY_ANOMALIES. Two sidecars run two
// configs (strict: enforced, rules on credentials; lenient: invalid tokens refused, rules on the host, a
// cookie, the method and fields that are no lists). The hand-written cases (HAND_WRITTEN) are the
// disagreements the generated requests found, each fixed, and cases they reach too seldom.

import { once } from 'node:events'
import { type Socket, connect as tcpConnect } from 'node:net'
import { connect as tlsConnect } from 'node:tls'
import fc from 'fast-check'
import t, { type Test } from 'tap'
import { pemCertificates } from '../../src/identity/certificate.ts'
import { sha256Hex } from '../../src/util/fingerprint.ts'
import { eventually } from '../helpers/eventually.ts'
import { FLAG, FRAME, frame, headerBlock, PREFACE, responseStatus } from '../helpers/h2-frames.ts'
import { createSigningKey, mintToken, startJwksServer } from '../helpers/jwks.ts'
import { scrape } from '../helpers/metrics.ts'
import { createCA, createServerPki, issueCert, type KeyPair, mtlsListen } from '../helpers/pki.ts'
import { checkBothSides, PROPERTY_SEED } from '../helpers/property.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'
import { createAgentKey, signRequest, signWithParams, startKeyDirectory } from '../helpers/signed-agent.ts'
import { startUpstream } from '../helpers/upstream.ts'

/** generated requests: each sent two or four times */
const REQUESTS = 60
const ISSUER = 'https://idp.example'
const AUTHORITY = 'svc.example'
/**
 * The loopback address a request comes from: a client, or a front proxy trusted for one forwarded-certificate
 * format (forwardedClientCert.trustedProxies): Envoy's XFCC, a load balancer's RFC 9440 Client-Cert, nginx's
 * escaped PEM.
 */
const PEERS = { direct: '127.0.0.1', envoy: '127.0.0.2', edge: '127.0.0.3', nginx: '127.0.0.4' } as const
type Peer = keyof typeof PEERS
const TRUSTED_PROXIES = [
  { cidr: `${PEERS.envoy}/32`, format: 'xfcc' },
  { cidr: `${PEERS.edge}/32`, format: 'rfc9440' },
  { cidr: `${PEERS.nginx}/32`, format: 'nginx' },
]

/**
 * Audit fields that belong to the exchange, not to the request's attribution: `time`, `duration_ms` and
 * `upstream_ms` (timings), `trace_id`, `span_id` and `request_id` (ids: each exchange is given its own request
 * id to find it by, and a new trace). The body bytes (`bytes_in`, `bytes_out`) count bodies, not their
 * framing: compared.
 */
const AUDIT_PER_EXCHANGE = ['time', 'duration_ms', 'upstream_ms', 'trace_id', 'span_id', 'request_id']

/**
 * Anomalies that depend on the requests before, by design: `token_shared` counts a token's clients (addresses,
 * certificates) over a window, and the generated requests send the same tokens from several.
 */
const HISTORY_ANOMALIES = ['token_shared']

/**
 * How an HTTP/2 client writes what an HTTP/1.1 client may write otherwise, because HTTP/2 requires it (RFC 9113),
 * so that the same request is sent:
 *  - field names in lower case (§8.2.1: a name with an upper-case letter makes the request malformed);
 *  - values without whitespace at either end (§8.2.1; node:http2 drops such a field), where the HTTP/1.1
 *    exchange may pad them (`padded`): optional whitespace, no part of the value (RFC 9110 §5.5);
 *  - the host as `:authority` (§8.3.1), as `host` too or as `host` alone (all three are the same request);
 *  - `Connection` and the other connection-specific fields not at all (§8.2.2): the HTTP/1.1 exchange sends
 *    `Connection: close` to end its connection, which is no part of the request's attribution;
 *  - cookies as crumbs, one field per cookie (§8.2.3), which a server joins with `; `.
 * Not generated, as no client of either protocol writes them as the same request: a field HTTP/2 forbids
 * outright (an upper-case name: node:http2 resets the stream; a control character in a value or a space in a
 * name: it drops the field, so neither the proxy nor the upstream reads it, where HTTP/1.1 answers 400).
 */
const H2_SPELLINGS = 'lower-case names, values unpadded, :authority, no Connection, cookie crumbs'

// ---- the credentials

const TOKENS = ['valid', 'expired', 'audience', 'forged', 'malformed', 'admin'] as const
type TokenName = (typeof TOKENS)[number]
/** how Authorization names its scheme (two spaces or a tab: what a lenient parser may take for one) */
const SCHEMES = ['Bearer ', 'bearer ', 'BEARER ', 'Bearer  ', 'Bearer\t'] as const
const KEYS = { deploy: 'key-of-deploy', ci: 'key-of-ci', unknown: 'key-of-nobody', empty: '' } as const
type KeyName = keyof typeof KEYS
/** the api key header as sent: its configured name in other cases, another spelling, or both */
const KEY_SPELLINGS = ['x-api-key', 'X-Api-Key', 'X-API-KEY', 'x_api_key', 'both'] as const
const USER_AGENTS = [
  'Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)',
  'Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko); compatible; GPTBot/1.2; +https://openai.com/gptbot',
  'ChatGPT-User/1.0',
  'curl/8.5.0',
  'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36',
  'billing-export/1.0',
  '',
]
/** addresses inside Google's and OpenAI's published crawler ranges, and one outside any */
const FORWARDED_FOR = { google: '66.249.66.9', openai: '132.196.86.9', elsewhere: '203.0.113.9' } as const
const CERTS = ['workload', 'gateway', 'stranger'] as const
type CertName = (typeof CERTS)[number]
/** fields a client sends to forge what the proxy sets or believes from a trusted hop only */
const SPOOFS: [string, string][] = [
  ['X-NHI-Identity', 'admin'],
  ['x-nhi-verified', 'true'],
  ['X_Nhi_Source', 'mtls'],
  ['X-Forwarded-For', '66.249.66.9'],
  ['X-Real-IP', '66.249.66.9'],
  ['Forwarded', 'for=66.249.66.9;proto=https'],
  ['X-Forwarded-Proto', 'https'],
  ['User_Agent', 'Googlebot/2.1'],
]

/** the paths requests go to, some written otherwise than their normalized form */
const PATHS = [
  '/api/orders/1',
  '/admin/keys',
  '/',
  '/admin//keys',
  '/api/../admin/keys',
  '/%61dmin/keys',
  '/admin/keys;v=1',
  '/admin/keys?x=1',
  '/ADMIN/keys',
] as const

interface Fixtures {
  tokens: Record<TokenName, string>
  /** each client certificate, for the TLS handshake */
  certs: Record<CertName, KeyPair>
  /** each certificate's DER, for Client-Cert */
  ders: Record<CertName, Buffer>
  /** sha256 of each certificate's DER, for XFCC's Hash */
  hashes: Record<CertName, string>
  serverCaPem: string
  signatures: Record<'valid' | 'other-site', Record<string, string>>
  /**
   * a new signature by web-bot-auth's own signer (@authority and signature-agent covered) for each exchange:
   * its nonce makes a second use a replay, which is history, not protocol
   */
  signWithAgent: () => Promise<Record<string, string>>
}

// ---- one request, as an HTTP/1.1 client writes it

interface Spec {
  /** which of the two sidecars (makeFixtures' configs) */
  config: 'strict' | 'lenient'
  method: (typeof METHODS)[number]
  peer: Peer
  path: (typeof PATHS)[number]
  /** HTTP/1.1: the target in absolute form (`http://svc.example/…`), which HTTP/2 writes as :path */
  absoluteForm?: true
  /** HTTP/1.1: optional whitespace around the values (no part of them; HTTP/2 sends none) */
  padded?: ' ' | '\t'
  token?: TokenName
  scheme: (typeof SCHEMES)[number]
  /** a second Authorization line: another token, an empty one */
  secondAuthorization?: TokenName | 'empty'
  /** an empty Authorization, alone */
  emptyAuthorization?: true
  apiKey?: KeyName
  keySpelling: (typeof KEY_SPELLINGS)[number]
  /** the key header in two lines, the second another key */
  secondKey?: KeyName
  userAgent?: number
  secondUserAgent?: number
  /** X-Forwarded-For: a crawler operator's address (or not) a trusted proxy names as the client, in two lines or one */
  forwardedFor?: { from: keyof typeof FORWARDED_FOR; twoLines: boolean }
  xfcc?: CertName
  /** a POST's `Expect: 100-continue`, its body sent without waiting for the 100 */
  expectContinue?: true
  /** RFC 9440 Client-Cert (a structured byte sequence of the DER) */
  clientCertHeader?: CertName
  /** nginx's X-SSL-Client-Cert (the PEM, URL-escaped), in two lines or not */
  nginxCert?: { cert: CertName; twoLines: boolean }
  /** the XFCC value as two elements: what a client sent, then what the trusted proxy appended */
  xfccAppended?: true
  /** those two elements in two lines rather than one */
  xfccTwoLines?: true
  spoofs: number[]
  /** cookies, the token among them or not (nothing here reads cookies: the upstream must get them alike) */
  cookies?: { count: number; withToken: boolean; twoLines: boolean }
  signature?: 'valid' | 'other-site' | 'with-agent'
  /** Signature-Agent in two lines, the first naming another directory */
  agentTwoLines?: true
  tenant?: { name: 'x-tenant' | 'X-Tenant' | 'x_tenant'; value: string }
  /** a field that is no list, in one line or two (RFC 9110 §5.3: a sender must not repeat it) */
  single?: { name: (typeof SINGLE_FIELDS)[number]; values: string[] }
  /** over TLS only: the client certificate of the handshake */
  clientCert?: CertName
  /** how the h2 exchanges name the host */
  h2Host: 'authority' | 'both' | 'host'
}

const optional = <T>(arb: fc.Arbitrary<T>, weight = 1): fc.Arbitrary<T | undefined> =>
  fc.oneof({ weight: 2, arbitrary: fc.constant(undefined) }, { weight, arbitrary: arb })

/** fields that are no lists, which an identity rule may name (the lenient config's rules name two) */
const SINGLE_FIELDS = [
  'dnt',
  'upgrade-insecure-requests',
  'range',
  'date',
  'if-range',
  'content-location',
  'server',
] as const

const METHODS = ['GET', 'GET', 'HEAD', 'POST', 'DELETE'] as const
/** a POST's body */
const BODY = 'order=1&qty=2'

const specArb: fc.Arbitrary<Spec> = fc
  .record({
    config: fc.constantFrom('strict' as const, 'lenient' as const),
    method: fc.constantFrom(...METHODS),
    peer: fc.constantFrom(...(Object.keys(PEERS) as Peer[])),
    path: fc.constantFrom(...PATHS),
    absoluteForm: optional(fc.constant(true as const)),
    padded: optional(fc.constantFrom(' ' as const, '\t' as const)),
    token: optional(fc.constantFrom(...TOKENS), 2),
    scheme: fc.constantFrom(...SCHEMES),
    secondAuthorization: optional(fc.constantFrom<TokenName | 'empty'>('admin', 'valid', 'empty'), 1),
    emptyAuthorization: optional(fc.constant(true as const)),
    apiKey: optional(fc.constantFrom(...(Object.keys(KEYS) as KeyName[])), 2),
    keySpelling: fc.constantFrom(...KEY_SPELLINGS),
    secondKey: optional(fc.constantFrom<KeyName>('deploy', 'ci', 'empty')),
    userAgent: optional(fc.nat(USER_AGENTS.length - 1), 3),
    secondUserAgent: optional(fc.nat(USER_AGENTS.length - 1)),
    forwardedFor: optional(
      fc.record({
        from: fc.constantFrom(...(Object.keys(FORWARDED_FOR) as (keyof typeof FORWARDED_FOR)[])),
        twoLines: fc.boolean(),
      }),
    ),
    xfcc: optional(fc.constantFrom(...CERTS), 2),
    expectContinue: optional(fc.constant(true as const)),
    clientCertHeader: optional(fc.constantFrom(...CERTS)),
    nginxCert: optional(fc.record({ cert: fc.constantFrom(...CERTS), twoLines: fc.boolean() })),
    xfccAppended: optional(fc.constant(true as const)),
    xfccTwoLines: optional(fc.constant(true as const)),
    spoofs: fc.subarray([...SPOOFS.keys()], { maxLength: 3 }),
    cookies: optional(
      fc.record({ count: fc.integer({ min: 1, max: 3 }), withToken: fc.boolean(), twoLines: fc.boolean() }),
    ),
    signature: optional(fc.constantFrom('valid' as const, 'other-site' as const, 'with-agent' as const)),
    agentTwoLines: optional(fc.constant(true as const)),
    tenant: optional(
      fc.record({
        name: fc.constantFrom('x-tenant' as const, 'X-Tenant' as const, 'x_tenant' as const),
        value: fc.constantFrom('acme', 'globex', ''),
      }),
    ),
    single: optional(
      fc.record({
        name: fc.constantFrom(...SINGLE_FIELDS),
        values: fc.array(fc.constantFrom('1', '0', 'bytes=0-1'), { minLength: 1, maxLength: 2 }),
      }),
    ),
    clientCert: optional(fc.constantFrom(...CERTS), 2),
    h2Host: fc.constantFrom('authority' as const, 'both' as const, 'host' as const),
  })
  .map((r) => {
    const out: Record<string, unknown> = {}
    for (const [k, v] of Object.entries(r)) if (v !== undefined) out[k] = v
    return out as unknown as Spec
  })

type Lines = [name: string, value: string][]

function authorizationValue(fx: Fixtures, scheme: string, token: TokenName | 'empty'): string {
  return token === 'empty' ? '' : `${scheme}${fx.tokens[token]}`
}

function xfccValue(fx: Fixtures, spec: Spec): string[] {
  const element = (cert: CertName) => {
    const subject = cert === 'workload' ? 'CN=orders,O=acme' : `CN=${cert},O=acme`
    const uri = cert === 'workload' ? ';URI=spiffe://prod.example/ns/pay/sa/api' : ''
    return `Hash=${fx.hashes[cert]};Subject="${subject}"${uri}`
  }
  const own = element(spec.xfcc!)
  if (!spec.xfccAppended) return [own]
  // the element a client sent, then the one the trusted hop appended (the rightmost is the one believed)
  const client = element('gateway')
  return spec.xfccTwoLines ? [client, own] : [`${client},${own}`]
}

/** the request's field lines as an HTTP/1.1 client writes them (Host first), without Connection */
async function linesOf(spec: Spec, fx: Fixtures, requestId: string): Promise<Lines> {
  const lines: Lines = [
    ['Host', AUTHORITY],
    ['x-request-id', requestId],
  ]
  if (spec.emptyAuthorization) lines.push(['Authorization', ''])
  if (spec.token !== undefined) lines.push(['Authorization', authorizationValue(fx, spec.scheme, spec.token)])
  if (spec.secondAuthorization !== undefined)
    lines.push(['authorization', authorizationValue(fx, 'Bearer ', spec.secondAuthorization)])
  if (spec.apiKey !== undefined) {
    const key = KEYS[spec.apiKey]
    const names =
      spec.keySpelling === 'both' ? ['x-api-key', 'x_api_key'] : ([spec.keySpelling] as readonly string[])
    for (const name of names) {
      lines.push([name, key])
      if (spec.secondKey !== undefined) lines.push([name, KEYS[spec.secondKey]])
    }
  }
  if (spec.userAgent !== undefined) lines.push(['User-Agent', USER_AGENTS[spec.userAgent]!])
  if (spec.secondUserAgent !== undefined) lines.push(['user-agent', USER_AGENTS[spec.secondUserAgent]!])
  if (spec.forwardedFor !== undefined) {
    // the client's own entry first, then the one the trusted proxy appended (the rightmost is the client)
    const appended = FORWARDED_FOR[spec.forwardedFor.from]
    if (spec.forwardedFor.twoLines)
      lines.push(['X-Forwarded-For', '198.51.100.7'], ['X-Forwarded-For', appended])
    else lines.push(['X-Forwarded-For', `198.51.100.7, ${appended}`])
  }
  if (spec.xfcc !== undefined)
    for (const value of xfccValue(fx, spec)) lines.push(['X-Forwarded-Client-Cert', value])
  if (spec.clientCertHeader !== undefined)
    lines.push(['Client-Cert', `:${fx.ders[spec.clientCertHeader].toString('base64')}:`])
  if (spec.nginxCert !== undefined) {
    const pem = encodeURIComponent(fx.certs[spec.nginxCert.cert].certPem)
    if (spec.nginxCert.twoLines)
      lines.push(['X-SSL-Client-Cert', encodeURIComponent(fx.certs.gateway.certPem)])
    lines.push(['X-SSL-Client-Cert', pem])
  }
  for (const i of spec.spoofs) lines.push(SPOOFS[i]!)
  if (spec.cookies !== undefined) {
    const crumbs = Array.from({ length: spec.cookies.count }, (_, i) => `c${i}=v${i}`)
    if (spec.cookies.withToken) crumbs.splice(1, 0, `session=${fx.tokens.valid}`)
    if (spec.cookies.twoLines && crumbs.length > 1) {
      lines.push(['Cookie', crumbs.slice(0, 1).join('; ')], ['Cookie', crumbs.slice(1).join('; ')])
    } else lines.push(['Cookie', crumbs.join('; ')])
  }
  if (spec.signature !== undefined) {
    const signed = spec.signature === 'with-agent' ? await fx.signWithAgent() : fx.signatures[spec.signature]
    for (const [name, value] of Object.entries(signed)) {
      if (name === 'signature-agent' && spec.agentTwoLines) lines.push([name, '"https://elsewhere.example"'])
      lines.push([name, value])
    }
  }
  if (spec.method === 'POST') lines.push(['Content-Length', String(BODY.length)])
  if (spec.method === 'POST' && spec.expectContinue) lines.push(['Expect', '100-continue'])
  if (spec.tenant !== undefined) lines.push([spec.tenant.name, spec.tenant.value])
  for (const value of spec.single?.values ?? []) lines.push([spec.single!.name, value])
  return lines
}

/** the same request as an HTTP/2 client writes it (H2_SPELLINGS) */
function h2Fields(spec: Spec, lines: Lines, scheme: 'http' | 'https'): Lines {
  const out: Lines = [
    [':method', spec.method],
    [':scheme', scheme],
    [':path', spec.path],
  ]
  if (spec.h2Host !== 'host') out.push([':authority', AUTHORITY])
  for (const [name, value] of lines) {
    const lower = name.toLowerCase()
    if (lower === 'host') {
      if (spec.h2Host !== 'authority') out.push(['host', value])
    } else if (lower === 'cookie') {
      for (const crumb of value.split('; ')) out.push(['cookie', crumb])
    } else out.push([lower, value])
  }
  return out
}

// ---- the four protocols

const PROTOCOLS = ['h1', 'h2c', 'h1-tls', 'h2-tls'] as const
type Protocol = (typeof PROTOCOLS)[number]

interface Sidecar {
  httpPort: number
  httpsPort: number
  adminUrl: string
}

function openSocket(
  sidecar: Sidecar,
  protocol: Protocol,
  spec: Spec,
  fx: Fixtures,
): { socket: Socket; ready: Promise<unknown> } {
  const localAddress = PEERS[spec.peer]
  if (protocol === 'h1' || protocol === 'h2c') {
    const socket = tcpConnect({ host: '127.0.0.1', port: sidecar.httpPort, localAddress })
    return { socket, ready: once(socket, 'connect') }
  }
  const cert = spec.clientCert === undefined ? undefined : fx.certs[spec.clientCert]
  const socket = tlsConnect({
    socket: tcpConnect({ host: '127.0.0.1', port: sidecar.httpsPort, localAddress }),
    servername: 'localhost',
    ca: fx.serverCaPem,
    ALPNProtocols: [protocol === 'h2-tls' ? 'h2' : 'http/1.1'],
    ...(cert === undefined ? {} : { cert: cert.certPem, key: cert.keyPem }),
  })
  return { socket, ready: once(socket, 'secureConnect') }
}

/**
 * Sends the request alone on a new connection and resolves, once its answer is complete, with the status the
 * client read (undefined when it read none: a reset stream, a closed connection) and what it read, for a
 * failure's message.
 */
async function send(
  sidecar: Sidecar,
  protocol: Protocol,
  spec: Spec,
  lines: Lines,
  fx: Fixtures,
): Promise<{ status: number | undefined; raw: string }> {
  const { socket, ready } = openSocket(sidecar, protocol, spec, fx)
  socket.on('error', () => {})
  let received = Buffer.alloc(0)
  socket.on('data', (c: Buffer) => {
    received = Buffer.concat([received, c])
  })
  const closed = once(socket, 'close')
  try {
    await ready
    if (protocol === 'h1' || protocol === 'h1-tls') {
      // llhttp refuses a Content-Length with a tab after it (400): framing, which is not what is compared here
      const pad = (name: string) => (name === 'Content-Length' ? '' : (spec.padded ?? ''))
      const head = lines.map(([name, value]) => `${name}:${pad(name)}${value}${pad(name)}\r\n`).join('')
      const target = spec.absoluteForm
        ? `${protocol === 'h1' ? 'http' : 'https'}://${AUTHORITY}${spec.path}`
        : spec.path
      const body = spec.method === 'POST' ? BODY : ''
      socket.write(`${spec.method} ${target} HTTP/1.1\r\n${head}Connection: close\r\n\r\n${body}`, 'latin1')
      await closed
      const raw = received.toString('latin1')
      // the final status, after any 100 Continue
      const statusLine = /(?:^|\r\n)HTTP\/1\.1 ([2-5]\d\d) /.exec(raw)
      return { status: statusLine === null ? undefined : Number(statusLine[1]), raw }
    }
    const fields = h2Fields(spec, lines, protocol === 'h2c' ? 'http' : 'https')
    socket.write(
      Buffer.concat([
        PREFACE,
        frame(FRAME.SETTINGS, 0, 0, Buffer.alloc(0)),
        ...(spec.method === 'POST'
          ? [
              frame(FRAME.HEADERS, FLAG.END_HEADERS, 1, headerBlock(fields)),
              frame(FRAME.DATA, FLAG.END_STREAM, 1, Buffer.from(BODY)),
            ]
          : [frame(FRAME.HEADERS, FLAG.END_STREAM | FLAG.END_HEADERS, 1, headerBlock(fields))]),
      ]),
    )
    // the stream's end: a frame of stream 1 with END_STREAM, its reset, or the connection's end; the status
    // is the first field of its HEADERS
    let status: number | undefined
    await eventually(
      () => {
        for (let at = 0; at + 9 <= received.length; ) {
          const length = received.readUIntBE(at, 3)
          const type = received[at + 3]
          const flags = received[at + 4]!
          const id = received.readUInt32BE(at + 5) & 0x7fffffff
          if (at + 9 + length > received.length) break
          if (id === 1 && type === FRAME.HEADERS && status === undefined) {
            // the final status, after any 100 Continue
            const read = responseStatus(received.subarray(at + 9, at + 9 + length))
            if (read === undefined || read >= 200) status = read
          }
          if (id === 1 && (type === FRAME.RST_STREAM || (flags & FLAG.END_STREAM) !== 0)) return true
          if (type === FRAME.GOAWAY) return true
          at += 9 + length
        }
        return socket.destroyed
      },
      { what: `the answer over ${protocol}` },
    )
    return { status, raw: received.toString('hex') }
  } finally {
    socket.destroy()
  }
}

// ---- what an exchange is judged by

/**
 * What the upstream got that belongs to the exchange, not the request: `x-request-id` and `traceparent` (each
 * exchange's own), `x-forwarded-proto` and `forwarded` (the listener's scheme: `http` or `https`), and
 * `connection` (`Connection: close` ends the HTTP/1.1 exchanges' connections, HTTP/2 has none). Every other
 * field must reach it alike.
 */
const UPSTREAM_PER_EXCHANGE = ['x-request-id', 'traceparent', 'x-forwarded-proto', 'forwarded', 'connection']

interface Seen {
  audit: Record<string, unknown>
  /** undefined: the request did not reach the upstream */
  upstream: Record<string, unknown> | undefined
  /** the nhi_requests_total series that moved, and by how much */
  series: Record<string, number>
}

/**
 * The request's audit line, from the admin's ring (/audit), which has it once recorded: the output gets it
 * with the next batch, up to AUDIT_FLUSH_MS later.
 */
async function auditLine(adminUrl: string, requestId: string): Promise<Record<string, unknown> | undefined> {
  const res = await fetch(`${adminUrl}/audit?request_id=${encodeURIComponent(requestId)}`)
  const { events } = (await res.json()) as { events: Record<string, unknown>[] }
  return events[0]
}

const seriesKey = (labels: Record<string, string>) =>
  Object.entries(labels)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k}=${v}`)
    .join(',')

async function requestSeries(adminUrl: string): Promise<Map<string, number>> {
  const out = new Map<string, number>()
  for (const s of await scrape(adminUrl))
    if (s.name === 'nhi_requests_total') out.set(seriesKey(s.labels), s.value)
  return out
}

/** what differs between two exchanges' Seen, field by field */
function differences(a: Seen, b: Seen): string[] {
  const out: string[] = []
  const part = (
    what: string,
    x: Record<string, unknown> | undefined,
    y: Record<string, unknown> | undefined,
  ) => {
    if (x === undefined || y === undefined) {
      if (x !== y) out.push(`${what}: ${JSON.stringify(x)} vs ${JSON.stringify(y)}`)
      return
    }
    for (const key of new Set([...Object.keys(x), ...Object.keys(y)]))
      if (JSON.stringify(x[key]) !== JSON.stringify(y[key]))
        out.push(`${what}.${key}: ${JSON.stringify(x[key])} vs ${JSON.stringify(y[key])}`)
  }
  part('audit', a.audit, b.audit)
  part('upstream', a.upstream, b.upstream)
  part('series', a.series, b.series)
  return out
}

const total = (m: Map<string, number>) => [...m.values()].reduce((a, b) => a + b, 0)

// ---- the run

interface Running {
  sidecar: Sidecar
  upstream: Awaited<ReturnType<typeof startUpstream>>
  fx: Fixtures
  series: Map<string, number>
  exchanges: number
}

async function exchange(r: Running, spec: Spec, protocol: Protocol, requestId: string): Promise<Seen> {
  const lines = await linesOf(spec, r.fx, requestId)
  const answer = await send(r.sidecar, protocol, spec, lines, r.fx)
  const audit = await eventually(() => auditLine(r.sidecar.adminUrl, requestId), {
    what: `the audit line of ${requestId} ${JSON.stringify(spec)}: ${JSON.stringify(answer.raw.slice(0, 300))}`,
  })
  r.exchanges++
  // the request is counted when its response closes, about when the audit line is written
  const after = await eventually(
    async () => {
      const m = await requestSeries(r.sidecar.adminUrl)
      return total(m) >= r.exchanges && m
    },
    { what: `nhi_requests_total at ${r.exchanges}` },
  )
  const series: Record<string, number> = {}
  for (const [key, value] of after) {
    const moved = value - (r.series.get(key) ?? 0)
    if (moved !== 0) series[key] = moved
  }
  r.series = after
  const received = r.upstream.received.find((x) => x.headers['x-request-id'] === requestId)
  // a signature made for this exchange (its own nonce) is compared by whether it reached the upstream as sent
  const sentOnce = (name: string) => lines.find(([n]) => n === name)?.[1]
  const upstream =
    received === undefined
      ? undefined
      : Object.fromEntries(
          Object.entries(received.headers)
            .filter(([name]) => !UPSTREAM_PER_EXCHANGE.includes(name))
            .map(([name, value]) =>
              (name === 'signature' || name === 'signature-input') && value === sentOnce(name)
                ? [name, 'as sent']
                : [name, value],
            )
            .sort(([a], [b]) => String(a).localeCompare(String(b))),
        )
  const compared = { ...audit }
  for (const field of AUDIT_PER_EXCHANGE) delete compared[field]
  compared['anomalies'] = (audit['anomalies'] as string[]).filter((a) => !HISTORY_ANOMALIES.includes(a))
  // the status the client read must be the line's: a disagreement shows as a field the other exchanges lack
  if (answer.status !== audit['status']) compared['answered'] = answer.status ?? 'nothing'
  return { audit: compared, upstream, series }
}

async function makeFixtures(t: Test) {
  const key = await createSigningKey('k1', 'ES256')
  const other = await createSigningKey('k1', 'ES256')
  const jwks = await startJwksServer([key])
  t.teardown(() => jwks.close())
  const workloadClaims = { sub: 'system:serviceaccount:pay:api', team: 'pay' }
  const mint = (
    opts: { audience?: string; expiresIn?: number } = {},
    claims = workloadClaims,
    signer = key,
  ) => mintToken(signer, claims, { issuer: ISSUER, audience: 'orders', ...opts })
  const tokens: Record<TokenName, string> = {
    valid: await mint(),
    expired: await mint({ expiresIn: -60 }),
    audience: await mint({ audience: 'billing' }),
    forged: await mint({}, workloadClaims, other),
    malformed: 'not.a-jwt',
    admin: await mint({}, { sub: 'admin', team: 'platform' }),
  }

  const { ca: serverCa, server } = await createServerPki()
  const clientCa = await createCA('protocol-client-ca')
  const strangerCa = await createCA('protocol-stranger-ca')
  const [workload, gateway, stranger] = await Promise.all([
    issueCert(clientCa, {
      subject: '/O=acme/CN=orders',
      uriSans: ['spiffe://prod.example/ns/pay/sa/api'],
    }),
    issueCert(clientCa, { subject: '/O=acme/CN=gateway', dnsSans: ['gateway.acme.example'] }),
    issueCert(strangerCa, { subject: '/O=acme/CN=stranger' }),
  ])
  const certs = { workload, gateway, stranger }
  const ders = {
    workload: pemCertificates(workload.certPem)[0]!.raw,
    gateway: pemCertificates(gateway.certPem)[0]!.raw,
    stranger: pemCertificates(stranger.certPem)[0]!.raw,
  }
  const hashes = {
    workload: sha256Hex(ders.workload),
    gateway: sha256Hex(ders.gateway),
    stranger: sha256Hex(ders.stranger),
  }

  const agent = await createAgentKey()
  const directory = await startKeyDirectory([agent])
  t.teardown(() => directory.close())
  const now = Math.floor(Date.now() / 1000)
  // long enough for any run: a signature's validity is not what is tested here
  const params = `;created=${now};expires=${now + 3600};keyid="${agent.keyid}";tag="web-bot-auth"`
  const fx: Fixtures = {
    tokens,
    certs,
    ders,
    hashes,
    serverCaPem: serverCa.certPem,
    signatures: {
      valid: signWithParams(agent, `http://${AUTHORITY}/`, params),
      'other-site': signWithParams(agent, 'http://elsewhere.example/', params),
    },
    signWithAgent: () =>
      signRequest(agent, `http://${AUTHORITY}/`, { agent: JSON.stringify(directory.origin) }),
  }
  const shared = {
    service: 'orders',
    listen: mtlsListen(server, clientCa, 'optional'),
    apiKeys: {
      keys: [
        { name: 'deploy', kind: 'job', sha256: sha256Hex(KEYS.deploy) },
        { name: 'ci-runner', sha256: sha256Hex(KEYS.ci) },
      ],
    },
    signedAgents: {
      directories: [
        { url: directory.url, name: 'agent.example', operator: 'Example AI', purpose: 'assistant' },
      ],
      authorities: [AUTHORITY],
    },
    metrics: { routes: ['/api/{svc}/**', '/admin/**'] },
  }
  const issuer = { issuer: ISSUER, jwksUri: jwks.jwksUri, audiences: ['orders'] }
  const configs: Record<Spec['config'], Record<string, unknown>> = {
    // enforced, invalid tokens attributed, rules on credentials and a header
    strict: {
      ...shared,
      jwt: { issuers: [issuer] },
      forwardedClientCert: { trustedProxies: TRUSTED_PROXIES },
      identities: [
        { name: '{ns}/{sa}', team: 'platform', match: { spiffe: 'spiffe://prod.example/ns/{ns}/sa/{sa}' } },
        { name: 'edge/{cn}', match: { source: 'xfcc', cert: { subject: 'CN={cn},O=acme' } } },
        { name: 'jwt:{team}', match: { jwt: { issuer: ISSUER, claims: { team: '{team}' } } } },
        { name: 'deployer', kind: 'job', team: 'platform', match: { apiKey: 'deploy' } },
        { name: 'tenant/{tenant}', match: { header: { 'x-tenant': '{tenant}' } } },
      ],
      policy: {
        mode: 'enforce',
        rules: [
          { route: '/admin/**', allow: [{ team: 'platform' }] },
          { route: '/api/**', allow: [{ verified: true }, { kind: 'bot' }, { kind: 'human' }] },
        ],
      },
    },
    // invalid tokens refused (401), the policy observed, forwarded certificates passed on as sent, rules on
    // the host, a cookie, the method and the path
    lenient: {
      ...shared,
      jwt: { issuers: [{ ...issuer, profile: 'generic' }], onInvalid: 'reject' },
      forwardedClientCert: {
        trustedProxies: TRUSTED_PROXIES,
        toUpstream: 'forward',
      },
      identities: [
        { name: 'host/{host}', match: { header: { host: '{host}' }, path: '/admin/**' } },
        { name: 'session-holder', kind: 'human', match: { header: { cookie: '*session=*' } } },
        { name: 'deleter', match: { method: ['DELETE', 'POST'], source: 'jwt' } },
        { name: 'svc/{cn}', match: { cert: { subject: 'CN={cn},O=acme' }, verified: true } },
        { name: 'private-browser', kind: 'human', match: { header: { dnt: '1' } } },
        { name: 'navigating/{v}', match: { header: { 'upgrade-insecure-requests': '{v}' } } },
      ],
      policy: {
        mode: 'observe',
        rules: [{ route: '/admin/**', allow: [{ verified: true, kind: 'service' }] }],
      },
    },
  }
  return { fx, configs }
}

/**
 * The disagreements the generated requests found, each fixed; then what they reach too seldom to count on (a
 * crawler verified by the address a trusted proxy forwards for it).
 */
const HAND_WRITTEN: { what: string; spec: Spec }[] = [
  {
    what: 'a rule on a field that is no list, sent in two lines (node:http2 kept the first, node:http joins them)',
    spec: {
      config: 'lenient',
      method: 'GET',
      peer: 'direct',
      path: '/',
      scheme: 'Bearer ',
      keySpelling: 'x-api-key',
      userAgent: 4,
      spoofs: [],
      single: { name: 'dnt', values: ['1', '1'] },
      h2Host: 'authority',
    },
  },
  {
    what: 'a rule capturing a field that is no list, sent in two lines, from a client certificate holder',
    spec: {
      config: 'lenient',
      method: 'GET',
      peer: 'direct',
      path: '/api/orders/1',
      scheme: 'Bearer ',
      keySpelling: 'x-api-key',
      userAgent: 4,
      spoofs: [],
      single: { name: 'upgrade-insecure-requests', values: ['1', '0'] },
      clientCert: 'stranger',
      h2Host: 'both',
    },
  },
  {
    what: 'a repeated Server field (node:http keeps the first line, node:http2 joined them)',
    spec: {
      config: 'lenient',
      method: 'GET',
      peer: 'envoy',
      path: '/',
      scheme: 'Bearer ',
      keySpelling: 'x-api-key',
      spoofs: [],
      single: { name: 'server', values: ['a', 'b'] },
      h2Host: 'host',
    },
  },
  {
    what: 'Googlebot behind the trusted Envoy, which forwards for an address in its ranges (two X-Forwarded-For lines)',
    spec: {
      config: 'strict',
      method: 'GET',
      peer: 'envoy',
      path: '/api/orders/1',
      scheme: 'Bearer ',
      keySpelling: 'x-api-key',
      userAgent: 0,
      forwardedFor: { from: 'google', twoLines: true },
      spoofs: [],
      h2Host: 'authority',
    },
  },
  {
    what: 'GPTBot behind the trusted load balancer, which forwards for an address in its ranges',
    spec: {
      config: 'lenient',
      method: 'HEAD',
      peer: 'edge',
      path: '/',
      scheme: 'Bearer ',
      keySpelling: 'x-api-key',
      userAgent: 1,
      forwardedFor: { from: 'openai', twoLines: false },
      spoofs: [],
      clientCert: 'gateway',
      h2Host: 'both',
    },
  },
]

/** the protocols a request goes over: a client certificate needs TLS */
const protocolsOf = (spec: Spec): readonly Protocol[] =>
  spec.clientCert === undefined ? PROTOCOLS : ['h1-tls', 'h2-tls']

t.test('the generator reaches the cases that matter', async (t) => {
  checkBothSides(t, specArb, (s) => s.clientCert !== undefined, [700, 1300], 'requests with a client cert')
  checkBothSides(
    t,
    specArb,
    (s) =>
      (s.xfcc !== undefined && s.peer === 'envoy') ||
      (s.clientCertHeader !== undefined && s.peer === 'edge') ||
      (s.nginxCert !== undefined && s.peer === 'nginx'),
    [300, 900],
    'requests with a forwarded certificate from the peer trusted for its format',
  )
  checkBothSides(
    t,
    specArb,
    (s) =>
      s.secondAuthorization !== undefined || s.secondKey !== undefined || s.secondUserAgent !== undefined,
    [700, 1700],
    'requests with a credential field in two lines',
  )
})

t.test('every protocol attributes the same request alike', async (t) => {
  const began = Date.now()
  const { fx, configs } = await makeFixtures(t)
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const running = {} as Record<Spec['config'], Running>
  for (const name of ['strict', 'lenient'] as const) {
    const started = await startTestSidecar(t, { ...configs[name], upstream: upstream.url })
    const sidecar: Sidecar = {
      httpPort: started.proxyAddress.port,
      httpsPort: started.httpsAddress!.port,
      adminUrl: started.adminUrl,
    }
    running[name] = { sidecar, upstream, fx, series: await requestSeries(sidecar.adminUrl), exchanges: 0 }
  }
  const identities = new Set<string>()
  let bodies = 0
  /** what differs between the exchanges of `spec` over its protocols, one line per protocol that differs */
  const across = async (spec: Spec, id: string): Promise<string[]> => {
    const seen = new Map<Protocol, Seen>()
    for (const protocol of protocolsOf(spec))
      seen.set(protocol, await exchange(running[spec.config], spec, protocol, `${id}-${protocol}`))
    const [[firstProtocol, first], ...rest] = [...seen.entries()] as [[Protocol, Seen], ...[Protocol, Seen][]]
    identities.add(`${first.audit['source']}:${first.audit['identity']}`)
    if (Number(first.audit['bytes_in']) > 0) bodies++
    const out: string[] = []
    for (const [protocol, other] of rest) {
      const differing = differences(first, other)
      if (differing.length > 0) out.push(`${firstProtocol} vs ${protocol}: ${differing.join('; ')}`)
    }
    return out
  }

  for (const [i, { what, spec }] of HAND_WRITTEN.entries())
    t.same(await across(spec, `found-${i}`), [], `${what}: alike over ${protocolsOf(spec).join(', ')}`)

  const specs = fc.sample(specArb, { numRuns: REQUESTS, seed: PROPERTY_SEED })
  const disagreements: string[] = []
  for (const [i, spec] of specs.entries()) {
    for (const line of await across(spec, `pd-${i}`))
      disagreements.push(`request ${i} ${JSON.stringify(spec)}\n  ${line}`)
  }
  t.same(
    disagreements.slice(0, 3),
    [],
    `no disagreement (${disagreements.length} of ${specs.length} requests)`,
  )
  t.ok(bodies > 0, `requests with a body that reached the upstream (${bodies})`)
  t.ok(
    [...identities].some((i) => i === 'useragent:googlebot' || i === 'useragent:gptbot'),
    'a crawler verified by the address a trusted proxy forwarded for',
  )
  t.ok(identities.size >= 6, `requests attributed to several identities: ${[...identities].join(' ')}`)
  t.comment(
    `${specs.length} requests (seed ${PROPERTY_SEED}), ${running.strict.exchanges + running.lenient.exchanges} ` +
      `exchanges in ${Date.now() - began} ms; ` +
      `h2 written with ${H2_SPELLINGS}`,
  )
})
