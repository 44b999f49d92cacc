// The OpenTelemetry export against the audit trail, generated: every exchange the audit records has exactly
// one span (unless its caller's traceparent said "not sampled", docs/reference.md "OpenTelemetry export":
// `parentbased_always_on`) and exactly one log record at a real OTLP/HTTP collector, and they say what its
// audit line says: trace id, span id, identity, decision, status, route and method; the log record's body
// is the audit line itself. A span missing, doubled, or carrying another request's identity or trace is a
// forensic gap.
//
// The built proxy (otlp.endpoint at the test's collector, otlp.logs on, an audit file, a policy enforced,
// identity rules, API keys, JWTs and client certificates) gets a seeded sequence of requests over HTTP/1.1
// and h2c, and over TLS (HTTP/1.1 or h2, with or without a client certificate), each with a credential from
// a small pool (valid, unknown, expired, forged, none), directly or through a trusted ingress, an incoming
// traceparent or none (valid sampled or not, of version 00 or a later one; invalid), a behaviour of its
// client (complete, leave mid-body, before the answer or mid-answer), on a connection of its own or one
// shared with other exchanges (HTTP/1.1 keep-alive, concurrent h2c streams), and a behaviour of the upstream
// (answers 2xx/4xx/5xx, slowly, resets mid-body, never answers until timeouts.upstream). Then: the
// multisets of (trace id, identity, decision, status, route, method) of the audit lines and of the spans
// (and of the log records) agree, every exchange matched by its path, with every other field the span and
// the log record share with the audit line; a valid incoming trace is continued (the span's trace, its
// parent the caller's span) and the upstream got a traceparent naming the span; no credential is in
// anything the collector received; nothing was dropped, and the export counters count what arrived.
// Hand-picked: the same with `workers: 2`, across a reload that moves the export to new settings between
// two halves of the sequence (nothing lost or sent twice by the retiring export), and across one while the
// exchanges are under way.
import { readFileSync } from 'node:fs'
import { Agent, request as httpRequest, type OutgoingHttpHeaders } from 'node:http'
import { type ClientHttp2Session, constants as h2, connect as h2connect } from 'node:http2'
import { request as httpsRequest } from 'node:https'
import { connect as netConnect } from 'node:net'
import { join } from 'node:path'
import fc from 'fast-check'
import t, { type Test } from 'tap'
import { sha256Hex } from '../../src/util/fingerprint.ts'
import { behavingUpstream } from '../helpers/behaving-upstream.ts'
import { eventually } from '../helpers/eventually.ts'
import { createSigningKey, mintToken, startJwksServer } from '../helpers/jwks.ts'
import { metricValue, scrapeUntil } from '../helpers/metrics.ts'
import {
  CLEAN_OTEL_ENV,
  type ReceivedLogRecord,
  type ReceivedSpan,
  startCollector,
  type TestCollector,
} from '../helpers/otlp-collector.ts'
import { createCA, createServerPki, issueCert, mtlsListen } from '../helpers/pki.ts'
import { PROPERTY_SEED } from '../helpers/property.ts'
import { scratchDir } from '../helpers/scratch.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

/** generated requests of the one-process run */
const REQUESTS = 48
/** requests under way at once */
const CONCURRENCY = 8
/** timeouts.upstream: where a `hang` upstream's exchange ends (504) */
const UPSTREAM_DEADLINE = '2s'
const ISSUER = 'https://idp.example'
/** the ingress in front of the proxy (forwardedClientCert.trustedProxies) */
const TRUSTED_PROXY = '127.0.0.2'
/** the client the ingress names */
const FORWARDED_CLIENT = '203.0.113.7'
const DEPLOY_KEY = 'deploy-key-5f1c0a77e2b94d0e'
const UNKNOWN_KEY = 'unknown-key-9b3e11d04c7a6f28'

// ---- the mix ------------------------------------------------------------------------------------------------

const CREDENTIALS = [
  'none',
  'user-agent',
  'apikey',
  'apikey-unknown',
  'jwt-pay',
  'jwt-platform',
  'jwt-expired',
  'jwt-forged',
] as const
type Credential = (typeof CREDENTIALS)[number]

/** the incoming traceparent: none, a valid one with its sampled flag set or not, or one that does not parse */
type Traceparent = 'none' | 'sampled' | 'unsampled' | 'invalid'
/** what the upstream does (header x-behave) */
type Behaviour = 'normal' | 'slow' | 'reset-mid-body' | 'hang' | 'hold' | 'stream'
/**
 * where the client is: connected directly, or behind an ingress the proxy trusts (TRUSTED_PROXY), which names
 * it in X-Forwarded-For
 */
type Via = 'direct' | 'ingress'
/**
 * what the client does: waits for the whole answer, leaves half-way through its request body, leaves before
 * the answer, or leaves once part of it came
 */
type ClientFault = 'complete' | 'leave-mid-body' | 'leave-before-answer' | 'leave-mid-answer'

interface Spec {
  protocol: 'h1' | 'h2'
  /** over the TLS listener (h2 by ALPN), with the workload's client certificate or without one */
  tls: boolean
  cert: boolean
  credential: Credential
  traceparent: Traceparent
  /** the incoming trace id and parent span id (a valid traceparent's) */
  traceId: string
  parentId: string
  /**
   * the flag byte of a valid traceparent, its sampled bit as `traceparent` says; the other bits are the
   * random flag and bits no version defines yet
   */
  flags: string
  /** a valid traceparent of a later version, with a field after the flags */
  later: boolean
  area: 'api' | 'admin' | 'public'
  method: 'GET' | 'POST'
  behaviour: Behaviour
  status: number
  delayMs: number
  client: ClientFault
  via: Via
  /**
   * on a connection other exchanges use too, one after the other (HTTP/1.1 keep-alive) or at once (h2c
   * streams): what the proxy keeps per connection must not leak into another exchange's record
   */
  shared: boolean
}

