// Forwarding to an HTTP/2 upstream (h2c with prior knowledge, or h2 over TLS) with node:http2 client sessions:
// one session per upstream, one stream per request. Both directions stream with backpressure (a bidi gRPC
// call runs full duplex), response trailers are passed on, and a client that goes away cancels the upstream
// stream (RST_STREAM CANCEL, which a gRPC server sees as a cancelled call). A stream the upstream refused
// without processing it (REFUSED_STREAM, or above a GOAWAY's last stream id) is sent once more.
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http'
import {
  type ClientHttp2Session,
  type ClientHttp2Stream,
  connect,
  constants,
  type IncomingHttpHeaders as H2Headers,
  type IncomingHttpStatusHeader,
  type SecureClientSessionOptions,
  type ServerHttp2Stream,
} from 'node:http2'
import { isIP } from 'node:net'
import { type ConnectionOptions, type SecureContextOptions, connect as tlsConnect } from 'node:tls'
import type { UpstreamErrorReason } from '../types.ts'
import {
  callDeadlineTimer,
  clientLeftStatus,
  clientStreamGone,
  connectTimeoutMs,
  cutResponse,
  DEADLINE_MESSAGE,
  endCallWithStatus,
  type Forwarder,
  type ForwardListener,
  type ForwardResult,
  type ForwardTarget,
  responseBlocked,
  responseDrained,
  type TunnelIdle,
  UPSTREAM_RESET_MESSAGE,
  type UpstreamFailed,
  upstreamDeadline,
} from './forwarder.ts'
import {
  endGrpcWithStatus,
  GRPC,
  grpcStatusWithoutOne,
  grpcTimeoutMs,
  isGrpc,
  respondTrailersOnly,
  sendGrpcStatus,
} from './grpc.ts'
import { GrpcWebStatusReader, grpcStatusValue, isGrpcWeb, isGrpcWebText, isGrpcWebType } from './grpc-web.ts'
import { UpstreamError } from './h1-pool.ts'
import { type HeaderBlocks, isHopByHop, type UpstreamHeaders, upstreamTrailers } from './headers.ts'
import { resetByProxy } from './http2-listener.ts'
import { announcesTrailers, type NodeHttpForwarder } from './node-http-forwarder.ts'
import { hasBody } from './request-lifecycle.ts'
import { clearHeaders } from './respond.ts'
import { upstreamTlsFor } from './upstream-url.ts'

/** The client's request trailers to the upstream; the stream ends either way (empty trailers end it too). */
function sendRequestTrailers(
  stream: ClientHttp2Stream,
  req: IncomingMessage,
  withheld: ReadonlySet<string> | undefined,
): void {
  const out: OutgoingHttpHeaders = {}
  for (const [name, value] of upstreamTrailers(req.rawTrailers, req.headers, withheld)) {
    const lower = name.toLowerCase()
    const prev = out[lower]
    out[lower] = prev === undefined ? value : [...(Array.isArray(prev) ? prev : [String(prev)]), value]
  }
  try {
    stream.sendTrailers(out)
  } catch {
    // a field node:http2 refuses is dropped with the rest rather than leaving the stream half open
    if (!stream.destroyed) stream.sendTrailers({})
  }
}

export interface Http2ForwarderOptions {
  /** response headers deadline, ms (→ 504, or DEADLINE_EXCEEDED for gRPC) */
  headersTimeout: number
  /** how long a client may take none of a response the proxy has bytes of, ms (then it is disconnected) */
  stallTimeout?: number
  /** TCP/TLS connect deadline, ms */
  connectTimeout?: number
  /** extra TLS options for h2 over TLS (CA bundle, client certificate) */
  tls?: SecureContextOptions & { servername?: string }
  /** when an answered stream that has gone silent both ways counts as abandoned */
  tunnelIdle?: TunnelIdle
  failed?: UpstreamFailed
}

