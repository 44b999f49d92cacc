// OTLP export of gRPC calls: a @grpc/grpc-js client calls a @grpc/grpc-js server through the built sidecar,
// which exports to the test OTLP receiver. Each call, unary or streaming, is one SERVER span with the RPC
// semantic-convention attributes next to the nhi.* ones; a server-fault status marks the span as an error,
// a caller-fault status does not but is still in `rpc.grpc.status_code`.
import { createHash } from 'node:crypto'
import { join } from 'node:path'
import * as grpc from '@grpc/grpc-js'
import * as protoLoader from '@grpc/proto-loader'
import t from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { CLEAN_OTEL_ENV, type ReceivedSpan, startCollector } from '../helpers/otlp-collector.ts'
import { ROOT, startTestSidecar } from '../helpers/sidecar.ts'

const API_KEY = 'grpc-caller-secret-0123456789'
const sha256 = (s: string) => createHash('sha256').update(s).digest('hex')
const definition = protoLoader.loadSync(join(ROOT, 'test/fixtures/echo.proto'), { keepCase: true })
const Echo = (
  grpc.loadPackageDefinition(definition) as unknown as {
    demo: { v1: { Echo: grpc.ServiceClientConstructor } }
  }
).demo.v1.Echo

interface Msg {
  text: string
}

async function startGrpcUpstream() {
  const server = new grpc.Server()
  server.addService(Echo.service, {
    Unary(call: grpc.ServerUnaryCall<Msg, Msg>, cb: grpc.sendUnaryData<Msg>) {
      const { text } = call.request
      if (text === 'missing') cb({ code: grpc.status.NOT_FOUND, details: 'no such thing' })
      else if (text === 'crash') cb({ code: grpc.status.INTERNAL, details: 'server broke' })
      else cb(null, { text: `echo:${text}` })
    },
    ServerStream(call: grpc.ServerWritableStream<Msg, Msg>) {
      for (let i = 0; i < 5; i++) call.write({ text: `${call.request.text}-${i}` })
      call.end()
    },
    ClientStream(call: grpc.ServerReadableStream<Msg, Msg>, cb: grpc.sendUnaryData<Msg>) {
      call.on('data', () => {})
      call.on('end', () => cb(null, { text: 'done' }))
    },
    Bidi(call: grpc.ServerDuplexStream<Msg, Msg>) {
      call.on('data', (m: Msg) => call.write({ text: `re:${m.text}` }))
      call.on('end', () => call.end())
    },
  })
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  )
  return { port, close: () => new Promise<void>((r) => server.tryShutdown(() => r())) }
}

