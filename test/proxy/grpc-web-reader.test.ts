// The gRPC-Web status reader on its own: the edges an end-to-end test does not reach cheaply.
import { brotliCompressSync, deflateSync, gzipSync } from 'node:zlib'
import t from 'tap'
import { GrpcWebStatusReader, grpcWebResponse } from '../../src/proxy/grpc-web.ts'

function frame(flag: number, payload: Buffer | string): Buffer {
  const body = Buffer.from(payload)
  const head = Buffer.alloc(5)
  head[0] = flag
  head.writeUInt32BE(body.length, 1)
  return Buffer.concat([head, body])
}

t.test('the status of the trailer frame, after any number of messages', async (t) => {
  const r = new GrpcWebStatusReader(false)
  r.push(Buffer.concat([frame(0, 'a'), frame(0, ''), frame(1, 'compressed'), frame(0x80, 'grpc-status:3\n')]))
  t.equal(r.status, 3)
  t.equal(r.result(200), 3)
})

t.test('names in any letter case, the status line anywhere in the block', async (t) => {
  const r = new GrpcWebStatusReader(false)
  r.push(frame(0x80, 'grpc-message: x\r\nGrpc-Status: 14\r\n'))
  t.equal(r.status, 14)
})

t.test('a status past 16 is UNKNOWN, as a client reads it', async (t) => {
  const r = new GrpcWebStatusReader(false)
  r.push(frame(0x80, 'grpc-status: 99\r\n'))
  t.equal(r.status, 2)
})

t.test('a grpc-status in a trailer frame that is no status is UNKNOWN, not a missing one', async (t) => {
  // as in the header section: a client reads the trailer it got as UNKNOWN, not as INTERNAL (a 200 without one)
  for (const value of ['', 'abc', '1000', '3 4', '1e1']) {
    const r = new GrpcWebStatusReader(false)
    r.push(frame(0x80, `grpc-message: x\r\ngrpc-status: ${value}\r\n`))
    t.equal(r.status, 2, JSON.stringify(value))
    t.equal(r.result(200), 2)
  }
  const spaced = new GrpcWebStatusReader(false)
  spaced.push(frame(0x80, 'grpc-status:\t 9 \t'))
  t.equal(spaced.status, 9, 'OWS around the value, the block ending without a line break')
  const named = new GrpcWebStatusReader(false)
  named.push(frame(0x80, 'x-grpc-status: 5\ngrpc-status-details-bin: 6\n'))
  t.equal(named.status, undefined, 'only the grpc-status line is the status')
})

t.test('a trailer frame of any size is read: trailers with large values make one', async (t) => {
  // a gRPC-Web client reads the status of such a block, which the reader, keeping a block whole up to 8 KiB,
  // once counted as missing (INTERNAL)
  const before = new GrpcWebStatusReader(false)
  before.push(frame(0x80, `grpc-status: 0\r\nx: ${'y'.repeat(9000)}\r\n`))
  t.equal(before.status, 0, 'the status line first')
  const after = new GrpcWebStatusReader(false)
  const block = frame(0x80, `x: ${'y'.repeat(100_000)}\r\nz: grpc-status: 4\r\nGrpc-Status: 5\r\n`)
  // a byte at a time and in two pieces: where a chunk ends does not matter
  for (const b of block) after.push(Buffer.from([b]))
  t.equal(after.status, 5, 'the status line after 100 KB of other trailers, a byte at a time')
  const halves = new GrpcWebStatusReader(false)
  halves.push(block.subarray(0, 50_000))
  halves.push(block.subarray(50_000))
  t.equal(halves.status, 5, 'in two pieces')
  const long = new GrpcWebStatusReader(false)
  long.push(frame(0x80, `grpc-status: ${'0'.repeat(20_000)}7 \r\n`))
  t.equal(long.status, 7, 'a value of any length read as gRPC reads it')
})

t.test('nothing after the trailer frame changes the status', async (t) => {
  const r = new GrpcWebStatusReader(false)
  r.push(Buffer.concat([frame(0x80, 'grpc-status: 0\r\n'), frame(0x80, 'grpc-status: 5\r\n')]))
  t.equal(r.status, 0)
})

t.test('a grpc-status in the header section that is not digits is UNKNOWN, an empty one too', async (t) => {
  const read = (value: string) =>
    grpcWebResponse({ 'content-type': 'application/grpc-web' }, [
      'content-type',
      'application/grpc-web',
      'grpc-status',
      value,
    ])?.result(200)
  // gRPC's grammar is 1*DIGIT: an empty status is no OK, and no number Number() reads is a status either
  for (const value of ['', '1e1', '+3', '0x1', '3.0', '-0']) t.equal(read(value), 2, JSON.stringify(value))
  t.equal(read('007'), 7, 'leading zeros are digits')
  t.equal(read('17'), 2, 'past 16')
})

t.test('the header section (trailers-only) wins over the body', async (t) => {
  const r = new GrpcWebStatusReader(false, 7)
  r.push(frame(0x80, 'grpc-status: 0\r\n'))
  t.equal(r.result(200), 7)
})

t.test('text: base64 with whitespace, padding between frames, groups split across chunks', async (t) => {
  const text = `${frame(0, 'hi').toString('base64')}\r\n${frame(0x80, 'grpc-status: 6\r\n').toString('base64')}`
  t.match(text, /=.+/s, 'the first frame ends in padding, mid-body')
  const r = new GrpcWebStatusReader(true)
  for (const ch of text) r.push(Buffer.from(ch))
  t.equal(r.status, 6)
})

t.test('a compressed trailer frame (flag 0x81) is read in the response grpc-encoding', async (t) => {
  // Connect's servers compress a trailer block of 1 KiB and more when the client accepts it (found by
  // grpc-web-differential.test.ts: such calls were counted INTERNAL)
  const block = Buffer.from(`x-large: ${'v'.repeat(3000)}\r\ngrpc-status: 6\r\ngrpc-message: exists\r\n`)
  const compressed = (flag: number, bytes: Buffer) => frame(flag, bytes)
  for (const [encoding, bytes] of [
    ['gzip', gzipSync(block)],
    ['deflate', deflateSync(block)],
    ['br', brotliCompressSync(block)],
  ] as const) {
    const whole = Buffer.concat([frame(0, 'hi'), compressed(0x81, bytes)])
    const r = new GrpcWebStatusReader(false, undefined, true, encoding)
    for (const b of whole) r.push(Buffer.from([b]))
    t.equal(r.status, 6, `${encoding}, a byte at a time`)
    const text = new GrpcWebStatusReader(true, undefined, true, encoding)
    text.push(Buffer.from(whole.toString('base64')))
    t.equal(text.status, 6, `${encoding}, base64`)
  }
  const unknown = new GrpcWebStatusReader(false, undefined, true, 'snappy')
  unknown.push(compressed(0x81, gzipSync(block)))
  t.equal(unknown.status, undefined, 'an encoding the proxy does not know: no status read')
  t.equal(unknown.result(200), 13)
  const corrupt = new GrpcWebStatusReader(false, undefined, true, 'gzip')
  corrupt.push(compressed(0x81, Buffer.from('not gzip')))
  t.equal(corrupt.status, undefined, 'bytes that are not what the encoding says: no status read')
})
