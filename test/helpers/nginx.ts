// A real nginx in a test: as the trusted front proxy (terminates mTLS with the test's CA on loopback and passes
// the verified client certificate on in one header), as an upstream whose own routing a test checks, or as the
// reference front a differential test holds nhi-proxy against. Runs as a child process with a throwaway prefix
// directory; stopped at the end of the test.
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Test } from 'tap'
import { nginxBinary } from '../../bench/lib/nginx.ts'
import { freePort, spawnProcess, waitForPorts } from '../../bench/lib/procs.ts'
import { eventually } from './eventually.ts'
import { type Arrival, type RecordingUpstream, recordingUpstream } from './recording-upstream.ts'
import { scratchDir } from './scratch.ts'
import { startTestSidecar, type TestSidecar } from './sidecar.ts'
import { skipWithout } from './tools.ts'

/** Why a test that needs nginx cannot run here (t.skip reason), or false when it can. */
export const skipWithoutNginx: false | string = skipWithout('nginx', nginxBinary())

export interface NginxFrontOptions {
  /** directory for the prefix, config and logs */
  dir: string
  /** nhi-proxy's plain HTTP listener */
  upstreamPort: number
  /** local address nginx connects to the upstream from (the address nhi-proxy trusts) */
  bindAddress: string
  serverCertFile: string
  serverKeyFile: string
  clientCAFile: string
  /** `proxy_set_header` lines, e.g. { 'X-SSL-Client-Cert': '$ssl_client_escaped_cert' } */
  setHeaders: Record<string, string>
}

export interface NginxServer {
  url: string
  port: number
  errorLog: string
}

export async function startNginxFront(t: Test, o: NginxFrontOptions): Promise<NginxServer> {
  const setHeaders = Object.entries(o.setHeaders)
    .map(([name, value]) => `      proxy_set_header ${name} ${value};`)
    .join('\n')
  const nginx = await startNginx(
    t,
    o.dir,
    (port) => `    listen 127.0.0.1:${port} ssl;
    ssl_certificate ${o.serverCertFile};
    ssl_certificate_key ${o.serverKeyFile};
    ssl_client_certificate ${o.clientCAFile};
    ssl_verify_client optional;
    location / {
      proxy_pass http://127.0.0.1:${o.upstreamPort};
      proxy_bind ${o.bindAddress};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
${setHeaders}
    }`,
  )
  return { ...nginx, url: `https://127.0.0.1:${nginx.port}` }
}

/**
 * nginx with one server block listening on a free loopback port, `server(port)` its body (listen directive
 * included), nginx's defaults for everything else (merge_slashes on, no regex locations): as an upstream
 * whose own routing a test compares with the proxy's. `http`: more of the http block, beside the server
 * (an `upstream` block whose connections nginx keeps alive). Stopped at the end of the test.
 */
export async function startNginx(
  t: Test,
  dir: string,
  server: (port: number) => string,
  http = '',
): Promise<NginxServer> {
  const bin = nginxBinary()
  if (!bin) throw new Error('nginx is not installed')
  const prefix = join(dir, 'nginx')
  await mkdir(join(prefix, 'logs'), { recursive: true })
  const port = await freePort()
  const p = (name: string) => join(prefix, name)
  const conf = p('nginx.conf')
  await writeFile(
    conf,
    `daemon off;
master_process off;
worker_processes 1;
${process.getuid?.() === 0 ? 'user root;' : ''}
pid ${p('nginx.pid')};
error_log ${p('logs/error.log')} info;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path ${p('body')};
  proxy_temp_path ${p('proxy')};
  fastcgi_temp_path ${p('fastcgi')};
  uwsgi_temp_path ${p('uwsgi')};
  scgi_temp_path ${p('scgi')};
${http}
  server {
${server(port)}
  }
}
`,
  )
  const proc = spawnProcess('nginx', bin, ['-p', prefix, '-c', conf])
  t.teardown(() => proc.stop())
  await waitForPorts(proc, [port], 10_000)
  return { url: `http://127.0.0.1:${port}`, port, errorLog: p('logs/error.log') }
}

export interface Fronts {
  sidecar: TestSidecar
  nginx: NginxServer
  behindProxy: RecordingUpstream
  behindNginx: RecordingUpstream
  /** resolves once neither upstream has a request whose body is still arriving */
  requestsEnded: () => Promise<void>
}

/**
 * nhi-proxy and nginx as fronts, each in front of a recording upstream of its own, for a differential that
 * sends them the same bytes: nginx `proxy_pass`es to a keep-alive upstream over HTTP/1.1, as nhi-proxy does.
 * Both give a request's head and body, and an idle connection, `deadlineS` seconds; nginx takes prior-knowledge
 * h2c with `http2`; the sidecar keeps the last `auditRing` audit events.
 */
export async function startFronts(
  t: Test,
  { http2, deadlineS, auditRing }: { http2: boolean; deadlineS: number; auditRing: number },
): Promise<Fronts> {
  const behindProxy = await recordingUpstream(t)
  const behindNginx = await recordingUpstream(t)
  const nginx = await startNginx(
    t,
    await scratchDir('nginx'),
    (port) => `    listen 127.0.0.1:${port}${http2 ? ' http2' : ''};
    client_header_timeout ${deadlineS}s;
    client_body_timeout ${deadlineS}s;
    keepalive_timeout ${deadlineS}s;
    location / {
      proxy_pass http://behind_nginx;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }`,
    `  upstream behind_nginx {
    server 127.0.0.1:${behindNginx.port};
    keepalive 4;
  }`,
  )
  const sidecar = await startTestSidecar(t, {
    upstream: `http://127.0.0.1:${behindProxy.port}`,
    timeouts: { headers: `${deadlineS}s`, request: `${deadlineS}s`, idle: `${deadlineS}s` },
    audit: { output: 'off', ringSize: auditRing },
  })
  const requestsEnded = () =>
    eventually(() => behindProxy.open() === 0 && behindNginx.open() === 0, {
      what: 'every upstream request to end',
    }).then(() => undefined)
  return { sidecar, nginx, behindProxy, behindNginx, requestsEnded }
}

