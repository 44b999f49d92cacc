// gRPC through the built sidecar against the same calls made directly, on generated calls: what a real
// @grpc/grpc-js client observes of each call (its status code and details, its response metadata and trailing
// metadata, every message byte for byte and in order, and for a call past its deadline or cancelled, the
// outcome's code) is the same through nhi-proxy, over h2c and (a subset) over TLS h2, as without it. Each call
// is drawn from a grammar: one of the four call kinds, 0..4 messages each way of 0 B to about 1 MiB, response
// metadata (ASCII values, `-bin` values of any bytes, repeated keys, large values), status OK or any other code
// with details (non-ASCII ones among them, which gRPC percent-encodes in grpc-message) and trailing metadata,
// an error after some messages, a client-streaming call answered before the server read the client's
// messages, a server that holds the call past the client's deadline or until the client cancels, request
// metadata of the same kinds, and request messages gzip-compressed. One grpc-js server (h2c) behaves as the
// call's `x-case` metadata says, and records what it got: the request messages (compared with
// what the client sent), the request metadata (compared with what it read of the direct call, less the keys
// the proxy adds, see PROXY_REQUEST_KEYS) and the client's cancel. The audit trail (docs/reference.md "Audit
// events", "HTTP/2 and gRPC") must then hold one line per proxied call with the gRPC status its client saw,
// its HTTP status and message bytes, the identity its credential (a JWT from a JWKS served here, or an api key,
// sent as metadata) was attributed to, and never the credential itself.
//
// Not compared: `date` (each answer's own time). The proxy adds no response metadata of its own (its headers
// go to the upstream, docs "Headers"), so no other key is left out. grpc-js servers never compress their
// responses (their `grpc-encoding` is always `identity`), so only request messages are compressed in the
// first test; the second has a server of its own compress its answers (see "compressed answers").
import { createHash } from 'node:crypto'
import { once } from 'node:events'
import { readFile } from 'node:fs/promises'
import { createServer as createHttp2Server, connect as http2Connect } from 'node:http2'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { deflateSync, gunzipSync, gzipSync, inflateSync } from 'node:zlib'
import * as grpc from '@grpc/grpc-js'
import fc from 'fast-check'
import t from 'tap'
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
import { createServerPki } from '../helpers/pki.ts'
import { PROPERTY_SEED } from '../helpers/property.ts'
import { rng } from '../helpers/rng.ts'
import { scratchDir } from '../helpers/scratch.ts'
import { startTestSidecar } from '../helpers/sidecar.ts'

t.setTimeout(120_000)

/** calls per seed, each made directly and through the proxy (and a share of them over TLS as well) */
const CASES = 64
/** calls in flight at once */
const CONCURRENCY = 4
/** the deadline of a call the server holds past it */
const LATE_DEADLINE_MS = 400
/** the deadline every other call may carry: far enough never to be reached */
const FAR_DEADLINE_MS = 30_000
const ISSUER = 'https://idp.grpc-differential.example'
const API_KEY = 'diff-api-key-5e1c7a0b9d2f'

// ---- the service: bytes in, bytes out ---------------------------------------------------------------------

const same = (b: Buffer) => b
type Kind = 'Unary' | 'ServerStream' | 'ClientStream' | 'Bidi'
const KINDS: Kind[] = ['Unary', 'ServerStream', 'ClientStream', 'Bidi']
const path = (kind: Kind) => `/diff.v1.Diff/${kind}`
const method = (kind: Kind) => ({
  path: path(kind),
  requestStream: kind === 'ClientStream' || kind === 'Bidi',
  responseStream: kind === 'ServerStream' || kind === 'Bidi',
  requestSerialize: same,
  requestDeserialize: same,
  responseSerialize: same,
  responseDeserialize: same,
})
const SERVICE = Object.fromEntries(KINDS.map((k) => [k, method(k)])) as grpc.ServiceDefinition

// ---- the grammar ------------------------------------------------------------------------------------------

const weighted = <T>(...choices: [T, number][]) =>
  fc.oneof(...choices.map(([value, weight]) => ({ arbitrary: fc.constant(value), weight })))

const MESSAGE_SIZES = fc.oneof(
  { arbitrary: fc.constant(0), weight: 2 },
  { arbitrary: fc.integer({ min: 1, max: 300 }), weight: 4 },
  { arbitrary: fc.integer({ min: 15 * 1024, max: 17 * 1024 }), weight: 2 },
  { arbitrary: fc.integer({ min: 64 * 1024, max: 80 * 1024 }), weight: 1 },
)
/** one message of about 1 MiB in a few calls: more would make a seed slow, not the check stronger */
const HUGE = 1024 * 1024 + 7

const asciiValue = fc
  .oneof(
    { arbitrary: fc.string({ unit: fc.constantFrom(...ASCII), maxLength: 24 }), weight: 6 },
    { arbitrary: fc.constant(''), weight: 1 },
    // a large value, within what HTTP/2 header lists carry by default
    { arbitrary: fc.integer({ min: 1000, max: 3000 }).map((n) => 'v'.repeat(n)), weight: 1 },
  )
  // HTTP/2 field values carry no whitespace at either end (RFC 9113 §8.2.1); grpc-js trims none
  .map((v) => v.trim())
const metadata = metadataOf(asciiValue)

/**
 * The client's own metadata, within what the proxy takes of a request's header list (`limits.maxHeaderBytes`,
 * 16 KiB by default, each field counted with 32 octets more: RFC 9113 §6.5.2), with room left for the
 * credential and grpc-js's own fields. A larger list is refused by the proxy's HTTP/2 layer and not by a
 * grpc-js server, which takes more: a documented limit, not a difference to look for here.
 */
