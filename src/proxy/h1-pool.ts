// The HTTP/1.1 engine for http:, https: and unix: upstreams: keep-alive connections of our own, each
// carrying one request at a time, the request head written in one piece and the response parsed strictly.
//
// Why not undici here: on the bench (bench/README.md, "A forwarding engine of our own"), a bare proxy on undici's
// Pool served about half the requests of the same node:http server writing to pooled sockets itself; undici's
// generic request object, header validation and wasm parser round trips cost more than the rest of a proxied
// request. undici still carries websocket upgrades (forwarder.ts).
//
// The response parser is strict on purpose: a response whose framing is ambiguous (Content-Length and
// Transfer-Encoding together, differing lengths, obs-fold, a malformed line, a head over 16 KiB) fails the
// request with a 502 and its connection is closed, never reused. A connection is only reused after a
// response whose end was known from its framing, with nothing after it, and a request sent in full; anything
// an idle connection receives closes it (both counted as the upstream's error, the response standing). That is
// what keeps one response from ever reaching another request. What an upstream writes once the connection
// carries the next request is that request's answer to the engine, as to any HTTP/1.1 client: it is taken
// only as a valid response head, and a 204 or 304 whose head announces content it must not have ends its
// connection, so that content cannot come then.
import { connect, type Socket } from 'node:net'
import type { Readable } from 'node:stream'
import { type ConnectionOptions, connect as connectTls, createSecureContext, type TLSSocket } from 'node:tls'
import type { UpstreamHeaders } from './headers.ts'
import { endedWithoutCloseNotify, TLS_CUT_CODE, TLS_CUT_MESSAGE, watchTlsEnd } from './tls-end.ts'
import { upstreamTlsFor } from './upstream-url.ts'

/** What the engine tells about one request (the subset of undici's legacy handler the forwarders use). */
export interface UpstreamHandler {
  /** the request is about to be written on a connected socket; `abort` fails it (onError with that error) */
  onConnect(abort: (err?: Error) => void): void
  /**
   * the response head (1xx interim responses are skipped); `raw` is [name, value, …] as sent (latin1).
   * false: pause reading until `resume`
   */
  onHeaders(status: number, raw: readonly (Buffer | string)[], resume: () => void): boolean
  /** a piece of the response body, decoded from chunked; false: pause reading until `resume` */
  onData(chunk: Buffer): boolean
  /** the response ended; `trailers` as [name, value, …] (chunked responses only) */
  onComplete(trailers: string[] | null): void
  /** the request failed; never after onComplete, at most once */
  onError(err: Error): void
}

export interface H1Request {
  method: string
  path: string
  headers: UpstreamHeaders
  /** the request body to stream, or null */
  body: Readable | null
}

export interface H1PoolOptions {
  /** host:port of a TCP upstream (ignored with socketPath) */
  host: string
  port: number
  socketPath?: string | undefined
  /** the Host header when the request carries none */
  hostHeader: string
  /** connect deadline, ms (→ UND_ERR_CONNECT_TIMEOUT) */
  connectTimeout: number
  /** from the request written to the response head, ms (→ UND_ERR_HEADERS_TIMEOUT) */
  headersTimeout: number
  /** longest pause between body bytes while not paused for the client, ms (→ UND_ERR_BODY_TIMEOUT) */
  bodyTimeout: number
  /** an idle connection is closed after this, ms (shortened by the upstream's Keep-Alive: timeout) */
  keepAliveTimeout: number
  /**
   * TLS (https: upstreams): CA bundle, client certificate, servername… The server name is `host` unless
   * these name one or `host` is an IP address (RFC 6066 §3: SNI carries no IP literal; the certificate is
   * then checked against the address)
   */
  tls?: ConnectionOptions | undefined
  /**
   * the upstream sent bytes no response framed: after a complete response (in the read that ended it), or on an
   * idle connection. That connection is closed; the response already complete stands. For counting and
   * logging the upstream's protocol error, which no request's failure reports
   */
  unframedBytes?: ((err: UpstreamError) => void) | undefined
}

/** the error codes the forwarders classify, the same as undici's so that one classification serves both */
export class UpstreamError extends Error {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message)
  }
}

const MAX_HEAD = 16 * 1024
const MAX_CHUNK_LINE = 4 * 1024
const CRLFCRLF = Buffer.from('\r\n\r\n')
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/
/** what undici accepts in a request header value, and what a response's may hold */
const BAD_VALUE = /[^\t\x20-\x7e\x80-\xff]/
/** what undici accepts in a request target */
const BAD_PATH = /[^\x21-\xff]/
const STATUS_LINE = /^HTTP\/1\.([01]) ([0-9]{3})(?:[ \t]|$)/
const DIGITS = /^[0-9]{1,15}$/
/**
 * one member of a Content-Length list, and a chunk size before its extension: with SP and HTAB around it only
 * (String.prototype.trim would also take a VT, a CR or latin1 0xA0 for whitespace)
 */
