// The deadline a gRPC call is forwarded with, through the built sidecar: the time the call has left when the
// proxy forwards it, not the client's whole grpc-timeout. The delay before the forward is a real one: a token
// that comes while its issuer's key set is being fetched (again: the IdP was down at start) waits for that
// fetch, which the JWKS server holds until the call is on its way and then answers KEYS_DELAY_MS late.
import { once } from 'node:events'
import { createServer, connect as h2connect, type IncomingHttpHeaders } from 'node:http2'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import * as grpc from '@grpc/grpc-js'
import * as protoLoader from '@grpc/proto-loader'
import t, { type Test } from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { exchange } from '../helpers/http.ts'
import { createSigningKey, mintToken, startJwksServer } from '../helpers/jwks.ts'
import { metricValue, scrapeUntil } from '../helpers/metrics.ts'
import { ROOT, startTestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

t.setTimeout(120_000)

const ISSUER = 'https://idp.deadline.example'
/** how late the key set is answered once the call is on its way: what the call spends in the proxy at least */
const KEYS_DELAY_MS = 1000
/**
 * what the call may have spent between its client and the proxy, which the proxy cannot know of and the
 * upstream's deadline is not reduced by: a loopback write, but the key set is released as the call is sent, and
 * on a loaded machine the proxy's process may be scheduled to read it well over 100 ms later (seen: 134 ms)
 */
const TRANSIT_MS = 500
const definition = protoLoader.loadSync(join(ROOT, 'test/fixtures/echo.proto'), { keepCase: true })
const Echo = (
  grpc.loadPackageDefinition(definition) as unknown as {
    demo: { v1: { Echo: grpc.ServiceClientConstructor } }
  }
).demo.v1.Echo

const UNIT_MS: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 0.001, n: 0.000001 }

/** a grpc-timeout as gRPC's HTTP/2 protocol spells it, in ms; NaN for anything else */
function timeoutMs(value: unknown): number {
  const m = typeof value === 'string' ? /^(\d{1,8})([HMSmun])$/.exec(value) : null
  return m ? Number(m[1]) * UNIT_MS[m[2]!]! : Number.NaN
}

/**
 * A sidecar in front of `upstream` whose issuer's IdP is down at start, and a token of that issuer. Its key set
 * is fetched again a second later; that fetch, in flight when this resolves, is answered KEYS_DELAY_MS after
 * `release()`, and a call with the token waits for it.
 */
async function slowKeysSidecar(t: Test, upstream: string) {
  const key = await createSigningKey('k1')
  const jwks = await startJwksServer([key])
  jwks.fault = 503
  let release!: () => void
  t.teardown(() => {
    release?.()
    return jwks.close()
  })
  const sidecar = await startTestSidecar(t, {
    upstream,
    jwt: {
      // a failed fetch is retried after the cooldown
      unknownKidCooldown: '1s',
      issuers: [{ issuer: ISSUER, jwksUri: jwks.jwksUri, audiences: ['echo'] }],
    },
    identities: [
      {
        name: 'svc/{client}',
        kind: 'service',
        match: { jwt: { issuer: ISSUER, claims: { azp: '{client}' } } },
      },
    ],
  })
  const failed = jwks.hits
  jwks.fault = undefined
  jwks.held = new Promise<void>((resolve) => {
    release = resolve
  })
  jwks.delayMs = KEYS_DELAY_MS
  await eventually(() => jwks.hits > failed, { what: 'the key set fetched again' })
  const token = await mintToken(key, { azp: 'billing' }, { issuer: ISSUER, audience: 'echo' })
  return { sidecar, token, jwks, release }
}

