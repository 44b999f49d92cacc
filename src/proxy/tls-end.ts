// Whether the end of a TLS connection's stream was the peer's close_notify or a bare TCP FIN.
//
// Node hands both on alike: the TLSSocket emits 'end' and no error, on Node 20, 22, 24 and 26 (OpenSSL 3.0
// and 3.5). OpenSSL never learns of the FIN, since Node feeds it the bytes from memory, so
// SSL_OP_IGNORE_UNEXPECTED_EOF plays no part, and no public property tells the two apart. For a body that ends
// with its connection the difference is the body's integrity (RFC 8446 §6.1, RFC 5246 §7.2.1): a FIN is
// unauthenticated, and an on-path attacker's, or that of an upstream that crashed, would otherwise end the body
// where it cut it.
//
// The one public way to see the FIN apart is a TLS socket over a JS stream of our own, which costs about half
// again the CPU of every TLS read and write (measured on 1 KiB and 64 KiB answers). Instead the end is told
// apart where Node makes it, at no cost per request. The TLS layer hands the end on synchronously, either
// while it decrypts the close_notify (in a read of the TCP socket, which is still reading then) or when the TCP
// socket reports its FIN (libuv stops reading a socket once it has). At that moment, starting the TCP handle
// answers EALREADY in the first case and starts it again in the second (a libuv that refuses to read past the
// FIN would answer ENOTCONN). A TCP handle the stream had stopped for backpressure is not reading either, but
// only the close_notify can end the stream then: the FIN is not read until reading starts again.
//
// This reads Node's internals (the TLS handle's `reading` flag, its TCP handle `_parent`, and net's
// onStreamRead pushing the end from the native read): where any of them is missing the end counts as clean,
// as it did before. test/proxy/upstream-tls-truncation.test.ts checks both ends on every supported Node.
import { Readable } from 'node:stream'
import type { TLSSocket } from 'node:tls'
import { getSystemErrorName } from 'node:util'

interface TcpHandle {
  readStart?: () => unknown
  readStop?: () => unknown
}
interface TlsHandle {
  reading?: unknown
  _parent?: TcpHandle | null
}

const kBareEnd = Symbol('nhi.tlsBareEnd')
type Watched = TLSSocket & { [kBareEnd]?: boolean; _handle?: TlsHandle | null }

const push = Readable.prototype.push

/** the end of stream, as it reaches the socket: one look at the TCP handle, once per connection */
function pushWatchingEnd(this: Watched, chunk: unknown, encoding?: BufferEncoding): boolean {
  if (chunk === null && this[kBareEnd] === undefined) this[kBareEnd] = bareEnd(this._handle)
  return push.call(this, chunk, encoding)
}

function bareEnd(handle: TlsHandle | null | undefined): boolean {
  const tcp = handle?._parent
  if (handle == null || tcp == null || typeof tcp.readStart !== 'function') return false
  if (handle.reading === false) return false
  const started = tcp.readStart()
  if (started === 0) {
    tcp.readStop?.()
    return true
  }
  if (typeof started !== 'number' || started >= 0) return false
  try {
    return getSystemErrorName(started) === 'ENOTCONN'
  } catch {
    return false
  }
}

/** from now on, the end of the socket's stream is told apart: the peer's close_notify or a bare FIN */
export function watchTlsEnd(socket: TLSSocket): void {
  ;(socket as Watched).push = pushWatchingEnd
}

/** the stream of a socket `watchTlsEnd` watches ended with a TCP FIN that no close_notify came before */
export function endedWithoutCloseNotify(socket: TLSSocket): boolean {
  return (socket as Watched)[kBareEnd] === true
}

/** what a body cut that way fails with: the name OpenSSL 3 gives the same condition, and why it matters */
export const TLS_CUT_CODE = 'ERR_SSL_UNEXPECTED_EOF_WHILE_READING'
export const TLS_CUT_MESSAGE =
  'the upstream closed its TLS connection without close_notify: the body it ended may be truncated'