function grpcStatusOf(headers: H2Headers | undefined): number | undefined {
  const v = headers?.['grpc-status']
  return typeof v === 'string' ? grpcStatusValue(v) : undefined
}

/**
 * The upstream's response fields (or trailers) for the client: no pseudo-header, no hop-by-hop field. An h2
 * upstream may send one (`http2-settings`, `proxy-authenticate`): an HTTP/1.1 client must not get it, and
 * node:http2 throws on the connection-specific ones (RFC 9113 §8.2.2) when they are set on its response.
 * A field the upstream sent in several lines goes on in those lines (`raw`, as node:http2 received them).
 */
function responseHeaders(headers: H2Headers, raw: readonly string[] | undefined): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {}
  let names = 0
  for (const name in headers) {
    names++
    if (name.charCodeAt(0) === 58 || isHopByHop(name)) continue
    out[name] = headers[name]
  }
  // as many lines as names: no name was repeated, and every value is as the upstream sent it
  if (raw !== undefined && raw.length > names * 2) keepLines(out, raw)
  return out
}

/**
 * Puts back the lines node:http2 joined into one value with ", " (gRPC sends a repeated metadata key so, one
 * line per value). Joined, an empty last line leaves a value ending in a space (`b, `), which makes the field
 * malformed (RFC 9113 §8.2.1): the client's HTTP/2 layer drops it whole, and the metadata never arrives. The
 * names node:http2 keeps one line of (`content-type`…) are left as it kept them.
 */
function keepLines(out: OutgoingHttpHeaders, raw: readonly string[]): void {
  const lines = new Map<string, string[]>()
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!
    // pseudo-headers and hop-by-hop fields were left out; set-cookie is a list of its lines already
    if (typeof out[name] !== 'string') continue
    const list = lines.get(name)
    if (list === undefined) lines.set(name, [raw[i + 1]!])
    else list.push(raw[i + 1]!)
  }
  for (const [name, list] of lines) if (list.length > 1 && out[name] === list.join(', ')) out[name] = list
}

const EDGE_WHITESPACE = /^[ \t]+|[ \t]+$/g

/**
 * A request field's value as HTTP/2 may carry it: without whitespace at either end (RFC 9113 §8.2.1), which is
 * no part of a field value anyway (RFC 9110 §5.5). Node joins a client's repeated lines with ", " (Cookie
 * lines and HTTP/2 cookie crumbs with "; "), so an empty last line leaves `a=1; `: sent so, the field is
 * malformed, and an nghttp2 upstream drops it whole (the client's cookies never arrive) where others refuse
 * the request. Only such a value is copied.
 */
function http2FieldValue(value: string): string {
  const first = value.charCodeAt(0)
  const last = value.charCodeAt(value.length - 1)
  return first === 32 || first === 9 || last === 32 || last === 9 ? value.replace(EDGE_WHITESPACE, '') : value
}

/**
 * How much of a request body is kept, until the upstream answers, so that a stream the upstream refused
 * unprocessed can be sent again (a gRPC unary call fits); a longer body is not kept and its stream is not retried.
 */
const REPLAY_LIMIT = 64 * 1024

/** a session that did not come up within the connect deadline: connect timeouts, as on the HTTP/1.1 path */
function notEstablished(session: ClientHttp2Session): Error {
  const message = session.connecting ? 'connect timeout' : 'no HTTP/2 SETTINGS from the upstream in time'
  return Object.assign(new Error(message), { code: 'ETIMEDOUT' })
}

/**
 * The proxy's SETTINGS to its upstreams. node:http2 clients take server pushes by default, and the proxy
 * passes none on: each pushed stream stayed open with no listener, and when its session ended with an error
 * (an upstream's GOAWAY with an error code, its connection reset) the stream was handed that error with no
 * one to hear it, which ended the process. Refused, a PUSH_PROMISE from an upstream that acknowledged this
 * is a connection error (RFC 9113 §8.4); one sent before is refused by nghttp2 alone, no stream ever made.
 */
const NO_PUSH = { enablePush: false } as const