const requestMetadata = metadata.filter(
  (entries) =>
    entries.reduce((n, [key, values]) => n + values.reduce((m, v) => m + key.length + v.length + 32, 0), 0) <=
    8192,
)

const DETAILS = [...STATUS_DETAILS, '  spaces at both ends  ']

const callCase = fc
  .record({
    kind: fc.constantFrom(...KINDS),
    requests: fc.array(MESSAGE_SIZES, { minLength: 0, maxLength: 4 }),
    responses: fc.array(MESSAGE_SIZES, { minLength: 0, maxLength: 4 }),
    huge: weighted([false, 12], [true, 1]),
    /** the client's own metadata, besides its credential */
    requestMetadata,
    headers: weighted<'none' | 'some'>(['none', 1], ['some', 2]).chain((h) =>
      h === 'none' ? fc.constant(null) : metadata,
    ),
    trailers: metadata,
    code: weighted(['ok', 12], ['error', 7], ['undefined', 1]).chain((c) =>
      c === 'ok'
        ? fc.constant(0)
        : c === 'error'
          ? fc.integer({ min: 1, max: 16 })
          : // a code gRPC does not define: its clients read the number as sent
            fc.constantFrom(17, 99, 1000),
    ),
    details: fc.constantFrom(...DETAILS),
    /** prompt: answered at once; late: held past the client's deadline; cancel: held until the client cancels */
    timing: weighted<'prompt' | 'late' | 'cancel'>(['prompt', 8], ['late', 1], ['cancel', 1]),
    /** a client-streaming call answered with its status before the server read the client's messages */
    early: weighted([false, 4], [true, 1]),
    deadline: fc.boolean(),
    compress: weighted([false, 3], [true, 1]),
    credential: weighted<'jwt' | 'apikey' | 'none'>(['jwt', 2], ['apikey', 2], ['none', 1]),
    tls: weighted([false, 2], [true, 1]),
    seed: fc.integer({ min: 1, max: 0x7fffffff }),
  })
  .map((c) => {
    const unaryIn = c.kind === 'Unary' || c.kind === 'ServerStream'
    const unaryOut = c.kind === 'Unary' || c.kind === 'ClientStream'
    // a unary answer is one message with OK, none with an error status
    const responses = unaryOut ? (c.code === 0 ? [c.responses[0] ?? 0] : []) : c.responses
    const requests = unaryIn ? [c.requests[0] ?? 0] : c.requests
    if (c.huge) (responses.length > 0 ? responses : requests).splice(0, 1, HUGE)
    const early = c.early && !unaryIn && c.timing === 'prompt'
    return { ...c, requests, responses, early }
  })
type CallCase = typeof callCase extends fc.Arbitrary<infer T> ? T : never

function messageBytes(length: number, seed: number): Buffer {
  const next = rng(seed)
  const out = Buffer.allocUnsafe(length)
  for (let i = 0; i < length; i++) out[i] = (next() * 256) | 0
  return out
}

interface Prepared {
  c: CallCase
  requests: Buffer[]
  responses: Buffer[]
  /** sha256 of the request messages as the server must receive them */
  requestDigest: string
}

function digest(messages: readonly Buffer[]): string {
  const h = createHash('sha256')
  for (const m of messages) h.update(`${m.length}:`).update(m)
  return h.digest('hex')
}

function toMetadata(entries: [string, string[]][] | null): grpc.Metadata {
  const md = new grpc.Metadata()
  for (const [key, values] of entries ?? [])
    for (const v of values) md.add(key, key.endsWith('-bin') ? Buffer.from(v, 'base64') : v)
  return md
}

// ---- the server -------------------------------------------------------------------------------------------

interface ServerCall {
  metadata: grpc.Metadata
  on(event: 'cancelled', listener: () => void): unknown
}

/** what the server got of each call, by its x-request-id */
interface Received {
  requestDigest?: string
  cancelled: boolean
  /** the request metadata as the server read it */
  metadata: Record<string, string[]>
}