const weighted = <T>(...choices: [T, number][]) =>
  fc.oneof(...choices.map(([value, weight]) => ({ arbitrary: fc.constant(value), weight })))
const hex = (n: number) =>
  fc.array(fc.constantFrom(...'0123456789abcdef'), { minLength: n, maxLength: n }).map((cs) => cs.join(''))

const drawnSpec: fc.Arbitrary<Spec> = fc
  .record({
    protocol: weighted<Spec['protocol']>(['h1', 1], ['h2', 1]),
    // valid credentials more often: a denied request never reaches the upstream's behaviours
    credential: weighted<Credential>(
      ['none', 1],
      ['user-agent', 1],
      ['apikey', 3],
      ['apikey-unknown', 1],
      ['jwt-pay', 3],
      ['jwt-platform', 3],
      ['jwt-expired', 1],
      ['jwt-forged', 1],
    ),
    traceparent: weighted<Traceparent>(['none', 3], ['sampled', 3], ['unsampled', 2], ['invalid', 1]),
    traceId: hex(32),
    parentId: hex(16),
    otherFlags: fc.constantFrom(0x00, 0x02, 0x80, 0xfe),
    later: weighted([false, 3], [true, 1]),
    area: weighted<Spec['area']>(['api', 3], ['admin', 2], ['public', 1]),
    method: weighted<Spec['method']>(['GET', 2], ['POST', 1]),
    behaviour: weighted<Behaviour>(['normal', 8], ['slow', 3], ['reset-mid-body', 2], ['hang', 1]),
    status: weighted([200, 6], [404, 1], [503, 1]),
    delayMs: fc.integer({ min: 1, max: 150 }),
    client: weighted<ClientFault>(
      ['complete', 6],
      ['leave-mid-body', 1],
      ['leave-before-answer', 1],
      ['leave-mid-answer', 1],
    ),
    via: weighted<Via>(['direct', 3], ['ingress', 1]),
    shared: fc.boolean(),
    tls: weighted([false, 3], [true, 1]),
    cert: fc.boolean(),
  })
  .map((s) => {
    // a client that leaves needs an upstream still at it: one that holds the request, or streams its answer
    const behaviour: Behaviour =
      s.client === 'leave-before-answer' || s.client === 'leave-mid-body'
        ? 'hold'
        : s.client === 'leave-mid-answer'
          ? 'stream'
          : s.behaviour
    const method = s.client === 'leave-mid-body' ? 'POST' : s.method
    const { otherFlags, ...rest } = s
    const flags = (otherFlags | (s.traceparent === 'unsampled' ? 0 : 1)).toString(16).padStart(2, '0')
    return {
      ...rest,
      // over TLS: from the client itself, on a connection of its own
      via: s.tls ? 'direct' : s.via,
      cert: s.tls && s.cert,
      // a client that leaves mid-body drops its connection, and an HTTP/1.1 client that leaves its connection
      shared:
        !s.tls &&
        s.shared &&
        (s.client === 'complete' || (s.protocol === 'h2' && s.client !== 'leave-mid-body')),
      method,
      flags,
      behaviour,
      status: behaviour === 'normal' || behaviour === 'slow' ? s.status : 200,
    }
  })

/** one of each client behaviour over each protocol, with credentials, traces and upstreams around them */
const HAND_PICKED: Spec[] = (() => {
  const base: Omit<
    Spec,
    | 'protocol'
    | 'credential'
    | 'traceparent'
    | 'area'
    | 'behaviour'
    | 'client'
    | 'via'
    | 'flags'
    | 'shared'
    | 'tls'
    | 'cert'
  > = {
    traceId: '',
    parentId: '',
    later: false,
    method: 'GET',
    status: 200,
    delayMs: 20,
  }
  const rows: [Credential, Traceparent, Spec['area'], Behaviour, ClientFault][] = [
    ['apikey', 'sampled', 'api', 'normal', 'complete'],
    ['jwt-pay', 'none', 'api', 'slow', 'complete'],
    ['jwt-platform', 'unsampled', 'admin', 'normal', 'complete'],
    ['jwt-pay', 'sampled', 'admin', 'normal', 'complete'],
    ['apikey-unknown', 'invalid', 'api', 'normal', 'complete'],
    ['jwt-expired', 'sampled', 'public', 'reset-mid-body', 'complete'],
    ['jwt-forged', 'none', 'public', 'normal', 'complete'],
    ['user-agent', 'sampled', 'public', 'hang', 'complete'],
    ['apikey', 'none', 'api', 'hold', 'leave-before-answer'],
    ['jwt-pay', 'sampled', 'api', 'hold', 'leave-mid-body'],
    ['jwt-platform', 'sampled', 'admin', 'stream', 'leave-mid-answer'],
    ['none', 'unsampled', 'public', 'normal', 'complete'],
    ['apikey', 'sampled', 'public', 'slow', 'complete'],
  ]
  const specs: Spec[] = []
  let i = 0
  for (const protocol of ['h1', 'h2'] as const) {
    for (const [credential, traceparent, area, behaviour, client] of rows) {
      i++
      specs.push({
        ...base,
        protocol,
        credential,
        traceparent,
        area,
        behaviour,
        client,
        method: client === 'leave-mid-body' ? 'POST' : 'GET',
        via: i % 3 === 0 && i % 4 !== 1 ? 'ingress' : 'direct',
        shared: client === 'complete' && i % 2 === 0,
        tls: i % 4 === 1,
        cert: i % 8 === 1,
        status: i % 5 === 0 ? 503 : 200,
        flags: traceparent === 'unsampled' ? '00' : '01',
        traceId: i.toString(16).padStart(32, 'c'),
        parentId: i.toString(16).padStart(16, 'd'),
      })
    }
  }
  return specs
})()

