// Short JSON answers the proxy gives on its own behalf: never a stack trace, never client input echoed.
import { type ServerResponse, STATUS_CODES } from 'node:http'
import type { Duplex } from 'node:stream'
import type { UpstreamErrorReason } from '../types.ts'
import type { CorsMemory } from './cors.ts'

interface Canned {
  status: number
  body: string
}

function canned(status: number, error: string, message: string): Canned {
  return { status, body: JSON.stringify({ error, message }) }
}

export const UPSTREAM_ERRORS: Record<UpstreamErrorReason, Canned> = {
  connect: canned(502, 'bad_gateway', 'upstream unreachable'),
  reset: canned(502, 'bad_gateway', 'upstream closed the connection'),
  timeout: canned(504, 'gateway_timeout', 'upstream did not answer in time'),
}
/** a gRPC call whose own deadline passed before it could be forwarded (only ever sent as a gRPC status) */
export const DEADLINE_PASSED = canned(504, 'deadline_exceeded', 'deadline exceeded')
export const BAD_REQUEST = canned(400, 'bad_request', 'request target must be origin-form or absolute-form')
export const BAD_METHOD = canned(400, 'bad_request', 'request method must be upper-case')
export const BAD_HOST = canned(400, 'bad_request', 'request must carry exactly one Host header')
export const BAD_AUTHORITY = canned(400, 'bad_request', 'Host must name the same authority as :authority')
export const BAD_TARGET_AUTHORITY = canned(
  400,
  'bad_request',
  'Host must name the same authority as the request target',
)
export const BAD_HOST_SYNTAX = canned(400, 'bad_request', 'Host is not a valid host[:port]')
export const BAD_AUTHORITY_SYNTAX = canned(400, 'bad_request', ':authority is not a valid host[:port]')
export const NOT_IMPLEMENTED = canned(501, 'not_implemented', 'transfer coding not supported')
export const EXPECTATION_FAILED = canned(417, 'expectation_failed', 'only Expect: 100-continue is supported')
export const CONNECT_NOT_SUPPORTED = canned(
  501,
  'not_implemented',
  'CONNECT is not supported: this is a reverse proxy, not a tunnel',
)
export const INTERNAL_ERROR = canned(500, 'internal_error', 'the proxy failed to handle the request')

/**
 * Writes a complete JSON response unless the response already started or the client is gone; with `cors`, the
 * CORS fields the upstream answers the request's Origin with (cors.ts).
 */
export function sendJson(
  res: ServerResponse,
  status: number,
  body: string,
  extraHeaders?: Record<string, string>,
  cors?: CorsMemory,
): boolean {
  if (res.headersSent || res.destroyed) return false
  try {
    const headers: Record<string, string | number> = {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(body),
      'cache-control': 'no-store',
    }
    if (extraHeaders) {
      for (const name in extraHeaders) {
        const lower = name.toLowerCase()
        if (lower !== 'content-length' && lower !== 'transfer-encoding') headers[lower] = extraHeaders[name]!
      }
    }
    const corsFields = cors?.answerFields(res.req?.headers.origin)
    if (corsFields !== undefined) Object.assign(headers, corsFields)
    res.writeHead(status, headers)
    res.end(body)
    return true
  } catch {
    // an invalid header from a rejecting stage must not take the request down with it
    if (!res.headersSent) {
      res.writeHead(500, { 'content-type': 'application/json' })
      res.end(INTERNAL_ERROR.body)
    } else res.destroy()
    return false
  }
}

/**
 * The same on a raw socket (upgrade requests), closing the connection afterwards (endAnswered, `lingerMs`).
 */
export function sendJsonRaw(
  socket: Duplex,
  status: number,
  body: string,
  extraHeaders?: Record<string, string>,
  lingerMs = 0,
): void {
  if (socket.destroyed) return
  let head = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\ncache-control: no-store\r\nconnection: close\r\n`
  if (extraHeaders) {
    for (const name in extraHeaders) {
      const value = extraHeaders[name]!
      // refuse anything that could split the response
      if (/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name) && !/[\r\n]/.test(value)) head += `${name}: ${value}\r\n`
    }
  }
  endAnswered(socket, lingerMs, `${head}\r\n${body}`)
}

/**
 * Ends a raw socket whose answer is written (an upgrade answered without a tunnel, `last` its final bytes):
 * what the client still sends is read and dropped, never parsed, and the connection is closed once the client
 * closes its side, or `lingerMs` after this (timeouts.idle; 0: no limit). The proxy's sockets are half-open
 * (node:http's allowHalfOpen): its FIN alone leaves the connection to a client that never answers it.
 */
export function endAnswered(socket: Duplex, lingerMs: number, last?: string): void {
  socket.resume()
  if (lingerMs > 0 && !socket.destroyed) {
    const timer = setTimeout(() => socket.destroy(), lingerMs)
    timer.unref()
    socket.once('close', () => clearTimeout(timer))
  }
  if (last === undefined) socket.end()
  else socket.end(last)
}

/**
 * What a writeHead that threw left on a response (it sets the headers before it checks the status): cleared, so
 * the proxy's own answer to the client does not go out with the upstream's headers.
 */
export function clearHeaders(res: Pick<ServerResponse, 'getHeaderNames' | 'removeHeader'>): void {
  for (const name of res.getHeaderNames()) res.removeHeader(name)
}