const LIST_DIGITS = /^[ \t]*([0-9]{1,15})[ \t]*$/
const CHUNK_SIZE = /^([0-9a-fA-F]{1,12})[ \t]*$/
/** a Transfer-Encoding value whose last coding is chunked, nothing after it (`chunked`, `gzip, chunked`) */
const CHUNKED_LAST = /(?:^|,)[ \t]*chunked$/i
/** chunked as the last coding with something after it: a parameter, empty list elements */
const CHUNKED_LAST_ANYHOW = /(?:^|,)[ \t]*chunked[ \t]*(?:;[^,]*)?[ \t,]*$/i
const TRAILING_HTAB = /\t[ \t]*$/
/**
 * The Connection line: `close` for a HEAD (as undici asks), and with the `te` option when the request carries
 * TE (RFC 9110 §10.1.4: a sender of TE names it in Connection, so that no intermediary passes it on).
 */
const CONNECTION_LINES = [
  'connection: keep-alive\r\n',
  'connection: close\r\n',
  'connection: keep-alive, te\r\n',
  'connection: close, te\r\n',
]
/** methods that define a meaning for content: sent with `content-length: 0` when they carry none (as undici does) */
const PAYLOAD_METHODS = new Set(['POST', 'PUT', 'PATCH', 'QUERY', 'PROPFIND', 'PROPPATCH'])
/** methods a connection that closed before any byte of the answer can be retried with (RFC 9110 §9.2.2) */
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE'])

/**
 * The value of a field line (a header or a trailer) whose colon is at `colon`: without the optional
 * whitespace around it, SP and HTAB only (RFC 9110 §5.5). Any other byte stays for BAD_VALUE to judge: a
 * VT or CR is refused, a 0xA0 is part of the value.
 */
function fieldValue(line: string, colon: number): string {
  let a = colon + 1
  let b = line.length
  while (a < b && (line.charCodeAt(a) === 32 || line.charCodeAt(a) === 9)) a++
  while (b > a && (line.charCodeAt(b - 1) === 32 || line.charCodeAt(b - 1) === 9)) b--
  return line.slice(a, b)
}

/** an LF from `from` on that no CR precedes */
function hasBareLf(buf: Buffer, from: number): boolean {
  for (let i = buf.indexOf(10, from); i !== -1; i = buf.indexOf(10, i + 1)) {
    if (i === from || buf[i - 1] !== 13) return true
  }
  return false
}

/** the code of `unframedBytes` errors (its own: the operator's log tells it apart from a 502's parser error) */
const EXTRA_BYTES_CODE = 'ERR_UPSTREAM_EXTRA_BYTES'

/** an answer without content whatever its head says: to a HEAD, a 204 or a 304 (RFC 9112 §6.3) */
export function answersWithoutContent(status: number, toHead: boolean): boolean {
  return toHead || status === 204 || status === 304
}

// the response part being read (plain numbers: the sources also run under type stripping, which has no enums)
const Phase = { Head: 0, Length: 1, Chunked: 2, UntilClose: 3 } as const
type Phase = (typeof Phase)[keyof typeof Phase]
const ChunkState = { Size: 0, Data: 1, DataEnd: 2, Trailers: 3 } as const
type ChunkState = (typeof ChunkState)[keyof typeof ChunkState]

/** one in-flight request on a connection */
class Exchange {
  phase: Phase = Phase.Head
  /** bytes of a head not yet complete (a head split across reads) */
  partial: Buffer | undefined
  remaining = 0
  chunk: ChunkState = ChunkState.Size
  /** a chunk-size or trailer line not yet complete */
  line = ''
  trailers: string[] | null = null
  status = 0
  keepAlive = true
  bodySent: boolean
  /** any byte of the response arrived: from then on the request cannot be retried */
  answered = false
  paused = false
  settled = false
  readonly isHead: boolean

  constructor(
    readonly request: H1Request,
    readonly handler: UpstreamHandler,
    /** a retry on a new connection is allowed when a reused one closes before answering */
    readonly retryable: boolean,
  ) {
    this.bodySent = request.body === null
    this.isHead = request.method === 'HEAD'
  }
}