/** the traceparent a spec's client sends, if any */
function incoming(s: Spec): string | undefined {
  switch (s.traceparent) {
    case 'none':
      return undefined
    case 'sampled':
    case 'unsampled':
      return s.later
        ? `cc-${s.traceId}-${s.parentId}-${s.flags}-later`
        : `00-${s.traceId}-${s.parentId}-${s.flags}`
    case 'invalid':
      // upper-case hex: not a traceparent (W3C Trace Context), a new trace is started
      return `00-${s.traceId.toUpperCase().replace(/^./, 'A')}-${s.parentId}-01`
  }
}

// ---- credentials --------------------------------------------------------------------------------------------

interface Pool {
  headers: Record<Credential, Record<string, string>>
  /** every credential sent, for the search of what the collector received */
  secrets: string[]
}

async function credentialPool(t: Test): Promise<{ pool: Pool; jwksUri: string }> {
  const key = await createSigningKey('k1', 'ES256')
  const other = await createSigningKey('k1', 'ES256')
  const jwks = await startJwksServer([key])
  t.teardown(() => jwks.close())
  const mint = (claims: Record<string, string>, opts: { expiresIn?: number } = {}, signer = key) =>
    mintToken(signer, claims, { issuer: ISSUER, audience: 'orders', ...opts })
  const tokens = {
    pay: await mint({ sub: 'pay-api', team: 'pay' }),
    platform: await mint({ sub: 'platform-api', team: 'platform' }),
    expired: await mint({ sub: 'pay-api', team: 'pay' }, { expiresIn: -60 }),
    forged: await mint({ sub: 'pay-api', team: 'pay' }, {}, other),
  }
  const bearer = (token: string) => ({ authorization: `Bearer ${token}` })
  const headers: Pool['headers'] = {
    none: {},
    'user-agent': { 'user-agent': 'curl/8.5.0' },
    apikey: { 'x-api-key': DEPLOY_KEY },
    'apikey-unknown': { 'x-api-key': UNKNOWN_KEY },
    'jwt-pay': bearer(tokens.pay),
    'jwt-platform': bearer(tokens.platform),
    'jwt-expired': bearer(tokens.expired),
    'jwt-forged': bearer(tokens.forged),
  }
  const secrets = [DEPLOY_KEY, UNKNOWN_KEY]
  // a token whole, and its signature alone
  for (const token of Object.values(tokens)) secrets.push(token, token.slice(token.lastIndexOf('.') + 1))
  return { pool: { headers, secrets }, jwksUri: jwks.jwksUri }
}

// ---- the upstream -------------------------------------------------------------------------------------------

interface DiffUpstream {
  url: string
  /** the traceparent each request arrived with, by path */
  traceparents: Map<string, string>
  /** paths whose request arrived whole */
  whole: Set<string>
  /** request body bytes read, by path */
  bodyBytes: Map<string, number>
  /** paths whose answer head a client has read */
  headSeen: Set<string>
}

async function diffUpstream(t: Test): Promise<DiffUpstream> {
  const traceparents = new Map<string, string>()
  const headSeen = new Set<string>()
  const upstream = await behavingUpstream(t, headSeen, (req) =>
    traceparents.set(req.url ?? '', String(req.headers.traceparent ?? '')),
  )
  return { ...upstream, traceparents, headSeen }
}

// ---- the clients --------------------------------------------------------------------------------------------

interface Run {
  proxyPort: number
  proxyUrl: string
  httpsPort: number
  tls: TlsMaterial
  upstream: DiffUpstream
  pool: Pool
  /** the connections shared exchanges use, per place of the client: HTTP/1.1 keep-alive, h2c sessions */
  agents: Map<Via, Agent>
  sessions: Map<Via, ClientHttp2Session>
}

function newRun(
  sidecar: { proxyAddress: { port: number }; proxyUrl: string; httpsAddress?: { port: number } },
  setup: Setup,
): Run {
  return {
    proxyPort: sidecar.proxyAddress.port,
    proxyUrl: sidecar.proxyUrl,
    httpsPort: sidecar.httpsAddress!.port,
    tls: setup.tls,
    upstream: setup.upstream,
    pool: setup.pool,
    agents: new Map(),
    sessions: new Map(),
  }
}

/** what a TLS client verifies the proxy with, and shows it when it has a certificate */
function tlsOptions(run: Run, s: Spec) {
  return {
    ca: run.tls.ca,
    servername: 'localhost',
    ...(s.cert ? { cert: run.tls.cert, key: run.tls.key } : {}),
  }
}

/** a new h2c session from where the client is, or an h2 session over TLS */
function h2session(run: Run, via: Via, s?: Spec): ClientHttp2Session {
  if (s?.tls) {
    const session = h2connect(`https://127.0.0.1:${run.httpsPort}`, tlsOptions(run, s))
    session.on('error', () => {})
    return session
  }
  const session = h2connect(
    run.proxyUrl,
    via === 'ingress'
      ? {
          createConnection: () =>
            netConnect({ host: '127.0.0.1', port: run.proxyPort, localAddress: TRUSTED_PROXY }),
        }
      : {},
  )
  session.on('error', () => {})
  return session
}

