// The request-trailers tests' upstream, client and sidecar: an upstream that hashes what it receives and
// answers with a streamed body and a response trailer, a chunked uploader that can send request trailers,
// and the sidecar in front of it (two test files, so the runner can run them side by side).
import { createHash, randomBytes } from 'node:crypto'
import { once } from 'node:events'
import {
  type IncomingHttpHeaders,
  type IncomingMessage,
  request,
  type Server,
  type ServerResponse,
} from 'node:http'
import type { createServer as createH2cServer } from 'node:http2'
import type { AddressInfo, Server as NetServer } from 'node:net'
import type { TLSSocket } from 'node:tls'
import type { Test } from 'tap'
import { startTestSidecar, type TestSidecar } from './sidecar.ts'

export const MB = 1024 * 1024

export interface Seen {
  headers: IncomingHttpHeaders
  trailers: Record<string, string>
  rawTrailers: string[]
  bytes: number
  sha256: string
  cn: string | null
  complete: boolean
}

/**
 * An upstream that hashes the request body and answers with the digest, a streamed body of `replyBytes` and a
 * response trailer. `hold` keeps the request body unread until `release()`; `silent` never answers.
 */
export function upstreamHandler(
  opts: { hold?: boolean; silent?: boolean; replyBytes?: number; stallReply?: boolean } = {},
) {
  const seen: Seen[] = []
  const aborted: Seen[] = []
  let release: () => void = () => {}
  /** the response body the upstream has written so far, and whether it waits for the proxy to read */
  const reply = { written: 0, blocked: false }
  /** request body bytes read so far, over all requests */
  const received = { bytes: 0 }
  const released = new Promise<void>((resolve) => {
    release = resolve
  })
  const handler = (req: IncomingMessage, res: ServerResponse) => {
    const hash = createHash('sha256')
    let bytes = 0
    const socket = req.socket as TLSSocket
    const peer = typeof socket.getPeerCertificate === 'function' ? socket.getPeerCertificate() : undefined
    const record = (complete: boolean): Seen => ({
      headers: req.headers,
      // from the raw pairs: node:http2 adds a symbol-keyed field to its trailers object
      trailers: Object.fromEntries(
        req.rawTrailers.flatMap((v, i, a) => (i % 2 ? [] : [[v.toLowerCase(), a[i + 1] ?? '']])),
      ),
      rawTrailers: [...req.rawTrailers],
      bytes,
      sha256: hash.copy().digest('hex'),
      cn: (peer?.subject?.CN as string | undefined) ?? null,
      complete,
    })
    req.on('data', (c: Buffer) => {
      bytes += c.length
      received.bytes += c.length
      hash.update(c)
    })
    req.on('close', () => {
      if (!req.complete) aborted.push(record(false))
    })
    if (opts.hold) {
      req.pause()
      void released.then(() => req.resume())
    }
    req.on('end', () => {
      const s = record(true)
      seen.push(s)
      if (opts.silent) return
      if (opts.stallReply) {
        // headers and a first chunk, then silence
        res.writeHead(200, { 'content-type': 'text/plain' })
        res.write('first chunk')
        return
      }
      res.writeHead(200, { 'content-type': 'application/octet-stream', trailer: 'x-upstream-digest' })
      let left = opts.replyBytes ?? 0
      const chunk = Buffer.alloc(64 * 1024, 0x62)
      const pump = () => {
        while (left > 0) {
          const n = Math.min(left, chunk.length)
          left -= n
          reply.written += n
          if (!res.write(chunk.subarray(0, n))) {
            reply.blocked = true
            res.once('drain', () => {
              reply.blocked = false
              pump()
            })
            return
          }
        }
        res.addTrailers({ 'x-upstream-digest': s.sha256 })
        res.end()
      }
      pump()
    })
  }
  return { handler, seen, aborted, reply, received, release: () => release() }
}