class Connection {
  readonly socket: Socket
  exchange: Exchange | undefined
  /** the pool's tick at the last byte moved or state change */
  activeAt: number
  connected = false
  /** carried a response already: an early close on it may be the keep-alive race */
  reused = false
  /** the upstream's own idle timeout (Keep-Alive: timeout=N), ms, or 0 */
  upstreamIdleMs = 0
  private readonly onBodyData = (chunk: Buffer) => this.writeBody(chunk)
  private readonly onBodyEnd = () => this.endBody()
  private readonly onBodyError = (err: Error) => this.bodyFailed(err)
  private readonly onBodyClose = () => {
    const body = this.exchange?.request.body
    if (body && !body.readableEnded)
      this.bodyFailed(new UpstreamError('request body aborted', 'UND_ERR_ABORTED'))
  }
  private readonly onDrain = () => this.exchange?.request.body?.resume()
  readonly resume = () => {
    const ex = this.exchange
    if (ex?.paused) {
      ex.paused = false
      this.activeAt = this.pool.tick
      this.socket.resume()
    }
  }
  readonly abort = (err?: Error) => this.fail(err ?? new UpstreamError('request aborted', 'UND_ERR_ABORTED'))

  constructor(
    private readonly pool: H1Pool,
    options: H1PoolOptions,
  ) {
    const tls = pool.tls
    if (options.socketPath) this.socket = connect({ path: options.socketPath })
    else if (tls !== undefined) {
      const socket = connectTls(pool.session === undefined ? tls : { ...tls, session: pool.session })
      socket.setNoDelay(true)
      socket.setKeepAlive(true, 60_000)
      socket.on('session', pool.keepSession)
      watchTlsEnd(socket)
      this.socket = socket
    } else
      this.socket = connect({
        host: options.host,
        port: options.port,
        noDelay: true,
        keepAlive: true,
        keepAliveInitialDelay: 60_000,
      })
    this.activeAt = pool.tick
    // over TLS a request is written once the handshake is done: the connect deadline covers it
    this.socket.on(tls === undefined ? 'connect' : 'secureConnect', () => {
      this.connected = true
      this.activeAt = this.pool.tick
      const ex = this.exchange
      if (ex !== undefined) this.write(ex)
    })
    this.socket.on('data', (buf: Buffer) => this.read(buf))
    this.socket.on('end', () => this.ended())
    this.socket.on('error', (err) => this.closeEarly(err))
    this.socket.on('close', () => this.gone())
    this.socket.on('drain', this.onDrain)
  }

  start(ex: Exchange): void {
    this.exchange = ex
    this.activeAt = this.pool.tick
    if (this.connected) this.write(ex)
  }

  private write(ex: Exchange): void {
    ex.handler.onConnect(this.abort)
    if (this.exchange !== ex || ex.settled) return
    const req = ex.request
    const headers = req.headers
    // the order undici writes (request line, host, connection, the rest, framing last), so that an upstream
    // sees the same head whichever engine carried the request
    const host = headers.host
    if (host !== undefined && (typeof host !== 'string' || BAD_VALUE.test(host))) {
      this.invalid('host header')
      return
    }
    let head = `${req.method} ${req.path} HTTP/1.1\r\nhost: ${host ?? this.pool.options.hostHeader}\r\n${
      CONNECTION_LINES[(ex.isHead ? 1 : 0) + (headers.te === undefined ? 0 : 2)]
    }`
    let length: string | undefined
    for (const name in headers) {
      const value = headers[name]
      if (value === undefined) continue
      // prepared blocks (headers.ts HeaderBlocks) hold several lines in their name, checked when made
      if (name.indexOf('\r') === -1 && !TOKEN.test(name)) {
        this.invalid('header name')
        return
      }
      if (name.length === 4 && name === 'host') continue
      if (name.length === 14 && name === 'content-length') {
        if (typeof value !== 'string' || !DIGITS.test(value)) {
          this.invalid('content-length header')
          return
        }
        length = value
        continue
      }
      if (typeof value === 'string') {
        if (BAD_VALUE.test(value)) {
          this.invalid(`${name} header`)
          return
        }
        head += `${name}: ${value}\r\n`
      } else {
        for (const v of value) {
          if (BAD_VALUE.test(v)) {
            this.invalid(`${name} header`)
            return
          }
          head += `${name}: ${v}\r\n`
        }
      }
    }
    const body = req.body
    if (body === null) {
      if (length !== undefined && (length !== '0' || PAYLOAD_METHODS.has(req.method)))
        head += `content-length: ${length}\r\n`
      else if (length === undefined && PAYLOAD_METHODS.has(req.method)) head += 'content-length: 0\r\n'
      this.socket.write(`${head}\r\n`, 'latin1')
      return
    }
    this.bodyLeft = length === undefined ? -1 : Number(length)
    this.heldBack = undefined
    if (length === undefined) this.socket.write(`${head}transfer-encoding: chunked\r\n\r\n`, 'latin1')
    else {
      head += `content-length: ${length}\r\n\r\n`
      if (this.bodyLeft === 0) this.heldBack = head
      else this.socket.write(head, 'latin1')
    }
    body.on('data', this.onBodyData)
    body.on('end', this.onBodyEnd)
    body.on('error', this.onBodyError)
    body.on('close', this.onBodyClose)
    // the request path may have paused the body while it identified the caller
    if (body.readableEnded) this.endBody()
    else body.resume()
  }