function sharedSession(run: Run, via: Via): ClientHttp2Session {
  let session = run.sessions.get(via)
  if (session === undefined || session.closed || session.destroyed) {
    session = h2session(run, via)
    run.sessions.set(via, session)
  }
  return session
}

function sharedAgent(run: Run, via: Via): Agent {
  let agent = run.agents.get(via)
  if (agent === undefined) {
    agent = new Agent({
      keepAlive: true,
      maxSockets: 2,
      ...(via === 'ingress' ? { localAddress: TRUSTED_PROXY } : {}),
    })
    run.agents.set(via, agent)
  }
  return agent
}

/** closes the shared connections */
async function endShared(run: Run): Promise<void> {
  for (const agent of run.agents.values()) agent.destroy()
  run.agents.clear()
  await Promise.all(
    [...run.sessions.values()].map(
      (session) => new Promise<void>((done) => (session.closed ? done() : session.close(() => done()))),
    ),
  )
  run.sessions.clear()
}

/** a wait inside an exchange: bounded, named after it */
const until = (what: string, probe: () => boolean) => eventually(probe, { intervalMs: 5, what })

function requestHeaders(run: Run, s: Spec): Record<string, string> {
  const headers: Record<string, string> = {
    'x-behave': s.behaviour,
    'x-status': String(s.status),
    'x-delay': String(s.delayMs),
    ...run.pool.headers[s.credential],
  }
  const traceparent = incoming(s)
  if (traceparent !== undefined) headers['traceparent'] = traceparent
  if (s.via === 'ingress') headers['x-forwarded-for'] = FORWARDED_CLIENT
  return headers
}

const BODY = Buffer.alloc(2048, 0x62)
/** what a client that leaves mid-body sends of it */
const HALF = BODY.subarray(0, BODY.length / 2)

async function h1Exchange(run: Run, s: Spec, path: string): Promise<void> {
  const headers: OutgoingHttpHeaders = requestHeaders(run, s)
  if (s.method === 'POST') headers['content-length'] = BODY.length
  const seen = { status: 0, data: 0, closed: false }
  const req = (s.tls ? httpsRequest : httpRequest)({
    host: '127.0.0.1',
    port: s.tls ? run.httpsPort : run.proxyPort,
    method: s.method,
    path,
    headers,
    ...(s.tls ? tlsOptions(run, s) : {}),
    ...(s.shared
      ? { agent: sharedAgent(run, s.via) }
      : { agent: false, ...(s.via === 'ingress' ? { localAddress: TRUSTED_PROXY } : {}) }),
  })
  const done = () => {
    seen.closed = true
  }
  // on a connection of its own the exchange ends with it; on a shared one, with its answer
  req.on('error', done)
  req.on('socket', (socket) => socket.once('close', done))
  req.on('response', (res) => {
    seen.status = res.statusCode ?? 0
    run.upstream.headSeen.add(path)
    res.on('data', (c: Buffer) => {
      seen.data += c.length
    })
    res.on('error', () => {})
    if (s.shared) res.once('close', done)
  })
  if (s.client === 'leave-mid-body') req.write(HALF)
  else req.end(s.method === 'POST' ? BODY : undefined)
  await leaveAsPlanned(run, s, path, seen, () => req.destroy())
  await until(`${path}: the exchange to end`, () => seen.closed)
}

async function h2Exchange(run: Run, s: Spec, path: string): Promise<void> {
  if (s.shared) {
    await h2Stream(run, s, path, sharedSession(run, s.via))
    return
  }
  const session = h2session(run, s.via, s)
  let sessionClosed = false
  session.once('close', () => {
    sessionClosed = true
  })
  try {
    await h2Stream(run, s, path, session)
  } finally {
    session.close()
    await until(`${path}: the session to close`, () => sessionClosed).catch(() => session.destroy())
  }
}

async function h2Stream(run: Run, s: Spec, path: string, session: ClientHttp2Session): Promise<void> {
  const headers: OutgoingHttpHeaders = {
    ':method': s.method,
    ':path': path,
    ...requestHeaders(run, s),
  }
  if (s.method === 'POST') headers['content-length'] = BODY.length
  const seen = { status: 0, data: 0, closed: false }
  const stream = session.request(headers, { endStream: s.method !== 'POST' })
  stream.on('error', () => {})
  stream.on('response', (h) => {
    seen.status = Number(h[':status'])
    run.upstream.headSeen.add(path)
  })
  stream.on('data', (c: Buffer) => {
    seen.data += c.length
  })
  stream.once('close', () => {
    seen.closed = true
  })
  if (s.client === 'leave-mid-body') stream.write(HALF)
  else if (s.method === 'POST') stream.end(BODY)
  // leaving mid-body, the client drops its connection: node's stream.close() would end the body first
  const leave = () => (s.client === 'leave-mid-body' ? session.destroy() : stream.close(h2.NGHTTP2_CANCEL))
  await leaveAsPlanned(run, s, path, seen, leave)
  await until(`${path}: the stream to close`, () => seen.closed)
}

/**
 * A client that leaves does so once the upstream has half its body, once it has its request (before the
 * answer) or once part of the answer came; when the proxy answers itself (a denial), there is nothing to leave and the answer is read.
 */