export async function listenTcp(
  server: Server | ReturnType<typeof createH2cServer> | NetServer,
): Promise<number> {
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return (server.address() as AddressInfo).port
}

export interface Upload {
  status: number
  headers: IncomingHttpHeaders
  trailers: Record<string, string | undefined>
  body: string
  replyBytes: number
  sentSha256: string
  sent: number
}

export interface UploadOptions {
  /** request body size; written in 64 KiB chunks of random bytes, waiting for drain */
  bytes: number
  trailers?: Record<string, string>
  /** the Trailer header; default: the names of `trailers` */
  announce?: string | false
  /** progress: the client is blocked on backpressure with this many bytes accepted */
  onStall?: (sent: number) => void
  /** stop writing after this many bytes and destroy the connection */
  abortAfter?: number
  /** stop writing after this many bytes until `resumeWhen` resolves */
  pauseAfter?: number
  resumeWhen?: Promise<void>
  method?: string
  /** the response body is not read until this resolves */
  readResponseAfter?: Promise<void>
}

/** A chunked upload through node:http's client, which can send request trailers. */
export function upload(
  port: number,
  path: string,
  o: UploadOptions,
): Promise<Upload> & { stalled: () => number } {
  let stalledAt = -1
  const promise = new Promise<Upload>((resolve, reject) => {
    const announce = o.announce ?? Object.keys(o.trailers ?? {}).join(', ')
    const req = request({
      host: '127.0.0.1',
      port,
      path,
      method: o.method ?? 'POST',
      agent: false,
      headers: {
        'transfer-encoding': 'chunked',
        'content-type': 'application/octet-stream',
        ...(announce ? { trailer: announce } : {}),
      },
    })
    const hash = createHash('sha256')
    const block = randomBytes(MB)
    let sent = 0
    req.on('error', reject)
    req.on('response', (res) => {
      if (o.readResponseAfter) {
        res.pause()
        void o.readResponseAfter.then(() => res.resume())
      }
      const chunks: Buffer[] = []
      let replyBytes = 0
      res.on('data', (c: Buffer) => {
        replyBytes += c.length
        if (chunks.length < 16) chunks.push(c)
      })
      res.on('error', reject)
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          trailers: { ...res.trailers },
          body: Buffer.concat(chunks).toString('latin1').slice(0, 4096),
          replyBytes,
          sentSha256: hash.digest('hex'),
          sent,
        }),
      )
    })
    const write = () => {
      while (sent < o.bytes) {
        if (o.pauseAfter !== undefined && sent >= o.pauseAfter && o.resumeWhen) {
          const resumeWhen = o.resumeWhen
          o.resumeWhen = undefined
          void resumeWhen.then(write)
          return
        }
        if (o.abortAfter !== undefined && sent >= o.abortAfter) {
          req.destroy()
          resolve({
            status: 0,
            headers: {},
            trailers: {},
            body: '',
            replyBytes: 0,
            sentSha256: '',
            sent,
          })
          return
        }
        const n = Math.min(64 * 1024, o.bytes - sent)
        const offset = sent % MB
        const chunk = block.subarray(offset, Math.min(MB, offset + n))
        sent += chunk.length
        hash.update(chunk)
        if (!req.write(chunk)) {
          stalledAt = sent
          o.onStall?.(sent)
          req.once('drain', () => {
            stalledAt = -1
            write()
          })
          return
        }
      }
      if (o.trailers) req.addTrailers(o.trailers)
      req.end()
    }
    write()
  })
  return Object.assign(promise, { stalled: () => stalledAt })
}

/** The sidecar in front of an upstream, and its admin URL. */
export async function sidecarFor(t: Test, upstream: string, extra: Record<string, unknown> = {}) {
  const sidecar: TestSidecar = await startTestSidecar(t, { service: 'uploads', upstream, ...extra })
  return { sidecar, port: sidecar.proxyAddress.port, admin: sidecar.adminUrl }
}