  /**
   * bytes the announced Content-Length still expects (-1: chunked). A body that runs past it or ends short
   * fails the request and closes the connection: the upstream would otherwise read the next request on it
   * as this one's body, or this body's rest as the next request
   */
  private bodyLeft = -1
  /**
   * The bytes that complete a Content-Length body (the head itself, for a length of 0), written once the body
   * has ended: an HTTP/2 request ends with its stream, not with its length, and DATA past the length makes it
   * malformed (RFC 9113 §8.1.1, the stream reset). Written with the last byte, the upstream would already
   * have carried out a request its client never completed.
   */
  private heldBack: Buffer | string | undefined

  private writeBody(chunk: Buffer): void {
    if (chunk.length === 0) return
    if (this.bodyLeft !== -1) {
      if (chunk.length > this.bodyLeft) {
        this.bodyMismatch()
        return
      }
      this.bodyLeft -= chunk.length
      if (this.bodyLeft === 0) {
        this.heldBack = chunk
        return
      }
    }
    this.activeAt = this.pool.tick
    let flowing: boolean
    if (this.bodyLeft === -1) {
      this.socket.cork()
      this.socket.write(`${chunk.length.toString(16)}\r\n`, 'latin1')
      this.socket.write(chunk)
      flowing = this.socket.write('\r\n', 'latin1')
      this.socket.uncork()
    } else flowing = this.socket.write(chunk)
    if (!flowing) this.exchange?.request.body?.pause()
  }

  private endBody(): void {
    const ex = this.exchange
    if (ex === undefined || ex.bodySent) return
    if (this.bodyLeft > 0) {
      this.bodyMismatch()
      return
    }
    ex.bodySent = true
    this.activeAt = this.pool.tick
    this.detachBody(ex)
    if (this.bodyLeft === -1) this.socket.write('0\r\n\r\n', 'latin1')
    else if (this.heldBack !== undefined) {
      this.socket.write(this.heldBack, 'latin1')
      this.heldBack = undefined
    }
  }

