// The proxy's own memory while it streams large bodies: the bundle (`node dist/nhi-proxy.mjs run`, as the
// image starts it) runs in a child process and its RSS is read from /proc/<pid>/status, so the client and the
// upstream (in the calling process) never count. Used by bench/stream.ts (1 GB each way per Node version)
// and by test/proxy/streaming.test.ts.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { fileURLToPath } from 'node:url'
import { Agent, request } from 'undici'

export const MB = 1024 * 1024
const ROOT = fileURLToPath(new URL('../../', import.meta.url))
const CHUNK = 64 * 1024

/** Builds the bundle into `outdir` (scripts/bundle.mjs, esbuild, about a second); returns its entry point. */
export function buildBundle(outdir: string): string {
  execFileSync(process.execPath, [join(ROOT, 'scripts', 'bundle.mjs')], {
    cwd: ROOT,
    env: { ...process.env, NHI_BUNDLE_OUTDIR: outdir },
    stdio: ['ignore', 'ignore', 'pipe'],
    timeout: 120_000,
  })
  const main = join(outdir, 'nhi-proxy.mjs')
  if (!existsSync(main)) throw new Error(`bundle: ${main} was not written`)
  return main
}

// ---- /proc -------------------------------------------------------------------------------------------

function statusField(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  if (!m) throw new Error(`/proc/${pid}/status has no ${field}`)
  return Number(m[1]) * 1024
}

/** Resident set size of `pid`, bytes. */
export function rssOf(pid: number): number {
  return statusField(pid, 'VmRSS')
}

/**
 * Resets the kernel's peak-RSS mark (VmHWM) of `pid` to its current RSS (`echo 5 > /proc/<pid>/clear_refs`);
 * false where that is not allowed, and then `peakRssOf` is the peak since the process started.
 */
export function resetPeakRss(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5')
    return true
  } catch {
    return false
  }
}

/** The kernel's peak RSS of `pid` since start or the last `resetPeakRss`, bytes: no sample can miss it. */
export function peakRssOf(pid: number): number {
  return statusField(pid, 'VmHWM')
}

// ---- the proxy ----------------------------------------------------------------------------------------

export interface ProxyChild {
  pid: number
  /** http://127.0.0.1:PORT */
  url: string
  /** the proxy's Node.js version, e.g. v24.22.3 */
  node: string
  child: ChildProcess
  stderr(): string
  /** the audit events it has written to stdout so far (one JSON object per request) */
  audit(): Record<string, unknown>[]
  stop(): Promise<void>
}

/**
 * `node <bundle> run --listen 127.0.0.1:0 --admin 127.0.0.1:0 --upstream <upstream>`; `node` defaults to the
 * one running this process. Resolves once its `nhi-proxy started` log line gave the proxy address.
 */