/** why a gRPC call still open at the end of the drain is ended: its client may retry it elsewhere */
const SHUTDOWN_MESSAGE = 'proxy shutting down'

export class Http2Forwarder {
  private readonly sessions = new Map<string, ClientHttp2Session>()
  /** the last stream id of the GOAWAY each session received: the streams above it were not processed */
  private readonly goaways = new WeakMap<ClientHttp2Session, number>()
  /** the sessions whose upstream sent its SETTINGS: before that, a failure is a connect failure */
  private readonly established = new WeakSet<ClientHttp2Session>()
  /** the sessions asked whether they still work (check): no new stream goes on them until their PING returns */
  private readonly checking = new WeakSet<ClientHttp2Session>()
  /** the gRPC calls in flight, each with what ends it at shutdown (see endCalls) */
  private readonly calls = new Set<() => Promise<void>>()
  private tls: Http2ForwarderOptions['tls']

  constructor(private readonly options: Http2ForwarderOptions) {
    this.tls = options.tls
  }

  /** upstreamTls for a TLS session to `url`, with the server name every path takes (upstreamTlsFor) */
  private connectOptions(url: string): SecureClientSessionOptions {
    const u = new URL(url)
    const host = u.hostname.replace(/^\[|\]$/g, '')
    const tls = upstreamTlsFor(host, this.tls ?? {})
    if (tls.servername !== '' || isIP(host) !== 0) return tls
    // no server name for a host name (an address configured as servername): node:http2 would send the host
    const port = u.port === '' ? 443 : Number(u.port)
    return { ...tls, createConnection: () => tlsConnect({ ...tls, host, port, ALPNProtocols: ['h2'] }) }
  }

  /**
   * The origin's session, opened when there is none to use. The connect deadline runs until the upstream's
   * SETTINGS frame (its half of the connection preface, RFC 9113 §3.4), not only until TCP/TLS is up: a peer
   * that accepts the connection and stays silent (a hung process, a port taken by something that is not
   * HTTP/2) would otherwise hold every request sent on the session until timeouts.upstream, and the session
   * would be reused for the next ones. Destroyed at the deadline, it fails its streams as connect failures and
   * leaves the map, so the next request opens a new one.
   */
  private session(origin: string, tls: boolean): ClientHttp2Session {
    const session = this.sessions.get(origin)
    // a session told to go away takes no new stream (node:http2 closes it, after the 'goaway' event), nor one
    // being checked
    if (
      session !== undefined &&
      !session.closed &&
      !session.destroyed &&
      !this.goaways.has(session) &&
      !this.checking.has(session)
    )
      return session
    const url = origin.replace(/^h2c:/, 'http:').replace(/^h2:/, 'https:')
    const s = connect(url, { ...(tls ? this.connectOptions(url) : {}), settings: NO_PUSH })
    s.on('error', () => {})
    s.on('goaway', (_code: number, lastStreamID: number) => this.goaways.set(s, lastStreamID))
    // an idle upstream session must not keep the process alive
    s.unref()
    s.once('close', () => {
      if (this.sessions.get(origin) === s) this.sessions.delete(origin)
    })
    const timer = upstreamDeadline(connectTimeoutMs(this.options), () => {
      if (!this.established.has(s)) s.destroy(notEstablished(s))
    })?.unref()
    s.once('remoteSettings', () => {
      this.established.add(s)
      clearTimeout(timer)
    })
    this.sessions.set(origin, s)
    return s
  }

