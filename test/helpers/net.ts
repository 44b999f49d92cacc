// Loopback ports for child processes that must be told their port up front (Prometheus, a busy-port check),
// and a port that is sure to refuse connections.
import { once } from 'node:events'
import { connect, type Socket } from 'node:net'

/**
 * `freePort`: a TCP port on 127.0.0.1 that was free a moment ago, from a range the OS never hands to port-0
 * listeners. `canConnect`: whether 127.0.0.1:port accepts a connection right now.
 */
export { canConnect, freePort } from '../../bench/lib/procs.ts'

/**
 * A TCP port on 127.0.0.1 that refuses connections for the whole test: a privileged port nothing listens on.
 * A port from `freePort()` cannot stand for "down": it is free only until someone binds it, and another test
 * process's `freePort()` may hand it to a server of its own, where the "down" request then lands.
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
 */
export async function rawExchange(port: number, request: string): Promise<string> {
  const socket = connect(port, '127.0.0.1')
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
