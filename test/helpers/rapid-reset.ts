// The HTTP/2 rapid-reset pattern (CVE-2023-44487) from a client's side, shared by the tests that provoke it.
import { once } from 'node:events'
import { type ClientHttp2Session, constants } from 'node:http2'

/** streams opened and cancelled per turn of the event loop: fewer than the smallest stream limit a test sets */
const PER_TURN = 4
const MAX_STREAMS = 2000

/**
 * Opens and cancels streams (of `method`) on one session until the proxy sends GOAWAY; resolves with its error code. The
 * resets go out several per turn of the event loop and until the GOAWAY arrives, so that a test process
 * slowed by a loaded machine still resets faster than the proxy's per-second limit.
 */
export async function rapidReset(session: ClientHttp2Session, method = 'GET'): Promise<number> {
  const goaway = once(session, 'goaway')
  let cut = false
  // once() rejects if the session emits 'error'; the await below reports that, this only stops the loop
  const stop = () => {
    cut = true
  }
  goaway.then(stop, stop)
  session.on('error', () => {})
  for (let i = 0; i < MAX_STREAMS && !cut && !session.destroyed && !session.closed; i++) {
    const stream = session.request({ ':method': method, ':path': '/slow/5000' })
    stream.on('error', () => {})
    stream.close(constants.NGHTTP2_CANCEL)
    if (i % PER_TURN === PER_TURN - 1) await new Promise((r) => setImmediate(r))
  }
  const [code] = (await goaway) as [number]
  return code
}