  private bodyMismatch(): void {
    this.bodyFailed(
      new UpstreamError('request body and its Content-Length differ', 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH'),
    )
  }

  private bodyFailed(err: Error): void {
    const ex = this.exchange
    if (ex === undefined || ex.bodySent) return
    this.fail(err)
  }

  private detachBody(ex: Exchange): void {
    const body = ex.request.body
    if (body === null) return
    body.off('data', this.onBodyData)
    body.off('end', this.onBodyEnd)
    body.off('error', this.onBodyError)
    body.off('close', this.onBodyClose)
  }

  private invalid(what: string): void {
    this.fail(new UpstreamError(`invalid ${what}`, 'UND_ERR_INVALID_ARG'))
  }

  private read(buf: Buffer): void {
    const ex = this.exchange
    if (ex === undefined) {
      // bytes no request asked for: the connection's framing can no longer be trusted
      if (!this.socket.destroyed) {
        this.socket.destroy()
        this.pool.unframed('bytes on an idle connection; it was closed')
      }
      return
    }
    // a head's bytes do not move its deadline: an upstream dribbling one, or sending 1xx after 1xx, would
    // otherwise hold the request past timeouts.upstream for as long as it likes
    if (ex.phase !== Phase.Head) this.activeAt = this.pool.tick
    ex.answered = true
    let off = 0
    while (off < buf.length && this.exchange === ex && !ex.settled) {
      switch (ex.phase) {
        case Phase.Head:
          off = this.readHead(ex, buf, off)
          // a response without content (HEAD, 204, 304, Content-Length: 0) ends with its head
          if ((ex.phase as Phase) === Phase.Length && ex.remaining === 0 && !ex.settled)
            this.complete(ex, off < buf.length)
          break
        case Phase.Length: {
          const n = Math.min(ex.remaining, buf.length - off)
          ex.remaining -= n
          const piece = off === 0 && n === buf.length ? buf : buf.subarray(off, off + n)
          off += n
          this.deliver(ex, piece)
          if (ex.remaining === 0 && !ex.settled) this.complete(ex, off < buf.length)
          break
        }
        case Phase.Chunked:
          off = this.readChunked(ex, buf, off)
          break
        case Phase.UntilClose: {
          const piece = off === 0 ? buf : buf.subarray(off)
          off = buf.length
          this.deliver(ex, piece)
          break
        }
      }
    }
  }

  private deliver(ex: Exchange, piece: Buffer): void {
    if (piece.length === 0) return
    if (!ex.handler.onData(piece) && !ex.settled && !ex.paused) {
      ex.paused = true
      this.socket.pause()
    }
  }

  /** returns the offset after the head, or buf.length when more bytes are needed */
  private readHead(ex: Exchange, input: Buffer, from: number): number {
    let buf = input
    let off = from
    if (ex.partial !== undefined) {
      buf = Buffer.concat([ex.partial, input.subarray(from)])
      off = 0
      ex.partial = undefined
    }
    const end = buf.indexOf(CRLFCRLF, off)
    if (end === -1) {
      // a head with a line ending in a bare LF (all of them, or one before the blank line) would otherwise wait
      // for its end until the headers deadline: whatever comes next, it is malformed
      if (hasBareLf(buf, off)) return this.malformedAt('line ending', input.length)
      if (buf.length - off > MAX_HEAD) return this.malformedAt('response head over 16 KiB', input.length)
      ex.partial = Buffer.from(buf.subarray(off))
      return input.length
    }
    if (end - off > MAX_HEAD) return this.malformedAt('response head over 16 KiB', input.length)
    const consumedOfInput = input.length - (buf.length - (end + 4))
    const text = buf.toString('latin1', off, end)
    if (!this.parseHead(ex, text)) return input.length
    return consumedOfInput
  }

  /** false when the head failed the request (or was an interim response whose successor is awaited) */
  private parseHead(ex: Exchange, text: string): boolean {
    const lineEnd = text.indexOf('\r\n')
    const statusLine = lineEnd === -1 ? text : text.slice(0, lineEnd)
    const m = STATUS_LINE.exec(statusLine)
    if (m === null || BAD_VALUE.test(statusLine)) return this.malformed('status line')
    const status = Number(m[2])
    if (status < 100) return this.malformed('status below 100')
    const raw: string[] = []
    let length = -1
    let chunked = false
    let codings = 0
    let closeAsked = false
    let keepAliveAsked = false
    /** Keep-Alive: timeout=N, ms (-1: none given) */
    let idleHintMs = -1
    let pos = lineEnd === -1 ? text.length : lineEnd + 2
    while (pos < text.length) {
      let next = text.indexOf('\r\n', pos)
      if (next === -1) next = text.length
      const line = text.slice(pos, next)
      pos = next + 2
      const colon = line.indexOf(':')
      // a line without a name, a name with whitespace before the colon, or obs-fold: refused (RFC 9112 §5)
      if (colon <= 0) return this.malformed('header line')
      const name = line.slice(0, colon)
      if (!TOKEN.test(name)) return this.malformed('header name')
      const value = fieldValue(line, colon)
      if (BAD_VALUE.test(value)) return this.malformed('header value')
      const n = name.length
      if (n === 14 && name.toLowerCase() === 'content-length') {
        const first = length === -1
        for (const part of value.split(',')) {
          const v = LIST_DIGITS.exec(part)
          if (v === null) return this.malformed('content-length')
          const len = Number(v[1])
          if (length !== -1 && length !== len) return this.malformed('differing content-length')
          length = len
        }
        // repeats of the same length are one field for the client (RFC 9110 §8.6), which would refuse two
        if (first) raw.push(name, `${length}`)
        continue
      }
      raw.push(name, value)
      if (n === 17 && name.toLowerCase() === 'transfer-encoding') {
        codings++
        // the body is chunked when chunked is the last coding (RFC 9112 §6.3): `gzip, chunked` too, whose body
        // read to the close would hand on the chunked framing as content. Followed by anything (`chunked,`,
        // `chunked;q=1`, an HTAB), chunked is still the last coding by the list rules of RFC 9110, while
        // llhttp (node:http, undici) reads such a body to the close: a framing parsers disagree on is refused
        chunked = CHUNKED_LAST.test(value) && !TRAILING_HTAB.test(line)
        if (!chunked && CHUNKED_LAST_ANYHOW.test(value)) return this.malformed('ambiguous transfer-encoding')
      } else if (n === 10) {
        const lower = name.toLowerCase()
        if (lower === 'connection') {
          // a close anywhere in the field wins, whatever another line says
          for (const token of value.toLowerCase().split(',')) {
            const option = token.trim()
            if (option === 'close') closeAsked = true
            else if (option === 'keep-alive') keepAliveAsked = true
          }
        } else if (lower === 'keep-alive') {
          const t = /(?:^|[,;\s])timeout\s*=\s*"?([0-9]+)/i.exec(value)
          if (t !== null) idleHintMs = Number(t[1]) * 1000
        }
      }
    }
    // HTTP/1.0 closes unless it asks to keep the connection; HTTP/1.1 keeps it unless it asks to close
    const closing = closeAsked || (m[1] === '0' && !keepAliveAsked)
    // judged on an interim head as well: llhttp (node:http, undici) refuses the whole response over one
    if (codings > 0 && length !== -1) return this.malformed('content-length with transfer-encoding')
    if (status < 200) {
      // 100, 103 and other interim answers: the real one follows on the same connection; a 101 to a request
      // that asked for no upgrade is a protocol error
      if (status === 101) return this.malformed('101 without an upgrade')
      // unless the interim answer closes its connection: it is the last message on it, and what comes after
      // is no answer (llhttp refuses it as data after the close)
      if (closing) return this.malformed('interim response closing the connection')
      ex.answered = true
      return true
    }
    if (codings > 1) return this.malformed('transfer-encoding repeated')
    // an HTTP/1.0 message with Transfer-Encoding may have crossed a hop that did not decode it: its framing is in
    // doubt, so its connection is not reused (RFC 9112 §6.1)
    const close = closing || (m[1] === '0' && codings > 0)
    ex.status = status
    // the upstream's idle timeout as its latest answer gave it
    this.upstreamIdleMs = Math.max(idleHintMs, 0)
    // the body's deadline counts from here
    this.activeAt = this.pool.tick
    // an upstream that keeps an idle connection a second or less would close it under the next request (the
    // idle deadline leaves that second as margin, and its sweep may come later still)
    ex.keepAlive = !close && !ex.isHead && (idleHintMs === -1 || idleHintMs > 1000)
    const bodiless = answersWithoutContent(status, ex.isHead)
    // a 204 or 304 whose head announces content (a length, a coding) comes from an upstream that may well send
    // that content, in a write of its own: once the connection carries the next request, nothing tells those
    // bytes from its answer. The answer is passed on; its connection is not used again
    if (bodiless && (length > 0 || codings > 0)) ex.keepAlive = false
    if (bodiless) ex.phase = Phase.Length
    else if (chunked) ex.phase = Phase.Chunked
    else if (codings > 0 || length === -1) {
      // a body that ends with the connection (or in a coding the headers stage refuses)
      ex.phase = Phase.UntilClose
      ex.keepAlive = false
    } else {
      ex.phase = Phase.Length
      ex.remaining = length
    }
    if (bodiless) ex.remaining = 0
    let go: boolean
    try {
      go = ex.handler.onHeaders(status, raw, this.resume)
    } catch (err) {
      this.fail(err as Error)
      return false
    }
    if (ex.settled || this.exchange !== ex) return false
    if (!go && !ex.paused) {
      ex.paused = true
      this.socket.pause()
    }
    return true
  }

  /** returns the offset after what was consumed */
  private readChunked(ex: Exchange, buf: Buffer, from: number): number {
    let off = from
    while (off < buf.length && !ex.settled) {
      if (ex.chunk === ChunkState.Data) {
        const n = Math.min(ex.remaining, buf.length - off)
        ex.remaining -= n
        const piece = buf.subarray(off, off + n)
        off += n
        this.deliver(ex, piece)
        if (ex.remaining === 0) ex.chunk = ChunkState.DataEnd
        continue
      }
      // the other states read lines
      const nl = buf.indexOf(10, off)
      const stop = nl === -1 ? buf.length : nl + 1
      ex.line += buf.toString('latin1', off, stop)
      off = stop
      if (ex.line.length > MAX_CHUNK_LINE) return this.malformedAt('chunk line too long', buf.length)
      if (nl === -1) break
      const line = ex.line
      ex.line = ''
      if (!line.endsWith('\r\n')) return this.malformedAt('chunk line ending', buf.length)
      const content = line.slice(0, -2)
      if (ex.chunk === ChunkState.DataEnd) {
        if (content !== '') return this.malformedAt('chunk data ending', buf.length)
        ex.chunk = ChunkState.Size
      } else if (ex.chunk === ChunkState.Size) {
        const semi = content.indexOf(';')
        const hex = CHUNK_SIZE.exec(semi === -1 ? content : content.slice(0, semi))
        // the extension is skipped, but a control character in it (a NUL, a bare CR) is refused as in a value
        if (hex === null || BAD_VALUE.test(content)) return this.malformedAt('chunk size', buf.length)
        const size = Number.parseInt(hex[1]!, 16)
        if (size === 0) ex.chunk = ChunkState.Trailers
        else {
          ex.remaining = size
          ex.chunk = ChunkState.Data
        }
      } else {
        // trailers, ended by an empty line
        if (content === '') {
          this.complete(ex, off < buf.length)
          return buf.length
        }
        const colon = content.indexOf(':')
        if (colon <= 0 || !TOKEN.test(content.slice(0, colon)))
          return this.malformedAt('trailer line', buf.length)
        const value = fieldValue(content, colon)
        if (BAD_VALUE.test(value)) return this.malformedAt('trailer value', buf.length)
        ex.trailers ??= []
        ex.trailers.push(content.slice(0, colon), value)
        if (ex.trailers.length > 200) return this.malformedAt('too many trailers', buf.length)
      }
    }
    return off
  }

  private malformed(what: string): false {
    this.fail(new UpstreamError(`malformed upstream response: ${what}`, 'UND_ERR_PARSER'))
    return false
  }

  /** malformed, for the readers that return how far they read: nothing more of this read is looked at */
  private malformedAt(what: string, end: number): number {
    this.malformed(what)
    return end
  }

  /** the response ended by its framing; `extra`: bytes followed it in the same read */
  private complete(ex: Exchange, extra: boolean): void {
    if (ex.settled) return
    ex.settled = true
    this.exchange = undefined
    const reusable = ex.keepAlive && ex.bodySent && !extra && !this.socket.destroyed
    if (!ex.bodySent) this.detachBody(ex)
    if (ex.paused) this.socket.resume()
    if (reusable) this.pool.release(this)
    else this.socket.destroy()
    ex.handler.onComplete(ex.trailers)
    if (extra) this.pool.unframed('bytes after a complete response; its connection was closed')
  }

  private fail(err: Error): void {
    const ex = this.exchange
    this.exchange = undefined
    this.socket.destroy()
    if (ex === undefined || ex.settled) return
    ex.settled = true
    this.detachBody(ex)
    ex.handler.onError(err)
  }

  private ended(): void {
    const ex = this.exchange
    if (ex !== undefined && ex.phase === Phase.UntilClose && ex.status !== 0) {
      // over TLS only the upstream's close_notify says such a body is whole: a bare FIN may be anyone's (an
      // on-path attacker's, a crash's), and the client would take the body it cut for the complete one
      if (this.pool.tls !== undefined && endedWithoutCloseNotify(this.socket as TLSSocket)) {
        this.fail(new UpstreamError(TLS_CUT_MESSAGE, TLS_CUT_CODE))
        return
      }
      this.complete(ex, false)
      return
    }
    this.closeEarly()
  }

  private gone(): void {
    this.pool.forget(this)
    this.closeEarly()
  }

  private closeEarly(err?: Error): void {
    const ex = this.exchange
    if (ex === undefined || ex.settled) {
      this.socket.destroy()
      return
    }
    // the keep-alive race: the upstream closed a connection it had kept idle just as this request was sent
    // on it. Nothing was answered and nothing of a body was taken, so it goes again on a new connection.
    if (this.reused && !ex.answered && ex.retryable) {
      this.exchange = undefined
      this.socket.destroy()
      this.pool.retry(ex)
      return
    }
    this.fail(err ?? new UpstreamError('upstream closed the connection', 'UND_ERR_SOCKET'))
  }

  /** the pool's sweep: the deadline of whatever this connection is waiting for */
  check(tick: number, tickMs: number): void {
    const o = this.pool.options
    const waited = (tick - this.activeAt - 1) * tickMs
    const ex = this.exchange
    if (ex === undefined) {
      const idleMs =
        this.upstreamIdleMs > 0
          ? Math.min(o.keepAliveTimeout, this.upstreamIdleMs - 1000)
          : o.keepAliveTimeout
      if (waited >= idleMs) this.socket.destroy()
      return
    }
    // a deadline of 0 is none (timeouts.upstream: 0, timeouts.idle: 0), as undici read it
    if (!this.connected) {
      if (o.connectTimeout > 0 && waited >= o.connectTimeout)
        this.fail(new UpstreamError('connect timeout', 'UND_ERR_CONNECT_TIMEOUT'))
    } else if (ex.phase === Phase.Head) {
      // while the request body is still coming and the upstream takes all that is written, the wait is the
      // client's, not the upstream's: timeouts.request bounds it (408), as it did on undici, whose headers
      // deadline does not fire then either. The deadline counts from the body's last byte or its end.
      if (!ex.bodySent && !this.socket.writableNeedDrain) return
      if (o.headersTimeout > 0 && waited >= o.headersTimeout)
        this.fail(new UpstreamError('headers timeout', 'UND_ERR_HEADERS_TIMEOUT'))
    } else if (!ex.paused && o.bodyTimeout > 0 && waited >= o.bodyTimeout) {
      this.fail(new UpstreamError('body timeout', 'UND_ERR_BODY_TIMEOUT'))
    }
  }
}

/** Keep-alive connections to one upstream, one request at a time each, as many as requests in flight. */
export class H1Pool {
  /** coarse clock of the deadlines: one sweep per tick instead of a timer per request */
  tick = 0
  private readonly idle: Connection[] = []
  private readonly all = new Set<Connection>()
  private sweeper: NodeJS.Timeout | undefined
  private readonly tickMs: number
  private closing = false
  /** destroyed: nothing it had is finished any more (closing: no new request, those it had are) */
  private destroyed = false
  /** what a TLS connection is opened with (undefined: plain TCP or a unix socket) */
  readonly tls: ConnectionOptions | undefined
  private readonly tlsError: Error | undefined
  /** the last TLS session the upstream gave: new connections resume it instead of a full handshake */
  session: Buffer | undefined
  readonly keepSession = (session: Buffer) => {
    this.session = session
  }