  /**
   * A stream on `session` met the upstream's silence until a deadline (no response head by timeouts.upstream, an
   * answered stream idle for timeouts.tunnelIdle): the upstream's doing, or the session's. nghttp2 1.61 (Node 20)
   * ends a session on some connection errors of the upstream (DATA before a response's HEADERS, a padding length
   * past its frame) with its own GOAWAY without telling node:http2, which neither closes nor destroys it: it
   * reads and writes nothing more, and every stream on it, the next requests' too, waits for its deadline until
   * the upstream closes the connection. Nothing node:http2 shows tells such a session apart (its state looks
   * like any other's, a PING on it is taken and queued), so it is asked: no new stream goes on it (the next
   * request opens a new session) until its PING comes back, within the connect deadline, which bounds the
   * upstream's SETTINGS too. One whose PING does not come back is destroyed, failing the streams still on it; one
   * whose PING does is used again, or, when a new session has taken its place, closed once its streams are done.
   * Later Node versions destroy such a session themselves. A stream that ends with an error asks for no check:
   * the error came in through its session, which still reads.
   */
  private check(origin: string, session: ClientHttp2Session): void {
    if (session.closed || session.destroyed || this.checking.has(session)) return
    this.checking.add(session)
    // without a connect deadline (timeouts.upstream: 0) the PING has none either: the session takes no new
    // stream until it answers
    const timer = upstreamDeadline(connectTimeoutMs(this.options), () =>
      session.destroy(new UpstreamError('no answer to a PING from the upstream in time', 'ETIMEDOUT')),
    )?.unref()
    const answered = (err: Error | null) => {
      clearTimeout(timer)
      // a PING cancelled: the session closed or was destroyed, and has left the map
      if (err !== null) return
      this.checking.delete(session)
      if (this.sessions.get(origin) !== session) session.close()
    }
    try {
      session.ping(answered)
    } catch {
      // destroyed already
      clearTimeout(timer)
    }
  }

  /**
   * A stream the upstream did not process (RFC 9113 §8.7): reset with REFUSED_STREAM (a server over its
   * SETTINGS_MAX_CONCURRENT_STREAMS, which a new session's first streams may be opened before), or above the
   * last stream id of a GOAWAY (an upstream shutting down); node:http2 closes the latter with REFUSED_STREAM
   * after a GOAWAY with NO_ERROR, with the GOAWAY's code after any other.
   */
  private refused(session: ClientHttp2Session, stream: ClientHttp2Stream): boolean {
    if (stream.rstCode === constants.NGHTTP2_REFUSED_STREAM) return true
    const last = this.goaways.get(session)
    return last !== undefined && stream.id !== undefined && stream.id > last
  }

