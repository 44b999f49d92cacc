// The HTTP/2 rapid-reset pattern (CVE-2023-44487) from a client's side, shared by the tests that provoke it.
import { once } from 'node:events'
import { type ClientHttp2Session, constants } from 'node:http2'

/** opens and cancels streams on one session until the proxy sends GOAWAY; resolves with its error code */
export async function rapidReset(session: ClientHttp2Session): Promise<number> {
  const goaway = once(session, 'goaway')
  session.on('error', () => {})
  for (let i = 0; i < 200 && !session.destroyed && !session.closed; i++) {
    const stream = session.request({ ':path': '/slow/5000' })
    stream.on('error', () => {})
    stream.close(constants.NGHTTP2_CANCEL)
    await new Promise((r) => setImmediate(r))
  }
  const [code] = (await goaway) as [number]
  return code
}