  constructor(readonly options: H1PoolOptions) {
    if (options.tls !== undefined && !options.socketPath) {
      this.tls = {
        ...upstreamTlsFor(options.host, options.tls),
        host: options.host,
        port: options.port,
        ALPNProtocols: ['http/1.1'],
      }
      // one secure context for all the pool's connections: the CA bundle and the client certificate are
      // parsed once, not at every handshake
      if (this.tls.secureContext === undefined) {
        try {
          this.tls.secureContext = createSecureContext(options.tls)
        } catch (err) {
          // material that does not load (checked when read, so not expected): requests fail as connects would
          this.tlsError = err as Error
        }
      }
    }
    const positive = [
      options.connectTimeout,
      options.headersTimeout,
      options.bodyTimeout,
      options.keepAliveTimeout,
    ].filter((ms) => ms > 0)
    const shortest = positive.length > 0 ? Math.min(...positive) : 1000
    this.tickMs = Math.max(10, Math.min(1000, Math.floor(shortest / 8)))
  }

  dispatch(request: H1Request, handler: UpstreamHandler): void {
    if (BAD_PATH.test(request.path) || request.path === '') {
      handler.onError(new UpstreamError('invalid request path', 'UND_ERR_INVALID_ARG'))
      return
    }
    if (this.closing) {
      handler.onError(new UpstreamError('engine closed', 'UND_ERR_DESTROYED'))
      return
    }
    if (this.tlsError !== undefined) {
      handler.onError(this.tlsError)
      return
    }
    const retryable = request.body === null && IDEMPOTENT.has(request.method)
    this.run(new Exchange(request, handler, retryable))
  }

