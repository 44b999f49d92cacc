// The header-spelling tests' upstreams and clients: an HTTP/1.1 and an h2c upstream that record every request's
// header and trailer names as they arrived, and one request at a time written as raw HTTP/1.1 bytes or
// hand-encoded h2c frames, so the exact spellings (`X_Tenant`, `USER_AGENT`) go on the wire as a client
// library would not send them.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import {
  createServer as createH2cServer,
  type Http2ServerRequest,
  type Http2ServerResponse,
} from 'node:http2'
import type { Test } from 'tap'
import { eventually } from './eventually.ts'
import { FLAG, FRAME, frame, headerBlock, hpackString, PREFACE, stream1Answer } from './h2-frames.ts'
import { metricValue, scrape } from './metrics.ts'
import { rawExchange } from './net.ts'
import { startTestSidecar, type TestSidecar } from './sidecar.ts'
import { listenTcp } from './trailers.ts'

/** [name, value] pairs as they arrived, names in the case they were sent */
export type Pairs = [string, string][]

export interface Received {
  headers: Pairs
  trailers: Pairs
}

export interface RecordingUpstream {
  /** what a sidecar config's `upstream` names it by */
  url: string
  /** each completed request, by its `x-case` header */
  seen: Map<string, Received>
}

/** an upstream handler that keeps each completed request's raw header and trailer pairs, by its x-case */
function recorder() {
  const seen = new Map<string, Received>()
  const handler = (req: IncomingMessage | Http2ServerRequest, res: ServerResponse | Http2ServerResponse) => {
    req.resume()
    req.on('end', () => {
      const pairs = (raw: string[]) => raw.flatMap((v, i, a): Pairs => (i % 2 ? [] : [[v, a[i + 1]!]]))
      const headers = pairs(req.rawHeaders)
      const label = headers.find(([n]) => n.toLowerCase() === 'x-case')?.[1]
      if (label !== undefined) seen.set(label, { headers, trailers: pairs(req.rawTrailers) })
      res.end('ok')
    })
  }
  return { handler, seen }
}

/** an HTTP/1.1 and an h2c recording upstream on loopback, closed at the end of `t` */
export async function recordingUpstreams(
  t: Test,
): Promise<{ h1: RecordingUpstream; h2c: RecordingUpstream }> {
  const h1 = recorder()
  const h1Server = createServer(h1.handler)
  const h2 = recorder()
  const h2Server = createH2cServer(h2.handler)
  t.teardown(() => {
    h1Server.closeAllConnections()
    h1Server.close()
    h2Server.close()
  })
  return {
    h1: { url: `http://127.0.0.1:${await listenTcp(h1Server)}`, seen: h1.seen },
    h2c: { url: `h2c://127.0.0.1:${await listenTcp(h2Server)}`, seen: h2.seen },
  }
}

/** a sidecar (the built bundle) in front of one recording upstream */
export interface Side {
  name: string
  upstream: RecordingUpstream
  sidecar: TestSidecar
  /** the sidecar's plain listener */
  port: number
}

/** a sidecar running `config` with `upstream` as its upstream, stopped at the end of `t` */
export async function sideFor(
  t: Test,
  name: string,
  upstream: RecordingUpstream,
  config: Record<string, unknown>,
): Promise<Side> {
  const sidecar = await startTestSidecar(t, { ...config, upstream: upstream.url })
  return { name, upstream, sidecar, port: sidecar.proxyAddress.port }
}

/** the request the side's upstream completed with `x-case: label`, once it has */
export const completed = (s: Side, label: string) =>
  eventually(() => s.upstream.seen.get(label), { what: `${s.name}: the upstream to complete ${label}` })

/** what a CGI gateway makes of a header name */
export const cgi = (name: string) => `HTTP_${name.toUpperCase().replace(/-/g, '_')}`

/** what the upstream received under any name a CGI app reads as `header` */
export const merged = (pairs: Pairs, header: string) => pairs.filter(([n]) => cgi(n) === cgi(header))

