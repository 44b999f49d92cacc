// A real nginx in a test: as the trusted front proxy (terminates mTLS with the test's CA on loopback and passes
// the verified client certificate on in one header), or as an upstream whose own routing a test checks. Runs
// as a child process with a throwaway prefix directory; stopped at the end of the test.
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Test } from 'tap'
import { nginxBinary } from '../../bench/lib/nginx.ts'
import { freePort, spawnProcess, waitForPorts } from '../../bench/lib/procs.ts'
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