async function leaveAsPlanned(
  run: Run,
  s: Spec,
  path: string,
  seen: { status: number; data: number; closed: boolean },
  leave: () => void,
): Promise<void> {
  if (s.client === 'leave-mid-body') {
    // a denial answers before the body is in: the client leaves all the same
    await until(
      `${path}: the upstream to have half the body`,
      () => (run.upstream.bodyBytes.get(path) ?? 0) >= HALF.length || seen.status !== 0 || seen.closed,
    )
    leave()
  } else if (s.client === 'leave-before-answer') {
    await until(
      `${path}: the upstream to have the request`,
      () => run.upstream.whole.has(path) || seen.status !== 0 || seen.closed,
    )
    if (seen.status === 0) leave()
  } else if (s.client === 'leave-mid-answer') {
    await until(`${path}: the first bytes of the answer`, () => seen.data > 0 || seen.closed)
    if (!seen.closed) leave()
  }
}

const exchange = (run: Run, s: Spec, path: string) =>
  s.protocol === 'h1' ? h1Exchange(run, s, path) : h2Exchange(run, s, path)

// ---- the record against the export --------------------------------------------------------------------------

interface AuditLine {
  trace_id: string
  span_id: string
  identity: string
  decision: string
  status: number
  route: string
  method: string
  path: string
  client_address: string
  time: string
  duration_ms: number
  kind: string
  source: string
  verified: boolean
  rule?: string
  team?: string
  policy_rule: string
  request_id: string
  bytes_in: number
  bytes_out: number
  upstream_error?: string
  failures: { source: string; reason: string }[]
  anomalies: string[]
}

function readAudit(file: string): { line: AuditLine; text: string }[] {
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((text) => text !== '')
    .map((text) => ({ line: JSON.parse(text) as AuditLine, text }))
}

/** what the comparison is over, in one order */
const key = (k: {
  trace: string
  identity: unknown
  decision: unknown
  status: unknown
  route: unknown
  method: unknown
}) => JSON.stringify([k.trace, k.identity, k.decision, k.status, k.route, k.method])
const ofLine = (l: AuditLine) =>
  key({
    trace: l.trace_id,
    identity: l.identity,
    decision: l.decision,
    status: l.status,
    route: l.route,
    method: l.method,
  })
const ofSpan = (s: ReceivedSpan) =>
  key({
    trace: s.traceId,
    identity: s.attributes['nhi.identity'],
    decision: s.attributes['nhi.decision'],
    status: s.attributes['http.response.status_code'],
    route: s.attributes['http.route'] ?? 'other',
    method: s.attributes['http.request.method'],
  })
const ofLog = (r: ReceivedLogRecord) => {
  const line = JSON.parse(String(r.body)) as AuditLine
  return key({
    trace: r.traceId,
    identity: r.attributes['nhi.identity'],
    decision: r.attributes['nhi.decision'],
    status: r.attributes['http.response.status_code'],
    // a log record carries no route attribute: its body, the audit line, does
    route: line.route,
    method: r.attributes['http.request.method'],
  })
}

/** the rest of what a span says about its exchange (docs/reference.md), as the audit line has it */
function spanDetails(s: ReceivedSpan) {
  const a = s.attributes
  return {
    kind: a['nhi.kind'],
    source: a['nhi.source'],
    verified: a['nhi.verified'],
    rule: a['nhi.rule'],
    team: a['nhi.team'],
    policyRule: a['nhi.policy_rule'],
    requestId: a['nhi.request_id'],
    bytesIn: a['http.request.body.size'],
    bytesOut: a['http.response.body.size'],
    error: a['error.type'],
    failures: a['nhi.credential_failures'],
    failureEvents: s.events.filter((e) => e.name === 'nhi.credential_failure').length,
    anomalies: s.events.filter((e) => e.name === 'nhi.anomaly').map((e) => e.attributes['nhi.anomaly.type']),
    errorStatus: s.statusCode === 2,
  }
}
function lineDetails(l: AuditLine): ReturnType<typeof spanDetails> {
  const failed = l.status >= 500 || l.upstream_error !== undefined
  return {
    kind: l.kind,
    source: l.source,
    verified: l.verified,
    rule: l.rule,
    team: l.team,
    policyRule: l.policy_rule,
    requestId: l.request_id,
    bytesIn: l.bytes_in,
    bytesOut: l.bytes_out,
    error: l.upstream_error ?? (l.status >= 500 ? String(l.status) : undefined),
    failures: l.failures.length > 0 ? l.failures.map((f) => `${f.source}:${f.reason}`) : undefined,
    failureEvents: l.failures.length,
    anomalies: l.anomalies,
    errorStatus: failed,
  }
}

/** the keys of `a` not in `b`, as a multiset difference */
function minus(a: string[], b: string[]): string[] {
  const left = new Map<string, number>()
  for (const k of b) left.set(k, (left.get(k) ?? 0) + 1)
  const out: string[] = []
  for (const k of a) {
    const n = left.get(k) ?? 0
    if (n > 0) left.set(k, n - 1)
    else out.push(k)
  }
  return out
}

const byPath = <T>(items: T[], path: (item: T) => unknown) => {
  const map = new Map<string, T[]>()
  for (const item of items) {
    const p = String(path(item))
    map.set(p, [...(map.get(p) ?? []), item])
  }
  return map
}

