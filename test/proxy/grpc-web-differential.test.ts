// gRPC-Web through the built sidecar against the same calls made directly, on generated calls: what Connect's
// gRPC-Web client (@connectrpc/connect-node, the reference implementation here) observes of each call — its
// code and message, its response headers and trailers, every message byte for byte and in order — is the same
// through nhi-proxy as without it, and the Connect server behind it receives the same method and metadata
// (less what the proxy documents adding, PROXY_REQUEST_KEYS). One Connect server is served on node:http (an
// `http://` upstream) and on node:http2 (an `h2c://` upstream), a sidecar in front of each, and each call is
// made through each sidecar by a client over HTTP/1.1 and over HTTP/2 (h2c), four crossings, and directly to
// each server by the client of its own HTTP version. Calls are drawn from a grammar: unary or server-streaming,
// 0..4 answers of 0 B to 256 KiB (Connect compresses those of 1 KiB and more with gzip), the binary or the JSON
// message format, OK or ConnectError of every code 1..16 with a message of non-ASCII, `%` and newlines, an
// error after some messages, response headers and trailers (ASCII, `-bin`, repeated keys), request metadata,
// a JWT / an api key / nothing as the caller, a timeout far enough never to pass, and client aborts. The audit
// trail (docs/reference.md "Audit events", "HTTP/2 and gRPC") must hold one line per proxied call with the
// gRPC status its client saw, the identity its credential was attributed to, and never the credential.
//
// Then what Connect cannot show: `application/grpc-web-text` answers (Connect neither sends nor reads them)
// from a raw upstream, against what the gRPC-Web protocol says a client reads; and a browser's CORS preflight
// for a gRPC-Web call, whose answer the proxy passes on as the upstream gave it (docs "Errors", CORS).
import { createHash } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import * as http from 'node:http'
import * as http2 from 'node:http2'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { BytesValue, MethodKind } from '@bufbuild/protobuf'
import {
  type CallOptions,
  type Code,
  ConnectError,
  createPromiseClient,
  type HandlerContext,
} from '@connectrpc/connect'
import { connectNodeAdapter, createGrpcWebTransport } from '@connectrpc/connect-node'
import fc from 'fast-check'
import t from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { createSigningKey, mintToken, startJwksServer } from '../helpers/jwks.ts'
import { PROPERTY_SEED } from '../helpers/property.ts'
import { rng } from '../helpers/rng.ts'
import { scratchDir } from '../helpers/scratch.ts'
import { startTestSidecar, type TestSidecar } from '../helpers/sidecar.ts'

t.setTimeout(120_000)

/** calls per seed; each is made directly (twice: to each server) and through each of the four crossings */
const CASES = 60
/** calls in flight at once */
const CONCURRENCY = 4
/** a timeout the calls that carry one never reach */
const FAR_TIMEOUT_MS = 30_000
const ISSUER = 'https://idp.grpc-web-differential.example'
const API_KEY = 'web-diff-api-key-3f9a61c2e7'

// ---- the service: bytes in, bytes out, without generated code ----------------------------------------------

const Echo = {
  typeName: 'webdiff.v1.Echo',
  methods: {
    unary: { name: 'Unary', I: BytesValue, O: BytesValue, kind: MethodKind.Unary },
    serverStream: { name: 'ServerStream', I: BytesValue, O: BytesValue, kind: MethodKind.ServerStreaming },
  },
} as const
type Kind = 'Unary' | 'ServerStream'
const path = (kind: Kind) => `/${Echo.typeName}/${kind}`

// ---- the grammar ------------------------------------------------------------------------------------------

const weighted = <T>(...choices: [T, number][]) =>
  fc.oneof(...choices.map(([value, weight]) => ({ arbitrary: fc.constant(value), weight })))

const MESSAGE_SIZES = fc.oneof(
  { arbitrary: fc.constant(0), weight: 2 },
  { arbitrary: fc.integer({ min: 1, max: 300 }), weight: 4 },
  { arbitrary: fc.integer({ min: 1000, max: 17 * 1024 }), weight: 2 },
  { arbitrary: fc.integer({ min: 64 * 1024, max: 256 * 1024 }), weight: 1 },
)

