// A small real Pipeline and a proxy in front of a real upstream, shared by the proxy tests.
import type { AddressInfo } from 'node:net'
import { defaultConfig } from '../../src/config/schema.ts'
import type { Attribution, Pipeline } from '../../src/pipeline/index.ts'
import { createProxy, type ProxyOptions, type ProxyServer } from '../../src/proxy/server.ts'
import type { ConnectionInfo, Identity, RequestEvent, RequestInfo } from '../../src/types.ts'
import { eventually } from './eventually.ts'

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