function startServer(cases: Prepared[]) {
  const received = new Map<string, Received>()
  const server = new grpc.Server()
  const begin = (call: ServerCall) => {
    const p = cases[Number(call.metadata.get('x-case')[0])]!
    const id = String(call.metadata.get('x-request-id')[0])
    const r: Received = { cancelled: false, metadata: asCompared(call.metadata) }
    received.set(id, r)
    call.on('cancelled', () => {
      r.cancelled = true
    })
    return { p, r }
  }
  const status = (p: Prepared): grpc.ServerErrorResponse =>
    Object.assign(new Error(p.c.details), {
      code: p.c.code,
      details: p.c.details,
      metadata: toMetadata(p.c.trailers),
    })
  /** a call held is never answered: it ends at its deadline or when its client cancels */
  const held = (p: Prepared) => p.c.timing !== 'prompt'
  const collect = (
    call: ServerCall & {
      on(e: 'data', l: (b: Buffer) => void): unknown
      on(e: 'end', l: () => void): unknown
    },
    r: Received,
    done: () => void,
  ) => {
    const got: Buffer[] = []
    call.on('data', (b: Buffer) => got.push(b))
    call.on('end', () => {
      r.requestDigest = digest(got)
      done()
    })
  }
  const streamOut = (
    call: grpc.ServerWritableStream<Buffer, Buffer> | grpc.ServerDuplexStream<Buffer, Buffer>,
    p: Prepared,
  ) => {
    if (p.c.headers) call.sendMetadata(toMetadata(p.c.headers))
    for (const m of p.responses) call.write(m)
  }
  const endStream = (
    call: grpc.ServerWritableStream<Buffer, Buffer> | grpc.ServerDuplexStream<Buffer, Buffer>,
    p: Prepared,
  ) => {
    if (held(p)) return
    if (p.c.code === 0) call.end(toMetadata(p.c.trailers))
    // the status after the messages: grpc-js ends a stream on its 'error' with that status
    else call.emit('error', status(p))
  }
  server.addService(SERVICE, {
    Unary(call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) {
      const { p, r } = begin(call)
      r.requestDigest = digest([call.request])
      if (p.c.headers) call.sendMetadata(toMetadata(p.c.headers))
      if (held(p)) return
      if (p.c.code === 0) cb(null, p.responses[0]!, toMetadata(p.c.trailers))
      else cb(status(p))
    },
    ServerStream(call: grpc.ServerWritableStream<Buffer, Buffer>) {
      const { p, r } = begin(call)
      r.requestDigest = digest([call.request])
      streamOut(call, p)
      endStream(call, p)
    },
    ClientStream(call: grpc.ServerReadableStream<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) {
      const { p, r } = begin(call)
      if (p.c.headers) call.sendMetadata(toMetadata(p.c.headers))
      const answer = () => {
        if (held(p)) return
        if (p.c.code === 0) cb(null, p.responses[0]!, toMetadata(p.c.trailers))
        else cb(status(p))
      }
      if (p.c.early) answer()
      else collect(call, r, answer)
    },
    Bidi(call: grpc.ServerDuplexStream<Buffer, Buffer>) {
      const { p, r } = begin(call)
      // answers go out while the client is still sending (full duplex); the status once it has sent all
      if (!p.c.early) collect(call, r, () => endStream(call, p))
      streamOut(call, p)
      if (p.c.early) endStream(call, p)
    },
  })
  const port = new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  )
  return {
    port,
    received,
    close: () =>
      new Promise<void>((r) => server.tryShutdown(() => r())).finally(() => server.forceShutdown()),
  }
}

// ---- the client -------------------------------------------------------------------------------------------

/** what a client observed of one call */
interface Observed {
  code: number
  details: string
  /** the response metadata, undefined when none came */
  headers: Record<string, string[]> | undefined
  trailers: Record<string, string[]>
  messages: Buffer[]
}

/** metadata as compared: key → values (a `-bin` value as base64), without `date` */
function asCompared(md: grpc.Metadata): Record<string, string[]> {
  const out: Record<string, string[]> = {}
  const map = md.toJSON()
  for (const key of Object.keys(map).sort()) {
    if (key === 'date') continue
    out[key] = map[key]!.map((v) => (typeof v === 'string' ? v : v.toString('base64')))
  }
  return out
}

type AnyCall =
  | grpc.ClientUnaryCall
  | grpc.ClientReadableStream<Buffer>
  | grpc.ClientWritableStream<Buffer>
  | grpc.ClientDuplexStream<Buffer, Buffer>

/**
 * Makes the case's call on `client` and resolves with what the client observed once the call has its status.
 * `seen`: whether the server has the call (a cancel waits for it, so that every cancelled call reached the
 * server and, through the proxy, was forwarded and is audited).
 */
function makeCall(
  client: grpc.Client,
  p: Prepared,
  i: number,
  requestId: string,
  credential: grpc.Metadata,
  seen: () => boolean,
): Promise<Observed> {
  const { c } = p
  const md = toMetadata(c.requestMetadata)
  md.merge(credential)
  md.set('x-case', String(i))
  md.set('x-request-id', requestId)
  const options: grpc.CallOptions = {}
  if (c.timing === 'late') options.deadline = Date.now() + LATE_DEADLINE_MS
  else if (c.deadline) options.deadline = Date.now() + FAR_DEADLINE_MS
  return new Promise<Observed>((resolve) => {
    let headers: Record<string, string[]> | undefined
    const messages: Buffer[] = []
    let status: grpc.StatusObject | undefined
    let callbackDone = false
    const unaryOut = c.kind === 'Unary' || c.kind === 'ClientStream'
    const finish = () => {
      if (status === undefined || (unaryOut && !callbackDone)) return
      resolve({
        code: status.code,
        details: status.details,
        headers,
        trailers: asCompared(status.metadata),
        messages,
      })
    }
    const callback = (_err: grpc.ServiceError | null, res?: Buffer) => {
      if (res !== undefined) messages.push(res)
      callbackDone = true
      finish()
    }
    let call: AnyCall
    if (c.kind === 'Unary')
      call = client.makeUnaryRequest(path(c.kind), same, same, p.requests[0]!, md, options, callback)
    else if (c.kind === 'ServerStream')
      call = client.makeServerStreamRequest(path(c.kind), same, same, p.requests[0]!, md, options)
    else if (c.kind === 'ClientStream')
      call = client.makeClientStreamRequest(path(c.kind), same, same, md, options, callback)
    else call = client.makeBidiStreamRequest(path(c.kind), same, same, md, options)
    call.on('metadata', (m: grpc.Metadata) => {
      headers = asCompared(m)
    })
    call.on('status', (s: grpc.StatusObject) => {
      status = s
      finish()
    })
    if (!unaryOut) {
      const incoming = call as grpc.ClientReadableStream<Buffer>
      incoming.on('data', (m: Buffer) => messages.push(m))
      incoming.on('error', () => {})
    }
    if (c.kind === 'ClientStream' || c.kind === 'Bidi') {
      const outgoing = call as grpc.ClientWritableStream<Buffer>
      for (const m of p.requests) outgoing.write(m)
      outgoing.end()
    }
    if (c.timing === 'cancel') {
      // cancelled once the server has the call and the client has what the server sent before holding it
      void eventually(
        () =>
          seen() &&
          messages.length === (unaryOut ? 0 : p.responses.length) &&
          (c.headers === null || headers !== undefined),
        { timeoutMs: 20_000, what: `case ${i} ready to cancel` },
      ).then(
        () => call.cancel(),
        () => call.cancel(),
      )
    }
  })
}

