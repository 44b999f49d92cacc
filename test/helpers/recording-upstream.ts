// The upstream behind a front in the differential tests (nhi-proxy and nginx each in front of their own):
// node:http with its strict parser, which keeps every request it parsed as it arrived and every byte stream it
// could not parse, so that a test can tell what a front meant to send from what an upstream would read.
import type { IncomingMessage, ServerResponse } from 'node:http'
import { createServer } from 'node:http'
import type { Socket } from 'node:net'
import type { Test } from 'tap'
import { listenUntilTeardown } from './net.ts'

export interface Arrival {
  /** the upstream connection it came on, numbered from 1 in the order they were accepted (0: unknown) */
  conn: number
  method: string
  url: string
  headers: [string, string][]
  body: string
  trailers: [string, string][]
  /** its body arrived to its end */
  complete: boolean
}

export interface RecordingUpstream {
  port: number
  arrivals: Arrival[]
  /** byte streams from a front that node:http could not parse: the front sent what it did not mean */
  unparsed: { conn: number; code: string; bytes: string }[]
  /** requests begun whose body is still arriving */
  open: () => number
  /** connections from the front: accepted, and closed since */
  connections: () => { accepted: number; closed: number }
}

/** a list of raw header lines ([name, value, name, value, …]) as pairs */
export const pairs = (raw: string[]) =>
  raw.flatMap((v, i, a): [string, string][] => (i % 2 ? [] : [[v, a[i + 1]!]]))

export async function recordingUpstream(t: Test): Promise<RecordingUpstream> {
  const arrivals: Arrival[] = []
  const unparsed: RecordingUpstream['unparsed'] = []
  const received = new WeakMap<Socket, { conn: number; bytes: string }>()
  const connections = { accepted: 0, closed: 0 }
  let open = 0
  const onRequest = (req: IncomingMessage, res: ServerResponse) => {
    const arrival: Arrival = {
      conn: received.get(req.socket)?.conn ?? 0,
      method: req.method ?? '',
      url: req.url ?? '',
      headers: pairs(req.rawHeaders),
      body: '',
      trailers: [],
      complete: false,
    }
    arrivals.push(arrival)
    open++
    req.setEncoding('latin1')
    req.on('data', (c: string) => {
      arrival.body += c
    })
    req.on('close', () => {
      if (!arrival.complete) open--
    })
    req.on('end', () => {
      arrival.complete = true
      arrival.trailers = pairs(req.rawTrailers)
      open--
      res.writeHead(200, { 'content-type': 'text/plain' })
      res.end(`ok ${arrival.url}`)
    })
  }
  // strict: llhttp as node:http runs it by default, insecureHTTPParser off
  const server = createServer({ insecureHTTPParser: false, keepAliveTimeout: 30_000 }, onRequest)
  // an Expect the front passed on is the request's, not the upstream's to refuse
  server.on('checkExpectation', onRequest)
  // an upgrade or a CONNECT a front passed on: recorded, and its connection closed
  const tunnel = (req: IncomingMessage, socket: Socket) => {
    arrivals.push({
      conn: received.get(socket)?.conn ?? 0,
      method: req.method ?? '',
      url: req.url ?? '',
      headers: pairs(req.rawHeaders),
      body: '',
      trailers: [],
      complete: true,
    })
    socket.destroy()
  }
  server.on('upgrade', tunnel)
  server.on('connect', tunnel)
  server.on('connection', (socket: Socket) => {
    const record = { conn: ++connections.accepted, bytes: '' }
    received.set(socket, record)
    socket.on('data', (c: Buffer) => {
      // for the report of what could not be parsed: the first bytes are enough
      if (record.bytes.length < 4096) record.bytes += c.toString('latin1')
    })
    socket.on('close', () => {
      connections.closed++
    })
  })
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
    // a front that closes its pooled connection: not a parse failure
    if (err.code !== 'ECONNRESET' && err.code !== 'HPE_INVALID_EOF_STATE') {
      const record = received.get(socket)
      unparsed.push({ conn: record?.conn ?? 0, code: err.code ?? String(err), bytes: record?.bytes ?? '' })
    }
    socket.destroy()
  })
  const port = await listenUntilTeardown(t, server)
  return {
    port,
    arrivals,
    unparsed,
    open: () => open,
    connections: () => ({ ...connections }),
  }
}