/** every way the audit trail, the spans, the log records and the upstream disagree */
function judge(
  planned: Map<string, Spec>,
  audit: { line: AuditLine; text: string }[],
  collector: TestCollector,
  upstream: DiffUpstream,
): string[] {
  const wrong: string[] = []
  const lines = byPath(audit, (a) => a.line.path)
  const spans = byPath(collector.spans, (s) => s.attributes['url.path'])
  const logs = byPath(collector.logs, (r) => r.attributes['url.path'])
  for (const [path, s] of planned) {
    const found = lines.get(path) ?? []
    if (found.length !== 1) {
      wrong.push(`${path}: ${found.length} audit lines`)
      continue
    }
    const { line, text } = found[0]!
    const continued = s.traceparent === 'sampled' || s.traceparent === 'unsampled'
    if (continued && line.trace_id !== s.traceId)
      wrong.push(`${path}: audit trace ${line.trace_id}, not the caller's ${s.traceId}`)
    const sent = upstream.traceparents.get(path)
    if (sent !== undefined) {
      // continued: the sampled and random flags, as version 00 (test/proxy/traceparent-property.test.ts)
      const flags = continued ? (Number.parseInt(s.flags, 16) & 0x03).toString(16).padStart(2, '0') : '01'
      const want = `00-${line.trace_id}-${line.span_id}-${flags}`
      if (sent !== want) wrong.push(`${path}: the upstream got traceparent ${sent}, not ${want}`)
    }

    // spans: one, unless the caller's trace is not sampled
    const spansHere = spans.get(path) ?? []
    const wantSpans = s.traceparent === 'unsampled' ? 0 : 1
    if (spansHere.length !== wantSpans) wrong.push(`${path}: ${spansHere.length} spans, not ${wantSpans}`)
    for (const span of spansHere) {
      if (ofSpan(span) !== ofLine(line)) wrong.push(`${path}: span ${ofSpan(span)}, audit ${ofLine(line)}`)
      if (span.spanId !== line.span_id) wrong.push(`${path}: span id ${span.spanId}, audit ${line.span_id}`)
      const [got, want] = [JSON.stringify(spanDetails(span)), JSON.stringify(lineDetails(line))]
      if (got !== want) wrong.push(`${path}: span says ${got}, audit ${want}`)
      // the span runs from the request's first byte in to its last byte out: the audit's time and duration
      const startMs = Number(span.startNanos / 1_000_000n)
      const durationMs = Number(span.endNanos - span.startNanos) / 1e6
      if (Math.abs(startMs - Date.parse(line.time)) > 1 || Math.abs(durationMs - line.duration_ms) > 0.002)
        wrong.push(
          `${path}: span from ${new Date(startMs).toISOString()} for ${durationMs} ms, audit ${line.time} for ${line.duration_ms} ms`,
        )
      if (span.attributes['client.address'] !== line.client_address)
        wrong.push(`${path}: span client ${span.attributes['client.address']}, audit ${line.client_address}`)
      const parent = continued ? s.parentId : ''
      if (span.parentSpanId !== parent)
        wrong.push(`${path}: span parent ${JSON.stringify(span.parentSpanId)}, not ${JSON.stringify(parent)}`)
    }

    // log records: one for every exchange, its body the audit line
    const logsHere = logs.get(path) ?? []
    if (logsHere.length !== 1) wrong.push(`${path}: ${logsHere.length} log records`)
    for (const r of logsHere) {
      if (r.body !== text) wrong.push(`${path}: log body ${whereApart(String(r.body), text)}`)
      if (ofLog(r) !== ofLine(line)) wrong.push(`${path}: log record ${ofLog(r)}, audit ${ofLine(line)}`)
      if (r.spanId !== line.span_id) wrong.push(`${path}: log record span ${r.spanId}, audit ${line.span_id}`)
      const warn = line.status >= 500 || line.upstream_error !== undefined || line.anomalies.length > 0
      if (r.severityText !== (warn ? 'WARN' : 'INFO'))
        wrong.push(`${path}: log record severity ${r.severityText} for status ${line.status}`)
      const attrs = r.attributes
      const [got, want] = [
        JSON.stringify([attrs['nhi.kind'], attrs['nhi.source'], attrs['nhi.verified'], attrs['nhi.rule']]),
        JSON.stringify([line.kind, line.source, line.verified, line.rule]),
      ]
      if (got !== want) wrong.push(`${path}: log record attributes ${got}, audit ${want}`)
    }
  }
  for (const [path, found] of lines)
    if (!planned.has(path)) wrong.push(`${path}: ${found.length} audit lines for nothing sent`)
  for (const [path, found] of spans)
    if (!planned.has(path)) wrong.push(`${path}: ${found.length} spans for nothing sent`)
  for (const [path, found] of logs)
    if (!planned.has(path)) wrong.push(`${path}: ${found.length} log records for nothing sent`)

  // the same as multisets, whatever the paths say
  const sampledLines = audit.filter((a) => planned.get(a.line.path)?.traceparent !== 'unsampled')
  const lineKeys = audit.map((a) => ofLine(a.line))
  const sampledKeys = sampledLines.map((a) => ofLine(a.line))
  const spanKeys = collector.spans.map(ofSpan)
  const logKeys = collector.logs.map(ofLog)
  for (const k of minus(sampledKeys, spanKeys)) wrong.push(`audit ${k}: no span`)
  for (const k of minus(spanKeys, sampledKeys)) wrong.push(`span ${k}: no audit line`)
  for (const k of minus(lineKeys, logKeys)) wrong.push(`audit ${k}: no log record`)
  for (const k of minus(logKeys, lineKeys)) wrong.push(`log record ${k}: no audit line`)
  return wrong
}