/** the value of the first field named `name` (lower-case), in any case */
export const field = (pairs: Pairs, name: string) => pairs.find(([n]) => n.toLowerCase() === name)?.[1]

/** the side's count of requests with the spoofed_header anomaly */
export const spoofed = async (s: Side) =>
  metricValue(await scrape(s.sidecar.adminUrl), 'nhi_credential_anomalies_total', { type: 'spoofed_header' })

/**
 * Whether the spoofed_header count comes to `n` (false when the wait runs out, so the test goes on).
 * Requests are recorded as their responses end: once a later request's count shows, an earlier one's would.
 */
export const spoofedComesTo = (s: Side, n: number) =>
  eventually(async () => (await spoofed(s)) === n, {
    what: `spoofed_header ${n}`,
    timeoutMs: 5_000,
  }).then(
    () => true,
    () => false,
  )

/**
 * One HTTP/1.1 request to app.example written as raw bytes, `x-case: label` first: `fields` in the header
 * section, and `trailers` after a chunked body (a POST /t) when given, else a GET /h. Resolves with the
 * answer's status line.
 */
export async function h1Raw(port: number, label: string, fields: Pairs, trailers?: Pairs): Promise<string> {
  const lines = fields.map(([n, v]) => `${n}: ${v}\r\n`).join('')
  const text = trailers
    ? `POST /t HTTP/1.1\r\nHost: app.example\r\nx-case: ${label}\r\n${lines}Transfer-Encoding: chunked\r\n` +
      `Trailer: ${trailers.map(([n]) => n).join(', ')}\r\nConnection: close\r\n\r\n` +
      `5\r\nhello\r\n0\r\n${trailers.map(([n, v]) => `${n}: ${v}\r\n`).join('')}\r\n`
    : `GET /h HTTP/1.1\r\nHost: app.example\r\nx-case: ${label}\r\n${lines}Connection: close\r\n\r\n`
  return (await rawExchange(port, text)).split('\r\n')[0]!
}

/**
 * The same on stream 1 of a prior-knowledge h2c connection, resolving with the answer's `status N`. HTTP/2
 * field names are lower-case on the wire (RFC 9113 §8.2.1): `User-Agent` is sent as user-agent.
 */
export async function h2cRaw(port: number, label: string, fields: Pairs, trailers?: Pairs): Promise<string> {
  const lower = (pairs: Pairs) => pairs.map(([n, v]): [string, string] => [n.toLowerCase(), v])
  // :method POST or GET, :scheme http (HPACK static 3 or 2, and 6), then :path and the literal fields
  const head = Buffer.concat([
    Buffer.from([trailers ? 0x83 : 0x82, 0x86, 0x04]),
    hpackString(trailers ? '/t' : '/h'),
    headerBlock([[':authority', 'app.example'], ['x-case', label], ...lower(fields)]),
  ])
  const frames = [PREFACE, frame(FRAME.SETTINGS, 0, 0, Buffer.alloc(0))]
  if (trailers) {
    frames.push(
      frame(FRAME.HEADERS, FLAG.END_HEADERS, 1, head),
      frame(FRAME.DATA, 0, 1, Buffer.from('hello')),
      frame(FRAME.HEADERS, FLAG.END_HEADERS | FLAG.END_STREAM, 1, headerBlock(lower(trailers))),
    )
  } else frames.push(frame(FRAME.HEADERS, FLAG.END_HEADERS | FLAG.END_STREAM, 1, head))
  return stream1Answer(port, frames, { what: `the answer to ${label}` })
}

/** the two ways a client's spellings reach the proxy, and the status each reports for a 200 */
export const RAW_CLIENTS = [
  { name: 'HTTP/1.1', send: h1Raw, ok: 'HTTP/1.1 200 OK' },
  // HTTP/2 field names are lower-case on the wire: only "_" spellings exist there
  { name: 'h2c', send: h2cRaw, ok: 'status 200' },
] as const