/**
 * undefined when the server read the same request metadata through the proxy as directly. A deliberate
 * difference (docs/reference.md "Headers"): a field the client sent in several lines reaches the upstream as
 * one value, its lines joined with `, ` (which a grpc-js server reads as it reads the lines: node:http2 joins
 * them alike), without whitespace at either end, which HTTP/2 does not carry (RFC 9113 §8.2.1): an ASCII key
 * whose last value was empty reaches it as `b,` where the lines read `b, `. A `-bin` key is read by splitting
 * at the commas and trimming, so its values are the same either way.
 */
function judgeRequest(
  p: Prepared,
  direct: Received | undefined,
  via: Received | undefined,
): string | undefined {
  if (direct === undefined || via === undefined)
    return `the server saw the call ${direct ? 'directly only' : 'through the proxy only'}`
  const joined = new Set(
    p.c.requestMetadata
      .filter(([key, values]) => !key.endsWith('-bin') && values.length > 1)
      .map(([key]) => key),
  )
  const view = (m: Record<string, string[]>, proxied: boolean) =>
    JSON.stringify(
      Object.entries(m)
        .filter(([key]) => !PROXY_REQUEST_KEYS.has(key))
        .map(([key, values]) => [key, proxied || !joined.has(key) ? values : values.map((v) => v.trim())]),
    )
  const [d, v] = [view(direct.metadata, false), view(via.metadata, true)]
  return d === v ? undefined : `request metadata ${v}, directly ${d}`
}

/** undefined when `via` observed what `direct` did, else what differs */
function judge(p: Prepared, direct: Observed, via: Observed): string | undefined {
  const { c } = p
  if (via.code !== direct.code)
    return `code ${via.code} (${via.details}), directly ${direct.code} (${direct.details})`
  if (c.timing === 'late') {
    // what the server sent before holding the call arrives before the deadline or not, on either path alike:
    // only that nothing else arrived, and in order
    const expected = p.responses
    if (via.messages.some((m, k) => expected[k] === undefined || !m.equals(expected[k]!)))
      return `messages not a prefix of the ${expected.length} sent`
    return undefined
  }
  if (c.timing === 'cancel') return undefined
  if (via.details !== direct.details)
    return `details ${JSON.stringify(via.details)}, directly ${JSON.stringify(direct.details)}`
  const h = JSON.stringify(via.headers)
  const dh = JSON.stringify(direct.headers)
  if (h !== dh) return `response metadata ${h}, directly ${dh}`
  const tr = JSON.stringify(via.trailers)
  const dtr = JSON.stringify(direct.trailers)
  if (tr !== dtr) return `trailing metadata ${tr}, directly ${dtr}`
  if (via.messages.length !== direct.messages.length)
    return `${via.messages.length} messages, directly ${direct.messages.length}`
  for (let k = 0; k < via.messages.length; k++)
    if (!via.messages[k]!.equals(direct.messages[k]!))
      return `message ${k}: ${via.messages[k]!.length} bytes differ from the ${direct.messages[k]!.length} received directly`
  return undefined
}

// ---- the run ----------------------------------------------------------------------------------------------