t.test('one server span per gRPC call, unary and streaming, with rpc.* and nhi.* attributes', async (t) => {
  const collector = await startCollector()
  t.teardown(() => collector.close())
  const up = await startGrpcUpstream()
  t.teardown(() => up.close())
  const sidecar = await startTestSidecar(
    t,
    {
      service: 'echo',
      upstream: `h2c://127.0.0.1:${up.port}`,
      apiKeys: { keys: [{ name: 'billing', kind: 'service', sha256: sha256(API_KEY) }] },
      otlp: { endpoint: collector.url, scheduledDelay: '50ms' },
    },
    { env: CLEAN_OTEL_ENV },
  )
  const echo = new Echo(`127.0.0.1:${sidecar.proxyAddress.port}`, grpc.credentials.createInsecure())
  t.teardown(() => echo.close())
  const md = () => {
    const m = new grpc.Metadata()
    m.set('x-api-key', API_KEY)
    return m
  }
  const calls = echo as unknown as Record<string, (...args: unknown[]) => unknown>
  const unary = (text: string) =>
    new Promise<{ code: number; text?: string }>((resolve) => {
      calls['Unary']!.call(echo, { text }, md(), (err: grpc.ServiceError | null, res?: Msg) =>
        resolve({ code: err ? err.code : grpc.status.OK, text: res?.text }),
      )
    })
  const ended = (call: grpc.ClientReadableStream<Msg> | grpc.ClientDuplexStream<Msg, Msg>) =>
    new Promise<{ texts: string[]; code: number }>((resolve, reject) => {
      const texts: string[] = []
      call.on('data', (m: Msg) => texts.push(m.text))
      call.on('error', reject)
      call.on('status', (s: grpc.StatusObject) => resolve({ texts, code: s.code }))
    })

  t.same(await unary('hi'), { code: grpc.status.OK, text: 'echo:hi' })
  t.equal((await unary('missing')).code, grpc.status.NOT_FOUND)
  t.equal((await unary('crash')).code, grpc.status.INTERNAL)

  const server = await ended(
    calls['ServerStream']!.call(echo, { text: 'n' }, md()) as grpc.ClientReadableStream<Msg>,
  )
  t.equal(server.texts.length, 5, 'five messages in one server stream')

  const bidiCall = calls['Bidi']!.call(echo, md()) as grpc.ClientDuplexStream<Msg, Msg>
  const bidi = ended(bidiCall)
  for (const text of ['a', 'b', 'c']) bidiCall.write({ text })
  bidiCall.end()
  t.same((await bidi).texts, ['re:a', 're:b', 're:c'])

  // a last call: once its span is in, every earlier span (ended before it) has been exported too
  t.equal((await unary('last')).code, grpc.status.OK)
  const spans = await eventually(() => (collector.spans.length >= 6 ? collector.spans : undefined), {
    what: 'six spans at the collector',
  })
  t.equal(spans.length, 6, 'one span per call, however many messages it carried')
  const byName = (name: string) => spans.filter((s) => s.name === name)
  t.equal(byName('demo.v1.Echo/Unary').length, 4)
  t.equal(byName('demo.v1.Echo/ServerStream').length, 1)
  t.equal(byName('demo.v1.Echo/Bidi').length, 1)

  const rpc = (s: ReceivedSpan) => ({
    system: s.attributes['rpc.system'],
    service: s.attributes['rpc.service'],
    method: s.attributes['rpc.method'],
    code: s.attributes['rpc.grpc.status_code'],
    status: s.statusCode,
  })
  const stream = byName('demo.v1.Echo/ServerStream')[0]!
  t.same(rpc(stream), { system: 'grpc', service: 'demo.v1.Echo', method: 'ServerStream', code: 0, status: 0 })
  t.same(rpc(byName('demo.v1.Echo/Bidi')[0]!), {
    system: 'grpc',
    service: 'demo.v1.Echo',
    method: 'Bidi',
    code: 0,
    status: 0,
  })
  const unaries = byName('demo.v1.Echo/Unary')
  const withCode = (code: number) => unaries.find((s) => s.attributes['rpc.grpc.status_code'] === code)
  t.equal(withCode(grpc.status.OK)?.statusCode, 0, 'OK: status unset')
  t.equal(withCode(grpc.status.NOT_FOUND)?.statusCode, 0, "NOT_FOUND is the caller's problem: status unset")
  const crash = withCode(grpc.status.INTERNAL)
  t.equal(crash?.statusCode, 2, 'INTERNAL: error status')
  t.equal(crash?.attributes['error.type'], String(grpc.status.INTERNAL))

  for (const s of spans) {
    t.equal(s.kind, 2, `${s.name}: SERVER span`)
    t.match(s.attributes, {
      'nhi.identity': 'billing',
      'nhi.kind': 'service',
      'nhi.source': 'apikey',
      'nhi.verified': true,
      'http.request.method': 'POST',
      'http.response.status_code': 200,
    })
    t.equal(s.attributes['url.path'], `/${s.name}`)
  }
  t.notOk(JSON.stringify(spans.map((s) => s.attributes)).includes(API_KEY), 'the API key is in no attribute')
})
