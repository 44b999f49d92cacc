// nginx as the reference reverse proxy: one worker (like one node process), upstream keep-alive, no
// access log, on loopback, with a throwaway config and prefix directory.
import { existsSync } from 'node:fs'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { hasCommand } from './load.ts'
import { type ServerProcess, spawnProcess, waitForPorts } from './procs.ts'

export function nginxBinary(): string | undefined {
  if (hasCommand('nginx')) return 'nginx'
  // Debian puts it in sbin, which is not on every user's PATH
  return existsSync('/usr/sbin/nginx') ? '/usr/sbin/nginx' : undefined
}

/** Runs nginx (`workers` worker processes, no access log) with `http` as the body of its http block; resolves once `port` listens. */
async function runNginx(
  name: string,
  dir: string,
  port: number,
  http: string,
  workers = 1,
): Promise<ServerProcess> {
  const bin = nginxBinary()
  if (!bin) throw new Error('nginx is not installed')
  const prefix = join(dir, name)
  await mkdir(join(prefix, 'logs'), { recursive: true })
  const conf = join(prefix, 'nginx.conf')
  const tmp = (file: string) => join(prefix, file)
  await writeFile(
    conf,
    `daemon off;
master_process on;
worker_processes ${workers};
${process.getuid?.() === 0 ? 'user root;' : ''}
pid ${tmp('nginx.pid')};
error_log ${tmp('logs/error.log')} warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${tmp('body')};
  proxy_temp_path ${tmp('proxy')};
  fastcgi_temp_path ${tmp('fastcgi')};
  uwsgi_temp_path ${tmp('uwsgi')};
  scgi_temp_path ${tmp('scgi')};
${http}}
`,
  )
  const proc = spawnProcess(name, bin, ['-p', prefix, '-c', conf])
  try {
    await waitForPorts(proc, [port])
  } catch (err) {
    await proc.stop()
    throw err
  }
  return proc
}

export function startNginx(
  dir: string,
  port: number,
  upstreamPort: number,
  workers = 1,
): Promise<ServerProcess> {
  return runNginx(
    workers === 1 ? 'nginx' : `nginx-${workers}w`,
    dir,
    port,
    `  keepalive_requests 1000000;
  upstream app {
    server 127.0.0.1:${upstreamPort};
    keepalive 128;
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }
  }
`,
    workers,
  )
}

/**
 * nginx as the reference gRPC proxy of the h2c bench: h2c with prior knowledge in (`listen ... http2`),
 * `grpc_pass` over a kept-alive h2c connection to the upstream, one worker.
 */
export function startNginxGrpc(dir: string, port: number, upstreamPort: number): Promise<ServerProcess> {
  return runNginx(
    'nginx-grpc',
    dir,
    port,
    `  # streams per client connection before GOAWAY (keepalive_requests applies to HTTP/2 since 1.19.7)
  keepalive_requests 1000000;
  http2_max_concurrent_streams 1000;
  upstream grpc_app {
    server 127.0.0.1:${upstreamPort};
    keepalive 16;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:${port} http2;
    location / {
      grpc_pass grpc://grpc_app;
    }
  }
`,
  )
}