const ASCII = [...' abcdefghijXYZ0123456789-_.:;/=+*()[]{}?!@#$%&~"\'`^|<>']
// Headers (the Fetch API's, which Connect reads and writes metadata with) trims a value at both ends
const asciiValue = fc.string({ unit: fc.constantFrom(...ASCII), maxLength: 24 }).map((v) => v.trim())
const binaryValue = fc.uint8Array({ maxLength: 40 }).map((a) => Buffer.from(a).toString('base64'))
const ASCII_KEYS = ['x-a', 'x-b', 'x-long-metadata-name-for-the-differential']
const BINARY_KEYS = ['x-trace-bin', 'x-blob-bin']
/** [key, values]: a key with two or three values is appended as repeated entries */
const metadata = fc.uniqueArray(
  fc.oneof(
    fc.tuple(fc.constantFrom(...ASCII_KEYS), fc.array(asciiValue, { minLength: 1, maxLength: 3 })),
    fc.tuple(fc.constantFrom(...BINARY_KEYS), fc.array(binaryValue, { minLength: 1, maxLength: 3 })),
  ),
  { maxLength: 4, selector: ([key]) => key },
)

const DETAILS = [
  'plain details',
  'café ✓ — non-ASCII details',
  '100% sure: percent signs %41 and %',
  'line one\nline two\ttabbed',
  '',
  '日本語のエラー',
]

const callCase = fc
  .record({
    kind: fc.constantFrom<Kind>('Unary', 'ServerStream'),
    request: MESSAGE_SIZES,
    responses: fc.array(MESSAGE_SIZES, { minLength: 0, maxLength: 4 }),
    requestMetadata: metadata,
    headers: metadata,
    trailers: metadata,
    code: weighted(['ok', 3], ['error', 2]).chain((c) =>
      c === 'ok' ? fc.constant(0) : fc.integer({ min: 1, max: 16 }),
    ),
    details: fc.constantFrom(...DETAILS),
    /** prompt: answered at once; abort: held by the server until the client aborts */
    timing: weighted<'prompt' | 'abort'>(['prompt', 9], ['abort', 1]),
    timeout: fc.boolean(),
    json: weighted([false, 3], [true, 1]),
    credential: weighted<'jwt' | 'apikey' | 'none'>(['jwt', 2], ['apikey', 2], ['none', 1]),
    seed: fc.integer({ min: 1, max: 0x7fffffff }),
  })
  .map((c) => {
    // a unary answer is one message with OK, none with an error status (sent after the messages of a stream)
    const responses = c.kind === 'Unary' ? (c.code === 0 ? [c.responses[0] ?? 0] : []) : c.responses
    return { ...c, responses }
  })
type CallCase = typeof callCase extends fc.Arbitrary<infer T> ? T : never

function messageBytes(length: number, seed: number): Uint8Array {
  const next = rng(seed)
  const out = new Uint8Array(length)
  for (let i = 0; i < length; i++) out[i] = (next() * 256) | 0
  return out
}

interface Prepared {
  c: CallCase
  request: Uint8Array
  responses: Uint8Array[]
}

function toHeaders(entries: [string, string[]][]): Headers {
  const h = new Headers()
  for (const [key, values] of entries) for (const v of values) h.append(key, v)
  return h
}

/**
 * Fields compared: all but `date` (each answer's own time) and the hop-by-hop fields of HTTP/1.1 (RFC 9110
 * §7.6.1), which belong to one connection: a call over HTTP/2 on either leg has none, the proxy's own
 * HTTP/1.1 connections have their own.
 */
const NOT_COMPARED = new Set(['date', 'connection', 'keep-alive', 'transfer-encoding'])
function asCompared(h: Headers | undefined): Record<string, string> | undefined {
  if (h === undefined) return undefined
  const out: Record<string, string> = {}
  h.forEach((value, key) => {
    if (!NOT_COMPARED.has(key)) out[key] = value
  })
  return out
}

// ---- the server -------------------------------------------------------------------------------------------

/** what the server got of each call, by its x-request-id */
interface Received {
  path: string
  request: string
  metadata: Record<string, string>
  aborted: boolean
}