t.test('gRPC calls through the proxy observe what the same calls observe directly', async (t) => {
  const started = Date.now()
  const cases: Prepared[] = fc.sample(callCase, { numRuns: CASES, seed: PROPERTY_SEED }).map((c) => {
    const next = rng(c.seed)
    const requests = c.requests.map((n) => messageBytes(n, (next() * 0x7fffffff) | 0))
    const responses = c.responses.map((n) => messageBytes(n, (next() * 0x7fffffff) | 0))
    return { c, requests, responses, requestDigest: digest(requests) }
  })

  const server = startServer(cases)
  const port = await server.port
  t.teardown(() => server.close())
  const callers = await startCallers(t, { issuer: ISSUER, audience: 'diff', apiKey: API_KEY })
  const { ca, server: serverCert } = await createServerPki()
  const auditFile = join(await scratchDir('grpc-differential'), 'audit.log')
  const sidecar = await startTestSidecar(t, {
    service: 'diff',
    upstream: `h2c://127.0.0.1:${port}`,
    listen: {
      http: '127.0.0.1:0',
      https: { address: '127.0.0.1:0', cert: serverCert.certFile, key: serverCert.keyFile },
    },
    ...callers.config,
    audit: { output: auditFile },
  })
  const { token } = callers
  const credentials = {
    jwt: toMetadata([['authorization', [`Bearer ${token}`]]]),
    apikey: toMetadata([['x-api-key', [API_KEY]]]),
    none: new grpc.Metadata(),
  }

  const GZIP = { 'grpc.default_compression_algorithm': 2 }
  const plain = grpc.credentials.createInsecure()
  const tls = grpc.credentials.createSsl(Buffer.from(ca.certPem))
  const legs = {
    direct: `127.0.0.1:${port}`,
    h2c: `127.0.0.1:${sidecar.proxyAddress.port}`,
    tls: `localhost:${sidecar.httpsAddress!.port}`,
  }
  const clients = new Map<string, grpc.Client>()
  const clientFor = (leg: keyof typeof legs, compress: boolean) => {
    const name = `${leg}/${compress}`
    let client = clients.get(name)
    if (client === undefined) {
      client = new grpc.Client(legs[leg], leg === 'tls' ? tls : plain, compress ? GZIP : {})
      clients.set(name, client)
    }
    return client
  }
  t.teardown(() => {
    for (const client of clients.values()) client.close()
  })

  const disagreements: { case: number; leg: string; what: string; c: CallCase }[] = []
  /** the proxied calls, by request id: what their client saw */
  const proxied = new Map<string, { p: Prepared; observed: Observed }>()
  await inParallel(cases.length, CONCURRENCY, async (i) => {
    const p = cases[i]!
    const credential = credentials[p.c.credential]
    const run = (leg: keyof typeof legs) => {
      const id = `diff-${PROPERTY_SEED}-${i}-${leg}`
      return makeCall(clientFor(leg, p.c.compress), p, i, id, credential, () => server.received.has(id)).then(
        (observed) => ({ id, observed }),
      )
    }
    const direct = await run('direct')
    for (const leg of p.c.tls ? (['h2c', 'tls'] as const) : (['h2c'] as const)) {
      const via = await run(leg)
      proxied.set(via.id, { p, observed: via.observed })
      const what =
        judge(p, direct.observed, via.observed) ??
        judgeRequest(p, server.received.get(direct.id), server.received.get(via.id)) ??
        (p.c.timing === 'prompt' &&
        !p.c.early &&
        server.received.get(via.id)?.requestDigest !== p.requestDigest
          ? 'the server received other request messages than the client sent'
          : undefined)
      if (what !== undefined) disagreements.push({ case: i, leg, what, c: p.c })
    }
    // a client's cancel reaches the server through the proxy as it does directly (RST_STREAM CANCEL)
    if (p.c.timing === 'cancel')
      for (const leg of p.c.tls ? ['direct', 'h2c', 'tls'] : ['direct', 'h2c']) {
        const id = `diff-${PROPERTY_SEED}-${i}-${leg}`
        await eventually(() => server.received.get(id)?.cancelled, {
          what: `${id} cancelled at the server`,
        }).catch(() =>
          disagreements.push({ case: i, leg, what: 'the server never saw the call cancelled', c: p.c }),
        )
      }
    if (
      p.c.timing === 'prompt' &&
      !p.c.early &&
      server.received.get(direct.id)?.requestDigest !== p.requestDigest
    )
      disagreements.push({
        case: i,
        leg: 'direct',
        what: 'the server received other request messages',
        c: p.c,
      })
  })
  t.same(
    // long metadata values cut short: the case's seed reproduces them whole
    disagreements
      .slice(0, 50)
      .map((d) => ({ ...d, what: d.what.replace(/v{40,}/g, (v) => `v×${v.length}`) })),
    [],
    `no disagreement (of ${disagreements.length})`,
  )

  // the audit trail: one line per proxied call, with the status its client saw and its identity
  const lines = await auditLines(auditFile, proxied.size, 'every proxied call audited')
  t.equal(lines.all.length, proxied.size, 'one audit line per proxied call, and no other')
  const { lineOf, faults: auditDisagreements } = oneLineEach(lines.all, proxied.keys())
  for (const [id, { p, observed }] of proxied) {
    const l = lineOf.get(id)
    if (l === undefined) continue
    const expected =
      p.c.timing === 'cancel'
        ? // docs "HTTP/2 and gRPC": client cancelled (recorded only), 1 CANCELLED
          [1]
        : p.c.timing === 'late'
          ? // the proxy's timer, the upstream's own DEADLINE_EXCEEDED or the client's cancel at its deadline
            // end the call, whichever is first: recorded 4; a client timer that fired before the proxy's last
            // tenth of the deadline (the call's transit to the proxy counts on the client's clock only) is its
            // cancel, recorded 1 (grpc-e2e.test.ts allows the same)
            [4, 1]
          : // docs "HTTP/2 and gRPC": a grpc-status other than 0-16 is recorded 2 UNKNOWN (a metrics label
            // of bounded values), where the client reads the number as sent
            [observed.code > 16 ? 2 : observed.code]
    if (!expected.includes(Number(l['grpc_status'])))
      auditDisagreements.push(`${id}: grpc_status ${l['grpc_status']}, the client saw ${observed.code}`)
    // docs "Audit events": a gRPC call's status is 200 once its answer started; 499 when none reached the
    // client, which a call held without an answer, then cancelled by its client, is
    const answered = observed.headers !== undefined
    const statuses =
      p.c.timing === 'prompt' || answered ? [200] : p.c.timing === 'cancel' ? [499] : [200, 499]
    if (!statuses.includes(Number(l['status']))) auditDisagreements.push(`${id}: status ${l['status']}`)
    if (p.c.timing === 'prompt') {
      // the bytes of the messages as framed (a 5-byte prefix each); grpc-js servers never compress theirs
      const framed = (messages: readonly Buffer[]) => messages.reduce((n, m) => n + 5 + m.length, 0)
      if (l['bytes_out'] !== framed(observed.messages))
        auditDisagreements.push(
          `${id}: bytes_out ${l['bytes_out']}, the client got ${framed(observed.messages)}`,
        )
      // a call answered early: the proxy passes on what the client sent until then
      if (!p.c.compress && !p.c.early && l['bytes_in'] !== framed(p.requests))
        auditDisagreements.push(`${id}: bytes_in ${l['bytes_in']}, the client sent ${framed(p.requests)}`)
    }
    auditDisagreements.push(...callAuditFaults(id, l, path(p.c.kind), p.c.credential))
  }
  t.same(
    auditDisagreements.slice(0, 8),
    [],
    `the audit agrees with every client (of ${auditDisagreements.length})`,
  )
  t.notOk(lines.text.includes(API_KEY), 'no api key in the audit trail')
  t.notOk(lines.text.includes(token.split('.')[2]!), "no token's signature in the audit trail")
  t.notOk(lines.text.includes(token.split('.')[1]!), "no token's claims in the audit trail")

  const n = (f: (c: CallCase) => boolean) => cases.filter((p) => f(p.c)).length
  t.comment(
    `${CASES} calls (seed ${PROPERTY_SEED}), ${proxied.size} proxied, in ${Date.now() - started} ms: ` +
      KINDS.map((k) => `${n((c) => c.kind === k)} ${k}`).join(', ') +
      `; ${n((c) => c.code !== 0)} non-OK (${[...proxied.values()].filter((x) => x.observed.code > 16).length} proxied calls read a code gRPC does not define); ${n((c) => c.timing === 'late')} late; ${n((c) => c.timing === 'cancel')} cancelled; ${n((c) => c.early)} answered early; ` +
      `${n((c) => c.compress)} compressed; ${n((c) => c.huge)} with a 1 MiB message; ${n((c) => c.tls)} over TLS too`,
  )
})

