// gRPC-Web through the built sidecar against the same calls made directly, on generated calls: what Connect's
// gRPC-Web client (@connectrpc/connect-node, the reference implementation here) observes of each call — its
// code and message, its response headers and trailers, every message byte for byte and in order — is the same
// through nhi-proxy as without it, and the Connect server behind it receives the same method and metadata
// (less what the proxy documents adding, PROXY_REQUEST_KEYS). One Connect server is served on node:http (an
// `http://` upstream) and on node:http2 (an `h2c://` upstream), a sidecar in front of each, and each call is
// made through each sidecar by a client over HTTP/1.1 and over HTTP/2 (h2c), four crossings, and directly to
// each server by the client of its own HTTP version. Calls are drawn from a grammar: unary or server-streaming,
// 0..4 answers of 0 B to 256 KiB (Connect compresses those of 1 KiB and more with gzip), the binary or the JSON
// message format, OK or ConnectError of every code 1..16 with a message of non-ASCII, `%` and newlines (and
// details, `grpc-status-details-bin`), an error after some messages, response headers and trailers (ASCII,
// `-bin`, repeated keys, large values: Connect compresses a trailer block of 1 KiB and more), request
// metadata, request messages gzip-compressed,
// a JWT / an api key / nothing as the caller, a timeout far enough never to pass or one the server holds the
// call past, and client aborts. The audit
// trail (docs/reference.md "Audit events", "HTTP/2 and gRPC") must hold one line per proxied call with the
// gRPC status its client saw, the identity its credential was attributed to, and never the credential.
//
// Then what Connect cannot show: `application/grpc-web-text` answers (Connect neither sends nor reads them)
// from a raw upstream, against what the gRPC-Web protocol says a client reads; and a browser's CORS preflight
// for a gRPC-Web call, whose answer the proxy passes on as the upstream gave it (docs "Errors", CORS).
import * as http from 'node:http'
import * as http2 from 'node:http2'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { gunzipSync, gzipSync } from 'node:zlib'
import { BytesValue, MethodKind, StringValue } from '@bufbuild/protobuf'
import {
  type CallOptions,
  Code,
  ConnectError,
  cors,
  createPromiseClient,
  type HandlerContext,
} from '@connectrpc/connect'
import { compressionGzip, connectNodeAdapter, createGrpcWebTransport } from '@connectrpc/connect-node'
import fc from 'fast-check'
import t, { type Test } from 'tap'
import { eventually } from '../helpers/eventually.ts'
import {
  ASCII,
  auditLines,
  callAuditFaults,
  metadataOf,
  oneLineEach,
  PROXY_REQUEST_KEYS,
  STATUS_DETAILS,
  startCallers,
} from '../helpers/grpc-differential.ts'
import { inParallel } from '../helpers/limit.ts'
import { metricValue, scrapeUntil } from '../helpers/metrics.ts'
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
/** the timeout of a call the server holds past it */
const LATE_TIMEOUT_MS = 400
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

// Headers (the Fetch API's, which Connect reads and writes metadata with) trims a value at both ends
const asciiValue = fc
  .oneof(
    { arbitrary: fc.string({ unit: fc.constantFrom(...ASCII), maxLength: 24 }), weight: 8 },
    // a large value, within what the proxy takes of a header section (`limits.maxHeaderBytes`)
    { arbitrary: fc.integer({ min: 1000, max: 3000 }).map((n) => 'v'.repeat(n)), weight: 1 },
  )
  .map((v) => v.trim())