/** an h2c upstream that answers every stream OK and records the request headers of each, in order */
async function h2cUpstream(t: Test) {
  const seen: IncomingHttpHeaders[] = []
  const server = createServer()
  server.on('stream', (stream, headers) => {
    seen.push(headers)
    stream.on('error', () => {})
    stream.resume()
    stream.on('end', () => {
      stream.respond(
        { ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '0' },
        { endStream: true },
      )
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => server.close())
  return { url: `h2c://127.0.0.1:${(server.address() as AddressInfo).port}`, seen }
}

/**
 * A unary call over a bare h2c session, which sends what it is given and keeps no deadline timer of its own.
 * `sent` runs once the call is written on a connected session.
 */
async function rawCall(t: Test, proxyUrl: string, headers: Record<string, string>, sent = () => {}) {
  const session = h2connect(proxyUrl)
  session.on('error', () => {})
  t.teardown(() => session.destroy())
  await once(session, 'connect')
  const started = performance.now()
  const stream = session.request({
    ':method': 'POST',
    ':path': '/demo.v1.Echo/Unary',
    'content-type': 'application/grpc',
    te: 'trailers',
    ...headers,
  })
  stream.on('error', () => {})
  let grpcStatus: string | undefined
  const take = (h: IncomingHttpHeaders) => {
    if (typeof h['grpc-status'] === 'string') grpcStatus = h['grpc-status']
  }
  stream.on('response', take)
  stream.on('trailers', take)
  stream.resume()
  // one empty message
  stream.end(Buffer.alloc(5))
  sent()
  await once(stream, 'close')
  session.close()
  return { grpcStatus, elapsedMs: performance.now() - started }
}

t.test('a grpc-js upstream gets the deadline the call has left, less the wait for the key set', async (t) => {
  // what the upstream's gRPC library makes of the deadline it was sent: the time it has left for the call
  const left: number[] = []
  const server = new grpc.Server()
  server.addService(Echo.service, {
    Unary(call: grpc.ServerUnaryCall<{ text: string }, unknown>, cb: grpc.sendUnaryData<{ text: string }>) {
      left.push(new Date(call.getDeadline()).getTime() - Date.now())
      cb(null, { text: `echo:${call.request.text}` })
    },
  })
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  )
  t.teardown(() => new Promise<void>((r) => server.tryShutdown(() => r())))
  const { sidecar, token, jwks, release } = await slowKeysSidecar(t, `h2c://127.0.0.1:${port}`)
  const echo = new Echo(`127.0.0.1:${sidecar.proxyAddress.port}`, grpc.credentials.createInsecure())
  t.teardown(() => echo.close())
  const unary = (md: grpc.Metadata, options: grpc.CallOptions) =>
    new Promise<grpc.ServiceError | null>((resolve) => {
      ;(echo['Unary'] as (...args: unknown[]) => unknown)({ text: 'hi' }, md, options, resolve)
    })

  // the client's connection is up (an anonymous call waits for no key set), so the call below goes out at once
  t.equal(await unary(new grpc.Metadata(), {}), null, 'an anonymous call first')
  const deadlineMs = 20_000
  const md = new grpc.Metadata()
  md.set('authorization', `Bearer ${token}`)
  const started = Date.now()
  const call = unary(md, { deadline: started + deadlineMs })
  release()
  const err = await call
  const elapsedMs = Date.now() - started
  t.equal(err, null, 'the call succeeds')
  t.equal(jwks.hits, 2, 'the key set was fetched for the call, once')
  t.equal(left.length, 2, 'the upstream served both calls')
  t.ok(elapsedMs >= KEYS_DELAY_MS, `the call waited for the key set (${elapsedMs} ms)`)
  t.ok(
    left[1]! <= deadlineMs - KEYS_DELAY_MS + TRANSIT_MS,
    `the upstream's deadline is reduced by the wait for the key set: ${left[1]} ms left of ${deadlineMs}`,
  )
  t.ok(
    left[1]! >= deadlineMs - elapsedMs - TRANSIT_MS,
    `…and by no more than the time the call took: ${left[1]} ms left after ${elapsedMs} ms`,
  )
})

t.test('over HTTP/2, a call past its deadline after identification is not forwarded', async (t) => {
  const up = await h2cUpstream(t)
  const { sidecar, token, release } = await slowKeysSidecar(t, up.url)
  // the proxy's session to the upstream is open before the late call: only the proxy can keep the call from it
  const before = await rawCall(t, sidecar.proxyUrl, { 'x-call': 'before' })
  t.equal(before.grpcStatus, '0')

  const late = await rawCall(
    t,
    sidecar.proxyUrl,
    { 'x-call': 'late', 'grpc-timeout': '300m', authorization: `Bearer ${token}` },
    release,
  )
  t.equal(late.grpcStatus, '4', 'DEADLINE_EXCEEDED from the proxy')
  t.ok(late.elapsedMs >= KEYS_DELAY_MS, `answered once identified (${Math.round(late.elapsedMs)} ms)`)
  // streams reach the upstream in the order they were opened on the proxy's session: once the next call is
  // seen there, the late one would have been too
  const after = await rawCall(t, sidecar.proxyUrl, { 'x-call': 'after', 'grpc-timeout': '20S' })
  t.equal(after.grpcStatus, '0')
  t.same(
    up.seen.map((h) => h['x-call']),
    ['before', 'after'],
    'the upstream never saw the call whose deadline had passed',
  )
  const forwarded = up.seen.at(-1)?.['grpc-timeout']
  t.match(forwarded, /^\d{1,8}[HMSmun]$/, `a grpc-timeout gRPC's spec allows (${forwarded})`)
  t.ok(
    timeoutMs(forwarded) > 0 && timeoutMs(forwarded) <= 20_000,
    `the time left of the client's 20S (${forwarded})`,
  )

  const samples = await scrapeUntil(
    sidecar.adminUrl,
    (s) => metricValue(s, 'nhi_grpc_requests_total', { grpc_status: '4' }) >= 1,
    'the late call counted',
  )
  t.equal(
    metricValue(samples, 'nhi_grpc_requests_total', { grpc_status: '4' }),
    1,
    'counted DEADLINE_EXCEEDED',
  )
  t.equal(metricValue(samples, 'nhi_upstream_errors_total'), 0, 'the client deadline is no upstream error')
})

t.test(
  'gRPC-Web to an HTTP/1.1 upstream: the time left is forwarded, a passed deadline answered',
  async (t) => {
    const up = await startUpstream()
    t.teardown(() => up.close())
    const call = (port: number, headers: Record<string, string>) =>
      exchange({
        host: '127.0.0.1',
        port,
        method: 'POST',
        path: '/demo.v1.Echo/Unary',
        headers: { 'content-type': 'application/grpc-web+proto', 'x-grpc-web': '1', ...headers },
      })

    const first = await slowKeysSidecar(t, up.url)
    const serving = call(first.sidecar.proxyAddress.port, {
      'grpc-timeout': '20S',
      authorization: `Bearer ${first.token}`,
    })
    first.release()
    t.equal((await serving).status, 200)
    const forwarded = up.received.at(-1)?.headers['grpc-timeout']
    t.match(forwarded, /^\d{1,8}[HMSmun]$/, `a grpc-timeout gRPC's spec allows (${forwarded})`)
    t.ok(
      timeoutMs(forwarded) > 0 && timeoutMs(forwarded) <= 20_000 - KEYS_DELAY_MS + TRANSIT_MS,
      `reduced by the wait for the key set: ${forwarded} of 20S`,
    )

    const second = await slowKeysSidecar(t, up.url)
    const port = second.sidecar.proxyAddress.port
    const answering = call(port, {
      'x-call': 'late',
      'grpc-timeout': '300m',
      authorization: `Bearer ${second.token}`,
    })
    second.release()
    const late = await answering
    t.equal(late.status, 200)
    t.equal(late.headers['grpc-status'], '4', 'DEADLINE_EXCEEDED from the proxy')
    // over HTTP/1.1 the proxy answers a forwarded call with the upstream's answer: had the late call gone
    // there, the upstream would have received it before its client got an answer
    t.same(
      up.received.filter((r) => r.headers['x-call'] !== undefined).map((r) => r.headers['x-call']),
      [],
      'the upstream never saw the call whose deadline had passed',
    )
  },
)