function serve(cases: Prepared[]) {
  const received = new Map<string, Received>()
  const begin = (req: BytesValue, ctx: HandlerContext) => {
    const p = cases[Number(ctx.requestHeader.get('x-case'))]!
    const r: Received = {
      path: `/${ctx.service.typeName}/${ctx.method.name}`,
      request: Buffer.from(req.value).toString('base64'),
      metadata: asCompared(ctx.requestHeader)!,
      aborted: false,
    }
    received.set(ctx.requestHeader.get('x-request-id') ?? '', r)
    ctx.signal.addEventListener('abort', () => {
      r.aborted = true
    })
    for (const [key, values] of p.c.headers) for (const v of values) ctx.responseHeader.append(key, v)
    return p
  }
  /** a call held until its client aborts: never answered */
  const held = (ctx: HandlerContext) =>
    new Promise<never>((_, reject) => ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason)))
  const end = (p: Prepared, ctx: HandlerContext) => {
    if (p.c.code === 0) {
      for (const [key, values] of p.c.trailers) for (const v of values) ctx.responseTrailer.append(key, v)
      return
    }
    throw new ConnectError(p.c.details, p.c.code as Code, toHeaders(p.c.trailers))
  }
  const handler = connectNodeAdapter({
    routes(router) {
      router.service(Echo, {
        async unary(req, ctx) {
          const p = begin(req, ctx)
          if (p.c.timing === 'abort') await held(ctx)
          end(p, ctx)
          return { value: p.responses[0]! }
        },
        async *serverStream(req, ctx) {
          const p = begin(req, ctx)
          for (const m of p.responses) yield { value: m }
          if (p.c.timing === 'abort') await held(ctx)
          end(p, ctx)
        },
      })
    },
  })
  return { received, handler }
}

async function listen(server: http.Server | http2.Http2Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return (server.address() as AddressInfo).port
}

// ---- the client -------------------------------------------------------------------------------------------

/** what a client observed of one call */
interface Observed {
  code: number
  message: string
  /** the response headers, undefined when none came apart from the status (an error's metadata has them) */
  headers: Record<string, string> | undefined
  /** the trailers, or an error's metadata */
  trailers: Record<string, string> | undefined
  messages: Uint8Array[]
}

type Client = ReturnType<typeof createPromiseClient<typeof Echo>>

/** Makes the case's call and resolves with what the client observed; `seen`: the server has the call */
async function makeCall(
  client: Client,
  p: Prepared,
  i: number,
  requestId: string,
  credential: [string, string][],
  seen: () => boolean,
): Promise<Observed> {
  const { c } = p
  const headers = toHeaders(c.requestMetadata)
  for (const [key, value] of credential) headers.set(key, value)
  headers.set('x-case', String(i))
  headers.set('x-request-id', requestId)
  const observed: Observed = { code: 0, message: '', headers: undefined, trailers: undefined, messages: [] }
  const abort = new AbortController()
  const options: CallOptions = {
    headers,
    signal: abort.signal,
    onHeader: (h) => {
      observed.headers = asCompared(h)
    },
    onTrailer: (h) => {
      observed.trailers = asCompared(h)
    },
  }
  if (c.timeout) options.timeoutMs = FAR_TIMEOUT_MS
  if (c.timing === 'abort')
    // aborted once the server has the call and the client has what the server sent before holding it
    void eventually(
      () => seen() && observed.messages.length === (c.kind === 'Unary' ? 0 : p.responses.length),
      {
        timeoutMs: 20_000,
        what: `case ${i} ready to abort`,
      },
    ).finally(() => abort.abort())
  try {
    if (c.kind === 'Unary') observed.messages.push((await client.unary({ value: p.request }, options)).value)
    else
      for await (const m of client.serverStream({ value: p.request }, options))
        observed.messages.push(m.value)
  } catch (e) {
    const error = ConnectError.from(e)
    observed.code = error.code
    observed.message = error.rawMessage
    observed.trailers = asCompared(error.metadata)
  }
  return observed
}

/** runs `work` over 0..n-1 with at most `width` in flight */
async function inParallel(n: number, width: number, work: (i: number) => Promise<void>): Promise<void> {
  let next = 0
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < n) await work(next++)
    }),
  )
}