// ---- compressed answers -----------------------------------------------------------------------------------

/**
 * grpc-js servers (1.14) never compress what they send, so the calls whose answers are compressed go to a gRPC
 * server written here on node:http2, behind a sidecar of their own: it answers with the case's encoding (gzip
 * or deflate, RFC 1952 and RFC 1950 as grpc-js reads them) when the request's `grpc-accept-encoding` lists
 * it, else uncompressed, as the gRPC spec has a server do; every other message of a compressed answer goes out
 * with the compressed flag clear, which the spec allows. It reads compressed requests too. The clients: a
 * grpc-js client (which always advertises `identity,deflate,gzip`, and may compress its requests) and a raw
 * node:http2 client that advertises gzip, deflate or nothing, and may gzip its request: the raw one compares
 * the answer's `grpc-encoding` and `grpc-accept-encoding` and its DATA bytes as they came, the proxy must pass
 * them on unchanged; both must decode the messages the server sent.
 */
const COMPRESSED_CASES = 40
type Encoding = 'gzip' | 'deflate' | 'identity'
const compressedCase = fc.record({
  kind: fc.constantFrom(...KINDS),
  requests: fc.array(MESSAGE_SIZES, { minLength: 0, maxLength: 3 }),
  responses: fc.array(MESSAGE_SIZES, { minLength: 0, maxLength: 3 }),
  encoding: weighted<Encoding>(['gzip', 2], ['deflate', 2], ['identity', 1]),
  client: weighted<'grpc-js' | 'raw'>(['grpc-js', 1], ['raw', 1]),
  /** what the raw client lists in grpc-accept-encoding; undefined: no such header */
  accepts: weighted<string | undefined>(
    ['identity,deflate,gzip', 2],
    ['gzip', 1],
    ['deflate', 1],
    [undefined, 2],
  ),
  compressRequest: weighted([false, 2], [true, 1]),
  code: weighted([0, 4], [13, 1], [5, 1]),
  tls: weighted([false, 2], [true, 1]),
  seed: fc.integer({ min: 1, max: 0x7fffffff }),
})
type CompressedCase = typeof compressedCase extends fc.Arbitrary<infer T> ? T : never

const compressors: Record<Exclude<Encoding, 'identity'>, (b: Buffer) => Buffer> = {
  gzip: (b) => gzipSync(b),
  deflate: (b) => deflateSync(b),
}
const decompressors: Record<string, (b: Buffer) => Buffer> = {
  gzip: (b) => gunzipSync(b),
  deflate: (b) => inflateSync(b),
}

/** gRPC's length-prefixed messages: the flag byte, the length, the bytes */
function frameMessage(message: Buffer, compressed: boolean): Buffer {
  const head = Buffer.alloc(5)
  head[0] = compressed ? 1 : 0
  head.writeUInt32BE(message.length, 1)
  return Buffer.concat([head, message])
}

/** the messages of a gRPC body, decompressed by `encoding` where their flag says so */
function readMessages(body: Buffer, encoding: string | undefined): Buffer[] {
  const out: Buffer[] = []
  for (let at = 0; at + 5 <= body.length; ) {
    const length = body.readUInt32BE(at + 1)
    const message = body.subarray(at + 5, at + 5 + length)
    if (body[at] === 1) {
      const decompress = decompressors[encoding ?? 'identity']
      if (decompress === undefined) throw new Error(`a compressed message under grpc-encoding ${encoding}`)
      out.push(decompress(message))
    } else out.push(Buffer.from(message))
    at += 5 + length
  }
  return out
}

interface CompressedPrepared {
  c: CompressedCase
  requests: Buffer[]
  responses: Buffer[]
}

/** what the compressing server got of a call, by its x-request-id */
interface CompressedReceived {
  requestDigest: string
  /** the request's grpc-accept-encoding and grpc-encoding as they reached the server */
  accepts: string | undefined
  encoding: string | undefined
}