export async function startBundledProxy(
  bundle: string,
  upstream: string,
  opts: { node?: string; nodeArgs?: string[]; timeoutMs?: number } = {},
): Promise<ProxyChild> {
  const timeoutMs = opts.timeoutMs ?? 20_000
  const node = opts.node ?? process.execPath
  const version =
    node === process.execPath
      ? process.version
      : execFileSync(node, ['--version'], { encoding: 'utf8' }).trim()
  const ephemeral = '127.0.0.1:0'
  const child = spawn(
    node,
    [
      ...(opts.nodeArgs ?? []),
      bundle,
      'run',
      '--listen',
      ephemeral,
      '--admin',
      ephemeral,
      '--upstream',
      upstream,
    ],
    // the audit trail goes to stdout, one line per request, and is read like a log collector would
    { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NHI_LOG_LEVEL: 'info' } },
  )
  let out = ''
  child.stdout!.setEncoding('utf8')
  child.stdout!.on('data', (s: string) => {
    out += s
  })
  const audit = () =>
    out
      .slice(0, out.lastIndexOf('\n') + 1)
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>)
  const killOnExit = () => child.kill('SIGKILL')
  process.once('exit', killOnExit)
  let err = ''
  child.stderr!.setEncoding('utf8')
  const listen = new Promise<string>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`proxy did not start in ${timeoutMs} ms:\n${err}`)),
      timeoutMs,
    )
    child.stderr!.on('data', (s: string) => {
      err = (err + s).slice(-8000)
      const m = /"event":"started".*?"listen":"([^"]+)"/.exec(err)
      if (m) {
        clearTimeout(timer)
        resolve(m[1]!)
      }
    })
    child.once('exit', (code, signal) => {
      clearTimeout(timer)
      reject(new Error(`proxy exited (${code ?? signal}) before it listened:\n${err}`))
    })
  })
  const stop = async () => {
    process.off('exit', killOnExit)
    if (child.exitCode !== null || child.signalCode !== null) return
    const exited = once(child, 'exit')
    child.kill('SIGTERM')
    // nothing is in flight any more: a second signal, once the first is being handled, skips the drain delay
    // (5 s by default) instead of waiting it out
    const skipDelay = setInterval(() => {
      if (!err.includes(', draining')) return
      clearInterval(skipDelay)
      child.kill('SIGTERM')
    }, 20)
    const timer = setTimeout(() => child.kill('SIGKILL'), 3000)
    await exited
    clearInterval(skipDelay)
    clearTimeout(timer)
  }
  try {
    const address = await listen
    return { pid: child.pid!, url: `http://${address}`, node: version, child, stderr: () => err, audit, stop }
  } catch (e) {
    await stop()
    throw e
  }
}

// ---- the upstream and the client (in the calling process) ---------------------------------------------

export interface StreamUpstream {
  url: string
  /** request body bytes received, all requests */
  received(): number
  /** response body bytes handed to the socket (accepted by res.write), all requests */
  sent(): number
  close(): Promise<void>
}

/**
 * PUT /sink reads the body and answers `{"bytes":N}`; GET /bytes/N streams N bytes with content-length and
 * honours backpressure, so it only writes as fast as the proxy reads.
 */