  forward(
    req: IncomingMessage,
    res: ServerResponse,
    target: ForwardTarget,
    headers: UpstreamHeaders,
  ): Promise<ForwardResult> {
    const tls = target.upstream?.tls === true
    return new Promise((resolve) => {
      const started = performance.now()
      const grpc = isGrpc(req.headers)
      const deadline = grpc ? grpcTimeoutMs(req.headers) : undefined
      const deadlineFrom = target.receivedAt ?? started
      const out: OutgoingHttpHeaders = {
        ':method': req.method ?? 'GET',
        ':path': target.path,
        ':scheme': tls ? 'https' : 'http',
        ':authority':
          typeof headers.host === 'string' ? headers.host : target.origin.replace(/^[a-z0-9]+:\/\//, ''),
      }
      for (const name in headers) {
        if (name === 'host' || isHopByHop(name)) {
          // the one connection-specific field HTTP/2 carries (RFC 9113 §8.2.2): gRPC servers built on gRPC's
          // C core refuse a call without it
          if (name === 'te' && headers.te === 'trailers') out.te = 'trailers'
          continue
        }
        const value = headers[name]
        if (value !== undefined) out[name] = typeof value === 'string' ? http2FieldValue(value) : value
      }
      const withBody = hasBody(req)
      let status = 0
      let bytesOut = 0
      let settled = false
      let grpcStatus: number | undefined
      /** gRPC-Web: the status is in the response body's trailer frame */
      let grpcWeb: GrpcWebStatusReader | undefined
      let trailers: H2Headers | undefined
      /** the trailers' field lines as received (responseHeaders) */
      let rawTrailers: string[] | undefined
      let stream: ClientHttp2Stream
      /** the session `stream` is on */
      let current: ClientHttp2Session
      const timers: NodeJS.Timeout[] = []
      /**
       * the request body sent so far, kept until the upstream answers so that a stream it refuses unprocessed
       * can be sent again; undefined without a body, once answered, or past REPLAY_LIMIT (then no retry)
       */
      let replay: Buffer[] | undefined
      let replayBytes = 0
      let retried = false
      const dropReplay = () => {
        if (replay === undefined) return
        replay = undefined
        req.off('data', keep)
      }
      const keep = (chunk: Buffer) => {
        replayBytes += chunk.length
        if (replayBytes > REPLAY_LIMIT) dropReplay()
        else replay?.push(chunk)
      }

      const settle = (upstreamError?: UpstreamErrorReason, clientAborted = false) => {
        if (settled) return
        settled = true
        this.calls.delete(endAtShutdown)
        dropReplay()
        for (const timer of timers) clearTimeout(timer)
        res.off('close', onClientClose)
        const result: ForwardResult = { status, upstreamMs: performance.now() - started, bytesOut }
        if (upstreamError) result.upstreamError = upstreamError
        if (clientAborted) result.clientAborted = true
        if (grpcStatus !== undefined) result.grpcStatus = grpcStatus
        resolve(result)
      }

      /**
       * the upstream failed or timed out: before headers the caller answers; after (a reset: the headers
       * deadline no longer runs), a gRPC call ends with UNAVAILABLE. `err`, why, goes to the operator's log
       */
      const fail = (reason: UpstreamErrorReason, err?: unknown) => {
        if (settled) return
        if (err !== undefined) this.options.failed?.(reason, err)
        if (!stream.destroyed) stream.close(constants.NGHTTP2_CANCEL)
        if (status !== 0) {
          if (grpc) {
            grpcStatus = endCallWithStatus(res, grpcWeb, GRPC.UNAVAILABLE, UPSTREAM_RESET_MESSAGE, status)
          } else cutResponse(res)
        }
        settle(reason)
      }

      /** the response was ended by us; a close before that means the client went away (or reset the stream) */
      let responded = false
      const onClientClose = () => {
        if (settled || responded) return
        if (!stream.destroyed) stream.close(constants.NGHTTP2_CANCEL)
        if (grpc) grpcStatus = clientLeftStatus(grpcWeb, status, deadline, deadlineFrom)
        settle(undefined, true)
      }

      /**
       * The call's own `grpc-timeout` passed: the client gets DEADLINE_EXCEEDED (alone, or in trailers once the
       * upstream answered) as it would from its own timer. The deadline is the client's, so the call is no
       * upstream failure: it is recorded with its status only, never as an upstream timeout.
       */
      const deadlinePassed = () => {
        if (settled) return
        if (!stream.destroyed) stream.close(constants.NGHTTP2_CANCEL)
        if (clientStreamGone(res)) {
          onClientClose()
          return
        }
        grpcStatus = GRPC.DEADLINE_EXCEEDED
        if (status !== 0)
          grpcStatus = endCallWithStatus(res, grpcWeb, GRPC.DEADLINE_EXCEEDED, DEADLINE_MESSAGE, status)
        else if (sendGrpcStatus(res, GRPC.DEADLINE_EXCEEDED, DEADLINE_MESSAGE, target.cors)) status = 200
        else {
          // nothing could be sent: the client went away
          onClientClose()
          return
        }
        responded = true
        settle()
      }

      /** both sides are reset with CANCEL: each peer learns the proxy no longer needs the stream */
      const idleCut = (idle: TunnelIdle) => {
        if (settled) return
        this.check(target.origin, current)
        if (!stream.destroyed) stream.close(constants.NGHTTP2_CANCEL)
        // what a gRPC client makes of RST_STREAM CANCEL
        if (grpc) grpcStatus = GRPC.CANCELLED
        settle()
        const h2Response = (res as unknown as { stream?: ServerHttp2Stream }).stream
        if (h2Response === undefined) res.destroy()
        else if (!h2Response.destroyed) {
          resetByProxy(h2Response)
          h2Response.close(constants.NGHTTP2_CANCEL)
        }
        idle.closed?.('http2')
      }

      /**
       * the end of the drain: the call ends with UNAVAILABLE, a status its client retries (elsewhere), rather
       * than with its connection, which a gRPC client reads as INTERNAL or UNAVAILABLE depending on the call
       * and the proxy would have recorded as its cancellation. Resolves when the answer has gone out.
       */
      const endAtShutdown = (): Promise<void> => {
        if (settled) return Promise.resolve()
        const sent = new Promise<void>((done) => {
          if (res.writableFinished || res.destroyed) done()
          else res.once('close', done).once('finish', done)
        })
        if (!stream.destroyed) stream.close(constants.NGHTTP2_CANCEL)
        grpcStatus = GRPC.UNAVAILABLE
        if (status === 0) {
          // no answer yet: the client gets the status alone
          if (sendGrpcStatus(res, GRPC.UNAVAILABLE, SHUTDOWN_MESSAGE)) status = 200
          else grpcStatus = undefined
        } else endGrpcWithStatus(res, GRPC.UNAVAILABLE, SHUTDOWN_MESSAGE)
        responded = true
        settle(status === 0 ? 'reset' : undefined)
        return sent
      }
      if (grpc && !isGrpcWeb(req.headers)) this.calls.add(endAtShutdown)

      /**
       * Opens the request's stream on the origin's session (undefined when the session takes none). A stream the
       * upstream closes before any response head, having refused it unprocessed (RFC 9113 §8.7), is opened
       * once more, on the same session when it is still open, else on a new one; its body is sent again from
       * `replay`. Any other close without an answer fails the request as before.
       */
      const open = (): ClientHttp2Stream | undefined => {
        const session = this.session(target.origin, tls)
        current = session
        let s: ClientHttp2Stream
        try {
          // with a body, the stream stays open after the last DATA frame so the client's trailers can follow
          s = session.request(out, { endStream: !withBody, waitForTrailers: withBody })
        } catch {
          return undefined
        }
        stream = s
        const lost = (err?: unknown) => {
          if (settled || s !== stream) return
          if (!retried && status === 0 && (!withBody || replay !== undefined) && this.refused(session, s)) {
            retried = true
            if (withBody) req.unpipe(s)
            const next = open()
            if (next === undefined) fail('connect')
            else if (replay !== undefined) {
              for (const chunk of replay) next.write(chunk)
              // what is left of the body follows; a body that has ended ends the new stream
              req.pipe(next)
            }
            return
          }
          fail(this.established.has(session) ? 'reset' : 'connect', err)
        }
        s.on('error', lost)
        // node:http2 passes the field lines as received too (missing from its type definitions)
        s.on('response', (h: H2Headers & IncomingHttpStatusHeader, flags: number, raw?: string[]) => {
          if (settled || s !== stream) return
          status = Number(h[':status'])
          // answered: the stream was taken, and will not be sent again
          dropReplay()
          if (status < 200) return
          if (clientStreamGone(res)) {
            onClientClose()
            return
          }
          if (grpc) grpcStatus = grpcStatusOf(h)
          if (grpc && isGrpcWeb(req.headers))
            grpcWeb = new GrpcWebStatusReader(
              isGrpcWebText(h['content-type']),
              undefined,
              isGrpcWebType(h['content-type']),
              typeof h['grpc-encoding'] === 'string' ? h['grpc-encoding'] : undefined,
            )
          if (req.headers.origin !== undefined) target.cors?.learnFromHeaders(req, h)
          const headersOut = responseHeaders(h, raw)
          const h2Response = (res as unknown as { stream?: ServerHttp2Stream }).stream
          try {
            if (flags & constants.NGHTTP2_FLAG_END_STREAM && h2Response && grpcStatus !== undefined) {
              // Trailers-Only: a gRPC client reads the status only from a HEADERS frame that ends the stream
              respondTrailersOnly(h2Response, { ':status': status, ...headersOut })
              responded = true
              return
            }
            res.writeHead(status, headersOut)
          } catch {
            // node:http2 refuses what HTTP/1.1 passes on (a :status of 600 or more): nothing was sent, so the
            // client is answered 502 (or UNAVAILABLE) as for an upstream that reset the stream
            if (clientStreamGone(res)) {
              onClientClose()
              return
            }
            clearHeaders(res)
            status = 0
            grpcStatus = undefined
            grpcWeb = undefined
            fail('reset')
            return
          }
          // answered: the headers deadline no longer applies and there is no body deadline (a gRPC stream may
          // be quiet for long), so only a stream that moves no byte either way for tunnelIdle is let go. The
          // stream's own timer is activity based, restarted by every DATA frame read or written.
          const idle = this.options.tunnelIdle
          if (idle !== undefined && idle.ms > 0) s.setTimeout(idle.ms, () => idleCut(idle))
        })
        let waitingForDrain = false
        let blocked = false
        s.on('data', (chunk: Buffer) => {
          // the stream was given up on (the client went, or its answer could not be passed on): what the
          // upstream had already sent goes nowhere
          if (settled) return
          bytesOut += chunk.length
          grpcWeb?.push(chunk)
          if (!res.write(chunk) && !waitingForDrain) {
            waitingForDrain = true
            s.pause()
            responseBlocked(res, this.options.stallTimeout ?? 0, !blocked)
            blocked = true
            res.once('drain', () => {
              responseDrained(res)
              waitingForDrain = false
              s.resume()
            })
          }
        })
        s.on('trailers', (t: H2Headers, _flags: number, raw?: string[]) => {
          trailers = t
          rawTrailers = raw
          if (grpc) grpcStatus = grpcStatusOf(t) ?? grpcStatus
        })
        s.on('end', () => {
          if (settled || s !== stream) return
          if (status === 0) {
            lost()
            return
          }
          // node:http2 ends the readable side of a stream that was reset, or whose session was lost (CANCEL), as
          // well as of one the upstream ended: only the former carry an error code, and their response is cut.
          // Trailers end a response, so a reset after them (a server stopping the request body) cuts nothing.
          if (trailers === undefined && s.rstCode !== constants.NGHTTP2_NO_ERROR) {
            fail('reset')
            return
          }
          if (res.destroyed || res.writableEnded) {
            // the upstream finished after the client had gone
            onClientClose()
            return
          }
          responded = true
          if (trailers) res.addTrailers(responseHeaders(trailers, rawTrailers) as Record<string, string>)
          res.end()
          // recorded as the client reads it, not left out of the call counts (a 200 without one as a success)
          if (grpc && grpcStatus === undefined)
            grpcStatus = grpcWeb ? grpcWeb.result(status) : grpcStatusWithoutOne(status)
          settle()
        })
        // closed without an end: reset by the upstream
        s.on('close', () => lost())
        if (withBody)
          // the body has ended when this fires, so req.trailers is complete (HTTP/1.1 chunked or h2 trailers)
          s.once('wantTrailers', () => sendRequestTrailers(s, req, target.withheldTrailers))
        return s
      }

      const first = open()
      if (first === undefined) {
        settle('connect')
        return
      }
      res.on('close', onClientClose)
      const headersTimer = upstreamDeadline(this.options.headersTimeout, () => {
        // the upstream's silence is the operator's to know, as on the HTTP/1.1 path (a gRPC call's own
        // deadline below is the client's, and is not). A session still without the upstream's SETTINGS
        // never came up: a connect failure (its own deadline, which is no later, destroys it)
        if (status !== 0) return
        if (this.established.has(current)) {
          this.check(target.origin, current)
          fail('timeout', new UpstreamError('headers timeout', 'UND_ERR_HEADERS_TIMEOUT'))
        } else fail('connect', notEstablished(current))
      })
      if (headersTimer !== undefined) timers.push(headersTimer)
      if (deadline !== undefined) {
        const timer = callDeadlineTimer(deadline, deadlineFrom, deadlinePassed, undefined)
        if (timer !== undefined) timers.push(timer)
      }
      if (withBody) {
        replay = []
        req.pipe(first)
        req.on('data', keep)
        // a reset client stream is a cancellation, not the end of the request body
        const cancel = () => onClientClose()
        req.on('aborted', cancel)
        req.on('error', cancel)
      }
    })
  }

  /**
   * The end of the drain: every gRPC call still in flight ends with UNAVAILABLE (in trailers, or alone when
   * the upstream has not answered), which its client may retry; resolves once those answers have gone out.
   */
  endCalls(): Promise<void> {
    const calls = [...this.calls]
    this.calls.clear()
    return Promise.all(calls.map((end) => end())).then(() => {})
  }

  prune(keep: string | undefined): void {
    for (const [origin, session] of this.sessions) {
      if (origin === keep) continue
      this.sessions.delete(origin)
      // in-flight streams finish; the session closes after them
      session.close()
    }
  }

  /** rotated upstreamTls: the next request opens a new session with it; open sessions finish their streams */
  setTls(tls: ConnectionOptions | undefined): void {
    this.tls = tls
    this.prune(undefined)
  }

  async close(): Promise<void> {
    const sessions = [...this.sessions.values()]
    this.sessions.clear()
    for (const s of sessions) s.destroy()
  }
}

/**
 * The proxy's forwarder: HTTP/2 upstreams (h2c:, h2:) through node:http2 sessions, HTTP/1.1 requests that
 * announce request trailers through node:http (the HTTP/1.1 engine does not send them), everything else (and
 * every websocket upgrade, an HTTP/1.1 mechanism) through the HTTP/1.1 engine (Http1Forwarder).
 */
export class ProtocolForwarder implements Forwarder {
  constructor(
    private readonly http1: Forwarder,
    private readonly h2: Http2Forwarder,
    private readonly trailers?: NodeHttpForwarder,
  ) {}

