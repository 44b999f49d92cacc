// An upstream that is still busy when the proxy shuts down: it holds every request unanswered and keeps every
// websocket open, answering each chunk the client sends through the tunnel with one text frame `ack`.
import { createHash } from 'node:crypto'
import { once } from 'node:events'
import { createServer, request } from 'node:http'
import { connect as h2connect } from 'node:http2'
import type { AddressInfo } from 'node:net'
import type { Duplex } from 'node:stream'
import { WebSocket } from 'undici'

const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'
/** an unmasked text frame `ack`, as a server sends it (RFC 6455 §5.2) */
const ACK = Buffer.from([0x81, 3, 0x61, 0x63, 0x6b])

export interface HoldingUpstream {
  url: string
  /** the request targets received, a websocket handshake's with ` (websocket)` */
  received: string[]
  close(): Promise<void>
}

export async function startHoldingUpstream(): Promise<HoldingUpstream> {
  const received: string[] = []
  const sockets = new Set<Duplex>()
  const server = createServer((req) => {
    received.push(req.url ?? '')
    req.resume()
  })
  server.on('upgrade', (req, socket: Duplex) => {
    received.push(`${req.url} (websocket)`)
    sockets.add(socket)
    socket.on('error', () => {})
    socket.once('close', () => sockets.delete(socket))
    socket.on('data', () => socket.write(ACK))
    const accept = createHash('sha1').update(`${req.headers['sec-websocket-key']}${WS_GUID}`).digest('base64')
    socket.write(
      `HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ${accept}\r\n\r\n`,
    )
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    received,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy()
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}

/** What a client of the proxy has under way when it shuts down; `settled` once the proxy let go of all three. */
export interface HeldExchanges {
  /** how the HTTP/1.1 request ended for its client: a status, or the error code */
  http1: Promise<string>
  settled: Promise<unknown>
}

/**
 * Through the proxy at `url`: a websocket to /ws-session that has sent `hello` and read the `ack`, an HTTP/1.1
 * GET /h1-slow and an HTTP/2 GET /h2-slow (h2c), both held by the upstream. Resolves once the tunnel is up;
 * the caller waits for the upstream to have received the two requests.
 */
export async function holdExchanges(url: string): Promise<HeldExchanges> {
  const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/ws-session`)
  ws.addEventListener('error', () => {})
  const wsClosed = new Promise((resolve) => ws.addEventListener('close', resolve))
  await new Promise((resolve, reject) => {
    ws.addEventListener('open', resolve)
    ws.addEventListener('close', () => reject(new Error('the websocket did not open')))
  })
  const acked = new Promise((resolve) => ws.addEventListener('message', resolve, { once: true }))
  ws.send('hello')
  await acked

  const http1 = new Promise<string>((resolve) => {
    const req = request(`${url}/h1-slow`, { agent: false }, (res) => {
      res.resume()
      res.on('end', () => resolve(String(res.statusCode)))
      res.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message))
    })
    req.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message))
    req.end()
  })

  const session = h2connect(url)
  session.on('error', () => {})
  const stream = session.request({ ':path': '/h2-slow' })
  stream.on('error', () => {})
  stream.resume()
  stream.end()
  const h2Closed = once(session, 'close')

  return { http1, settled: Promise.all([http1, wsClosed, h2Closed]) }
}
