// HTTP/2 written frame by frame (RFC 9113 §4.1, HPACK literals of RFC 7541 §6.2.2), for the tests that must
// send what node:http2 refuses to: a second `host`, a reset right behind a request, a `:status` of 600.

/** what a prior-knowledge h2c client sends first */
export const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1')

export const FRAME = { DATA: 0, HEADERS: 1, RST_STREAM: 3, SETTINGS: 4, PING: 6, GOAWAY: 7 } as const
export const FLAG = { END_STREAM: 1, ACK: 1, END_HEADERS: 4 } as const

/** one frame: the 9-byte header, then the payload */
export function frame(type: number, flags: number, streamId: number, payload: Buffer): Buffer {
  const head = Buffer.alloc(9)
  head.writeUIntBE(payload.length, 0, 3)
  head[3] = type
  head[4] = flags
  head.writeUInt32BE(streamId, 5)
  return Buffer.concat([head, payload])
}

/** an HPACK integer with an N-bit prefix (RFC 7541 §5.1) */
function hpackInt(value: number, prefixBits: number): Buffer {
  const max = (1 << prefixBits) - 1
  if (value < max) return Buffer.from([value])
  const out = [max]
  let rest = value - max
  while (rest >= 128) {
    out.push((rest & 127) | 128)
    rest >>= 7
  }
  out.push(rest)
  return Buffer.from(out)
}

/** an HPACK string literal, not Huffman-coded */
export function hpackString(s: string): Buffer {
  return Buffer.concat([hpackInt(s.length, 7), Buffer.from(s, 'latin1')])
}

/** a header block of literal fields without indexing: any name and value, as given */
export function headerBlock(fields: readonly (readonly [string, string])[]): Buffer {
  return Buffer.concat(
    fields.flatMap(([name, value]) => [Buffer.from([0]), hpackString(name), hpackString(value)]),
  )
}

/** the error code of the first GOAWAY frame in what the server sent, if any */
export function goawayCode(received: Buffer): number | undefined {
  for (let at = 0; at + 9 <= received.length; ) {
    const length = received.readUIntBE(at, 3)
    if (received[at + 3] === FRAME.GOAWAY && at + 9 + 8 <= received.length)
      return received.readUInt32BE(at + 9 + 4)
    at += 9 + length
  }
  return undefined
}
