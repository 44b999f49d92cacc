// With timeouts.drainDelay 0s and nothing in flight, SIGTERM ends the process at once: a pod's termination
// grace period is not spent on connections that carry no request. Each case leaves open what a real client
// would: an HTTP/2 connection after another one was closed for rapid reset, a gRPC-style call rejected on
// the proxy with its client still connected, a connection that never sent a byte. And a SIGTERM that comes
// the moment the proxy port accepts, before startup has finished: handled, never Node's default kill.
import { once } from 'node:events'
import { rm, writeFile } from 'node:fs/promises'
import { constants, connect as h2connect } from 'node:http2'
import { connect } from 'node:net'
import { join } from 'node:path'
import t from 'tap'
import { h2SessionAfterOneRequest } from '../helpers/h2-session.ts'
import { mintToken, startUpstreamAndJwks } from '../helpers/jwks.ts'
import { canConnect, freePort } from '../helpers/net.ts'
import { rapidReset } from '../helpers/rapid-reset.ts'
import { scratchDir } from '../helpers/scratch.ts'
import { spawnCli, startTestSidecar, type TestSidecar } from '../helpers/sidecar.ts'
import { startUpstream } from '../helpers/upstream.ts'

// generous for a loaded machine, far below the drain (15 s) and header (10 s) timeouts a leftover
// connection or exchange would otherwise sit out
const PROMPT_MS = 5000

async function timedStop(sidecar: TestSidecar): Promise<{ code: number | null; ms: number }> {
  const start = performance.now()
  const code = await sidecar.close()
  return { code, ms: performance.now() - start }
}

t.test(
  'after a rapid reset, with an idle HTTP/2 client and a silent connection: exit 0 at once',
  async (t) => {
    const up = await startUpstream()
    t.teardown(() => up.close())
    const sidecar = await startTestSidecar(t, { upstream: up.url, limits: { http2MaxResetsPerSecond: 20 } })
    const url = sidecar.proxyUrl
    const abusive = h2connect(url)
    t.teardown(() => abusive.destroy())
    const code = await rapidReset(abusive)
    t.equal(code, constants.NGHTTP2_ENHANCE_YOUR_CALM, 'the abusive connection was closed')
    const idle = await h2SessionAfterOneRequest(t, url)
    t.equal(idle.status, 200, 'another HTTP/2 client is served')
    const silent = connect(sidecar.proxyAddress.port, '127.0.0.1')
    silent.on('error', () => {})
    t.teardown(() => silent.destroy())
    await once(silent, 'connect')

    const stopped = await timedStop(sidecar)
    t.equal(stopped.code, 0)
    t.ok(stopped.ms < PROMPT_MS, `exited ${Math.round(stopped.ms)} ms after SIGTERM`)
  },
)

t.test(
  'after a gRPC call rejected for an invalid token, its client still connected: exit 0 at once',
  async (t) => {
    const { upstream: up, key, jwks } = await startUpstreamAndJwks(t)
    const issuer = 'https://idp.exit.example'
    const sidecar = await startTestSidecar(t, {
      upstream: up.url,
      jwt: { issuers: [{ issuer, jwksUri: jwks.jwksUri, audiences: ['echo'] }], onInvalid: 'reject' },
    })
    const session = h2connect(sidecar.proxyUrl)
    session.on('error', () => {})
    t.teardown(() => session.destroy())
    const token = await mintToken(key, { azp: 'billing' }, { issuer, audience: 'other' })
    const stream = session.request({
      ':method': 'POST',
      ':path': '/demo.v1.Echo/Unary',
      'content-type': 'application/grpc',
      te: 'trailers',
      authorization: `Bearer ${token}`,
    })
    stream.on('error', () => {})
    // one length-prefixed message, then END_STREAM, as a unary call sends it
    stream.end(Buffer.from([0, 0, 0, 0, 2, 10, 0]))
    // a trailers-only answer carries grpc-status in its headers
    const grpcStatus = new Promise<unknown>((resolve) => {
      stream.once('response', (h: Record<string, unknown>) => {
        if (h['grpc-status'] !== undefined) resolve(h['grpc-status'])
      })
      stream.once('trailers', (h: Record<string, unknown>) => resolve(h['grpc-status']))
    })
    stream.resume()
    t.equal(await grpcStatus, '16', 'UNAUTHENTICATED')
    t.equal(up.received.length, 0, 'the call never reached the upstream')

    const stopped = await timedStop(sidecar)
    t.equal(stopped.code, 0)
    t.ok(stopped.ms < PROMPT_MS, `exited ${Math.round(stopped.ms)} ms after SIGTERM`)
  },
)

t.test('SIGTERM the moment the proxy port accepts, while startup finishes: exit 0, not killed', async (t) => {
  const dir = await scratchDir('early-term')
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  // the listeners open before startup ends (admin, log line); a signal in between used to meet Node's
  // default action every time
  for (let start = 1; start <= 5; start++) {
    const port = await freePort()
    const config = join(dir, `start-${start}.yaml`)
    await writeFile(
      config,
      `upstream: http://127.0.0.1:9\nlisten:\n  http: 127.0.0.1:${port}\nadmin: 127.0.0.1:0\ntimeouts:\n  drainDelay: 0s\n`,
    )
    const proxy = spawnCli(['run', '-c', config])
    const deadline = performance.now() + 30_000
    // polled as fast as a connection attempt goes: the window is the few milliseconds after listen()
    while (!(await canConnect(port))) {
      if (performance.now() > deadline || proxy.child.exitCode !== null) break
    }
    proxy.kill('SIGTERM')
    const code = await proxy.exited
    t.equal(proxy.child.signalCode, null, `start ${start}: not killed by the signal`)
    t.equal(code, 0, `start ${start}: exit 0 ${proxy.stderr().trim().split('\n').pop() ?? ''}`)
  }
})

t.test('SIGTERM after the reader of stdout and stderr went away: exit 0, not a retry loop', async (t) => {
  // the process that read the sidecar's output died (a log collector, a shell pipe): every log line at the
  // shutdown meets EPIPE, which must neither end the process as an internal error nor hold it forever
  const up = await startUpstream()
  t.teardown(() => up.close())
  const sidecar = await startTestSidecar(
    t,
    { upstream: up.url, audit: { output: 'stdout' } },
    { env: { NHI_LOG_LEVEL: 'debug' } },
  )
  const res = await fetch(`${sidecar.proxyUrl}/before`)
  await res.arrayBuffer()
  sidecar.process.child.stdout!.destroy()
  sidecar.process.child.stderr!.destroy()
  const stopped = await timedStop(sidecar)
  t.equal(stopped.code, 0, 'exit 0 (not 3: a log line nobody reads is no internal error)')
  t.ok(stopped.ms < PROMPT_MS, `stopped in ${Math.round(stopped.ms)} ms`)
})
