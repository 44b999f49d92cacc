// The answers the proxy gives gRPC-Web calls on its own behalf (a policy deny, a token it rejects, an upstream
// it cannot reach, a call past its `grpc-timeout`) are gRPC-Web answers, as browsers' clients read them
// (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md): HTTP 200 in the call's own content type
// (`-text`: a base64 body; the `+proto`/`+json` format kept), the status in the header section (trailers-only)
// or in a trailer frame (flag 0x80) at the end of the body. A raw HTTP/1.1 client sends real frames and
// parses the answer by the spec.
import { once } from 'node:events'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import { createServer as createH2cServer, type ServerHttp2Stream } from 'node:http2'
import { connect, type Server } from 'node:net'
import t from 'tap'
import { startBin } from '../helpers/bin.ts'
import { eventually } from '../helpers/eventually.ts'
import { createSigningKey, mintToken, startJwksServer } from '../helpers/jwks.ts'
import { metricValue, scrape, scrapeUntil } from '../helpers/metrics.ts'
import { listenUntilTeardown, refusedPort } from '../helpers/net.ts'

function frame(flag: number, payload: Buffer): Buffer {
  const head = Buffer.alloc(5)
  head[0] = flag
  head.writeUInt32BE(payload.length, 1)
  return Buffer.concat([head, payload])
}

interface RawAnswer {
  status: number
  headers: Record<string, string>
  /** the body, out of its HTTP/1.1 framing */
  body: Buffer
  /** the body's framing ended it (a cut connection leaves it incomplete) */
  complete: boolean
}

/**
 * One POST on its own connection, read until the proxy closes it (`connection: close`). With `trailers`, the
 * body goes chunked, announced in a Trailer header and followed by that trailer section.
 */
async function post(
  port: number,
  path: string,
  headers: Record<string, string>,
  body: Buffer,
  trailers?: Record<string, string>,
): Promise<RawAnswer> {
  const socket = connect(port, '127.0.0.1')
  const chunks: Buffer[] = []
  socket.on('data', (c: Buffer) => chunks.push(c))
  socket.on('error', () => {})
  let head = `POST ${path} HTTP/1.1\r\nhost: grpc.test\r\nconnection: close\r\n`
  if (trailers === undefined) head += `content-length: ${body.length}\r\n`
  else head += `transfer-encoding: chunked\r\ntrailer: ${Object.keys(trailers).join(', ')}\r\n`
  for (const [name, value] of Object.entries(headers)) head += `${name}: ${value}\r\n`
  if (trailers === undefined) socket.write(Buffer.concat([Buffer.from(`${head}\r\n`, 'latin1'), body]))
  else {
    let end = '\r\n0\r\n'
    for (const [name, value] of Object.entries(trailers)) end += `${name}: ${value}\r\n`
    socket.write(
      Buffer.concat([
        Buffer.from(`${head}\r\n${body.length.toString(16)}\r\n`, 'latin1'),
        body,
        Buffer.from(`${end}\r\n`, 'latin1'),
      ]),
    )
  }
  await once(socket, 'close')
  const raw = Buffer.concat(chunks)
  const end = raw.indexOf('\r\n\r\n')
  if (end === -1) throw new Error(`no response head: ${raw.toString('latin1')}`)
  const lines = raw.toString('latin1', 0, end).split('\r\n')
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(lines[0]!)?.[1])
  const fields: Record<string, string> = {}
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':')
    fields[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim()
  }
  const rest = raw.subarray(end + 4)
  if (fields['transfer-encoding'] !== 'chunked') {
    const length = Number(fields['content-length'] ?? rest.length)
    return { status, headers: fields, body: rest.subarray(0, length), complete: rest.length >= length }
  }
  const parts: Buffer[] = []
  let off = 0
  for (;;) {
    const lineEnd = rest.indexOf('\r\n', off)
    if (lineEnd === -1) return { status, headers: fields, body: Buffer.concat(parts), complete: false }
    const size = Number.parseInt(rest.toString('latin1', off, lineEnd), 16)
    if (size === 0) return { status, headers: fields, body: Buffer.concat(parts), complete: true }
    if (lineEnd + 2 + size + 2 > rest.length)
      return { status, headers: fields, body: Buffer.concat(parts), complete: false }
    parts.push(rest.subarray(lineEnd + 2, lineEnd + 2 + size))
    off = lineEnd + 2 + size + 2
  }
}