export async function startStreamUpstream(): Promise<StreamUpstream> {
  let received = 0
  let sent = 0
  const chunk = Buffer.alloc(CHUNK, 0x61)
  const server: Server = createServer((req, res) => {
    const bytes = /^\/bytes\/(\d+)$/.exec(req.url ?? '')
    if (bytes) {
      let left = Number(bytes[1])
      res.setHeader('content-length', String(left))
      const pump = () => {
        while (left > 0) {
          const n = Math.min(left, chunk.length)
          left -= n
          sent += n
          if (!res.write(n === chunk.length ? chunk : chunk.subarray(0, n))) {
            res.once('drain', pump)
            return
          }
        }
        res.end()
      }
      res.on('close', () => res.off('drain', pump))
      pump()
      return
    }
    let n = 0
    req.on('data', (c: Buffer) => {
      n += c.length
      received += c.length
    })
    req.on('end', () => {
      res.setHeader('content-type', 'application/json')
      res.end(JSON.stringify({ bytes: n, transferEncoding: req.headers['transfer-encoding'] ?? null }))
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    received: () => received,
    sent: () => sent,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}

/** `total` bytes in 64 KiB chunks, produced only as fast as they are read. */
export function generated(total: number): Readable {
  const chunk = Buffer.alloc(CHUNK, 0x62)
  let left = total
  return new Readable({
    read() {
      if (left <= 0) return this.push(null)
      const n = Math.min(left, chunk.length)
      left -= n
      this.push(n === chunk.length ? chunk : chunk.subarray(0, n))
    },
  })
}

// ---- the measurement ----------------------------------------------------------------------------------

export interface PhaseMemory {
  /** RSS samples during the phase, bytes */
  min: number
  max: number
  /** the kernel's peak RSS over the phase (VmHWM), bytes; undefined when it could not be reset */
  peak: number | undefined
  samples: number
  ms: number
  /** bytes that arrived at the far end */
  bytes: number
}

export interface StreamMemory {
  node: string
  /** body size of each direction, bytes */
  size: number
  /** RSS after start-up and a warm-up transfer each way, before the measured transfers */
  baseline: number
  upload: PhaseMemory & { transferEncoding: string | null }
  download: PhaseMemory & { contentLength: string | undefined }
  /** highest RSS seen in either phase (kernel peak where available) minus baseline, bytes */
  growth: number
}

async function sampled<T>(
  pid: number,
  intervalMs: number,
  run: () => Promise<T>,
): Promise<{ value: T; mem: Omit<PhaseMemory, 'bytes'> }> {
  const exact = resetPeakRss(pid)
  let min = rssOf(pid)
  let max = min
  let samples = 1
  const timer = setInterval(() => {
    const rss = rssOf(pid)
    samples++
    if (rss < min) min = rss
    if (rss > max) max = rss
  }, intervalMs)
  const started = performance.now()
  try {
    const value = await run()
    const rss = rssOf(pid)
    samples++
    min = Math.min(min, rss)
    max = Math.max(max, rss)
    const peak = exact ? peakRssOf(pid) : undefined
    return { value, mem: { min, max, peak, samples, ms: performance.now() - started } }
  } finally {
    clearInterval(timer)
  }
}

async function upload(agent: Agent, url: string, size: number) {
  const res = await request(`${url}/sink`, { dispatcher: agent, method: 'PUT', body: generated(size) })
  const body = (await res.body.json()) as { bytes: number; transferEncoding: string | null }
  if (res.statusCode !== 200) throw new Error(`upload: status ${res.statusCode}`)
  return body
}

async function download(agent: Agent, url: string, size: number) {
  const res = await request(`${url}/bytes/${size}`, { dispatcher: agent })
  let bytes = 0
  for await (const c of res.body) bytes += (c as Buffer).length
  if (res.statusCode !== 200) throw new Error(`download: status ${res.statusCode}`)
  return { bytes, contentLength: res.headers['content-length'] as string | undefined }
}

/**
 * Streams `size` bytes up through the proxy, then `size` bytes down, sampling the proxy's RSS every
 * `intervalMs`. A warm-up of `warmup` bytes each way first, so lazily loaded code, the upstream pool and the
 * sockets' buffers are in the baseline.
 */
export async function measureStream(
  proxy: ProxyChild,
  size: number,
  opts: { warmup?: number; intervalMs?: number } = {},
): Promise<StreamMemory> {
  const warmup = opts.warmup ?? 16 * MB
  const intervalMs = opts.intervalMs ?? 10
  const agent = new Agent({ connections: 1 })
  try {
    await upload(agent, proxy.url, warmup)
    await download(agent, proxy.url, warmup)
    await new Promise((r) => setTimeout(r, 200))
    const baseline = rssOf(proxy.pid)
    const up = await sampled(proxy.pid, intervalMs, () => upload(agent, proxy.url, size))
    const down = await sampled(proxy.pid, intervalMs, () => download(agent, proxy.url, size))
    const high = Math.max(up.mem.peak ?? up.mem.max, down.mem.peak ?? down.mem.max)
    return {
      node: proxy.node,
      size,
      baseline,
      upload: { ...up.mem, bytes: up.value.bytes, transferEncoding: up.value.transferEncoding },
      download: { ...down.mem, bytes: down.value.bytes, contentLength: down.value.contentLength },
      growth: high - baseline,
    }
  } finally {
    await agent.close()
  }
}

/** One line per phase: `upload 1024 MB in 2.1 s: RSS 60.1–75.3 MB (peak 75.9), baseline 58.2 MB`. */
export function describeStream(r: StreamMemory): string {
  const mb = (n: number) => (n / MB).toFixed(1)
  const phase = (name: string, p: PhaseMemory) =>
    `${name} ${mb(p.bytes)} MB in ${(p.ms / 1000).toFixed(1)} s: RSS ${mb(p.min)}–${mb(p.max)} MB` +
    (p.peak === undefined ? '' : ` (kernel peak ${mb(p.peak)})`)
  return [
    `node ${r.node}, baseline RSS ${mb(r.baseline)} MB`,
    phase('upload', r.upload),
    phase('download', r.download),
    `growth over baseline ${mb(r.growth)} MB`,
  ].join('\n')
}