const metadata = metadataOf(asciiValue)

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
    details: fc.constantFrom(...STATUS_DETAILS),
    /** an error's details as a protobuf message (`grpc-status-details-bin`), besides its message */
    statusDetails: fc.boolean(),
    /** the request message gzip-compressed (Connect compresses those of 1 KiB and more) */
    compress: weighted([false, 3], [true, 1]),
    /**
     * prompt: answered at once; abort: held by the server until the client aborts; late: held past the
     * call's timeout
     */
    timing: weighted<'prompt' | 'abort' | 'late'>(['prompt', 16], ['abort', 2], ['late', 1]),
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
  /** a call held until its client aborts or its timeout passes: never answered */
  const held = (ctx: HandlerContext) =>
    new Promise<never>((_, reject) => ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason)))
  const end = (p: Prepared, ctx: HandlerContext) => {
    if (p.c.code === 0) {
      for (const [key, values] of p.c.trailers) for (const v of values) ctx.responseTrailer.append(key, v)
      return
    }
    throw new ConnectError(
      p.c.details,
      p.c.code as Code,
      toHeaders(p.c.trailers),
      p.c.statusDetails ? [new StringValue({ value: p.c.details })] : [],
    )
  }
  const handler = connectNodeAdapter({
    routes(router) {
      router.service(Echo, {
        async unary(req, ctx) {
          const p = begin(req, ctx)
          if (p.c.timing !== 'prompt') await held(ctx)
          end(p, ctx)
          return { value: p.responses[0]! }
        },
        async *serverStream(req, ctx) {
          const p = begin(req, ctx)
          for (const m of p.responses) yield { value: m }
          if (p.c.timing !== 'prompt') await held(ctx)
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
  /** an error's details as received (type and bytes) */
  details: string[]
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
  const observed: Observed = {
    code: 0,
    message: '',
    headers: undefined,
    trailers: undefined,
    messages: [],
    details: [],
  }
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
  if (c.timing === 'late') options.timeoutMs = LATE_TIMEOUT_MS
  else if (c.timeout) options.timeoutMs = FAR_TIMEOUT_MS
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
    observed.details = error.details.map((d) =>
      'value' in d ? `${d.type}:${Buffer.from(d.value).toString('base64')}` : d.getType().typeName,
    )
    observed.trailers = asCompared(error.metadata)
  }
  return observed
}

/**
 * What the proxy adds to a call's request metadata and what it rightly sends otherwise (PROXY_REQUEST_KEYS),
 * and over HTTP/1.1 besides: `host` names the proxy, and `content-length` is how one HTTP/1.1 hop framed the
 * body.
 */
const PROXY_WEB_REQUEST_KEYS = new Set([...PROXY_REQUEST_KEYS, 'host', 'content-length'])

function judgeRequest(direct: Received | undefined, via: Received | undefined): string | undefined {
  if (direct === undefined || via === undefined)
    return `the server saw the call ${direct ? 'directly only' : 'through the proxy only'}`
  if (via.path !== direct.path) return `path ${via.path}, directly ${direct.path}`
  if (via.request !== direct.request) return 'the server received another request message'
  const view = (m: Record<string, string>) =>
    JSON.stringify(Object.entries(m).filter(([key]) => !PROXY_WEB_REQUEST_KEYS.has(key)))
  const [d, v] = [view(direct.metadata), view(via.metadata)]
  return d === v ? undefined : `request metadata ${v}, directly ${d}`
}

/** undefined when `via` observed what `direct` did, else what differs */
function judge(p: Prepared, direct: Observed, via: Observed): string | undefined {
  if (via.code !== direct.code)
    return `code ${via.code} (${via.message}), directly ${direct.code} (${direct.message})`
  if (p.c.timing === 'abort') return undefined
  if (p.c.timing === 'late') {
    // what the server sent before holding the call arrives before the timeout or not, on either path alike:
    // only that nothing else arrived, and in order
    if (via.messages.some((m, k) => !Buffer.from(m).equals(Buffer.from(p.responses[k] ?? []))))
      return `messages not a prefix of the ${p.responses.length} sent`
    return undefined
  }
  if (via.message !== direct.message)
    return `message ${JSON.stringify(via.message)}, directly ${JSON.stringify(direct.message)}`
  for (const part of ['headers', 'trailers', 'details'] as const) {
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

type Proxies = Record<Upstream, { sidecar: TestSidecar; auditFile: string }>

/** a sidecar in front of each upstream (`ports`), with `config` besides, each writing its audit trail to a file */
async function proxiesFor(
  t: Test,
  ports: Record<Upstream, number>,
  config: Record<string, unknown> = {},
): Promise<Proxies> {
  const dir = await scratchDir('grpc-web-differential')
  const proxies = {} as Proxies
  for (const upstream of UPSTREAMS) {
    const auditFile = join(dir, `audit-${upstream}.log`)
    const sidecar = await startTestSidecar(t, {
      service: 'webdiff',
      upstream: `${upstream}://127.0.0.1:${ports[upstream]}`,
      listen: { http: '127.0.0.1:0' },
      audit: { output: auditFile },
      ...config,
    })
    proxies[upstream] = { sidecar, auditFile }
  }
  return proxies
}

/** a node:http and a node:http2 (h2c) server on loopback with one handler, closed with their connections */
async function serveBoth(
  t: Test,
  handler: (
    req: http.IncomingMessage | http2.Http2ServerRequest,
    res: http.ServerResponse | http2.Http2ServerResponse,
  ) => void,
): Promise<Record<Upstream, number>> {
  const servers = {
    http: http.createServer(handler as http.RequestListener),
    h2c: http2.createServer(
      handler as (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void,
    ),
  }
  // the direct clients' connections are closed with the servers: nothing is left to keep the test alive
  const sessions = new Set<http2.ServerHttp2Session>()
  servers.h2c.on('session', (s) => sessions.add(s.once('close', () => sessions.delete(s))))
  t.teardown(() => {
    servers.http.closeAllConnections()
    servers.http.close()
    for (const s of sessions) s.destroy()
    servers.h2c.close()
  })
  return { http: await listen(servers.http), h2c: await listen(servers.h2c) }
}

t.test('gRPC-Web calls through the proxy observe what the same calls observe directly', async (t) => {
  const started = Date.now()
  const cases: Prepared[] = fc.sample(callCase, { numRuns: CASES, seed: PROPERTY_SEED }).map((c) => {
    const next = rng(c.seed)
    const request = messageBytes(c.request, (next() * 0x7fffffff) | 0)
    const responses = c.responses.map((n) => messageBytes(n, (next() * 0x7fffffff) | 0))
    return { c, request, responses }
  })

  const { received, handler } = serve(cases)
  const ports = await serveBoth(t, handler)
  const { config, token } = await startCallers(t, { issuer: ISSUER, audience: 'webdiff', apiKey: API_KEY })
  const sidecars = await proxiesFor(t, ports, config)
  const credentials: Record<CallCase['credential'], [string, string][]> = {
    jwt: [['authorization', `Bearer ${token}`]],
    apikey: [['x-api-key', API_KEY]],
    none: [],
  }

  const clients = new Map<string, Client>()
  const clientFor = (port: number, leg: ClientLeg, json: boolean, compress: boolean) => {
    const name = `${port}/${leg}/${json}/${compress}`
    let client = clients.get(name)
    if (client === undefined) {
      const baseUrl = `http://127.0.0.1:${port}`
      const sending = compress ? { sendCompression: compressionGzip } : {}
      client = createPromiseClient(
        Echo,
        leg === '1.1'
          ? createGrpcWebTransport({ baseUrl, httpVersion: '1.1', useBinaryFormat: !json, ...sending })
          : createGrpcWebTransport({ baseUrl, httpVersion: '2', useBinaryFormat: !json, ...sending }),
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
        return makeCall(
          clientFor(port, leg, p.c.json, p.c.compress),
          p,
          i,
          id,
          credentials[p.c.credential],
          () => received.has(id),
        ).then((observed) => ({ id, observed }))
      }
      const direct = await run(ports[upstream], DIRECT_LEG[upstream], 'direct')
      const meant =
        p.c.timing === 'prompt' ? p.c.code : p.c.timing === 'late' ? Code.DeadlineExceeded : Code.Canceled
      if (direct.observed.code !== meant)
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
        // a call whose timeout passed before it was forwarded (the proxy verifies its credential and opens the
        // upstream connection first, slow on a loaded machine) never reaches the server: its deadline is kept
        const forwarded = p.c.timing !== 'late' || received.has(via.id)
        const what =
          judge(p, direct.observed, via.observed) ??
          (forwarded ? judgeRequest(received.get(direct.id), received.get(via.id)) : undefined)
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
    const lines = await auditLines(
      sidecars[upstream].auditFile,
      calls.size,
      `every call proxied to ${upstream} audited`,
    )
    t.equal(lines.all.length, calls.size, `${upstream}: one audit line per proxied call, and no other`)
    const { lineOf, faults: auditDisagreements } = oneLineEach(lines.all, calls.keys())
    for (const [id, { p, observed }] of calls) {
      const l = lineOf.get(id)
      if (l === undefined) continue
      // docs "HTTP/2 and gRPC": a call its client cancelled is recorded 1 CANCELLED, which is what the client
      // saw; one past its timeout 4, whether the proxy's timer, the upstream's or the client's cancel at that
      // deadline ends it first, but for a client timer that fired before the proxy's last tenth of the
      // deadline (the call's transit to the proxy counts on the client's clock only): its cancel, recorded 1
      // (grpc-differential.test.ts allows the same)
      const expected = p.c.timing === 'late' ? [Code.DeadlineExceeded, Code.Canceled] : [observed.code]
      if (!expected.includes(Number(l['grpc_status'])))
        auditDisagreements.push(
          `${id}: grpc_status ${l['grpc_status']}, the client saw ${observed.code} (${p.c.kind}, ${p.c.timing}, ${p.c.responses.length} messages)`,
        )
      // docs "Audit events": a gRPC call's status is 200 once its answer started; 499 when none reached the
      // client, as for a call held without an answer, then aborted by its client
      const statuses = p.c.timing === 'prompt' || observed.headers !== undefined ? [200] : [200, 499]
      if (!statuses.includes(Number(l['status']))) auditDisagreements.push(`${id}: status ${l['status']}`)
      auditDisagreements.push(...callAuditFaults(id, l, path(p.c.kind), p.c.credential))
    }
    t.same(
      auditDisagreements.slice(0, 8),
      [],
      `${upstream}: the audit agrees with every client (of ${auditDisagreements.length})`,
    )
    // the metrics count each call once, by the status the audit holds (docs "Metrics": nhi_grpc_requests_total)
    const audited = new Map<string, number>()
    for (const l of lines.all)
      audited.set(String(l['grpc_status']), (audited.get(String(l['grpc_status'])) ?? 0) + 1)
    const samples = await scrapeUntil(
      sidecars[upstream].sidecar.adminUrl,
      (s) => metricValue(s, 'nhi_grpc_requests_total') >= calls.size,
      `every call proxied to ${upstream} counted`,
    )
    t.same(
      Object.fromEntries(
        [...audited.keys()]
          .sort()
          .map((code) => [code, metricValue(samples, 'nhi_grpc_requests_total', { grpc_status: code })]),
      ),
      Object.fromEntries([...audited.entries()].sort()),
      `${upstream}: nhi_grpc_requests_total counts the calls by the status the audit holds`,
    )
    t.equal(metricValue(samples, 'nhi_grpc_requests_total'), calls.size, `${upstream}: and no other call`)

    t.notOk(lines.text.includes(token.split('.')[2]!), `${upstream}: no token's signature in the audit trail`)
    t.notOk(lines.text.includes(token.split('.')[1]!), `${upstream}: no token's claims in the audit trail`)
  }

  const n = (f: (c: CallCase) => boolean) => cases.filter((p) => f(p.c)).length
  t.comment(
    `${CASES} calls (seed ${PROPERTY_SEED}) in ${Date.now() - started} ms: ${n((c) => c.kind === 'Unary')} unary, ` +
      `${n((c) => c.code !== 0)} non-OK, ${n((c) => c.kind === 'ServerStream' && c.code !== 0 && c.responses.length > 0)} errors after messages, ` +
      `${n((c) => c.timing === 'abort')} aborted, ${n((c) => c.timing === 'late')} past their timeout, ${n((c) => c.json)} JSON, ${n((c) => c.compress && c.request >= 1024)} compressed requests, ${n((c) => c.code !== 0 && c.statusDetails)} errors with details, ${n((c) => c.responses.some((r) => r >= 1024))} compressed answers`,
  )
})

// ---- gRPC-Web-text answers, which Connect neither sends nor reads ---------------------------------------------
//
// What a client reads of an `application/grpc-web-text` body, by https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md
// (its stored copy, "Text-encoded (response) streams" and "Message framing"):
//   "Due to in-stream base64 padding when delimiting messages, the entire response body is not necessarily a
//    valid base64-encoded entity" and "the client library should not assume base64 padding always happens at
//    the boundary of message frames. That is, the implementation may send base64-encoded "chunks" with
//    potential padding whenever the runtime needs to flush a byte buffer."
//   "8th (MSB) bit of the 1st gRPC frame byte  0: data  1: trailers", "10000001b: a compressed trailer";
//   "Trailers must be the last message of the response"; "use EOF (end of body) to close the stream".
// So: the body is read in 4-character groups, each decoded alone (a padded group ends one flush); the bytes
// are length-prefixed frames; the first frame with the high bit set holds the status (inflated in the
// response's grpc-encoding when its low bit is set too). A body that ends without one is an answer without
// a status, which a client reads from its HTTP status as gRPC maps it: 200 → 13 INTERNAL (docs/reference.md
// "HTTP/2 and gRPC", as grpc-web.test.ts and grpc-web-reader.test.ts assert; the document says nothing of
// it).

const TEXT_CASES = 40

/** a place along a body, spread evenly (fc.double leans to its ends) */
const fraction = fc.integer({ min: 0, max: 1000 }).map((n) => n / 1000)

const textCase = fc.record({
  messages: fc.array(fc.oneof(fc.integer({ min: 0, max: 40 }), fc.integer({ min: 41, max: 3000 })), {
    maxLength: 3,
  }),
  /** the trailer frame's status, or none: the body ends without one */
  status: fc.option(fc.integer({ min: 0, max: 16 }), { nil: undefined, freq: 5 }),
  /** the trailer frame gzip-compressed (flag 0x81), in the response's `grpc-encoding: gzip` */
  compressedTrailer: weighted([false, 3], [true, 1]),
  /** where the upstream flushes a base64 run (each padded alone), as fractions of the frames' bytes */
  flushes: fc.array(fraction, { minLength: 1, maxLength: 4 }),
  /** where the base64 text is cut into the chunks written, as fractions of its length */
  cuts: fc.array(fraction, { minLength: 1, maxLength: 5 }),
  seed: fc.integer({ min: 1, max: 0x7fffffff }),
})
type TextCase = typeof textCase extends fc.Arbitrary<infer T> ? T : never

function grpcWebFrame(flag: number, payload: Buffer): Buffer {
  const head = Buffer.alloc(5)
  head[0] = flag
  head.writeUInt32BE(payload.length, 1)
  return Buffer.concat([head, payload])
}

/** the chunks of base64 text an upstream writes for the case */
function textChunks(c: TextCase): Buffer[] {
  const next = rng(c.seed)
  const frames = c.messages.map((n) =>
    grpcWebFrame(0, Buffer.from(messageBytes(n, (next() * 0x7fffffff) | 0))),
  )
  if (c.status !== undefined) {
    const block = Buffer.from(`grpc-status:${c.status}\r\ngrpc-message:text%20case\r\n`)
    frames.push(c.compressedTrailer ? grpcWebFrame(0x81, gzipSync(block)) : grpcWebFrame(0x80, block))
  }
  const bytes = Buffer.concat(frames)
  const at = (fractions: number[], length: number) =>
    [...new Set(fractions.map((f) => Math.floor(f * length)))].sort((a, b) => a - b)
  const flushes = [0, ...at(c.flushes, bytes.length), bytes.length]
  let text = ''
  for (let k = 1; k < flushes.length; k++)
    text += bytes.subarray(flushes[k - 1], flushes[k]).toString('base64')
  const cuts = [0, ...at(c.cuts, text.length), text.length]
  const chunks: Buffer[] = []
  for (let k = 1; k < cuts.length; k++)
    if (cuts[k]! > cuts[k - 1]!) chunks.push(Buffer.from(text.slice(cuts[k - 1], cuts[k]), 'latin1'))
  return chunks
}

/** the status a client reads of the body, by the rule above */
function textStatus(body: Buffer): number {
  const chars = body.toString('latin1')
  const groups: Buffer[] = []
  for (let i = 0; i + 4 <= chars.length; i += 4) groups.push(Buffer.from(chars.slice(i, i + 4), 'base64'))
  const bytes = Buffer.concat(groups)
  for (let off = 0; off + 5 <= bytes.length; off += 5 + bytes.readUInt32BE(off + 1)) {
    if ((bytes[off]! & 0x80) === 0) continue
    const payload = bytes.subarray(off + 5, off + 5 + bytes.readUInt32BE(off + 1))
    // "10000001b: a compressed trailer", in the response's grpc-encoding (gzip here)
    const block = ((bytes[off]! & 1) === 1 ? gunzipSync(payload) : payload).toString('latin1')
    return Number(/grpc-status:(\d+)/.exec(block)?.[1] ?? 13)
  }
  return 13
}

interface Answered {
  status: number
  headers: Record<string, string | string[] | undefined>
  body: Buffer
}

/** one request over HTTP/1.1 or h2c, on a connection of its own, read to its end */
function ask(
  port: number,
  leg: ClientLeg,
  method: string,
  path: string,
  headers: Record<string, string>,
  body?: Buffer,
): Promise<Answered> {
  return new Promise((resolve, reject) => {
    const collect = (status: number, fields: Answered['headers'], from: NodeJS.ReadableStream) => {
      const chunks: Buffer[] = []
      from.on('data', (c: Buffer) => chunks.push(c))
      from.on('end', () => resolve({ status, headers: fields, body: Buffer.concat(chunks) }))
      from.on('error', reject)
    }
    if (leg === '1.1') {
      const req = http.request({ host: '127.0.0.1', port, path, method, headers, agent: false })
      req.on('response', (res) => collect(res.statusCode ?? 0, res.headers, res))
      req.on('error', reject)
      req.end(body)
      return
    }
    const session = http2.connect(`http://127.0.0.1:${port}`)
    session.on('error', reject)
    const stream = session.request({ ':method': method, ':path': path, ...headers }, { endStream: !body })
    stream.on('response', (h) => collect(Number(h[':status']), h, stream))
    stream.on('close', () => session.close())
    if (body) stream.end(body)
  })
}

/** one gRPC-Web-text call: the answer's status, content type and body */
async function postText(port: number, leg: ClientLeg, path: string, headers: Record<string, string>) {
  const body = Buffer.from(grpcWebFrame(0, Buffer.from('q')).toString('base64'), 'latin1')
  const answer = await ask(
    port,
    leg,
    'POST',
    path,
    {
      'content-type': 'application/grpc-web-text+proto',
      accept: 'application/grpc-web-text',
      'x-grpc-web': '1',
      ...headers,
    },
    body,
  )
  return { status: answer.status, type: answer.headers['content-type'], body: answer.body }
}

t.test(
  'gRPC-Web-text answers reach the client untouched and are counted by the status it reads',
  async (t) => {
    const cases = fc
      .sample(textCase, { numRuns: TEXT_CASES, seed: PROPERTY_SEED })
      .map((c) => ({ c, chunks: textChunks(c) }))
    const ports = await serveBoth(t, (req, res) => {
      const chunks = cases[Number(req.headers['x-case'])]?.chunks ?? []
      req.resume()
      req.on('end', async () => {
        // the two servers' responses write alike
        const out = res as http.ServerResponse
        out.writeHead(200, {
          'content-type': 'application/grpc-web-text+proto',
          ...(cases[Number(req.headers['x-case'])]?.c.compressedTrailer ? { 'grpc-encoding': 'gzip' } : {}),
        })
        for (const c of chunks) {
          out.write(c)
          // separate writes reach the proxy as separate reads only if they leave at different times
          await new Promise((r) => setImmediate(r))
        }
        out.end()
      })
    })
    const proxies = await proxiesFor(t, ports)
    const disagreements: string[] = []
    const expected = { http: new Map<string, number>(), h2c: new Map<string, number>() }
    await inParallel(cases.length, CONCURRENCY, async (i) => {
      const { c, chunks } = cases[i]!
      const sent = Buffer.concat(chunks)
      const status = textStatus(sent)
      if (status !== (c.status ?? 13))
        disagreements.push(`case ${i}: the rule reads ${status} of a body sent with ${c.status}`)
      for (const upstream of UPSTREAMS)
        for (const leg of CLIENT_LEGS) {
          const id = `webtext-${PROPERTY_SEED}-${i}-${upstream}-h${leg}`
          const answer = await postText(
            proxies[upstream].sidecar.proxyAddress.port,
            leg,
            '/webdiff.v1.Text/Read',
            {
              'x-case': String(i),
              'x-request-id': id,
            },
          )
          expected[upstream].set(id, status)
          if (answer.status !== 200 || answer.type !== 'application/grpc-web-text+proto')
            disagreements.push(`${id}: ${answer.status} ${String(answer.type)}`)
          else if (!answer.body.equals(sent))
            disagreements.push(
              `${id}: ${answer.body.length} bytes, ${sent.length} sent (${JSON.stringify(c)})`,
            )
        }
    })
    t.same(disagreements.slice(0, 10), [], `every body as sent (of ${disagreements.length})`)
    for (const upstream of UPSTREAMS) {
      const lines = await auditLines(proxies[upstream].auditFile, expected[upstream].size, upstream)
      const wrong = lines.all
        .filter((l) => Number(l['grpc_status']) !== expected[upstream].get(String(l['request_id'])))
        .map(
          (l) =>
            `${l['request_id']}: grpc_status ${l['grpc_status']}, the client reads ${expected[upstream].get(String(l['request_id']))}`,
        )
      t.equal(lines.all.length, expected[upstream].size, `${upstream}: one audit line per call`)
      t.same(
        wrong.slice(0, 8),
        [],
        `${upstream}: each counted with the status its client reads (of ${wrong.length})`,
      )
    }
    const n = (f: (c: TextCase) => boolean) => cases.filter((x) => f(x.c)).length
    t.comment(
      `${TEXT_CASES} text answers (seed ${PROPERTY_SEED}): ${n((c) => c.status === undefined)} without a trailer frame, ${n((c) => c.status !== undefined && c.compressedTrailer)} with a compressed one, ` +
        `${n((c) => c.status !== undefined && c.messages.length === 0)} a trailer frame alone, ` +
        `${cases.filter((x) => /=[^=]/.test(Buffer.concat(x.chunks).toString('latin1'))).length} with padding mid-stream, ` +
        `${cases.filter((x) => x.chunks.slice(0, -1).some((_, k) => x.chunks.slice(0, k + 1).reduce((m, ch) => m + ch.length, 0) % 4 !== 0)).length} with groups split across chunks`,
    )
  },
)

// ---- a browser's preflight for a gRPC-Web call ------------------------------------------------------------
//
// docs/reference.md "Errors", CORS on the proxy's own answers: the proxy has no CORS policy of its own; it
// forwards preflights like any request, so their answers are the upstream's, and it learns, per origin, the
// CORS fields the upstream answered with, which its own answers to that origin then carry (a call's
// grpc-timeout passed among them), with `Vary: Origin`; an origin the upstream never allowed gets none.

const ORIGIN = 'https://app.grpc-web-differential.example'
const OTHER_ORIGIN = 'https://elsewhere.example'

t.test(
  'a gRPC-Web preflight is answered as the upstream answers it, and the proxy keeps to it',
  async (t) => {
    const { handler } = serve([])
    const held = new Set<http.IncomingMessage | http2.Http2ServerRequest>()
    const ports = await serveBoth(t, (req, res) => {
      if (req.headers.origin === ORIGIN) {
        // what Connect's documentation has a server answer browsers with (its `cors` constants)
        res.setHeader('access-control-allow-origin', ORIGIN)
        res.setHeader('vary', 'Origin')
        res.setHeader('access-control-expose-headers', cors.exposedHeaders.join(', '))
        if (req.method === 'OPTIONS') {
          res.setHeader('access-control-allow-methods', cors.allowedMethods.join(', '))
          res.setHeader('access-control-allow-headers', cors.allowedHeaders.join(', '))
          res.setHeader('access-control-max-age', '7200')
          res.statusCode = 204
          res.end()
          return
        }
      }
      // a call held without an answer: its grpc-timeout passes at the proxy
      if (req.url === '/webdiff.v1.Echo/Hold') {
        held.add(req)
        req.resume()
        return
      }
      handler(req as http.IncomingMessage, res as http.ServerResponse)
    })
    const proxies = await proxiesFor(t, ports)
    const preflight = (origin: string) => ({
      origin,
      'access-control-request-method': 'POST',
      'access-control-request-headers': 'content-type,grpc-timeout,x-grpc-web,x-user-agent',
    })
    /** the fields a browser reads of a CORS answer (and `vary`, which caches keep answers apart by) */
    const corsView = (a: Answered) => ({
      status: a.status,
      ...Object.fromEntries(
        Object.entries(a.headers).filter(([name]) => name.startsWith('access-control-') || name === 'vary'),
      ),
    })
    const path = `/${Echo.typeName}/Unary`
    for (const upstream of UPSTREAMS) {
      for (const origin of [ORIGIN, OTHER_ORIGIN]) {
        const direct = corsView(
          await ask(ports[upstream], DIRECT_LEG[upstream], 'OPTIONS', path, preflight(origin)),
        )
        if (origin === ORIGIN)
          t.match(
            direct,
            {
              status: 204,
              'access-control-allow-headers': /X-Grpc-Web.*X-User-Agent|X-User-Agent.*X-Grpc-Web/i,
            },
            `${upstream}: the upstream allows ${origin} the headers of a gRPC-Web call`,
          )
        for (const leg of CLIENT_LEGS) {
          const port = proxies[upstream].sidecar.proxyAddress.port
          const via = corsView(await ask(port, leg, 'OPTIONS', path, preflight(origin)))
          t.same(
            via,
            direct,
            `${upstream}, HTTP/${leg}: the preflight of ${origin} answered as the upstream answers it`,
          )
        }
      }
      for (const leg of CLIENT_LEGS) {
        const port = proxies[upstream].sidecar.proxyAddress.port
        // the call the preflight was for: Connect's client with the browser's Origin
        const client = createPromiseClient(
          Echo,
          createGrpcWebTransport({ baseUrl: `http://127.0.0.1:${port}`, httpVersion: leg }),
        )
        // a call of no case: its handler throws, which Connect answers with INTERNAL
        const failed = await client.unary({ value: new Uint8Array(1) }, { headers: { origin: ORIGIN } }).then(
          () => undefined,
          (e: unknown) => ConnectError.from(e),
        )
        t.ok(failed !== undefined, `${upstream}, HTTP/${leg}: the call reached the upstream and was answered`)
        for (const origin of [ORIGIN, OTHER_ORIGIN]) {
          const answer = await ask(
            port,
            leg,
            'POST',
            '/webdiff.v1.Echo/Hold',
            {
              origin,
              'content-type': 'application/grpc-web+proto',
              'x-grpc-web': '1',
              'grpc-timeout': '200m',
            },
            grpcWebFrame(0, Buffer.alloc(0)),
          )
          const what = `${upstream}, HTTP/${leg}: the proxy's DEADLINE_EXCEEDED to ${origin}`
          t.equal(answer.headers['grpc-status'], '4', `${what} is a gRPC-Web answer`)
          if (origin === ORIGIN)
            t.match(
              answer.headers,
              {
                'access-control-allow-origin': ORIGIN,
                'access-control-expose-headers': cors.exposedHeaders.join(', '),
                vary: /Origin/i,
              },
              `${what} carries the fields the upstream gives that origin`,
            )
          else
            t.equal(answer.headers['access-control-allow-origin'], undefined, `${what} carries no CORS field`)
        }
      }
    }
    t.ok(held.size > 0, 'the held calls reached the upstream')
  },
)
