// `Expect: 100-continue` (RFC 9110 §10.1.1): the client waits for a 100 before it sends its body. Node's
// servers send the 100 as soon as the request head is read, before anything is known about the caller, so a
// request the policy denies (or a token that fails) still had its body invited, and uploaded for nothing.
// The listeners hold the 100 back ('checkContinue', and over HTTP/2 'checkExpectation' for the spellings
// node:http2 does not take for it: expectsContinue); the request lifecycle sends it once the request is let
// through to the upstream. A request answered before that gets its final status instead, which the client
// takes as "do not send the body" (node:http then closes the connection: the client may send it anyway).
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Http2ServerRequest, Http2ServerResponse } from 'node:http2'

const held = new WeakSet<object>()

/**
 * What node:http's HTTP/1.1 server takes for a 100-continue expectation (its checkContinue): any letter case,
 * among other tokens. node:http2's compatibility layer takes the exact lower-case value only and passes every
 * other spelling on as an expectation it does not know ('checkExpectation'), so both listeners go by this.
 */
const CONTINUE_EXPECTATION = /(?:^|\W)100-continue(?:$|\W)/i

/** whether an `expect` value asks for a 100 Continue, as node:http reads it */
export function expectsContinue(expect: string | undefined): boolean {
  return expect !== undefined && CONTINUE_EXPECTATION.test(expect)
}

/** the request's 100 waits for releaseContinue */
export function holdContinue(req: IncomingMessage | Http2ServerRequest): void {
  held.add(req)
}

/** sends the 100 of a request whose 100 was held, once; nothing for any other */
export function releaseContinue(
  req: IncomingMessage,
  res: ServerResponse | Http2ServerResponse | undefined,
): void {
  if (!held.delete(req) || res === undefined) return
  // an HTTP/2 stream the client reset meanwhile takes no 100: node:http2 throws on a write to a closed stream
  const stream = (res as { stream?: { destroyed: boolean; closed: boolean } }).stream
  if (stream !== undefined && (stream.destroyed || stream.closed)) return
  try {
    res.writeContinue()
  } catch {
    // closed under us: the forward sees a closed stream, as it would have without an Expect
  }
}
