// The drain on HTTP/2 connections: during the drain delay the listeners still accept, and an HTTP/2
// connection is told to go away (GOAWAY NO_ERROR) without refusing the streams it brings, as an HTTP/1.1
// connection gets `Connection: close` on an answer that is still sent. Once accepting stops, GOAWAY names the
// last stream taken and the streams in flight finish.
import { once } from 'node:events'
import { connect } from 'node:http2'
import { connect as tcpConnect } from 'node:net'
import { join } from 'node:path'
import * as grpc from '@grpc/grpc-js'
import * as protoLoader from '@grpc/proto-loader'
import t from 'tap'
import { defaultConfig } from '../../src/config/schema.ts'
import { eventually } from '../helpers/eventually.ts'
import { FLAG, FRAME, frame, headerBlock, PREFACE } from '../helpers/h2-frames.ts'
import { startProxy, type Teardown } from '../helpers/proxy-fixture.ts'
import { ROOT } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

interface Frame {
  type: number
  flags: number
  stream: number
  payload: Buffer
}

function frames(received: Buffer): Frame[] {
  const out: Frame[] = []
  for (let at = 0; at + 9 <= received.length; ) {
    const length = received.readUIntBE(at, 3)
    if (at + 9 + length > received.length) break
    out.push({
      type: received[at + 3]!,
      flags: received[at + 4]!,
      stream: received.readUInt32BE(at + 5) & 0x7fffffff,
      payload: received.subarray(at + 9, at + 9 + length),
    })
    at += 9 + length
  }
  return out
}

function get(stream: number, path: string): Buffer {
  const block = headerBlock([
    [':method', 'GET'],
    [':scheme', 'http'],
    [':path', path],
    [':authority', 'x'],
  ])
  return frame(FRAME.HEADERS, FLAG.END_STREAM | FLAG.END_HEADERS, stream, block)
}

/** the :status of the response HEADERS on `stream` (HPACK static table: 0x88 is `:status 200`) */
function answered(received: Buffer, stream: number): boolean {
  return frames(received).some(
    (f) => f.type === FRAME.HEADERS && f.stream === stream && f.payload[0] === 0x88,
  )
}

function goaways(received: Buffer): { last: number; code: number }[] {
  return frames(received)
    .filter((f) => f.type === FRAME.GOAWAY)
    .map((f) => ({ last: f.payload.readUInt32BE(0) & 0x7fffffff, code: f.payload.readUInt32BE(4) }))
}

async function rawH2(t: Teardown, port: number) {
  const socket = tcpConnect(port, '127.0.0.1')
  t.teardown(() => socket.destroy())
  socket.on('error', () => {})
  let received = Buffer.alloc(0)
  socket.on('data', (chunk: Buffer) => {
    received = Buffer.concat([received, chunk])
  })
  await once(socket, 'connect')
  socket.write(Buffer.concat([PREFACE, frame(FRAME.SETTINGS, 0, 0, Buffer.alloc(0))]))
  return { socket, received: () => received }
}

t.test('a new HTTP/2 connection during the drain delay has its request served, then GOAWAY', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const { url, proxy, pipeline } = await startProxy(t, { upstream: up.url })
  proxy.drain()
  const session = connect(url)
  session.on('error', () => {})
  t.teardown(() => session.destroy())
  let goaway: number | undefined
  session.on('goaway', (code: number) => {
    goaway = code
  })
  const stream = session.request({ ':path': '/echo' })
  stream.on('error', () => {})
  const status = await Promise.race([
    once(stream, 'response').then(([h]) => Number((h as Record<string, unknown>)[':status'])),
    once(stream, 'close').then(() => `closed with code ${stream.rstCode}`),
  ])
  t.equal(status, 200, 'served, not refused')
  stream.resume()
  await eventually(() => goaway !== undefined, { what: 'GOAWAY' })
  t.equal(goaway, 0, 'GOAWAY NO_ERROR: the client takes its next request elsewhere')
  const [event] = await pipeline.waitForEvents(1)
  t.equal(event!.status, 200)
})