function startCompressingServer(cases: CompressedPrepared[]) {
  const received = new Map<string, CompressedReceived>()
  const server = createHttp2Server()
  server.on('stream', (stream, headers) => {
    stream.on('error', () => {})
    const p = cases[Number(headers['x-case'])]!
    const chunks: Buffer[] = []
    stream.on('data', (chunk: Buffer) => chunks.push(chunk))
    stream.on('end', () => {
      const accepts = headers['grpc-accept-encoding'] as string | undefined
      const requestEncoding = headers['grpc-encoding'] as string | undefined
      received.set(String(headers['x-request-id']), {
        requestDigest: digest(readMessages(Buffer.concat(chunks), requestEncoding)),
        accepts,
        encoding: requestEncoding,
      })
      const { encoding } = p.c
      const listed = (accepts ?? '').split(',').map((e) => e.trim())
      const used = encoding !== 'identity' && listed.includes(encoding) ? encoding : undefined
      stream.respond(
        {
          ':status': 200,
          'content-type': 'application/grpc',
          'grpc-encoding': used ?? 'identity',
          'grpc-accept-encoding': 'identity,deflate,gzip',
        },
        { waitForTrailers: true },
      )
      stream.on('wantTrailers', () =>
        stream.sendTrailers(
          p.c.code === 0
            ? { 'grpc-status': '0' }
            : { 'grpc-status': String(p.c.code), 'grpc-message': 'no%20luck' },
        ),
      )
      p.responses.forEach((m, k) => {
        const compressed = used !== undefined && k % 2 === 0
        stream.write(frameMessage(compressed ? compressors[used](m) : m, compressed))
      })
      stream.end()
    })
  })
  const port = new Promise<number>((resolve) =>
    server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)),
  )
  return { port, received, close: () => new Promise<void>((r) => server.close(() => r())) }
}

/** what the raw client saw of a call: the answer's headers as they came, its body's bytes, its trailers */
interface RawObserved {
  status: number
  grpcEncoding: string | undefined
  grpcAcceptEncoding: string | undefined
  body: Buffer
  grpcStatus: string | undefined
  grpcMessage: string | undefined
  /** the request body's bytes, as the client framed (and compressed) them */
  sent: number
}

async function rawCall(
  url: string,
  ca: string | undefined,
  p: CompressedPrepared,
  i: number,
  requestId: string,
): Promise<RawObserved> {
  const session = http2Connect(url, ca === undefined ? {} : { ca })
  session.on('error', () => {})
  try {
    const headers: Record<string, string> = {
      ':method': 'POST',
      ':path': path(p.c.kind),
      'content-type': 'application/grpc',
      te: 'trailers',
      'x-case': String(i),
      'x-request-id': requestId,
    }
    if (p.c.accepts !== undefined) headers['grpc-accept-encoding'] = p.c.accepts
    if (p.c.compressRequest) headers['grpc-encoding'] = 'gzip'
    const stream = session.request(headers)
    const body: Buffer[] = []
    let trailers: Record<string, unknown> = {}
    stream.on('trailers', (t: Record<string, unknown>) => {
      trailers = t
    })
    stream.on('data', (chunk: Buffer) => body.push(chunk))
    const requestBody = Buffer.concat(
      p.requests.map((m) => (p.c.compressRequest ? frameMessage(gzipSync(m), true) : frameMessage(m, false))),
    )
    stream.end(requestBody)
    const [response] = (await once(stream, 'response')) as [Record<string, unknown>]
    if (!stream.readableEnded) await once(stream, 'end')
    const header = (h: Record<string, unknown>, name: string) => h[name] as string | undefined
    return {
      status: Number(response[':status']),
      grpcEncoding: header(response, 'grpc-encoding'),
      grpcAcceptEncoding: header(response, 'grpc-accept-encoding'),
      body: Buffer.concat(body),
      grpcStatus: header(trailers, 'grpc-status') ?? header(response, 'grpc-status'),
      grpcMessage: header(trailers, 'grpc-message') ?? header(response, 'grpc-message'),
      sent: requestBody.length,
    }
  } finally {
    session.close()
  }
}