/** where two texts part: a few characters of each from there */
function whereApart(got: string, want: string): string {
  let at = 0
  while (at < got.length && got[at] === want[at]) at++
  const from = Math.max(0, at - 20)
  return `${JSON.stringify(got.slice(from, at + 40))}, the audit line ${JSON.stringify(want.slice(from, at + 40))}`
}

const dump = (v: unknown) => JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? String(x) : x))

// ---- the runs -----------------------------------------------------------------------------------------------

interface TlsMaterial {
  /** the CA the proxy's server certificate is issued by */
  ca: string
  /** the workload's client certificate and key */
  cert: string
  key: string
}

interface Setup {
  tls: TlsMaterial
  collector: TestCollector
  upstream: DiffUpstream
  pool: Pool
  config: Record<string, unknown>
  auditFile: string
}

async function setUp(t: Test, name: string, workers: number): Promise<Setup> {
  const collector = await startCollector()
  t.teardown(() => collector.close())
  const upstream = await diffUpstream(t)
  const { pool, jwksUri } = await credentialPool(t)
  const auditFile = join(await scratchDir(`otlp-diff-${name}`), 'audit.log')
  const { ca: serverCa, server } = await createServerPki()
  const clientCa = await createCA('otlp-diff-client-ca')
  const workload = await issueCert(clientCa, {
    subject: '/O=acme/CN=orders',
    uriSans: ['spiffe://prod.example/ns/pay/sa/api'],
  })
  // the certificate itself, base64, never in an export (its fingerprint is in the audit line)
  pool.secrets.push(workload.certPem.split('\n')[1]!, workload.keyPem.split('\n')[1]!)
  const tls = { ca: serverCa.certPem, cert: workload.certPem, key: workload.keyPem }
  const config = {
    service: 'orders',
    listen: mtlsListen(server, clientCa, 'optional'),
    upstream: upstream.url,
    workers,
    audit: { output: auditFile },
    timeouts: { upstream: UPSTREAM_DEADLINE },
    forwardedClientCert: { trustedProxies: [`${TRUSTED_PROXY}/32`], format: 'xfcc' },
    apiKeys: { keys: [{ name: 'deploy', kind: 'job', sha256: sha256Hex(DEPLOY_KEY) }] },
    jwt: { issuers: [{ issuer: ISSUER, jwksUri, audiences: ['orders'] }] },
    identities: [
      { name: '{ns}/{sa}', team: 'platform', match: { spiffe: 'spiffe://prod.example/ns/{ns}/sa/{sa}' } },
      {
        name: 'jwt:platform',
        team: 'platform',
        match: { jwt: { issuer: ISSUER, claims: { team: 'platform' } } },
      },
      { name: 'jwt:{team}', match: { jwt: { issuer: ISSUER, claims: { team: '{team}' } } } },
      { name: 'deployer', kind: 'job', team: 'platform', match: { apiKey: 'deploy' } },
    ],
    policy: {
      mode: 'enforce',
      rules: [
        { route: '/admin/**', allow: [{ team: 'platform' }] },
        { route: '/api/**', allow: [{ verified: true }] },
      ],
    },
    metrics: { routes: ['/api/{svc}/**', '/admin/**'] },
    otlp: { endpoint: collector.url, logs: true, scheduledDelay: '50ms' },
  }
  return { tls, collector, upstream, pool, config, auditFile }
}

/** sends the specs, CONCURRENCY at a time; resolves with their paths */
async function send(run: Run, name: string, specs: Spec[], from: number): Promise<Map<string, Spec>> {
  const planned = new Map<string, Spec>()
  const queue = specs.map((s, i) => {
    const place = s.area === 'api' ? '/api/orders' : `/${s.area}`
    const path = `${place}/${name}-${from + i}-${s.protocol}${s.tls ? `-tls${s.cert ? '-cert' : ''}` : ''}-${s.credential}-${s.traceparent}-${s.behaviour}-${s.client}`
    planned.set(path, s)
    return { s, path }
  })
  // the exchanges that wait for timeouts.upstream start first, so that their wait overlaps the others
  queue.sort((a, b) => Number(b.s.behaviour === 'hang') - Number(a.s.behaviour === 'hang'))
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      for (let next = queue.shift(); next !== undefined; next = queue.shift())
        await exchange(run, next.s, next.path)
    }),
  )
  await endShared(run)
  return planned
}

/**
 * Waits for the audit lines of every exchange sent and for their spans and log records at the collector (the
 * flush interval), checks the export counters (nothing dropped), then stops the sidecar (the shutdown flush
 * sends anything left: a span sent twice shows then) and compares.
 */