/** what a comparison of the fronts reads of one feature of a generated request */
export interface ComparedFeature<Difference extends string> {
  name: string
  verdict: string
  /** the documented difference it shows where nhi-proxy refuses what nginx forwards */
  difference?: Difference
}

/** one generated request (or stream) as each front handled it */
export interface ComparedRequest<Difference extends string> {
  /** what the reports name it by */
  label: string
  /** what was sent, as the reports show it */
  sent: string
  features: readonly ComparedFeature<Difference>[]
  /** its worst feature's verdict */
  verdict: string
  /** what nhi-proxy answered, as the reports show it */
  proxyAnswered: string
  /** what the upstream behind each front got of it, where that front forwarded it whole */
  forwardedByProxy: Arrival | undefined
  forwardedByNginx: Arrival | undefined
  /** differences besides those of its features that explain a refusal of nhi-proxy's */
  alsoDocumented?: readonly ComparedFeature<Difference>[]
}

/**
 * How nhi-proxy and nginx handled the same requests, request by request: where both forwarded one, their
 * upstreams must get the same method, target and body; where only nginx did, a documented difference of one
 * of its features must explain nhi-proxy's refusal, unless it has a feature that makes a server refuse it
 * (`refusedVerdict`: then it is nginx's leniency, counted). What only nhi-proxy forwarded is counted.
 */
export class FrontComparison<Difference extends string> {
  readonly counts = {
    requests: 0,
    mustRefuse: 0,
    forwardedBoth: 0,
    refusedBoth: 0,
    proxyOnly: 0,
    nginxOnly: 0,
  }
  /** the requests both forwarded whose upstreams got them otherwise, one line each */
  readonly differ: string[] = []
  /** the requests only nginx forwarded that no documented difference explains, one line each */
  readonly undocumented: string[] = []
  /** the features behind each documented difference shown */
  readonly documented = new Map<Difference, string[]>()
  /** the features of the requests only nhi-proxy forwarded, by name */
  readonly nginxStricter = new Map<string, number>()
  /** the features that make a server refuse a request, of the requests only nginx forwarded, by name */
  readonly nginxLenient = new Map<string, number>()

  constructor(private readonly refusedVerdict: string) {}

  add(r: ComparedRequest<Difference>): void {
    this.counts.requests++
    const mustRefuse = r.verdict === this.refusedVerdict
    if (mustRefuse) this.counts.mustRefuse++
    const a = r.forwardedByProxy
    const b = r.forwardedByNginx
    if (a !== undefined && b !== undefined) {
      this.counts.forwardedBoth++
      if (a.method !== b.method || a.url !== b.url || a.body !== b.body)
        this.differ.push(
          `${r.label}: nhi-proxy ${a.method} ${a.url} ${JSON.stringify(a.body)}, nginx ${b.method} ${b.url} ${JSON.stringify(b.body)}`,
        )
    } else if (a === undefined && b === undefined) this.counts.refusedBoth++
    else if (a !== undefined) {
      this.counts.proxyOnly++
      for (const f of r.features.filter((f) => f.verdict !== 'valid')) count(this.nginxStricter, f.name)
    } else if (mustRefuse) {
      this.counts.nginxOnly++
      for (const f of r.features.filter((f) => f.verdict === this.refusedVerdict))
        count(this.nginxLenient, f.name)
    } else {
      this.counts.nginxOnly++
      const reasons = [
        ...r.features.filter((f) => f.difference !== undefined && f.verdict !== 'valid'),
        ...(r.alsoDocumented ?? []),
      ]
      if (reasons.length === 0)
        this.undocumented.push(`${r.label}: nhi-proxy ${r.proxyAnswered}, nginx forwarded it; sent ${r.sent}`)
      for (const f of reasons)
        this.documented.set(f.difference!, [...(this.documented.get(f.difference!) ?? []), f.name])
    }
  }

  /** where both forwarded, the same request; where only nginx did, a documented difference */
  assertAgreement(t: Test): void {
    t.same(
      this.differ.slice(0, 5),
      [],
      'where both forward, the upstream gets the same method, target and body',
    )
    t.same(
      this.undocumented.slice(0, 5),
      [],
      'every request nhi-proxy refuses and nginx forwards is a documented difference',
    )
  }

  /** for a run's comments: what the fronts did, the documented differences shown, and each front's features */
  report() {
    const listed = (m: Map<string, number>) => [...m].map(([n, k]) => `${n} ${k}`).join(', ') || 'none'
    const c = this.counts
    return {
      handled: `both forwarded ${c.forwardedBoth}, both refused ${c.refusedBoth}, nhi-proxy alone forwarded ${c.proxyOnly}, nginx alone ${c.nginxOnly}`,
      documented:
        [...this.documented]
          .map(([d, names]) => `${d} (${names.length}: ${[...new Set(names)].join(', ')})`)
          .join('; ') || 'none',
      nginxLenient: listed(this.nginxLenient),
      nginxStricter: listed(this.nginxStricter),
    }
  }
}

const count = (m: Map<string, number>, name: string) => m.set(name, (m.get(name) ?? 0) + 1)