/**
 * What the proxy adds to a call's request metadata (docs/reference.md "Headers"), and what it rightly sends
 * otherwise: the request id is each leg's own, `grpc-timeout` is what is left of the deadline at the forward
 * ("HTTP/2 and gRPC"), `host` names the proxy, and `content-length` is how one HTTP/1.1 hop framed the body.
 */
const PROXY_REQUEST_KEYS = new Set([
  'x-nhi-identity',
  'x-nhi-kind',
  'x-nhi-source',
  'x-nhi-verified',
  'traceparent',
  'tracestate',
  'x-forwarded-for',
  'x-forwarded-proto',
  'x-forwarded-host',
  'x-request-id',
  'grpc-timeout',
  'host',
  'content-length',
])

function judgeRequest(direct: Received | undefined, via: Received | undefined): string | undefined {
  if (direct === undefined || via === undefined)
    return `the server saw the call ${direct ? 'directly only' : 'through the proxy only'}`
  if (via.path !== direct.path) return `path ${via.path}, directly ${direct.path}`
  if (via.request !== direct.request) return 'the server received another request message'
  const view = (m: Record<string, string>) =>
    JSON.stringify(Object.entries(m).filter(([key]) => !PROXY_REQUEST_KEYS.has(key)))
  const [d, v] = [view(direct.metadata), view(via.metadata)]
  return d === v ? undefined : `request metadata ${v}, directly ${d}`
}

/** undefined when `via` observed what `direct` did, else what differs */
function judge(p: Prepared, direct: Observed, via: Observed): string | undefined {
  if (via.code !== direct.code)
    return `code ${via.code} (${via.message}), directly ${direct.code} (${direct.message})`
  if (p.c.timing === 'abort') return undefined
  if (via.message !== direct.message)
    return `message ${JSON.stringify(via.message)}, directly ${JSON.stringify(direct.message)}`
  for (const part of ['headers', 'trailers'] as const) {
    const [v, d] = [JSON.stringify(via[part]), JSON.stringify(direct[part])]
    if (v !== d) return `${part} ${v}, directly ${d}`
  }
  if (via.messages.length !== direct.messages.length)
    return `${via.messages.length} messages, directly ${direct.messages.length}`
  for (let k = 0; k < via.messages.length; k++)
    if (!Buffer.from(via.messages[k]!).equals(Buffer.from(direct.messages[k]!)))
      return `message ${k}: ${via.messages[k]!.length} bytes differ from the ${direct.messages[k]!.length} received directly`
  if (p.c.code === 0 && via.messages.some((m, k) => !Buffer.from(m).equals(Buffer.from(p.responses[k]!))))
    return 'messages other than the server sent'
  return undefined
}

// ---- the run ----------------------------------------------------------------------------------------------

const UPSTREAMS = ['http', 'h2c'] as const
const CLIENT_LEGS = ['1.1', '2'] as const
type Upstream = (typeof UPSTREAMS)[number]
type ClientLeg = (typeof CLIENT_LEGS)[number]
/** the client that speaks to each server directly: node:http takes HTTP/1.1, node:http2 prior-knowledge h2c */
const DIRECT_LEG: Record<Upstream, ClientLeg> = { http: '1.1', h2c: '2' }

