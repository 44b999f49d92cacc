// The gRPC helpers the proxy answers with: deadline parsing and the HTTP → gRPC status mapping.
import t from 'tap'
import { GRPC, grpcStatusForHttp, grpcTimeoutMs, isGrpc } from '../../src/proxy/grpc.ts'

t.test('grpc-timeout parsing', async (t) => {
  t.equal(grpcTimeoutMs({ 'grpc-timeout': '250m' }), 250)
  t.equal(grpcTimeoutMs({ 'grpc-timeout': '2S' }), 2000)
  t.equal(grpcTimeoutMs({ 'grpc-timeout': '1H' }), 3_600_000)
  t.equal(grpcTimeoutMs({ 'grpc-timeout': '5000u' }), 5)
  t.equal(grpcTimeoutMs({ 'grpc-timeout': '123456789m' }), undefined, 'more than 8 digits is malformed')
  t.equal(grpcTimeoutMs({ 'grpc-timeout': '10x' }), undefined)
  t.equal(grpcTimeoutMs({}), undefined)
})

t.test('proxy answers map to gRPC statuses', async (t) => {
  t.equal(grpcStatusForHttp(401), GRPC.UNAUTHENTICATED)
  t.equal(grpcStatusForHttp(403), GRPC.PERMISSION_DENIED)
  t.equal(grpcStatusForHttp(502), GRPC.UNAVAILABLE)
  t.equal(grpcStatusForHttp(504), GRPC.DEADLINE_EXCEEDED)
  t.equal(grpcStatusForHttp(429), GRPC.RESOURCE_EXHAUSTED)
  t.equal(grpcStatusForHttp(400), GRPC.INTERNAL)
  t.equal(grpcStatusForHttp(500), GRPC.UNKNOWN)
})

t.test('gRPC calls are recognised by content type', async (t) => {
  t.ok(isGrpc({ 'content-type': 'application/grpc' }))
  t.ok(isGrpc({ 'content-type': 'application/grpc+proto' }))
  t.notOk(isGrpc({ 'content-type': 'application/json' }))
  t.notOk(isGrpc({}))
})
