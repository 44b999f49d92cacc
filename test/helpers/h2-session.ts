// An HTTP/2 client connection that has completed one request and stays open, idle: what a well-behaved
// client leaves behind between requests, and the proof that the proxy still serves one.
import { once } from 'node:events'
import { type ClientHttp2Session, connect } from 'node:http2'
import type { Test } from 'tap'

/** opens a session to `url`, completes one GET of `path` on it; the session is destroyed at teardown */
export async function h2SessionAfterOneRequest(
  t: Test,
  url: string,
  path = '/echo',
): Promise<{ session: ClientHttp2Session; status: number }> {
  const session = connect(url)
  // a session the proxy closes while the test goes on must not fail the test by itself
  session.on('error', () => {})
  t.teardown(() => session.destroy())
  const stream = session.request({ ':path': path })
  const [headers] = (await once(stream, 'response')) as [Record<string, string | number>]
  stream.resume()
  await once(stream, 'end')
  return { session, status: Number(headers[':status']) }
}