interface GrpcWebCall {
  messages: Buffer[]
  /** the trailer frame's fields, when the body ends with one */
  trailerFrame?: Record<string, string>
  /** the status the client reads: the trailer frame's, else the header section's (trailers-only) */
  status?: string
  message?: string
}

/**
 * The body as a gRPC-Web client reads it: base64 for `-text` (decoded by 4-character groups, padding allowed
 * between frames), then length-prefixed frames, the trailer frame last.
 */
function readGrpcWeb(a: RawAnswer, text: boolean): GrpcWebCall {
  let bytes = a.body
  if (text) {
    const chars = a.body.toString('latin1').replace(/\s/g, '')
    if (chars.length % 4 !== 0) throw new Error(`base64 body of ${chars.length} characters`)
    const groups: Buffer[] = []
    for (let i = 0; i < chars.length; i += 4) groups.push(Buffer.from(chars.slice(i, i + 4), 'base64'))
    bytes = Buffer.concat(groups)
  }
  const call: GrpcWebCall = { messages: [] }
  let off = 0
  while (off < bytes.length) {
    if (call.trailerFrame) throw new Error('bytes after the trailer frame')
    if (off + 5 > bytes.length) throw new Error('a frame header cut short')
    const length = bytes.readUInt32BE(off + 1)
    if (off + 5 + length > bytes.length) throw new Error('a frame cut short')
    const payload = bytes.subarray(off + 5, off + 5 + length)
    if ((bytes[off]! & 0x80) === 0) call.messages.push(payload)
    else {
      call.trailerFrame = {}
      for (const line of payload.toString('latin1').split('\r\n')) {
        if (line === '') continue
        const colon = line.indexOf(':')
        call.trailerFrame[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim()
      }
    }
    off += 5 + length
  }
  const source = call.trailerFrame ?? a.headers
  if (source['grpc-status'] !== undefined) call.status = source['grpc-status']
  if (source['grpc-message'] !== undefined) call.message = decodeURIComponent(source['grpc-message'])
  return call
}

const VARIANTS = [
  { type: 'application/grpc-web+proto', text: false },
  { type: 'application/grpc-web-text+proto', text: true },
  { type: 'application/grpc-web', text: false },
  { type: 'application/grpc-web-text', text: true },
  { type: 'application/grpc-web+json', text: false },
]

function requestBody(text: boolean, json: boolean): Buffer {
  const f = frame(0, Buffer.from(json ? '{"text":"hi"}' : '\n\x02hi'))
  return text ? Buffer.from(f.toString('base64'), 'latin1') : f
}

const ISSUER = 'https://issuer.grpc-web.test'

t.test(
  'a deny, a rejected token and an unreachable upstream are gRPC-Web answers in the call variant',
  async (t) => {
    const key = await createSigningKey('k1')
    const jwks = await startJwksServer([key])
    t.teardown(() => jwks.close())
    const sidecar = await startBin(t, {
      service: 'echo',
      upstream: `http://127.0.0.1:${await refusedPort()}`,
      jwt: { issuers: [{ issuer: ISSUER, jwksUri: jwks.jwksUri, audiences: ['echo'] }], onInvalid: 'reject' },
      policy: { mode: 'enforce', rules: [{ route: '/demo.Echo/Admin', allow: [{ identity: 'svc/ops' }] }] },
    })
    const port = Number(new URL(sidecar.proxyUrl).port)
    const badToken = await mintToken(key, { azp: 'billing' }, { issuer: ISSUER, audience: 'another-service' })
    const cases: { name: string; path: string; headers: Record<string, string>; status: string }[] = [
      { name: 'policy deny', path: '/demo.Echo/Admin', headers: {}, status: '7' },
      {
        name: 'rejected token',
        path: '/demo.Echo/Say',
        headers: { authorization: `Bearer ${badToken}` },
        status: '16',
      },
      { name: 'upstream unreachable', path: '/demo.Echo/Say', headers: {}, status: '14' },
    ]
    for (const c of cases) {
      for (const v of VARIANTS) {
        const what = `${c.name}, ${v.type}`
        const a = await post(
          port,
          c.path,
          {
            'content-type': v.type,
            'x-grpc-web': '1',
            'x-user-agent': 'grpc-web-javascript/0.1',
            ...c.headers,
          },
          requestBody(v.text, v.type.endsWith('+json')),
        )
        t.equal(a.status, 200, `${what}: HTTP 200`)
        t.equal(a.headers['content-type'], v.type, `${what}: answered in the call's own content type`)
        t.ok(a.complete, `${what}: a complete response`)
        const call = readGrpcWeb(a, v.text)
        t.equal(call.messages.length, 0, `${what}: no message`)
        t.equal(call.status, c.status, `${what}: grpc-status ${c.status}`)
        t.ok(
          call.message !== undefined && call.message.length > 0,
          `${what}: a grpc-message (${call.message})`,
        )
      }
    }
    const samples = await scrapeUntil(
      sidecar.adminUrl,
      (s) => metricValue(s, 'nhi_grpc_requests_total') >= cases.length * VARIANTS.length,
      'every call counted',
    )
    for (const c of cases)
      t.equal(
        metricValue(samples, 'nhi_grpc_requests_total', { grpc_status: c.status }),
        VARIANTS.length,
        `${c.name}: counted with grpc_status ${c.status}`,
      )
  },
)

t.test('a gRPC-Web call to an HTTP/1.1 upstream is ended at its grpc-timeout', async (t) => {
  // each path holds its call open after answering this much of it; the proxy must end it at the deadline
  const started = frame(0, Buffer.from('\n\x05hello'))
  const held: Record<string, { type?: string; body?: Buffer }> = {
    '/demo.Echo/Silent': {},
    '/demo.Echo/Streaming': { type: 'application/grpc-web+proto', body: started },
    '/demo.Echo/StreamingText': {
      type: 'application/grpc-web-text+proto',
      body: Buffer.from(started.toString('base64'), 'latin1'),
    },
    '/demo.Echo/MidFrame': { type: 'application/grpc-web+proto', body: started.subarray(0, 7) },
  }
  const aborted: string[] = []
  const up = createServer((req: IncomingMessage, res: ServerResponse) => {
    req.resume()
    res.on('close', () => {
      if (!res.writableFinished) aborted.push(req.url ?? '')
    })
    const answer = held[req.url ?? '']
    if (answer?.type !== undefined) {
      res.writeHead(200, { 'content-type': answer.type })
      res.write(answer.body)
    }
  })
  const upPort = await listenUntilTeardown(t, up)
  const sidecar = await startBin(t, { upstream: `http://127.0.0.1:${upPort}`, timeouts: { upstream: '2s' } })
  const port = Number(new URL(sidecar.proxyUrl).port)
  const call = (path: string, type: string) =>
    post(
      port,
      path,
      { 'content-type': type, 'x-grpc-web': '1', 'grpc-timeout': '400m' },
      requestBody(type.includes('-text'), false),
    )

  const silent = await call('/demo.Echo/Silent', 'application/grpc-web-text+proto')
  t.equal(silent.status, 200, 'no answer yet: HTTP 200')
  t.equal(silent.headers['content-type'], 'application/grpc-web-text+proto', 'in the call variant')
  const silentCall = readGrpcWeb(silent, true)
  t.equal(silentCall.status, '4', 'no answer yet: DEADLINE_EXCEEDED, trailers-only')
  t.equal(silentCall.trailerFrame, undefined, 'in the header section')

  const streaming = await call('/demo.Echo/Streaming', 'application/grpc-web+proto')
  t.equal(streaming.status, 200)
  t.ok(streaming.complete, 'answered: the response is ended, not cut')
  const streamingCall = readGrpcWeb(streaming, false)
  t.same(streamingCall.messages, [started.subarray(5)], "the upstream's message reaches the client")
  t.equal(streamingCall.trailerFrame?.['grpc-status'], '4', 'then DEADLINE_EXCEEDED in a trailer frame')

  const text = await call('/demo.Echo/StreamingText', 'application/grpc-web-text+proto')
  t.ok(text.complete, '-text: the response is ended, not cut')
  const textCall = readGrpcWeb(text, true)
  t.equal(textCall.messages.length, 1, "-text: the upstream's message reaches the client")
  t.equal(textCall.trailerFrame?.['grpc-status'], '4', '-text: a base64 trailer frame with DEADLINE_EXCEEDED')

  const midFrame = await call('/demo.Echo/MidFrame', 'application/grpc-web+proto')
  t.notOk(midFrame.complete, 'a body stopped inside a frame cannot take a trailer frame: it is cut')

  await eventually(() => Object.keys(held).every((p) => aborted.includes(p)), {
    what: 'every upstream request aborted at the deadline',
  })
  const samples = await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_grpc_requests_total', { grpc_status: '4' }) >= 4,
    'the four calls counted with grpc_status 4',
  )
  t.equal(
    metricValue(samples, 'nhi_grpc_requests_total', { grpc_status: '4' }),
    4,
    'recorded DEADLINE_EXCEEDED',
  )
  t.equal(metricValue(await scrape(sidecar.adminUrl), 'nhi_upstream_errors_total'), 0, 'no upstream error')
})

