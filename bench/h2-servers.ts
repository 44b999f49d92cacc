// The h2c bench's servers, one role per child process: `upstream` (a node:http2 server answering every
// stream like a unary gRPC method: one 2-byte length-prefixed message, then `grpc-status: 0` trailers) or
// `bare-proxy` (the baseline: a node:http2 server forwarding every stream and its trailers over one h2c
// session to the upstream, nothing else). Run as node --import ./scripts/register-ts.mjs bench/h2-servers.ts '<json>'.
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
  // gRPC-shaped so that nginx grpc_pass carries it like the other configurations do
  const message = Buffer.from([0, 0, 0, 0, 2, 0x6f, 0x6b])
  server.on('stream', (stream) => {
    stream.on('error', () => {})
    stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true })
    stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }))
    stream.end(message)
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
    // gRPC's status travels in trailers: passed on like nhi-proxy and nginx grpc_pass do
    let trailers: OutgoingHttpHeaders | undefined
    up.on('trailers', (h) => {
      trailers = h
    })
    up.on('response', (h) => {
      const { ':status': status, ...rest } = h
      stream.respond({ ':status': status ?? 502, ...rest }, { waitForTrailers: true })
      stream.on('wantTrailers', () => (trailers ? stream.sendTrailers(trailers) : stream.close()))
      up.pipe(stream)
    })
    stream.pipe(up)
  })
}

server.listen(args.port, '127.0.0.1')
