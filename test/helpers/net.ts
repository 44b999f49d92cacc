// Loopback ports for child processes that must be told their port up front (Prometheus, a busy-port check),
// a port that is sure to refuse connections, and raw sockets on both ends of an HTTP/1.1 exchange: for bytes
// no HTTP client would send, and answers no HTTP server would give.
import { once } from 'node:events'
import { type AddressInfo, connect, createServer, type Server, type Socket } from 'node:net'
import type { Test } from 'tap'

/**
 * `freePort`: a TCP port on 127.0.0.1 that was free a moment ago, from a range the OS never hands to port-0
 * listeners, and that no other process's `freePort` hands out while this one runs. `canConnect`: whether
 * 127.0.0.1:port accepts a connection right now.
 */
export { canConnect, freePort } from '../../bench/lib/procs.ts'

/**
 * A TCP port on 127.0.0.1 that refuses connections for the whole test: a privileged port nothing listens on.
 * A port from `freePort()` cannot stand for "down": it is free only until someone binds it, and its
 * reservation keeps only other `freePort()` callers away, and only for ten minutes: anything else on the
 * machine listening on a fixed port may have it, and the "down" request then lands there.
 * Ports below 1024 are never handed out for port 0, and no test listens on one. 1000-1023 because fetch
 * refuses, before connecting, the lower ports browsers block (1, 7, 9, ... 995).
 */
export async function refusedPort(): Promise<number> {
  for (let port = 1000; port < 1024; port++) {
    const refused = await new Promise<boolean>((resolve) => {
      const socket = connect({ host: '127.0.0.1', port })
      socket.once('connect', () => {
        socket.destroy()
        resolve(false)
      })
      socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ECONNREFUSED'))
    })
    if (refused) return port
  }
  throw new Error('ports 1000-1023 on 127.0.0.1 all accept connections: none can stand for a closed port')
}

/**
 * Writes `request` as raw bytes on a new connection to 127.0.0.1:port and returns everything read (latin1)
 * once the connection closes: for requests no HTTP client would send, and answers it would not show as sent.
 * A string is written as UTF-8, a Buffer as it is (obs-text bytes); `localAddress`: the loopback address the
 * connection comes from (127.0.0.2 for a peer a sidecar trusts).
 */
export async function rawExchange(
  port: number,
  request: string | Buffer,
  localAddress?: string,
): Promise<string> {
  const socket = connect({ port, host: '127.0.0.1', ...(localAddress === undefined ? {} : { localAddress }) })
  let raw = ''
  socket.setEncoding('latin1')
  socket.on('data', (c: string) => {
    raw += c
  })
  const closed = new Promise((resolve) => socket.on('close', resolve))
  socket.write(request)
  await closed
  return raw
}

export interface RawClient {
  socket: Socket
  /** everything read so far (latin1) */
  text: () => string
  closed: () => boolean
}

/** A raw connection to 127.0.0.1:port that keeps what it reads: for exchanges over several writes. */
export async function rawClient(port: number): Promise<RawClient> {
  const socket = connect(port, '127.0.0.1')
  await once(socket, 'connect')
  let text = ''
  let closed = false
  socket.on('data', (c: Buffer) => {
    text += c.toString('latin1')
  })
  socket.on('error', () => {})
  socket.on('close', () => {
    closed = true
  })
  return { socket, text: () => text, closed: () => closed }
}

/**
 * `server` (a net, tls or http server) listening on 127.0.0.1, an ephemeral port; at the end of the test every
 * connection it accepted is destroyed and it is closed (a close alone waits for its clients). Resolves with
 * the port.
 */
export async function listenUntilTeardown(t: Test, server: Server): Promise<number> {
  const sockets = new Set<Socket>()
  server.on('connection', (socket: Socket) => {
    sockets.add(socket)
    socket.once('close', () => sockets.delete(socket))
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy()
        server.close(() => resolve())
      }),
  )
  return (server.address() as AddressInfo).port
}

/** One request as a scripted upstream read it. */
export interface ScriptedRequest {
  /** the request head, without the blank line that ends it */
  head: string
  /** the request target */
  path: string
  /** which request on its connection this is, from 1 */
  nth: number
  socket: Socket
}

/**
 * What to send back: the bytes (a string is written as latin1), or pieces written one at a time, each on its own
 * turn of the event loop so that the reader gets them apart. Nothing (`undefined`) when the script answers
 * on `socket` itself: later, in pieces of its own timing, or not at all.
 */
export type ScriptedAnswer = string | Buffer[] | undefined

export interface ScriptedUpstream {
  url: string
  port: number
  /** every request head read, in order, with the number of the connection it came on (from 1) */
  seen: { conn: number; head: string }[]
  /** how many connections the upstream has accepted */
  connections: () => number
}

/**
 * An HTTP/1.1 upstream on raw sockets, closed at teardown, that calls `script` for each request once its body
 * has arrived (these tests send short bodies) and writes what the script returns: for answers an HTTP server
 * library would refuse to give (ambiguous framing, resets mid-body, bytes nobody asked for).
 */
export async function scriptedUpstream(
  t: Test,
  script: (request: ScriptedRequest) => ScriptedAnswer,
): Promise<ScriptedUpstream> {
  const seen: ScriptedUpstream['seen'] = []
  let connections = 0
  const server = createServer((socket) => {
    const conn = ++connections
    let nth = 0
    socket.on('error', () => {})
    let pending = ''
    socket.on('data', async (c: Buffer) => {
      pending += c.toString('latin1')
      for (;;) {
        const headEnd = pending.indexOf('\r\n\r\n')
        if (headEnd === -1) return
        const head = pending.slice(0, headEnd)
        const end = requestEnd(head, pending, headEnd + 4)
        if (end === -1) return
        pending = pending.slice(end)
        seen.push({ conn, head })
        nth++
        const path = /^[A-Z]+ (\S+)/.exec(head)?.[1] ?? '/'
        const answer = script({ head, path, nth, socket })
        if (typeof answer === 'string') socket.write(answer, 'latin1')
        else if (answer) {
          for (const piece of answer) {
            socket.write(piece)
            await new Promise((resolve) => setTimeout(resolve, 2))
          }
        }
      }
    })
  })
  const port = await listenUntilTeardown(t, server)
  return { url: `http://127.0.0.1:${port}`, port, seen, connections: () => connections }
}

/**
 * Where the request whose head ends at `bodyStart` of `pending` ends, or -1 while its body is still arriving.
 * A chunked body ends at its first last-chunk: good enough for the bodies these tests send, which never carry
 * `CRLF 0 CRLF` in their data.
 */
function requestEnd(head: string, pending: string, bodyStart: number): number {
  const length = /\r\ncontent-length: *(\d+)/i.exec(head)
  if (length) {
    const end = bodyStart + Number(length[1])
    return pending.length >= end ? end : -1
  }
  if (!/\r\ntransfer-encoding: *chunked/i.test(head)) return bodyStart
  const body = pending.slice(bodyStart)
  const lastChunk = /(?:^|\r\n)0(?:;[^\r]*)?\r\n/.exec(body)
  if (!lastChunk) return -1
  const trailersStart = lastChunk.index + lastChunk[0].length
  // no trailers: the blank line right away; else the trailer section ends with one
  if (body.startsWith('\r\n', trailersStart)) return bodyStart + trailersStart + 2
  const blank = body.indexOf('\r\n\r\n', trailersStart)
  return blank === -1 ? -1 : bodyStart + blank + 4
}
