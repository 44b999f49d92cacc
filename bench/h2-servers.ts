// The h2c bench's servers, one role per child process: `upstream` (a node:http2 server answering a fixed
// 2-byte body) or `bare-proxy` (the baseline: a node:http2 server forwarding every stream over one h2c
// session to the upstream, nothing else). Run as node --import tsx bench/h2-servers.ts '<json>'.
import './orphan-guard.mjs'
import {
  type ClientHttp2Session,
  connect,
  constants,
  createServer,
  type IncomingHttpHeaders,
  type OutgoingHttpHeaders,
} from 'node:http2'

interface H2Args {
  role: 'upstream' | 'bare-proxy'
  port: number
  upstream?: string
}

const args = JSON.parse(process.argv[2] ?? '{}') as H2Args
const server = createServer({ settings: { maxConcurrentStreams: 1000 } })

if (args.role === 'upstream') {
  server.on('stream', (stream) => {
    stream.on('error', () => {})
    stream.respond({ ':status': 200, 'content-type': 'text/plain' })
    stream.end('ok')
    stream.resume()
  })
} else {
  const upstream = args.upstream ?? ''
  let session: ClientHttp2Session | undefined
  const upstreamSession = () => {
    if (!session || session.closed || session.destroyed) {
      session = connect(upstream)
      session.on('error', () => {})
    }
    return session
  }
  server.on('stream', (stream, headers: IncomingHttpHeaders) => {
    stream.on('error', () => {})
    const out: OutgoingHttpHeaders = {}
    for (const name in headers) if (name !== ':authority' && name !== ':scheme') out[name] = headers[name]
    const up = upstreamSession().request(out)
    up.on('error', () => {
      if (!stream.headersSent) stream.respond({ ':status': 502 }, { endStream: true })
      else stream.close(constants.NGHTTP2_INTERNAL_ERROR)
    })
    up.on('response', (h) => {
      const { ':status': status, ...rest } = h
      stream.respond({ ':status': status ?? 502, ...rest })
      up.pipe(stream)
    })
    stream.pipe(up)
  })
}

server.listen(args.port, '127.0.0.1')