t.test('gRPC-Web calls through the proxy observe what the same calls observe directly', async (t) => {
  const started = Date.now()
  const cases: Prepared[] = fc.sample(callCase, { numRuns: CASES, seed: PROPERTY_SEED }).map((c) => {
    const next = rng(c.seed)
    const request = messageBytes(c.request, (next() * 0x7fffffff) | 0)
    const responses = c.responses.map((n) => messageBytes(n, (next() * 0x7fffffff) | 0))
    return { c, request, responses }
  })

  const { received, handler } = serve(cases)
  const servers = { http: http.createServer(handler), h2c: http2.createServer(handler) }
  const ports = { http: await listen(servers.http), h2c: await listen(servers.h2c) }
  // the direct clients' connections are closed with the servers: nothing is left to keep the test alive
  const sessions = new Set<http2.ServerHttp2Session>()
  servers.h2c.on('session', (s) => sessions.add(s.once('close', () => sessions.delete(s))))
  t.teardown(() => {
    servers.http.closeAllConnections()
    servers.http.close()
    for (const s of sessions) s.destroy()
    servers.h2c.close()
  })
  const key = await createSigningKey('k1')
  const jwks = await startJwksServer([key])
  t.teardown(() => jwks.close())
  const dir = await scratchDir('grpc-web-differential')
  const sidecars = {} as Record<Upstream, { sidecar: TestSidecar; auditFile: string }>
  for (const upstream of UPSTREAMS) {
    const auditFile = join(dir, `audit-${upstream}.log`)
    const sidecar = await startTestSidecar(t, {
      service: 'webdiff',
      upstream: `${upstream}://127.0.0.1:${ports[upstream]}`,
      listen: { http: '127.0.0.1:0' },
      jwt: { issuers: [{ issuer: ISSUER, jwksUri: jwks.jwksUri, audiences: ['webdiff'] }] },
      identities: [
        {
          name: 'svc/{client}',
          kind: 'service',
          match: { jwt: { issuer: ISSUER, claims: { azp: '{client}' } } },
        },
      ],
      apiKeys: {
        keys: [
          { name: 'ci-runner', kind: 'service', sha256: createHash('sha256').update(API_KEY).digest('hex') },
        ],
      },
      audit: { output: auditFile },
    })
    sidecars[upstream] = { sidecar, auditFile }
  }
  const token = await mintToken(key, { azp: 'billing' }, { issuer: ISSUER, audience: 'webdiff' })
  const credentials: Record<CallCase['credential'], [string, string][]> = {
    jwt: [['authorization', `Bearer ${token}`]],
    apikey: [['x-api-key', API_KEY]],
    none: [],
  }

  const clients = new Map<string, Client>()
  const clientFor = (port: number, leg: ClientLeg, json: boolean) => {
    const name = `${port}/${leg}/${json}`
    let client = clients.get(name)
    if (client === undefined) {
      const baseUrl = `http://127.0.0.1:${port}`
      client = createPromiseClient(
        Echo,
        leg === '1.1'
          ? createGrpcWebTransport({ baseUrl, httpVersion: '1.1', useBinaryFormat: !json })
          : createGrpcWebTransport({ baseUrl, httpVersion: '2', useBinaryFormat: !json }),
      )
      clients.set(name, client)
    }
    return client
  }

  const disagreements: { case: number; leg: string; what: string; c: CallCase }[] = []
  /** the proxied calls, by upstream and request id: what their client saw */
  const proxied = { http: new Map<string, { p: Prepared; observed: Observed }>(), h2c: new Map() }
  await inParallel(cases.length, CONCURRENCY, async (i) => {
    const p = cases[i]!
    for (const upstream of UPSTREAMS) {
      const run = (port: number, leg: ClientLeg, name: string) => {
        const id = `webdiff-${PROPERTY_SEED}-${i}-${upstream}-${name}`
        return makeCall(clientFor(port, leg, p.c.json), p, i, id, credentials[p.c.credential], () =>
          received.has(id),
        ).then((observed) => ({ id, observed }))
      }
      const direct = await run(ports[upstream], DIRECT_LEG[upstream], 'direct')
      if (p.c.timing === 'prompt' && direct.observed.code !== p.c.code)
        disagreements.push({
          case: i,
          leg: `${upstream} direct`,
          what: `code ${direct.observed.code}`,
          c: p.c,
        })
      const legs = [{ name: 'direct', id: direct.id }]
      for (const leg of CLIENT_LEGS) {
        const via = await run(sidecars[upstream].sidecar.proxyAddress.port, leg, `h${leg}`)
        legs.push({ name: `h${leg}`, id: via.id })
        proxied[upstream].set(via.id, { p, observed: via.observed })
        const what =
          judge(p, direct.observed, via.observed) ??
          judgeRequest(received.get(direct.id), received.get(via.id))
        if (what !== undefined)
          disagreements.push({ case: i, leg: `HTTP/${leg} → ${upstream}`, what, c: p.c })
      }
      // a client's abort reaches the server through the proxy as it does directly
      if (p.c.timing === 'abort')
        for (const { name, id } of legs)
          await eventually(() => received.get(id)?.aborted, { what: `${id} aborted at the server` }).catch(
            () =>
              disagreements.push({
                case: i,
                leg: `${name} → ${upstream}`,
                what: 'the server never saw the abort',
                c: p.c,
              }),
          )
    }
  })
  t.same(disagreements.slice(0, 20), [], `no disagreement (of ${disagreements.length})`)

  // the audit trail: one line per proxied call, with the status its client saw and its identity
  for (const upstream of UPSTREAMS) {
    const calls = proxied[upstream]
    const lines = await eventually(
      async () => {
        const text = await readFile(sidecars[upstream].auditFile, 'utf8').catch(() => '')
        const all = text
          .split('\n')
          .filter(Boolean)
          .map((l) => JSON.parse(l) as Record<string, unknown>)
        return all.length >= calls.size ? { text, all } : undefined
      },
      { what: `every call proxied to ${upstream} audited`, timeoutMs: 20_000 },
    )
    t.equal(lines.all.length, calls.size, `${upstream}: one audit line per proxied call, and no other`)
    const byId = new Map<string, Record<string, unknown>[]>()
    for (const l of lines.all)
      byId.set(String(l['request_id']), [...(byId.get(String(l['request_id'])) ?? []), l])
    const auditDisagreements: string[] = []
    for (const [id, { p, observed }] of calls) {
      const found = byId.get(id) ?? []
      if (found.length !== 1) {
        auditDisagreements.push(`${id}: ${found.length} lines`)
        continue
      }
      const l = found[0]!
      // docs "HTTP/2 and gRPC": a call its client cancelled is recorded 1 CANCELLED, which is what the client saw
      if (Number(l['grpc_status']) !== observed.code)
        auditDisagreements.push(
          `${id}: grpc_status ${l['grpc_status']}, the client saw ${observed.code} (${p.c.kind}, ${p.c.timing}, ${p.c.responses.length} messages)`,
        )
      if (l['path'] !== path(p.c.kind)) auditDisagreements.push(`${id}: path ${l['path']}`)
      if (l['upstream_error'] !== undefined)
        auditDisagreements.push(`${id}: upstream_error ${l['upstream_error']}`)
      // docs "Audit events": a gRPC call's status is 200 once its answer started; 499 when none reached the
      // client, as for a call held without an answer, then aborted by its client
      const statuses = p.c.timing === 'prompt' || observed.headers !== undefined ? [200] : [200, 499]
      if (!statuses.includes(Number(l['status']))) auditDisagreements.push(`${id}: status ${l['status']}`)
      const identity =
        p.c.credential === 'jwt'
          ? ['svc/billing', 'jwt', true]
          : p.c.credential === 'apikey'
            ? ['ci-runner', 'apikey', true]
            : [l['identity'], 'useragent', false]
      const got = [l['identity'], l['source'], l['verified']]
      if (JSON.stringify(got) !== JSON.stringify(identity))
        auditDisagreements.push(
          `${id}: identity ${JSON.stringify(got)}, expected ${JSON.stringify(identity)}`,
        )
    }
    t.same(
      auditDisagreements.slice(0, 8),
      [],
      `${upstream}: the audit agrees with every client (of ${auditDisagreements.length})`,
    )
    t.notOk(lines.text.includes(API_KEY), `${upstream}: no api key in the audit trail`)
    t.notOk(lines.text.includes(token.split('.')[2]!), `${upstream}: no token's signature in the audit trail`)
    t.notOk(lines.text.includes(token.split('.')[1]!), `${upstream}: no token's claims in the audit trail`)
  }

  const n = (f: (c: CallCase) => boolean) => cases.filter((p) => f(p.c)).length
  t.comment(
    `${CASES} calls (seed ${PROPERTY_SEED}) in ${Date.now() - started} ms: ${n((c) => c.kind === 'Unary')} unary, ` +
      `${n((c) => c.code !== 0)} non-OK, ${n((c) => c.kind === 'ServerStream' && c.code !== 0 && c.responses.length > 0)} errors after messages, ` +
      `${n((c) => c.timing === 'abort')} aborted, ${n((c) => c.json)} JSON, ${n((c) => c.responses.some((r) => r >= 1024))} compressed answers`,
  )
})
