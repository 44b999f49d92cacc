// A real HTTP upstream for tests: records what it received and answers per path.
//   /echo             → 200 JSON {method, url, headers, bodyBytes}
//   /status/NNN       → that status
//   /slow/MS          → answers after MS milliseconds
//   /bytes/N          → N bytes of body, streamed
//   anything else     → 200 "ok"
import { once } from 'node:events'
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'

export interface Received {
  method: string
  url: string
  headers: IncomingHttpHeaders
  bodyBytes: number
}

export interface TestUpstream {
  server: Server
  url: string
  port: number
  received: Received[]
  close(): Promise<void>
}

export async function startUpstream(port = 0): Promise<TestUpstream> {
  const received: Received[] = []
  const server = createServer((req, res) => {
    let bodyBytes = 0
    req.on('data', (c: Buffer) => {
      bodyBytes += c.length
    })
    req.on('end', () => {
      const rec = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, bodyBytes }
      received.push(rec)
      if (received.length > 10_000) received.shift()
      const url = req.url ?? '/'
      const status = /^\/status\/(\d{3})/.exec(url)
      const slow = /^\/slow\/(\d+)/.exec(url)
      const bytes = /^\/bytes\/(\d+)/.exec(url)
      if (url.startsWith('/echo')) {
        res.setHeader('content-type', 'application/json')
        res.end(JSON.stringify(rec))
      } else if (status) {
        res.statusCode = Number(status[1])
        res.end(`status ${status[1]}`)
      } else if (slow) {
        const t = setTimeout(() => res.end('slow ok'), Number(slow[1]))
        res.on('close', () => clearTimeout(t))
      } else if (bytes) {
        let left = Number(bytes[1])
        const chunk = Buffer.alloc(64 * 1024, 0x61)
        res.setHeader('content-length', String(left))
        const pump = () => {
          while (left > 0) {
            const n = Math.min(left, chunk.length)
            left -= n
            if (!res.write(n === chunk.length ? chunk : chunk.subarray(0, n))) {
              res.once('drain', pump)
              return
            }
          }
          res.end()
        }
        pump()
      } else {
        res.end('ok')
      }
    })
  })
  server.keepAliveTimeout = 65_000
  server.listen(port, '127.0.0.1')
  await once(server, 'listening')
  const p = (server.address() as AddressInfo).port
  return {
    server,
    url: `http://127.0.0.1:${p}`,
    port: p,
    received,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}