  private run(ex: Exchange): void {
    let conn = this.idle.pop()
    // a connection the pool destroyed while idle (its deadline, bytes no request asked for, the upstream's
    // FIN) stays listed until its 'close' event, and a request written on it would fail without ever
    // reaching the upstream
    while (conn?.socket.destroyed) conn = this.idle.pop()
    const on = conn ?? this.open()
    this.sweep()
    on.start(ex)
  }

  private open(): Connection {
    const conn = new Connection(this, this.options)
    this.all.add(conn)
    return conn
  }

  /**
   * A request the keep-alive race took, once more on a new connection. A pool that closes (a reload changed
   * the upstream or its TLS material) still finishes the requests it had: this is one of them.
   */
  retry(ex: Exchange): void {
    if (this.destroyed) {
      ex.settled = true
      ex.handler.onError(new UpstreamError('engine closed', 'UND_ERR_DESTROYED'))
      return
    }
    const conn = this.open()
    this.sweep()
    conn.start(new Exchange(ex.request, ex.handler, false))
  }

  release(conn: Connection): void {
    conn.reused = true
    conn.activeAt = this.tick
    if (this.closing) conn.socket.destroy()
    else this.idle.push(conn)
  }

  /** bytes no response framed came on one of the pool's connections (closed already) */
  unframed(what: string): void {
    this.options.unframedBytes?.(new UpstreamError(`upstream sent ${what}`, EXTRA_BYTES_CODE))
  }

  forget(conn: Connection): void {
    this.all.delete(conn)
    const i = this.idle.indexOf(conn)
    if (i !== -1) this.idle.splice(i, 1)
  }

  private sweep(): void {
    if (this.sweeper !== undefined) return
    this.sweeper = setInterval(() => {
      this.tick++
      for (const conn of this.all) conn.check(this.tick, this.tickMs)
      if (this.all.size === 0) {
        clearInterval(this.sweeper)
        this.sweeper = undefined
      }
    }, this.tickMs)
    this.sweeper.unref()
  }

  /** idle connections go now, busy ones after their response */
  async close(): Promise<void> {
    this.closing = true
    for (const conn of this.idle.splice(0)) conn.socket.destroy()
  }

  async destroy(): Promise<void> {
    this.closing = true
    this.destroyed = true
    this.idle.length = 0
    for (const conn of [...this.all]) conn.abort(new UpstreamError('engine destroyed', 'UND_ERR_DESTROYED'))
  }
}