t.test(
  'a gRPC-Web call with request trailers to an HTTP/1.1 upstream is ended at its grpc-timeout',
  async (t) => {
    // a chunked body that announces trailers is forwarded by node:http, not by the HTTP/1.1 engine (which
    // drops request trailers): the trailer reaching the upstream shows which path the call took
    const started = frame(0, Buffer.from('\n\x05hello'))
    const seen = new Map<string, { grpcTimeout?: string; trailers: string[] }>()
    const aborted: string[] = []
    const up = createServer((req: IncomingMessage, res: ServerResponse) => {
      const path = req.url ?? ''
      const timeout = req.headers['grpc-timeout']
      req.on('end', () =>
        seen.set(path, {
          trailers: req.rawTrailers,
          ...(typeof timeout === 'string' ? { grpcTimeout: timeout } : {}),
        }),
      )
      req.resume()
      res.on('close', () => {
        if (!res.writableFinished) aborted.push(path)
      })
      if (path === '/demo.Echo/Streaming') {
        res.writeHead(200, { 'content-type': 'application/grpc-web+proto' })
        res.write(started)
      }
    })
    const upPort = await listenUntilTeardown(t, up)
    // the upstream deadlines are far past the call's: an answer at the call's deadline is the proxy's doing
    const sidecar = await startBin(t, {
      upstream: `http://127.0.0.1:${upPort}`,
      timeouts: { upstream: '5s', idle: '5s' },
    })
    const port = Number(new URL(sidecar.proxyUrl).port)
    const call = (path: string, type: string) =>
      post(
        port,
        path,
        { 'content-type': type, 'x-grpc-web': '1', 'grpc-timeout': '500m' },
        requestBody(type.includes('-text'), false),
        { 'x-checksum': 'abc123' },
      )

    const sentAt = performance.now()
    const silent = await call('/demo.Echo/Silent', 'application/grpc-web-text+proto')
    const waited = performance.now() - sentAt
    t.equal(
      seen.get('/demo.Echo/Silent')?.trailers.join(': '),
      'x-checksum: abc123',
      'the trailer went upstream',
    )
    // as gRPC's protocol spells a grpc-timeout: up to 8 digits and a unit
    const forwarded = /^(\d{1,8})([HMSmun])$/.exec(seen.get('/demo.Echo/Silent')?.grpcTimeout ?? '')
    const unitMs: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 1e-3, n: 1e-6 }
    const left = forwarded ? Number(forwarded[1]) * unitMs[forwarded[2]!]! : Number.NaN
    t.ok(left > 0 && left <= 500, `the upstream was given what the deadline had left (${left} ms)`)
    t.ok(waited < 3000, `answered at the call's deadline, not the upstream's (${Math.round(waited)} ms)`)
    t.equal(silent.status, 200, 'no answer yet: HTTP 200')
    t.equal(silent.headers['content-type'], 'application/grpc-web-text+proto', 'in the call variant')
    const silentCall = readGrpcWeb(silent, true)
    t.equal(silentCall.status, '4', 'no answer yet: DEADLINE_EXCEEDED, trailers-only')
    t.equal(silentCall.trailerFrame, undefined, 'in the header section')

    const streaming = await call('/demo.Echo/Streaming', 'application/grpc-web+proto')
    t.equal(
      seen.get('/demo.Echo/Streaming')?.trailers.join(': '),
      'x-checksum: abc123',
      'the trailer went upstream',
    )
    t.equal(streaming.status, 200)
    t.ok(streaming.complete, 'answered: the response is ended, not cut')
    const streamingCall = readGrpcWeb(streaming, false)
    t.same(streamingCall.messages, [started.subarray(5)], "the upstream's message reaches the client")
    t.equal(streamingCall.trailerFrame?.['grpc-status'], '4', 'then DEADLINE_EXCEEDED in a trailer frame')

    await eventually(
      () => aborted.includes('/demo.Echo/Silent') && aborted.includes('/demo.Echo/Streaming'),
      {
        what: 'both upstream requests let go at the deadline',
        timeoutMs: 3000,
      },
    )
    const samples = await scrapeUntil(
      sidecar.adminUrl,
      (s) => metricValue(s, 'nhi_grpc_requests_total') >= 2,
      'both calls counted',
    )
    t.equal(
      metricValue(samples, 'nhi_grpc_requests_total', { grpc_status: '4' }),
      2,
      'recorded DEADLINE_EXCEEDED',
    )
    t.equal(metricValue(samples, 'nhi_upstream_errors_total'), 0, 'no upstream error')
  },
)