  /** the one place that picks the engine for a request: h2 upstreams, requests with trailers, the rest */
  private engineFor(req: IncomingMessage, target: ForwardTarget): Pick<Forwarder, 'forward' | 'dispatch'> {
    if (target.upstream?.protocol === 'h2') return this.h2
    if (this.trailers && announcesTrailers(req)) return this.trailers
    return this.http1
  }

  forward(req: IncomingMessage, res: ServerResponse, target: ForwardTarget, headers: UpstreamHeaders) {
    return this.engineFor(req, target).forward(req, res, target, headers)
  }

  dispatch(
    req: IncomingMessage,
    res: ServerResponse,
    target: ForwardTarget,
    headers: UpstreamHeaders,
    listener: ForwardListener,
  ): void {
    const engine = this.engineFor(req, target)
    if (engine.dispatch) engine.dispatch(req, res, target, headers, listener)
    else void engine.forward(req, res, target, headers).then((result) => listener.forwarded(result))
  }

  upgrade(...args: Parameters<Forwarder['upgrade']>) {
    return this.http1.upgrade(...args)
  }

  headerBlocks(req: IncomingMessage, target: ForwardTarget): HeaderBlocks | undefined {
    return this.engineFor(req, target) === this.http1 ? this.http1.headerBlocks?.(req, target) : undefined
  }

  prune(keep: string): void {
    this.http1.prune(keep)
    this.h2.prune(keep)
    this.trailers?.prune(keep)
  }

  setTls(tls: ConnectionOptions | undefined): void {
    this.http1.setTls?.(tls)
    this.h2.setTls(tls)
    this.trailers?.setTls(tls)
  }

  endCalls(): Promise<void> {
    return this.h2.endCalls()
  }

  async close(): Promise<void> {
    await Promise.all([this.http1.close(), this.h2.close(), this.trailers?.close()])
  }
}
