// The gRPC helpers the proxy answers with: deadline parsing and the HTTP → gRPC status mapping.
import t from 'tap'
import { GRPC, grpcStatusForHttp, grpcTimeoutMs, grpcTimeoutValue, isGrpc } from '../../src/proxy/grpc.ts'

t.test('grpc-timeout parsing', async (t) => {
  t.equal(grpcTimeoutMs({ 'grpc-timeout': '250m' }), 250)
  t.equal(grpcTimeoutMs({ 'grpc-timeout': '2S' }), 2000)
  t.equal(grpcTimeoutMs({ 'grpc-timeout': '1H' }), 3_600_000)
  t.equal(grpcTimeoutMs({ 'grpc-timeout': '5000u' }), 5)
  t.equal(grpcTimeoutMs({ 'grpc-timeout': '123456789m' }), undefined, 'more than 8 digits is malformed')
  t.equal(grpcTimeoutMs({ 'grpc-timeout': '10x' }), undefined)
  t.equal(grpcTimeoutMs({}), undefined)
})

t.test(
  'the time a call has left, as a grpc-timeout: the finest unit that fits 8 digits, rounded down',
  async (t) => {
    t.equal(grpcTimeoutValue(87.654321), '87654321n')
    t.equal(grpcTimeoutValue(250), '250000u')
    t.equal(grpcTimeoutValue(18_976.9354), '18976935u')
    t.equal(grpcTimeoutValue(100_000), '100000m', 'past 8 digits of µs')
    t.equal(grpcTimeoutValue(2_592_000_000 - 0.5), '2591999S', 'a 30-day deadline, a moment later')
    t.equal(grpcTimeoutValue(99_999_999 * 1000 + 999.5), '99999999S')
    t.equal(grpcTimeoutValue(100_000_000 * 1000), '1666666M', 'past 8 digits of seconds')
    t.equal(grpcTimeoutValue(99_999_999 * 3_600_000 - 1), '99999998H')
    t.equal(grpcTimeoutValue(99_999_999 * 3_600_000), '99999999H', 'the longest there is')
    t.equal(grpcTimeoutValue(0.000001), '1n')
    for (const ms of [0, -5, 0.0000009, Number.NaN])
      t.equal(grpcTimeoutValue(ms), undefined, `${ms} ms: nothing left`)
    for (const ms of [0.001, 1, 999.9999999, 60_000, 1e9, 3.5e11]) {
      const value = grpcTimeoutValue(ms)!
      const back = grpcTimeoutMs({ 'grpc-timeout': value })!
      t.ok(back <= ms && back > 0, `${ms} ms → ${value}: parses back, never later`)
    }
  },
)

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