async function compare(
  t: Test,
  setup: Setup,
  sidecar: { adminUrl: string; close(): Promise<number | null> },
  planned: Map<string, Spec>,
): Promise<void> {
  const { collector, auditFile } = setup
  const wantSpans = [...planned.values()].filter((s) => s.traceparent !== 'unsampled').length
  await eventually(() => readAudit(auditFile).length >= planned.size, {
    timeoutMs: 15_000,
    what: `${planned.size} audit lines`,
  }).catch(() => {})
  await eventually(() => collector.spans.length >= wantSpans && collector.logs.length >= planned.size, {
    timeoutMs: 10_000,
    what: `${wantSpans} spans and ${planned.size} log records at the collector`,
  }).catch(() => {})
  const samples = await scrapeUntil(
    sidecar.adminUrl,
    (m) =>
      metricValue(m, 'nhi_otlp_spans_exported_total') >= collector.spans.length &&
      metricValue(m, 'nhi_otlp_log_records_exported_total') >= collector.logs.length,
    'the exports counted',
  )
  t.equal(metricValue(samples, 'nhi_otlp_spans_dropped_total'), 0, 'no span dropped')
  t.equal(metricValue(samples, 'nhi_otlp_log_records_dropped_total'), 0, 'no log record dropped')
  t.same(
    [
      metricValue(samples, 'nhi_otlp_spans_exported_total'),
      metricValue(samples, 'nhi_otlp_log_records_exported_total'),
    ],
    [collector.spans.length, collector.logs.length],
    'the exported counters count what the collector received',
  )
  t.equal(await sidecar.close(), 0, 'the sidecar exits 0')

  const audit = readAudit(auditFile)
  const wrong = judge(planned, audit, collector, setup.upstream)
  t.same(wrong.slice(0, 12), [], `the export says what the audit trail says (${wrong.length} disagree)`)
  const everything = dump(collector.spans) + dump(collector.logs)
  const leaked = setup.pool.secrets.filter((secret) => everything.includes(secret))
  t.same(leaked, [], 'no credential in any span or log record')
  t.comment(
    `${planned.size} exchanges (${[...planned.values()].filter((s) => s.shared).length} on shared connections), ${audit.length} audit lines, ${collector.spans.length} spans, ${collector.logs.length} log records; ` +
      `statuses ${JSON.stringify(countBy(audit.map((a) => String(a.line.status))))}, decisions ${JSON.stringify(countBy(audit.map((a) => a.line.decision)))}, ` +
      `identities ${JSON.stringify(countBy(audit.map((a) => a.line.identity)))}`,
  )
}

const countBy = (items: string[]) => {
  const counts: Record<string, number> = {}
  for (const item of items.sort()) counts[item] = (counts[item] ?? 0) + 1
  return counts
}

t.test('generated: every audited exchange has its span and log record, with the same facts', async (t) => {
  const specs = fc.sample(drawnSpec, { numRuns: REQUESTS, seed: PROPERTY_SEED })
  const setup = await setUp(t, 'generated', 1)
  const sidecar = await startTestSidecar(t, setup.config, { env: CLEAN_OTEL_ENV })
  const run = newRun(sidecar, setup)
  const planned = await send(run, 'g', specs, 0)
  t.comment(`seed ${PROPERTY_SEED}`)
  await compare(t, setup, sidecar, planned)
})

t.test('workers: 2: every audited exchange has its span and log record', async (t) => {
  const setup = await setUp(t, 'workers', 2)
  const sidecar = await startTestSidecar(t, setup.config, { env: CLEAN_OTEL_ENV })
  const run = newRun(sidecar, setup)
  const planned = await send(run, 'w', HAND_PICKED, 0)
  await compare(t, setup, sidecar, planned)
})

t.test('a reload that moves the export between two halves loses and doubles nothing', async (t) => {
  const setup = await setUp(t, 'reload', 1)
  const otlp = setup.config['otlp'] as Record<string, unknown>
  // at first nothing is sent before the reload: the retiring export must send the whole first half
  const sidecar = await startTestSidecar(
    t,
    { ...setup.config, otlp: { ...otlp, scheduledDelay: '60s' } },
    { env: CLEAN_OTEL_ENV },
  )
  const run = newRun(sidecar, setup)
  const half = HAND_PICKED.length >> 1
  const first = await send(run, 'r', HAND_PICKED.slice(0, half), 0)
  // a client that left can see its connection close before its exchange is recorded
  await eventually(() => readAudit(setup.auditFile).length >= first.size, { what: 'the first half audited' })
  t.equal(setup.collector.spans.length + setup.collector.logs.length, 0, 'nothing sent before the reload')
  // new settings: a new export thread, the old one retired with what it still holds
  t.ok(
    await sidecar.reload({ ...setup.config, otlp: { ...otlp, headers: { 'x-half': 'second' } } }),
    'reloaded',
  )
  const second = await send(run, 'r', HAND_PICKED.slice(half), half)
  await compare(t, setup, sidecar, new Map([...first, ...second]))
  // the first half's spans went with the first settings, the second half's with the new ones
  const secondTraces = new Set(
    readAudit(setup.auditFile)
      .filter((a) => second.has(a.line.path))
      .map((a) => a.line.trace_id),
  )
  const misrouted = setup.collector.exports.filter((e) =>
    e.traceIds.some((id) => secondTraces.has(id) !== (e.headers['x-half'] === 'second')),
  )
  t.equal(misrouted.length, 0, 'every export carried the settings of its half')
})

t.test('a reload while exchanges are under way loses and doubles nothing', async (t) => {
  const setup = await setUp(t, 'reload-live', 1)
  const sidecar = await startTestSidecar(t, setup.config, { env: CLEAN_OTEL_ENV })
  const run = newRun(sidecar, setup)
  const otlp = setup.config['otlp'] as Record<string, unknown>
  // exchanges recorded before, during and after the move, each by the export current then
  const [reloaded, planned] = await Promise.all([
    sidecar.reload({ ...setup.config, otlp: { ...otlp, headers: { 'x-moved': 'yes' } } }),
    send(run, 'l', HAND_PICKED, 0),
  ])
  t.ok(reloaded, 'reloaded')
  await compare(t, setup, sidecar, planned)
  const moved = setup.collector.exports.filter((e) => e.headers['x-moved'] === 'yes').length
  t.comment(`${setup.collector.exports.length - moved} exports before the move, ${moved} after it`)
})
