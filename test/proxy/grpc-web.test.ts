// gRPC-Web (browsers' gRPC): the call's status is not in HTTP trailers but in the response body, as a last
// length-prefixed frame whose flag byte has its high bit set (base64 in `application/grpc-web-text`). The
// proxy passes the body on untouched and counts the call by that status, over an HTTP/1.1 upstream (both
// engines) and an h2c one; a call whose response carries no status is counted the way a gRPC client reads it.
import { once } from 'node:events'
import { createServer, type IncomingMessage, request, type ServerResponse } from 'node:http'
import { createServer as createH2cServer, type ServerHttp2Session, type ServerHttp2Stream } from 'node:http2'
import type { AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import { startBin } from '../helpers/bin.ts'
import { metricValue, type Sample, scrapeUntil } from '../helpers/metrics.ts'

function frame(flag: number, payload: Buffer): Buffer {
  const head = Buffer.alloc(5)
  head[0] = flag
  head.writeUInt32BE(payload.length, 1)
  return Buffer.concat([head, payload])
}
const message = frame(0, Buffer.from('hello'))
const trailer = (status: number) =>
  frame(0x80, Buffer.from(`grpc-status: ${status}\r\ngrpc-message: done\r\n`))

interface Answer {
  headers: Record<string, string>
  /** body chunks, written one by one (a frame split across chunks, a base64 group split across chunks) */
  chunks: Buffer[]
}
const BINARY = { 'content-type': 'application/grpc-web+proto' }
const TEXT = { 'content-type': 'application/grpc-web-text+proto' }
const answers: Record<string, Answer> = {
  // every byte its own chunk: frame headers and the trailer split everywhere
  '/demo.Echo/Ok': {
    headers: BINARY,
    chunks: [...Buffer.concat([message, trailer(0)])].map((b) => Buffer.from([b])),
  },
  '/demo.Echo/NotFound': { headers: BINARY, chunks: [message, trailer(5)] },
  // each frame base64-encoded on its own (padding in the middle of the body), cut inside a 4-character group
  '/demo.Echo/Text': {
    headers: TEXT,
    chunks: (() => {
      const text = message.toString('base64') + trailer(9).toString('base64')
      return [Buffer.from(text.slice(0, 7)), Buffer.from(text.slice(7, 22)), Buffer.from(text.slice(22))]
    })(),
  },
  // trailers-only: the status in the header section, no body
  '/demo.Echo/Denied': { headers: { ...BINARY, 'grpc-status': '7' }, chunks: [] },
  // no status anywhere: a gRPC-Web client reads INTERNAL from a 200 without one
  '/demo.Echo/Cut': { headers: BINARY, chunks: [message] },
}
const EXPECTED: Record<string, string> = {
  '/demo.Echo/Ok': '0',
  '/demo.Echo/NotFound': '5',
  '/demo.Echo/Text': '9',
  '/demo.Echo/Denied': '7',
  '/demo.Echo/Cut': '13',
}

async function writeChunks(out: { write(b: Buffer): boolean; end(): void }, chunks: Buffer[]): Promise<void> {
  for (const c of chunks) {
    out.write(c)
    // separate writes reach the proxy as separate reads only if they leave at different times
    await new Promise((r) => setImmediate(r))
  }
  out.end()
}

function postGrpcWeb(proxyUrl: string, path: string, extra: Record<string, string> = {}) {
  return new Promise<{ status: number; body: Buffer }>((resolve, reject) => {
    const req = request(`${proxyUrl}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/grpc-web+proto', 'x-grpc-web': '1', ...extra },
    })
    req.on('response', (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }))
    })
    req.on('error', reject)
    if (extra.trailer) req.addTrailers({ [extra.trailer]: '1' })
    req.end(frame(0, Buffer.from('q')))
  })
}

const counted = (s: Sample[], status: string) =>
  metricValue(s, 'nhi_grpc_requests_total', { grpc_status: status })

async function checkCalls(t: Test, proxyUrl: string, adminUrl: string, extra?: Record<string, string>) {
  for (const [path, answer] of Object.entries(answers)) {
    const r = await postGrpcWeb(proxyUrl, path, extra)
    t.equal(r.status, 200, `${path}: 200`)
    t.same(r.body, Buffer.concat(answer.chunks), `${path}: the body reaches the client untouched`)
  }
  const samples = await scrapeUntil(
    adminUrl,
    (s) => Object.values(EXPECTED).reduce((n, v) => n + counted(s, v), 0) >= Object.keys(EXPECTED).length,
    'every call counted',
  )
  for (const [path, status] of Object.entries(EXPECTED))
    t.equal(counted(samples, status), 1, `${path}: counted with grpc_status ${status}`)
}

t.test('gRPC-Web over an HTTP/1.1 upstream is counted by the status in its body', async (t) => {
  const up = createServer((req: IncomingMessage, res: ServerResponse) => {
    req.resume()
    req.on('end', () => {
      const answer = answers[req.url ?? ''] ?? { headers: BINARY, chunks: [] }
      res.writeHead(200, answer.headers)
      void writeChunks(res, answer.chunks)
    })
  })
  up.listen(0, '127.0.0.1')
  await once(up, 'listening')
  t.teardown(() => up.close())
  const upstream = `http://127.0.0.1:${(up.address() as AddressInfo).port}`
  t.test('undici engine', async (t) => {
    const sidecar = await startBin(t, { upstream })
    await checkCalls(t, sidecar.proxyUrl, sidecar.adminUrl)
  })
  t.test('node:http engine (a request that sends trailers)', async (t) => {
    const sidecar = await startBin(t, { upstream })
    await checkCalls(t, sidecar.proxyUrl, sidecar.adminUrl, {
      trailer: 'x-sum',
      'transfer-encoding': 'chunked',
    })
  })
})

t.test('gRPC-Web over an h2c upstream is counted by the status in its body', async (t) => {
  const up = createH2cServer()
  up.on('stream', (stream: ServerHttp2Stream, headers) => {
    stream.resume()
    stream.on('end', () => {
      const answer = answers[String(headers[':path'])] ?? { headers: BINARY, chunks: [] }
      stream.respond({ ':status': 200, ...answer.headers })
      void writeChunks(stream, answer.chunks)
    })
  })
  up.listen(0, '127.0.0.1')
  await once(up, 'listening')
  t.teardown(() => up.close())
  const sidecar = await startBin(t, { upstream: `h2c://127.0.0.1:${(up.address() as AddressInfo).port}` })
  await checkCalls(t, sidecar.proxyUrl, sidecar.adminUrl)
})

// A client that leaves a gRPC-Web call: before its status it cancelled the call (CANCELLED, as docs/reference.md
// "HTTP/2 and gRPC" records a client's cancel); after the trailer frame went by it has its status, and may
// let go of a response whose body has not ended (Connect's client does, found by grpc-web-differential.test.ts):
// the call counts with the status the client read, not as cancelled. Both upstreams hold the body open.
const LEAVING: Record<string, { chunks: Buffer[]; status: string }> = {
  '/demo.Leave/BeforeStatus': { chunks: [message], status: '1' },
  '/demo.Leave/AfterStatus': { chunks: [message, trailer(5)], status: '5' },
}

/** reads the body until `chunks` came, then closes the connection; resolves once the request is gone */
function leaveAfter(proxyUrl: string, path: string, chunks: Buffer[], extra: Record<string, string> = {}) {
  const expected = Buffer.concat(chunks)
  return new Promise<Buffer>((resolve) => {
    const req = request(`${proxyUrl}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/grpc-web+proto', 'x-grpc-web': '1', ...extra },
    })
    req.on('response', (res) => {
      const got: Buffer[] = []
      res.on('data', (c: Buffer) => {
        got.push(c)
        if (Buffer.concat(got).length >= expected.length) req.destroy()
      })
      res.on('error', () => {})
      req.on('close', () => resolve(Buffer.concat(got)))
    })
    req.on('error', () => {})
    if (extra.trailer) req.addTrailers({ [extra.trailer]: '1' })
    req.end(frame(0, Buffer.from('q')))
  })
}

async function checkLeaving(t: Test, proxyUrl: string, adminUrl: string, extra?: Record<string, string>) {
  for (const [path, { chunks }] of Object.entries(LEAVING))
    t.same(
      await leaveAfter(proxyUrl, path, chunks, extra),
      Buffer.concat(chunks),
      `${path}: the body as sent`,
    )
  const samples = await scrapeUntil(
    adminUrl,
    (s) => counted(s, '1') + counted(s, '5') >= 2,
    'every call counted',
  )
  for (const [path, { status }] of Object.entries(LEAVING))
    t.equal(counted(samples, status), 1, `${path}: counted with grpc_status ${status}`)
}

t.test('a gRPC-Web call its client leaves counts as cancelled, or with the status it read', async (t) => {
  const h1 = createServer((req: IncomingMessage, res: ServerResponse) => {
    req.resume()
    req.on('end', () => {
      res.writeHead(200, BINARY)
      for (const c of LEAVING[req.url ?? '']?.chunks ?? []) res.write(c)
    })
  })
  h1.listen(0, '127.0.0.1')
  await once(h1, 'listening')
  t.teardown(() => {
    h1.closeAllConnections()
    h1.close()
  })
  const h2 = createH2cServer()
  const sessions = new Set<ServerHttp2Session>()
  h2.on('session', (s) => sessions.add(s))
  h2.on('stream', (stream: ServerHttp2Stream, headers) => {
    stream.resume()
    stream.on('error', () => {})
    stream.on('end', () => {
      stream.respond({ ':status': 200, ...BINARY })
      for (const c of LEAVING[String(headers[':path'])]?.chunks ?? []) stream.write(c)
    })
  })
  h2.listen(0, '127.0.0.1')
  await once(h2, 'listening')
  t.teardown(() => {
    for (const s of sessions) s.destroy()
    h2.close()
  })
  const h1Upstream = `http://127.0.0.1:${(h1.address() as AddressInfo).port}`
  t.test('HTTP/1.1 upstream, undici engine', async (t) => {
    const sidecar = await startBin(t, { upstream: h1Upstream })
    await checkLeaving(t, sidecar.proxyUrl, sidecar.adminUrl)
  })
  t.test('HTTP/1.1 upstream, node:http engine (a request that sends trailers)', async (t) => {
    const sidecar = await startBin(t, { upstream: h1Upstream })
    await checkLeaving(t, sidecar.proxyUrl, sidecar.adminUrl, {
      trailer: 'x-sum',
      'transfer-encoding': 'chunked',
    })
  })
  t.test('h2c upstream', async (t) => {
    const sidecar = await startBin(t, { upstream: `h2c://127.0.0.1:${(h2.address() as AddressInfo).port}` })
    await checkLeaving(t, sidecar.proxyUrl, sidecar.adminUrl)
  })
})