t.test('streams in flight at the drain finish; GOAWAY names them, a later stream is refused', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const { port, proxy, pipeline } = await startProxy(t, { upstream: up.url })
  const client = await rawH2(t, port)
  client.socket.write(get(1, '/first'))
  await eventually(() => answered(client.received(), 1), { what: 'stream 1 answered' })
  client.socket.write(get(3, '/slow/300'))
  await eventually(() => pipeline.seen.length === 2, { what: 'stream 3 taken' })
  proxy.drain()
  await eventually(() => goaways(client.received()).length > 0, { what: 'the GOAWAY' })
  t.same(goaways(client.received())[0], { last: 3, code: 0 }, 'GOAWAY NO_ERROR names the last stream taken')
  // sent before the client read the GOAWAY: above its last stream id, never processed, safe to retry
  client.socket.write(get(5, '/crossing'))
  const closed = proxy.close(5000)
  await eventually(() => answered(client.received(), 3), { what: 'stream 3 answered' })
  await closed
  t.notOk(answered(client.received(), 5), 'the later stream is not served')
  t.same(
    pipeline.events.map((e) => `${e.path} ${e.status}`),
    ['/first 200', '/slow/300 200'],
    'each stream taken recorded once, the refused one never',
  )
  t.notOk(
    up.received.some((r) => r.url === '/crossing'),
    'the refused stream never reached the upstream',
  )
})

const definition = protoLoader.loadSync(join(ROOT, 'test/fixtures/echo.proto'), { keepCase: true })
const Echo = (
  grpc.loadPackageDefinition(definition) as unknown as {
    demo: { v1: { Echo: grpc.ServiceClientConstructor } }
  }
).demo.v1.Echo

t.test('gRPC calls still open at the end of the drain end with UNAVAILABLE, recorded so', async (t) => {
  // an upstream whose streams never end and whose unary call never answers
  const server = new grpc.Server()
  server.addService(Echo.service, {
    Unary() {},
    ServerStream(call: grpc.ServerWritableStream<unknown, unknown>) {
      call.write({ text: 'first' })
    },
    ClientStream() {},
    Bidi(call: grpc.ServerDuplexStream<unknown, unknown>) {
      call.on('data', (m: unknown) => call.write(m))
    },
  })
  const upPort = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  )
  t.teardown(() => server.forceShutdown())
  const timeouts = { ...defaultConfig().timeouts, drainDelay: 0, drain: 200 }
  const { port, proxy, pipeline } = await startProxy(t, { upstream: `h2c://127.0.0.1:${upPort}`, timeouts })
  const client = new Echo(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as Record<
    string,
    (...args: unknown[]) => grpc.ClientReadableStream<unknown> & grpc.ClientWritableStream<unknown>
  >
  t.teardown(() => (client as unknown as grpc.Client).close())
  const statuses = new Map<string, grpc.StatusObject>()
  const watch = (
    name: string,
    call: grpc.ClientReadableStream<unknown> | grpc.ClientWritableStream<unknown>,
  ) => {
    call.on('data', () => {})
    call.on('error', () => {})
    call.on('status', (s: grpc.StatusObject) => statuses.set(name, s))
  }
  watch('ServerStream', client.ServerStream!({ text: 's' }))
  const bidi = client.Bidi!()
  watch('Bidi', bidi)
  bidi.write({ text: 'hi' })
  const unary = client.Unary!({ text: 'u' }, () => {}) as unknown as grpc.ClientUnaryCall
  unary.on('status', (s: grpc.StatusObject) => statuses.set('Unary', s))
  await eventually(() => pipeline.seen.length === 3, { what: 'the three calls at the proxy' })
  await proxy.close(timeouts.drain)
  await eventually(() => statuses.size === 3, { what: "the calls' statuses" })
  for (const [name, s] of statuses)
    t.same([name, s.code, s.details], [name, grpc.status.UNAVAILABLE, 'proxy shutting down'], name)
  t.same(
    pipeline.events.map((e) => `${e.path} ${e.status} ${e.grpcStatus}`).sort(),
    ['/demo.v1.Echo/Bidi 200 14', '/demo.v1.Echo/ServerStream 200 14', '/demo.v1.Echo/Unary 200 14'],
    'each recorded once, with the status its client read',
  )
})