t.test('compressed gRPC answers reach the client as the server compressed them', async (t) => {
  const cases: CompressedPrepared[] = fc
    .sample(compressedCase, { numRuns: COMPRESSED_CASES, seed: PROPERTY_SEED })
    .map((c) => {
      const next = rng(c.seed)
      const unaryIn = c.kind === 'Unary' || c.kind === 'ServerStream'
      const unaryOut = c.kind === 'Unary' || c.kind === 'ClientStream'
      const requests = (unaryIn ? [c.requests[0] ?? 0] : c.requests).map((n) =>
        // compressible as well as random bytes: half of each message repeats one byte
        Buffer.concat([messageBytes(n >> 1, (next() * 0x7fffffff) | 0), Buffer.alloc(n - (n >> 1), 7)]),
      )
      const responseSizes = unaryOut ? (c.code === 0 ? [c.responses[0] ?? 0] : []) : c.responses
      const responses = responseSizes.map((n) =>
        Buffer.concat([messageBytes(n >> 1, (next() * 0x7fffffff) | 0), Buffer.alloc(n - (n >> 1), 7)]),
      )
      return { c, requests, responses }
    })
  const server = startCompressingServer(cases)
  const port = await server.port
  t.teardown(() => server.close())
  const { ca, server: serverCert } = await createServerPki()
  const auditFile = join(await scratchDir('grpc-differential-compressed'), 'audit.log')
  const sidecar = await startTestSidecar(t, {
    service: 'diff-compressed',
    upstream: `h2c://127.0.0.1:${port}`,
    listen: {
      http: '127.0.0.1:0',
      https: { address: '127.0.0.1:0', cert: serverCert.certFile, key: serverCert.keyFile },
    },
    audit: { output: auditFile },
  })
  /** the raw calls through the proxy, by request id: the body bytes each way as their client counted them */
  const rawProxied = new Map<string, { bytesIn: number; bytesOut: number }>()
  const legs = {
    direct: `127.0.0.1:${port}`,
    h2c: `127.0.0.1:${sidecar.proxyAddress.port}`,
    tls: `localhost:${sidecar.httpsAddress!.port}`,
  }
  const plain = grpc.credentials.createInsecure()
  const tls = grpc.credentials.createSsl(Buffer.from(ca.certPem))
  const clients: grpc.Client[] = []
  t.teardown(() => {
    for (const client of clients) client.close()
  })
  const disagreements: { case: number; leg: string; what: string; c: CompressedCase }[] = []
  let compressedAnswers = 0
  await inParallel(cases.length, CONCURRENCY, async (i) => {
    const p = cases[i]!
    const legsOf = p.c.tls ? (['direct', 'h2c', 'tls'] as const) : (['direct', 'h2c'] as const)
    const id = (leg: string) => `compressed-${PROPERTY_SEED}-${i}-${leg}`
    const expectRequest = (leg: string) => {
      const got = server.received.get(id(leg))
      if (got?.requestDigest !== digest(p.requests))
        disagreements.push({ case: i, leg, what: 'the server read other request messages', c: p.c })
      return got
    }
    if (p.c.client === 'raw') {
      const seen: Partial<Record<(typeof legsOf)[number], RawObserved>> = {}
      for (const leg of legsOf) {
        const url = leg === 'tls' ? `https://${legs.tls}` : `http://${legs[leg]}`
        const o = await rawCall(url, leg === 'tls' ? ca.certPem : undefined, p, i, id(leg))
        seen[leg] = o
        if (leg !== 'direct') rawProxied.set(id(leg), { bytesIn: o.sent, bytesOut: o.body.length })
        const messages = readMessages(o.body, o.grpcEncoding)
        if (digest(messages) !== digest(p.responses))
          disagreements.push({ case: i, leg, what: `decoded ${messages.length} other messages`, c: p.c })
        if (o.grpcEncoding !== 'identity' && o.body.length > 0) compressedAnswers++
        const got = expectRequest(leg)
        const direct = server.received.get(id('direct'))
        if (leg !== 'direct' && (got?.accepts !== direct?.accepts || got?.encoding !== direct?.encoding))
          disagreements.push({
            case: i,
            leg,
            what: `request grpc-accept-encoding ${got?.accepts} grpc-encoding ${got?.encoding}, directly ${direct?.accepts} ${direct?.encoding}`,
            c: p.c,
          })
      }
      const direct = seen.direct!
      for (const leg of legsOf.slice(1)) {
        const via = seen[leg]!
        const view = (o: RawObserved) => JSON.stringify({ ...o, body: o.body.toString('base64') })
        if (view(via) !== view(direct))
          disagreements.push({ case: i, leg, what: `answer ${view(via)}, directly ${view(direct)}`, c: p.c })
      }
      return
    }
    // grpc-js: the same client code as above, on a channel of its own (a channel learns what its server accepts)
    const asCallCase = {
      kind: p.c.kind,
      requestMetadata: [],
      timing: 'prompt',
      deadline: false,
      headers: null,
    } as unknown as CallCase
    const prepared: Prepared = {
      c: asCallCase,
      requests: p.requests,
      responses: p.responses,
      requestDigest: '',
    }
    const observed: Partial<Record<(typeof legsOf)[number], Observed>> = {}
    for (const leg of legsOf) {
      const client = new grpc.Client(
        legs[leg],
        leg === 'tls' ? tls : plain,
        p.c.compressRequest ? { 'grpc.default_compression_algorithm': 2 } : {},
      )
      clients.push(client)
      observed[leg] = await makeCall(client, prepared, i, id(leg), new grpc.Metadata(), () => true)
      const o = observed[leg]!
      if (o.code !== p.c.code)
        disagreements.push({ case: i, leg, what: `code ${o.code} (${o.details})`, c: p.c })
      // grpc-js decompresses a message asynchronously and ends the call at its status: after an error status,
      // the messages still decompressing are never read, on any path; those read are a prefix of those sent
      const read = p.c.code === 0 ? p.responses : p.responses.slice(0, o.messages.length)
      if (digest(o.messages) !== digest(read))
        disagreements.push({ case: i, leg, what: `decoded ${o.messages.length} other messages`, c: p.c })
      expectRequest(leg)
    }
    for (const leg of legsOf.slice(1)) {
      const [direct, via] = [observed.direct!, observed[leg]!]
      const what =
        p.c.code === 0
          ? judge(prepared, direct, via)
          : via.code !== direct.code || via.details !== direct.details
            ? `status ${via.code} ${via.details}, directly ${direct.code} ${direct.details}`
            : undefined
      if (what !== undefined) disagreements.push({ case: i, leg, what, c: p.c })
    }
  })
  t.same(disagreements.slice(0, 20), [], `no disagreement (of ${disagreements.length})`)
  t.ok(compressedAnswers > 2, `${compressedAnswers} raw calls read a compressed answer`)
  // docs "Audit events": the body bytes as they passed, compressed as they were
  const audited = await eventually(
    async () => {
      const lines = (await readFile(auditFile, 'utf8').catch(() => ''))
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Record<string, unknown>)
      const byId = new Map(lines.map((l) => [String(l['request_id']), l]))
      return [...rawProxied.keys()].every((k) => byId.has(k)) ? byId : undefined
    },
    { what: 'every raw proxied call audited', timeoutMs: 20_000 },
  )
  const bytesDisagreements = [...rawProxied]
    .map(([k, counted]) => {
      const l = audited.get(k)!
      const got = { bytesIn: l['bytes_in'], bytesOut: l['bytes_out'] }
      return JSON.stringify(got) === JSON.stringify(counted)
        ? undefined
        : `${k}: audited ${JSON.stringify(got)}, the client counted ${JSON.stringify(counted)}`
    })
    .filter((d) => d !== undefined)
  t.same(bytesDisagreements, [], `the audit counts the compressed bytes of ${rawProxied.size} raw calls`)
})
