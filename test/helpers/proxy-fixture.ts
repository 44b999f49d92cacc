// A small real Pipeline and a proxy in front of a real upstream, shared by the proxy tests.
import type { AddressInfo } from 'node:net'
import type { TLSSocket } from 'node:tls'
import { defaultConfig } from '../../src/config/schema.ts'
import type { Attribution, Pipeline } from '../../src/pipeline/index.ts'
import { createProxy, type ProxyOptions, type ProxyServer } from '../../src/proxy/server.ts'
import type { CertEvidence, ConnectionInfo, Identity, RequestEvent, RequestInfo } from '../../src/types.ts'
import { eventually } from './eventually.ts'
import type { CA, KeyPair } from './pki.ts'
import { startUpstream, type TestUpstream } from './upstream.ts'

export const SERVICE_IDENTITY: Identity = {
  name: 'payments/api',
  kind: 'service',
  source: 'jwt',
  verified: true,
  attributes: {},
}

export class TestPipeline implements Pipeline {
  readonly service = 'checkout'
  readonly events: RequestEvent[] = []
  readonly seen: { req: RequestInfo; conn: ConnectionInfo }[] = []
  constructor(
    private readonly decide: (
      req: RequestInfo,
      conn: ConnectionInfo,
    ) => Partial<Attribution> | Promise<never> = () => ({}),
  ) {}

  async attribute(req: RequestInfo, conn: ConnectionInfo): Promise<Attribution> {
    this.seen.push({ req, conn })
    const extra = await this.decide(req, conn)
    return {
      identity: SERVICE_IDENTITY,
      evidence: { credentials: [], failures: [], anomalies: [] },
      decision: { decision: 'allow', rule: 'default' },
      route: 'other',
      ...extra,
    }
  }

  record(event: RequestEvent): void {
    this.events.push(event)
  }

  /** resolves once `n` events were recorded */
  async waitForEvents(n: number, timeoutMs = 5000): Promise<RequestEvent[]> {
    return await eventually(() => this.events.length >= n && this.events, {
      timeoutMs,
      intervalMs: 5,
      what: `${n} recorded events`,
    })
  }
}

export interface Teardown {
  teardown(fn: () => unknown): void
}

export interface RunningProxy {
  proxy: ProxyServer
  url: string
  port: number
  https?: AddressInfo
  pipeline: TestPipeline
}

export async function startProxy(
  t: Teardown,
  options: Partial<ProxyOptions> & { upstream: string; pipeline?: TestPipeline },
): Promise<RunningProxy> {
  const config = defaultConfig()
  const pipeline = options.pipeline ?? new TestPipeline()
  const proxy = createProxy({
    getPipeline: () => pipeline,
    http: { host: '127.0.0.1', port: 0 },
    timeouts: config.timeouts,
    limits: config.limits,
    ...options,
  })
  const addrs = await proxy.listen()
  t.teardown(() => proxy.close(0))
  const port = addrs.http?.port ?? 0
  const out: RunningProxy = { proxy, url: `http://127.0.0.1:${port}`, port, pipeline }
  if (addrs.https) out.https = addrs.https
  return out
}

/**
 * A parsePeerCert that logs the subject CN of every call, for the tests that check a connection's certificate
 * is parsed once for the connection, not once per request or stream.
 */
export function countingCertParser() {
  const calls: string[] = []
  const parse = (socket: TLSSocket): CertEvidence | undefined => {
    const cert = socket.getPeerCertificate()
    calls.push(String(cert?.subject?.CN ?? ''))
    if (!cert?.raw) return undefined
    return {
      source: 'mtls',
      verified: socket.authorized,
      cn: String(cert.subject?.CN),
      dnsSans: [],
      uriSans: [],
      sha256: cert.fingerprint256.replace(/:/g, '').toLowerCase(),
    }
  }
  return { calls, parse }
}

/**
 * A proxy in front of a new test upstream, with an HTTPS listener on `pki.server`'s certificate that asks
 * clients for a certificate issued by `pki.clientCa`; `parser` has the CN of every certificate it parsed.
 */
export async function startMtlsProxy(
  t: Teardown,
  pki: { server: KeyPair; clientCa: CA },
  clientCert: 'optional' | 'required',
): Promise<
  RunningProxy & { up: TestUpstream; parser: ReturnType<typeof countingCertParser>; httpsUrl: string }
> {
  const up = await startUpstream()
  t.teardown(() => up.close())
  const parser = countingCertParser()
  const running = await startProxy(t, {
    upstream: up.url,
    https: {
      host: '127.0.0.1',
      port: 0,
      cert: pki.server.certPem,
      key: pki.server.keyPem,
      ca: pki.clientCa.certPem,
      clientCert,
    },
    parsePeerCert: parser.parse,
  })
  return { ...running, up, parser, httpsUrl: `https://127.0.0.1:${running.https!.port}` }
}