t.test(
  'a gRPC-Web call its upstream cuts after a whole frame ends with UNAVAILABLE in a trailer frame',
  async (t) => {
    const message = frame(0, Buffer.from('\n\x05hello'))
    const trailersSeen: string[][] = []
    const up = createServer((req: IncomingMessage, res: ServerResponse) => {
      req.on('end', () => trailersSeen.push(req.rawTrailers))
      req.resume()
      res.writeHead(200, { 'content-type': 'application/grpc-web-text+proto' })
      res.write(Buffer.from(message.toString('base64'), 'latin1'), () => res.socket?.destroy())
    })
    const upPort = await listenUntilTeardown(t, up)
    const sidecar = await startBin(t, { upstream: `http://127.0.0.1:${upPort}` })
    // on the HTTP/1.1 engine, and on the node:http path of a call whose chunked body announces trailers
    const cases = [
      { name: 'engine', trailers: undefined },
      { name: 'request trailers', trailers: { 'x-checksum': 'abc123' } },
    ]
    for (const [i, c] of cases.entries()) {
      const a = await post(
        Number(new URL(sidecar.proxyUrl).port),
        '/demo.Echo/Say',
        { 'content-type': 'application/grpc-web-text+proto', 'x-grpc-web': '1' },
        requestBody(true, false),
        c.trailers,
      )
      if (c.trailers !== undefined)
        await eventually(() => trailersSeen.at(-1)?.join(': ') === 'x-checksum: abc123', {
          what: `${c.name}: the trailer went upstream`,
        })
      t.equal(a.status, 200, `${c.name}: HTTP 200`)
      t.ok(a.complete, `${c.name}: the response is ended, not cut`)
      const call = readGrpcWeb(a, true)
      t.equal(call.messages.length, 1, `${c.name}: the upstream's message reaches the client`)
      t.equal(
        call.trailerFrame?.['grpc-status'],
        '14',
        `${c.name}: then UNAVAILABLE in a base64 trailer frame`,
      )
      await scrapeUntil(
        sidecar.adminUrl,
        (s) => metricValue(s, 'nhi_grpc_requests_total', { grpc_status: '14' }) === i + 1,
        `${c.name}: the call counted with grpc_status 14`,
      )
    }
  },
)

t.test('a gRPC-Web call to an h2c upstream past its grpc-timeout ends with a trailer frame', async (t) => {
  const message = frame(0, Buffer.from('\n\x05hello'))
  const up = createH2cServer()
  up.on('stream', (stream: ServerHttp2Stream) => {
    stream.resume()
    stream.respond({ ':status': 200, 'content-type': 'application/grpc-web+proto' })
    stream.write(message)
  })
  const upPort = await listenUntilTeardown(t, up as unknown as Server)
  const sidecar = await startBin(t, { upstream: `h2c://127.0.0.1:${upPort}` })
  const a = await post(
    Number(new URL(sidecar.proxyUrl).port),
    '/demo.Echo/Say',
    { 'content-type': 'application/grpc-web+proto', 'x-grpc-web': '1', 'grpc-timeout': '300m' },
    requestBody(false, false),
  )
  t.equal(a.status, 200)
  t.ok(a.complete, 'the response is ended, not cut')
  const call = readGrpcWeb(a, false)
  t.same(call.messages, [message.subarray(5)], "the upstream's message reaches the client")
  t.equal(
    call.trailerFrame?.['grpc-status'],
    '4',
    'then DEADLINE_EXCEEDED in a trailer frame, not in HTTP trailers',
  )
})
